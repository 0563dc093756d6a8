"""When a classifier counts as constant: one rule for the module's end-of-fit verdict, the
selection's records and the group-threshold callback's warning."""

from __future__ import annotations

#: share of the rows in one class from which a classifier counts as a constant predictor
CONSTANT_SHARE = 0.99


def one_class(share: float) -> bool:
    """Whether a binary classifier predicting 1 for this share of the rows is a constant predictor."""
    return share >= CONSTANT_SHARE or share <= 1 - CONSTANT_SHARE
