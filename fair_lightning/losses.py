"""Differentiable fairness losses on soft per-group rates.

Every loss here turns ``(logits, target, groups)`` into soft per-group sums with the shared core
(:func:`fair_lightning.functional.group_sums` on ``sigmoid(logits / temperature)``), takes the gap
of each group's rate to the overall rate (or between pairs of groups), and aggregates the gaps
with per-group weights. The same :func:`rate_gaps` serves the Lagrangian constraints in
:mod:`fair_lightning.constraints`, on soft sums for the primal step and hard sums for the dual step.

K classes (``num_classes=K``): the logits are ``(N, K)``, the target holds class indices, and the
soft predictions are ``softmax(logits / temperature)``. Each class ``c`` is its one-vs-rest binary
problem (:func:`~fair_lightning.functional.soft_multiclass_group_sums`: per-(class, group) sums
with ``(K, G)`` fields), so every rate of the table applies per class; the gaps ``(C, K, G)`` are
reduced over rates, classes and groups together, with the same group weights and ``min_count``
(accuracy parity compares the groups' mean probability of the true class, the class-pooled TPR).
Binary classification (one logit, ``num_classes=None``) is unchanged.

Small groups: a group with fewer than ``min_count`` samples *in the batch* (for the rate in
question: positives for TPR, negatives for FPR) is masked out: its noisy rate cannot dominate the
gradient. ``weighting`` sets how the remaining groups count (see
:func:`fair_lightning.groups.group_weights`): ``"uniform"``, ``"proportional"`` to their size, or
``"sqrt"``. Fixed ``group_weights`` (for example from the training set's sizes) override it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fair_lightning.functional import GroupSums, Rate, group_sums, grouped_sum, masked_divide, soft_predictions
from fair_lightning.functional._multiclass import (
    check_class_scores,
    check_class_target,
    check_num_classes,
    pooled,
    soft_multiclass_group_sums,
)
from fair_lightning.functional._rates import DEFINITIONS, check_definition
from fair_lightning.functional._regression import RegressionSums, regression_group_sums
from fair_lightning.functional._checks import check_binary_target, check_groups, check_num_groups, check_scores
from fair_lightning.groups import WEIGHT_SCHEMES, group_weights

#: The fairness definitions a loss can equalize (the one rate table's, see
#: :data:`fair_lightning.functional.DEFINITIONS`) and the rates of each.
FAIRNESS_DEFINITIONS = tuple(DEFINITIONS)
PENALTIES = ("abs", "squared")
REDUCTIONS = ("mean", "max")


class GroupGaps(NamedTuple):
    """Signed gaps ``rate(group) - rate(reference)``, shape ``(C, G)`` (``C`` rates).

    ``valid`` masks the gaps that are defined and rest on at least ``min_count`` samples;
    ``count`` is the number of samples behind each group's rate.
    """

    gap: Tensor
    valid: Tensor
    count: Tensor


def rate_gaps(sums: GroupSums, rates: Sequence[str], min_count: float = 1) -> GroupGaps:
    """Gap of each group's rate to the overall one, for every rate in ``rates`` at once.

    The numerators and denominators are one small matmul over the stacked sums (the rate table's
    coefficients), which runs on every training step.

    Args:
        sums: per-group sums (soft or hard).
        rates: names of the rate table (``"selection_rate"``, ``"true_positive_rate"``, ...).
        min_count: groups with fewer samples behind the rate are masked.
    """
    num, den = sums.numerators_denominators(tuple(rates))  # each (C, G)
    return gaps_from_ratios(num, den, min_count)


def gaps_from_ratios(num: Tensor, den: Tensor, min_count: float = 1) -> GroupGaps:
    """Gaps ``num/den - sum(num)/sum(den)`` along the last axis, masked where ``den < min_count``.

    Denominators here are (possibly weighted or averaged) counts, never functions of the model,
    and an empty denominator comes with an empty numerator, so dividing by ``max(den, tiny)``
    gives 0, never NaN, and masked entries get zero gradient. Few tensor ops on purpose: this
    runs twice on every training step of the Lagrangian mode.
    """
    tiny = torch.finfo(num.dtype).tiny
    rate = num / den.clamp_min(tiny)
    overall = num.sum(-1, keepdim=True) / den.sum(-1, keepdim=True).clamp_min(tiny)
    valid = den >= (min_count if min_count > 0 else tiny)
    return GroupGaps((rate - overall) * valid, valid, den)


def _penalize(gap: Tensor, penalty: str) -> Tensor:
    return gap.abs() if penalty == "abs" else gap.square()


def aggregate_gaps(gaps: GroupGaps, weights: Tensor, penalty: str = "abs", reduction: str = "mean") -> Tensor:
    """Weighted mean (or max) of the penalized valid gaps; 0 when no gap is valid."""
    value = _penalize(gaps.gap, penalty)
    w = torch.where(gaps.valid, weights.to(value.dtype).expand_as(value), torch.zeros_like(value))
    if reduction == "max":
        # penalized gaps are >= 0, so masked entries (0) never win unless nothing is valid
        return torch.where(w > 0, value, torch.zeros_like(value)).amax()
    # sync-free: with no valid gap the numerator is 0 as well
    return (w * value).sum() / w.sum().clamp_min(torch.finfo(value.dtype).tiny)


def pairwise_gaps(sums: GroupSums, rates: Sequence[str], min_count: float = 1) -> GroupGaps:
    """Gaps between every pair of groups ``rate(g) - rate(h)``, ``g < h``: shape ``(C, G*(G-1)/2)``
    (``(C, ..., G*(G-1)/2)`` for sums with leading dimensions, such as ``(K, G)`` per class)."""
    num, den = sums.numerators_denominators(tuple(rates))
    return pairwise_gaps_from_ratios(num, den, min_count)


def pairwise_gaps_from_ratios(num: Tensor, den: Tensor, min_count: float = 1) -> GroupGaps:
    """Gaps ``num[g]/den[g] - num[h]/den[h]`` between every pair of groups ``g < h`` along the last
    axis, masked where either denominator is below ``min_count`` (or 0)."""
    G = den.shape[-1]
    i, j = torch.triu_indices(G, G, offset=1, device=den.device)
    rate = masked_divide(num, den)
    ok = rate.valid & (den >= min_count)
    valid = ok[..., i] & ok[..., j]
    gap = torch.where(valid, rate.value[..., i] - rate.value[..., j], torch.zeros_like(rate.value[..., i]))
    return GroupGaps(gap, valid, torch.minimum(den[..., i], den[..., j]))


def _check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    if isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] != 1:
        raise ValueError(
            f"`{name}` must have shape (N,) or (N, 1) (one logit per sample for binary classification), "
            f"got shape {tuple(logits.shape)}; for K-class logits pass `num_classes={logits.shape[1]}`"
        )
    return check_scores(logits, name)


def _check_class_logits(logits: Tensor, num_classes: int, name: str = "logits") -> Tensor:
    """``(N, K)`` floating logits of a K-class classifier, else a ``ValueError`` naming ``name``."""
    if isinstance(logits, Tensor) and logits.ndim <= 1 or isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] == 1:
        raise ValueError(
            f"`{name}` must have shape (N, num_classes={num_classes}) (one logit per class), got shape "
            f"{tuple(logits.shape)}; one logit per sample is a binary classifier: leave `num_classes` unset"
        )
    if isinstance(logits, Tensor) and not logits.is_floating_point():
        raise ValueError(f"`{name}` must be floating-point logits of shape (N, {num_classes}), got dtype {logits.dtype}")
    logits = check_class_scores(logits, num_classes, name=name, labels_ok=False)
    if not bool(torch.isfinite(logits.sum())) and not bool(torch.isfinite(logits).all()):
        raise ValueError(f"`{name}` contains non-finite values")
    return logits


def check_num_classes_arg(num_classes: object) -> int | None:
    """``None`` (binary: one logit) or an int >= 2, else a ``ValueError`` naming ``num_classes``."""
    return None if num_classes is None else check_num_classes(num_classes)


def check_fairness_batch(
    logits: Tensor, target: Tensor | None, groups: Tensor, num_groups: int, num_classes: int | None = None, *,
    requires_target: bool = False, owner: str = "the loss",
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Validate and flatten ``(logits, target, groups)`` of a binary (one logit) or K-class batch,
    for the losses and the methods alike; ``target`` may be ``None`` unless ``requires_target``."""
    if num_classes is not None:
        logits = _check_class_logits(logits, num_classes)
        n = logits.shape[0]
    else:
        logits = _check_logits(logits)
        n = logits.numel()
    if target is None:
        if requires_target:
            raise ValueError(f"`target` is required by {owner}, got None")
    elif num_classes is not None:
        target = check_class_target(target, n, num_classes)
    else:
        target = check_binary_target(target, n)
    return logits, target, check_groups(groups, n, num_groups)


