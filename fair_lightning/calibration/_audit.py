"""Multicalibration audit: calibration of every subgroup up to a given intersection order.

Every statistic comes from the functional core in one pass: the rows ``(sample, subgroup)`` of
all subgroups are stacked (a sample belongs to one subgroup per attribute subset) and reduced by
:func:`~fair_lightning.functional.calibration_sums` (counts, score and label sums per bin, hence
ECE, mean score and mean label) and :func:`~fair_lightning.functional.grouped_sum` (first and
second moments of the residual ``label - prob`` for the test).

Test against the parent. A subgroup of order ``k >= 1`` has ``k`` parents of order ``k - 1``
(drop one attribute; order 1's parent is everyone). Its calibration gap
``mean(label - prob)`` is compared with the gap of the *rest* of the parent (parent minus
subgroup) by a two-sided Welch z-test; since the parent's gap is the count-weighted average of
the two, this tests ``gap(subgroup) == gap(parent)`` with independent samples. With several
parents the reported one is the parent the subgroup differs *least* from (largest p-value): a
flagged intersection is miscalibrated beyond what every one of its parents shows. The p-values
are not corrected for multiple testing; the ``flagged`` column applies a Bonferroni correction
over the tests that were run (``p_value < alpha / number of tests``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fair_lightning.calibration._inputs import as_tensor, check_in_unit_interval
from fair_lightning.functional import (
    calibration_error_from_sums,
    calibration_sums,
    check_binary_target,
    check_scores,
    grouped_sum,
)
from fair_lightning.groups import GroupSpec

AUDIT_COLUMNS = (
    "subgroup",
    "order",
    "count",
    "mean_score",
    "mean_label",
    "gap",
    "ece",
    "too_small",
    "parent",
    "parent_gap",
    "z",
    "p_value",
    "flagged",
)
EVERYONE = "all"


def multicalibration_audit(
    probs: Any,
    labels: Any,
    sensitive: Any,
    group_spec: GroupSpec | Sequence[str] | str | None = None,
    *,
    max_order: int = 2,
    n_bins: int = 10,
    min_size: int = 30,
    alpha: float = 0.05,
):
    """Calibration of every subgroup defined by up to ``max_order`` sensitive attributes.

    Args:
        probs: ``(N,)`` predicted probabilities in ``[0, 1]`` (tensor or array-like).
        labels: ``(N,)`` binary labels.
        sensitive: ``(N, A)`` (or ``(N,)``) non-negative integer attribute codes, or a pandas
            ``DataFrame`` / ``Series`` of categorical columns.
        group_spec: names and levels of the attributes: a
            :class:`~fair_lightning.groups.GroupSpec` (codes, or frame values matched to its
            level names), or attribute names: the frame's columns to use (default: all), or
            names for the code columns (default ``attr_0, attr_1, ...``, levels named by code).
        max_order: largest number of attributes in an intersection (0: everyone only).
        n_bins: equal-width probability bins of the ECE.
        min_size: subgroups with fewer samples are marked ``too_small`` and not tested.
        alpha: family-wise level of the ``flagged`` column (Bonferroni over the tests run).

    Returns:
        ``pandas.DataFrame``, one row per subgroup (empty intersections included, with count 0),
        ordered by ``order``, then attribute subset and levels in spec order, with columns:

        * ``subgroup``: ``"all"`` or ``"sex=Female&race=Black"``; ``order``: number of attributes;
        * ``count``; ``mean_score``; ``mean_label``; ``gap`` = ``mean_label - mean_score``;
        * ``ece``: expected calibration error over ``n_bins`` bins (biased upwards for small
          subgroups);
        * ``too_small``: ``count < min_size``;
        * ``parent``, ``parent_gap``, ``z``, ``p_value``: the test against the parent described in
          the module docstring (missing / NaN when not run: order 0, too small, or no other samples
          in the parent);
        * ``flagged``: ``p_value < alpha / number of tests``.
    """
    import pandas as pd

    p, _ = as_tensor(probs, "probs")
    p = check_scores(p, "probs")
    check_in_unit_interval(p, "probs")
    n = p.numel()
    y, _ = as_tensor(labels, "labels")
    y = check_binary_target(y, n, "labels")
    p, y = p.detach().cpu().double(), y.detach().cpu().double()
    if sensitive is None:
        raise ValueError(
            "`sensitive` is required: the sensitive attribute codes, shape (N,) or (N, A), or a pandas DataFrame "
            "of categorical columns; got None"
        )
    spec, codes = _sensitive_codes(sensitive, group_spec, n)
    if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or max_order < 0:
        raise ValueError(f"`max_order` must be an int >= 0, got {max_order!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive int, got {n_bins!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"`min_size` must be an int >= 0, got {min_size!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}")

    names, orders, parents, unit_columns = _subgroups(spec, codes, min(int(max_order), len(spec.sizes)))
    num_units = len(names)
    unit = torch.cat(unit_columns)
    sample = torch.arange(n).repeat(len(unit_columns))
    sums = calibration_sums(p[sample], y[sample], unit, num_units, n_bins=int(n_bins), validate_args=False)
    ece = calibration_error_from_sums(sums, "l1")
    count, score_sum, label_sum = sums.sum(1).unbind(-1)
    residual = y - p
    moments = grouped_sum(torch.stack((residual, residual * residual), 1)[sample], unit, num_units)
    test = _parent_tests(count, moments, parents, int(min_size))

    nan = float("nan")
    has = count > 0
    safe = torch.where(has, count, torch.ones_like(count))
    mean_score = torch.where(has, score_sum / safe, torch.full_like(count, nan))
    mean_label = torch.where(has, label_sum / safe, torch.full_like(count, nan))
    p_value = test["p_value"]
    tested = torch.isfinite(p_value)
    n_tests = int(tested.sum())
    flagged = tested & (p_value < alpha / max(n_tests, 1))
    frame = pd.DataFrame(
        {
            "subgroup": names,
            "order": orders,
            "count": count.round().long().tolist(),
            "mean_score": mean_score.tolist(),
            "mean_label": mean_label.tolist(),
            "gap": (mean_label - mean_score).tolist(),
            "ece": torch.where(ece.valid, ece.value, torch.full_like(ece.value, nan)).tolist(),
            "too_small": (count < min_size).tolist(),
            "parent": [names[j] if j >= 0 else None for j in test["parent"]],
            "parent_gap": [(mean_label[j] - mean_score[j]).item() if j >= 0 else nan for j in test["parent"]],
            "z": test["z"].tolist(),
            "p_value": p_value.tolist(),
            "flagged": flagged.tolist(),
        },
        columns=list(AUDIT_COLUMNS),
    )
    return frame


def _sensitive_codes(sensitive: Any, group_spec: Any, n: int) -> tuple[GroupSpec, Tensor]:
    """``(spec, (N, A) codes)`` from a frame or integer codes and a spec or attribute names."""
    import pandas as pd

    if isinstance(sensitive, pd.Series):
        sensitive = sensitive.to_frame(name=sensitive.name if sensitive.name is not None else "attr_0")
    if group_spec is not None and not isinstance(group_spec, GroupSpec):
        group_spec = [group_spec] if isinstance(group_spec, str) else list(group_spec)
        if not all(isinstance(name, str) for name in group_spec):
            raise ValueError(f"`group_spec` must be a GroupSpec or attribute names (str), got {group_spec!r}")
    if isinstance(sensitive, pd.DataFrame):
        if len(sensitive) != n:
            raise ValueError(f"`sensitive` must have the same length as `probs` ({n}), got {len(sensitive)}")
        if isinstance(group_spec, GroupSpec):
            spec = group_spec
            missing = [c for c in spec.attribute_names if c not in sensitive.columns]
            if missing:
                raise ValueError(f"`sensitive` lacks the `group_spec` attributes {missing}; columns: {list(sensitive.columns)}")
            columns = []
            for attr, levels in spec.attributes.items():
                col = pd.Categorical(sensitive[attr].astype(str), categories=list(levels)).codes.astype(np.int64)
                if (col < 0).any():
                    bad = sorted(set(sensitive[attr].astype(str)[col < 0]))[:5]
                    raise ValueError(
                        f"`sensitive` column {attr!r} has values not among the `group_spec` levels {list(levels)}: {bad}"
                    )
                columns.append(torch.from_numpy(col))
            return spec, torch.stack(columns, 1)
        spec, ids = GroupSpec.from_frame(sensitive, group_spec if group_spec is not None else list(sensitive.columns))
        return spec, spec.decode(ids)

    codes, _ = as_tensor(sensitive, "sensitive")
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2 or codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(
            f"`sensitive` must be (N, A) integer codes or a DataFrame, got a tensor of shape {tuple(codes.shape)} "
            f"and dtype {codes.dtype}"
        )
    if codes.shape[0] != n:
        raise ValueError(f"`sensitive` must have the same length as `probs` ({n}), got {codes.shape[0]}")
    codes = codes.long().cpu()
    if n and int(codes.min()) < 0:
        raise ValueError(f"`sensitive` must be non-negative integer codes, got minimum {int(codes.min())}")
    if isinstance(group_spec, GroupSpec):
        try:
            group_spec.encode(codes)
        except ValueError as err:
            raise ValueError(f"`sensitive` does not match `group_spec`: {err}") from None
        return group_spec, codes
    names = group_spec if group_spec is not None else [f"attr_{j}" for j in range(codes.shape[1])]
    if len(names) != codes.shape[1]:
        raise ValueError(f"`group_spec` names {names} must match the {codes.shape[1]} columns of `sensitive`")
    top = codes.amax(0).tolist() if n else [0] * codes.shape[1]
    return GroupSpec({name: [str(c) for c in range(hi + 1)] for name, hi in zip(names, top)}), codes


def _subgroups(spec: GroupSpec, codes: Tensor, max_order: int):
    """Names, orders, parent units and per-subset ``(N,)`` unit ids of every subgroup."""
    attrs = list(spec.attributes.items())
    names, orders, parents, columns = [], [], [], []
    index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    for order in range(max_order + 1):
        for subset in itertools.combinations(range(len(attrs)), order):
            sizes = [len(attrs[j][1]) for j in subset]
            offset = len(names)
            ids = torch.zeros(codes.shape[0], dtype=torch.long)
            for j, size in zip(subset, sizes):  # first attribute most significant
                ids = ids * size + codes[:, j]
            columns.append(offset + ids)
            for levels in itertools.product(*(range(size) for size in sizes)):
                index[(subset, levels)] = len(names)
                names.append("&".join(f"{attrs[j][0]}={attrs[j][1][c]}" for j, c in zip(subset, levels)) or EVERYONE)
                orders.append(order)
                parents.append(
                    [index[(subset[:k] + subset[k + 1 :], levels[:k] + levels[k + 1 :])] for k in range(order)]
                )
    return names, orders, parents, columns


def _parent_tests(count: Tensor, moments: Tensor, parents: list[list[int]], min_size: int) -> dict[str, Any]:
    """Welch z-test of each subgroup's residual mean against the rest of each parent; keep the max p."""
    pairs = [(s, q) for s, ps in enumerate(parents) for q in ps]
    num = len(parents)
    nan = torch.full((num,), float("nan"), dtype=torch.float64)
    result = {"parent": [-1] * num, "z": nan.clone(), "p_value": nan.clone()}
    if not pairs:
        return result
    child, parent = (torch.tensor(c) for c in zip(*pairs))
    n_s, n_c = count[child], count[parent] - count[child]
    s1_s, s2_s = moments[child, 0], moments[child, 1]
    s1_c, s2_c = moments[parent, 0] - s1_s, moments[parent, 1] - s2_s
    valid = (n_s >= max(min_size, 2)) & (n_c >= 2)
    n_s_safe, n_c_safe = n_s.clamp_min(2), n_c.clamp_min(2)
    mean_s, mean_c = s1_s / n_s_safe, s1_c / n_c_safe
    var_s = ((s2_s - n_s_safe * mean_s**2) / (n_s_safe - 1)).clamp_min(0)
    var_c = ((s2_c - n_c_safe * mean_c**2) / (n_c_safe - 1)).clamp_min(0)
    se2 = var_s / n_s_safe + var_c / n_c_safe
    valid &= se2 > 0
    z = (mean_s - mean_c) / se2.clamp_min(1e-300).sqrt()
    p_value = torch.special.erfc(z.abs() / math.sqrt(2))
    for k in torch.nonzero(valid).flatten().tolist():
        s = int(child[k])
        if not p_value[k] <= result["p_value"][s]:  # first valid pair, or a larger p-value
            result["parent"][s], result["z"][s], result["p_value"][s] = int(parent[k]), z[k], p_value[k]
    return result


__all__ = ["AUDIT_COLUMNS", "multicalibration_audit"]
