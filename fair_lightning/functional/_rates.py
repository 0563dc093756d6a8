"""The one rate table: every group rate and fairness definition of fair-lightning, declared once.

Every rate is a ratio of two linear combinations of the four per-group sums of
:class:`~fair_lightning.functional.GroupSums`, stacked as ``[count, label, pred, pred_label]``
(``pred`` is the hard or soft prediction ``yhat``, ``label`` the binary target ``y``):

======================  =====  ==========================  ====================
rate                    label  numerator                   denominator
======================  =====  ==========================  ====================
``selection_rate``      any    ``yhat``                    ``1``
``true_positive_rate``  1      ``yhat * y``                ``y``
``false_positive_rate`` 0      ``yhat - yhat * y``         ``1 - y``
``false_negative_rate`` 1      ``y - yhat * y``            ``y``
``true_negative_rate``  0      ``1 - y - yhat + yhat * y`` ``1 - y``
``accuracy``            any    ``1 - y - yhat + 2 yhat y`` ``1``
``base_rate``           any    ``y``                       ``1``
======================  =====  ==========================  ====================

A fairness definition is the tuple of rates it equalizes across groups
(:data:`DEFINITIONS`). Losses (soft sums), constraints (soft sums for the model, hard sums for the
multipliers), metrics (hard sums), the dashboard, post-processing and the confidence intervals
all read these two tables; no other file encodes a numerator or a denominator. Because each rate
is linear-fractional in the predictions, its numerator and denominator are one matrix product
over the stacked sums (:func:`rate_coefficients`), for any set of rates at once.

A new definition is one entry of :data:`DEFINITIONS` (and, for a new rate, one of :data:`RATES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

#: the order of the stacked sums the coefficients apply to
SUM_FIELDS = ("count", "label", "pred", "pred_label")


class RateSpec(NamedTuple):
    """One group rate: ``numerator @ sums / denominator @ sums`` over ``[count, label, pred, pred_label]``.

    Attributes:
        name: the key in logged metrics (``selection_rate/<group>``).
        label: the label the rate conditions on (``None``: every sample), for documentation and
            for what a "sample behind the rate" means (its denominator counts them).
        numerator: coefficients of the numerator.
        denominator: coefficients of the denominator (never depends on the predictions).
        short: a short name for plots and tables.
    """

    name: str
    label: int | None
    numerator: tuple[float, float, float, float]
    denominator: tuple[float, float, float, float]
    short: str


RATES: dict[str, RateSpec] = {
    spec.name: spec
    for spec in (
        RateSpec("selection_rate", None, (0, 0, 1, 0), (1, 0, 0, 0), "selection rate"),
        RateSpec("true_positive_rate", 1, (0, 0, 0, 1), (0, 1, 0, 0), "TPR"),
        RateSpec("false_positive_rate", 0, (0, 0, 1, -1), (1, -1, 0, 0), "FPR"),
        RateSpec("false_negative_rate", 1, (0, 1, 0, -1), (0, 1, 0, 0), "FNR"),
        RateSpec("true_negative_rate", 0, (1, -1, -1, 1), (1, -1, 0, 0), "TNR"),
        RateSpec("accuracy", None, (1, -1, -1, 2), (1, 0, 0, 0), "accuracy"),
        RateSpec("base_rate", None, (0, 1, 0, 0), (1, 0, 0, 0), "base rate"),
    )
}

#: the rates each fairness definition equalizes across groups
DEFINITIONS: dict[str, tuple[str, ...]] = {
    "demographic_parity": ("selection_rate",),
    "equal_opportunity": ("true_positive_rate",),
    "equalized_odds": ("true_positive_rate", "false_positive_rate"),
    "accuracy_parity": ("accuracy",),
}

#: the rates a per-group table (``GroupRates``) reports, in order
TABLE_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "false_negative_rate", "accuracy")


def check_definition(definition: object, name: str = "fairness") -> str:
    """Return ``definition`` if it is a key of :data:`DEFINITIONS`, else raise naming ``name``."""
    if not isinstance(definition, str) or definition not in DEFINITIONS:
        raise ValueError(f"`{name}` must be one of {list(DEFINITIONS)}, got {definition!r}")
    return definition


def definition_rates(definition: str) -> tuple[str, ...]:
    """The rates a definition equalizes (``"equalized_odds"`` -> TPR and FPR)."""
    return DEFINITIONS[check_definition(definition, "definition")]


_CACHE: dict = {}


def rate_coefficients(rates: Sequence[str], *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The ``(2, C, 4)`` numerator (``[0]``) and denominator (``[1]``) rows of ``C`` rates.

    ``rate_coefficients(names) @ sums.stack()`` gives each rate's numerator and denominator per
    group, shape ``(2, C, G)``. Cached per rates, dtype and device (this runs on hot paths).
    """
    key = (tuple(rates), dtype, torch.device(device) if device is not None else None)
    coeffs = _CACHE.get(key)
    if coeffs is None:
        try:
            specs = [RATES[r] for r in rates]
        except KeyError as err:
            raise ValueError(f"unknown rate {err.args[0]!r}; rates are {list(RATES)}") from None
        with torch.inference_mode(False):  # a cached constant must be usable outside inference mode too
            coeffs = torch.tensor([[s.numerator for s in specs], [s.denominator for s in specs]], dtype=dtype, device=device)
        _CACHE[key] = coeffs
    return coeffs


__all__ = [
    "DEFINITIONS",
    "RATES",
    "RateSpec",
    "SUM_FIELDS",
    "TABLE_RATES",
    "check_definition",
    "definition_rates",
    "rate_coefficients",
]
