import dataclasses
import importlib.util
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch

from fair_lightning import functional as F
from fair_lightning.data import (
    DATASETS,
    BatchIndexSampler,
    GroupStratifiedBatchSampler,
    InMemoryDataLoader,
    TabularData,
    TabularDataModule,
    TensorBatchDataset,
    load_adult,
    load_compas,
    load_german,
    make_biased_lending,
    stratified_folds,
    stratified_split,
)
from fair_lightning.data import _datasets
from fair_lightning.data._batching import no_collate
from tests._ddp import DestroyProcessGroup

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data"
needs_raw = pytest.mark.skipif(not (RAW / "adult" / "adult.data").exists(), reason="raw data not in ../shared/data")


# --- bundled real data --------------------------------------------------------------------------
def _check_common(data: TabularData) -> None:
    assert set(data.y.unique()) == {0, 1}
    for col in (data.target, *data.sensitive, *data.features):
        assert not data.frame[col].isna().any(), col
    for col in data.sensitive:
        assert isinstance(data.frame[col].dtype, pd.CategoricalDtype)
    assert data.X.columns.tolist() == list(data.numeric + data.categorical)
    assert data.sensitive_frame.columns.tolist() == list(data.sensitive)


def test_adult_rows_split_label_and_sensitive():
    data = load_adult()
    _check_common(data)
    assert len(data) == 45_222
    assert data.split.value_counts().to_dict() == {"train": 30_162, "test": 15_060}
    assert data.target == "income_over_50k" and data.sensitive == ("sex", "race")
    assert data.y.mean() == pytest.approx(0.2478, abs=1e-3)
    assert set(data.frame["sex"].cat.categories) == {"Female", "Male"}
    assert len(data.frame["race"].cat.categories) == 5
    assert "fnlwgt" in data.frame and "fnlwgt" not in data.features and "education" not in data.features
    assert data.subset("test").y.shape == (15_060,)


def test_compas_rows_label_and_features():
    data = load_compas()
    _check_common(data)
    assert len(data) == 6_172 and data.target == "two_year_recid"
    assert data.sensitive == ("race", "sex") and data.split is None
    assert data.frame["race"].value_counts()["African-American"] == 3_175
    assert data.y.mean() == pytest.approx(0.4551, abs=1e-3)
    assert "decile_score" in data.frame and not {"decile_score", "score_text"} & set(data.features)
    assert not {"name", "first", "last", "dob"} & set(data.frame.columns)


def test_german_rows_label_and_decoded_sensitive():
    data = load_german()
    _check_common(data)
    assert len(data) == 1_000 and data.target == "good_credit" and data.y.sum() == 700
    assert data.frame["age_group"].value_counts().to_dict() == {"age>25": 810, "age<=25": 190}
    assert data.frame["sex"].value_counts().to_dict() == {"Male": 690, "Female": 310}
    assert ((data.frame["age"] > 25) == (data.frame["age_group"] == "age>25")).all()
    assert data.frame["purpose"].iloc[0] == "radio/television"  # decoded from A43
    assert data.proxies == {"age_group": ("age",), "sex": ("personal_status",)}


@needs_raw
@pytest.mark.parametrize("loader", [load_adult, load_compas, load_german])
def test_bundled_equals_preprocessing_of_raw_files(loader):
    bundled = loader()
    raw = loader(RAW / bundled.name)
    pd.testing.assert_frame_equal(bundled.frame, raw.frame)
    if bundled.split is not None:
        pd.testing.assert_series_equal(bundled.split, raw.split)


