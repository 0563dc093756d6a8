"""Fitting and applying calibration maps for many fit units at once.

A *fit unit* is a set of samples that gets its own map: everyone, a marginal group, a group.
Units may overlap (a sample belongs to several), so the fitters take a long list of
``(value, label, unit)`` rows in which a sample appears once per unit it belongs to.

* Logistic maps ``sigmoid(a * x + b)`` (Platt on ``logit(score)``, temperature on the logit with
  ``a = 1 / T``) are fitted by damped Newton steps vectorized over units: gradients and Hessians
  are per-unit sums from :func:`~fair_lightning.functional.grouped_sum`. A small ridge pulls
  ``(a, b)`` towards the identity ``(1, 0)`` so that a separable or one-class unit stays finite.
* Isotonic maps are breakpoints ``(X, Y)`` from scikit-learn's pool-adjacent-violators, applied by
  piecewise-linear interpolation (constant beyond the end points).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fair_lightning.functional import grouped_sum

#: Ridge strength on ``(a - 1, b)`` added to the summed negative log-likelihood.
RIDGE = 1e-4
_MAX_HALVINGS = 30
# Per-row key offset for the single flat ``searchsorted`` of :func:`interpolate_rows`; the
# breakpoints and queries lie in [0, 1], so rows with offset 4 * r never overlap.
_ROW_OFFSET = 4.0


def _logistic_loss(a: Tensor, b: Tensor, x: Tensor, y: Tensor, unit: Tensor, num_units: int, ridge: float) -> Tensor:
    eta = a[unit] * x + b[unit]
    nll = grouped_sum(F.softplus(eta) - y * eta, unit, num_units)
    return nll + 0.5 * ridge * ((a - 1) ** 2 + b**2)


def fit_logistic(
    x: Tensor,
    y: Tensor,
    unit: Tensor,
    num_units: int,
    *,
    fit_bias: bool = True,
    max_iter: int = 100,
    tol: float = 1e-10,
    ridge: float = RIDGE,
) -> tuple[Tensor, Tensor, int]:
    """Per-unit logistic regression of ``y`` on ``x`` (one slope, one optional intercept).

    Args:
        x: ``(M,)`` float64 feature.
        y: ``(M,)`` float64 labels in ``{0, 1}``.
        unit: ``(M,)`` unit id of each row in ``[0, num_units)``.
        num_units: number of units ``U``.
        fit_bias: fit the intercept ``b`` (else it stays 0).
        max_iter: maximum number of Newton steps.
        tol: stop when no parameter moves by more than this.
        ridge: strength of the pull towards ``(a, b) = (1, 0)``.

    Returns:
        ``(a, b, n_iter)``: slopes and intercepts of shape ``(U,)`` (``(1, 0)`` for units without
        rows) and the number of Newton steps taken.
    """
    a = x.new_ones(num_units)
    b = x.new_zeros(num_units)
    loss = _logistic_loss(a, b, x, y, unit, num_units, ridge)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        q = torch.sigmoid(a[unit] * x + b[unit])
        r, w = q - y, q * (1 - q)
        s = grouped_sum(torch.stack((r * x, r, w * x * x, w * x, w), 1), unit, num_units)
        grad_a, grad_b = s[:, 0] + ridge * (a - 1), s[:, 1] + ridge * b
        h_aa, h_ab, h_bb = s[:, 2] + ridge, s[:, 3], s[:, 4] + ridge
        if fit_bias:
            det = h_aa * h_bb - h_ab**2
            step_a = (h_bb * grad_a - h_ab * grad_b) / det
            step_b = (h_aa * grad_b - h_ab * grad_a) / det
        else:
            step_a, step_b = grad_a / h_aa, torch.zeros_like(grad_b)
        # backtracking, per unit: halve the step where the loss would go up
        size = torch.ones_like(a)
        for _ in range(_MAX_HALVINGS):
            new_a, new_b = a - size * step_a, b - size * step_b
            new_loss = _logistic_loss(new_a, new_b, x, y, unit, num_units, ridge)
            worse = new_loss > loss + 1e-12 * loss.abs()
            if not worse.any():
                break
            size = torch.where(worse, size / 2, size)
        keep = new_loss > loss + 1e-12 * loss.abs()
        moved = torch.maximum((size * step_a).abs(), (size * step_b).abs())
        a, b = torch.where(keep, a, new_a), torch.where(keep, b, new_b)
        loss = torch.where(keep, loss, new_loss)
        if not bool((moved > tol).any()):
            break
    return a, b, n_iter


def fit_isotonic(
    x: np.ndarray, y: np.ndarray, unit: np.ndarray, units: Iterable[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Isotonic (non-decreasing, in ``[0, 1]``) regression of ``y`` on ``x`` for each of ``units``.

    Returns:
        unit -> ``(X, Y)`` breakpoints (float64, ``X`` strictly increasing, ``Y`` non-decreasing).
    """
    from sklearn.isotonic import IsotonicRegression

    order = np.argsort(unit, kind="stable")
    sorted_unit = unit[order]
    maps = {}
    for u in units:
        lo, hi = np.searchsorted(sorted_unit, [u, u + 1])
        rows = order[lo:hi]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(x[rows], y[rows])
        maps[u] = (np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64))
    return maps


