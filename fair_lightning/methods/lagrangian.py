"""``Lagrangian``: rate constraints enforced by Lagrange multipliers (the proxy-Lagrangian).

The model descends ``task + sum(lambda * soft_violation)`` (soft, differentiable rates of the
batch); after its step the multipliers ascend on the *hard* violation of the thresholded
predictions, accumulated in running group sums that are all-reduced across DDP ranks first
(Cotter et al. 2019). The arithmetic lives in :mod:`fair_lightning.constraints`.

K classes (``num_classes=K``): the soft predictions are ``softmax(logits / temperature)`` and the
hard ones the argmax; each constraint holds for every class's one-vs-rest rates
(:func:`~fair_lightning.constraints.class_constraints`: binary constraints over ``K * G`` fine
groups, one per (class, group)). The batch is laid out as ``K * N`` one-vs-rest samples, so the
linear primal term and the dual step are the binary ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fair_lightning.constraints import (
    LagrangeMultipliers,
    class_constraints,
    constraint_names,
    constraint_table,
    parse_constraints,
)
from fair_lightning.functional import confusion_counts, group_sums, label_cells
from fair_lightning.functional._multiclass import check_class_names
from fair_lightning.methods._dual import DualClock
from fair_lightning.methods._base import FLOAT32_MAX, FairnessMethod, all_reduce_sum, check_number, register_method


class _DualOptimizerState(nn.Module):
    """Carries a custom dual optimizer's state in the ``state_dict`` (as extra state)."""

    def __init__(self, multipliers: LagrangeMultipliers) -> None:
        super().__init__()
        self._owner = [multipliers]  # a list: not a registered submodule

    def get_extra_state(self) -> dict:
        return self._owner[0].dual_state_dict()

    def set_extra_state(self, state: Any) -> None:
        if state:
            self._owner[0].load_dual_state_dict(state)


