"""Per-(group, bin) calibration sums and per-group expected calibration error.

The state is a ``(G, n_bins, 3)`` tensor of ``[count, sum of probabilities, sum of labels]`` per
group and bin, built by the same :func:`~fair_lightning.functional.grouped_sum` as every other
statistic (the index is ``group * n_bins + bin``). Memory is constant in the number of samples
and the sums all-reduce exactly under DDP.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fair_lightning.functional._checks import check_group_inputs
from fair_lightning.functional._core import Rate, grouped_sum, masked_divide

CALIBRATION_NORMS = ("l1", "max")


def check_n_bins(n_bins: object) -> int:
    """Return ``n_bins`` if it is a positive int, else raise ``ValueError`` naming it."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive int, got {n_bins!r}")
    return n_bins


def check_probabilities(probs: Tensor, name: str = "preds") -> None:
    """Raise ``ValueError`` if any value of ``probs`` lies outside ``[0, 1]``."""
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1], got values in [{float(probs.min()):.4g}, {float(probs.max()):.4g}]"
        )


def bin_index(probs: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin of each probability: ``[0, 1/B), ..., [(B-1)/B, 1]``."""
    return (probs * n_bins).long().clamp_(0, n_bins - 1)


def calibration_sums(
    probs: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    n_bins: int = 15,
    validate_args: bool = True,
) -> Tensor:
    """``(G, n_bins, 3)`` sums of ``[1, p, y]`` per group and probability bin."""
    check_n_bins(n_bins)
    if validate_args:
        probs, target, groups = check_group_inputs(probs, target, groups, num_groups)
        check_probabilities(probs)
    probs = probs.reshape(-1).double()
    index = groups.reshape(-1).long() * n_bins + bin_index(probs, n_bins)
    values = torch.stack((torch.ones_like(probs), probs, target.reshape(-1).to(probs.dtype)), 1)
    return grouped_sum(values, index, num_groups * n_bins).reshape(num_groups, n_bins, 3)


def calibration_error_from_sums(sums: Tensor, norm: str = "l1") -> Rate:
    """Per-group ECE (``"l1"``: bin-size-weighted mean gap) or MCE (``"max"``: largest bin gap)."""
    count, conf, label = sums.unbind(-1)
    gap = (conf - label).abs()
    group_count = count.sum(-1)
    if norm == "l1":
        return masked_divide(gap.sum(-1), group_count)
    if norm == "max":
        per_bin = masked_divide(gap, count)
        return Rate(per_bin.value.amax(-1), group_count > 0)
    raise ValueError(f"`norm` must be one of {list(CALIBRATION_NORMS)}, got {norm!r}")


def group_calibration_error(
    probs: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    n_bins: int = 15,
    norm: Literal["l1", "max"] = "l1",
) -> dict[str, Tensor]:
    """Per-group expected calibration error, its maximum and its max-min disparity.

    Returns a dict with ``"per_group"`` (``(G,)``, NaN for groups without samples), ``"max"``
    and ``"disparity"`` (over groups with samples).
    """
    sums = calibration_sums(probs, target, groups, num_groups, n_bins=n_bins)
    return calibration_error_summary(calibration_error_from_sums(sums, norm))


def calibration_error_summary(ece: Rate) -> dict[str, Tensor]:
    """``{"per_group", "max", "disparity"}`` of per-group calibration errors (NaN where undefined)."""
    valid = ece.value[ece.valid]
    per_group = torch.where(ece.valid, ece.value, torch.full_like(ece.value, float("nan")))
    if valid.numel() == 0:
        zero = ece.value.new_zeros(())
        return {"per_group": per_group, "max": zero, "disparity": zero}
    return {"per_group": per_group, "max": valid.max(), "disparity": valid.max() - valid.min()}
