"""The statistics core: per-group sums in one vectorized pass.

Every fairness quantity in fair-lightning is a ratio of per-group sums. For binary
classification four sums per group are enough (which combinations of them make each rate is
declared once, in :mod:`fair_lightning.functional._rates`):

=============  ========================  ===============================
field          sum over group g          used for
=============  ========================  ===============================
``count``      ``1`` (or sample weight)  group size, selection rate
``label``      ``y``                     base rate, TPR / FPR denominators
``pred``       ``yhat``                  selection rate
``pred_label`` ``yhat * y``              TPR, FPR, accuracy
=============  ========================  ===============================

``yhat`` is hard (``scores > threshold``) for metrics and for the dual update of constraints, or
soft (``sigmoid(logit / temperature)``) and differentiable for losses. Sums are exact under DDP
(all-reduce, then divide), accumulate over an epoch and can be smoothed across batches.

A group without samples (or without positives, for TPR) has an undefined rate: every rate comes
with a ``valid`` mask and is 0 where invalid, never NaN, and its gradient is 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fair_lightning.functional._checks import check_group_inputs
from fair_lightning.functional._rates import rate_coefficients


def grouped_sum(values: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Sum the rows of ``values`` by group id, in one ``index_add``.

    Args:
        values: ``(N,)`` or ``(N, K)`` tensor.
        groups: ``(N,)`` integer group ids in ``[0, num_groups)``.
        num_groups: number of groups ``G``.

    Returns:
        ``(G,)`` or ``(G, K)`` tensor of sums; differentiable with respect to ``values``.
    """
    out = values.new_zeros((num_groups, *values.shape[1:]))
    return out.index_add(0, groups, values)


class Rate(NamedTuple):
    """A per-group rate and the mask of groups for which it is defined."""

    value: Tensor
    valid: Tensor


def masked_divide(num: Tensor, den: Tensor) -> Rate:
    """``num / den`` where ``den > 0``; 0 (with zero gradient) elsewhere."""
    valid = den > 0
    safe_den = torch.where(valid, den, torch.ones_like(den))
    return Rate(torch.where(valid, num / safe_den, torch.zeros_like(num)), valid)


class GroupSums(NamedTuple):
    """Per-group sums of a binary classifier's predictions; each field has shape ``(G,)``."""

    count: Tensor
    label: Tensor
    pred: Tensor
    pred_label: Tensor

    # --- construction / arithmetic -------------------------------------------------------
    @classmethod
    def zeros(cls, num_groups: int, *, dtype: torch.dtype = torch.float64, device=None) -> GroupSums:
        """All-zero sums for ``num_groups`` groups (a running accumulator's start)."""
        z = torch.zeros(4, num_groups, dtype=dtype, device=device)
        return cls.from_stacked(z)

    @classmethod
    def from_stacked(cls, stacked: Tensor) -> GroupSums:
        """Inverse of :meth:`stack`: a ``(4, G)`` tensor."""
        return cls(*stacked.unbind(0))

    @classmethod
    def from_confusion(cls, counts: Tensor) -> GroupSums:
        """The sums of hard predictions from per-group confusion counts.

        Args:
            counts: ``(..., G, 2, 2)`` counts indexed ``[group, label, prediction]``, as returned
                by :func:`confusion_counts`; leading dimensions are kept.
        """
        return cls(counts.sum((-2, -1)), counts[..., 1, :].sum(-1), counts[..., :, 1].sum(-1), counts[..., 1, 1])

    def stack(self) -> Tensor:
        """All sums as one ``(4, G)`` tensor (one all-reduce, one buffer)."""
        return torch.stack(tuple(self), 0)

    def total(self) -> GroupSums:
        """The sums over all groups (groups partition the data), as a one-group ``GroupSums``."""
        return GroupSums.from_stacked(self.stack().sum(1, keepdim=True))

    # --- rates (numerators and denominators from the one rate table, ``_rates.RATES``) --------
    def numerators_denominators(self, rates: tuple[str, ...] | list[str]) -> tuple[Tensor, Tensor]:
        """Numerators and denominators of ``rates`` per group, each ``(C, G)`` (``(C, ..., G)`` for
        sums with leading dimensions, such as bootstrap replicates): one matmul."""
        stacked = self.stack()
        coeffs = rate_coefficients(tuple(rates), dtype=stacked.dtype, device=stacked.device)
        if stacked.dim() == 2:
            num, den = coeffs @ stacked
        else:
            num, den = torch.tensordot(coeffs, stacked, dims=([2], [0]))
        return num, den

    def rate(self, name: str) -> Rate:
        """The per-group rate ``name`` (a key of :data:`~fair_lightning.functional.RATES`)."""
        num, den = self.numerators_denominators((name,))
        return masked_divide(num[0], den[0])  # (G,), or (..., G)

    def selection_rate(self) -> Rate:
        """The share predicted positive."""
        return self.rate("selection_rate")

    def base_rate(self) -> Rate:
        """The share of positive labels."""
        return self.rate("base_rate")

    def true_positive_rate(self) -> Rate:
        """Recall among positives."""
        return self.rate("true_positive_rate")

    def false_positive_rate(self) -> Rate:
        """Positives predicted among negatives."""
        return self.rate("false_positive_rate")

    def false_negative_rate(self) -> Rate:
        """``1 - TPR``, defined where the group has positives."""
        return self.rate("false_negative_rate")

    def true_negative_rate(self) -> Rate:
        """``1 - FPR``, defined where the group has negatives."""
        return self.rate("true_negative_rate")

    def accuracy(self) -> Rate:
        """Share of correct thresholded predictions (TP + TN over count)."""
        return self.rate("accuracy")