@needs_raw
def test_bundled_files_are_reproduced_by_the_script():
    spec = importlib.util.spec_from_file_location("make_bundled_data", ROOT / "scripts" / "make_bundled_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name, info in _datasets.BUNDLED.items():
        assert script.build(name, RAW, download=False) == (script.BUNDLED_DIR / info.bundled_file).read_bytes(), name
    total = sum(p.stat().st_size for p in script.BUNDLED_DIR.iterdir())
    assert total < 3_000_000  # Census-KDD is a 60,000-row sample (1.7 MB)
    assert (script.BUNDLED_DIR / "PROVENANCE.md").exists()


@needs_raw
def test_download_path_caches_and_checks_sums(tmp_path, monkeypatch):
    info = _datasets.BUNDLED["german"]
    url = (RAW / "german" / "german.data").as_uri()  # urllib reads file:// like http://
    monkeypatch.setitem(_datasets.BUNDLED, "german", dataclasses.replace(info, raw_files={"german.data": url}))
    data = load_german(source="download", data_home=tmp_path)
    assert (tmp_path / "german" / "german.data").exists()
    pd.testing.assert_frame_equal(data.frame, load_german().frame)
    monkeypatch.setitem(
        _datasets.BUNDLED, "german", dataclasses.replace(info, raw_files={"german.data": url}, sha256={"german.data": "0"})
    )
    _datasets.fetch("german", tmp_path)  # cached: no download, no warning
    with pytest.warns(UserWarning, match="checksum"):
        _datasets.fetch("german", tmp_path, force=True)


def test_tabular_data_validates_its_columns():
    frame = pd.DataFrame({"a": [0.0, 1.0], "s": ["x", "y"], "y": [0, 2]})
    with pytest.raises(ValueError, match="only 0 and 1"):
        TabularData(frame, target="y", sensitive="s", numeric=["a"], categorical=[])
    with pytest.raises(ValueError, match=r"`numeric` columns \['b'\]"):
        TabularData(frame.assign(y=[0, 1]), target="y", sensitive="s", numeric=["b"], categorical=[])
    with pytest.raises(ValueError, match="`source`"):
        load_german(source="no/such/dir")


# --- synthetic ----------------------------------------------------------------------------------
def test_biased_lending_container_and_zero_bias():
    data = make_biased_lending(5_000, bias=0.0, seed=3)
    assert len(data) == 5_000 and data.target == "approved" and data.sensitive == ("group",)
    assert data.numeric == ("income", "credit_score", "debt_ratio")
    assert (data.frame["approved"] == data.frame["qualified"]).all()  # no group effect at bias 0
    assert make_biased_lending(10, bias=0.0, seed=3, debt_ratio=False).numeric == ("income", "credit_score")
    pd.testing.assert_frame_equal(make_biased_lending(100, 0.3, 7).frame, make_biased_lending(100, 0.3, 7).frame)


def test_biased_lending_dp_gap_grows_with_bias():
    gaps = []
    for bias in (0.0, 0.25, 0.5, 0.75, 1.0):
        data = make_biased_lending(20_000, bias=bias, seed=0)
        groups = torch.tensor(data.frame["group"].cat.codes.to_numpy(dtype=np.int64))
        labels = torch.tensor(data.y.to_numpy(dtype=np.int64))
        gaps.append(float(F.demographic_parity_difference(labels, groups, 2)))
    assert gaps[0] < 0.02
    assert all(b > a + 0.05 for a, b in zip(gaps, gaps[1:])), gaps
    assert make_biased_lending(20_000, bias=1.0).frame.query("group == 'B'")["approved"].sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, r"`n` must be an int >= 1, got 0"),
        ({"n": 2.5}, r"`n` must be an int >= 1, got 2.5"),
        ({"n": True}, r"`n` must be an int >= 1, got True"),
        ({"bias": -0.1}, r"`bias` must be a number in \[0, 1\], got -0.1"),
        ({"bias": 1.5}, r"`bias` must be a number in \[0, 1\], got 1.5"),
        ({"bias": float("nan")}, r"`bias` must be a number in \[0, 1\], got nan"),
        ({"seed": -1}, r"`seed` must be an int >= 0, got -1"),
        ({"disadvantaged_fraction": 1.0}, r"`disadvantaged_fraction` must be a number in \(0, 1\), got 1.0"),
    ],
)
def test_biased_lending_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_biased_lending(**{"n": 100, "bias": 0.5, **kwargs})


