"""Group statistics of a regression model: per-group means, errors and prediction distributions.

Five sums per group, in one ``index_add``, stacked as ``[count, pred, target, squared_error,
absolute_error]`` (:class:`RegressionSums`): every statistic is a ratio of two of them (mean
prediction ``pred / count``, mean squared error ``squared_error / count``, ...), so they are exact
under DDP and accumulate over batches as the classification sums do.

Demographic parity for regression compares groups' prediction distributions: its first-moment
form is the gap between group mean predictions (:func:`regression_demographic_parity_difference`),
its distributional form the largest gap between groups' empirical CDFs, a Kolmogorov-Smirnov
statistic over groups (:func:`prediction_cdf_gap`: exact; :func:`prediction_histogram` +
:func:`cdf_gap_from_histogram`: from histogram sums over fixed bin edges, for streaming metrics;
equal to the exact value when every prediction lies on a bin edge, a lower bound otherwise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fair_lightning.functional._checks import _describe, check_groups, check_num_groups
from fair_lightning.functional._core import Rate, grouped_sum, masked_divide
from fair_lightning.functional._multiclass import per_class_difference

#: the per-group statistics :func:`regression_group_statistics` reports, in order
REGRESSION_STATISTICS = ("mean_prediction", "mean_target", "mean_squared_error", "mean_absolute_error")


class RegressionSums(NamedTuple):
    """Per-group sums of a regression model's predictions; each field has shape ``(G,)``."""

    count: Tensor
    pred: Tensor
    target: Tensor
    squared_error: Tensor
    absolute_error: Tensor

    @classmethod
    def from_stacked(cls, stacked: Tensor) -> RegressionSums:
        """Inverse of :meth:`stack`: a ``(5, G)`` tensor."""
        return cls(*stacked.unbind(0))

    def stack(self) -> Tensor:
        """All sums as one ``(5, G)`` tensor."""
        return torch.stack(tuple(self), 0)

    def mean(self, field: str) -> Rate:
        """The per-group mean of ``field`` (``"pred"``, ``"target"``, ``"squared_error"``, ...)."""
        return masked_divide(getattr(self, field), self.count)

    def statistics(self) -> dict[str, Rate]:
        """:data:`REGRESSION_STATISTICS` per group."""
        fields = ("pred", "target", "squared_error", "absolute_error")
        return {name: self.mean(f) for name, f in zip(REGRESSION_STATISTICS, fields)}


