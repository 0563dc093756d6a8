"""``Penalty``: ``task + eta * fairness_loss``, with a differentiable loss of :mod:`fair_lightning.losses`
(classification losses on soft rates, or a regression loss on group mean predictions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fair_lightning.losses import LOSSES, REGRESSION_LOSSES, FairnessLoss, MutualInformationLoss
from fair_lightning.methods._base import FairnessMethod, register_method
from fair_lightning.schedules import EtaSchedule

#: the loss options that do not apply to the mutual-information loss
_GAP_OPTIONS = ("penalty", "reduction", "pairwise", "weighting")


@register_method("penalty")
class Penalty(FairnessMethod):
    """A fairness penalty of strength ``eta`` on soft group rates.

    Args:
        num_groups: number of groups.
        fairness: a loss name (``"demographic_parity"``, ``"equalized_odds"``,
            ``"equal_opportunity"``, ``"accuracy_parity"``, ``"mutual_information"``; for a
            regression model, one prediction per sample: ``"regression_demographic_parity"``,
            the gaps between group mean predictions) or a ready
            :class:`~fair_lightning.losses.FairnessLoss` (then the loss options below must stay
            unset). A regression loss makes the method a regression method (``task``).
        eta: fairness strength, ``>= 0``.
        eta_schedule: ``"constant"``, ``"linear"`` (warm-up from 0) or ``"step"``.
        eta_warmup_steps: length of the warm-up, in training steps.
        temperature: temperature of the smooth indicator ``sigmoid(logit / temperature)``.
        penalty: ``"abs"`` or ``"squared"`` gaps (gap losses only; default ``"abs"``).
        reduction: ``"mean"`` or ``"max"`` over groups (gap losses only; default ``"mean"``).
        pairwise: compare every pair of groups (gap losses only; default ``False``).
        weighting: ``"uniform"``, ``"proportional"`` or ``"sqrt"`` group weights (gap losses only).
        min_count: groups with fewer samples in a batch are masked.
        scale: regression losses only: the gaps are divided by it (e.g. the target's standard
            deviation); default prediction units.
        group_names: names of the groups.
        num_classes: ``None`` (binary, one logit) or ``K`` for ``(N, K)`` logits: the loss then
            equalizes each class's softmax rate across groups (``softmax(logits / temperature)``),
            the gaps of all classes reduced together. The soft rates can be equalized by moving
            probability between the non-predicted classes without changing any argmax (the
            digits example: soft class-0 gap near 0, hard gap 0.12 at temperature 1); a
            ``temperature`` below 1 (0.5 there) ties the soft rates closer to the predicted classes.
    """

    requires_target = False

    def __init__(
        self,
        num_groups: int,
        *,
        fairness: str | FairnessLoss = "demographic_parity",
        eta: float = 1.0,
        eta_schedule: str = "constant",
        eta_warmup_steps: int = 0,
        temperature: float = 1.0,
        penalty: str | None = None,
        reduction: str | None = None,
        pairwise: bool | None = None,
        weighting: str | None = None,
        min_count: float = 1,
        scale: float | None = None,
        group_names: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(num_groups, group_names=group_names, num_classes=num_classes)
        self.schedule = EtaSchedule(eta, eta_schedule, eta_warmup_steps)
        options = {"penalty": penalty, "reduction": reduction, "pairwise": pairwise, "weighting": weighting}
        given = {k: v for k, v in options.items() if v is not None}
        if isinstance(fairness, torch.nn.Module):
            extra = sorted(given) + (["temperature"] if temperature != 1.0 else []) + (["min_count"] if min_count != 1 else [])
            extra += ["scale"] if scale is not None else []
            if extra:
                raise ValueError(f"{extra} configure a loss by name; they do not apply to a ready loss object (`fairness`={fairness!r})")
            if getattr(fairness, "num_classes", None) != self.num_classes:
                raise ValueError(
                    f"the loss `fairness` has num_classes={getattr(fairness, 'num_classes', None)}, but the method "
                    f"has num_classes={self.num_classes}"
                )
            self.loss = fairness
        elif isinstance(fairness, str) and fairness in REGRESSION_LOSSES:
            wrong = (["temperature"] if temperature != 1.0 else []) + (["num_classes"] if num_classes is not None else [])
            if wrong:
                raise ValueError(
                    f"{wrong} do not apply to fairness={fairness!r} (a regression loss on continuous predictions)"
                )
            scaled = {} if scale is None else {"scale": scale}
            self.loss = REGRESSION_LOSSES[fairness](num_groups, min_count=min_count, validate_args=False, **given, **scaled)
        else:
            if not isinstance(fairness, str) or fairness not in LOSSES:
                raise ValueError(
                    f"`fairness` must be one of {list(LOSSES) + list(REGRESSION_LOSSES)} or a FairnessLoss, got {fairness!r}"
                )
            if scale is not None:
                raise ValueError(f"`scale` applies to regression losses only, got scale={scale!r} with fairness={fairness!r}")
            if LOSSES[fairness] is MutualInformationLoss and given:
                raise ValueError(f"{sorted(given)} do not apply to fairness='mutual_information' (a single divergence, not gaps)")
            self.loss = LOSSES[fairness](
                num_groups, temperature=temperature, min_count=min_count, validate_args=False, num_classes=self.num_classes, **given
            )
        self.requires_target = bool(getattr(self.loss, "requires_target", False))
        if getattr(self.loss, "task", "classification") == "regression":
            self.task = "regression"
        self.fairness = fairness if isinstance(fairness, str) else type(fairness).__name__

    @property
    def eta(self) -> float:
        """``eta`` at the current step of the schedule."""
        return self.schedule(int(self.num_steps))

    def compute_term(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None) -> Tensor:
        value = self.loss(logits, target, groups)
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"the fairness loss is {value.item()} at step {int(self.num_steps)}; check the inputs or lower the learning rate"
            )
        eta = self.eta
        self._last = {"train/fairness_loss": value.detach(), "train/eta": eta}
        return eta * value


__all__ = ["Penalty"]
