"""Functional fairness metrics: per-group rates and disparities from hard predictions.

Each ``*_compute`` helper takes :class:`~fair_lightning.functional.GroupSums` (which the
torchmetrics classes keep as states) and each public function is the one-call twin
``preds, target, groups -> value``. They agree with fairlearn's ``MetricFrame`` and its
``demographic_parity_*`` / ``equalized_odds_difference`` helpers.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from fair_lightning.functional._checks import as_vector, check_group_inputs
from fair_lightning.functional._core import GroupSums, Rate, confusion_counts, hard_predictions, masked_divide
from fair_lightning.functional._rates import TABLE_RATES, definition_rates

RATE_NAMES = TABLE_RATES
EO_AGGREGATIONS = ("worst_case", "mean")


def format_predictions(preds: Tensor, *, from_logits: bool = False, threshold: float = 0.5) -> Tensor:
    """Turn scores (probabilities, logits or 0/1 labels) into float hard predictions.

    Integer or boolean ``preds`` are taken as predicted labels and must be 0/1. Floating
    ``preds`` are probabilities in ``[0, 1]`` unless ``from_logits`` is true; they are
    thresholded at ``threshold`` (probabilities) or at the matching logit.
    """
    preds = as_vector(preds, "preds")
    if not preds.is_floating_point():
        bad = (preds != 0) & (preds != 1)
        if bad.any():
            raise ValueError(
                "`preds` of integer dtype are taken as predicted labels and must be 0 or 1, "
                f"got values such as {torch.unique(preds[bad])[:5].tolist()}"
            )
        return preds.float()
    if torch.isnan(preds).any():
        raise ValueError(f"`preds` contains NaN ({int(torch.isnan(preds).sum())} of {preds.numel()} values)")
    if from_logits:
        preds = torch.sigmoid(preds)
    elif preds.numel() and (preds.min() < 0 or preds.max() > 1):
        raise ValueError(
            "`preds` must be probabilities in [0, 1] (pass `from_logits=True` for logits), "
            f"got values in [{float(preds.min()):.4g}, {float(preds.max()):.4g}]"
        )
    return hard_predictions(preds, threshold)


def hard_group_sums(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
    validate_args: bool = True,
) -> GroupSums:
    """Per-group sums of thresholded predictions, in float64 so that counts stay exact.

    Counted with :func:`confusion_counts` (one ``bincount``).
    """
    hard = format_predictions(preds, from_logits=from_logits, threshold=threshold)
    if validate_args:
        hard, target, groups = check_group_inputs(hard, target, groups, num_groups)
    return GroupSums.from_confusion(confusion_counts(hard, target, groups, num_groups))


def _as_nan(rate: Rate) -> Tensor:
    return torch.where(rate.valid, rate.value, torch.full_like(rate.value, float("nan")))


def group_rate_table(sums: GroupSums, rates: tuple[str, ...] = TABLE_RATES) -> dict[str, Rate]:
    """The per-group ``rates`` of ``sums`` (keys of the rate table), each a :class:`Rate`."""
    num, den = sums.numerators_denominators(rates)
    return {name: masked_divide(num[i], den[i]) for i, name in enumerate(rates)}


def _group_rates_compute(sums: GroupSums) -> dict[str, Tensor]:
    """Per-group count and rates; a rate undefined for a group (empty denominator) is NaN."""
    return {"count": sums.count, **{name: _as_nan(rate) for name, rate in group_rate_table(sums).items()}}


def _undefined(rate: Rate, what: str) -> Tensor:
    rank_zero_warn(
        f"the {what} is undefined: no group has a defined rate (no samples were seen, or none "
        "with the label the rate conditions on); returning NaN"
    )
    return rate.value.new_full((), float("nan"))


def rate_difference(rate: Rate) -> Tensor:
    """``max - min`` of the rate over the groups where it is defined.

    0 with one such group (as fairlearn's ``MetricFrame.difference``), NaN with a warning when no
    group has a defined rate (nothing seen: a difference of 0 would claim parity).
    """
    n = int(rate.valid.sum())
    if n == 0:
        return _undefined(rate, "difference")
    if n == 1:
        return rate.value.new_zeros(())
    v = rate.value[rate.valid]
    return v.max() - v.min()


def rate_ratio(rate: Rate) -> Tensor:
    """``min / max`` of the rate over the groups where it is defined (1 when all are equal; NaN
    with a warning when no group has a defined rate)."""
    n = int(rate.valid.sum())
    if n == 0:
        return _undefined(rate, "ratio")
    if n == 1:
        return rate.value.new_ones(())
    v = rate.value[rate.valid]
    hi, lo = v.max(), v.min()
    return torch.where(hi > 0, lo / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.ones_like(hi))


def definition_difference(sums: GroupSums, definition: str, agg: str = "worst_case") -> Tensor:
    """The max - min difference of a fairness definition's rates; for several rates (equalized
    odds) their larger (``agg="worst_case"``) or mean difference."""
    diffs = [rate_difference(r) for r in group_rate_table(sums, definition_rates(definition)).values()]
    if len(diffs) == 1:
        return diffs[0]
    stacked = torch.stack(diffs)
    return stacked.max() if agg == "worst_case" else stacked.mean()


def _demographic_parity_difference_compute(sums: GroupSums) -> Tensor:
    return definition_difference(sums, "demographic_parity")


def _demographic_parity_ratio_compute(sums: GroupSums) -> Tensor:
    return rate_ratio(group_rate_table(sums, definition_rates("demographic_parity"))["selection_rate"])


def _equal_opportunity_difference_compute(sums: GroupSums) -> Tensor:
    return definition_difference(sums, "equal_opportunity")


def _check_agg(agg: str) -> None:
    if agg not in EO_AGGREGATIONS:
        raise ValueError(f"`agg` must be one of {list(EO_AGGREGATIONS)}, got {agg!r}")


def _equalized_odds_difference_compute(sums: GroupSums, agg: str = "worst_case") -> Tensor:
    return definition_difference(sums, "equalized_odds", agg)


def group_rates(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
) -> dict[str, Tensor]:
    """Per-group ``count``, selection rate, TPR, FPR, FNR and accuracy, each of shape ``(G,)``.

    Rates undefined for a group (no samples, or no positives for TPR/FNR, no negatives for FPR)
    are NaN in this table; the disparity functions skip them.
    """
    return _group_rates_compute(hard_group_sums(preds, target, groups, num_groups, threshold=threshold, from_logits=from_logits))


def _selection_sums(preds: Tensor, groups: Tensor, num_groups: int, threshold: float, from_logits: bool) -> GroupSums:
    # demographic parity needs no labels: use zeros so that the shared checks still apply
    target = torch.zeros(as_vector(preds, "preds").shape, dtype=torch.long, device=preds.device)
    return hard_group_sums(preds, target, groups, num_groups, threshold=threshold, from_logits=from_logits)


def demographic_parity_difference(
    preds: Tensor, groups: Tensor, num_groups: int, *, threshold: float = 0.5, from_logits: bool = False
) -> Tensor:
    """Largest minus smallest per-group selection rate."""
    return _demographic_parity_difference_compute(_selection_sums(preds, groups, num_groups, threshold, from_logits))


def demographic_parity_ratio(
    preds: Tensor, groups: Tensor, num_groups: int, *, threshold: float = 0.5, from_logits: bool = False
) -> Tensor:
    """Smallest over largest per-group selection rate (disparate impact; 0.8 is the "four-fifths rule")."""
    return _demographic_parity_ratio_compute(_selection_sums(preds, groups, num_groups, threshold, from_logits))


def equal_opportunity_difference(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int, *, threshold: float = 0.5, from_logits: bool = False
) -> Tensor:
    """Largest minus smallest per-group true-positive rate."""
    sums = hard_group_sums(preds, target, groups, num_groups, threshold=threshold, from_logits=from_logits)
    return _equal_opportunity_difference_compute(sums)


def equalized_odds_difference(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
    agg: Literal["worst_case", "mean"] = "worst_case",
) -> Tensor:
    """The larger (``agg="worst_case"``, fairlearn's default) or the mean of the TPR and FPR differences."""
    _check_agg(agg)
    sums = hard_group_sums(preds, target, groups, num_groups, threshold=threshold, from_logits=from_logits)
    return _equalized_odds_difference_compute(sums, agg)


__all__ = [
    "check_group_inputs",
    "definition_difference",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "format_predictions",
    "group_rate_table",
    "group_rates",
    "hard_group_sums",
    "rate_difference",
    "rate_ratio",
]
