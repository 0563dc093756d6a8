"""Argument checks shared by every consumer of the statistics core.

Errors name the argument, the expected form and what was received, so that a user who passes
the wrong tensor learns which one it was.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the largest rate or bound a float32 buffer update can take (the Lagrange multipliers are
#: float32): a larger finite Python float would overflow inside torch instead of being refused by name
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_num_groups(num_groups: object) -> int:
    """Return ``num_groups`` if it is a positive int, else raise ``ValueError`` naming it."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"`num_groups` must be a positive int, got {num_groups!r}")
    return num_groups


def check_names(names: object, count: int, what: str = "group") -> list[str]:
    """``names`` as a list of ``count`` unique strings (default ``{what}_0``, ...), for the
    argument ``{what}_names`` with ``num_{what}s`` entries."""
    arg, num = f"{what}_names", f"num_{what}es" if what.endswith("s") else f"num_{what}s"
    if names is None:
        return [f"{what}_{i}" for i in range(count)]
    if isinstance(names, str):
        raise ValueError(f"`{arg}` must be a sequence of {count} names, got the string {names!r}")
    out = [str(n) for n in names]
    if len(out) != count:
        raise ValueError(f"`{arg}` must have {num}={count} entries, got {len(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"`{arg}` must be unique, got {out}")
    return out


def check_group_names(group_names: object, num_groups: int) -> list[str]:
    """``group_names`` as a list of ``num_groups`` unique strings (default ``group_0``, ...)."""
    return check_names(group_names, num_groups, "group")


def _describe(t: Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"


def as_vector(x: Tensor, name: str) -> Tensor:
    """Accept ``(N,)`` or ``(N, 1)``; return ``(N,)``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        hint = ""
        if x.ndim == 2 and name == "groups":  # one column per sensitive attribute
            hint = (f"; for {x.shape[1]} sensitive attributes, one intersectional id per row: "
                    "GroupSpec(...).encode(codes) (fair_lightning.groups)")
        elif x.ndim == 2:  # K-class scores or one-hot labels given to a binary (one score per sample) consumer
            hint = f"; {x.shape[1]} columns are K-class scores or one-hot labels: see fair_lightning.metrics_multiclass"
        raise ValueError(f"`{name}` must have shape (N,) or (N, 1), got {_describe(x)}{hint}")
    return x


def check_scores(scores: Tensor, name: str = "preds") -> Tensor:
    """Flatten ``scores`` to ``(N,)``; raise if it is not floating point or contains NaN."""
    scores = as_vector(scores, name)
    if not scores.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {_describe(scores)}")
    if torch.isnan(scores).any():
        raise ValueError(f"`{name}` contains NaN ({int(torch.isnan(scores).sum())} of {scores.numel()} values)")
    return scores


def check_binary_target(target: Tensor, n: int, name: str = "target") -> Tensor:
    """Flatten ``target`` to ``(N,)``; raise unless it has ``n`` values, all 0 or 1."""
    target = as_vector(target, name)
    if target.numel() != n:
        raise ValueError(f"`{name}` must have the same length as the predictions ({n}), got {target.numel()}")
    if target.is_floating_point() and torch.isnan(target).any():
        raise ValueError(f"`{name}` contains NaN")
    bad = (target != 0) & (target != 1)
    if bad.any():
        values = torch.unique(target[bad])[:5].tolist()
        raise ValueError(f"`{name}` must contain only 0 and 1 (binary labels), got values such as {values}")
    return target


def check_groups(groups: Tensor, n: int, num_groups: int, name: str = "groups") -> Tensor:
    """Flatten ``groups`` to ``(N,)`` long ids; raise unless integer, ``n`` long and in ``[0, num_groups)``."""
    groups = as_vector(groups, name)
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise ValueError(f"`{name}` must be an integer tensor of group ids, got {_describe(groups)}")
    if groups.numel() != n:
        raise ValueError(f"`{name}` must have the same length as the predictions ({n}), got {groups.numel()}")
    if n:
        lo, hi = int(groups.min()), int(groups.max())
        if lo < 0:
            raise ValueError(f"`{name}` must be non-negative group ids, got minimum {lo}")
        if hi >= num_groups:
            raise ValueError(f"`{name}` must be < num_groups={num_groups}, got maximum {hi}")
    return groups.long()


def check_group_inputs(
    preds: Tensor,
    target: Tensor | None,
    groups: Tensor,
    num_groups: int,
    *,
    preds_name: str = "preds",
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Validate and flatten ``(preds, target, groups)``; ``target`` may be ``None``."""
    check_num_groups(num_groups)
    preds = check_scores(preds, preds_name)
    n = preds.numel()
    if target is not None:
        target = check_binary_target(target, n)
    groups = check_groups(groups, n, num_groups)
    return preds, target, groups
