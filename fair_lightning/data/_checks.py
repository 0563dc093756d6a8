"""Checks on what a data set hands to the model: finite features, groups in every split, categorical sensitive columns."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: A sensitive column with more distinct values than this looks continuous.
MAX_SENSITIVE_LEVELS = 50
#: A group with fewer rows than this in a split gets a warning (its rates are noise).
SMALL_GROUP_ROWS = 10
#: Fewest rows TabularDataModule accepts (train, validation and test splits with every group).
MIN_ROWS = 100


def check_finite_features(frame: pd.DataFrame, columns: Sequence[str], name: str = "data") -> None:
    """Raise ``ValueError`` naming the first numeric feature column that holds +-inf.

    Args:
        frame: the data.
        columns: numeric feature columns to check.
        name: the data set's name, for the message.
    """
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isinf(values)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(
                f"feature column {col!r} of data set {name!r} holds {int(bad.sum())} infinite value(s) (rows {rows}); "
                "replace or drop them before training (standardization would turn them into NaN)"
            )


def check_groups_in_splits(
    split_groups: Mapping[str, np.ndarray],
    group_names: Sequence[str],
    *,
    name: str = "data",
    fractions: Mapping[str, float] | None = None,
    small: int = SMALL_GROUP_ROWS,
    min_rows: int = MIN_ROWS,
) -> None:
    """Refuse a data set too small to split; warn about groups missing from, or tiny in, a split.

    Args:
        split_groups: split name -> group ids of its rows.
        group_names: name of each group id.
        name: the data set's name, for the messages.
        fractions: held-out fractions (``{"val": 0.2, "test": 0.2}``), for the messages.
        small: rows per split below which a group gets a warning.
        min_rows: fewest rows in all.

    Raises:
        ValueError: fewer than ``min_rows`` rows, naming the size, the minimum, and the splits'
            sizes and missing groups.
    """
    num_groups = len(group_names)
    counts = {s: np.bincount(np.asarray(g, dtype=np.int64), minlength=num_groups) for s, g in split_groups.items()}
    total = sum(counts.values())
    size = int(total.sum())
    missing = {s: [g for g in range(num_groups) if total[g] > 0 and c[g] == 0] for s, c in counts.items()}
    if size < min_rows:
        sizes = {s: int(c.sum()) for s, c in counts.items()}
        empty = {s: [group_names[g] for g in gs] for s, gs in missing.items() if gs}
        raise ValueError(
            f"data set {name!r} has {size} rows; TabularDataModule needs at least {min_rows} to hold out validation "
            f"and test splits (held-out fractions {dict(fractions or {})} gave {sizes}"
            + (f"; groups with no row in a split: {empty}" if empty else "")
            + ")"
        )
    for split, per_group in counts.items():
        if missing[split]:
            listed = ", ".join(f"{group_names[g]!r} ({int(total[g])} rows in all)" for g in missing[split][:5])
            warnings.warn(
                f"the {split!r} split of data set {name!r} ({size} rows) has no row of group(s) {listed}: their rates "
                "there are undefined (metrics and constraints skip them); use coarser groups or more data",
                UserWarning,
                stacklevel=3,
            )
        few = [g for g in range(num_groups) if 0 < per_group[g] < small]
        if few:
            listed = ", ".join(f"{group_names[g]!r} ({int(per_group[g])})" for g in few[:5])
            warnings.warn(
                f"the {split!r} split of data set {name!r} has fewer than {small} rows of group(s) {listed}: "
                "their rates there are mostly noise",
                UserWarning,
                stacklevel=3,
            )


def check_sensitive_levels(values: object, name: str = "sensitive", *, max_levels: int = MAX_SENSITIVE_LEVELS) -> None:
    """Warn when a sensitive column looks continuous rather than categorical.

    A column with more than ``max_levels`` distinct values, or in which most levels hold a single
    row (with more than 10 rows in all), makes one group per value: rates over groups of one row
    are 0 or 1 and every constraint is noise. Bin it first (e.g. age into ``age > 25``).

    Args:
        values: the column (array-like, pandas Series or tensor of one attribute's values).
        name: the column's name, for the message.
        max_levels: most distinct values before the warning.

    Returns:
        ``None``; warns (``UserWarning``) when the column looks continuous.
    """
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    series = pd.Series(np.asarray(values).reshape(-1) if not isinstance(values, pd.Series) else values)
    n = len(series)
    counts = series.value_counts(dropna=False)
    levels = len(counts)
    singletons = int((counts == 1).sum())
    if levels > max_levels or (n > 10 and singletons > levels / 2):
        warnings.warn(
            f"sensitive column {name!r} looks continuous: {levels} distinct values in {n} rows "
            f"({singletons} of them held by a single row). Each value becomes a group, so group rates are noise; "
            "bin it into a few levels first (e.g. age > 25).",
            UserWarning,
            stacklevel=2,
        )


__all__ = ["MAX_SENSITIVE_LEVELS", "MIN_ROWS", "SMALL_GROUP_ROWS", "check_finite_features", "check_groups_in_splits", "check_sensitive_levels"]