# --- splits and preprocessing -------------------------------------------------------------------
def test_stratified_split_exact_size_and_per_stratum_share():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 7, size=1_001)
    keys[:3] = 9  # a stratum of 3 rows
    kept, held = stratified_split(np.arange(1_001), keys, 0.3, np.random.default_rng(1))
    assert len(held) == round(0.3 * 1_001) and len(kept) + len(held) == 1_001
    assert np.intersect1d(kept, held).size == 0
    for k in np.unique(keys):
        n_k, held_k = (keys == k).sum(), (keys[held] == k).sum()
        assert abs(held_k - 0.3 * n_k) < 1


def test_adult_module_splits_official_test_and_stratified_val():
    dm = TabularDataModule("adult", sensitive=["sex", "race"])
    dm.setup()
    data, rows = dm.data, dm.split_indices
    assert (data.split.iloc[rows["test"]] == "test").all() and len(rows["test"]) == 15_060
    assert len(rows["train"]) + len(rows["val"]) == 30_162 and len(rows["val"]) == round(0.2 * 30_162)
    assert np.intersect1d(rows["train"], rows["val"]).size == 0
    train_keys, val_keys = ((y.long() * dm.num_groups + g).numpy() for _, y, g in (dm.train_tensors, dm.val_tensors))
    for k in np.unique(np.concatenate([train_keys, val_keys])):
        n_k = (train_keys == k).sum() + (val_keys == k).sum()
        assert abs((val_keys == k).sum() - 0.2 * n_k) < 1  # every (label, group) stratum within one row
    assert dm.num_groups == 10 and "sex=Female&race=Black" in dm.group_names
    assert dm.group_names == dm.group_spec.names
    assert not any(name.startswith(("sex=", "race=")) for name in dm.feature_names)


def test_stratified_folds_deal_every_stratum_evenly():
    keys = np.random.default_rng(0).integers(0, 5, size=503)
    fold = stratified_folds(keys, 4, np.random.default_rng(1))
    assert set(fold.tolist()) == {0, 1, 2, 3}
    for k in np.unique(keys):
        counts = np.bincount(fold[keys == k], minlength=4)
        assert counts.max() - counts.min() <= 1  # within one row of the stratum's share


def test_cv_folds_partition_the_non_test_rows_and_keep_the_test_split():
    plain = TabularDataModule("german", seed=3)
    plain.setup()
    folds = []
    for k in range(4):
        dm = TabularDataModule("german", seed=3, cv_folds=4, cv_fold=k)
        dm.setup()
        rows = dm.split_indices
        assert np.array_equal(rows["test"], plain.split_indices["test"])  # the test split does not move
        assert np.intersect1d(rows["train"], rows["val"]).size == 0
        assert np.array_equal(np.sort(np.concatenate([rows["train"], rows["val"]])),
                              np.sort(np.concatenate([plain.split_indices["train"], plain.split_indices["val"]])))
        assert len(rows["val"]) in (199, 200, 201, 202)  # a quarter of the 800 non-test rows, stratified
        # preprocessing is fitted on all non-test rows (features only): every fold reads the same features
        non_test = torch.cat([dm.train_tensors[0], dm.val_tensors[0]])
        assert np.isclose(non_test[:, 0].mean().item(), 0.0, atol=1e-5)
        if k:
            assert dm.feature_names == first.feature_names
            torch.testing.assert_close(dm.test_tensors[0], first.test_tensors[0])
        else:
            first = dm
        folds.append(rows["val"])
    every = np.concatenate(folds)
    assert len(every) == 800 and len(np.unique(every)) == 800  # each non-test row validates exactly once
    again = TabularDataModule("german", seed=3, cv_folds=4, cv_fold=2)
    again.setup()
    assert np.array_equal(again.split_indices["val"], folds[2])  # fixed by the seed