def blend_piecewise(
    own: tuple[np.ndarray, np.ndarray], parent: tuple[np.ndarray, np.ndarray], weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """``weight * own + (1 - weight) * parent`` for two piecewise-linear maps, exactly.

    Both maps are linear between their breakpoints and constant beyond them, so the blend is
    piecewise linear on the union of the breakpoints; it is non-decreasing when both are.
    """
    if weight >= 1:
        return own
    if weight <= 0:
        return parent
    xs = np.union1d(own[0], parent[0])
    ys = weight * np.interp(xs, *own) + (1 - weight) * np.interp(xs, *parent)
    return xs, ys


def pad_breakpoints(maps: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack breakpoints into ``(R, L)`` tensors, each row padded with its last value, and lengths."""
    lengths = [len(bx) for bx, _ in maps]
    width = max(lengths)
    xs = np.stack([np.pad(bx, (0, width - len(bx)), mode="edge") for bx, _ in maps])
    ys = np.stack([np.pad(by, (0, width - len(by)), mode="edge") for _, by in maps])
    return torch.from_numpy(xs), torch.from_numpy(ys), torch.tensor(lengths, dtype=torch.long)


def interpolate_rows(x: Tensor, rows: Tensor, bx: Tensor, by: Tensor, length: Tensor) -> Tensor:
    """Evaluate, for each ``x[i]``, the piecewise-linear map of row ``rows[i]``.

    Linear between breakpoints, constant beyond the first and last (``np.interp`` semantics).
    One ``searchsorted`` over all rows' breakpoints (each row shifted by its own offset), no loop.

    Args:
        x: ``(N,)`` float64 queries in ``[0, 1]``.
        rows: ``(N,)`` row (map) of each query.
        bx, by: ``(R, L)`` padded breakpoints (``bx`` in ``[0, 1]``).
        length: ``(R,)`` number of valid breakpoints per row (>= 1).
    """
    num_rows, width = bx.shape
    valid = torch.arange(width, device=bx.device) < length[:, None]
    offset = _ROW_OFFSET * torch.arange(num_rows, device=bx.device, dtype=bx.dtype)
    flat_x, flat_y = bx[valid], by[valid]
    keys = (bx + offset[:, None])[valid]
    start = torch.cumsum(length, 0) - length
    first, last = start[rows], start[rows] + length[rows] - 1
    idx = torch.searchsorted(keys, x + offset[rows], right=True)
    hi = torch.minimum(torch.maximum(idx, first), last)
    lo = torch.minimum(torch.maximum(idx - 1, first), last)
    x0, x1, y0, y1 = flat_x[lo], flat_x[hi], flat_y[lo], flat_y[hi]
    span = x1 - x0
    t = torch.where(span > 0, (x - x0) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))
    return y0 + t.clamp(0, 1) * (y1 - y0)
