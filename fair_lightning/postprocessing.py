"""Group-specific decision thresholds fitted on validation scores (post-processing).

:class:`GroupThresholds` chooses one decision threshold per group (or, with
``randomized=True``, a mixture of two thresholds per group) that maximizes accuracy on the data
it is fitted on subject to a fairness constraint on the **max - min difference** across groups:

==========================  ========================================  =====================
``constraint``              rate(s) equalized                         fairlearn name
==========================  ========================================  =====================
``"demographic_parity"``    selection rate                            ``demographic_parity``
``"equal_opportunity"``     true-positive rate                        ``true_positive_rate_parity``
``"equalized_odds"``        true- and false-positive rate             ``equalized_odds``
==========================  ========================================  =====================

How the search works (all in torch, no Python loop over thresholds):

* Per group, the rows sorted by decreasing score give cumulative counts of positives and
  negatives: the confusion counts, hence the selection rate, TPR, FPR and the number of correct
  predictions, of *every* threshold between two consecutive distinct scores (the "operating
  points"; thresholds are midpoints, a row is positive when ``score > threshold`` as in
  :func:`~fair_lightning.functional.hard_predictions`).
* Deterministic, demographic parity / equal opportunity: every feasible choice has its rates in a
  window ``[L, L + tolerance]`` whose left end ``L`` is one of the operating points' rates; for
  each such window each group takes its most accurate point inside (a range-maximum query on a
  sparse table), and the window with the largest total is kept. Exact.
* Deterministic, equalized odds: the same with a window on TPR and one on FPR; window starts are
  the distinct TPR and FPR values (at most ``max_candidates`` of each, evenly spaced among them
  beyond that, so exact below that size).
* Randomized (``randomized=True``), as fairlearn's ``ThresholdOptimizer`` (Hardt et al. 2016):
  each group's achievable (rate, accuracy) trade-offs form the upper concave hull of its
  operating points, reached by mixing two adjacent thresholds. Demographic parity and equal
  opportunity: the best window of width ``tolerance`` is found exactly (the objective is concave
  in the window's position, so one of the hull vertices ``v`` or ``v - tolerance`` is optimal).
  Equalized odds: the ROC hulls' common point of best accuracy (searched on the hull vertices
  plus a grid of ``grid_size + 1`` FPR values, as fairlearn), reached by each group by mixing its
  hull point with the constant classifier; rates are then equal in expectation, whatever the
  tolerance.

Groups whose constrained rate is undefined on the fit data (no samples; no positives for
equal opportunity; no negatives for the FPR of equalized odds) are not constrained: they get
their most accurate threshold, and :attr:`GroupThresholds.unconstrained_` lists them.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> groups = torch.randint(0, 2, (2000,), generator=g)
    >>> labels = (torch.rand(2000, generator=g) < 0.3 + 0.2 * groups).long()
    >>> scores = (0.6 * labels + 0.7 * torch.rand(2000, generator=g)).clamp(0, 1)
    >>> thresholds = GroupThresholds("demographic_parity", tolerance=0.02).fit(scores, labels, groups)
    >>> preds = thresholds.predict(scores, groups)
    >>> bool(thresholds.fit_difference_ <= 0.02)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fair_lightning.functional import (
    GroupSums,
    check_binary_target,
    check_groups,
    check_num_groups,
    check_scores,
    confusion_counts,
    rate_difference,
)
from fair_lightning.functional._fairness import group_rate_table
from fair_lightning.functional._rates import DEFINITIONS

#: Constraints :class:`GroupThresholds` accepts (aliases map to these).
CONSTRAINTS = ("demographic_parity", "equal_opportunity", "equalized_odds")
_ALIASES = {
    "dp": "demographic_parity",
    "selection_rate_parity": "demographic_parity",
    "eo": "equalized_odds",
    "eopp": "equal_opportunity",
    "true_positive_rate_parity": "equal_opportunity",
}
STATE_VERSION = 1
#: Slack added to comparisons with ``tolerance`` so that a difference equal to it counts as met.
_TOL_EPS = 1e-12


def _canonical_constraint(constraint: object) -> str:
    name = _ALIASES.get(constraint, constraint) if isinstance(constraint, str) else constraint
    if name not in CONSTRAINTS:
        raise ValueError(f"`constraint` must be one of {list(CONSTRAINTS)}, got {constraint!r}")
    return name


class OperatingPoints(NamedTuple):
    """Every threshold of every group, as ``(G, K + 1)`` tensors (``K``: most distinct scores in a group).

    Column ``k`` of group ``g`` predicts positive the rows with the ``k`` largest distinct scores of
    the group; columns past the group's own count repeat its last point (everything positive).
    """

    threshold: Tensor  # +inf for k = 0 (nothing positive), -inf for "everything positive"
    true_pos: Tensor
    false_pos: Tensor
    positives: Tensor  # (G,)
    negatives: Tensor  # (G,)

    @property
    def count(self) -> Tensor:
        return self.positives + self.negatives

    def correct(self) -> Tensor:
        """Number of correct predictions of each point, ``TP + TN``."""
        return self.true_pos + self.negatives[:, None] - self.false_pos

    def sums(self) -> GroupSums:
        """The :class:`GroupSums` of every point, fields ``(G, points)``."""
        shape = self.true_pos.shape
        return GroupSums(
            self.count[:, None].expand(shape), self.positives[:, None].expand(shape), self.true_pos + self.false_pos, self.true_pos
        )

    def rate(self, name: str) -> Tensor:
        """A rate of the one rate table at each point (0 if undefined)."""
        return self.sums().rate(name).value


def operating_points(scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int) -> OperatingPoints:
    """Confusion counts of every per-group threshold between consecutive distinct scores.

    One sort and cumulative sums; no loop over groups or thresholds.

    Args:
        scores: ``(N,)`` float scores (higher means more likely positive).
        labels: ``(N,)`` 0/1 labels.
        groups: ``(N,)`` group ids in ``[0, num_groups)``.
        num_groups: ``G``.
    """
    scores = scores.double()
    y = labels.double()
    n = scores.numel()
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    s, y, g = scores[order], y[order], groups[order]
    group_count = torch.bincount(g, minlength=num_groups)
    start = torch.cumsum(group_count, 0) - group_count
    cum_pos = torch.cumsum(y, 0)
    cum_neg = torch.cumsum(1.0 - y, 0)
    before = start[g] - 1  # index of the last row of the previous groups
    pos_before = torch.where(before >= 0, cum_pos[before.clamp_min(0)], torch.zeros_like(cum_pos))
    neg_before = torch.where(before >= 0, cum_neg[before.clamp_min(0)], torch.zeros_like(cum_neg))
    tp_row, fp_row = cum_pos - pos_before, cum_neg - neg_before

    # a row ends a run of equal scores when the next row has another score or another group
    next_differs = torch.ones(n, dtype=torch.bool)
    if n > 1:
        next_differs[:-1] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
    ends = torch.nonzero(next_differs).reshape(-1)
    end_group = g[ends]
    runs = torch.bincount(end_group, minlength=num_groups)
    run_start = torch.cumsum(runs, 0) - runs
    column = torch.arange(ends.numel()) - run_start[end_group] + 1  # 1..K_g
    width = int(runs.max()) + 1 if ends.numel() else 1
    last_of_group = torch.zeros(n, dtype=torch.bool)
    if n:
        last_of_group[:-1] = g[1:] != g[:-1]
        last_of_group[-1] = True
    next_score = torch.full((n,), -math.inf, dtype=torch.float64)
    if n > 1:
        next_score[:-1] = torch.where(last_of_group[:-1], next_score[:-1], s[1:])
    midpoint = torch.where(
        torch.isinf(next_score[ends]), torch.full_like(s[ends], -math.inf), (s[ends] + next_score[ends]) / 2
    )

    def table(values: Tensor, first: float) -> Tensor:
        out = torch.full((num_groups, width), first, dtype=torch.float64)
        out[end_group, column] = values
        # past a group's last column: repeat its last point
        index = torch.minimum(torch.arange(width)[None, :], runs[:, None])
        return out.gather(1, index)

    return OperatingPoints(
        threshold=table(midpoint, math.inf),
        true_pos=table(tp_row[ends], 0.0),
        false_pos=table(fp_row[ends], 0.0),
        positives=torch.zeros(num_groups, dtype=torch.float64).index_add_(0, g, y),
        negatives=torch.zeros(num_groups, dtype=torch.float64).index_add_(0, g, 1.0 - y),
    )


# --- range-maximum queries (sparse table) ---------------------------------------------------------
def _sparse_table(values: Tensor) -> tuple[Tensor, Tensor]:
    """Levels ``j`` of ``max(values[:, i : i + 2**j])`` and its (first) argmax, ``(J, G, W)`` each."""
    g, w = values.shape
    vals, idxs = [values], [torch.arange(w).expand(g, w)]
    step = 1
    while 2 * step <= w:
        prev_v, prev_i = vals[-1], idxs[-1]
        right_v = torch.full_like(prev_v, -math.inf)
        right_i = prev_i.clone()
        right_v[:, :-step], right_i[:, :-step] = prev_v[:, step:], prev_i[:, step:]
        take_right = right_v > prev_v
        vals.append(torch.where(take_right, right_v, prev_v))
        idxs.append(torch.where(take_right, right_i, prev_i))
        step *= 2
    return torch.stack(vals), torch.stack(idxs)


def _range_argmax(table: tuple[Tensor, Tensor], lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Max and (first) argmax of ``values[g, lo[g, m] : hi[g, m] + 1]``; ``-inf`` where ``lo > hi``."""
    vals, idxs = table
    empty = hi < lo
    length = (hi - lo + 1).clamp_min(1)
    level = torch.floor(torch.log2(length.double())).long().clamp_max(vals.shape[0] - 1)
    right = (hi - (1 << level) + 1).clamp_min(0)
    lo_c = lo.clamp(0, vals.shape[2] - 1)
    rows = torch.arange(vals.shape[1])[:, None].expand_as(lo)
    a_v, a_i = vals[level, rows, lo_c], idxs[level, rows, lo_c]
    b_v, b_i = vals[level, rows, right], idxs[level, rows, right]
    take_b = b_v > a_v
    best_v = torch.where(take_b, b_v, a_v)
    best_i = torch.where(take_b, b_i, a_i)
    return best_v.masked_fill(empty, -math.inf), best_i