def label_cells(target: Tensor, groups: Tensor) -> Tensor:
    """Index ``2 * group + label`` of each sample's (group, label) cell, as ``int64``.

    ``target`` must be binary and ``groups`` valid ids (not checked: see :func:`confusion_counts`).
    """
    # no-op conversions skipped in Python: this runs on every step of the Lagrangian mode
    target = target if target.dim() == 1 else target.reshape(-1)
    groups = groups if groups.dim() == 1 else groups.reshape(-1)
    target = target.long() if target.is_floating_point() else target
    groups = groups if groups.dtype == torch.long else groups.long()
    return torch.add(target, groups, alpha=2)


def confusion_counts(
    hard_preds: Tensor,
    target: Tensor | None,
    groups: Tensor | None,
    num_groups: int,
    *,
    cells: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Per-group confusion counts of hard predictions, in one ``bincount``.

    The unweighted, thresholded case of :func:`group_sums` (``GroupSums.from_confusion`` gives
    the same sums), for metrics and the dual step of the constraints: counting cells is cheaper
    than summing an ``(N, 4)`` matrix, and exact.

    Args:
        hard_preds: ``(N,)`` 0/1 predictions (bool, integer or float).
        target: ``(N,)`` binary labels (unused when ``cells`` is given).
        groups: ``(N,)`` group ids in ``[0, num_groups)`` (unused when ``cells`` is given).
        num_groups: number of groups ``G``.
        cells: precomputed :func:`label_cells` of ``(target, groups)``.
        dtype: dtype of the counts (float64 keeps them exact up to ``2**53``).

    Returns:
        ``(G, 2, 2)`` counts indexed ``[group, label, prediction]``. Inputs are not validated
        (callers check them once per batch, see :func:`check_group_inputs`).
    """
    if cells is None:
        cells = label_cells(target, groups)
    hard = hard_preds if hard_preds.dim() == 1 else hard_preds.reshape(-1)
    key = torch.add(hard if hard.dtype == torch.bool else hard.long(), cells, alpha=2)
    return torch.bincount(key, minlength=4 * num_groups).to(dtype).view(num_groups, 2, 2)


def hard_predictions(scores: Tensor, threshold: float = 0.5) -> Tensor:
    """Thresholded predictions ``scores > threshold`` as a float tensor (not differentiable)."""
    return (scores > threshold).to(scores.dtype if scores.is_floating_point() else torch.float32)


def soft_predictions(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Smooth indicator of ``logits > 0``: ``sigmoid(logits / temperature)``.

    Lower temperatures approach the hard indicator (and its vanishing gradient); ``1.0`` is the
    model's own probability.
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    return torch.sigmoid(logits / temperature)


def group_sums(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    weight: Tensor | None = None,
    validate_args: bool = True,
) -> GroupSums:
    """Per-group sums of ``preds`` (hard or soft, in ``[0, 1]``) and binary ``target``.

    One ``index_add`` over an ``(N, 4)`` matrix; no Python loop over groups. Differentiable in
    ``preds``.

    Args:
        preds: ``(N,)`` predictions in ``[0, 1]``: hard (0/1) or soft probabilities.
        target: ``(N,)`` binary labels.
        groups: ``(N,)`` integer group ids in ``[0, num_groups)``.
        num_groups: number of groups.
        weight: optional ``(N,)`` non-negative sample weights.
        validate_args: check shapes, dtypes and values (costs a few reductions).
    """
    if validate_args:
        preds, target, groups = check_group_inputs(preds, target, groups, num_groups)
    else:
        preds, target, groups = preds.reshape(-1), target.reshape(-1), groups.reshape(-1).long()
    y = target.to(preds.dtype)
    values = torch.stack((torch.ones_like(preds), y, preds, preds * y), 1)
    if weight is not None:
        weight = weight.reshape(-1).to(preds.dtype)
        if validate_args and weight.numel() != preds.numel():
            raise ValueError(f"`weight` must have the same length as `preds` ({preds.numel()}), got {weight.numel()}")
        values = values * weight[:, None]
    return GroupSums.from_stacked(grouped_sum(values, groups, num_groups).T)


def ema_update(running: Tensor, new: Tensor, decay: float) -> Tensor:
    """Exponential moving average ``decay * running + (1 - decay) * new``."""
    return running.mul(decay).add(new, alpha=1.0 - decay)