@register_method("lagrangian")
class Lagrangian(DualClock, FairnessMethod):
    """Constraints on group rates with one Lagrange multiplier per inequality.

    Args:
        num_groups: number of groups.
        constraints: a definition name (``"demographic_parity"``, ``"equalized_odds"``,
            ``"equal_opportunity"``, ``"accuracy_parity"``), a mapping of
            :class:`~fair_lightning.constraints.FairnessConstraint` arguments, a constraint,
            or a list of them (several constraints, e.g. :func:`~fair_lightning.constraints.hierarchical_constraints`).
        tolerance: default tolerance of the constraints named without one: the allowed
            max - min difference of the rate across groups (``bound="difference"``).
        bound: default form of the constraints: ``"difference"`` (max - min) or ``"gap"``
            (each group's gap to the overall rate).
        dual_lr: how far the multipliers ascend per *epoch* per unit of hard violation (each
            step moves ``dual_lr / steps_per_epoch``), so that the dual player moves as much on
            a data set of 3 batches per epoch as on one of 1,000.
        memory: memory of the running group sums behind the hard violations, in epochs (an
            exponential moving average over steps with ``1 / (memory * steps_per_epoch)`` weight
            on the newest batch; at least the batch itself).
        dual_damping: proportional gain of the PI update: the model sees
            ``integral + dual_damping * violation`` (0: plain projected ascent).
        multiplier_max: multipliers are projected onto ``[0, multiplier_max]``.
        dual_warmup: share of the training steps before the multipliers start to move (the
            running sums are kept from the start). The first snapshots are then close to the
            unconstrained model, so that selection on validation (with group thresholds) can
            choose between in-training constraints and post-processing. Needs the total number
            of steps (``total_steps``; ``FairLightningModule`` sets it); without it, no warm-up.
        total_steps: optimizer steps of the whole training (``trainer.estimated_stepping_batches``).
        steps_per_epoch: optimizer steps per epoch; ``FairLightningModule`` sets it from the
            trainer. In your own LightningModule pass ``trainer.num_training_batches`` (or leave
            ``None``: 100 steps is assumed, with a warning).
        dual_optimizer: ``params -> optimizer`` for the multipliers, stepped on every training
            step at its own learning rate (``dual_lr`` then does not apply); default projected
            SGD at ``dual_lr / steps_per_epoch``.
        temperature: temperature of the smooth indicator in the soft violations.
        min_count: a group with fewer samples behind a rate in the running sums is not constrained
            on that rate (its noisy rate never moves a multiplier); it takes part again once it has
            enough. :meth:`state_table` lists which inequalities are active.
        threshold: probability threshold of the hard predictions (binary only; K classes use the argmax).
        group_names: names of the groups (in the inequalities' logged names).
        num_classes: ``None`` (binary, one logit) or ``K`` for ``(N, K)`` logits: every constraint
            then holds for each class's one-vs-rest rates (``accuracy_parity`` is binary only).
        class_names: names of the classes in the inequalities' logged names (default ``class_0``, ...).
    """

    term_name = None
    requires_target = True

    def __init__(
        self,
        num_groups: int,
        *,
        tolerance: float = 0.02,
        constraints: Any = "demographic_parity",
        bound: str = "difference",
        dual_lr: float = 2.0,
        memory: float = 0.25,
        dual_damping: float = 2.0,
        multiplier_max: float = 10.0,
        dual_warmup: float = 0.2,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        dual_optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer] | None = None,
        temperature: float = 1.0,
        min_count: float = 10,
        threshold: float = 0.5,
        group_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(num_groups, group_names=group_names, num_classes=num_classes)
        if isinstance(constraints, str):
            constraints = {"definition": constraints, "bound": bound}
        parsed = parse_constraints(constraints, tolerance)
        if class_names is not None and self.num_classes is None:
            raise ValueError(f"`class_names` needs `num_classes` (K-class logits), got class_names={class_names!r}")
        #: groups of the binary problems the constraints see: ``G``, or ``K * G`` (class, group) for K classes
        self.num_units = num_groups
        self._unit_names = list(self.group_names)
        self.user_constraints = parsed
        if self.num_classes is not None:
            k = self.num_classes
            self.class_names = check_class_names(class_names, k)
            bad = [c.label for c in parsed if c.definition == "accuracy_parity"]
            if bad:
                raise ValueError(
                    f"`constraints` {bad}: accuracy_parity is binary only in the Lagrangian; for K classes use "
                    "Penalty(fairness='accuracy_parity') or constrain per-class rates"
                )
            for c in parsed:
                if c.partition is not None and len(c.partition) != num_groups:
                    raise ValueError(
                        f"`partition` of constraint {c.label!r} must have one entry per group ({num_groups}), got {len(c.partition)}"
                    )
            parsed = class_constraints(parsed, num_groups, k, self.group_names, self.class_names)
            self.num_units = k * num_groups
            self._unit_names = [f"{c}/{g}" for c in self.class_names for g in self.group_names]
            self.register_buffer("_classes", torch.arange(k), persistent=False)
        self.temperature = check_number(temperature, "temperature", low=0, low_open=True)
        self.threshold = check_number(threshold, "threshold", low=0, low_open=True, high=1)
        if self.threshold >= 1:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}")
        self.logit_threshold = math.log(self.threshold / (1 - self.threshold))
        self.multipliers = LagrangeMultipliers(
            parsed, self.num_units,
            dual_lr=check_number(dual_lr, "dual_lr", low=0, low_open=True, high=FLOAT32_MAX),
            multiplier_max=check_number(multiplier_max, "multiplier_max", low=0, low_open=True, high=FLOAT32_MAX),
            min_count=check_number(min_count, "min_count", low=0),
            dual_optimizer=dual_optimizer,
            dual_damping=check_number(dual_damping, "dual_damping", low=0, high=FLOAT32_MAX),
        )
        if dual_optimizer is not None:  # its state (momentum, ...) travels in the state_dict
            self.dual_state = _DualOptimizerState(self.multipliers)
        # optimizer steps per epoch (the per-step dual rate, the running sums' memory) and the warm-up
        self._init_clock(dual_lr, memory, dual_warmup, steps_per_epoch, total_steps)
        self._pending = False
        self.constraints = parsed
        self.constraint_names = constraint_names(parsed, self._unit_names)
        # the batch's hard counts, waiting for the dual step after the model's optimizer step
        # (buffers: a checkpoint taken between the two keeps them)
        self.register_buffer("pending_counts", torch.zeros(self.num_units, 2, 2, dtype=torch.float64))
        self.register_buffer("has_pending", torch.zeros((), dtype=torch.bool))
        self._last_batch: tuple[Tensor, Tensor, Tensor] | None = None
        self._last_hard: Tensor | None = None

    def _clock_changed(self) -> None:
        self.multipliers.dual_lr = self._step_lr
        self.multipliers.ema_decay = self._ema_decay

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._pending = bool(self.has_pending)
        self._reload_clock()

    def compute_term(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None) -> Tensor:
        if self.training:
            self._ensure_clock()
        if self.num_classes is not None:
            soft, target, groups, hard = self._one_vs_rest(logits, target, groups)
        else:
            logits, target, groups = logits.reshape(-1), target.reshape(-1), groups.reshape(-1)
            soft = torch.sigmoid(logits if self.temperature == 1 else logits / self.temperature)
            hard = logits.detach() > self.logit_threshold
        cells = label_cells(target, groups)
        confusion = confusion_counts(hard, None, None, self.num_units, cells=cells)
        if self.training:
            self.pending_counts.copy_(all_reduce_sum(confusion))
            self.has_pending.fill_(True)
            self._pending = True
            self._last_batch = (soft.detach(), target, groups)
        # finite by construction: logits are checked for NaN, multipliers are clamped and checked
        return self.multipliers.lagrangian_term(soft, target, groups, cells=cells, counts=confusion)

    def _one_vs_rest(self, logits: Tensor, target: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A K-class batch as ``K * N`` one-vs-rest samples (class-major): soft predictions
        ``softmax(logits / T)[:, c]``, labels ``[y == c]``, fine groups ``c * G + g`` and hard
        predictions ``[argmax == c]``."""
        classes = self._classes[:, None]  # (K, 1)
        probs = torch.softmax(logits if self.temperature == 1 else logits / self.temperature, dim=1)
        soft = probs.T.reshape(-1)
        target_fine = (target.reshape(1, -1).long() == classes).reshape(-1)
        groups_fine = (groups.reshape(1, -1).long() + classes * self.num_groups).reshape(-1)
        hard = (logits.detach().max(1).indices[None] == classes).reshape(-1)
        return soft, target_fine.long(), groups_fine, hard

    def after_optimizer_step(self) -> None:
        """The dual step on the last training batch's (all-reduced) hard counts, if pending."""
        if not self._pending:
            return
        self._pending = False
        self.has_pending.fill_(False)
        ascend = self._warm_done or self._ascending(int(self.multipliers.num_updates))  # no tensor read after the warm-up
        self._last_hard = self.multipliers.dual_step(self.pending_counts, ascend=ascend)
        if ascend and not math.isfinite(float(self.multipliers.multipliers.sum())):
            raise FloatingPointError(
                "the Lagrange multipliers are not finite after the dual step "
                f"({self.multipliers.multipliers[~torch.isfinite(self.multipliers.multipliers)][:3].tolist()}); "
                "check `dual_optimizer` and `dual_lr`"
            )

    def diagnostics(self) -> dict[str, Tensor | float]:
        out: dict[str, Tensor | float] = {}
        lam = self.multipliers.multipliers
        hard = self._last_hard if self._last_hard is not None else self.multipliers.hard_violations()
        parts: list[tuple[str, Tensor]] = []
        if self._last_batch is not None:
            soft, target, groups = self._last_batch
            sums = group_sums(soft, target, groups, self.num_units, validate_args=False)
            parts.append(("fairness/violation_soft/", self.multipliers.soft_violations(sums)))
        parts += [("fairness/violation_hard/", hard), ("fairness/multiplier/", lam)]
        values = torch.cat([p.detach().double().reshape(-1) for _, p in parts]).tolist()  # one conversion
        i = 0
        for prefix, p in parts:
            for name in self.constraint_names:
                out[prefix + name] = values[i]
                i += 1
        out["fairness/violation_hard_max"] = float(hard.max()) if hard.numel() else 0.0
        out["fairness/multiplier_max"] = float(lam.max()) if lam.numel() else 0.0
        return out

    def hard_violations(self) -> Tensor:
        """Hard violations of the running sums (``<= 0``: satisfied), in :attr:`constraint_names` order."""
        return self.multipliers.hard_violations()

    def state_table(self):
        """One row per inequality (index: the logged names) with its ``definition``, ``rate``,
        ``group``, ``other`` (the compared group, or ``"all"``), ``side``, ``tolerance``,
        ``multiplier`` and ``violation_hard`` (of the running sums; ``<= 0`` is satisfied)."""
        import pandas as pd

        rows = constraint_table(self.constraints, self._unit_names)
        columns = ["constraint", "definition", "rate", "group", "other", "side", "tolerance"]
        frame = pd.DataFrame(rows, columns=columns).set_index("constraint")
        frame["multiplier"] = self.multipliers.multipliers.detach().double().cpu().numpy()
        frame["violation_hard"] = self.hard_violations().detach().double().cpu().numpy()
        return frame



__all__ = ["Lagrangian", "all_reduce_sum"]