def test_german_module_holds_out_a_stratified_test_split_and_drops_proxies():
    dm = TabularDataModule("german", seed=5)
    dm.setup()
    sizes = {s: len(dm.split_indices[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 640, "val": 160, "test": 200}
    for split in ("val", "test"):  # label x group proportions follow the whole data set
        _, y, g = dm.tensors(split)
        assert abs(float(y.mean()) - 0.7) < 0.01 and abs(float((g == 0).float().mean()) - 0.19) < 0.01
    names = dm.feature_names
    assert "age" not in names and not any(n.startswith("age_group=") for n in names)  # age: proxy of age_group
    assert any(n.startswith("sex=") for n in names)  # not the grouping attribute: stays a feature
    assert any(n.startswith("personal_status=") for n in names)
    by_sex = TabularDataModule("german", sensitive="sex", seed=5)
    by_sex.setup()
    assert not any(n.startswith(("sex=", "personal_status=")) for n in by_sex.feature_names)
    assert "age" in by_sex.feature_names
    aware = TabularDataModule("german", include_sensitive=True, seed=5)
    aware.setup()
    assert "age" in aware.feature_names and "age_group=age>25" in aware.feature_names
    assert aware.num_features > dm.num_features


def test_preprocessing_is_fitted_on_train_only():
    data = load_german()
    dm = TabularDataModule(data, seed=1)
    dm.setup()
    held_out = np.concatenate([dm.split_indices["val"], dm.split_indices["test"]])
    frame = data.frame.copy()
    frame.loc[held_out, "credit_amount"] *= 1000
    frame["purpose"] = frame["purpose"].cat.add_categories(["spaceship"])
    frame.loc[held_out, "purpose"] = "spaceship"
    changed = TabularDataModule(dataclasses.replace(data, frame=frame), seed=1)
    changed.setup()

    for split in ("train", "val", "test"):  # same rows in each split: splits depend on (label, group, seed)
        np.testing.assert_array_equal(dm.split_indices[split], changed.split_indices[split])
    before, after = dm.preprocessor.named_transformers_, changed.preprocessor.named_transformers_
    np.testing.assert_array_equal(before["numeric"].mean_, after["numeric"].mean_)
    np.testing.assert_array_equal(before["numeric"].scale_, after["numeric"].scale_)
    for a, b in zip(before["categorical"].categories_, after["categorical"].categories_):
        np.testing.assert_array_equal(a, b)
    assert dm.feature_names == changed.feature_names
    torch.testing.assert_close(dm.train_tensors[0], changed.train_tensors[0])
    assert not torch.equal(dm.val_tensors[0], changed.val_tensors[0])
    purpose = [i for i, n in enumerate(changed.feature_names) if n.startswith("purpose=")]
    assert changed.val_tensors[0][:, purpose].abs().sum() == 0  # unseen category -> all zeros
    x = dm.train_tensors[0][:, : len(dm.numeric_features)]  # standardized with train statistics
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(x.shape[1]), atol=1e-4, rtol=0)


def test_cv_folds_preprocessing_never_sees_the_test_rows():
    """With folds the preprocessing is fitted on all non-test rows; the test rows stay unseen."""
    data = load_german()
    dm = TabularDataModule(data, seed=1, cv_folds=3, cv_fold=1)
    dm.setup()
    frame = data.frame.copy()
    test = dm.split_indices["test"]
    frame.loc[test, "credit_amount"] *= 1000
    frame["purpose"] = frame["purpose"].cat.add_categories(["spaceship"])
    frame.loc[test, "purpose"] = "spaceship"
    changed = TabularDataModule(dataclasses.replace(data, frame=frame), seed=1, cv_folds=3, cv_fold=1)
    changed.setup()
    assert dm.feature_names == changed.feature_names
    for split in ("train", "val"):
        torch.testing.assert_close(dm.tensors(split)[0], changed.tensors(split)[0])


# --- batches -------------------------------------------------------------------------------------
def test_batches_shapes_dtypes_and_epoch_coverage():
    dm = TabularDataModule("compas", batch_size=100, seed=2)
    dm.setup()
    x, y, g = dm.train_tensors
    assert (x.dtype, y.dtype, g.dtype) == (torch.float32, torch.float32, torch.int64)
    loader = dm.train_dataloader()
    assert len(loader) == math.ceil(len(y) / 100)
    batches = list(loader)
    for bx, by, bg in batches:
        assert bx.shape == (by.shape[0], dm.num_features) and bg.shape == by.shape
        assert (bx.dtype, by.dtype, bg.dtype) == (torch.float32, torch.float32, torch.int64)
        assert 1 <= by.shape[0] <= 100
    sizes = [b[1].shape[0] for b in batches]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(y)
    loader.sampler.set_epoch(0)
    indices = list(loader.sampler)
    assert torch.sort(torch.cat(indices)).values.tolist() == list(range(len(y)))  # each row once
    for idx, (bx, by, bg) in zip(indices, batches):
        assert torch.equal(bx, x[idx]) and torch.equal(by, y[idx]) and torch.equal(bg, g[idx])
    first_epoch = torch.cat([b[1] for b in batches])
    second_epoch = torch.cat([b[1] for b in loader])
    assert not torch.equal(first_epoch, second_epoch)  # a new order every epoch
    loader.sampler.set_epoch(0)
    torch.testing.assert_close(torch.cat([b[1] for b in loader]), first_epoch)  # reproducible
    batch = batches[0]
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch  # already there: no copy
    val = list(dm.val_dataloader())
    torch.testing.assert_close(torch.cat([b[0] for b in val]), dm.val_tensors[0])  # in order


def test_tensor_batch_dataset_indexes_whole_batches():
    ds = TensorBatchDataset(torch.arange(10.0)[:, None], torch.arange(10))
    x, g = ds[torch.tensor([3, 1])]
    assert x.tolist() == [[3.0], [1.0]] and g.tolist() == [3, 1]
    assert ds[[0, 2]][1].tolist() == [0, 2] and len(ds) == 10


def test_in_memory_loader_matches_the_pytorch_iterator_and_workers():
    ds = TensorBatchDataset(torch.randn(50, 3), torch.arange(50))
    make = lambda **kw: InMemoryDataLoader(  # noqa: E731
        ds, sampler=BatchIndexSampler(50, 8, seed=1), batch_size=None, collate_fn=no_collate, **kw
    )
    fast = list(make())
    assert len(fast) == len(make()) == 7
    slow = list(make(num_workers=1))  # DataLoader's own iterator, with a worker process
    assert len(slow) == 7 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fast, slow))