def check_regression_values(x: Tensor, n: int | None, name: str) -> Tensor:
    """Flatten ``x`` to ``(N,)`` floating values; raise naming ``name`` on K columns, NaN or a wrong length."""
    if not isinstance(x, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be one continuous value per sample, shape (N,) or (N, 1), got {_describe(x)}")
    if n is not None and x.numel() != n:
        raise ValueError(f"`{name}` must have the same length as `preds` ({n}), got {x.numel()}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"`{name}` must be real-valued, got {_describe(x)}")
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError(f"`{name}` contains NaN ({int(torch.isnan(x).sum())} of {x.numel()} values)")
    return x


def check_regression_inputs(
    preds: Tensor, target: Tensor | None, groups: Tensor, num_groups: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Validate and flatten ``(preds, target, groups)`` of a regression model; ``target`` may be ``None``."""
    check_num_groups(num_groups)
    preds = check_regression_values(preds, None, "preds")
    n = preds.numel()
    if target is not None:
        target = check_regression_values(target, n, "target")
    return preds, target, check_groups(groups, n, num_groups)


def regression_group_sums(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    weight: Tensor | None = None,
    validate_args: bool = True,
) -> RegressionSums:
    """Per-group ``[count, pred, target, squared_error, absolute_error]`` sums in one ``index_add``.

    Summed in float64 (exact means over large epochs); differentiable in ``preds``.

    Args:
        preds: ``(N,)`` predictions.
        target: ``(N,)`` targets.
        groups: ``(N,)`` group ids in ``[0, num_groups)``.
        num_groups: number of groups ``G``.
        weight: optional ``(N,)`` non-negative sample weights.
        validate_args: check shapes, dtypes and values.
    """
    if validate_args:
        preds, target, groups = check_regression_inputs(preds, target, groups, num_groups)
        if target is None:
            raise ValueError("`target` must be a tensor of regression targets, got None")
    p = preds.reshape(-1).to(torch.float64)
    y = target.reshape(-1).to(torch.float64)
    err = p - y
    values = torch.stack((torch.ones_like(p), p, y, err * err, err.abs()), 1)
    if weight is not None:
        if validate_args and weight.numel() != p.numel():
            raise ValueError(f"`weight` must have the same length as `preds` ({p.numel()}), got {weight.numel()}")
        values = values * weight.reshape(-1, 1).to(values.dtype)
    return RegressionSums.from_stacked(grouped_sum(values, groups.reshape(-1).long(), num_groups).T)


def _as_nan(rate: Rate) -> Tensor:
    return torch.where(rate.valid, rate.value, torch.full_like(rate.value, float("nan")))


def _regression_statistics_compute(sums: RegressionSums) -> dict[str, Tensor]:
    return {"count": sums.count, **{name: _as_nan(rate) for name, rate in sums.statistics().items()}}


def regression_group_statistics(preds: Tensor, target: Tensor, groups: Tensor, num_groups: int) -> dict[str, Tensor]:
    """Per-group ``count``, mean prediction, mean target, mean squared and absolute error, each ``(G,)``
    (NaN for a group without samples)."""
    return _regression_statistics_compute(regression_group_sums(preds, target, groups, num_groups))


def regression_demographic_parity_difference(preds: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Largest minus smallest group mean prediction (NaN if no group has samples)."""
    preds, _, groups = check_regression_inputs(preds, None, groups, num_groups)
    sums = regression_group_sums(preds, torch.zeros_like(preds), groups, num_groups, validate_args=False)
    return per_class_difference(sums.mean("pred"))


def group_loss_difference(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int, *, loss: str = "squared_error"
) -> Tensor:
    """Largest minus smallest group mean loss (``"squared_error"`` or ``"absolute_error"``)."""
    if loss not in ("squared_error", "absolute_error"):
        raise ValueError(f"`loss` must be one of ['squared_error', 'absolute_error'], got {loss!r}")
    return per_class_difference(regression_group_sums(preds, target, groups, num_groups).mean(loss))


def _cdf_gap_from_cumulative(cum: Tensor, count: Tensor) -> Tensor:
    """``max_t (max_g F_g(t) - min_g F_g(t))`` over the rows ``t`` of cumulative counts ``(T, G)``,
    over the groups with samples; 0 with one such group, NaN with none."""
    valid = count > 0
    if not bool(valid.any()):
        return cum.new_full((), float("nan"))
    cdf = cum[:, valid] / count[valid]
    if cdf.shape[0] == 0:
        return cum.new_zeros(())
    return (cdf.amax(1) - cdf.amin(1)).max()


def prediction_cdf_gap(preds: Tensor, groups: Tensor, num_groups: int, *, chunk_size: int = 65536) -> Tensor:
    """The largest gap between any two groups' empirical prediction CDFs, exactly.

    ``max_{g, h} sup_t |F_g(t) - F_h(t)|`` over the groups with samples (the largest two-sample
    Kolmogorov-Smirnov statistic between groups; 0 is equal prediction distributions). One sort,
    then cumulative group counts evaluated at each distinct prediction, in chunks (memory
    ``chunk_size * G``).
    """
    preds, _, groups = check_regression_inputs(preds, None, groups, num_groups)
    values, order = torch.sort(preds.to(torch.float64))
    g_sorted = groups[order]
    count = torch.bincount(groups, minlength=num_groups).to(torch.float64)
    n = values.numel()
    last = torch.ones(n, dtype=torch.bool, device=values.device)
    if n > 1:
        last[:-1] = values[1:] != values[:-1]  # the CDF is evaluated after the last of tied values
    best = values.new_full((), float("nan")) if not bool((count > 0).any()) else values.new_zeros(())
    running = torch.zeros(num_groups, dtype=torch.float64, device=values.device)
    for start in range(0, n, chunk_size):
        onehot = torch.nn.functional.one_hot(g_sorted[start : start + chunk_size], num_groups).to(torch.float64)
        cum = onehot.cumsum(0) + running
        running = cum[-1]
        gap = _cdf_gap_from_cumulative(cum[last[start : start + chunk_size]], count)
        best = torch.maximum(best, gap)
    return best


def check_bin_edges(bin_edges: object, name: str = "bin_edges") -> Tensor:
    """``bin_edges`` as a strictly increasing 1-D float64 tensor, else ``ValueError`` naming it."""
    edges = torch.as_tensor(bin_edges, dtype=torch.float64)
    if edges.ndim != 1 or edges.numel() < 1:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence of increasing edges, got shape {tuple(edges.shape)}")
    if torch.isnan(edges).any() or (edges.numel() > 1 and not bool((edges[1:] > edges[:-1]).all())):
        raise ValueError(f"`{name}` must be strictly increasing and free of NaN, got {edges.tolist()[:8]}")
    return edges


def prediction_histogram(preds: Tensor, groups: Tensor, num_groups: int, bin_edges: Tensor) -> Tensor:
    """``(G, E + 1)`` counts of predictions per group in the right-closed bins
    ``(-inf, e_0], (e_0, e_1], ..., (e_{E-1}, inf)`` of ``E`` edges (inputs not validated)."""
    edges = bin_edges.to(device=preds.device, dtype=torch.float64)
    bins = torch.bucketize(preds.reshape(-1).to(torch.float64), edges, right=False)
    nb = edges.numel() + 1
    counts = torch.bincount(groups.reshape(-1).long() * nb + bins, minlength=num_groups * nb)
    return counts.to(torch.float64).view(num_groups, nb)


def cdf_gap_from_histogram(histogram: Tensor) -> Tensor:
    """The largest gap between groups' CDFs evaluated at the bin edges, from :func:`prediction_histogram` counts."""
    return _cdf_gap_from_cumulative(histogram.cumsum(1).T[:-1], histogram.sum(1))


__all__ = [
    "REGRESSION_STATISTICS",
    "RegressionSums",
    "cdf_gap_from_histogram",
    "check_bin_edges",
    "check_regression_inputs",
    "group_loss_difference",
    "prediction_cdf_gap",
    "prediction_histogram",
    "regression_demographic_parity_difference",
    "regression_group_statistics",
    "regression_group_sums",
]