class FairnessLoss(nn.Module):
    """Base class: ``forward(logits, target, groups) -> penalty`` (a differentiable scalar).

    Subclasses choose the rate(s) to equalize through :attr:`rates` (names of the rate table,
    :data:`fair_lightning.functional.RATES`). The penalty is the
    weighted mean (``reduction="mean"``) or the max (``"max"``) over groups of ``|gap|``
    (``penalty="abs"``) or ``gap**2`` (``"squared"``), where ``gap`` is the group's soft rate minus
    the overall soft rate, or, with ``pairwise=True``, the difference between every two groups.

    Args:
        num_groups: number of (possibly intersectional) groups.
        temperature: temperature of the smooth indicator ``sigmoid(logit / temperature)``.
        penalty: ``"abs"`` or ``"squared"``.
        reduction: ``"mean"`` or ``"max"``.
        pairwise: compare every pair of groups instead of each group with the overall rate.
        weighting: ``"uniform"``, ``"proportional"`` or ``"sqrt"`` weights from batch group sizes.
        group_weights: fixed ``(num_groups,)`` non-negative weights; overrides ``weighting``.
        min_count: groups with fewer samples than this in the batch are masked.
        validate_args: check inputs on every call.
        num_classes: ``None`` for a binary classifier (one logit per sample); ``K >= 2`` for
            ``(N, K)`` logits with class-index targets (per-(class, group) softmax rates; the
            gaps of all classes are reduced together).
    """

    rates: tuple[str, ...] = DEFINITIONS["demographic_parity"]
    requires_target: bool = False
    #: K classes: compare the class-pooled sums (one rate per group) instead of each class's
    pooled_classes: bool = False
    #: the kind of model the loss is for: ``"classification"`` (logits) or ``"regression"``
    task: str = "classification"

    def __init__(
        self,
        num_groups: int,
        *,
        temperature: float = 1.0,
        penalty: Literal["abs", "squared"] = "abs",
        reduction: Literal["mean", "max"] = "mean",
        pairwise: bool = False,
        weighting: Literal["uniform", "proportional", "sqrt"] = "uniform",
        group_weights: Tensor | Sequence[float] | None = None,
        min_count: float = 1,
        validate_args: bool = True,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.num_groups = check_num_groups(num_groups)
        self.num_classes = check_num_classes_arg(num_classes)
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if penalty not in PENALTIES:
            raise ValueError(f"`penalty` must be one of {list(PENALTIES)}, got {penalty!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {list(REDUCTIONS)}, got {reduction!r}")
        if weighting not in WEIGHT_SCHEMES:
            raise ValueError(f"`weighting` must be one of {list(WEIGHT_SCHEMES)}, got {weighting!r}")
        if min_count < 0:
            raise ValueError(f"`min_count` must be >= 0, got {min_count}")
        self.temperature, self.penalty, self.reduction = temperature, penalty, reduction
        self.pairwise, self.weighting, self.min_count = pairwise, weighting, min_count
        self.validate_args = validate_args
        if group_weights is not None:
            weights = torch.as_tensor(group_weights, dtype=torch.float32)
            if weights.shape != (num_groups,) or (weights < 0).any() or not torch.isfinite(weights).all():
                raise ValueError(
                    f"`group_weights` must be {num_groups} finite non-negative numbers, got {group_weights!r}"
                )
            self.register_buffer("group_weights", weights)
        else:
            self.group_weights = None

    def check_inputs(self, logits: Tensor, target: Tensor | None, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Validate and flatten a batch; ``target`` may be ``None`` unless the loss needs labels."""
        logits, target, groups = check_fairness_batch(
            logits, target, groups, self.num_groups, self.num_classes, requires_target=self.requires_target,
            owner=type(self).__name__,
        )
        if target is None:
            n = logits.shape[0] if self.num_classes is not None else logits.numel()
            target = torch.zeros(n, dtype=torch.long, device=logits.device)
        return logits, target, groups

    def soft_sums(self, logits: Tensor, target: Tensor | None, groups: Tensor) -> GroupSums:
        """Per-group sums of the soft predictions (differentiable); ``(K, G)`` fields for K classes."""
        if self.validate_args:
            logits, target, groups = self.check_inputs(logits, target, groups)
        elif self.num_classes is not None:
            groups = groups.reshape(-1)
            target = groups.new_zeros(groups.shape) if target is None else target.reshape(-1)
        else:
            logits, groups = logits.reshape(-1), groups.reshape(-1)
            target = torch.zeros_like(logits) if target is None else target.reshape(-1)
        if self.num_classes is not None:
            probs = torch.softmax(logits if self.temperature == 1 else logits / self.temperature, dim=1)
            sums = soft_multiclass_group_sums(probs, target, groups, self.num_groups)
            return pooled(sums) if self.pooled_classes else sums
        preds = soft_predictions(logits, self.temperature)
        try:
            return group_sums(preds, target, groups, self.num_groups, validate_args=False)
        except RuntimeError as err:  # unchecked input: name what went wrong
            if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= self.num_groups):
                raise IndexError(
                    f"`groups` must be ids in [0, num_groups={self.num_groups}), got values in "
                    f"[{int(groups.min())}, {int(groups.max())}] (validate_args=False skips this check)"
                ) from err
            raise

    def gaps(self, sums: GroupSums) -> GroupGaps:
        """Per-group (or pairwise) gaps of the rates this loss equalizes, ``(C, G)`` (``(C, K, G)``
        for K classes)."""
        fn = pairwise_gaps if self.pairwise else rate_gaps
        return fn(sums, self.rates, self.min_count)

    def weights(self, sums: GroupSums) -> Tensor:
        """Per-group weights, or per-pair weights (the product) with ``pairwise=True``."""
        count = sums.count if sums.count.dim() == 1 else sums.count.reshape(-1, sums.count.shape[-1])[0]
        if self.group_weights is not None:
            w = self.group_weights.to(count)
        elif self.weighting == "uniform":
            # invalid (absent, too small) groups are masked by aggregate_gaps already
            w = torch.ones_like(count)
        else:
            w = group_weights(count.detach(), self.weighting, 0)
        if self.pairwise:
            i, j = torch.triu_indices(self.num_groups, self.num_groups, offset=1, device=w.device)
            w = w[i] * w[j]
        return w

    def forward(self, logits: Tensor, target: Tensor | None, groups: Tensor) -> Tensor:
        """The penalty of a batch: a differentiable scalar, 0 when no gap is defined."""
        sums = self.soft_sums(logits, target, groups)
        return aggregate_gaps(self.gaps(sums), self.weights(sums), self.penalty, self.reduction)


class DemographicParityLoss(FairnessLoss):
    """Gap between each group's soft selection rate and the overall one. ``target`` may be ``None``."""

    rates = DEFINITIONS["demographic_parity"]


class EqualOpportunityLoss(FairnessLoss):
    """Gap between each group's soft true-positive rate and the overall one."""

    rates = DEFINITIONS["equal_opportunity"]
    requires_target = True


class EqualizedOddsLoss(FairnessLoss):
    """Gaps of soft TPR and FPR to the overall ones (both conditions averaged, or the max)."""

    rates = DEFINITIONS["equalized_odds"]
    requires_target = True


class AccuracyParityLoss(FairnessLoss):
    """Gap between each group's soft accuracy and the overall one (equal error rates).

    K classes: a group's soft accuracy is its mean probability of the true class (the TPR of the
    class-pooled one-vs-rest sums, as :func:`~fair_lightning.functional.group_accuracy`)."""

    rates = DEFINITIONS["accuracy_parity"]
    requires_target = True

    def __init__(self, num_groups: int, **kwargs) -> None:
        super().__init__(num_groups, **kwargs)
        if self.num_classes is not None:
            self.pooled_classes = True
            self.rates = ("true_positive_rate",)


class MutualInformationLoss(FairnessLoss):
    """Mutual information ``I(yhat; s)`` between the soft prediction and the group.

    The prejudice-remover regulariser of Kamishima et al. (2012):
    ``sum_g P(g) * KL(Bern(r_g) || Bern(r))`` with ``r_g`` the soft selection rate of group ``g``
    and ``r`` the overall one (``P(g)`` over the groups kept by ``min_count``). It is 0 exactly at
    demographic parity and, unlike a gap, weighs a group by its size. ``penalty``, ``reduction``,
    ``pairwise`` and ``weighting`` do not apply.

    K classes: ``sum_g P(g) * KL(Cat(r_g) || Cat(r))`` with ``r_g`` the ``(K,)`` soft selection
    rates of group ``g`` (the mutual information of the softmax prediction and the group).
    """

    def __init__(self, num_groups: int, *, temperature: float = 1.0, min_count: float = 1, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(num_groups, temperature=temperature, min_count=min_count, **kwargs)
        self.eps = eps

    def forward(self, logits: Tensor, target: Tensor | None, groups: Tensor) -> Tensor:
        sums = self.soft_sums(logits, target, groups)
        if self.num_classes is not None:
            return self._categorical(sums)
        num, den = sums.numerators_denominators(self.rates)
        keep = den[0] >= max(self.min_count, 1)
        count = torch.where(keep, den[0], torch.zeros_like(den[0]))
        pred = torch.where(keep, num[0], torch.zeros_like(num[0]))
        n = count.sum().clamp_min(1)  # no kept group: every term below is 0
        r_g = (pred / count.clamp_min(1)).clamp(self.eps, 1 - self.eps)
        r = (pred.sum() / n).clamp(self.eps, 1 - self.eps)
        kl = r_g * torch.log(r_g / r) + (1 - r_g) * torch.log((1 - r_g) / (1 - r))
        return (count / n * kl).sum()

    def _categorical(self, sums: GroupSums) -> Tensor:
        num, den = sums.numerators_denominators(self.rates)  # (1, K, G) each
        num, den = num[0], den[0, 0]  # (K, G) predicted mass, (G,) group sizes
        keep = den >= max(self.min_count, 1)
        count = torch.where(keep, den, torch.zeros_like(den))
        pred = num * keep
        n = count.sum().clamp_min(1)
        r_g = (pred / count.clamp_min(1)).clamp_min(self.eps)  # (K, G)
        r = (pred.sum(1, keepdim=True) / n).clamp_min(self.eps)  # (K, 1)
        kl = (r_g * torch.log(r_g / r)).sum(0) * keep  # (G,)
        return (count / n * kl).sum()


class RegressionDemographicParityLoss(FairnessLoss):
    """Gaps between group mean predictions of a regression model (demographic parity in the mean).

    ``preds`` are the model's continuous outputs, one per sample (no sigmoid). Each group's mean
    prediction ``pred_g / count_g`` comes from the shared regression sums
    (:func:`~fair_lightning.functional.regression_group_sums`, float64); the gaps (each group's
    mean to the overall mean, or every pair with ``pairwise=True``) are divided by ``scale`` and
    reduced as in :class:`FairnessLoss` (``penalty``, ``reduction``, ``weighting``,
    ``group_weights``, ``min_count``). ``target`` is not used (it may be ``None``).

    Args:
        num_groups: number of groups.
        penalty: ``"abs"`` or ``"squared"`` gaps.
        reduction: ``"mean"`` or ``"max"`` over groups (or pairs).
        pairwise: compare every pair of groups instead of each group with the overall mean.
        weighting: ``"uniform"``, ``"proportional"`` or ``"sqrt"`` weights from batch group sizes.
        group_weights: fixed ``(num_groups,)`` non-negative weights; overrides ``weighting``.
        min_count: groups with fewer samples than this in the batch are masked.
        scale: gaps are divided by this positive number (for instance the target's standard
            deviation, so that ``eta`` means the same on every scale); ``None``: prediction units.
        validate_args: check inputs on every call.

    Example:
        >>> import torch
        >>> loss = RegressionDemographicParityLoss(2, pairwise=True)
        >>> loss(torch.tensor([1.0, 2.0, 4.0, 4.0]), None, torch.tensor([0, 0, 1, 1]))
        tensor(2.5000)
    """

    rates = ()
    task = "regression"

    def __init__(
        self,
        num_groups: int,
        *,
        penalty: Literal["abs", "squared"] = "abs",
        reduction: Literal["mean", "max"] = "mean",
        pairwise: bool = False,
        weighting: Literal["uniform", "proportional", "sqrt"] = "uniform",
        group_weights: Tensor | Sequence[float] | None = None,
        min_count: float = 1,
        scale: float | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(
            num_groups, penalty=penalty, reduction=reduction, pairwise=pairwise, weighting=weighting,
            group_weights=group_weights, min_count=min_count, validate_args=validate_args,
        )
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf")):
            raise ValueError(f"`scale` must be a finite number > 0 or None, got {scale!r}")
        self.scale = None if scale is None else float(scale)

    def check_inputs(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Validate and flatten a batch of ``(N,)`` (or ``(N, 1)``) predictions."""
        from fair_lightning.functional._regression import check_regression_inputs

        return check_regression_inputs(preds, target, groups, self.num_groups)

    def soft_sums(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> RegressionSums:
        """Per-group regression sums of the batch (differentiable in ``preds``, float64)."""
        if self.validate_args:
            preds, target, groups = self.check_inputs(preds, target, groups)
        preds, groups = preds.reshape(-1), groups.reshape(-1)
        return regression_group_sums(preds, torch.zeros_like(preds), groups, self.num_groups, validate_args=False)

    def gaps(self, sums: RegressionSums) -> GroupGaps:
        """Gaps of the group mean predictions, ``(1, G)`` (or ``(1, G*(G-1)/2)`` pairwise), over ``scale``."""
        num, den = sums.pred[None], sums.count[None]
        if self.scale is not None:
            num = num / self.scale
        fn = pairwise_gaps_from_ratios if self.pairwise else gaps_from_ratios
        return fn(num, den, self.min_count)

    def forward(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> Tensor:
        """The penalty of a batch, in the predictions' dtype: 0 when no gap is defined."""
        sums = self.soft_sums(preds, target, groups)
        value = aggregate_gaps(self.gaps(sums), self.weights(sums), self.penalty, self.reduction)
        return value.to(preds.dtype) if preds.is_floating_point() else value.float()


class BoundedGroupLoss(nn.Module):
    """Per-group loss above a bound, for regression (or any per-sample loss).

    ``penalty = sum_g w_g * relu(L_g - bound)`` (or the max over groups), where ``L_g`` is the
    mean of ``loss_fn(preds, target)`` over group ``g`` (Agarwal et al. 2019, "bounded group loss").

    Args:
        num_groups: number of groups.
        bound: the largest acceptable group loss.
        loss_fn: per-sample loss ``(preds, target) -> (N,)``; default squared error.
        reduction: ``"mean"`` (weighted mean over groups) or ``"max"``.
        weighting, group_weights, min_count: as in :class:`FairnessLoss`.
    """

    def __init__(
        self,
        num_groups: int,
        *,
        bound: float = 0.0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        reduction: Literal["mean", "max"] = "mean",
        weighting: Literal["uniform", "proportional", "sqrt"] = "uniform",
        group_weights: Tensor | Sequence[float] | None = None,
        min_count: float = 1,
    ) -> None:
        super().__init__()
        self.num_groups = check_num_groups(num_groups)
        if bound < 0:
            raise ValueError(f"`bound` must be >= 0, got {bound}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {list(REDUCTIONS)}, got {reduction!r}")
        if weighting not in WEIGHT_SCHEMES:
            raise ValueError(f"`weighting` must be one of {list(WEIGHT_SCHEMES)}, got {weighting!r}")
        self.bound, self.reduction, self.weighting, self.min_count = bound, reduction, weighting, min_count
        self.loss_fn = loss_fn or (lambda p, t: F.mse_loss(p, t, reduction="none"))
        self.group_weights = None if group_weights is None else torch.as_tensor(group_weights, dtype=torch.float32)

    def group_losses(self, preds: Tensor, target: Tensor, groups: Tensor) -> Rate:
        """Mean per-sample loss of each group, with the mask of groups that have ``min_count`` samples."""
        preds = check_scores(preds, "preds")
        target = check_scores(target.to(preds.dtype) if not target.is_floating_point() else target, "target")
        if target.numel() != preds.numel():
            raise ValueError(f"`target` must have the same length as `preds` ({preds.numel()}), got {target.numel()}")
        groups = check_groups(groups, preds.numel(), self.num_groups)
        per_sample = self.loss_fn(preds, target).reshape(-1)
        sums = grouped_sum(torch.stack((torch.ones_like(per_sample), per_sample), 1), groups, self.num_groups)
        count, total = sums.unbind(1)
        mean = total / count.clamp_min(1)
        valid = (count >= max(self.min_count, 1))
        return Rate(torch.where(valid, mean, torch.zeros_like(mean)), valid)

    def forward(self, preds: Tensor, target: Tensor, groups: Tensor) -> Tensor:
        losses = self.group_losses(preds, target, groups)
        excess = torch.relu(losses.value - self.bound)
        if self.group_weights is not None:
            w = self.group_weights.to(excess)
        else:
            count = grouped_sum(torch.ones_like(preds.reshape(-1)), groups.reshape(-1).long(), self.num_groups)
            w = group_weights(count, self.weighting, 0)
        gaps = GroupGaps(excess[None], losses.valid[None], losses.valid[None].to(excess))
        return aggregate_gaps(gaps, w, "abs", self.reduction)


LOSSES: dict[str, type[FairnessLoss]] = {
    "demographic_parity": DemographicParityLoss,
    "equal_opportunity": EqualOpportunityLoss,
    "equalized_odds": EqualizedOddsLoss,
    "accuracy_parity": AccuracyParityLoss,
    "mutual_information": MutualInformationLoss,
}
#: losses by name for regression models (one continuous prediction per sample)
REGRESSION_LOSSES: dict[str, type[FairnessLoss]] = {
    "regression_demographic_parity": RegressionDemographicParityLoss,
}


def make_fairness_loss(name: str, num_groups: int, **kwargs) -> FairnessLoss:
    """Build a loss by name: one of ``LOSSES`` (classification) or ``REGRESSION_LOSSES``."""
    losses = {**LOSSES, **REGRESSION_LOSSES}
    if name not in losses:
        raise ValueError(f"`fairness` must be one of {list(losses)}, got {name!r}")
    return losses[name](num_groups, **kwargs)


class RegularizedLoss(NamedTuple):
    total: Tensor
    task: Tensor
    fairness: Tensor


class FairnessRegularizer(nn.Module):
    """``task_loss(logits, target) + eta * penalty(logits, target, groups)``, returning all three.

    Args:
        task_loss: ``(logits, target) -> scalar``; default binary cross-entropy on logits (cross-entropy
            when ``penalty`` has ``num_classes``).
        penalty: a :class:`FairnessLoss` (or any ``(logits, target, groups) -> scalar`` module).
        eta: fairness strength, ``>= 0``.
    """

    def __init__(self, task_loss: Callable[[Tensor, Tensor], Tensor] | None, penalty: nn.Module, eta: float = 1.0) -> None:
        super().__init__()
        if eta < 0:
            raise ValueError(f"`eta` must be >= 0, got {eta}")
        multiclass = getattr(penalty, "num_classes", None) is not None
        self.task_loss = task_loss or (cross_entropy_with_logits if multiclass else binary_cross_entropy_with_logits)
        self.penalty = penalty
        self.eta = eta

    def forward(self, logits: Tensor, target: Tensor, groups: Tensor) -> RegularizedLoss:
        task = self.task_loss(logits, target)
        fairness = self.penalty(logits, target, groups)
        return RegularizedLoss(task + self.eta * fairness, task, fairness)


def cross_entropy_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of ``(N, K)`` logits and ``(N,)`` class indices (integer or integral float)."""
    return F.cross_entropy(logits, target.reshape(-1).long())


def binary_cross_entropy_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """BCE on logits that accepts ``(N,)`` / ``(N, 1)`` logits and integer or float targets."""
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), target.reshape(-1).to(logits.dtype))


__all__ = [
    "BoundedGroupLoss",
    "DemographicParityLoss",
    "EqualOpportunityLoss",
    "EqualizedOddsLoss",
    "FAIRNESS_DEFINITIONS",
    "FairnessLoss",
    "FairnessRegularizer",
    "GroupGaps",
    "LOSSES",
    "MutualInformationLoss",
    "REGRESSION_LOSSES",
    "RegressionDemographicParityLoss",
    "RegularizedLoss",
    "AccuracyParityLoss",
    "aggregate_gaps",
    "check_definition",
    "binary_cross_entropy_with_logits",
    "check_num_classes_arg",
    "cross_entropy_with_logits",
    "make_fairness_loss",
    "gaps_from_ratios",
    "pairwise_gaps",
    "pairwise_gaps_from_ratios",
    "rate_gaps",
]
