"""Fitting and applying calibration maps for many fit units at once.

A *fit unit* is a set of samples that gets its own map: everyone, a marginal group, a group.
Units may overlap (a sample belongs to several), so the fitters take a long list of
``(value, label, unit)`` rows in which a sample appears once per unit it belongs to.

* Logistic maps ``sigmoid(a * x + b)`` (Platt on ``logit(score)``, temperature on the logit with
  ``a = 1 / T``) are fitted by damped Newton steps vectorized over units: gradients and Hessians
  are per-unit sums from :func:`~fair_lightning.functional.grouped_sum`. A small ridge pulls
  ``(a, b)`` towards the identity ``(1, 0)`` so that a separable or one-class unit stays finite.
* K-class logits get ``softmax(a * x + b)`` per unit (temperature: one ``a``; vector scaling:
  ``a`` and ``b`` per class), fitted by the same damped Newton loop (:func:`newton_minimize`).
* Isotonic maps are breakpoints ``(X, Y)`` from scikit-learn's pool-adjacent-violators, applied by
  piecewise-linear interpolation (constant beyond the end points).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fair_lightning.functional import grouped_sum

#: Ridge strength on ``(a - 1, b)`` added to the summed negative log-likelihood.
RIDGE = 1e-4
_MAX_HALVINGS = 30
#: Rows per chunk when summing the per-row K-class Hessians (bounds the memory of a Newton step).
_CHUNK_ROWS = 4096
# Per-row key offset for the single flat ``searchsorted`` of :func:`interpolate_rows`; the
# breakpoints and queries lie in [0, 1], so rows with offset 4 * r never overlap.
_ROW_OFFSET = 4.0


def _logistic_loss(a: Tensor, b: Tensor, x: Tensor, y: Tensor, unit: Tensor, num_units: int, ridge: float) -> Tensor:
    eta = a[unit] * x + b[unit]
    nll = grouped_sum(F.softplus(eta) - y * eta, unit, num_units)
    return nll + 0.5 * ridge * ((a - 1) ** 2 + b**2)


def newton_minimize(
    theta: Tensor,
    loss: Callable[[Tensor], Tensor],
    grad_hess: Callable[[Tensor], tuple[Tensor, Tensor]],
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[Tensor, int]:
    """Damped Newton steps on ``U`` independent (per-unit) smooth, strictly convex problems at once.

    Args:
        theta: ``(U, P)`` starting parameters.
        loss: ``theta -> (U,)`` per-unit objective.
        grad_hess: ``theta -> ((U, P), (U, P, P))`` per-unit gradient and Hessian.
        max_iter: maximum number of Newton steps.
        tol: stop when no parameter moves by more than this.

    Each unit halves its own step until its objective does not go up (a unit whose objective
    would rise after every halving keeps its parameters).

    Returns:
        ``(theta, n_iter)``.
    """
    value = loss(theta)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        grad, hess = grad_hess(theta)
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        size = torch.ones_like(value)
        for _ in range(_MAX_HALVINGS):
            candidate = theta - size[:, None] * step
            new_value = loss(candidate)
            worse = new_value > value + 1e-12 * value.abs()
            if not worse.any():
                break
            size = torch.where(worse, size / 2, size)
        keep = new_value > value + 1e-12 * value.abs()
        moved = (size[:, None] * step).abs().amax(1)
        theta = torch.where(keep[:, None], theta, candidate)
        value = torch.where(keep, value, new_value)
        if not bool((moved > tol).any()):
            break
    return theta, n_iter


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
    num_params = 2 if fit_bias else 1

    def split(theta: Tensor) -> tuple[Tensor, Tensor]:
        return theta[:, 0], theta[:, 1] if fit_bias else torch.zeros_like(theta[:, 0])

    def loss(theta: Tensor) -> Tensor:
        return _logistic_loss(*split(theta), x, y, unit, num_units, ridge)

    def grad_hess(theta: Tensor) -> tuple[Tensor, Tensor]:
        a, b = split(theta)
        q = torch.sigmoid(a[unit] * x + b[unit])
        r, w = q - y, q * (1 - q)
        s = grouped_sum(torch.stack((r * x, r, w * x * x, w * x, w), 1), unit, num_units)
        grad = torch.stack((s[:, 0] + ridge * (a - 1), s[:, 1] + ridge * b), 1)
        hess = torch.stack((s[:, 2] + ridge, s[:, 3], s[:, 3], s[:, 4] + ridge), 1).reshape(-1, 2, 2)
        return grad[:, :num_params], hess[:, :num_params, :num_params]

    start = torch.stack((x.new_ones(num_units), x.new_zeros(num_units)), 1)[:, :num_params]
    theta, n_iter = newton_minimize(start, loss, grad_hess, max_iter=max_iter, tol=tol)
    a, b = split(theta)
    return a, b, n_iter


def _scaling_tying(num_classes: int, scaling: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(T, theta0)``: the map ``theta -> (scale, bias)`` of a scaling as a ``(2K, P)`` matrix
    (``(scale, bias) = T @ theta``) and the identity map's parameters ``theta0``."""
    k = num_classes
    eye = torch.eye(k, dtype=dtype)
    ones, zeros = torch.ones(k, 1, dtype=dtype), torch.zeros(k, 1, dtype=dtype)
    if scaling == "temperature":  # one inverse temperature
        tying = torch.cat((ones, zeros))
    elif scaling == "temperature_bias":  # one inverse temperature and a bias per class
        tying = torch.cat((torch.cat((ones, torch.zeros(k, k, dtype=dtype)), 1), torch.cat((zeros, eye), 1)))
    elif scaling == "vector":  # a scale and a bias per class
        tying = torch.eye(2 * k, dtype=dtype)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown scaling {scaling!r}")
    theta0 = torch.linalg.lstsq(tying, torch.cat((ones, zeros)).squeeze(1)).solution
    return tying, theta0


