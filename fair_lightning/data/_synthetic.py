"""Synthetic data sets with known group effects: biased lending (binary), a group-shifted
regression target and group-shifted classes (K classes)."""

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




def _check_number(value: object, name: str, low: float, high: float | None = None, low_open: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
    if not bad:
        bad = float(value) <= low if low_open else float(value) < low
        bad = bad or (high is not None and float(value) >= high)
    if bad:
        rng = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and < {high}")
        raise ValueError(f"`{name}` must be a finite number {rng}, got {value!r}")
    return float(value)


def _groups_and_features(n: int, seed: int, minority_fraction: float, proxy_strength: float, num_features: int):
    """Group B membership, ``num_features`` standard-normal task features (alike in both groups)
    and a proxy ``z ~ N(proxy_strength * [B], 1)`` (the only feature that tells the groups apart)."""
    rng = np.random.default_rng(int(seed))
    group_b = rng.random(n) < minority_fraction
    x = rng.normal(0.0, 1.0, (n, num_features))
    z = rng.normal(0.0, 1.0, n) + proxy_strength * group_b
    return rng, group_b, np.round(x, 4), np.round(z, 4)


def make_group_shift_regression(
    n: int = 10_000,
    shift: float = 2.0,
    seed: int = 0,
    *,
    minority_fraction: float = 0.3,
    proxy_strength: float = 1.0,
    noise: float = 0.5,
) -> TabularData:
    """Synthetic regression with a known shift of the target in group ``"B"``.

    ``y = x1 + 0.5 * x2 + shift * [group == B] + noise * e`` with ``x1, x2, e`` standard normal
    in both groups. The group is not a feature; the proxy ``z ~ N(proxy_strength * [B], 1)`` is,
    so a model recovers part of the shift through it: its group mean predictions differ (a
    demographic-parity gap, up to ``shift``), and, as group B is the minority
    (``minority_fraction``), its mean squared error is larger than group A's (a bounded group
    loss between the two bites). ``shift=0`` gives no group effect.

    Args:
        n: number of rows, an int >= 1.
        shift: the group B offset of the target (any finite number).
        seed: seed of the random generator.
        minority_fraction: probability that a row is in group ``"B"``, in (0, 1).
        proxy_strength: mean of ``z`` in group B (0 in group A), ``>= 0``.
        noise: standard deviation of the target's noise, ``>= 0``.

    Returns:
        A regression :class:`TabularData` named ``"group_shift_regression"``: target ``y``,
        sensitive ``group`` (``"A"``, ``"B"``), numeric ``x1``, ``x2``, ``z``.

    Example:
        >>> data = make_group_shift_regression(20_000, shift=2.0, seed=1)
        >>> means = data.frame.groupby("group", observed=True)["y"].mean()
        >>> bool(abs(means["B"] - means["A"] - 2.0) < 0.05)
        True
    """
    _check_args(n, 0.0, seed, minority_fraction)
    shift = _check_number(shift, "shift", -math.inf)
    proxy_strength = _check_number(proxy_strength, "proxy_strength", 0.0)
    noise = _check_number(noise, "noise", 0.0)
    rng, group_b, x, z = _groups_and_features(int(n), seed, float(minority_fraction), proxy_strength, 2)
    y = x[:, 0] + 0.5 * x[:, 1] + shift * group_b + noise * rng.normal(0.0, 1.0, int(n))
    frame = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "z": z})
    frame["group"] = pd.Categorical(np.where(group_b, "B", "A"), categories=list(LENDING_GROUPS))
    frame["y"] = y
    return TabularData(
        frame=frame,
        target="y",
        sensitive=("group",),
        numeric=("x1", "x2", "z"),
        categorical=("group",),
        name="group_shift_regression",
        description=(
            f"Synthetic regression (n={n}, shift={shift}, seed={seed}): y = x1 + 0.5 x2 + {shift} [group B] + "
            f"{noise} e; the proxy z has mean {proxy_strength} in group B and 0 in group A."
        ),
        task="regression",
    )


def make_group_shift_classes(
    n: int = 10_000,
    num_classes: int = 3,
    shift: float = 1.5,
    seed: int = 0,
    *,
    minority_fraction: float = 0.3,
    proxy_strength: float = 1.0,
) -> TabularData:
    """Synthetic K-class data in which group ``"B"`` is shifted from the first class to the last.

    Class logits ``x @ W + shift * [group == B] * (e_{K-1} - e_0)`` with four standard-normal
    features ``x`` (alike in both groups) and fixed weights ``W`` (drawn from the seed); the
    class is drawn from their softmax. The group is not a feature; the proxy
    ``z ~ N(proxy_strength * [B], 1)`` is, so a model's class rates differ by group (a
    per-class demographic-parity gap). ``shift=0`` gives no group effect.

    Args:
        n: number of rows, an int >= 1.
        num_classes: ``K``, an int >= 2.
        shift: the group B shift of the logits (any finite number).
        seed: seed of the random generator.
        minority_fraction: probability that a row is in group ``"B"``, in (0, 1).
        proxy_strength: mean of ``z`` in group B (0 in group A), ``>= 0``.

    Returns:
        A multiclass :class:`TabularData` named ``"group_shift_classes"``: target ``label``
        (``0..K-1``), sensitive ``group`` (``"A"``, ``"B"``), numeric ``x1``..``x4``, ``z``.
    """
    _check_args(n, 0.0, seed, minority_fraction)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
    shift = _check_number(shift, "shift", -math.inf)
    proxy_strength = _check_number(proxy_strength, "proxy_strength", 0.0)
    k = int(num_classes)
    rng, group_b, x, z = _groups_and_features(int(n), seed, float(minority_fraction), proxy_strength, 4)
    weights = rng.normal(0.0, 1.0, (4, k))
    logits = x @ weights
    logits[:, 0] -= shift * group_b
    logits[:, -1] += shift * group_b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    label = (rng.random(int(n))[:, None] > probs.cumsum(1)).sum(1).clip(0, k - 1)
    frame = pd.DataFrame({f"x{i + 1}": x[:, i] for i in range(4)})
    frame["z"] = z
    frame["group"] = pd.Categorical(np.where(group_b, "B", "A"), categories=list(LENDING_GROUPS))
    frame["label"] = label.astype(np.int64)
    return TabularData(
        frame=frame,
        target="label",
        sensitive=("group",),
        numeric=("x1", "x2", "x3", "x4", "z"),
        categorical=("group",),
        name="group_shift_classes",
        description=(
            f"Synthetic {k}-class data (n={n}, shift={shift}, seed={seed}): group B's logits move by {shift} from "
            f"class 0 to class {k - 1}; the proxy z has mean {proxy_strength} in group B and 0 in group A."
        ),
        task="multiclass",
    )


__all__ = ["LENDING_GROUPS", "make_biased_lending", "make_group_shift_classes", "make_group_shift_regression"]