def test_group_stratified_batches_contain_every_group():
    dm = TabularDataModule("compas", batch_size=64, stratified_batches=True, seed=0)
    dm.setup()
    groups = dm.train_tensors[2]
    counts = torch.bincount(groups, minlength=dm.num_groups)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, GroupStratifiedBatchSampler)
    k = len(sampler)
    assert k == math.ceil(len(groups) / 64) and counts.min() < k  # Native American: fewer rows than batches
    for _ in range(2):  # two epochs
        batches = list(sampler)
        assert len(batches) == k
        seen = torch.zeros(len(groups), dtype=torch.long)
        for idx in batches:
            per_group = torch.bincount(groups[idx], minlength=dm.num_groups)
            assert (per_group >= 1).all()
            big = counts >= k  # proportional allocation: floor or ceil of n_g / k
            assert ((per_group[big] == counts[big] // k) | (per_group[big] == -(-counts[big] // k))).all()
            seen += torch.bincount(idx, minlength=len(groups))
        assert (seen >= 1).all()  # the epoch covers the data
        assert (seen[big[groups]] == 1).all()  # rows of large groups exactly once


def test_samplers_make_a_multiple_of_the_world_size():
    assert len(BatchIndexSampler(1000, 256, num_replicas=3)) == 6
    batches = list(BatchIndexSampler(1000, 256, num_replicas=3, seed=4))
    assert len(batches) == 6 and torch.sort(torch.cat(batches)).values.tolist() == list(range(1000))
    groups = torch.tensor([0] * 90 + [1] * 10)
    assert len(list(GroupStratifiedBatchSampler(groups, 30, num_replicas=4))) == 4


def test_trainer_fit_one_epoch_with_the_datamodule():
    class Tiny(pl.LightningModule):
        def __init__(self, num_features):
            super().__init__()
            self.net = torch.nn.Linear(num_features, 1)
            self.sizes = []

        def training_step(self, batch, batch_idx):
            x, y, groups = batch
            self.sizes.append(len(y))
            return torch.nn.functional.binary_cross_entropy_with_logits(self.net(x).squeeze(-1), y)

        def validation_step(self, batch, batch_idx):
            x, y, groups = batch
            self.log("val_loss", torch.nn.functional.binary_cross_entropy_with_logits(self.net(x).squeeze(-1), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TabularDataModule("biased_lending", dataset_kwargs={"n": 2_000, "bias": 0.5}, batch_size=128)
    dm.setup()
    model = Tiny(dm.num_features)
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=dm)
    assert sum(model.sizes) == 2 * len(dm.train_tensors[1]) and max(model.sizes) <= 128
    assert trainer.train_dataloader.sampler.epoch == 2  # Lightning's set_epoch reached the sampler


# --- argument errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "mnist"}, r"`dataset` must be one of \['adult', 'biased_lending', 'census_kdd', 'compas', 'german', 'group_shift_classes', 'group_shift_regression'\] .*got 'mnist'"),
        ({"val_fraction": 0.0}, r"`val_fraction` must be a number in \(0, 1\), got 0.0"),
        ({"val_fraction": 1}, r"`val_fraction` must be a number in \(0, 1\), got 1"),
        ({"val_fraction": -0.2}, r"`val_fraction` must be a number in \(0, 1\), got -0.2"),
        ({"test_fraction": 1.5}, r"`test_fraction` must be a number in \(0, 1\), got 1.5"),
        ({"batch_size": 0}, r"`batch_size` must be an int >= 1, got 0"),
        ({"batch_size": 32.0}, r"`batch_size` must be an int >= 1, got 32.0"),
        ({"eval_batch_size": -1}, r"`eval_batch_size` must be an int >= 1, got -1"),
        ({"sensitive": []}, r"`sensitive` must be a column name or a non-empty list"),
        ({"cv_folds": 1}, r"`cv_folds` must be 0 \(one train / validation split\) or an int >= 2, got 1"),
        ({"cv_folds": -2}, r"`cv_folds` must be an int >= 0, got -2"),
        ({"cv_folds": 5, "cv_fold": 5}, r"`cv_fold` must be in \[0, cv_folds=5\), got 5"),
        ({"cv_fold": 2}, r"`cv_fold=2` needs `cv_folds` >= 2"),
        ({"cv_folds": 5, "val_fraction": 0.2}, r"`val_fraction=0.2` and `cv_folds=5` both set the validation split"),
    ],
)
def test_datamodule_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabularDataModule(**{"dataset": "german", **kwargs})


def test_unknown_sensitive_column_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"`sensitive` column 'gender' .*available: \['age_group', 'sex', 'checking_status'"):
        TabularDataModule(load_german(), sensitive="gender")  # a TabularData: checked at once
    dm = TabularDataModule("compas", sensitive=["race", "colour"])  # a name: checked when loaded
    with pytest.raises(ValueError, match=r"`sensitive` column 'colour' .*available: \['race', 'sex'"):
        dm.setup()
    with pytest.raises(RuntimeError, match="setup"):
        TabularDataModule("german").num_features
    assert sorted(DATASETS) == ["adult", "biased_lending", "census_kdd", "compas", "german", "group_shift_classes", "group_shift_regression"]


