"""``FairLightningModule``: the batteries-included shell around one fairness method.

Tasks (``task``, torchmetrics' names): ``"binary"`` (one logit per sample), ``"multiclass"``
(``(N, K)`` logits) and ``"regression"`` (one continuous prediction per sample: MSE task loss,
regression group metrics, the methods ``erm``, ``penalty`` with
``fairness="regression_demographic_parity"`` and ``bounded_group_loss``).

The method (:mod:`fair_lightning.methods`) decides what is added to the task loss and what
happens after each optimizer step; the module does the rest: manual optimization of the model
(and of the method's own parameters, such as the adversary), the learning-rate schedulers the
user returns from ``configure_optimizers`` (stepped by their own ``interval`` and
``frequency``), gradient clipping, the gradient-norm ratio of the fairness term, group metrics on
validation and test, per-group calibration and thresholds at prediction time, and checkpoints.

* ``mode="erm"``: task loss only (the baseline).
* ``mode="penalty"``: ``task + eta * fairness_loss`` (:class:`~fair_lightning.methods.Penalty`).
* ``mode="lagrangian"``: rate constraints with multipliers ascending on the hard violation
  (:class:`~fair_lightning.methods.Lagrangian`).
* ``mode="adversarial"``: an adversary through gradient reversal
  (:class:`~fair_lightning.methods.Adversarial`).

``mode`` is a registered name (the method's arguments follow as keywords, or in
``method_args``) or a ready method instance. An argument the method does not take is an error
that names it.

Subclassing: override :meth:`unpack_batch`, :meth:`forward`, :meth:`forward_with_representation`
and :meth:`task_loss`. A subclass that overrides ``training_step`` gets Lightning's automatic
optimization (its optimizers and schedulers run as Lightning runs them) and must add
``self.method(logits, target, groups)`` to its loss; if it does not, the first training batch
raises an error that says so.

``trainer.global_step`` counts the steps of the optimizers Lightning manages: the model's (and
the adversary's, which therefore advances it twice per batch). The multipliers' ascent does not
count.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy, MulticlassAUROC

from fair_lightning._verdicts import CONSTANT_SHARE, one_class
from fair_lightning.functional import GroupSums
from fair_lightning.functional._checks import check_binary_target, check_group_names, check_groups, check_num_groups
from fair_lightning.functional._multiclass import check_class_names, check_class_target
from fair_lightning.functional._regression import check_regression_inputs, check_regression_values
from fair_lightning.functional._rates import DEFINITIONS
from fair_lightning.functional._uncertainty import max_min_difference_interval, rate_fraction
from fair_lightning.losses import (
    _check_class_logits,
    _check_logits,
    binary_cross_entropy_with_logits,
    check_num_classes_arg,
    cross_entropy_with_logits,
)
from fair_lightning.methods import ERM, METHODS, FairnessMethod, make_method
from fair_lightning.methods._base import check_number, own_shared_tensors
from fair_lightning.metrics import fairness_metrics
from fair_lightning.metrics_multiclass import multiclass_fairness_metrics
from fair_lightning.metrics_regression import regression_fairness_metrics

if TYPE_CHECKING:
    import pandas as pd

MODES = tuple(METHODS)
OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
#: regression: validation prediction std below this share of the target's std warns of a near-constant model
CONSTANT_STD = 0.01
#: the tasks a module trains (torchmetrics' names)
TASKS = ("binary", "multiclass", "regression")


class FairLightningModule(pl.LightningModule):
    """A LightningModule that trains a binary or K-class classifier, or a regression model, fair by design.

    Args:
        model: any ``nn.Module`` mapping the features to one logit per sample (``(N,)`` or
            ``(N, 1)``, binary) or to ``(N, K)`` class logits (K classes). Optional when
            subclassing and overriding :meth:`forward`.
        num_classes: ``None`` (binary, one logit per sample) or ``K >= 2`` for ``(N, K)`` logits
            and class-index targets: the task loss is then the cross-entropy, the method
            equalizes each class's rates, validation and test log the multiclass metrics
            (``val/selection_rate/<class>/<group>``, ``val/dp_difference`` (worst class),
            ``val/eo_difference``, ``val/accuracy``, ...) and ``predict_step`` returns the
            softmax probabilities. Left unset, it is read from a model that is an
            ``nn.Sequential`` ending in an ``nn.Linear`` with more than one output.
        class_names: names of the classes in logged keys (default ``class_0``, ...).
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``; ``None`` (default) infers
            binary or multiclass from ``num_classes``. ``"regression"``: the model returns one
            continuous prediction per sample (``(N,)`` or ``(N, 1)``), the task loss is the mean
            squared error, the method must be a regression one (``"erm"``, ``"penalty"`` with
            ``fairness="regression_demographic_parity"``, ``"bounded_group_loss"``), validation
            and test log ``val/mse``, ``val/mae``, ``val/loss``, ``val/dp_difference`` (largest
            minus smallest group mean prediction), ``val/mse_difference``, ``val/cdf_gap``
            (largest gap between groups' prediction CDFs, on ``value_range``) and per-group
            ``val/mean_prediction/<group>``, ``val/mean_squared_error/<group>``, ...; no accuracy
            or AUROC, no group thresholds or calibrator, and ``predict_step`` returns the ``(N,)``
            predictions.
        value_range: regression only: ``(low, high)`` of the 100 equal bins on which
            ``val/cdf_gap`` compares the groups' prediction CDFs. Default: the training targets'
            range widened by 5% on each side when the data module has ``train_tensors`` (as
            :class:`~fair_lightning.data.TabularDataModule`), else ``(0, 1)`` with a warning.
        num_groups: number of (possibly intersectional) groups; ids in ``[0, num_groups)``.
        mode: the fairness method: a registered name (``"erm"``, ``"penalty"``,
            ``"lagrangian"``, ``"adversarial"``) or a :class:`~fair_lightning.methods.FairnessMethod`.
        method_args: the method's arguments as a mapping (for configs and LightningCLI); the
            same may be given as keyword arguments (``tolerance=0.02``).
        group_names: names of the groups in logged keys (default ``group_0``, ...).
        lr, weight_decay: of the default Adam optimizer.
        optimizer: ``params -> optimizer`` for the model (overrides ``lr``/``weight_decay``).
        lr_scheduler: ``optimizer -> scheduler`` or ``optimizer -> {"scheduler": ...,
            "interval": "step" | "epoch", "frequency": n, "monitor": key}`` (Lightning's
            scheduler config), stepped as Lightning would.
        gradient_clip_val, gradient_clip_algorithm: clipping of the model's gradients (with manual
            optimization, ``Trainer(gradient_clip_val=...)`` is refused by Lightning).
        threshold: probability threshold of the hard predictions (metrics and the dual step).
        grad_ratio_every_n_steps: how often to log the ratio of the fairness term's gradient norm
            to the task term's (costs one extra backward pass on those steps, two under DDP; 0 disables).
        validate_args: check batches (shapes, binary targets, group ids) on every step.
        **method_kwargs: the method's own arguments (see each method class).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        num_groups: int,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        task: str | None = None,
        value_range: tuple[float, float] | None = None,
        mode: str | FairnessMethod = "erm",
        method_args: Mapping[str, Any] | None = None,
        group_names: Sequence[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        threshold: float = 0.5,
        grad_ratio_every_n_steps: int = 50,
        validate_args: bool = True,
        **method_kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs = {**dict(method_args or {}), **method_kwargs}
        overlap = sorted(set(method_args or {}) & set(method_kwargs))
        if overlap:
            raise ValueError(f"{overlap} given both in `method_args` and as keyword arguments")
        ignore = ["model", "optimizer", "lr_scheduler"] + [
            k for k, v in kwargs.items() if callable(v) or isinstance(v, nn.Module)
        ]
        if not isinstance(mode, str):
            ignore.append("mode")
        self.save_hyperparameters(ignore=ignore)
        self.num_groups = check_num_groups(num_groups)
        self.group_names = check_group_names(group_names, num_groups)
        if task is not None and task not in TASKS:
            raise ValueError(f"`task` must be one of {list(TASKS)} or None, got {task!r}")
        if task == "regression":
            if num_classes is not None:
                raise ValueError(f"`num_classes` does not apply to task='regression' (one prediction per sample), got {num_classes!r}")
        else:
            if num_classes is None and task != "binary":
                num_classes = _infer_num_classes(model)
                # K read off the model's last layer: checked against the labels after the first epoch
                self._inferred_classes = num_classes
            if num_classes is None and isinstance(mode, FairnessMethod):
                num_classes = getattr(mode, "num_classes", None)
        self.num_classes = check_num_classes_arg(num_classes)
        if task == "binary" and self.num_classes is not None:
            raise ValueError(f"task='binary' takes one logit per sample, got num_classes={self.num_classes}; use task='multiclass'")
        if task == "multiclass" and self.num_classes is None:
            raise ValueError("task='multiclass' needs `num_classes` (K class logits), got None")
        #: ``"binary"``, ``"multiclass"`` or ``"regression"``
        self.task = task or ("binary" if self.num_classes is None else "multiclass")
        if value_range is not None:
            if self.task != "regression":
                raise ValueError(f"`value_range` applies to task='regression' only, got value_range={value_range!r}")
            low, high = (check_number(v, "value_range") for v in value_range)
            if not high > low:
                raise ValueError(f"`value_range` must be (low, high) with high > low, got {value_range!r}")
            value_range = (low, high)
        self._value_range = value_range
        if class_names is not None and self.num_classes is None:
            raise ValueError(f"`class_names` needs `num_classes` (K-class logits), got class_names={class_names!r}")
        self.class_names = check_class_names(class_names, self.num_classes) if self.num_classes else None
        self.lr = check_number(lr, "lr", low=0, low_open=True)
        self.weight_decay = check_number(weight_decay, "weight_decay", low=0)
        self.threshold = check_number(threshold, "threshold", low=0, low_open=True)
        if not self.threshold < 1:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}")
        self._logit_threshold = math.log(self.threshold / (1 - self.threshold))
        if gradient_clip_val is not None:
            gradient_clip_val = check_number(gradient_clip_val, "gradient_clip_val", low=0, low_open=True)
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(f"`gradient_clip_algorithm` must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
        if isinstance(grad_ratio_every_n_steps, bool) or not isinstance(grad_ratio_every_n_steps, int) or grad_ratio_every_n_steps < 0:
            raise ValueError(f"`grad_ratio_every_n_steps` must be an int >= 0, got {grad_ratio_every_n_steps!r}")
        self.model = model
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.grad_ratio_every_n_steps = grad_ratio_every_n_steps
        self.validate_args = validate_args

        context: dict[str, Any] = {"num_groups": num_groups, "group_names": self.group_names, "threshold": self.threshold}
        context["num_classes"] = self.num_classes
        if self.num_classes is not None or self.task == "regression":
            context.pop("threshold")  # K classes: hard predictions are the argmax; regression: none
            context["class_names"] = self.class_names
        if (
            mode == "adversarial" and kwargs.get("adversary_input") == "representation"
            and kwargs.get("adversary") is None and "representation_features" not in kwargs
        ):
            context["representation_features"] = self._representation_features()
        self.method: FairnessMethod = make_method(mode, context, **kwargs)
        self.method.validate_args = False  # the module checks each batch itself
        self.mode = self.method.name or type(self.method).__name__
        self._check_method_task()

        # manual optimization: the model's and the method's optimizers, clipping, schedulers and the
        # method's update after each step are ours. A subclass's own training_step keeps working:
        # see __init_subclass__ and _optimize_user_loss.
        self.automatic_optimization = False
        self._user_step_depth = 0
        self._fair_step_ran = False

        self.val_mse = self.test_mse = self.val_mae = self.test_mae = None
        if self.task == "regression":
            self.val_metrics = regression_fairness_metrics(
                num_groups, group_names=self.group_names, value_range=value_range or (0.0, 1.0), prefix="val/"
            )
            self.val_mse, self.test_mse = MeanSquaredError(), MeanSquaredError()
            self.val_mae, self.test_mae = MeanAbsoluteError(), MeanAbsoluteError()
            self.val_accuracy = self.test_accuracy = self.val_auroc = self.test_auroc = None
        elif self.num_classes is None:
            self.val_metrics = fairness_metrics(num_groups, group_names=self.group_names, from_logits=True, threshold=self.threshold, prefix="val/")
            self.val_accuracy, self.test_accuracy = BinaryAccuracy(threshold=self.threshold), BinaryAccuracy(threshold=self.threshold)
            self.val_auroc, self.test_auroc = BinaryAUROC(), BinaryAUROC()
        else:
            k = self.num_classes
            self.val_metrics = multiclass_fairness_metrics(
                num_groups, k, class_names=self.class_names, group_names=self.group_names, from_logits=True, prefix="val/"
            )
            self.val_accuracy, self.test_accuracy = (MulticlassAccuracy(k, average="micro") for _ in range(2))
            self.val_auroc, self.test_auroc = MulticlassAUROC(k), MulticlassAUROC(k)
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        # sample-weighted means, summed across DDP ranks: equal to the single-process value
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        #: the latest per-step diagnostics (violations, multipliers, grad-norm ratio, eta), also
        #: written to the loggers every ``log_every_n_steps``
        self.last_detail_metrics: dict[str, float] = {}
        self.prediction_calibrator = None  # see the properties below
        self.prediction_thresholds = None
        self._epoch_sums: dict[str, Tensor] = {}
        self._val_selection_share: float | None = None
        # regression: validation [count, sum, sum of squares] of predictions and targets (the
        # end-of-fit check for a constant model), summed across ranks at the epoch's end
        self._val_moments = torch.zeros(5, dtype=torch.float64)
        self._val_prediction_std: tuple[float, float] | None = None

    def _check_method_task(self) -> None:
        """A regression method on a regression module, a classification method on a classifier."""
        if isinstance(self.method, ERM):
            return
        method_task = getattr(self.method, "task", "binary")
        if (method_task == "regression") == (self.task == "regression"):
            return
        what = type(self.method).__name__
        definition = getattr(self.method, "fairness", None) or getattr(self.method, "user_constraints", None)
        if isinstance(definition, (list, tuple)):
            definition = [getattr(c, "label", c) for c in definition]
        detail = f", fairness definition {definition!r}" if definition is not None else ""
        if self.task == "regression":
            raise ValueError(
                f"mode={self.mode!r} ({what}{detail}) is for classifiers, but task='regression'; a regression module "
                "takes mode='erm', mode='penalty' with fairness='regression_demographic_parity', or "
                "mode='bounded_group_loss'"
            )
        raise ValueError(
            f"mode={self.mode!r} ({what}{detail}) is for regression models (one continuous prediction per "
            f"sample), but the module's task is {self.task!r}; pass task='regression'"
        )

    # ------------------------------------------------------------------ post-processing (classifiers)
    @property
    def prediction_calibrator(self) -> Any:
        """Optional object with ``transform(probs, groups)`` applied by ``predict_step``
        (set by :class:`~fair_lightning.callbacks.GroupCalibrationCallback`; in the checkpoint).
        Classifiers only."""
        return self.__dict__.get("_prediction_calibrator")

    @prediction_calibrator.setter
    def prediction_calibrator(self, value: Any) -> None:
        if value is not None and self.task == "regression":
            raise ValueError(
                "a group calibrator (`prediction_calibrator`) is for classifiers' probabilities; this module has "
                "task='regression' (remove GroupCalibrationCallback from the trainer's callbacks)"
            )
        self.__dict__["_prediction_calibrator"] = value

    @property
    def prediction_thresholds(self) -> Any:
        """Optional group thresholds (``apply(probs, groups) -> 0/1``): ``predict_step`` returns
        their decisions and the test metrics are theirs (set by
        :class:`~fair_lightning.callbacks.GroupThresholdCallback` or
        ``ConstrainedModelSelection(thresholds=True)``). Binary classifiers only."""
        return self.__dict__.get("_prediction_thresholds")

    @prediction_thresholds.setter
    def prediction_thresholds(self, value: Any) -> None:
        if value is not None and self.task == "regression":
            raise ValueError(
                "group thresholds (`prediction_thresholds`) turn a binary classifier's probabilities into decisions; "
                "this module has task='regression' (remove GroupThresholdCallback and selection thresholds)"
            )
        self.__dict__["_prediction_thresholds"] = value

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a subclass's own ``training_step`` so that the loss it returns is optimized (under
        manual optimization Lightning would silently ignore it)."""
        super().__init_subclass__(**kwargs)
        user = cls.__dict__.get("training_step")
        if user is not None and not getattr(user, "_fair_lightning_wrapped", False):
            cls.training_step = _wrap_user_training_step(user)

    # ------------------------------------------------------------------ hooks for users
    def unpack_batch(self, batch: Any) -> tuple[Any, Tensor | None, Tensor | None]:
        """Split a batch into ``(x, target, groups)``.

        The default accepts a tuple/list ``(x, target, groups)`` (``(x,)`` or ``(x, target)`` for
        prediction) or a mapping with keys ``"x"``, ``"target"``, ``"groups"``. Override for other
        layouts.
        """
        if isinstance(batch, Mapping):
            if "x" not in batch:
                raise ValueError(
                    f"a dict batch must have the keys 'x', 'target' and 'groups', got keys {sorted(batch)}; "
                    "override `unpack_batch` for other layouts"
                )
            return batch["x"], batch.get("target"), batch.get("groups")
        if isinstance(batch, (tuple, list)):
            if len(batch) == 3:
                return batch[0], batch[1], batch[2]
            if len(batch) in (1, 2):
                return batch[0], (batch[1] if len(batch) == 2 else None), None
        if isinstance(batch, Tensor):
            return batch, None, None
        raise ValueError(
            "`batch` must be (x, target, groups), a dict with keys 'x', 'target', 'groups', or x alone; "
            f"got {type(batch).__name__}{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}. "
            "Override `unpack_batch` for other layouts."
        )

    def forward(self, x: Any) -> Tensor:
        """The model's logits."""
        if self.model is None:
            raise NotImplementedError("pass `model=` or override `forward` in a subclass")
        return self.model(x)

    def forward_with_representation(self, x: Any) -> tuple[Tensor, Tensor]:
        """Logits and the representation an adversary may see.

        The default, for an ``nn.Sequential`` model, is the input of its last layer; override for
        other architectures.
        """
        if isinstance(self.model, nn.Sequential) and len(self.model) > 1:
            rep = self.model[:-1](x)
            return self.model[-1](rep), rep
        raise NotImplementedError(
            "adversary_input='representation' needs an nn.Sequential model or an override of "
            "`forward_with_representation` returning (logits, representation)"
        )

    def task_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The task loss; binary cross-entropy on logits by default (cross-entropy for K classes,
        mean squared error for regression)."""
        if self.task == "regression":
            return torch.nn.functional.mse_loss(logits.reshape(-1), target.reshape(-1).to(logits.dtype))
        if self.num_classes is not None:
            return cross_entropy_with_logits(logits, target)
        return binary_cross_entropy_with_logits(logits, target)

    def primal_parameters(self) -> list[Tensor]:
        """Parameters of the model's optimizer: all but the method's own (multipliers, adversary)."""
        skip = {id(p) for p in self.method.parameters()}
        return [p for p in self.parameters() if id(p) not in skip and p.requires_grad]

    # ------------------------------------------------------------------ method access
    @property
    def multipliers(self):
        """The Lagrange multipliers of a Lagrangian method (``None`` otherwise)."""
        return getattr(self.method, "multipliers", None)

    @property
    def constraint_names(self) -> list[str]:
        """The inequalities' logged names (a Lagrangian method; empty otherwise)."""
        return list(getattr(self.method, "constraint_names", []))

    @property
    def eta(self) -> float:
        """``eta`` of a penalty or adversarial method at the current step (0 otherwise)."""
        return float(getattr(self.method, "eta", 0.0))

    def constraint_state(self) -> pd.DataFrame:
        """The method's state by constraint, as a ``pandas.DataFrame`` (Lagrangian methods)."""
        try:
            return self.method.state_table()
        except ValueError:
            raise ValueError(f"`constraint_state` needs a constrained method, this module has mode={self.mode!r}") from None

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        params = self.primal_parameters()
        if self.optimizer_factory is not None:
            opt = self.optimizer_factory(params)
        else:
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        extra = self.method.configure_optimizers()
        if self.automatic_optimization and extra:
            # Lightning's automatic optimization takes one optimizer: the method's parameters
            # join it with their own settings (one backward trains both through gradient reversal)
            for other in extra:
                for group in other.param_groups:
                    opt.add_param_group({k: v for k, v in group.items()})
            extra = []
        first: dict[str, Any] = {"optimizer": opt}
        if self.lr_scheduler_factory is not None:
            scheduler = self.lr_scheduler_factory(opt)
            first["lr_scheduler"] = scheduler if isinstance(scheduler, Mapping) else {"scheduler": scheduler, "interval": "epoch"}
        if not extra:
            return first
        return [first, *({"optimizer": o} for o in extra)]

    def _step_schedulers(self, interval: str) -> None:
        """Step the schedulers of ``interval`` as Lightning does under automatic optimization."""
        trainer = self._trainer
        if trainer is None:
            return
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = trainer.fit_loop.epoch_loop.batch_progress.current.ready if interval == "step" else trainer.current_epoch + 1
            if count % config.frequency != 0:
                continue
            if config.reduce_on_plateau:
                monitor = config.monitor
                value = trainer.callback_metrics.get(monitor) if monitor else None
                if value is None:
                    if config.strict:
                        raise ValueError(
                            f"the ReduceLROnPlateau scheduler monitors {monitor!r}, which is not among the logged "
                            f"metrics {sorted(trainer.callback_metrics)}; set `monitor` to one of them"
                        )
                    continue
                config.scheduler.step(value)
            else:
                config.scheduler.step()

    # ------------------------------------------------------------------ helpers
    def _representation_features(self) -> int:
        if isinstance(self.model, nn.Sequential):
            last = self.model[-1]
            if isinstance(last, nn.Linear):
                return last.in_features
        raise ValueError(
            "adversary_input='representation' with the default adversary needs an nn.Sequential model ending in "
            "nn.Linear (to size the adversary); pass `adversary=` or `representation_features=`"
        )

    def _check_batch(self, logits: Tensor, target: Tensor | None, groups: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if self.task == "regression":
            if target is None or groups is None:
                raise ValueError("training and evaluation batches must provide `target` and `groups`; see `unpack_batch`")
            if self.validate_args:
                logits, target, groups = check_regression_inputs(logits, target, groups, self.num_groups)
            preds = logits.reshape(-1)
            return preds, target.reshape(-1).to(preds.dtype), groups.reshape(-1).long()
        k = self.num_classes
        logits = _check_logits(logits) if k is None else _check_class_logits(logits, k)
        if target is None or groups is None:
            raise ValueError("training and evaluation batches must provide `target` and `groups`; see `unpack_batch`")
        n = logits.shape[0]
        if self.validate_args:
            target = check_binary_target(target, n) if k is None else check_class_target(target, n, k)
            groups = check_groups(groups, n, self.num_groups)
        elif k is not None:
            target = target.long()
        if self.__dict__.get("_inferred_classes") is not None and target.numel():
            top = target.detach().max().reshape(1)  # no host sync: a running maximum on the device
            seen = self.__dict__.get("_top_label")
            self.__dict__["_top_label"] = top if seen is None else torch.maximum(seen.to(top.device), top)
        return logits, target.reshape(-1), groups.reshape(-1).long()

    def _forward_checked(self, x: Any, representation: bool = False) -> Any:
        """``self(x)`` (or :meth:`forward_with_representation`), with a clear error when the
        features' dtype is not the model's (``float64`` features into a ``float32`` model)."""
        if isinstance(x, Tensor) and x.is_floating_point() and x.dtype != self.dtype:
            raise ValueError(
                f"the batch's features `x` have dtype {x.dtype} but the model's parameters are {self.dtype}; "
                f"convert the features (`x.to({self.dtype})`, e.g. in your Dataset) or the model "
                f"(`model.to({x.dtype})`)"
            )
        return self.forward_with_representation(x) if representation else self(x)

    def _explain_unchecked(self, err: Exception, groups: Tensor | None) -> None:
        """With ``validate_args=False`` a bad group id surfaces as an indexing error deep in the
        statistics core: name it instead."""
        if self.validate_args or not isinstance(groups, Tensor) or groups.numel() == 0:
            return
        lo, hi = int(groups.min()), int(groups.max())
        if lo < 0 or hi >= self.num_groups:
            raise ValueError(
                f"`groups` must be ids in [0, num_groups={self.num_groups}), got values in [{lo}, {hi}] "
                "(validate_args=False skips this check on every step; it failed here)"
            ) from err

    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor, reduce_op="sum")

    def _detail_step(self, step: int) -> bool:
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 50
        return step % max(every, 1) == 0

    def _grad_ratio_start(self, task: Tensor, fairness_term: Tensor) -> list[tuple[Tensor, Tensor]] | None:
        """``||grad fairness_term|| / ||grad task||`` over the model's parameters, part one.

        On one device the task term's gradient is the one extra backward: the fairness term's is
        the total gradient (after :meth:`manual_backward`) minus it, see :meth:`_grad_ratio_end`.
        Under DDP the total gradient is averaged over ranks, and with a gradient scaler (fp16
        mixed precision) it is scaled, so there both terms' local gradients are taken here and the
        ratio logged at once (two extra backwards).
        """
        params = self.primal_parameters()
        task_grads = torch.autograd.grad(task, params, retain_graph=True, allow_unused=True)
        trainer = self._trainer
        if trainer is None or (trainer.world_size == 1 and getattr(trainer.precision_plugin, "scaler", None) is None):
            return [(p, g) for p, g in zip(params, task_grads) if g is not None]
        fair_grads = torch.autograd.grad(fairness_term, params, retain_graph=True, allow_unused=True)
        self._log_grad_ratio([g for g in fair_grads if g is not None], [g for g in task_grads if g is not None])
        return None

    def _grad_ratio_end(self, task_grads: list[tuple[Tensor, Tensor]]) -> None:
        """Part two on one device: the fairness gradient is ``p.grad - task_grad``."""
        fair = [p.grad - g if p.grad is not None else -g for p, g in task_grads]
        self._log_grad_ratio(fair, [g for _, g in task_grads])

    def _log_grad_ratio(self, fair: list[Tensor], task: list[Tensor]) -> None:
        def norm(grads: list[Tensor]) -> Tensor:
            return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.zeros(())

        self._log_detail({"train/grad_norm_ratio": norm(fair) / norm(task).clamp_min(1e-12)})

    @staticmethod
    def _check_finite(name: str, value: Tensor, step: int) -> None:
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"the {name} is {value.item()} at step {step}; training stopped. Check the inputs, lower the "
                "learning rate, or clip gradients (`gradient_clip_val`)."
            )

    def _accumulate(self, name: str, value: Tensor, weight: float) -> None:
        """Add to a sample-weighted epoch mean (logged, summed across ranks, at epoch end).

        ``self.log`` costs about a millisecond on CPU, more than a fairness term itself; the
        epoch means come from running sums instead of Lightning's per-step accumulation.
        """
        value = value.detach().double() * weight
        running = self._epoch_sums.get(name)
        if running is None:
            self._epoch_sums[name] = torch.stack((value, value.new_tensor(float(weight))))
        else:
            running[0] += value
            running[1] += weight

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._fair_step_ran = True
        x, target, groups = self.unpack_batch(batch)
        rep = None
        if self.method.needs_representation:
            logits, rep = self._forward_checked(x, representation=True)
        else:
            logits = self._forward_checked(x)
        logits, target, groups = self._check_batch(logits, target, groups)
        try:
            return self._training_step_checked(logits, target, groups, rep)
        except (RuntimeError, IndexError) as err:
            self._explain_unchecked(err, groups)
            raise

    def _training_step_checked(self, logits: Tensor, target: Tensor, groups: Tensor, rep: Tensor | None) -> Tensor:
        step = int(self.method.num_steps)
        detail = self._detail_step(step)

        task = self.task_loss(logits, target)
        self._check_finite("task loss", task, step)
        if isinstance(self.method, ERM):  # no term: count the step only
            term = None
            self.method.num_steps.add_(1)
        else:
            term = self.method(logits, target, groups, rep)
        total = task if term is None else task + term
        task_grads = None
        if term is not None and self.grad_ratio_every_n_steps and step % self.grad_ratio_every_n_steps == 0 and term.requires_grad:
            task_grads = self._grad_ratio_start(task, term)

        self._optimize(total, task_grads)
        self._log_step(task, total, logits.shape[0], detail)
        return total.detach()

    def _log_step(self, task: Tensor, total: Tensor, n: int, detail: bool) -> None:
        self.log("train/task_loss", task.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self._accumulate("train/task_loss", task, n)
        self._accumulate("train/loss", total, n)
        name = self.method.term_name
        last = self.method._last
        if name is not None and name in last:
            self._accumulate(name, last[name], n)
        if detail and not isinstance(self.method, ERM):
            values = dict(self.method.diagnostics())
            if self.method.name == "lagrangian":
                values["train/lagrangian"] = total.detach()
            self._log_detail(values)

    def _optimize(self, loss: Tensor, task_grads: list[tuple[Tensor, Tensor]] | None = None) -> None:
        """One step of every optimizer on ``loss``: zero the gradients, backward, clip the model's,
        step, then the method's own update (dual step) and the step-interval schedulers."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(loss)
        if task_grads is not None:
            self._grad_ratio_end(task_grads)
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizers[0], gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm=self.gradient_clip_algorithm)
        for opt in optimizers:
            opt.step()
        self.method.after_optimizer_step()
        self._step_schedulers("step")

    def _optimize_user_loss(self, output: Any, method_steps_before: int) -> Any:
        """Optimize the loss a subclass's own ``training_step`` returned, as Lightning's automatic
        optimization would: zero the gradients, backward, clip, step every optimizer, update the
        method (dual step), step the schedulers."""
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if loss is None:
            return output  # the user skipped the batch
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise ValueError(
                f"{type(self).__name__}.training_step must return the loss (a tensor with a gradient) or a dict "
                f"with 'loss', got {type(loss).__name__}"
            )
        if not isinstance(self.method, ERM) and int(self.method.num_steps) == method_steps_before:
            raise RuntimeError(
                f"{type(self).__name__}.training_step never called `self.method(logits, target, groups)`, so the "
                f"{self.mode!r} fairness method was not applied. Add `loss = loss + self.method(logits, target, "
                "groups)` to your training_step, or call `super().training_step(batch, batch_idx)`."
            )
        self._check_finite("training loss", loss.detach(), int(self.method.num_steps))
        self._optimize(loss)
        self._accumulate("train/loss", loss, 1.0)
        return loss.detach() if isinstance(output, Tensor) else {**output, "loss": loss.detach()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.automatic_optimization:  # a user who switched to Lightning's own optimization
            self.method.after_optimizer_step()

    def _log_detail(self, values: dict[str, Tensor | float]) -> None:
        """Write per-step diagnostics straight to the loggers, on logging steps only.

        Like Lightning's ``LearningRateMonitor``: the values are identical on every rank (the
        multipliers and running sums are synced), so rank zero writes them, at the step Lightning
        uses for ``self.log``. Going through ``self.log`` would cost about a millisecond per
        scalar per step. The latest values stay in :attr:`last_detail_metrics`.
        """
        metrics = {k: float(v) for k, v in values.items()}
        self.last_detail_metrics.update(metrics)
        trainer = self._trainer
        if trainer is None or not trainer.loggers or not trainer.is_global_zero or trainer.sanity_checking:
            return
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_start(self) -> None:
        set_steps = getattr(self.method, "set_steps_per_epoch", None)
        trainer = self._trainer
        if set_steps is not None and trainer is not None and int(getattr(self.method, "steps_per_epoch", 0)) == 0:
            batches = trainer.num_training_batches
            if isinstance(batches, int) and batches > 0:
                set_steps(max(1, batches // max(1, trainer.accumulate_grad_batches)))
        set_total = getattr(self.method, "set_total_steps", None)
        if set_total is not None and trainer is not None and int(getattr(self.method, "warmup_steps", 1)) == 0:
            try:
                total = trainer.estimated_stepping_batches
            except Exception:  # an unsized loader: no warm-up
                total = None
            if isinstance(total, (int, float)) and 0 < total < float("inf"):
                set_total(int(total))

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = {}

    def on_train_epoch_end(self) -> None:
        self._check_inferred_classes()
        if self._epoch_sums:
            names = sorted(self._epoch_sums)
            sums = self._reduce_sum(torch.stack([self._epoch_sums[n] for n in names]))  # one all-reduce
            _log_reduced(self, {f"{name}_epoch": (total / weight.clamp_min(1e-12)).float() for name, (total, weight) in zip(names, sums)})
        self._epoch_sums = {}
        if not self.automatic_optimization:
            self._step_schedulers("epoch")
        hard = getattr(self.method, "hard_violations", None)
        if hard is not None:
            values = hard()
            if values.numel():  # the method's hard violations are all-reduced sums
                _log_reduced(self, {"fairness/violation_hard_max_epoch": values.max().float()})

    def _check_inferred_classes(self) -> None:
        """Once, after the first training epoch: K was read off the model's last layer (K outputs)
        but every label seen is 0 or 1, as when a binary classifier ends in K > 2 outputs by
        mistake; it would train silently as a K-class model."""
        k = self.__dict__.pop("_inferred_classes", None)
        top = self.__dict__.pop("_top_label", None)
        if k is None or k <= 2:  # the same on every rank: all ranks reduce, or none
            return
        if top is None:  # this rank saw no labelled row
            top = torch.full((1,), -1, dtype=torch.long, device=self.device)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            top = trainer.strategy.reduce(top.to(self.device), reduce_op="max")
        if -1 < int(top) <= 1:
            rank_zero_warn(
                f"num_classes={k} was inferred from the model's last layer ({k} outputs), but every label of the first "
                f"epoch is 0 or 1. For a binary classifier, end the model in one output (nn.Linear(..., 1)); for {k} "
                f"classes of which these data hold two, pass num_classes={k} to say so",
                category=UserWarning,
            )

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, target, groups = self.unpack_batch(batch)
        logits, target, groups = self._check_batch(self._forward_checked(x), target, groups)
        loss = self.task_loss(logits, target)
        if self.task == "regression":
            return self._regression_eval_step(logits, target, groups, loss, stage)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        scores = logits
        thresholds = self.prediction_thresholds
        if thresholds is not None and self.num_classes is None:
            # the returned classifier is the thresholded one: its rates are those of its decisions
            # (and its probabilities are 0/1 for the calibration metric)
            decisions = self._threshold_decisions(logits, groups).to(logits.dtype)
            scores = torch.where(decisions > 0.5, 30.0, -30.0).to(logits.dtype)
        try:
            metrics.update(scores, target, groups)
        except RuntimeError as err:
            self._explain_unchecked(err, groups)
            raise
        probs = torch.sigmoid(logits) if self.num_classes is None else torch.softmax(logits, 1)
        decided = torch.sigmoid(scores) if self.num_classes is None else probs
        (self.val_accuracy if stage == "val" else self.test_accuracy).update(decided, target)
        (self.val_auroc if stage == "val" else self.test_auroc).update(probs, target)
        (self.val_loss if stage == "val" else self.test_loss).update(loss.detach(), weight=logits.shape[0])
        # callbacks (calibration, dashboard, selection, thresholds) reuse these instead of a second forward pass
        return {"loss": loss, "logits": logits.detach(), "target": target, "groups": groups}

    def _regression_eval_step(self, preds: Tensor, target: Tensor, groups: Tensor, loss: Tensor, stage: str) -> dict[str, Tensor]:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        try:
            metrics.update(preds, target, groups)
        except RuntimeError as err:
            self._explain_unchecked(err, groups)
            raise
        (self.val_mse if stage == "val" else self.test_mse).update(preds, target)
        (self.val_mae if stage == "val" else self.test_mae).update(preds, target)
        (self.val_loss if stage == "val" else self.test_loss).update(loss.detach(), weight=preds.shape[0])
        if stage == "val":
            p, y = preds.detach().double(), target.double()
            moments = torch.stack((p.new_tensor(float(p.numel())), p.sum(), p.square().sum(), y.sum(), y.square().sum()))
            if self._val_moments.device != moments.device:
                self._val_moments = self._val_moments.to(moments.device)
            self._val_moments += moments
        return {"loss": loss, "logits": preds.detach(), "target": target, "groups": groups}

    def _regression_eval_epoch_end(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        mse = self.val_mse if stage == "val" else self.test_mse
        mae = self.val_mae if stage == "val" else self.test_mae
        loss = self.val_loss if stage == "val" else self.test_loss
        if mse.update_count == 0:
            return  # a user's own evaluation step: it logs what it wants
        values = {k: v.float() for k, v in metrics.compute().items()}
        values[f"{stage}/mse"] = mse.compute()
        values[f"{stage}/mae"] = mae.compute()
        values[f"{stage}/loss"] = loss.compute()
        if stage == "val":
            n, sp, spp, sy, syy = self._reduce_sum(self._val_moments).tolist()
            self._val_moments.zero_()
            if n > 0:
                def std(total: float, squares: float) -> float:
                    return math.sqrt(max(squares / n - (total / n) ** 2, 0.0))

                self._val_prediction_std = (std(sp, spp), std(sy, syy))
        _log_reduced(self, values)  # metrics' compute() synced them
        for m in (metrics, mse, mae, loss):
            m.reset()

    def _eval_epoch_end(self, stage: str) -> None:
        if self.task == "regression":
            return self._regression_eval_epoch_end(stage)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        accuracy = self.val_accuracy if stage == "val" else self.test_accuracy
        auroc = self.val_auroc if stage == "val" else self.test_auroc
        loss = self.val_loss if stage == "val" else self.test_loss
        if accuracy.update_count == 0:
            return  # a user's own evaluation step: it logs what it wants
        values = {k: v.float() for k, v in metrics.compute().items()}
        values[f"{stage}/accuracy"] = accuracy.compute()
        values[f"{stage}/auroc"] = auroc.compute()
        values[f"{stage}/loss"] = loss.compute()
        group = metrics["group"]
        if self.num_classes is None:
            sums = GroupSums.from_stacked(self._reduce_sum(group.group_sums.stack()))  # synced, like compute()
            count, pred = float(sums.count.sum()), float(sums.pred.sum())
            if stage == "val" and count > 0:
                self._val_selection_share = pred / count
            values.update(self._difference_intervals(sums, stage))
        else:
            predicted = self._reduce_sum(group.confusion.sum((0, 1)))  # (K,) predictions per class
            count = float(predicted.sum())
            if stage == "val" and count > 0:
                self._val_selection_share = (int(predicted.argmax()), float(predicted.max()) / count)
        _log_reduced(self, values)  # metrics' compute() and _reduce_sum synced them
        for m in (metrics, accuracy, auroc, loss):
            m.reset()

    @staticmethod
    def _difference_intervals(sums: GroupSums, stage: str, confidence: float = 0.95) -> dict[str, Tensor]:
        """95% Newcombe intervals of the DP and EO differences (max - min over groups with data);
        for EO the larger of the TPR and FPR intervals' ends."""
        out = {}
        for key, definition in (("dp_difference", "demographic_parity"), ("eo_difference", "equalized_odds")):
            lows, highs = [], []
            for rate in DEFINITIONS[definition]:
                num, den = rate_fraction(sums, rate)
                interval, _ = max_min_difference_interval(num, den, confidence)
                lows.append(float(interval.low))
                highs.append(float(interval.high))
            out[f"{stage}/{key}_ci_low"] = torch.tensor(max(lows))
            out[f"{stage}/{key}_ci_high"] = torch.tensor(max(highs))
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled in a ``ddp_spawn`` worker: its metric states and running sums are still the
        # parent's shared-memory tensors, one copy for all ranks (see ``own_shared_tensors``)
        super().__setstate__(state)
        own_shared_tensors(self)

    def setup(self, stage: str) -> None:
        """Regression: refuse the classifiers' callbacks; the bins of ``val/cdf_gap`` from the
        training targets' range (unless ``value_range``)."""
        if self.task != "regression":
            return
        self._refuse_classifier_callbacks()
        if self._value_range is not None or getattr(self, "_edges_set", False):
            return
        self._edges_set = True
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        try:
            target = datamodule.train_tensors[1] if datamodule is not None else None
        except Exception:  # not set up, or another layout
            target = None
        if not isinstance(target, Tensor) or target.numel() == 0 or not bool(torch.isfinite(target).all()):
            rank_zero_warn(
                "FairLightningModule(task='regression'): `val/cdf_gap` compares the groups' prediction CDFs on 100 bins "
                "over (0, 1); pass `value_range=(low, high)` for predictions on another scale"
            )
            return
        low, high = float(target.min()), float(target.max())
        pad = 0.05 * (high - low) if high > low else 1.0
        edges = torch.linspace(low - pad, high + pad, self.val_metrics["cdf_gap"].bin_edges.numel(), dtype=torch.float64)
        for metrics in (self.val_metrics, self.test_metrics):
            metrics["cdf_gap"].bin_edges.copy_(edges.to(metrics["cdf_gap"].bin_edges.device))

    def _refuse_classifier_callbacks(self) -> None:
        from fair_lightning.callbacks import GroupCalibrationCallback, GroupThresholdCallback

        # (ConstrainedModelSelection judges regression models too, and FairnessDashboard draws them)
        classifier_only = (GroupCalibrationCallback, GroupThresholdCallback)
        found = [type(cb).__name__ for cb in (self._trainer.callbacks if self._trainer is not None else ()) if isinstance(cb, classifier_only)]
        if found:
            raise ValueError(
                f"the trainer's callbacks {found} work on classifiers' probabilities and labels; this module has "
                "task='regression' (remove them; with the Hydra application use callbacks=regression)"
            )

    def on_fit_end(self) -> None:
        if self.task == "regression":
            if self._val_prediction_std is not None:
                pred_std, target_std = self._val_prediction_std
                if pred_std <= CONSTANT_STD * target_std or (target_std == 0 and pred_std < 1e-12):
                    rank_zero_warn(
                        f"the trained model's validation predictions have standard deviation {pred_std:.3g} (targets: "
                        f"{target_std:.3g}): a (near-)constant regression model (mode={self.mode!r}). Its fairness "
                        "metrics are trivially small; lower the learning rate or loosen the fairness strength, and "
                        "compare with mode='erm'."
                    )
            return
        share = self._val_selection_share
        if isinstance(share, tuple):  # K classes: (most predicted class, its share)
            cls, share = share
            if share >= CONSTANT_SHARE:
                rank_zero_warn(
                    f"the trained model predicts class {self.class_names[cls]} for {100 * share:.1f}% of the validation "
                    f"samples: a (near-)constant classifier (mode={self.mode!r}). Its fairness metrics are trivially "
                    "small; lower the learning rate or loosen the fairness strength, and compare with mode='erm'."
                )
            return
        if share is not None and one_class(share):
            cls = 1 if share >= 0.5 else 0
            rank_zero_warn(
                f"the trained model predicts class {cls} for {100 * max(share, 1 - share):.1f}% of the validation "
                f"samples: a (near-)constant classifier (mode={self.mode!r}). Its fairness metrics are trivially "
                "small; lower the learning rate or loosen the fairness strength, and compare with mode='erm'."
            )

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Probabilities of the positive class (calibrated per group when a calibrator is set), or,
        when group thresholds are set (:class:`~fair_lightning.callbacks.GroupThresholdCallback`),
        the 0/1 decisions they make. K classes: the ``(N, K)`` softmax probabilities (calibrated
        per group by a K-class calibrator when one is set). Regression: the ``(N,)`` predictions."""
        x, _, groups = self.unpack_batch(batch)
        outputs = self._forward_checked(x)  # float64 features into a float32 model: named, as in fit
        if self.task == "regression":
            return check_regression_values(outputs, None, "preds").reshape(-1)
        if self.num_classes is not None:
            return self._predict_classes(_check_class_logits(outputs, self.num_classes), groups)
        logits = _check_logits(outputs)
        if self.prediction_thresholds is not None:
            if groups is None:
                raise ValueError("group thresholds are set, so prediction batches must provide `groups`")
            return self._threshold_decisions(logits, groups)
        if self.prediction_calibrator is not None and groups is None:
            raise ValueError("a group calibrator is set, so prediction batches must provide `groups`")
        return self._calibrated_probs(logits, groups)

    def _calibrated_probs(self, logits: Tensor, groups: Tensor | None) -> Tensor:
        """Probabilities of the positive class, calibrated per group when a calibrator is set."""
        calibrator = self.prediction_calibrator
        if calibrator is None:
            return torch.sigmoid(logits)
        # in float64, as the calibrator was fitted (GroupCalibrationCallback); temperature scaling
        # works on the logits (exact beyond a saturated sigmoid); returned in the model's dtype
        scores = logits.double() if getattr(calibrator, "method", None) == "temperature" else torch.sigmoid(logits.double())
        return torch.as_tensor(calibrator.transform(scores, groups)).to(logits.dtype)

    def _threshold_decisions(self, logits: Tensor, groups: Tensor) -> Tensor:
        """The group thresholds' 0/1 decisions, on the probabilities they were fitted on
        (calibrated, or the model's own)."""
        thresholds = self.prediction_thresholds
        # float64 as when they were fitted (validation_probabilities, then the calibrator's
        # transform_probabilities): a float32 sigmoid can move a score that sits on a threshold to
        # the other side of it
        probs = torch.sigmoid(logits.double())
        if getattr(thresholds, "calibrated", False) and self.prediction_calibrator is not None:
            probs = self.prediction_calibrator.transform_probabilities(probs, groups)
        return thresholds.apply(probs, groups)

    def _predict_classes(self, logits: Tensor, groups: Tensor | None) -> Tensor:
        if self.prediction_thresholds is not None:
            raise ValueError("group thresholds are for binary classifiers; this module has num_classes="
                             f"{self.num_classes} (predict the argmax of the probabilities instead)")
        calibrator = self.prediction_calibrator
        if calibrator is None:
            return torch.softmax(logits, 1)
        if groups is None:
            raise ValueError("a group calibrator is set, so prediction batches must provide `groups`")
        return calibrator.transform(logits, groups)

    # ------------------------------------------------------------------ checkpointing
    def get_extra_state(self) -> dict[str, Any]:
        """The fitted post-processing (``prediction_calibrator``, ``prediction_thresholds``) as
        plain tensors and numbers: it is part of ``state_dict()``, so it travels with the weights
        into checkpoints, ``torch.save(module.state_dict())`` files (``weights_only=True`` reads
        them) and from a ``ddp_spawn`` worker back to the calling process."""
        state: dict[str, Any] = {"version": 1}
        for key, value in (("calibrator", self.prediction_calibrator), ("thresholds", self.prediction_thresholds)):
            state[key] = value.state_dict() if value is not None and hasattr(value, "state_dict") else None
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or not {"calibrator", "thresholds"} <= set(state):
            raise ValueError(
                "the state_dict's `_extra_state` must be FairLightningModule.get_extra_state()'s mapping with "
                f"'calibrator' and 'thresholds', got {type(state).__name__}"
            )
        from fair_lightning.calibration import GroupFairnessCalibrator
        from fair_lightning.postprocessing import GroupThresholds

        calibrator, thresholds = state["calibrator"], state["thresholds"]
        self.prediction_calibrator = None if calibrator is None else GroupFairnessCalibrator.from_state_dict(calibrator)
        self.prediction_thresholds = None if thresholds is None else GroupThresholds.from_state_dict(thresholds)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        missing_keys = args[2]
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, *args)
        key = prefix + "_extra_state"
        if key in missing_keys[before:]:
            # weights saved before the post-processing was part of state_dict (or a selection
            # snapshot of the weights alone): the calibrator and thresholds are left as they are
            missing_keys.remove(key)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # version 3: the calibrator and thresholds are in the state_dict (get_extra_state)
        state: dict[str, Any] = {"version": 3, "mode": self.mode}
        # the running epoch means: a checkpoint taken mid-epoch resumes them (Lightning does not
        # call on_train_epoch_start on a mid-epoch restart)
        state["epoch_sums"] = {k: v.detach().clone() for k, v in self._epoch_sums.items()}
        checkpoint["fair_lightning"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("fair_lightning", {})
        weights = checkpoint.get("state_dict")
        if state.get("version", 1) < 2 and isinstance(weights, dict):
            _upgrade_v1_state_dict(weights)
        self._epoch_sums = {k: v.clone() for k, v in state.get("epoch_sums", {}).items()}
        # version 2 kept the post-processing here (version 3: in the state_dict, loaded after this hook)
        if state.get("calibrator") is not None:
            from fair_lightning.calibration import GroupFairnessCalibrator

            self.prediction_calibrator = GroupFairnessCalibrator.from_state_dict(state["calibrator"])
        if state.get("thresholds") is not None:
            from fair_lightning.postprocessing import GroupThresholds

            self.prediction_thresholds = GroupThresholds.from_state_dict(state["thresholds"])


#: keys whose "use sync_dist=True" advice is already silenced (see ``_log_reduced``)
_REDUCED_KEYS: set[str] = set()


def _log_reduced(module: pl.LightningModule, values: Mapping[str, Tensor]) -> None:
    """``module.log_dict(values)`` for epoch values that are already reduced across ranks (equal
    on every rank). Under DDP Lightning advises ``sync_dist=True`` for each epoch-level tensor it
    did not reduce itself; for these keys the advice does not apply (a second reduction would cost
    one all-reduce per key to average equal numbers), so it is silenced for exactly these keys."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        for key in values:
            if key not in _REDUCED_KEYS:
                _REDUCED_KEYS.add(key)
                warnings.filterwarnings(
                    "ignore", message=re.escape(f"It is recommended to use `self.log({key!r}, ..., sync_dist=True)`"),
                    category=PossibleUserWarning,
                )
    module.log_dict(dict(values), prog_bar=False, on_step=False, on_epoch=True)


def _infer_num_classes(model: nn.Module | None) -> int | None:
    """``K`` for an ``nn.Sequential`` ending in an ``nn.Linear`` with ``K > 1`` outputs, else ``None``."""
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], nn.Linear):
        out = model[-1].out_features
        return out if out > 1 else None
    return None


def _wrap_user_training_step(fn: Callable) -> Callable:
    import functools

    @functools.wraps(fn)
    def training_step(self: FairLightningModule, *args: Any, **kwargs: Any) -> Any:
        depth = self._user_step_depth
        if depth == 0:
            self._fair_step_ran = False
            steps_before = int(self.method.num_steps)
        self._user_step_depth = depth + 1
        try:
            output = fn(self, *args, **kwargs)
        finally:
            self._user_step_depth = depth
        if depth > 0 or self._fair_step_ran or self.automatic_optimization:
            return output
        return self._optimize_user_loss(output, steps_before)

    training_step._fair_lightning_wrapped = True
    return training_step


def _upgrade_v1_state_dict(weights: dict[str, Any]) -> None:
    """Rename the keys of a fair-lightning 0.1 checkpoint (state outside ``method``)."""
    renames = {"fair_step": "method.num_steps"}
    for key in list(weights):
        if key.startswith(("multipliers.", "adversary.")):
            weights[f"method.{key}"] = weights.pop(key)
        elif key in renames:
            weights[renames[key]] = weights.pop(key)


__all__ = ["FairLightningModule", "MODES"]