def fit_softmax_scaling(
    x: Tensor,
    y: Tensor,
    unit: Tensor,
    num_units: int,
    *,
    scaling: str = "vector",
    max_iter: int = 100,
    tol: float = 1e-10,
    ridge: float = RIDGE,
    chunk_size: int = _CHUNK_ROWS,
) -> tuple[Tensor, Tensor, int]:
    """Per-unit scaling of K-class logits, ``softmax(a * x + b)``, by minimizing the NLL.

    ``scaling``: ``"temperature"`` (``a = 1 / T`` the same for every class, ``b = 0``),
    ``"temperature_bias"`` (one ``a``, a bias per class) or ``"vector"`` (a scale and a bias per
    class: vector scaling, Guo et al. 2017). Newton steps vectorized over units: per-unit
    gradients and Hessians are :func:`~fair_lightning.functional.grouped_sum` of per-row terms,
    taken ``chunk_size`` rows at a time to bound memory. A small ridge pulls the parameters
    towards the identity map (and fixes the biases' free common shift).

    Args:
        x: ``(M, K)`` float64 logits.
        y: ``(M,)`` long class indices in ``[0, K)``.
        unit: ``(M,)`` unit id of each row in ``[0, num_units)``.
        num_units: number of units ``U``.

    Returns:
        ``(a, b, n_iter)``: ``(U, K)`` scales and biases (the identity for units without rows)
        and the number of Newton steps taken.
    """
    k = x.shape[1]
    tying, theta0 = _scaling_tying(k, scaling, x.dtype)
    num_params = tying.shape[1]
    onehot = F.one_hot(y, k).to(x.dtype)

    def split(theta: Tensor) -> tuple[Tensor, Tensor]:
        ab = theta @ tying.T
        return ab[:, :k], ab[:, k:]

    def loss(theta: Tensor) -> Tensor:
        a, b = split(theta)
        z = a[unit] * x + b[unit]
        nll = grouped_sum(torch.logsumexp(z, 1) - (z * onehot).sum(1), unit, num_units)
        return nll + 0.5 * ridge * ((theta - theta0) ** 2).sum(1)

    def grad_hess(theta: Tensor) -> tuple[Tensor, Tensor]:
        a, b = split(theta)
        grad = ridge * (theta - theta0)
        hess = ridge * torch.eye(num_params, dtype=x.dtype).expand(num_units, -1, -1).clone()
        for lo in range(0, x.shape[0], chunk_size):
            xs, us = x[lo : lo + chunk_size], unit[lo : lo + chunk_size]
            p = torch.softmax(a[us] * xs + b[us], 1)
            design = xs[:, :, None] * tying[:k] + tying[k:]  # (m, K, P): dz / dtheta
            v = torch.einsum("mkp,mk->mp", design, p)
            grad += grouped_sum(v - torch.einsum("mkp,mk->mp", design, onehot[lo : lo + chunk_size]), us, num_units)
            rows = torch.einsum("mkp,mk,mkq->mpq", design, p, design) - v[:, :, None] * v[:, None, :]
            hess += grouped_sum(rows.reshape(-1, num_params * num_params), us, num_units).reshape(hess.shape)
        return grad, hess

    theta, n_iter = newton_minimize(theta0.expand(num_units, -1).clone(), loss, grad_hess, max_iter=max_iter, tol=tol)
    a, b = split(theta)
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