# --- DDP ------------------------------------------------------------------------------------------
class _RecordRows(pl.LightningModule):
    """Saves, per rank and epoch, the first feature (a unique row id) of every batch it sees."""

    def __init__(self, num_features: int, out_dir: str) -> None:
        super().__init__()
        self.net = torch.nn.Linear(num_features, 1)
        self.out_dir = out_dir
        self.rows = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        x, y, groups = batch
        self.rows["train"].append(x[:, 0].clone())
        return torch.nn.functional.binary_cross_entropy_with_logits(self.net(x).squeeze(-1), y)

    def validation_step(self, batch, batch_idx):
        self.rows["val"].append(batch[0][:, 0].clone())

    def on_train_epoch_end(self) -> None:
        record = {split: torch.cat(rows) if rows else torch.empty(0) for split, rows in self.rows.items()}
        record["batches"] = len(self.rows["train"])
        record["sampler"] = type(self.trainer.train_dataloader.sampler).__name__
        record["loader"] = type(self.trainer.train_dataloader).__name__
        torch.save(record, os.path.join(self.out_dir, f"rank{self.global_rank}_epoch{self.current_epoch}.pt"))
        self.rows = {"train": [], "val": []}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _row_id_data(n: int = 600) -> TabularData:
    base = make_biased_lending(n, bias=0.5, seed=0)
    frame = base.frame.assign(row_id=np.arange(n, dtype=np.float64))
    return dataclasses.replace(base, frame=frame, numeric=("row_id", *base.numeric))


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_ddp_ranks_get_disjoint_shards_that_cover_each_split(tmp_path):
    dm = TabularDataModule(_row_id_data(), batch_size=64, seed=0)
    trainer = pl.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DestroyProcessGroup()],
    )
    dm.setup()
    trainer.fit(_RecordRows(dm.num_features, str(tmp_path)), datamodule=dm)

    expected = {"train": dm.train_tensors[0][:, 0], "val": dm.val_tensors[0][:, 0]}
    orders = []
    for epoch in range(2):
        ranks = [torch.load(tmp_path / f"rank{r}_epoch{epoch}.pt") for r in range(2)]
        assert {r["sampler"] for r in ranks} == {"DistributedSamplerWrapper"}  # Lightning's replacement
        assert {r["loader"] for r in ranks} == {"InMemoryDataLoader"}
        assert ranks[0]["batches"] == ranks[1]["batches"] == len(dm.train_dataloader()) // 2
        for split, rows in expected.items():
            shards = [r[split] for r in ranks]
            assert all(len(s) > 0 for s in shards)
            assert not set(shards[0].tolist()) & set(shards[1].tolist())  # disjoint
            torch.testing.assert_close(torch.sort(torch.cat(shards)).values, torch.sort(rows).values)  # cover, once
        orders.append(ranks[0]["train"])
    assert not torch.equal(orders[0], orders[1])  # reshuffled between epochs


