"""torchmetrics metrics for group fairness of regression models.

States are per-group sums (``dist_reduce_fx="sum"``): ``(5, G)`` sums of ``[count, prediction,
target, squared error, absolute error]`` (:class:`~fair_lightning.functional._regression.RegressionSums`)
and, for the distribution gap, ``(G, E + 1)`` histogram counts over fixed bin edges. Keys are
stable: ``mean_prediction/<group>``, ``mean_squared_error/<group>``, ...

Example:
    >>> import torch
    >>> from fair_lightning.metrics_regression import RegressionDemographicParityDifference
    >>> metric = RegressionDemographicParityDifference(num_groups=2)
    >>> metric.update(torch.tensor([1.0, 2.0, 4.0, 4.0]), None, torch.tensor([0, 0, 1, 1]))
    >>> metric.compute()
    tensor(2.5000, dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from fair_lightning.functional._checks import check_group_names, check_num_groups
from fair_lightning.functional._multiclass import per_class_difference
from fair_lightning.functional._regression import (
    RegressionSums,
    _regression_statistics_compute,
    cdf_gap_from_histogram,
    check_bin_edges,
    check_regression_inputs,
    prediction_histogram,
    regression_group_sums,
)


class _RegressionSumsMetric(Metric):
    """Holds :class:`RegressionSums` as one ``(5, G)`` float64 state."""

    is_differentiable = False
    full_state_update = False
    higher_is_better: bool | None = None
    sums: Tensor

    def __init__(
        self, num_groups: int, *, group_names: Sequence[str] | None = None, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups(num_groups)
        self.group_names = check_group_names(group_names, num_groups)
        self.validate_args = validate_args
        zeros = torch.zeros(len(RegressionSums._fields), num_groups, dtype=torch.float64)
        self.add_state("sums", default=zeros, dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> None:
        """Add a batch: ``(N,)`` predictions, ``(N,)`` targets (``None`` for the mean-prediction
        gap) and ``(N,)`` group ids."""
        if self.validate_args:
            preds, target, groups = check_regression_inputs(preds, target, groups, self.num_groups)
        if target is None:
            target = torch.zeros_like(preds, dtype=torch.float64)
        self.sums += regression_group_sums(preds, target, groups, self.num_groups, validate_args=False).stack()

    @property
    def regression_sums(self) -> RegressionSums:
        """The accumulated (and, after ``compute``, synced) per-group sums."""
        return RegressionSums.from_stacked(self.sums)


class RegressionGroupStatistics(_RegressionSumsMetric):
    """Per-group ``count``, mean prediction, mean target, mean squared error and mean absolute error.

    Keys ``"{statistic}/{group}"`` (``"mean_prediction/group_0"``); NaN for a group without samples.
    """

    def compute(self) -> dict[str, Tensor]:
        table = _regression_statistics_compute(self.regression_sums)
        return {f"{stat}/{name}": values[g] for stat, values in table.items() for g, name in enumerate(self.group_names)}


class RegressionDemographicParityDifference(_RegressionSumsMetric):
    """Largest minus smallest group mean prediction (demographic parity in the mean). ``target`` may be ``None``."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return per_class_difference(self.regression_sums.mean("pred"))


class GroupLossDifference(_RegressionSumsMetric):
    """Largest minus smallest group mean loss (``loss="squared_error"`` or ``"absolute_error"``)."""

    higher_is_better = False

    def __init__(self, num_groups: int, *, loss: str = "squared_error", **kwargs: Any) -> None:
        if loss not in ("squared_error", "absolute_error"):
            raise ValueError(f"`loss` must be one of ['squared_error', 'absolute_error'], got {loss!r}")
        super().__init__(num_groups, **kwargs)
        self.loss = loss

    def compute(self) -> Tensor:
        return per_class_difference(self.regression_sums.mean(self.loss))


class PredictionDistributionGap(Metric):
    """The largest gap between groups' prediction CDFs (a Kolmogorov-Smirnov statistic over groups),
    from per-group histograms over fixed bin edges.

    The CDFs are compared at the edges, so the value equals the exact
    :func:`~fair_lightning.functional._regression.prediction_cdf_gap` when every prediction lies
    on an edge and is a lower bound otherwise (finer edges: closer). ``target`` is ignored.

    Args:
        num_groups: number of groups.
        bin_edges: increasing edges; default ``n_bins + 1`` equal-width edges over ``value_range``.
        value_range: ``(low, high)`` of the default edges.
        n_bins: number of equal-width bins of the default edges.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    histogram: Tensor

    def __init__(
        self,
        num_groups: int,
        *,
        bin_edges: Sequence[float] | Tensor | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        n_bins: int = 100,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups(num_groups)
        if bin_edges is None:
            if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
                raise ValueError(f"`n_bins` must be a positive int, got {n_bins!r}")
            low, high = value_range
            if not high > low:
                raise ValueError(f"`value_range` must be (low, high) with high > low, got {value_range!r}")
            bin_edges = torch.linspace(low, high, n_bins + 1, dtype=torch.float64)
        self.register_buffer("bin_edges", check_bin_edges(bin_edges))
        self.validate_args = validate_args
        zeros = torch.zeros(num_groups, self.bin_edges.numel() + 1, dtype=torch.float64)
        self.add_state("histogram", default=zeros, dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> None:
        """Add a batch of ``(N,)`` predictions and group ids (``target`` is ignored)."""
        if self.validate_args:
            preds, _, groups = check_regression_inputs(preds, None, groups, self.num_groups)
        self.histogram += prediction_histogram(preds, groups, self.num_groups, self.bin_edges)

    def compute(self) -> Tensor:
        return cdf_gap_from_histogram(self.histogram)


def regression_fairness_metrics(
    num_groups: int,
    *,
    group_names: Sequence[str] | None = None,
    bin_edges: Sequence[float] | Tensor | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    n_bins: int = 100,
    prefix: str | None = None,
) -> MetricCollection:
    """Group statistics, mean-prediction gap, MSE gap and prediction-distribution gap as one collection."""
    return MetricCollection(
        {
            "group": RegressionGroupStatistics(num_groups, group_names=group_names),
            "dp_difference": RegressionDemographicParityDifference(num_groups, group_names=group_names),
            "mse_difference": GroupLossDifference(num_groups, group_names=group_names),
            "cdf_gap": PredictionDistributionGap(num_groups, bin_edges=bin_edges, value_range=value_range, n_bins=n_bins),
        },
        prefix=prefix,
        compute_groups=True,
    )


__all__ = [
    "GroupLossDifference",
    "PredictionDistributionGap",
    "RegressionDemographicParityDifference",
    "RegressionGroupStatistics",
    "regression_fairness_metrics",
]
