"""The one container every data set of fair-lightning comes in: :class:`TabularData`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SPLIT_LEVELS = ("train", "test")
#: what the target column holds: 0/1 labels, class indices ``0..K-1``, or continuous values
TASKS = ("binary", "multiclass", "regression")


def _as_names(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a column name or a sequence of column names, got {value!r}") from None
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"`{name}` must contain column names (str), got {value!r}")
    return names


@dataclass(frozen=True, eq=False)
class TabularData:
    """A tabular fairness data set: one frame plus the roles of its columns.

    ``numeric`` and ``categorical`` list the candidate feature columns; they may include
    sensitive columns (Adult's ``sex`` and ``race`` are ordinary attributes of a person).
    :class:`~fair_lightning.data.TabularDataModule` leaves the sensitive columns it groups by,
    and their ``proxies``, out of the model's features unless asked otherwise.

    Args:
        frame: one row per individual. The target column holds 0/1 integers (1 = favourable
            outcome) for ``task="binary"``, class indices ``0..K-1`` for ``"multiclass"``, finite
            numbers for ``"regression"``; sensitive columns are categorical (pandas ``category``
            dtype).
        target: name of the label (or regression target) column.
        sensitive: names of the sensitive columns, the usual one first.
        numeric: names of the numeric feature columns.
        categorical: names of the categorical feature columns.
        name: short name of the data set (``"adult"``).
        description: one paragraph on what the data is and how it was prepared.
        split: optional ``"train"``/``"test"`` labels aligned with ``frame`` (the publisher's
            official split), or ``None`` where there is none.
        proxies: feature columns from which a sensitive column is computed exactly, e.g.
            German credit's ``{"age_group": ("age",)}``; they are dropped together with it.
        task: ``"binary"`` (default), ``"multiclass"`` or ``"regression"``: what ``target`` holds.

    Example:
        >>> from fair_lightning.data import load_german
        >>> data = load_german()
        >>> data.X.shape, data.y.mean(), data.sensitive
        ((1000, 22), np.float64(0.7), ('age_group', 'sex'))
    """

    frame: pd.DataFrame
    target: str
    sensitive: tuple[str, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    name: str = "tabular"
    description: str = ""
    split: pd.Series | None = None
    proxies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    task: str = "binary"

    def __post_init__(self) -> None:
        if not isinstance(self.frame, pd.DataFrame):
            raise ValueError(f"`frame` must be a pandas DataFrame, got {type(self.frame).__name__}")
        for attr in ("sensitive", "numeric", "categorical"):
            object.__setattr__(self, attr, _as_names(getattr(self, attr), attr))
        object.__setattr__(self, "proxies", {str(k): _as_names(v, "proxies") for k, v in dict(self.proxies).items()})
        columns = set(self.frame.columns)
        if self.target not in columns:
            raise ValueError(f"`target` {self.target!r} is not a column of `frame`; available: {list(self.frame.columns)}")
        for attr in ("sensitive", "numeric", "categorical"):
            missing = [c for c in getattr(self, attr) if c not in columns]
            if missing:
                raise ValueError(f"`{attr}` columns {missing} are not in `frame`; available: {list(self.frame.columns)}")
        if not self.sensitive:
            raise ValueError("`sensitive` must name at least one column, got an empty sequence")
        for sens, cols in self.proxies.items():
            if sens not in self.sensitive:
                raise ValueError(f"`proxies` key {sens!r} must be one of `sensitive` {list(self.sensitive)}")
            missing = [c for c in cols if c not in columns]
            if missing:
                raise ValueError(f"`proxies` of {sens!r}: columns {missing} are not in `frame`")
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise ValueError(f"columns {sorted(overlap)} are listed in both `numeric` and `categorical`")
        if self.target in self.numeric or self.target in self.categorical:
            raise ValueError(f"`target` {self.target!r} must not also be a feature column")
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {list(TASKS)}, got {self.task!r}")
        labels = self.frame[self.target]
        if self.task == "binary" and (labels.isna().any() or not labels.isin([0, 1]).all()):
            raise ValueError(f"`target` column {self.target!r} must hold only 0 and 1, got values {sorted(labels.unique())[:5]}")
        if self.task == "multiclass":
            values = pd.to_numeric(labels, errors="coerce")
            if values.isna().any() or (values < 0).any() or (values != np.floor(values)).any() or values.nunique() < 2:
                raise ValueError(
                    f"`target` column {self.target!r} of a multiclass data set must hold class indices 0, 1, ... "
                    f"(at least two classes), got values {sorted(labels.unique())[:5]}"
                )
        if self.task == "regression":
            values = pd.to_numeric(labels, errors="coerce")
            if not np.isfinite(values.to_numpy(dtype=np.float64)).all():
                raise ValueError(f"`target` column {self.target!r} of a regression data set must hold finite numbers")
        if self.split is not None:
            split = pd.Series(self.split)
            if len(split) != len(self.frame):
                raise ValueError(f"`split` must have one label per row ({len(self.frame)}), got {len(split)}")
            bad = sorted(set(split.astype(str)) - set(SPLIT_LEVELS))
            if bad:
                raise ValueError(f"`split` must hold only {list(SPLIT_LEVELS)}, got {bad}")
            object.__setattr__(self, "split", pd.Series(split.astype(str).to_numpy(), index=self.frame.index, name="split"))

    # --- views ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    @property
    def features(self) -> tuple[str, ...]:
        """All feature columns: ``numeric`` then ``categorical``."""
        return self.numeric + self.categorical

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 (the scikit-learn name)
        """The feature columns (``numeric`` then ``categorical``), sensitive ones included."""
        return self.frame[list(self.features)]

    @property
    def y(self) -> pd.Series:
        """The target: 0/1 labels, class indices or regression values (see ``task``)."""
        return self.frame[self.target]

    @property
    def num_classes(self) -> int | None:
        """``K`` (the largest class index + 1) for a multiclass data set, else ``None``."""
        return int(self.y.max()) + 1 if self.task == "multiclass" else None

    @property
    def sensitive_frame(self) -> pd.DataFrame:
        """The sensitive columns, the form fairlearn's ``sensitive_features`` takes."""
        return self.frame[list(self.sensitive)]

    def subset(self, which: str) -> TabularData:
        """The rows of one official split (``"train"`` or ``"test"``) as a new container.

        Raises:
            ValueError: if the data set has no official split or ``which`` is not a split name.
        """
        if self.split is None:
            raise ValueError(f"data set {self.name!r} has no official split")
        if which not in SPLIT_LEVELS:
            raise ValueError(f"`which` must be one of {list(SPLIT_LEVELS)}, got {which!r}")
        mask = (self.split == which).to_numpy()
        return TabularData(
            frame=self.frame.loc[mask].reset_index(drop=True),
            target=self.target,
            sensitive=self.sensitive,
            numeric=self.numeric,
            categorical=self.categorical,
            name=f"{self.name}[{which}]",
            description=self.description,
            split=None,
            proxies=self.proxies,
            task=self.task,
        )

    def __repr__(self) -> str:
        split = "" if self.split is None else f", split={self.split.value_counts().to_dict()}"
        return (
            f"TabularData(name={self.name!r}, rows={len(self.frame)}, target={self.target!r}"
            f"{'' if self.task == 'binary' else f', task={self.task!r}'}, "
            f"sensitive={list(self.sensitive)}, numeric={len(self.numeric)}, categorical={len(self.categorical)}{split})"
        )


def categorize(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Give ``columns`` a pandas ``category`` dtype with sorted levels (what ``GroupSpec`` uses)."""
    frame = frame.copy()
    for col in columns:
        values = frame[col].astype(str)
        frame[col] = pd.Categorical(values, categories=sorted(np.unique(values.to_numpy())))
    return frame


__all__ = ["SPLIT_LEVELS", "TASKS", "TabularData", "categorize"]