def test_group_ids_audit_other_columns_aligned_with_the_split():
    dm = TabularDataModule("german", sensitive="sex", batch_size=64, seed=0)
    dm.setup("fit")
    # the training groups again: the same ids as the tensors
    spec, ids = dm.group_ids("sex", split="val")
    assert spec.names == dm.group_names and torch.equal(ids, dm.val_tensors[2])
    # another attribute and an intersection, for the test rows
    spec, ids = dm.group_ids(["age_group", "sex"], split="test")
    assert len(ids) == len(dm.test_tensors[1]) and ids.dtype == torch.int64
    frame = dm.data.frame.iloc[dm.split_indices["test"]]
    names = [f"age_group={a}&sex={s}" for a, s in zip(frame["age_group"], frame["sex"])]
    assert [spec.names[i] for i in ids.tolist()] == names
    with pytest.raises(ValueError, match="`columns` must name columns of the 'german' data, got \\['colour'\\]"):
        dm.group_ids("colour")
    with pytest.raises(ValueError, match="`split` must be one of"):
        dm.group_ids("sex", split="holdout")


# --- Census-KDD and the input checks (D8, D10, S9) ------------------------------------------------
def test_census_kdd_rows_split_label_and_sensitive():
    from fair_lightning.data import load_census_kdd

    data = load_census_kdd()
    _check_common(data)
    assert len(data) == 60_000
    assert data.split.value_counts().to_dict() == {"train": 40_000, "test": 20_000}
    assert data.target == "income_over_50k" and data.sensitive == ("sex", "race")
    assert data.y.mean() == pytest.approx(0.062, abs=0.005)  # 6.2% in the full data
    assert set(data.frame["sex"].cat.categories) == {"Female", "Male"}
    assert len(data.frame["race"].cat.categories) == 5
    assert "instance_weight" in data.frame and "instance_weight" not in data.features
    assert "?" in set(data.frame["migration_code_change_in_msa"].astype(str))


@needs_raw
def test_census_kdd_bundle_is_the_documented_sample_of_the_raw_files():
    from fair_lightning.data import load_census_kdd

    full = load_census_kdd(RAW / "census-kdd")
    assert full.split.value_counts().to_dict() == {"train": 199_523, "test": 99_762}
    frame = full.frame.assign(split=full.split)
    sample = _datasets.sample_census_kdd(_datasets.prepare_census_kdd(RAW / "census-kdd"))
    bundled = load_census_kdd()
    assert sample["income_over_50k"].tolist() == bundled.y.tolist()
    assert sample["age"].tolist() == bundled.frame["age"].tolist()
    assert len(frame) == 299_285


def test_census_kdd_datamodule_groups_by_sex_and_race():
    dm = TabularDataModule("census_kdd", sensitive=["sex", "race"], batch_size=512)
    dm.setup()
    assert dm.num_groups == 10
    assert len(dm.test_tensors[1]) == 20_000 and len(dm.train_tensors[1]) + len(dm.val_tensors[1]) == 40_000
    assert "instance_weight" not in dm.feature_names and not any(n.startswith("sex=") for n in dm.feature_names)


def _tiny(n=10, seed=0):
    base = make_biased_lending(200, bias=0.5, seed=seed)
    return dataclasses.replace(base, frame=base.frame.iloc[:n].reset_index(drop=True))


def test_tiny_data_set_is_refused_naming_its_size_and_the_minimum():
    with pytest.raises(ValueError, match=r"data set .* has 10 rows; TabularDataModule needs at least 100 .*\{'train': \d+, 'val': \d+, 'test': \d+\}"):
        TabularDataModule(_tiny(), batch_size=4).setup()


def test_small_or_missing_groups_in_a_split_warn():
    with pytest.warns(UserWarning, match="fewer than 10 rows of group"):
        TabularDataModule(_tiny(120), batch_size=16).setup()
    with pytest.warns(UserWarning, match=r"'val' split of data set 'compas' \(6172 rows\) has no row of group\(s\) 'race=Asian&sex=Female'"):
        TabularDataModule("compas", sensitive=["race", "sex"]).setup()


def test_infinite_feature_is_refused_naming_the_column():
    base = make_biased_lending(300, bias=0.5, seed=0)
    col = base.numeric[0]
    frame = base.frame.copy()
    frame.loc[7, col] = np.inf
    with pytest.raises(ValueError, match=f"feature column '{col}' of data set .* holds 1 infinite value"):
        TabularDataModule(dataclasses.replace(base, frame=frame)).setup()


def test_check_sensitive_levels_warns_on_continuous_columns():
    from fair_lightning.data import check_sensitive_levels

    with pytest.warns(UserWarning, match="sensitive column 'age' looks continuous: 70 distinct values"):
        check_sensitive_levels(np.arange(140) % 70 + 18, "age")
    with pytest.warns(UserWarning, match="looks continuous"):
        check_sensitive_levels(torch.arange(30.0), "score")  # groups of one
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sensitive_levels(pd.Series(["a", "b"] * 50), "sex")
