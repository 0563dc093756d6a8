"""Rules the verdicts share: when a classifier counts as constant (the module's end-of-fit verdict,
the selection's records, the group-threshold callback's and the cross-fit's warnings) and which
groups a constraint is judged on (the selection's and the cross-fit's certification)."""

from __future__ import annotations

from fair_lightning.functional import GroupSums
from fair_lightning.functional._rates import DEFINITIONS

#: share of the rows in one class from which a classifier counts as a constant predictor
CONSTANT_SHARE = 0.99


def one_class(share: float) -> bool:
    """Whether a binary classifier predicting 1 for this share of the rows is a constant predictor."""
    return share >= CONSTANT_SHARE or share <= 1 - CONSTANT_SHARE


def judged_sums(sums: GroupSums, definition: str, min_count: float) -> GroupSums:
    """The sums with every group that has fewer than ``min_count`` samples behind one of the
    definition's rates zeroed: left out of the judgement (too small to be constrained on noise)."""
    _, den = sums.numerators_denominators(DEFINITIONS[definition])
    keep = (den >= max(min_count, 1)).all(0).to(sums.count.dtype)
    return GroupSums(*(f * keep for f in sums))
