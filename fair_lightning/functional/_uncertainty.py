"""Confidence intervals for per-group rates and their differences, and a verdict on a constraint.

Every rate of the statistics core is ``numerator / denominator`` of per-group sums
(:class:`~fair_lightning.functional.GroupSums`), so the intervals take those two tensors:

* :func:`wilson_interval`: the Wilson score interval of a binomial proportion (per group). Good
  coverage down to small groups and rates near 0 or 1, unlike the Wald interval.
* :func:`newcombe_interval`: the interval of a difference of two independent proportions,
  Newcombe's hybrid score method (method 10 of Newcombe 1998), built from the two Wilson intervals.
* :func:`max_min_difference_interval`: the max - min difference across ``G`` groups (what
  ``dp_difference`` and ``tolerance`` measure): ``method="pair"`` is the Newcombe interval of the
  two groups that set the estimate (nominal when the gap between them is clear, optimistic when
  other groups are close to them); ``method="conservative"`` combines Wilson intervals at the
  Bonferroni level ``1 - (1 - confidence) / G``, which covers the true difference with
  probability at least ``confidence`` whatever the rates.
* :func:`bootstrap_interval`: percentile bootstrap over rows (like fairlearn's
  ``MetricFrame(n_boot=..., ci_quantiles=...)``), vectorized: replicate weights drawn at once
  (multinomial, i.e. resampling rows with replacement, or Poisson(1)), per-group sums by one
  matrix product per chunk of replicates, seeded.
* :func:`constraint_holds`: ``"holds"`` (the interval's upper end is within the tolerance),
  ``"violated"`` (its lower end is beyond it) or ``"uncertain"``, with the interval.

Counts from weighted sums are used as if they were counts; with sample weights use the bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fair_lightning.functional._checks import check_group_inputs, check_num_groups
from fair_lightning.functional._core import GroupSums, Rate
from fair_lightning.functional._rates import DEFINITIONS
from fair_lightning.functional._rates import RATES as _RATE_TABLE

#: Rates an interval can be asked for: every rate of the one rate table.
RATES = tuple(_RATE_TABLE)
DIFFERENCE_METHODS = ("pair", "conservative")
BOOTSTRAP_METHODS = ("multinomial", "poisson")
VERDICTS = ("holds", "violated", "uncertain")


class Interval(NamedTuple):
    """A point estimate with its confidence interval; fields broadcast alike."""

    estimate: Tensor
    low: Tensor
    high: Tensor


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile ``z_{1 - alpha/2}``."""
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(confidence, dtype=torch.float64)))


def _counts(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    num, den = torch.as_tensor(num, dtype=torch.float64), torch.as_tensor(den, dtype=torch.float64)
    num, den = torch.broadcast_tensors(num, den)
    if (den < 0).any() or (num < 0).any() or (num > den + 1e-9).any():
        raise ValueError(
            "`num` and `den` must be counts with 0 <= num <= den, got "
            f"num in [{float(num.min()):.4g}, {float(num.max()):.4g}], den in [{float(den.min()):.4g}, {float(den.max()):.4g}]"
        )
    return num, den


def wilson_interval(num: Tensor, den: Tensor, confidence: float = 0.95) -> Interval:
    """Wilson score interval of the proportions ``num / den`` (elementwise).

    Args:
        num: successes, e.g. ``GroupSums.pred`` (selection rate) or ``pred_label`` (TPR).
        den: trials, e.g. ``GroupSums.count`` or ``label``; where 0 the interval is ``[0, 1]``
            and the estimate 0.
        confidence: two-sided level, in (0, 1).

    Returns:
        :class:`Interval` of float64 tensors of the broadcast shape.
    """
    z = _z(_check_confidence(confidence))
    num, den = _counts(num, den)
    valid = den > 0
    n = torch.where(valid, den, torch.ones_like(den))
    p = torch.where(valid, num / n, torch.zeros_like(num))
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * torch.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = torch.where(valid, (centre - half).clamp(0.0, 1.0), torch.zeros_like(p))
    high = torch.where(valid, (centre + half).clamp(0.0, 1.0), torch.ones_like(p))
    # exact ends at p = 0 and p = 1 (rounding can leave 1e-17 there)
    low = torch.where(valid & (num == 0), torch.zeros_like(low), low)
    high = torch.where(valid & (num == den), torch.ones_like(high), high)
    return Interval(p, low, high)


def newcombe_interval(num1: Tensor, den1: Tensor, num2: Tensor, den2: Tensor, confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval of ``num1 / den1 - num2 / den2`` (independent samples).

    ``L = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)``, ``U = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)`` with
    ``(l_i, u_i)`` the Wilson intervals (Newcombe 1998, method 10).
    """
    p1, l1, u1 = wilson_interval(num1, den1, confidence)
    p2, l2, u2 = wilson_interval(num2, den2, confidence)
    d = p1 - p2
    low = d - torch.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + torch.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(d, low.clamp(-1.0, 1.0), high.clamp(-1.0, 1.0))


def max_min_difference_interval(
    num: Tensor, den: Tensor, confidence: float = 0.95, *, method: str = "pair"
) -> tuple[Interval, tuple[int, int]]:
    """Interval of the max - min difference of ``num / den`` over the groups where ``den > 0``.

    Args:
        num: ``(G,)`` per-group numerators.
        den: ``(G,)`` per-group denominators.
        confidence: two-sided level.
        method: ``"pair"`` (Newcombe interval of the groups with the largest and smallest
            estimate) or ``"conservative"`` (Bonferroni-adjusted Wilson intervals: lower end
            ``max(0, max_g low_g - min_g high_g)``, upper end ``max_g high_g - min_g low_g``).

    Returns:
        ``(interval, (g_max, g_min))``: the interval of the difference (scalars; lower end >= 0)
        and the ids of the groups that set the estimate. Fewer than two groups with data: the
        difference is 0 and the interval ``[0, 0]`` (nothing to compare), ids ``(-1, -1)``.
    """
    if method not in DIFFERENCE_METHODS:
        raise ValueError(f"`method` must be one of {list(DIFFERENCE_METHODS)}, got {method!r}")
    confidence = _check_confidence(confidence)
    num, den = _counts(num, den)
    if num.ndim != 1:
        raise ValueError(f"`num` and `den` must have shape (G,), got {tuple(num.shape)}")
    valid = den > 0
    zero = num.new_zeros(())
    if int(valid.sum()) < 2:
        return Interval(zero, zero, zero), (-1, -1)
    p = torch.where(valid, num / torch.where(valid, den, torch.ones_like(den)), torch.zeros_like(num))
    g_max = int(torch.where(valid, p, torch.full_like(p, -math.inf)).argmax())
    g_min = int(torch.where(valid, p, torch.full_like(p, math.inf)).argmin())
    estimate = p[g_max] - p[g_min]
    if method == "pair":
        _, low, high = newcombe_interval(num[g_max], den[g_max], num[g_min], den[g_min], confidence)
        return Interval(estimate, low.clamp_min(0.0), high.clamp_min(0.0)), (g_max, g_min)
    adjusted = 1.0 - (1.0 - confidence) / int(valid.sum())
    _, lo, hi = wilson_interval(num[valid], den[valid], adjusted)
    low = (lo.max() - hi.min()).clamp_min(0.0)
    high = hi.max() - lo.min()
    return Interval(estimate, low, high), (g_max, g_min)


def rate_fraction(sums: GroupSums, rate: str) -> tuple[Tensor, Tensor]:
    """``(numerator, denominator)`` of a rate of :class:`GroupSums` (one of :data:`RATES`), from
    the one rate table."""
    if rate not in RATES:
        raise ValueError(f"`rate` must be one of {list(RATES)}, got {rate!r}")
    num, den = sums.numerators_denominators((rate,))
    return num[0], den[0]


def group_rate_intervals(sums: GroupSums, rate: str = "selection_rate", confidence: float = 0.95) -> Interval:
    """Wilson intervals of a per-group rate from :class:`GroupSums` (``(G,)`` fields)."""
    return wilson_interval(*rate_fraction(sums, rate), confidence)


# --- bootstrap ----------------------------------------------------------------------------------
def bootstrap_group_sums(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = "multinomial",
    chunk_size: int | None = None,
) -> GroupSums:
    """Per-group sums of ``n_boot`` bootstrap replicates of the rows, fields of shape ``(n_boot, G)``.

    Args:
        preds: ``(N,)`` predictions in ``[0, 1]`` (hard 0/1 for rates of a classifier).
        target: ``(N,)`` 0/1 labels.
        groups: ``(N,)`` group ids.
        num_groups: ``G``.
        n_boot: number of replicates, >= 1.
        seed: seed of the replicate weights (a ``torch.Generator`` on the CPU).
        method: ``"multinomial"`` (rows resampled with replacement, ``N`` per replicate, as
            fairlearn's ``MetricFrame``) or ``"poisson"`` (independent Poisson(1) weights).
        chunk_size: replicates drawn per matrix product; default keeps a chunk near 2**22 weights.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be an int >= 1, got {n_boot!r}")
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"`method` must be one of {list(BOOTSTRAP_METHODS)}, got {method!r}")
    preds, target, groups = check_group_inputs(preds, target, groups, num_groups)
    n = preds.numel()
    if n == 0:
        raise ValueError("`preds` must not be empty for a bootstrap")
    p, y = preds.double().cpu(), target.double().cpu()
    onehot = torch.zeros(n, num_groups, dtype=torch.float64)
    onehot[torch.arange(n), groups.cpu()] = 1.0
    columns = torch.stack((torch.ones_like(p), y, p, p * y), 1)  # (N, 4)
    design = (columns[:, :, None] * onehot[:, None, :]).reshape(n, 4 * num_groups)
    gen = torch.Generator().manual_seed(int(seed))
    chunk = chunk_size or max(1, (1 << 22) // n)
    out = []
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if method == "poisson":
            w = torch.poisson(torch.ones(b, n, dtype=torch.float64), generator=gen)
        else:
            draws = torch.multinomial(uniform.float().expand(b, n), n, replacement=True, generator=gen)
            w = torch.zeros(b, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(b, n, dtype=torch.float64))
        out.append(w @ design)
    stacked = torch.cat(out).reshape(n_boot, 4, num_groups).to(preds.device)
    return GroupSums(*stacked.unbind(1))


def _batched_difference(rate: Rate) -> Tensor:
    """``max - min`` over valid groups along the last dim (0 with fewer than two)."""
    hi = torch.where(rate.valid, rate.value, torch.full_like(rate.value, -math.inf)).max(-1).values
    lo = torch.where(rate.valid, rate.value, torch.full_like(rate.value, math.inf)).min(-1).values
    enough = rate.valid.sum(-1) >= 2
    return torch.where(enough, hi - lo, torch.zeros_like(hi))


#: Named statistics of :func:`bootstrap_interval` (``GroupSums -> tensor``, batched over replicates).
def _definition_difference(definition: str) -> Callable[[GroupSums], Tensor]:
    def statistic(s: GroupSums) -> Tensor:
        return torch.stack([_batched_difference(s.rate(r)) for r in DEFINITIONS[definition]]).max(0).values

    return statistic


STATISTICS: dict[str, Callable[[GroupSums], Tensor]] = {
    **{name: (lambda s, name=name: _as_nan(s.rate(name))) for name in ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")},
    "dp_difference": _definition_difference("demographic_parity"),
    "eop_difference": _definition_difference("equal_opportunity"),
    "eo_difference": _definition_difference("equalized_odds"),
}


def _as_nan(rate: Rate) -> Tensor:
    return torch.where(rate.valid, rate.value, torch.full_like(rate.value, math.nan))


def bootstrap_interval(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    statistic: str | Callable[[GroupSums], Tensor] = "selection_rate",
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    ci_quantiles: tuple[float, float] | None = None,
    seed: int = 0,
    method: str = "multinomial",
) -> Interval:
    """Percentile bootstrap interval of a statistic of the per-group sums.

    Args:
        preds, target, groups, num_groups: as for :func:`bootstrap_group_sums`.
        statistic: a name from :data:`STATISTICS` (per-group ``"selection_rate"``,
            ``"true_positive_rate"``, ``"false_positive_rate"``, ``"accuracy"``; or
            ``"dp_difference"``, ``"eop_difference"``, ``"eo_difference"``), or a function of
            :class:`GroupSums` whose fields have a leading replicate dimension.
        n_boot: number of replicates.
        confidence: two-sided level; the quantiles ``(1 - c) / 2`` and ``(1 + c) / 2``.
        ci_quantiles: explicit ``(low, high)`` quantiles instead (fairlearn's ``ci_quantiles``).
        seed: seed of the replicates.
        method: ``"multinomial"`` or ``"poisson"`` (see :func:`bootstrap_group_sums`).

    Returns:
        :class:`Interval`: the statistic on the data and the quantiles over replicates (replicates
        where it is undefined, NaN, are skipped).
    """
    if isinstance(statistic, str):
        if statistic not in STATISTICS:
            raise ValueError(f"`statistic` must be one of {sorted(STATISTICS)} or a callable, got {statistic!r}")
        fn = STATISTICS[statistic]
    elif callable(statistic):
        fn = statistic
    else:
        raise ValueError(f"`statistic` must be a name or a callable, got {type(statistic).__name__}")
    if ci_quantiles is None:
        c = _check_confidence(confidence)
        q = ((1 - c) / 2, (1 + c) / 2)
    else:
        q = tuple(float(v) for v in ci_quantiles)
        if len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
            raise ValueError(f"`ci_quantiles` must be (low, high) with 0 <= low < high <= 1, got {ci_quantiles!r}")
    check_num_groups(num_groups)
    preds, target, groups = check_group_inputs(preds, target, groups, num_groups)
    replicates = fn(bootstrap_group_sums(preds, target, groups, num_groups, n_boot=n_boot, seed=seed, method=method))
    point = fn(GroupSums(*(f[None] for f in _sums(preds, target, groups, num_groups))))[0]
    quantiles = torch.nanquantile(replicates.double(), torch.tensor(q, dtype=torch.float64), dim=0)
    return Interval(point.double(), quantiles[0], quantiles[1])


def _sums(preds: Tensor, target: Tensor, groups: Tensor, num_groups: int) -> GroupSums:
    p, y = preds.double(), target.double()
    values = torch.stack((torch.ones_like(p), y, p, p * y), 1)
    out = torch.zeros(num_groups, 4, dtype=torch.float64, device=p.device).index_add_(0, groups, values)
    return GroupSums.from_stacked(out.T)


# --- verdicts ------------------------------------------------------------------------------------
class Verdict(NamedTuple):
    """Whether a constraint holds at a stated confidence.

    Attributes:
        status: ``"holds"`` (the interval's upper end <= tolerance), ``"violated"`` (its lower end
            > tolerance) or ``"uncertain"`` (the interval contains the tolerance).
        difference: the estimated max - min difference (the larger over rates for EO).
        interval: its :class:`Interval` (for EO: the rate whose upper end is larger).
        tolerance: the tolerance judged against.
        confidence: the interval's level.
        groups: ``(g_max, g_min)`` that set the estimate.
        rate: the rate the interval is of.
    """

    status: str
    difference: float
    interval: Interval
    tolerance: float
    confidence: float
    groups: tuple[int, int]
    rate: str


def constraint_holds(
    sums: GroupSums, definition: str, tolerance: float, confidence: float = 0.95, *, method: str = "pair"
) -> Verdict:
    """Judge ``max - min <= tolerance`` for a fairness definition from per-group sums of hard predictions.

    Args:
        sums: :class:`GroupSums` of thresholded predictions, ``(G,)`` fields (counts).
        definition: ``"demographic_parity"``, ``"equal_opportunity"`` or ``"equalized_odds"``
            (both TPR and FPR; it holds when both do, is violated when either is).
        tolerance: bound on the max - min difference, >= 0.
        confidence: level of the interval.
        method: ``"pair"`` or ``"conservative"`` (see :func:`max_min_difference_interval`).

    Example:
        >>> sums = GroupSums(torch.tensor([500., 500.]), torch.tensor([200., 250.]),
        ...                  torch.tensor([100., 300.]), torch.tensor([80., 200.]))
        >>> constraint_holds(sums, "demographic_parity", 0.05).status
        'violated'
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"`definition` must be one of {list(DEFINITIONS)}, got {definition!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"`tolerance` must be a number >= 0, got {tolerance!r}")
    results = []
    for rate in DEFINITIONS[definition]:
        interval, pair = max_min_difference_interval(*rate_fraction(sums, rate), confidence, method=method)
        results.append((rate, interval, pair))
    if any(float(i.low) > tolerance for _, i, _ in results):
        status = "violated"
    elif all(float(i.high) <= tolerance for _, i, _ in results):
        status = "holds"
    else:
        status = "uncertain"
    rate, interval, pair = max(results, key=lambda r: float(r[1].high))
    difference = max(float(i.estimate) for _, i, _ in results)
    return Verdict(status, difference, interval, float(tolerance), float(confidence), pair, rate)


__all__ = [
    "BOOTSTRAP_METHODS",
    "DEFINITIONS",
    "DIFFERENCE_METHODS",
    "Interval",
    "RATES",
    "STATISTICS",
    "VERDICTS",
    "Verdict",
    "bootstrap_group_sums",
    "bootstrap_interval",
    "constraint_holds",
    "group_rate_intervals",
    "max_min_difference_interval",
    "newcombe_interval",
    "rate_fraction",
    "wilson_interval",
]