def _window(x: Tensor, start: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Index range ``[lo, hi]`` of each (non-decreasing) row of ``x`` inside ``[start, start + tolerance]``."""
    starts = start.expand(x.shape[0], -1).contiguous()
    lo = torch.searchsorted(x.contiguous(), starts, side="left")
    hi = torch.searchsorted(x.contiguous(), starts + tolerance + _TOL_EPS, side="right") - 1
    return lo, hi


# --- concave hulls (randomized thresholds) -------------------------------------------------------
def _upper_hull(x: Tensor, y: Tensor) -> list[int]:
    """Indices of the upper concave hull of points sorted by ``x`` (Andrew's monotone chain)."""
    xs, ys = x.tolist(), y.tolist()
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i], i))
    hull: list[int] = []
    for i in order:
        if hull and xs[hull[-1]] == xs[i]:
            continue  # same x, lower (or equal) y: below the hull
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            if (ys[i1] - ys[i0]) * (xs[i] - xs[i0]) <= (ys[i] - ys[i0]) * (xs[i1] - xs[i0]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


class _Hull(NamedTuple):
    x: Tensor
    y: Tensor
    column: Tensor  # operating-point column of each vertex

    def value(self, at: Tensor) -> Tensor:
        """Piecewise-linear interpolation of the hull at ``at`` (clamped to its ends)."""
        at = at.clamp(float(self.x[0]), float(self.x[-1]))
        right = torch.searchsorted(self.x, at, side="left").clamp(1, max(len(self.x) - 1, 1))
        if len(self.x) == 1:
            return self.y.expand_as(at).clone()
        left = right - 1
        span = self.x[right] - self.x[left]
        w = torch.where(span > 0, (at - self.x[left]) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(at))
        return self.y[left] + w * (self.y[right] - self.y[left])

    def mixture(self, at: float) -> tuple[int, int, float]:
        """Columns ``(k0, k1)`` and the weight on ``k1`` whose mixture lies at ``x = at`` on the hull."""
        x = self.x
        if len(x) == 1 or at <= float(x[0]):
            return int(self.column[0]), int(self.column[0]), 0.0
        if at >= float(x[-1]):
            return int(self.column[-1]), int(self.column[-1]), 0.0
        right = int(torch.searchsorted(x, torch.tensor([at], dtype=x.dtype), side="left"))
        left = right - 1
        w1 = (at - float(x[left])) / float(x[right] - x[left])
        return int(self.column[left]), int(self.column[right]), w1


def _group_hull(x: Tensor, y: Tensor) -> _Hull:
    keep = _upper_hull(x, y)
    index = torch.tensor(keep, dtype=torch.long)
    return _Hull(x[index].contiguous(), y[index].contiguous(), index)


# --- the estimator ------------------------------------------------------------------------------
class GroupThresholds:
    """Per-group decision thresholds that maximize accuracy subject to a fairness constraint.

    ``tolerance`` bounds the max - min difference across groups of the constrained rate(s)
    (fairlearn's ``ThresholdOptimizer(tol=...)``; ``0`` asks for equal rates). Deterministic by
    default: one threshold per group, ``predict`` is ``score > threshold[group]``, and the
    difference on the fit data is at most ``tolerance`` exactly. With ``randomized=True`` each
    group mixes two thresholds (and, for equalized odds, the constant classifier), as fairlearn
    does: the constraint holds in expectation, accuracy is that of the concave hull (at least the
    deterministic one), and :meth:`predict` draws the predictions (pass a ``generator`` to
    reproduce them; :meth:`predict_proba` gives the probabilities of predicting 1).

    Scores are any real numbers where larger means more likely positive: probabilities (possibly
    calibrated per group) or logits. Thresholds only make sense on the scale they were fitted on.

    Args:
        constraint: ``"demographic_parity"``, ``"equal_opportunity"`` or ``"equalized_odds"``
            (fairlearn's names ``"selection_rate_parity"``, ``"true_positive_rate_parity"`` work).
        tolerance: bound on the max - min difference of the constrained rate(s), >= 0. With
            ``randomized=True`` and equalized odds the rates are made equal (any tolerance holds).
        randomized: mix two thresholds per group (see above).
        grid_size: FPR grid added to the hull vertices in the randomized equalized-odds search.
        max_candidates: most window starts per rate in the deterministic equalized-odds search.
        min_count: a group with fewer fit samples behind a constrained rate (rows for the
            selection rate, positives for TPR, negatives for FPR) is left unconstrained (its own
            best threshold; listed in ``unconstrained_``): thresholds fitted on a handful of rows do
            not generalize. 0 (the default) constrains every group with data, as fairlearn does.

    Attributes:
        thresholds_: ``(G, 2)`` thresholds; deterministic: both columns equal.
        weights_: ``(G, 2)`` probability of using each column's threshold (``[1, 0]`` if deterministic).
        p_constant_: ``(G,)`` probability of the constant classifier instead (equalized odds, randomized).
        constant_: probability with which the constant classifier predicts 1.
        fit_accuracy_: (expected) accuracy on the fit data.
        fit_rates_: dict of ``(G,)`` (expected) per-group rates on the fit data.
        fit_difference_: (expected) max - min difference of the constrained rate(s) on the fit data
            (the larger of TPR's and FPR's for equalized odds).
        unconstrained_: ids of groups left unconstrained (rate undefined on the fit data).
        num_groups_: ``G``.

    Raises:
        ValueError: an unknown ``constraint``, a negative ``tolerance``, or bad inputs to ``fit``.
    """

    def __init__(
        self,
        constraint: str = "demographic_parity",
        tolerance: float = 0.0,
        randomized: bool = False,
        *,
        grid_size: int = 1000,
        max_candidates: int = 512,
        min_count: float = 0,
    ) -> None:
        self.constraint = _canonical_constraint(constraint)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
            raise ValueError(f"`tolerance` must be a number >= 0, got {tolerance!r}")
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"`grid_size` must be an int >= 1, got {grid_size!r}")
        if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 2:
            raise ValueError(f"`max_candidates` must be an int >= 2, got {max_candidates!r}")
        self.tolerance = float(tolerance)
        self.randomized = bool(randomized)
        self.grid_size = grid_size
        self.max_candidates = max_candidates
        if isinstance(min_count, bool) or not isinstance(min_count, (int, float)) or not 0 <= min_count < math.inf:
            raise ValueError(f"`min_count` must be a finite number >= 0, got {min_count!r}")
        self.min_count = float(min_count)
        #: whether the thresholds were fitted on group-calibrated probabilities (then
        #: ``FairLightningModule`` calibrates before applying them; else it applies them to the
        #: model's own probabilities)
        self.calibrated = False
        self.thresholds_: Tensor | None = None

    # --- inputs ---------------------------------------------------------------------------------
    @staticmethod
    def _inputs(scores: Any, labels: Any, groups: Any, num_groups: int | None) -> tuple[Tensor, Tensor, Tensor, int]:
        scores = check_scores(torch.as_tensor(scores), "scores")
        if torch.isinf(scores).any():
            raise ValueError("`scores` must be finite, got +-inf values")
        n = scores.numel()
        if n == 0:
            raise ValueError("`scores` must not be empty")
        labels = check_binary_target(torch.as_tensor(labels), n, "labels")
        groups_t = torch.as_tensor(groups)
        if num_groups is None:
            num_groups = int(groups_t.max()) + 1 if groups_t.numel() and not groups_t.is_floating_point() else 1
        check_num_groups(num_groups)
        groups_t = check_groups(groups_t, n, num_groups)
        return scores.double().cpu(), labels.long().cpu(), groups_t.cpu(), num_groups

    def _rate_names(self) -> tuple[str, ...]:
        return DEFINITIONS[self.constraint]

    # --- fit ------------------------------------------------------------------------------------
    def fit(self, scores: Any, labels: Any, groups: Any, num_groups: int | None = None) -> GroupThresholds:
        """Choose the thresholds on ``(scores, labels, groups)``.

        Args:
            scores: ``(N,)`` real scores (probabilities or logits), finite.
            labels: ``(N,)`` 0/1 labels.
            groups: ``(N,)`` integer group ids in ``[0, num_groups)``.
            num_groups: ``G``; default ``max(groups) + 1``.

        Returns:
            ``self``.
        """
        scores, labels, groups, num_groups = self._inputs(scores, labels, groups, num_groups)
        points = operating_points(scores, labels, groups, num_groups)
        rates = {name: points.rate(name) for name in self._rate_names()}
        # a group with no (or fewer than min_count) samples behind a rate is left unconstrained
        enough = max(self.min_count, 1)
        defined = points.count >= enough
        if "true_positive_rate" in rates:
            defined &= points.positives >= enough
        if "false_positive_rate" in rates:
            defined &= points.negatives >= enough
        self.unconstrained_ = torch.nonzero(~defined).reshape(-1).tolist()
        correct = points.correct()
        if self.randomized and self.constraint == "equalized_odds":
            choice = self._solve_randomized_eo(points, defined)
        elif self.randomized:
            choice = self._solve_randomized_simple(rates[self._rate_names()[0]], correct, defined)
        elif self.constraint == "equalized_odds":
            choice = self._solve_deterministic_eo(rates, correct, defined)
        else:
            choice = self._solve_deterministic_simple(rates[self._rate_names()[0]], correct, defined)
        columns, weights, p_constant, constant = choice
        self.num_groups_ = num_groups
        self.thresholds_ = points.threshold.gather(1, columns)
        self.weights_ = weights
        self.p_constant_ = p_constant
        self.constant_ = float(constant)
        self._fit_summary(scores, labels, groups)
        return self

    def _best_unconstrained(self, correct: Tensor) -> Tensor:
        return correct.argmax(1)

    def _deterministic(self, best: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        g = best.numel()
        columns = best.reshape(-1, 1).expand(g, 2).contiguous()
        weights = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(g, 2).contiguous()
        return columns, weights, torch.zeros(g, dtype=torch.float64), 0.0

    def _solve_deterministic_simple(self, x: Tensor, correct: Tensor, defined: Tensor) -> tuple:
        best = self._best_unconstrained(correct)
        if int(defined.sum()) >= 2:
            xc, cc = x[defined], correct[defined]
            starts = torch.unique(xc)
            lo, hi = _window(xc, starts[None, :], self.tolerance)
            value, index = _range_argmax(_sparse_table(cc), lo, hi)
            total = value.sum(0)  # -inf where a group has no point in the window
            m = int(torch.argmax(total))
            best[defined] = index[:, m]
        return self._deterministic(best)

    def _candidates(self, values: Tensor) -> Tensor:
        starts = torch.unique(values)
        if starts.numel() > self.max_candidates:
            pick = torch.linspace(0, starts.numel() - 1, self.max_candidates).round().long()
            starts = starts[torch.unique(pick)]
        return starts

    def _solve_deterministic_eo(self, rates: Mapping[str, Tensor], correct: Tensor, defined: Tensor) -> tuple:
        best = self._best_unconstrained(correct)
        if int(defined.sum()) >= 2:
            tpr, fpr, cc = rates["true_positive_rate"][defined], rates["false_positive_rate"][defined], correct[defined]
            table = _sparse_table(cc)
            a_starts, b_starts = self._candidates(tpr), self._candidates(fpr)
            lo_t, hi_t = _window(tpr, a_starts[None, :], self.tolerance)  # (G', A)
            lo_f, hi_f = _window(fpr, b_starts[None, :], self.tolerance)  # (G', B)
            best_total, best_index = -math.inf, None
            chunk = max(1, 2**20 // max(1, b_starts.numel() * tpr.shape[0]))
            for a0 in range(0, a_starts.numel(), chunk):
                lo = torch.maximum(lo_t[:, a0 : a0 + chunk, None], lo_f[:, None, :]).flatten(1)
                hi = torch.minimum(hi_t[:, a0 : a0 + chunk, None], hi_f[:, None, :]).flatten(1)
                value, index = _range_argmax(table, lo, hi)
                total = value.sum(0)
                m = int(torch.argmax(total))
                if float(total[m]) > best_total:
                    best_total, best_index = float(total[m]), index[:, m]
            best[defined] = best_index
        return self._deterministic(best)

    def _solve_randomized_simple(self, x: Tensor, correct: Tensor, defined: Tensor) -> tuple:
        best = self._best_unconstrained(correct)
        columns, weights, p_constant, constant = self._deterministic(best)
        ids = torch.nonzero(defined).reshape(-1).tolist()
        if len(ids) < 2:
            return columns, weights, p_constant, constant
        hulls = {g: _group_hull(x[g], correct[g]) for g in ids}
        peaks = {g: float(h.x[int(torch.argmax(h.y))]) for g, h in hulls.items()}
        # the objective is concave in the window start L: optimal at a vertex v or at v - tolerance
        vertices = torch.cat([h.x for h in hulls.values()])
        lo_end = max(0.0, 1.0 - self.tolerance)
        starts = torch.unique(torch.cat([vertices, vertices - self.tolerance, torch.tensor([0.0, lo_end], dtype=torch.float64)]))
        starts = starts.clamp(0.0, lo_end).unique()
        total = torch.zeros_like(starts)
        for g, h in hulls.items():
            total += h.value(torch.clamp(torch.full_like(starts, peaks[g]), starts, starts + self.tolerance))
        start = float(starts[int(torch.argmax(total))])
        for g, h in hulls.items():
            at = min(max(peaks[g], start), start + self.tolerance)
            k0, k1, w1 = h.mixture(at)
            columns[g] = torch.tensor([k0, k1])
            weights[g] = torch.tensor([1.0 - w1, w1], dtype=torch.float64)
        return columns, weights, p_constant, constant

    def _solve_randomized_eo(self, points: OperatingPoints, defined: Tensor) -> tuple:
        correct = points.correct()
        best = self._best_unconstrained(correct)
        columns, weights, p_constant, _ = self._deterministic(best)
        ids = torch.nonzero(defined).reshape(-1).tolist()
        if len(ids) < 2:
            return columns, weights, p_constant, 0.0
        fpr, tpr = points.rate("false_positive_rate"), points.rate("true_positive_rate")
        hulls = {g: _group_hull(fpr[g], tpr[g]) for g in ids}
        grid = torch.linspace(0, 1, self.grid_size + 1, dtype=torch.float64)
        xs = torch.unique(torch.cat([grid, *[h.x for h in hulls.values()]]))
        y_min = torch.stack([h.value(xs) for h in hulls.values()]).min(0).values
        pos = float(points.positives[ids].sum())
        neg = float(points.negatives[ids].sum())
        objective = pos * y_min + neg * (1.0 - xs)
        i = int(torch.argmax(objective))
        x_best, y_best = float(xs[i]), float(y_min[i])
        for g, h in hulls.items():
            k0, k1, w1 = h.mixture(x_best)
            columns[g] = torch.tensor([k0, k1])
            weights[g] = torch.tensor([1.0 - w1, w1], dtype=torch.float64)
            y_g = float(h.value(torch.tensor([x_best], dtype=torch.float64)))
            p_constant[g] = 0.0 if y_g == x_best else (y_g - y_best) / (y_g - x_best)
        return columns, weights, p_constant, x_best

    # --- predictions ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.thresholds_ is None:
            raise RuntimeError("GroupThresholds is not fitted: call `fit(scores, labels, groups)` first")

    def _predict_inputs(self, scores: Any, groups: Any) -> tuple[Tensor, Tensor]:
        self._check_fitted()
        scores = check_scores(torch.as_tensor(scores), "scores")
        groups = check_groups(torch.as_tensor(groups, device=scores.device), scores.numel(), self.num_groups_)
        return scores, groups

    def predict_proba(self, scores: Any, groups: Any) -> Tensor:
        """Probability of predicting 1 for each row (0 or 1 when deterministic), float64 ``(N,)``."""
        scores, groups = self._predict_inputs(scores, groups)
        device = scores.device
        thr = self.thresholds_.to(device)[groups]
        w = self.weights_.to(device)[groups]
        above = (scores.double()[:, None] > thr).double()
        p = (w * above).sum(1)
        q = self.p_constant_.to(device)[groups]
        return (1.0 - q) * p + q * self.constant_

    def predict(self, scores: Any, groups: Any, *, generator: torch.Generator | None = None) -> Tensor:
        """Hard 0/1 predictions (float ``(N,)``): ``score > threshold[group]``, drawn when randomized.

        Args:
            scores: ``(N,)`` scores on the scale the thresholds were fitted on.
            groups: ``(N,)`` group ids.
            generator: random generator for randomized thresholds (ignored when deterministic);
                the draws are made on its device (a CPU generator gives the same draws for scores
                on any device).
        """
        p = self.predict_proba(scores, groups)
        if not self.randomized:
            return p.round().to(torch.float32)
        device = "cpu" if generator is None else generator.device
        u = torch.rand(p.shape, generator=generator, dtype=torch.float64, device=device).to(p.device)
        return (u < p).to(torch.float32)

    def apply(self, probs: Tensor, groups: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """What ``predict_step`` calls: hard 0/1 predictions of ``probs`` per group (see :meth:`predict`)."""
        return self.predict(probs, groups, generator=generator)

    # --- summaries --------------------------------------------------------------------------------
    def expected_sums(self, scores: Any, labels: Any, groups: Any) -> GroupSums:
        """Per-group sums of the (expected) predictions on ``(scores, labels, groups)``."""
        scores, groups = self._predict_inputs(scores, groups)
        labels = check_binary_target(torch.as_tensor(labels), scores.numel(), "labels").double().to(scores.device)
        p = self.predict_proba(scores, groups)
        if not self.randomized:
            return GroupSums.from_confusion(confusion_counts(p, labels, groups, self.num_groups_))
        sums = torch.zeros(self.num_groups_, 4, dtype=torch.float64, device=p.device)
        sums.index_add_(0, groups, torch.stack((torch.ones_like(p), labels, p, p * labels), 1))
        return GroupSums.from_stacked(sums.T)

    def _fit_summary(self, scores: Tensor, labels: Tensor, groups: Tensor) -> None:
        sums = self.expected_sums(scores, labels, groups)
        rates = group_rate_table(sums, ("selection_rate", "true_positive_rate", "false_positive_rate"))
        self.fit_sums_ = sums
        self.fit_rates_ = {k: torch.where(r.valid, r.value, torch.full_like(r.value, math.nan)) for k, r in rates.items()}
        self.fit_accuracy_ = float(sums.total().accuracy().value[0])
        self.fit_difference_ = max(float(rate_difference(rates[name])) for name in self._rate_names())

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameters and fitted thresholds as plain tensors / Python scalars (``torch.load(weights_only=True)`` reads it)."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "constraint": self.constraint,
            "tolerance": self.tolerance,
            "randomized": self.randomized,
            "grid_size": self.grid_size,
            "max_candidates": self.max_candidates,
            "min_count": self.min_count,
            "calibrated": self.calibrated,
        }
        if self.thresholds_ is not None:
            state.update(
                num_groups=self.num_groups_,
                thresholds=self.thresholds_.clone(),
                weights=self.weights_.clone(),
                p_constant=self.p_constant_.clone(),
                constant=self.constant_,
                fit_accuracy=self.fit_accuracy_,
                fit_difference=self.fit_difference_,
                unconstrained=torch.tensor(self.unconstrained_, dtype=torch.long),
            )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        version = state.get("version", STATE_VERSION)
        if version > STATE_VERSION:
            raise ValueError(f"GroupThresholds state has version {version}; this fair-lightning reads <= {STATE_VERSION}")
        self.__init__(
            state.get("constraint", "demographic_parity"),
            state.get("tolerance", 0.0),
            state.get("randomized", False),
            grid_size=state.get("grid_size", 1000),
            max_candidates=state.get("max_candidates", 512),
            min_count=state.get("min_count", 0),
        )
        self.calibrated = bool(state.get("calibrated", False))
        if state.get("thresholds") is not None:
            self.num_groups_ = int(state["num_groups"])
            self.thresholds_ = torch.as_tensor(state["thresholds"], dtype=torch.float64)
            self.weights_ = torch.as_tensor(state["weights"], dtype=torch.float64)
            self.p_constant_ = torch.as_tensor(state["p_constant"], dtype=torch.float64)
            self.constant_ = float(state.get("constant", 0.0))
            self.fit_accuracy_ = state.get("fit_accuracy")
            self.fit_difference_ = state.get("fit_difference")
            self.unconstrained_ = torch.as_tensor(state.get("unconstrained", [])).tolist()

    @classmethod
    def shared(
        cls, threshold: float, scores: Any, labels: Any, groups: Any, num_groups: int | None = None, *,
        constraint: str = "demographic_parity",
    ) -> GroupThresholds:
        """One decision threshold for every group (``score > threshold``), as a fitted instance.

        What a model's own predictions are in this class's terms: :class:`ConstrainedModelSelection`
        returns it when a snapshot is better without group thresholds, so ``predict_step`` applies
        the threshold it was judged with (to the model's own probabilities, not group-calibrated
        ones). The ``fit_*`` summaries are those of ``(scores, labels, groups)``.
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"`threshold` must be a finite number, got {threshold!r}")
        out = cls(constraint)
        scores, labels, groups, num_groups = out._inputs(scores, labels, groups, num_groups)
        out.num_groups_ = num_groups
        out.thresholds_ = torch.full((num_groups, 2), float(threshold), dtype=torch.float64)
        out.weights_ = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(num_groups, 2).contiguous()
        out.p_constant_ = torch.zeros(num_groups, dtype=torch.float64)
        out.constant_ = 0.0
        out.unconstrained_ = list(range(num_groups))
        out._fit_summary(scores, labels, groups)
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> GroupThresholds:
        """A new instance from :meth:`state_dict`'s output."""
        out = cls()
        out.load_state_dict(state)
        return out

    def __repr__(self) -> str:
        fitted = "" if self.thresholds_ is None else f", fitted on {self.num_groups_} groups"
        return (
            f"GroupThresholds(constraint={self.constraint!r}, tolerance={self.tolerance}, "
            f"randomized={self.randomized}{fitted})"
        )


__all__ = ["CONSTRAINTS", "GroupThresholds", "OperatingPoints", "operating_points"]
