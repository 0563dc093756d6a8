"""Sensitive attributes and the group ids built from them.

Sensitive attributes arrive as integer codes, one column per attribute: shape ``(N,)`` for one
attribute, ``(N, A)`` for several. :class:`GroupSpec` owns the mapping from codes to group ids:
the intersectional groups (the product of the attributes' levels), their names
(``"sex=Female&race=Black"``), the marginal parents of each intersection, and per-group weights
for penalties.

Weighting rule for small groups (documented, used by losses and constraints):

* ``weights(counts, scheme=..., min_count=m)`` gives every group with fewer than ``m`` samples
  weight 0: its rate is too noisy to constrain. The others get ``"uniform"`` weights (each group
  counts the same), ``"proportional"`` (weight ∝ group size) or ``"sqrt"`` (∝ sqrt of size, the
  usual compromise: large groups matter more, small ones are not ignored). Weights sum to the
  number of groups kept, so that ``"uniform"`` means weight 1 each.
* :meth:`GroupSpec.warn_small_groups` warns (rank zero) when a constraint rests on groups below
  ``min_count``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

WEIGHT_SCHEMES = ("uniform", "proportional", "sqrt")


@dataclass(frozen=True)
class GroupSpec:
    """Names and levels of the sensitive attributes; intersections are the groups.

    Args:
        attributes: mapping from attribute name to the names of its levels, in code order.
            ``{"sex": ["Female", "Male"], "race": ["Black", "White"]}`` gives 4 groups, with
            id ``sex_code * 2 + race_code``.

    Example:
        >>> spec = GroupSpec({"sex": ["Female", "Male"], "race": ["Black", "Other", "White"]})
        >>> spec.num_groups, spec.names[1]
        (6, 'sex=Female&race=Other')
    """

    attributes: Mapping[str, Sequence[str]]

    def __post_init__(self) -> None:
        if not isinstance(self.attributes, Mapping) or not self.attributes:
            raise ValueError(f"`attributes` must be a non-empty mapping name -> levels, got {self.attributes!r}")
        frozen = {}
        for name, levels in self.attributes.items():
            levels = tuple(str(level) for level in levels)
            if not levels:
                raise ValueError(f"attribute {name!r} in `attributes` has no levels")
            if len(set(levels)) != len(levels):
                raise ValueError(f"attribute {name!r} in `attributes` has repeated levels: {levels}")
            frozen[str(name)] = levels
        object.__setattr__(self, "attributes", frozen)

    # --- shape --------------------------------------------------------------------------
    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The sensitive attributes, in code order."""
        return tuple(self.attributes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of levels of each attribute."""
        return tuple(len(levels) for levels in self.attributes.values())

    @property
    def num_groups(self) -> int:
        """Number of intersectional groups (the product of the sizes)."""
        return math.prod(self.sizes)

    @property
    def names(self) -> list[str]:
        """Group names in id order, ``"a=x&b=y"``."""
        codes = self.decode(torch.arange(self.num_groups))
        return [
            "&".join(f"{attr}={self.attributes[attr][int(c)]}" for attr, c in zip(self.attribute_names, row))
            for row in codes
        ]

    # --- codes <-> ids -------------------------------------------------------------------
    def _strides(self) -> list[int]:
        strides, acc = [], 1
        for size in reversed(self.sizes):
            strides.append(acc)
            acc *= size
        return strides[::-1]

    def encode(self, codes: Tensor | np.ndarray) -> Tensor:
        """Integer codes ``(N,)`` or ``(N, A)`` -> group ids ``(N,)`` (first attribute most significant)."""
        codes = torch.as_tensor(codes)
        if codes.ndim == 1:
            codes = codes[:, None]
        if codes.ndim != 2 or codes.shape[1] != len(self.sizes):
            raise ValueError(
                f"`codes` must have shape (N, {len(self.sizes)}) for attributes {list(self.attribute_names)}, "
                f"got shape {tuple(codes.shape)}"
            )
        if codes.is_floating_point():
            raise ValueError(f"`codes` must be integer codes, got dtype {codes.dtype}")
        codes = codes.long()
        for j, (name, size) in enumerate(zip(self.attribute_names, self.sizes)):
            col = codes[:, j]
            if col.numel() and (col.min() < 0 or col.max() >= size):
                raise ValueError(
                    f"`codes` column {j} ({name!r}) must be in [0, {size}), got values in [{int(col.min())}, {int(col.max())}]"
                )
        return (codes * torch.tensor(self._strides(), dtype=torch.long)).sum(1)

    def decode(self, ids: Tensor) -> Tensor:
        """Group ids ``(N,)`` -> codes ``(N, A)``."""
        ids = torch.as_tensor(ids).long()
        cols = [(ids // stride) % size for stride, size in zip(self._strides(), self.sizes)]
        return torch.stack(cols, 1)

    def marginal(self, ids: Tensor, attribute: str) -> Tensor:
        """The level code of ``attribute`` for each group id: the marginal (parent) group."""
        if attribute not in self.attributes:
            raise ValueError(f"`attribute` must be one of {list(self.attribute_names)}, got {attribute!r}")
        return self.decode(ids)[:, self.attribute_names.index(attribute)]

    def marginal_spec(self, attribute: str) -> GroupSpec:
        """The one-attribute spec of ``attribute`` (for marginal groups of an intersection)."""
        if attribute not in self.attributes:
            raise ValueError(f"`attribute` must be one of {list(self.attribute_names)}, got {attribute!r}")
        return GroupSpec({attribute: self.attributes[attribute]})

    # --- construction from data -----------------------------------------------------------
    @classmethod
    def from_frame(cls, frame, columns: str | Sequence[str]) -> tuple[GroupSpec, Tensor]:
        """Build a spec from categorical columns of a pandas ``DataFrame``; return it and the ids.

        Levels are the sorted distinct values of each column (the categories' order for a
        categorical column).
        """
        import pandas as pd

        columns = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"`columns` {missing} not in the frame; available: {list(frame.columns)}")
        attributes, codes = {}, []
        for col in columns:
            series = frame[col]
            if series.isna().any():
                raise ValueError(f"sensitive column {col!r} has {int(series.isna().sum())} missing values")
            cat = series if isinstance(series.dtype, pd.CategoricalDtype) else series.astype("category")
            cat = cat.cat.remove_unused_categories()
            attributes[col] = [str(c) for c in cat.cat.categories]
            codes.append(torch.as_tensor(cat.cat.codes.to_numpy(dtype=np.int64)))
        spec = cls(attributes)
        return spec, spec.encode(torch.stack(codes, 1))

    # --- weights --------------------------------------------------------------------------
    @staticmethod
    def weights(counts: Tensor, scheme: str = "uniform", min_count: float = 0) -> Tensor:
        """Per-group weights from group sizes; see the module docstring for the rule."""
        return group_weights(counts, scheme=scheme, min_count=min_count)

    def small_groups(self, counts: Tensor, min_count: float) -> list[str]:
        """Names of the groups with fewer than ``min_count`` samples."""
        names = self.names
        return [names[g] for g in torch.nonzero(torch.as_tensor(counts) < min_count).flatten().tolist()]

    def warn_small_groups(self, counts: Tensor, min_count: float, what: str = "constraint") -> list[str]:
        """Warn once (rank zero) about groups with fewer than ``min_count`` samples; return their names."""
        small = self.small_groups(counts, min_count)
        if small:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"The {what} rests on {len(small)} group(s) with fewer than {min_count} samples, whose rates are "
                f"too noisy to trust: {small[:10]}{' ...' if len(small) > 10 else ''}. They get weight 0; "
                "merge levels or lower `min_count` to keep them."
            )
        return small


def group_weights(counts: Tensor, scheme: str = "uniform", min_count: float = 0) -> Tensor:
    """Per-group weights; groups below ``min_count`` get 0, the rest sum to how many are kept."""
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"`scheme` must be one of {list(WEIGHT_SCHEMES)}, got {scheme!r}")
    if min_count < 0:
        raise ValueError(f"`min_count` must be >= 0, got {min_count}")
    counts = torch.as_tensor(counts, dtype=torch.float64) if not isinstance(counts, Tensor) else counts
    keep = (counts >= min_count) & (counts > 0)
    if scheme == "uniform":
        raw = keep.to(counts.dtype)
    elif scheme == "proportional":
        raw = torch.where(keep, counts, torch.zeros_like(counts))
    else:
        raw = torch.where(keep, counts.clamp_min(0).sqrt(), torch.zeros_like(counts))
    total = raw.sum()
    if total <= 0:
        return torch.zeros_like(raw)
    return raw * (keep.sum().to(raw.dtype) / total)


__all__ = ["GroupSpec", "WEIGHT_SCHEMES", "group_weights"]
