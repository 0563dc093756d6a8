"""``TabularDataModule``: a data set, its group ids and a fast in-memory batch path for Lightning."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader  # the return type of the hooks

from fair_lightning.data._batching import (
    BatchIndexSampler,
    GroupStratifiedBatchSampler,
    InMemoryDataLoader,
    TensorBatchDataset,
    no_collate,
)
from fair_lightning.data._checks import check_finite_features, check_groups_in_splits, check_sensitive_levels
from fair_lightning.data._container import TabularData
from fair_lightning.data._datasets import BUNDLED, fetch, load_adult, load_census_kdd, load_compas, load_german
from fair_lightning.data._synthetic import make_biased_lending, make_group_shift_classes, make_group_shift_regression
from fair_lightning.groups import GroupSpec

#: Data sets known by name: name -> function returning a :class:`TabularData`.
DATASETS: dict[str, Callable[..., TabularData]] = {
    "adult": load_adult,
    "compas": load_compas,
    "german": load_german,
    "census_kdd": load_census_kdd,
    "biased_lending": make_biased_lending,
    "group_shift_regression": make_group_shift_regression,
    "group_shift_classes": make_group_shift_classes,
}
SPLITS = ("train", "val", "test")


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"`{name}` must be a number in (0, 1), got {value!r}")
    return float(value)


def stratified_folds(keys: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold id in ``[0, folds)`` for each row, stratified on ``keys``.

    Each stratum's rows, in random order, are dealt round-robin from a random first fold, so
    every fold holds within one row of its share of every stratum.
    """
    fold = np.empty(len(keys), dtype=np.int64)
    for key in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == key))
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def stratified_split(
    index: np.ndarray, keys: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into ``(kept, held_out)`` holding out ``fraction`` of every stratum.

    Each stratum (distinct value of ``keys``) gives ``floor(fraction * n_s)`` rows, and the
    remaining ``round(fraction * N) - sum(floor(...))`` rows go to the strata with the largest
    remainders (ties broken at random): the held-out size is exactly ``round(fraction * N)`` and
    every stratum is within one row of its share. Rows are chosen at random within strata.

    Args:
        index: row positions to split.
        keys: stratum of each row of ``index`` (e.g. ``label * num_groups + group``).
        fraction: share to hold out, in (0, 1).
        rng: numpy random generator.

    Returns:
        Sorted row positions kept and held out.
    """
    perm = rng.permutation(len(index))
    index, keys = index[perm], keys[perm]
    order = np.argsort(keys, kind="stable")
    index, keys = index[order], keys[order]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    share = fraction * counts
    n_held = np.floor(share).astype(np.int64)
    extra = int(round(fraction * len(index))) - int(n_held.sum())
    if extra > 0:
        by_remainder = np.lexsort((rng.random(len(counts)), -(share - n_held)))
        n_held[by_remainder[:extra]] += 1
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(index)) - starts[inverse]
    held = rank < n_held[inverse]
    return np.sort(index[~held]), np.sort(index[held])


class TabularDataModule(pl.LightningDataModule):
    """A tabular fairness data set as train / val / test tensors of ``(x, y, groups)`` batches.

    After :meth:`setup`:

    * ``groups`` are intersectional group ids from
      :meth:`~fair_lightning.groups.GroupSpec.from_frame` over the ``sensitive`` columns
      (names like ``"sex=Female&race=Black"``, see :attr:`group_names`);
    * features are the data set's numeric columns, standardized, and its categorical columns,
      one-hot encoded, with means, scales and categories fitted on the **training split only**
      (:attr:`preprocessor`); a category unseen in training encodes as all zeros;
    * the sensitive columns grouped by, and their ``proxies`` (columns that determine them, such
      as German credit's ``age`` for ``age_group``), are left out of the features unless
      ``include_sensitive=True`` ("fairness through unawareness" is the default baseline; it
      does not remove correlated features);
    * the test split is the official one where the data set has it (Adult) and
      ``official_split`` is true, else a held-out ``test_fraction``; the validation split is
      ``val_fraction`` of the remaining training rows, or with ``cv_folds=K`` fold ``cv_fold`` of
      ``K`` folds of them (see ``cv_folds``). Held-out splits are stratified on
      ``(label, group)`` (:func:`stratified_split`; for regression the label is the target's
      quartile); they depend only on the labels, the groups and ``seed``.

    Batches are tuples ``(x, y, groups)``: ``x`` float32 ``(B, num_features)``, ``y`` float32
    ``(B,)`` of 0/1 labels (ready for ``BCEWithLogitsLoss``), of class indices for a multiclass
    data set (``y.long()`` for ``cross_entropy``) or of regression targets (:attr:`task`),
    ``groups`` int64 ``(B,)`` group ids (``group_spec.decode(groups)`` gives the per-attribute
    codes). They are served from in-memory tensors a whole batch at a time: a batch sampler yields
    one index tensor per batch, :class:`~fair_lightning.data.TensorBatchDataset` gathers it with
    one ``index_select`` per tensor, and :class:`~fair_lightning.data.InMemoryDataLoader` (a
    ``DataLoader``) passes it on with no per-row collate. A training epoch is ``ceil(N / batch_size)`` batches of
    near-equal size (none larger than ``batch_size``, no tiny last batch); with
    ``stratified_batches=True`` every batch contains every group
    (:class:`~fair_lightning.data.GroupStratifiedBatchSampler`).

    Resuming: an epoch's batch order depends only on ``seed`` and the epoch, and the training
    loader is stateful (:meth:`~fair_lightning.data.InMemoryDataLoader.state_dict`): a checkpoint
    written mid-epoch (``ModelCheckpoint(every_n_train_steps=...)``, or after a mid-epoch
    validation) records how many of the epoch's batches were handed out, and
    ``trainer.fit(..., ckpt_path=...)`` goes on with the next one, so the resumed run sees the
    same batches as an uninterrupted one.

    Distributed training (DDP): ``batch_size`` is per process. The number of batches of every
    split is a multiple of the world size and all ranks draw the same batch list, which
    Lightning's default sampler replacement (``use_distributed_sampler=True``) shards by rank:
    each rank gets a disjoint share of the batches, and together they cover each split exactly
    once (validation and test included, so evaluation sums are exact). With
    ``Trainer(use_distributed_sampler=False)`` every rank iterates all batches.

    Args:
        dataset: a name from :data:`DATASETS` (``"adult"``, ``"compas"``, ``"german"``,
            ``"biased_lending"``) or a :class:`TabularData`.
        sensitive: the sensitive column(s) to group by; default: the data set's first. Any of
            the data set's sensitive or categorical columns may be used.
        batch_size: training batch size (per process), an int >= 1.
        eval_batch_size: validation / test / predict batch size; default ``batch_size``.
        val_fraction: share of the training rows held out for validation, in (0, 1); default
            0.2. Not with ``cv_folds``, whose folds set the validation split.
        test_fraction: share of all rows held out for testing when there is no official
            split (or ``official_split=False``), in (0, 1).
        official_split: use the publisher's test split where there is one.
        include_sensitive: keep the sensitive columns (and their proxies) among the features.
        stratified_batches: every training batch contains every group (see above).
        seed: fixes the splits and the batch order.
        cv_folds: 0 (default) for one train / validation split; an int ``K >= 2`` deals the
            non-test rows into ``K`` folds stratified on ``(label, group)`` (fixed by ``seed``)
            and makes fold ``cv_fold`` the validation split and the other folds the training
            split. The test split does not depend on it. The feature preprocessing (scaling,
            one-hot levels) is then fitted on all non-test rows, features only, so that every
            fold's model reads the same features. Training one model per fold gives every
            non-test row a score from a model that did not see it: cross-validation, or
            cross-fitting (:func:`fair_lightning.crossfit.cross_fit`: group thresholds fitted on
            all those scores, ``K`` times the validation rows).
        cv_fold: which fold is the validation split, in ``[0, cv_folds)``.
        num_workers: DataLoader worker processes; 0 (default) is fastest for in-memory data.
        pin_memory: pin batches in page-locked memory (for GPU training).
        dataset_kwargs: keyword arguments of the loading function, e.g.
            ``{"source": "download"}`` or, for ``"biased_lending"``, ``{"n": 5000, "bias": 0.8}``.

    Raises:
        ValueError: for an unknown data set name (the valid ones are listed), a fraction outside
            (0, 1), ``batch_size < 1``, and (at construction for a :class:`TabularData`, else in
            :meth:`setup`) an unknown sensitive column (the available ones are listed).

    Example:
        >>> dm = TabularDataModule("adult", sensitive=["sex", "race"], batch_size=256)
        >>> dm.setup()
        >>> dm.num_groups, dm.group_names[0], [t.dtype for t in dm.train_tensors]
        (10, 'sex=Female&race=Amer-Indian-Eskimo', [torch.float32, torch.float32, torch.int64])
    """

    def __init__(
        self,
        dataset: str | TabularData = "adult",
        *,
        sensitive: str | Sequence[str] | None = None,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        val_fraction: float | None = None,
        test_fraction: float = 0.2,
        official_split: bool = True,
        include_sensitive: bool = False,
        stratified_batches: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        dataset_kwargs: Mapping[str, Any] | None = None,
        cv_folds: int = 0,
        cv_fold: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(dataset, str):
            if dataset not in DATASETS:
                raise ValueError(f"`dataset` must be one of {sorted(DATASETS)} or a TabularData, got {dataset!r}")
        elif not isinstance(dataset, TabularData):
            raise ValueError(
                f"`dataset` must be one of {sorted(DATASETS)} or a TabularData, got {type(dataset).__name__}"
            )
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else _check_int(eval_batch_size, "eval_batch_size", 1)
        self.cv_folds = _check_int(cv_folds, "cv_folds", 0)
        if self.cv_folds == 1:
            raise ValueError("`cv_folds` must be 0 (one train / validation split) or an int >= 2, got 1")
        self.cv_fold = _check_int(cv_fold, "cv_fold", 0)
        if self.cv_folds and self.cv_fold >= self.cv_folds:
            raise ValueError(f"`cv_fold` must be in [0, cv_folds={self.cv_folds}), got {cv_fold!r}")
        if not self.cv_folds and self.cv_fold:
            raise ValueError(f"`cv_fold={cv_fold!r}` needs `cv_folds` >= 2 (the number of folds)")
        if self.cv_folds and val_fraction is not None:
            raise ValueError(
                f"`val_fraction={val_fraction!r}` and `cv_folds={self.cv_folds}` both set the validation split; "
                "pass one (with `cv_folds` the validation split is one fold)"
            )
        if self.cv_folds:
            self.val_fraction = 1.0 / self.cv_folds
        else:
            self.val_fraction = _check_fraction(0.2 if val_fraction is None else val_fraction, "val_fraction")
        self.test_fraction = _check_fraction(test_fraction, "test_fraction")
        self.seed = _check_int(seed, "seed", 0)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        if sensitive is not None:
            names = [sensitive] if isinstance(sensitive, str) else list(sensitive)
            if not names or not all(isinstance(s, str) for s in names):
                raise ValueError(f"`sensitive` must be a column name or a non-empty list of column names, got {sensitive!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"`sensitive` must not repeat a column, got {sensitive!r}")
            sensitive = tuple(names)
        if dataset_kwargs is not None and not isinstance(dataset_kwargs, Mapping):
            raise ValueError(f"`dataset_kwargs` must be a mapping, got {type(dataset_kwargs).__name__}")
        self.dataset = dataset
        self.sensitive = sensitive
        self.official_split = bool(official_split)
        self.include_sensitive = bool(include_sensitive)
        self.stratified_batches = bool(stratified_batches)
        self.pin_memory = bool(pin_memory)
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.save_hyperparameters(ignore=["dataset"])
        self.hparams["dataset"] = dataset if isinstance(dataset, str) else dataset.name
        if isinstance(dataset, TabularData):
            self._resolve_sensitive(dataset)

        self.data: TabularData | None = None
        self.group_spec: GroupSpec | None = None
        self.feature_names: list[str] = []
        self.preprocessor = None
        self.split_indices: dict[str, np.ndarray] = {}
        self._tensors: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    # --- data -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download the raw files once (rank zero) when ``dataset_kwargs={"source": "download"}``."""
        if isinstance(self.dataset, str) and self.dataset in BUNDLED and self.dataset_kwargs.get("source") == "download":
            fetch(self.dataset, self.dataset_kwargs.get("data_home"))

    def _load(self) -> TabularData:
        if isinstance(self.dataset, TabularData):
            return self.dataset
        return DATASETS[self.dataset](**self.dataset_kwargs)

    def _resolve_sensitive(self, data: TabularData) -> tuple[str, ...]:
        if self.sensitive is None:
            return data.sensitive[:1]
        available = list(dict.fromkeys([*data.sensitive, *data.categorical]))
        for col in self.sensitive:
            if col not in available:
                raise ValueError(
                    f"`sensitive` column {col!r} is not a sensitive or categorical column of data set "
                    f"{data.name!r}; available: {available}"
                )
        return self.sensitive

    def _feature_columns(self, data: TabularData, sensitive: tuple[str, ...]) -> tuple[list[str], list[str]]:
        if self.include_sensitive:
            numeric = list(data.numeric)
            categorical = list(dict.fromkeys([*data.categorical, *(s for s in sensitive if s not in data.numeric)]))
        else:
            dropped = set(sensitive)
            for col in sensitive:
                dropped.update(data.proxies.get(col, ()))
            numeric = [c for c in data.numeric if c not in dropped]
            categorical = [c for c in data.categorical if c not in dropped]
        if not numeric and not categorical:
            raise ValueError(
                f"data set {data.name!r} has no feature left once the sensitive columns {list(sensitive)} are "
                "excluded; pass `include_sensitive=True`"
            )
        missing = [c for c in numeric + categorical if data.frame[c].isna().any()]
        if missing:
            raise ValueError(f"feature columns {missing} of data set {data.name!r} have missing values")
        check_finite_features(data.frame, numeric, data.name)
        return numeric, categorical

    def _split(self, data: TabularData, keys: np.ndarray) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        everything = np.arange(len(data))
        if self.official_split and data.split is not None:
            is_test = (data.split == "test").to_numpy()
            trainval, test = everything[~is_test], everything[is_test]
        else:
            trainval, test = stratified_split(everything, keys, self.test_fraction, rng)
        if self.cv_folds:
            fold = stratified_folds(keys[trainval], self.cv_folds, rng)
            train, val = np.sort(trainval[fold != self.cv_fold]), np.sort(trainval[fold == self.cv_fold])
        else:
            train, val = stratified_split(trainval, keys[trainval], self.val_fraction, rng)
        splits = {"train": train, "val": val, "test": test}
        empty = [name for name, rows in splits.items() if len(rows) == 0]
        if empty:
            raise ValueError(
                f"splits {empty} of data set {data.name!r} are empty: {len(data)} rows are too few for "
                + (f"cv_folds={self.cv_folds}" if self.cv_folds else f"val_fraction={self.val_fraction}")
                + f", test_fraction={self.test_fraction}"
            )
        return splits

    def setup(self, stage: str | None = None) -> None:
        """Load the data, build group ids, split, fit the preprocessing on train, make the tensors.

        Runs once (later calls, for other stages, return at once).
        """
        if self._tensors:
            return
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        data = self._load()
        sensitive = self._resolve_sensitive(data)
        for col in sensitive:
            check_sensitive_levels(data.frame[col], col)
        spec, groups = GroupSpec.from_frame(data.frame, sensitive)
        if data.task == "regression":
            values = np.array(data.y, dtype=np.float64)
            # strata for the splits: the target's quartiles (so each split spans its range)
            labels = np.searchsorted(np.quantile(values, [0.25, 0.5, 0.75]), values, side="right").astype(np.int64)
            y_all = torch.as_tensor(values, dtype=torch.float32)
        else:
            labels = np.array(data.y, dtype=np.int64)  # a writable copy (pandas 3 hands out read-only views)
            y_all = torch.as_tensor(labels, dtype=torch.float32)
        splits = self._split(data, labels * spec.num_groups + groups.numpy())
        fractions = {"val": self.val_fraction}
        if not (self.official_split and data.split is not None):
            fractions["test"] = self.test_fraction
        check_groups_in_splits(
            {s: groups.numpy()[rows] for s, rows in splits.items()}, spec.names, name=data.name, fractions=fractions
        )
        numeric, categorical = self._feature_columns(data, sensitive)

        transformers = []
        if numeric:
            transformers.append(("numeric", StandardScaler(), numeric))
        if categorical:
            encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
            transformers.append(("categorical", encoder, categorical))
        preprocessor = ColumnTransformer(transformers, sparse_threshold=0.0)
        features = data.frame[numeric + categorical]
        # with folds, every fold's data module must present the same features (cross_fit's mixture
        # routes one row to any fold's model): fit on all non-test rows, features only, no labels
        fit_rows = np.sort(np.concatenate([splits["train"], splits["val"]])) if self.cv_folds else splits["train"]
        preprocessor.fit(features.iloc[fit_rows])

        names = list(numeric)
        if categorical:
            fitted = preprocessor.named_transformers_["categorical"]
            names += [f"{col}={level}" for col, levels in zip(categorical, fitted.categories_) for level in levels]
        tensors = {}
        for split, rows in splits.items():
            x = np.ascontiguousarray(preprocessor.transform(features.iloc[rows]), dtype=np.float32)
            index = torch.as_tensor(rows)
            tensors[split] = (torch.from_numpy(x), y_all[index].contiguous(), groups[index].contiguous())

        self.data, self.group_spec, self.feature_names = data, spec, names
        self.preprocessor, self.split_indices = preprocessor, splits
        self.numeric_features, self.categorical_features = numeric, categorical
        self.sensitive_columns = sensitive
        self._tensors = tensors

    # --- what setup exposes ------------------------------------------------------------------
    def _require_setup(self) -> None:
        if not self._tensors:
            raise RuntimeError("TabularDataModule: call `setup()` first (the Trainer does it for you)")

    @property
    def num_features(self) -> int:
        """Width of ``x`` after standardization and one-hot encoding."""
        self._require_setup()
        return len(self.feature_names)

    @property
    def task(self) -> str:
        """``"binary"``, ``"multiclass"`` or ``"regression"``: what the data set's target holds."""
        self._require_setup()
        return self.data.task

    @property
    def num_classes(self) -> int | None:
        """``K`` for a multiclass data set (``y`` holds class indices as floats), else ``None``."""
        self._require_setup()
        return self.data.num_classes

    @property
    def num_groups(self) -> int:
        """Number of (intersectional) groups, ``group_spec.num_groups``."""
        self._require_setup()
        return self.group_spec.num_groups

    @property
    def group_names(self) -> list[str]:
        """Group names in id order, like ``"sex=Female&race=Black"``."""
        self._require_setup()
        return self.group_spec.names

    def tensors(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, groups)`` of a split (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
        self._require_setup()
        return self._tensors[split]

    @property
    def train_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(x float32 (N, F), y float32 (N,), groups int64 (N,))`` of the training split."""
        return self.tensors("train")

    @property
    def val_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, groups)`` of the validation split."""
        return self.tensors("val")

    @property
    def test_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, groups)`` of the test split."""
        return self.tensors("test")

    def group_counts(self, split: str = "train") -> Tensor:
        """Rows per group in a split, ``(num_groups,)`` int64 (for ``GroupSpec.weights``)."""
        return torch.bincount(self.tensors(split)[2], minlength=self.num_groups)

    def group_ids(self, columns: str | Sequence[str], split: str = "test") -> tuple[GroupSpec, Tensor]:
        """Group ids of a split by other columns than the training groups', for auditing.

        ``dm.group_ids("race")`` on a module trained with ``sensitive="sex"`` gives the race
        groups of the test rows, aligned with ``dm.test_tensors``, to pass to any metric (with
        ``spec.num_groups`` and ``spec.names``). Levels come from all rows, so every split
        numbers them alike.

        Returns:
            ``(spec, ids)``: the :class:`~fair_lightning.groups.GroupSpec` and ``(N,)`` int64 ids.
        """
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
        self._require_setup()
        columns = (columns,) if isinstance(columns, str) else tuple(columns)
        missing = [c for c in columns if c not in self.data.frame.columns]
        if not columns or missing:
            raise ValueError(
                f"`columns` must name columns of the {self.data.name!r} data, got {list(columns)}; "
                f"available: {list(self.data.frame.columns)}"
            )
        spec, ids = GroupSpec.from_frame(self.data.frame, columns)
        return spec, ids[torch.as_tensor(self.split_indices[split])].contiguous()

    # --- loaders ------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move an ``(x, y, groups)`` batch: a no-op for tensors already on ``device``.

        Lightning's generic transfer walks the batch as a collection; for this module's flat
        tuple of tensors a direct check is cheaper (it is paid once per step). Any other batch
        goes to the generic transfer. A LightningModule that overrides this hook takes precedence.
        """
        if type(batch) is tuple and all(isinstance(t, Tensor) for t in batch):
            if all(t.device == device for t in batch):
                return batch
            non_blocking = device.type not in ("cpu", "mps")  # as Lightning's move_data_to_device
            return tuple(t.to(device, non_blocking=non_blocking) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _world_size(self) -> int:
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    def _loader(self, split: str, sampler: BatchIndexSampler) -> DataLoader:
        if len(sampler) > sampler.num_samples:
            rank_zero_warn(
                f"The {split!r} split has {sampler.num_samples} rows, fewer than its {len(sampler)} batches "
                f"(a multiple of the world size {sampler.num_replicas}): some batches are empty."
            )
        return InMemoryDataLoader(
            TensorBatchDataset(*self.tensors(split)),
            sampler=sampler,
            batch_size=None,
            collate_fn=no_collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        n = len(self.tensors(split)[1])
        sampler = BatchIndexSampler(n, self.eval_batch_size, shuffle=False, num_replicas=self._world_size())
        return self._loader(split, sampler)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (group-stratified if ``stratified_batches``)."""
        x, y, groups = self.train_tensors
        options = {"shuffle": True, "seed": self.seed, "num_replicas": self._world_size()}
        if self.stratified_batches:
            sampler = GroupStratifiedBatchSampler(groups, self.batch_size, **options)
        else:
            sampler = BatchIndexSampler(len(y), self.batch_size, **options)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in row order."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in row order."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split, in row order."""
        return self._eval_loader("test")

    def __str__(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        name = self.dataset if isinstance(self.dataset, str) else self.dataset.name
        if not self._tensors:
            return f"TabularDataModule({name!r}, not set up)"
        sizes = {split: len(self._tensors[split][1]) for split in SPLITS}
        return (
            f"TabularDataModule({name!r}, sensitive={list(self.sensitive_columns)}, num_groups={self.num_groups}, "
            f"num_features={self.num_features}, rows={sizes})"
        )


__all__ = ["DATASETS", "SPLITS", "TabularDataModule", "stratified_split"]
