"""torchmetrics metrics for group fairness.

Each metric keeps per-group sums as states (``dist_reduce_fx="sum"``), so accumulating over
batches equals one call on all the data and DDP reduction is exact. The result keys are stable:
they depend on ``num_groups`` and ``group_names`` only, never on which groups a batch happened
to contain (unlike torchmetrics' ``BinaryGroupStatRates``, which renumbers groups).

Example:
    >>> import torch
    >>> from fair_lightning.metrics import DemographicParityDifference
    >>> metric = DemographicParityDifference(num_groups=2)
    >>> metric.update(torch.tensor([0.9, 0.2, 0.8, 0.7]), torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    >>> metric.compute()
    tensor(0.5000, dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

if TYPE_CHECKING:
    import pandas as pd

from fair_lightning.functional import GroupSums, calibration_sums, check_num_groups, hard_group_sums
from fair_lightning.functional._calibration import (
    CALIBRATION_NORMS,
    calibration_error_from_sums,
    calibration_error_summary,
    check_n_bins,
)
from fair_lightning.functional._checks import as_vector
from fair_lightning.functional._checks import check_group_names as _check_group_names
from fair_lightning.functional._fairness import (
    _check_agg,
    _demographic_parity_difference_compute,
    _demographic_parity_ratio_compute,
    _equal_opportunity_difference_compute,
    _equalized_odds_difference_compute,
    _group_rates_compute,
)


class _GroupSumsMetric(Metric):
    """Holds :class:`~fair_lightning.functional.GroupSums` of hard predictions as states."""

    is_differentiable = False
    full_state_update = False
    higher_is_better: bool | None = None

    count: Tensor
    label: Tensor
    pred: Tensor
    pred_label: Tensor

    def __init__(
        self,
        num_groups: int,
        *,
        threshold: float = 0.5,
        from_logits: bool = False,
        group_names: Sequence[str] | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups(num_groups)
        if not 0 <= threshold <= 1:
            raise ValueError(f"`threshold` must be a probability in [0, 1], got {threshold}")
        self.threshold = threshold
        self.from_logits = from_logits
        self.group_names = _check_group_names(group_names, num_groups)
        self.validate_args = validate_args
        # float64 keeps counts exact far beyond float32's 2**24
        for field in GroupSums._fields:
            self.add_state(field, default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> None:
        """Add a batch: ``preds`` (probabilities, logits with ``from_logits=True``, or 0/1 labels),
        binary ``target`` and integer ``groups`` in ``[0, num_groups)``."""
        if target is None:
            target = torch.zeros(as_vector(preds, "preds").shape, dtype=torch.long, device=preds.device)
        sums = hard_group_sums(
            preds,
            target,
            groups,
            self.num_groups,
            threshold=self.threshold,
            from_logits=self.from_logits,
            validate_args=self.validate_args,
        )
        self.count += sums.count
        self.label += sums.label
        self.pred += sums.pred
        self.pred_label += sums.pred_label

    @property
    def group_sums(self) -> GroupSums:
        """The accumulated (and, after ``compute``, synced) per-group sums."""
        return GroupSums(self.count, self.label, self.pred, self.pred_label)


class GroupRates(_GroupSumsMetric):
    """Per-group count, selection rate, TPR, FPR, FNR and accuracy.

    ``compute()`` returns a flat dict with stable keys ``"{rate}/{group_name}"``, e.g.
    ``"selection_rate/group_0"`` or ``"true_positive_rate/sex=Female"``, ready for
    ``LightningModule.log_dict``. A rate that is undefined for a group (no samples, or no
    positives for TPR/FNR, no negatives for FPR) is NaN, never a made-up 0.
    """

    def compute(self) -> dict[str, Tensor]:
        table = _group_rates_compute(self.group_sums)
        return {f"{rate}/{name}": values[g] for rate, values in table.items() for g, name in enumerate(self.group_names)}

    def compute_table(self) -> dict[str, Tensor]:
        """The same rates as ``(G,)`` tensors keyed by rate name (of this process's states)."""
        return _group_rates_compute(self.group_sums)

    def to_frame(self) -> pd.DataFrame:
        """The rates as a ``pandas.DataFrame``: one row per group (index: the group names), one
        column per rate, like fairlearn's ``MetricFrame.by_group``. Synced across processes like
        :meth:`compute`; undefined rates are NaN."""
        import pandas as pd

        values = self.compute()
        rates = list(_group_rates_compute(GroupSums.zeros(1)))
        data = {rate: [float(values[f"{rate}/{name}"]) for name in self.group_names] for rate in rates}
        frame = pd.DataFrame(data, index=pd.Index(self.group_names, name="group"))
        return frame.astype({"count": "int64"})


class DemographicParityDifference(_GroupSumsMetric):
    """Largest minus smallest per-group selection rate (0 is parity). ``target`` may be ``None``."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return _demographic_parity_difference_compute(self.group_sums)


class DemographicParityRatio(_GroupSumsMetric):
    """Smallest over largest per-group selection rate: disparate impact (1 is parity, 0.8 the four-fifths rule)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return _demographic_parity_ratio_compute(self.group_sums)


class EqualOpportunityDifference(_GroupSumsMetric):
    """Largest minus smallest per-group true-positive rate."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return _equal_opportunity_difference_compute(self.group_sums)


class EqualizedOddsDifference(_GroupSumsMetric):
    """The larger (``agg="worst_case"``, as fairlearn) or the mean of the TPR and FPR differences."""

    higher_is_better = False

    def __init__(self, num_groups: int, *, agg: Literal["worst_case", "mean"] = "worst_case", **kwargs: Any) -> None:
        _check_agg(agg)
        super().__init__(num_groups, **kwargs)
        self.agg = agg

    def compute(self) -> Tensor:
        return _equalized_odds_difference_compute(self.group_sums, self.agg)


class GroupCalibrationError(Metric):
    """Per-group expected calibration error, its maximum and its max-min disparity.

    States are ``(num_groups, n_bins, 3)`` sums of ``[count, probability, label]``: memory is
    constant in the number of samples. ``compute()`` returns ``{"calibration_error/{name}": ...,
    "calibration_error_max": ..., "calibration_error_disparity": ...}``; the per-group value of a
    group without samples is NaN and is skipped by max and disparity.

    Args:
        num_groups: number of groups.
        n_bins: equal-width probability bins.
        norm: ``"l1"`` (expected calibration error) or ``"max"`` (maximum calibration error).
        from_logits: apply a sigmoid to ``preds`` first.
        group_names: names used in the result keys.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    sums: Tensor

    def __init__(
        self,
        num_groups: int,
        *,
        n_bins: int = 15,
        norm: Literal["l1", "max"] = "l1",
        from_logits: bool = False,
        group_names: Sequence[str] | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups(num_groups)
        self.n_bins = check_n_bins(n_bins)
        if norm not in CALIBRATION_NORMS:
            raise ValueError(f"`norm` must be one of {list(CALIBRATION_NORMS)}, got {norm!r}")
        self.norm = norm
        self.from_logits = from_logits
        self.group_names = _check_group_names(group_names, num_groups)
        self.validate_args = validate_args
        self.add_state("sums", default=torch.zeros(num_groups, n_bins, 3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Add a batch of probabilities (or logits with ``from_logits=True``), binary labels and group ids."""
        probs = torch.sigmoid(preds) if self.from_logits else preds
        self.sums += calibration_sums(
            probs, target, groups, self.num_groups, n_bins=self.n_bins, validate_args=self.validate_args
        )

    def compute(self) -> dict[str, Tensor]:
        summary = calibration_error_summary(calibration_error_from_sums(self.sums, self.norm))
        out = {f"calibration_error/{name}": summary["per_group"][g] for g, name in enumerate(self.group_names)}
        out["calibration_error_max"] = summary["max"]
        out["calibration_error_disparity"] = summary["disparity"]
        return out


def fairness_metrics(
    num_groups: int,
    *,
    group_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    from_logits: bool = False,
    n_bins: int = 15,
    prefix: str | None = None,
) -> MetricCollection:
    """The standard set as one ``MetricCollection``: group rates, DP difference and ratio,
    equalized-odds and equal-opportunity differences and group calibration error.

    Every member takes ``update(preds, target, groups)``; the members holding the same sums share
    them through torchmetrics' compute groups, so the data is reduced once.
    """
    common = {"group_names": group_names, "from_logits": from_logits}
    hard = {**common, "threshold": threshold}
    return MetricCollection(
        {
            "group": GroupRates(num_groups, **hard),
            "dp_difference": DemographicParityDifference(num_groups, **hard),
            "dp_ratio": DemographicParityRatio(num_groups, **hard),
            "eo_difference": EqualizedOddsDifference(num_groups, **hard),
            "eopp_difference": EqualOpportunityDifference(num_groups, **hard),
            "calibration": GroupCalibrationError(num_groups, n_bins=n_bins, **common),
        },
        prefix=prefix,
        compute_groups=True,
    )


__all__ = [
    "DemographicParityDifference",
    "DemographicParityRatio",
    "EqualOpportunityDifference",
    "EqualizedOddsDifference",
    "GroupCalibrationError",
    "GroupRates",
    "fairness_metrics",
]

# K-class and regression metrics live in their own modules; re-exported here
from fair_lightning.metrics_multiclass import (  # noqa: E402
    MulticlassAccuracyDifference,
    MulticlassDemographicParityDifference,
    MulticlassDemographicParityRatio,
    MulticlassEqualizedOddsDifference,
    MulticlassEqualOpportunityDifference,
    MulticlassGroupCalibrationError,
    MulticlassGroupRates,
    multiclass_fairness_metrics,
)
from fair_lightning.metrics_regression import (  # noqa: E402
    GroupLossDifference,
    PredictionDistributionGap,
    RegressionDemographicParityDifference,
    RegressionGroupStatistics,
    regression_fairness_metrics,
)

__all__ += [
    "GroupLossDifference",
    "MulticlassAccuracyDifference",
    "MulticlassDemographicParityDifference",
    "MulticlassDemographicParityRatio",
    "MulticlassEqualOpportunityDifference",
    "MulticlassEqualizedOddsDifference",
    "MulticlassGroupCalibrationError",
    "MulticlassGroupRates",
    "PredictionDistributionGap",
    "RegressionDemographicParityDifference",
    "RegressionGroupStatistics",
    "multiclass_fairness_metrics",
    "regression_fairness_metrics",
]
