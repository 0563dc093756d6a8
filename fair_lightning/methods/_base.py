"""The base class of fairness methods and the name registry behind ``mode="lagrangian"``.

A fairness method is a small ``nn.Module`` with three jobs:

1. :meth:`FairnessMethod.forward` (``method(logits, target, groups)``): the term it adds to the
   task loss for a batch, a differentiable scalar. This is all an existing LightningModule needs
   to call in its own ``training_step`` (the drop-in path).
2. :meth:`FairnessMethod.after_optimizer_step`: what it does once the model's weights moved
   (the Lagrangian's dual ascent). When nobody calls it, the next training ``forward`` does it
   first, so a plain automatic-optimization ``training_step`` gets exactly the same updates.
3. Its state: buffers and submodules (``state_dict``, so checkpoints carry it), the optimizers of
   its own parameters (:meth:`configure_optimizers`), and per-step diagnostics
   (:meth:`diagnostics`) for the loggers.

A new method subclasses :class:`FairnessMethod`, implements :meth:`compute_term`, and registers
a name with :func:`register_method` so that configs can say ``mode: my_method``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fair_lightning.functional._checks import FLOAT32_MAX
from fair_lightning.functional._checks import check_group_names as _check_group_names
from fair_lightning.functional._checks import check_num_groups

#: registered methods by name (``"erm"``, ``"penalty"``, ``"lagrangian"``, ``"adversarial"``, ...)
METHODS: dict[str, type[FairnessMethod]] = {}



def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the processes of the default process group (a no-op outside DDP)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor

def own_shared_tensors(module: nn.Module) -> int:
    """Give this process its own copy of every tensor of ``module`` (and its submodules) that
    lives in shared memory and is neither a parameter nor a buffer; returns how many it copied.

    ``torch.multiprocessing.spawn`` moves every tensor it sends to a child process into shared
    memory, so under Lightning's ``ddp_spawn`` on CPU the ranks' copies of a module start out as
    *one* tensor. Lightning gives each rank its own parameters and buffers, but not the other
    tensors a module holds: torchmetrics states, running sums kept as plain attributes. Each
    rank's in-place update then lands in the others' as well (2-process ``trainer.test`` counted
    every row twice). Tensors that were one object stay one object (torchmetrics' compute groups
    share states by reference).
    """
    copies: dict[int, Tensor] = {}

    def own(value: Any) -> Any:
        if isinstance(value, Tensor) and not isinstance(value, nn.Parameter) and value.is_shared():
            if id(value) not in copies:
                copies[id(value)] = value.detach().clone()
            return copies[id(value)]
        if isinstance(value, list) and any(isinstance(v, Tensor) for v in value):
            return [own(v) for v in value]
        return value

    for sub in module.modules():
        for name, value in list(vars(sub).items()):
            if name.startswith("__") or name in ("_parameters", "_buffers", "_modules"):
                continue
            owned = own(value)
            if owned is not value:
                object.__setattr__(sub, name, owned)
        for name, value in list(getattr(sub, "_defaults", {}).items()):  # torchmetrics' reset() clones these
            sub._defaults[name] = own(value)
    return len(copies)


def register_method(name: str):
    """Class decorator: make a :class:`FairnessMethod` available as ``mode=name``."""

    def decorate(cls: type[FairnessMethod]) -> type[FairnessMethod]:
        if not (isinstance(cls, type) and issubclass(cls, FairnessMethod)):
            raise TypeError(f"`register_method` takes a FairnessMethod subclass, got {cls!r}")
        METHODS[name] = cls
        cls.name = name
        return cls

    return decorate


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, finite: bool = True) -> float:
    """``float(value)`` if it is a real number in range, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        isinstance(value, Tensor) and value.numel() == 1
    ):
        raise ValueError(f"`{name}` must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    bad = value != value or (finite and value in (float("inf"), float("-inf")))
    if low is not None:
        bad = bad or (value <= low if low_open else value < low)
    if high is not None:
        bad = bad or value > high
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        rng = " and ".join(p for p in (lo, hi) if p)
        raise ValueError(f"`{name}` must be a {'finite ' if finite else ''}number{' ' + rng if rng else ''}, got {value!r}")
    return value


class FairnessMethod(nn.Module):
    """What a fairness method adds to training; see the module docstring.

    Args:
        num_groups: number of (possibly intersectional) groups, ids in ``[0, num_groups)``; at
            least 2 (fairness compares groups). ``None`` only for a method that takes a continuous
            sensitive attribute instead of groups (:attr:`accepts_continuous`, e.g.
            ``Adversarial(sensitive="continuous")``): then ``num_groups`` is ``None`` and
            ``group_names`` is empty.
        group_names: names of the groups in logged keys (default ``group_0``, ...).
        num_classes: ``None`` for a binary classifier (one logit per sample) or a regression
            model (one prediction per sample), or ``K >= 2`` for ``(N, K)`` logits and
            class-index targets (a subclass that supports K classes takes it as an argument and
            passes it here).

    Attributes:
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``: the model the method is for.
        num_steps: training forwards seen (a buffer, checkpointed): the position of schedules.
        needs_representation: whether :meth:`forward` wants the model's representation.
        validate_args: check each batch (set to ``False`` by a caller that already did).
    """

    name: ClassVar[str] = ""
    #: the name under which the term's per-step value is logged (``None``: not logged)
    term_name: ClassVar[str | None] = "train/fairness_loss"
    #: whether :meth:`compute_term` needs binary targets
    requires_target: ClassVar[bool] = False
    #: whether the method may be built with ``num_groups=None`` (a continuous sensitive attribute)
    accepts_continuous: ClassVar[bool] = False

    def __init__(self, num_groups: int | None, *, group_names: Sequence[str] | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        from fair_lightning.losses import check_num_classes_arg

        self.num_classes = check_num_classes_arg(num_classes)
        if num_groups is None and type(self).accepts_continuous:
            if group_names is not None:
                raise ValueError(f"`group_names` must be None without groups (num_groups=None), got {group_names!r}")
            self.num_groups = None
            self.group_names = []
        else:
            self.num_groups = check_num_groups(num_groups)
            if type(self).requires_groups() and self.num_groups < 2:
                raise ValueError(
                    f"`num_groups` must be >= 2 for {type(self).__name__}: fairness compares groups, got {num_groups}"
                )
            self.group_names = _check_group_names(group_names, self.num_groups)
        #: the model the method is for: ``"binary"`` (one logit), ``"multiclass"`` (``(N, K)``
        #: logits) or ``"regression"`` (one continuous prediction; set by regression methods)
        self.task = "binary" if self.num_classes is None else "multiclass"
        self.needs_representation = False
        self.validate_args = True
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self._last: dict[str, Tensor] = {}

    @classmethod
    def requires_groups(cls) -> bool:
        """Whether the method needs at least two groups (all but ERM)."""
        return True

    # ------------------------------------------------------------------ the three jobs
    def forward(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None = None) -> Tensor:
        """The term to add to the task loss for this batch (a differentiable scalar).

        In training mode this first applies a pending :meth:`after_optimizer_step` (if nobody
        called it since the last forward), and counts the step.
        """
        if self.training:
            self.after_optimizer_step()
        if self.validate_args:
            logits, target, groups = self._check_inputs(logits, target, groups)
        term = self.compute_term(logits, target, groups, representation)
        if self.training:
            self.num_steps.add_(1)
        return term

    def compute_term(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None) -> Tensor:
        """The method's term; implemented by subclasses."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Update the method's own state after the model's optimizer step (default: nothing)."""

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers of the method's own parameters, when it trains them separately (the
        adversary); ``FairLightningModule`` steps them with the model's. Default: none."""
        return []

    def diagnostics(self) -> dict[str, Tensor | float]:
        """Values to log on logging steps (the term, ``eta``, violations, multipliers, ...)."""
        return dict(self._last)

    def state_table(self):
        """A ``pandas.DataFrame`` of the method's state (multipliers for the Lagrangian)."""
        raise ValueError(f"{type(self).__name__} has no state table")

    # ------------------------------------------------------------------ helpers
    def _check_inputs(self, logits: Tensor, target: Tensor | None, groups: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        from fair_lightning.losses import check_fairness_batch

        if self.task == "regression":
            from fair_lightning.functional._regression import check_regression_inputs

            if target is None and self.requires_target:
                raise ValueError(f"`target` is required by {type(self).__name__}, got None")
            return check_regression_inputs(logits, target, groups, self.num_groups)

        return check_fairness_batch(
            logits, target, groups, self.num_groups, self.num_classes, requires_target=self.requires_target,
            owner=type(self).__name__,
        )

    @classmethod
    def argument_names(cls) -> list[str]:
        """The keyword arguments of the method's constructor."""
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def make_method(method: str | FairnessMethod | type[FairnessMethod], context: dict[str, Any] | None = None, **kwargs: Any) -> FairnessMethod:
    """A method from a registered name (or class) and its arguments, or a ready instance.

    Args:
        method: a name of :data:`METHODS`, a :class:`FairnessMethod` subclass or an instance.
        context: arguments a caller offers to every method (``num_groups``, ``group_names``,
            ``threshold``); each is passed only if the method takes it.
        **kwargs: the method's own arguments. One the method does not take raises a
            ``TypeError`` naming it and listing the method's arguments.
    """
    context = dict(context or {})
    if isinstance(method, FairnessMethod):
        if kwargs:
            raise TypeError(
                f"{sorted(kwargs)} given alongside a ready {type(method).__name__}: pass the method's "
                "arguments to its constructor instead"
            )
        if "num_groups" in context and method.num_groups != context["num_groups"]:
            raise ValueError(
                f"the {type(method).__name__} has num_groups={method.num_groups}, but the module has "
                f"num_groups={context['num_groups']}"
            )
        if "num_classes" in context and getattr(method, "num_classes", None) != context["num_classes"]:
            raise ValueError(
                f"the {type(method).__name__} has num_classes={getattr(method, 'num_classes', None)}, but the module "
                f"has num_classes={context['num_classes']}"
            )
        return method
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"`mode` must be one of {list(METHODS)} or a FairnessMethod, got {method!r}")
        cls = METHODS[method]
    elif isinstance(method, type) and issubclass(method, FairnessMethod):
        cls = method
    else:
        raise ValueError(f"`mode` must be one of {list(METHODS)} or a FairnessMethod, got {method!r}")
    accepted = cls.argument_names()
    if context.get("num_classes") is not None and "num_classes" not in accepted:
        raise ValueError(
            f"method {cls.name or cls.__name__!r} ({cls.__name__}) supports binary classification only (one logit), "
            f"got num_classes={context['num_classes']}"
        )
    unknown = [k for k in kwargs if k not in accepted or k in context]
    if unknown:
        own = [a for a in accepted if a not in context]
        raise TypeError(
            f"{', '.join(f'`{k}`' for k in unknown)} {'is not an argument' if len(unknown) == 1 else 'are not arguments'} "
            f"of method {cls.name or cls.__name__!r} ({cls.__name__}); its arguments are {own}"
        )
    passed = {k: v for k, v in context.items() if k in accepted}
    return cls(**passed, **kwargs)


__all__ = ["FairnessMethod", "METHODS", "check_number", "make_method", "register_method"]
