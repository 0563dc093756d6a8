"""The synthetic biased-lending data set: a textbook case with a known, tunable label bias."""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

from fair_lightning.data._container import TabularData

#: Group levels: ``"A"`` advantaged, ``"B"`` disadvantaged.
LENDING_GROUPS = ("A", "B")

# Population constants of the features (the same for both groups).
_INCOME_MEDIAN, _INCOME_SIGMA = 45.0, 0.5  # thousand USD a year, log-normal
_SCORE_MEAN, _SCORE_SD = 650.0, 75.0  # credit score, normal clipped to [300, 850]
_DEBT_A, _DEBT_B = 2.0, 5.0  # debt-to-income ratio, Beta(2, 5)
_DEBT_MEAN = _DEBT_A / (_DEBT_A + _DEBT_B)
_DEBT_SD = math.sqrt(_DEBT_A * _DEBT_B / ((_DEBT_A + _DEBT_B) ** 2 * (_DEBT_A + _DEBT_B + 1)))


def _check_args(n: object, bias: object, seed: object, disadvantaged_fraction: object) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"`n` must be an int >= 1, got {n!r}")
    if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not 0.0 <= float(bias) <= 1.0:
        raise ValueError(f"`bias` must be a number in [0, 1], got {bias!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
    if (
        isinstance(disadvantaged_fraction, bool)
        or not isinstance(disadvantaged_fraction, numbers.Real)
        or not 0.0 < float(disadvantaged_fraction) < 1.0
    ):
        raise ValueError(f"`disadvantaged_fraction` must be a number in (0, 1), got {disadvantaged_fraction!r}")


def make_biased_lending(
    n: int = 10_000,
    bias: float = 0.5,
    seed: int = 0,
    *,
    disadvantaged_fraction: float = 0.3,
    debt_ratio: bool = True,
) -> TabularData:
    """Synthetic loan decisions in which group ``"B"`` is approved less often than its features merit.

    The features have the same distribution in both groups: ``income`` (thousand USD a year,
    log-normal, median 45), ``credit_score`` (normal 650 ± 75, clipped to [300, 850]) and, unless
    ``debt_ratio=False``, ``debt_ratio`` (Beta(2, 5)). An applicant's merit propensity is
    ``p = sigmoid(1.2 z(log income) + 1.5 z(credit_score) - 1.0 z(debt_ratio) + 0.4)`` (``z``:
    standardized with the population constants), computed from the rounded values in the frame.
    With one uniform draw ``u`` per applicant:

    * ``qualified = u < p``: the label without bias (kept for reference, never a feature);
    * ``approved = u < p * (1 - bias)`` for group ``"B"``, ``u < p`` for group ``"A"``: the
      historical decision, the label to learn.

    So ``bias=0`` gives no group effect on the label given the features (and, as the features
    do not depend on the group, no demographic-parity gap beyond sampling noise); ``bias`` scales
    group B's favourable-outcome propensity by ``1 - bias``, and ``bias=1`` approves no one in B.
    Because ``u`` is shared, for a fixed ``seed`` the approvals of group B only shrink as ``bias``
    grows: the demographic-parity gap grows monotonically, by about ``bias * mean(p)``.

    Args:
        n: number of applicants, an int >= 1.
        bias: label bias against group ``"B"``, in [0, 1].
        seed: seed of the random generator (same seed, same applicants for every ``bias``).
        disadvantaged_fraction: probability that an applicant is in group ``"B"``, in (0, 1).
        debt_ratio: include the ``debt_ratio`` feature.

    Returns:
        A :class:`TabularData` named ``"biased_lending"``: target ``approved``, sensitive
        ``group`` (``"A"``, ``"B"``), numeric ``income``, ``credit_score`` (and ``debt_ratio``),
        categorical ``group``, plus the ``qualified`` column; no official split.

    Raises:
        ValueError: if an argument is out of range; the message names it and the value.

    Example:
        >>> data = make_biased_lending(20_000, bias=0.6, seed=1)
        >>> rates = data.frame.groupby("group", observed=True)["approved"].mean()
        >>> bool(rates["A"] - rates["B"] > 0.3)
        True
    """
    _check_args(n, bias, seed, disadvantaged_fraction)
    n, bias = int(n), float(bias)
    rng = np.random.default_rng(int(seed))
    # Draw every column for every row whatever the options, so that options never change the rows.
    group_b = rng.random(n) < float(disadvantaged_fraction)
    income = np.round(np.exp(rng.normal(math.log(_INCOME_MEDIAN), _INCOME_SIGMA, n)), 1)
    credit_score = np.clip(np.round(rng.normal(_SCORE_MEAN, _SCORE_SD, n)), 300, 850).astype(np.int64)
    debt = np.round(rng.beta(_DEBT_A, _DEBT_B, n), 3)
    u = rng.random(n)

    logit = (
        1.2 * (np.log(income) - math.log(_INCOME_MEDIAN)) / _INCOME_SIGMA
        + 1.5 * (credit_score - _SCORE_MEAN) / _SCORE_SD
        + 0.4
    )
    if debt_ratio:
        logit = logit - 1.0 * (debt - _DEBT_MEAN) / _DEBT_SD
    merit = 1.0 / (1.0 + np.exp(-logit))
    propensity = np.where(group_b, merit * (1.0 - bias), merit)

    columns = {"income": income, "credit_score": credit_score}
    if debt_ratio:
        columns["debt_ratio"] = debt
    frame = pd.DataFrame(columns)
    frame["group"] = pd.Categorical(np.where(group_b, "B", "A"), categories=list(LENDING_GROUPS))
    frame["qualified"] = (u < merit).astype(np.int64)
    frame["approved"] = (u < propensity).astype(np.int64)
    numeric = ("income", "credit_score", "debt_ratio") if debt_ratio else ("income", "credit_score")
    return TabularData(
        frame=frame,
        target="approved",
        sensitive=("group",),
        numeric=numeric,
        categorical=("group",),
        name="biased_lending",
        description=(
            f"Synthetic loan decisions (n={n}, bias={bias}, seed={seed}): group B's approval propensity is its "
            f"merit propensity times {1 - bias:.3g}; features are distributed alike in both groups. "
            "`qualified` is the unbiased label, for reference only."
        ),
    )


__all__ = ["LENDING_GROUPS", "make_biased_lending"]
