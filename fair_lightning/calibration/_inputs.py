"""Input conversion shared by the calibrator and the audit: torch in -> torch out, else numpy."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_tensor(x: object, name: str) -> tuple[Tensor, bool]:
    """Return ``x`` as a tensor and whether it was one (to give back the same kind).

    Tensors pass through; numpy arrays, lists and pandas objects go through ``np.asarray``.
    """
    if isinstance(x, Tensor):
        return x, True
    try:
        arr = np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"`{name}` must be a torch.Tensor or array-like, got {type(x).__name__}") from err
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric, got an array of dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)), False


def restore_kind(out: Tensor, was_tensor: bool) -> Tensor | np.ndarray:
    """Give ``out`` back as a tensor or as a numpy array, like the input it came from."""
    return out if was_tensor else out.detach().cpu().numpy()


def check_finite(x: Tensor, name: str) -> None:
    if x.numel() and not torch.isfinite(x).all():
        nan = int(torch.isnan(x).sum())
        raise ValueError(
            f"`{name}` must be finite, got {nan} NaN and {int((~torch.isfinite(x)).sum()) - nan} infinite value(s)"
        )


def check_in_unit_interval(x: Tensor, name: str, hint: str = "") -> None:
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1]{hint}, got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )
