"""GroupFairnessCalibrator on K-class logits: per-group temperature and vector scaling."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.calibration import GroupFairnessCalibrator
from fair_lightning.callbacks import GroupCalibrationCallback
from fair_lightning.groups import GroupSpec
from fair_lightning.metrics_multiclass import MulticlassGroupCalibrationError
from fair_lightning.module import FairLightningModule

K = 4
#: Per group: a common scale of the true logits (group 0 overconfident, group 1 underconfident,
#: group 2 right on average) and per-class scales and shifts (group 2: what one temperature
#: cannot undo).
GROUP_SCALE = torch.tensor([3.0, 0.4, 1.0], dtype=torch.float64)
CLASS_SCALE = torch.tensor([[1.0] * K, [1.0] * K, [1.0, 2.5, 0.5, 1.0]], dtype=torch.float64)
CLASS_SHIFT = torch.tensor([[0.0] * K, [0.0] * K, [0.0, 0.8, 0.0, -0.5]], dtype=torch.float64)


def _miscalibrated(n: int, seed: int, num_groups: int = 3):
    """``(logits, labels, groups)``: labels drawn from ``softmax(z)``; each group reports a
    differently distorted ``z``."""
    gen = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, K, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=gen).squeeze(1)
    groups = torch.arange(n) % num_groups
    rows = groups % 3
    logits = GROUP_SCALE[rows, None] * CLASS_SCALE[rows] * z + CLASS_SHIFT[rows]
    return logits, labels, groups


def _classwise_ece(probs, labels, groups, num_groups=3):
    metric = MulticlassGroupCalibrationError(num_groups, K, n_bins=15)
    metric.update(torch.as_tensor(probs), labels, groups)
    out = metric.compute()
    return [float(out[f"classwise_calibration_error/group_{g}"]) for g in range(num_groups)]


def _nll(probs, labels, groups, num_groups=3):
    logp = torch.log(torch.as_tensor(probs).clamp_min(1e-12)).gather(1, labels[:, None]).squeeze(1)
    return [float(-logp[groups == g].mean()) for g in range(num_groups)]


# --- fits ------------------------------------------------------------------------------------
def test_temperature_of_one_group_matches_a_scalar_reference():
    logits, labels, groups = _miscalibrated(3000, seed=0)
    logits, labels = logits[groups == 0], labels[groups == 0]

    def nll(temperature):
        return float(torch.nn.functional.cross_entropy(logits / temperature, labels, reduction="sum"))

    reference = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-9}).x
    calibrator = GroupFairnessCalibrator("temperature", num_groups=1).fit(logits, labels, torch.zeros(len(labels), dtype=torch.long))
    assert float(calibrator.temperature_[0]) == pytest.approx(reference, abs=1e-4)
    assert reference == pytest.approx(3.0, rel=0.2)  # the group's logits are three times too large
    torch.testing.assert_close(calibrator.transform(logits, torch.zeros(len(labels), dtype=torch.long)),
                               torch.softmax(logits / reference, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["temperature", "vector"])
def test_per_group_nll_and_classwise_ece_drop_on_held_out_data(method):
    fit = _miscalibrated(9000, seed=1)
    logits, labels, groups = _miscalibrated(30_000, seed=2)
    before = torch.softmax(logits, 1)
    calibrator = GroupFairnessCalibrator(method, num_groups=3).fit(*fit)
    after = calibrator.transform(logits, groups)

    ece_before, ece_after = _classwise_ece(before, labels, groups), _classwise_ece(after, labels, groups)
    nll_before, nll_after = _nll(before, labels, groups), _nll(after, labels, groups)
    for g in (0, 1):  # over- and underconfident: both methods fix them
        assert ece_before[g] > 0.05
        assert ece_after[g] < ece_before[g] / 3
        assert nll_after[g] < nll_before[g]
    if method == "vector":  # per-class distortions too
        assert ece_after[2] < ece_before[2] / 2
        assert nll_after[2] < nll_before[2]
        assert max(ece_after) < 0.02
    assert calibrator.fallback_ == {}
    assert calibrator.num_classes_ == K
    report = calibrator.report()
    assert list(report["map"]) == ["own"] * 3
    np.testing.assert_allclose(report["ece_before"], _classwise_ece(torch.softmax(fit[0], 1), fit[1], fit[2]), atol=1e-9)


def test_temperature_keeps_the_argmax_and_vector_scaling_has_class_parameters():
    logits, labels, groups = _miscalibrated(3000, seed=3)
    temperature = GroupFairnessCalibrator("temperature", num_groups=3).fit(logits, labels, groups)
    probs = temperature.transform(logits, groups)
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    torch.testing.assert_close(probs.sum(1), torch.ones(len(labels), dtype=torch.float64))
    assert temperature.temperature_.shape == (3,)
    assert temperature.temperature_[0] > 2 and temperature.temperature_[1] < 0.6

    vector = GroupFairnessCalibrator("vector", num_groups=3).fit(logits, labels, groups)
    assert vector.coef_.shape == vector.intercept_.shape == (3, K)
    assert vector.coef_[2, 1] < 0.55 and vector.coef_[2, 2] > 1.6  # undoes the class scales 2.5 and 0.5
    with pytest.raises(AttributeError, match="temperature_"):
        vector.temperature_


def test_temperature_bias_fits_a_bias_per_class():
    gen = torch.Generator().manual_seed(4)
    z = 1.5 * torch.randn(6000, K, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=gen).squeeze(1)
    groups = torch.arange(6000) % 2
    shift = torch.tensor([0.0, 0.8, 0.0, -0.5], dtype=torch.float64)
    logits = 2.0 * z + shift * groups[:, None]  # both overconfident, group 1 also shifted
    calibrator = GroupFairnessCalibrator("temperature", num_groups=2, temperature_bias=True).fit(logits, labels, groups)
    assert (calibrator.coef_ == calibrator.coef_[:, :1]).all()  # one temperature per group
    torch.testing.assert_close(calibrator.temperature_, torch.full((2,), 2.0, dtype=torch.float64), atol=0.15, rtol=0)
    bias = calibrator.intercept_ - calibrator.intercept_.mean(1, keepdim=True)
    torch.testing.assert_close(bias[0], torch.zeros(K, dtype=torch.float64), atol=0.1, rtol=0)
    torch.testing.assert_close(bias[1], -(shift - shift.mean()) / 2, atol=0.1, rtol=0)  # undoes the shift


# --- small groups ----------------------------------------------------------------------------
def test_small_groups_fall_back_to_the_global_map_and_are_reported():
    logits, labels, groups = _miscalibrated(3000, seed=5)
    groups = groups.clone()
    groups[:20] = 3  # a fourth group of 20 samples
    calibrator = GroupFairnessCalibrator("vector", num_groups=5, min_group_size=50).fit(logits, labels, groups)
    report = calibrator.report().set_index("group")
    assert report.loc["group_3", "map"] == "global" and report.loc["group_3", "count"] == 20
    assert report.loc["group_4", "map"] == "global" and report.loc["group_4", "count"] == 0
    assert set(calibrator.fallback_) == {"group_3", "group_4"}
    small = logits[:20]
    torch.testing.assert_close(calibrator.transform(small, torch.full((20,), 3)), calibrator.transform(small))
    with pytest.warns(UserWarning, match="not seen"):
        calibrator.transform(small, torch.full((20,), 4))


def test_small_intersections_borrow_their_marginal_parent_and_shrinkage_blends():
    spec = GroupSpec({"sex": ["F", "M"], "age": ["young", "old"]})
    logits, labels, _ = _miscalibrated(4000, seed=6)
    gen = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 3, (4000,), generator=gen)
    groups[:30] = 3  # M&old: 30 samples
    calibrator = GroupFairnessCalibrator("temperature", group_spec=spec, min_group_size=100).fit(logits, labels, groups)
    fallback = calibrator.fallback_["sex=M&age=old"]
    assert fallback.map == "parent" and fallback.source in {"sex=M", "age=old"}

    shrunk = GroupFairnessCalibrator("vector", group_spec=spec, min_group_size=100, shrinkage=1000.0)
    shrunk.fit(logits, labels, groups)
    weights = shrunk.report().set_index("group")["own_weight"]
    assert 0 < weights["sex=F&age=young"] < 1
    own = GroupFairnessCalibrator("vector", group_spec=spec, min_group_size=100).fit(logits, labels, groups)
    # shrinkage pulls a group's scales towards its parent's, which lie closer to the global ones
    assert (shrunk.coef_[0] - shrunk.maps_["coef"][-1]).abs().sum() < (own.coef_[0] - own.maps_["coef"][-1]).abs().sum()


def test_vector_scaling_warns_about_a_group_without_some_class():
    logits, labels, groups = _miscalibrated(3000, seed=7)
    labels = torch.where((groups == 1) & (labels == 3), torch.zeros_like(labels), labels)
    with pytest.warns(UserWarning, match=r"lack some class.*group_1"):
        GroupFairnessCalibrator("vector", num_groups=3).fit(logits, labels, groups)


# --- kinds, state ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["temperature", "vector"])
def test_state_dict_round_trip_gives_identical_transforms(method, tmp_path):
    logits, labels, groups = _miscalibrated(2000, seed=8)
    calibrator = GroupFairnessCalibrator(method, num_groups=3, min_group_size=10).fit(logits, labels, groups)
    torch.save(calibrator.state_dict(), tmp_path / "cal.pt")
    state = torch.load(tmp_path / "cal.pt", weights_only=True)
    assert state["version"] == 2 and state["num_classes"] == K
    restored = GroupFairnessCalibrator.from_state_dict(state)
    assert restored.num_classes_ == K and restored.method == method
    assert torch.equal(restored.transform(logits, groups), calibrator.transform(logits, groups))
    assert restored.report().equals(calibrator.report())


def test_numpy_in_numpy_out_and_torch_dtype_kept():
    logits, labels, groups = _miscalibrated(1500, seed=9)
    calibrator = GroupFairnessCalibrator("vector", num_groups=3).fit(logits.numpy(), labels.numpy(), groups.numpy())
    out = calibrator.transform(logits.numpy(), groups.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (1500, K) and out.dtype == np.float64
    out32 = calibrator.transform(logits.float(), groups)
    assert isinstance(out32, torch.Tensor) and out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), out, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "scores", "labels", "match"),
    [
        ("platt", "k", "k", r"`scores` of shape \(60, 4\) are K-class scores, but method='platt'"),
        ("isotonic", "k", "k", r"method='isotonic' calibrates one probability per sample"),
        ("vector", "binary", "binary", r"`scores` must be \(N, K\) logits with K >= 2 for method='vector'.*got shape \(60,\)"),
        ("temperature", "k", "too_big", r"`labels` must be class indices < num_classes=4, got maximum 4"),
        ("vector", "k", "negative", r"`labels` must be class indices >= 0, got minimum -1"),
        ("vector", "nan", "k", r"`scores` must be finite, got 1 NaN and 0 infinite"),
        ("temperature", "nan", "k", r"`scores` must be finite, got 1 NaN"),
    ],
)
def test_bad_fit_inputs_name_the_argument(method, scores, labels, match):
    logits, classes, groups = _miscalibrated(60, seed=10)
    binary_scores = torch.sigmoid(logits[:, 0])
    scores = {"k": logits, "binary": binary_scores, "nan": logits.clone().index_put_((torch.tensor([3]), torch.tensor([1])), torch.tensor(float("nan"), dtype=torch.float64))}[scores]
    labels = {"k": classes, "binary": (classes > 1).long(), "too_big": torch.where(classes == 0, 4, classes),
              "negative": torch.where(classes == 0, -1, classes)}[labels]
    with pytest.raises(ValueError, match=match):
        GroupFairnessCalibrator(method, num_groups=3).fit(scores, labels, groups)


def test_transform_refuses_scores_unlike_the_fit_data():
    logits, labels, groups = _miscalibrated(300, seed=11)
    calibrator = GroupFairnessCalibrator("temperature", num_groups=3).fit(logits, labels, groups)
    with pytest.raises(ValueError, match=r"`scores` must be like the data .*\(shape \(N, 4\)\), got shape \(300, 3\)"):
        calibrator.transform(logits[:, :3], groups)
    with pytest.raises(ValueError, match=r"\(shape \(N, 4\)\), got shape \(300,\)"):
        calibrator.transform(logits[:, 0], groups)
    binary = GroupFairnessCalibrator("temperature", num_groups=3).fit(logits[:, 0], (labels == 0).long(), groups)
    with pytest.raises(ValueError, match=r"\(one score per sample, shape \(N,\)\), got shape \(300, 4\)"):
        binary.transform(logits, groups)


# --- the callback on a K-class module -----------------------------------------------------------
def _class_data(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(n, generator=gen) < 0.5).long()
    x = torch.randn(n, 4, generator=gen)
    score = torch.stack((x[:, 0], x[:, 1], x[:, 2] + g), 1)
    y = torch.multinomial(torch.softmax(2.0 * score, 1), 1, generator=gen).squeeze(1)
    return x, y, g


def _trained(callback, epochs=2):
    pl.seed_everything(0, verbose=False)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    module = FairLightningModule(model, num_groups=2, mode="erm", lr=3e-2)
    x, y, g = _class_data(1200, seed=0)
    train = DataLoader(TensorDataset(x[:800], y[:800], g[:800]), batch_size=200)
    val = DataLoader(TensorDataset(x[800:], y[800:], g[800:]), batch_size=200)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, train, val)
    return module, trainer, (x[800:], y[800:], g[800:])


@pytest.mark.parametrize("method", ["vector", "temperature"])
def test_callback_fits_a_k_class_calibrator_and_predict_returns_calibrated_probabilities(method):
    callback = GroupCalibrationCallback(method, min_group_size=20)
    module, trainer, (x, y, g) = _trained(callback)
    assert module.num_classes == 3
    calibrator = callback.calibrator
    assert module.prediction_calibrator is calibrator and calibrator.num_classes_ == 3
    assert calibrator.group_counts_.tolist() == [int((g == 0).sum()), int((g == 1).sum())]

    loader = DataLoader(TensorDataset(x, y, g), batch_size=128)
    probs = torch.cat(trainer.predict(module, loader))
    module.eval()
    with torch.no_grad():
        logits = module(x)
    assert probs.shape == (len(x), 3)
    torch.testing.assert_close(probs, calibrator.transform(logits, g))
    assert not torch.allclose(probs, torch.softmax(logits, 1), atol=1e-3)
    # fitted on what the validation step returned: refitting on the same logits gives the same maps
    refit = GroupFairnessCalibrator(method, num_groups=2, min_group_size=20).fit(logits.double(), y, g)
    torch.testing.assert_close(refit.maps_["coef"], calibrator.maps_["coef"], atol=1e-5, rtol=0)

    test = trainer.test(module, loader, verbose=False)[0]
    for group in ("group_0", "group_1"):
        assert test[f"calibration/test_ece_after/{group}"] <= test[f"calibration/test_ece_before/{group}"] + 0.02
    # the module's state_dict (and so its checkpoint) keeps it
    restored = FairLightningModule(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)), num_groups=2)
    restored.load_state_dict(module.state_dict())
    assert torch.equal(restored.prediction_calibrator.transform(logits, g), calibrator.transform(logits, g))


@pytest.mark.parametrize(("method", "num_classes", "match"), [
    ("platt", 3, r"`method`='platt' calibrates one score per sample, but FairLightningModule has num_classes=3"),
    ("vector", None, r"`method`='vector' calibrates K-class logits, but FairLightningModule has num_classes=None"),
])
def test_callback_refuses_a_method_that_does_not_fit_the_module(method, num_classes, match):
    model = nn.Sequential(nn.Linear(4, num_classes or 1))
    module = FairLightningModule(model, num_groups=2, num_classes=num_classes)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[GroupCalibrationCallback(method)])
    x, y, g = _class_data(40, seed=1)
    y = y if num_classes else (y > 0).float()
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, DataLoader(TensorDataset(x, y, g), batch_size=20))


# --- per-class reliability figure ----------------------------------------------------------------
def test_classwise_reliability_figure_has_one_panel_per_class_and_one_legend():
    from fair_lightning.callbacks import classwise_reliability_figure
    from fair_lightning.callbacks._dashboard import render
    from fair_lightning.functional import multiclass_calibration_sums

    logits, labels, groups = _miscalibrated(3000, seed=12)
    sums = multiclass_calibration_sums(torch.softmax(logits, 1), labels, groups, 3, K, n_bins=10)[0]
    classes = ["cat", "dog", "bird", "fish"]
    figure = classwise_reliability_figure(sums, ["a", "b", "c"], classes, title="val")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == classes
    assert all(ax.get_legend() is None for ax in panels) and len(figure.legends) == 1
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["perfect", "a", "b", "c"]
    assert all(len(ax.get_lines()) == 4 for ax in panels)  # the diagonal and one curve per group
    assert render(figure).ndim == 3
    ten = multiclass_calibration_sums(torch.softmax(torch.randn(500, 10), 1), torch.randint(0, 10, (500,)),
                                      torch.zeros(500, dtype=torch.long), 1, 10, n_bins=10)[0]
    assert sum(ax.get_visible() for ax in classwise_reliability_figure(ten, ["all"]).axes) == 10
    with pytest.raises(ValueError, match=r"`sums` must be \(G, K, n_bins, 3\).*got shape \(3, 10, 3\)"):
        classwise_reliability_figure(sums[:, 0], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"`class_names` must have 4 names"):
        classwise_reliability_figure(sums, ["a", "b", "c"], ["x"])


# --- DDP ------------------------------------------------------------------------------------------
class _UnevenClassRanks(pl.LightningDataModule):
    """K-class data; rank 0 validates on 170 rows, rank 1 on the other 130 (no distributed sampler)."""

    def __init__(self):
        super().__init__()
        x, y, g = _class_data(556, seed=3)
        self.train_set, self.val_set = TensorDataset(x[:256], y[:256], g[:256]), TensorDataset(x[256:], y[256:], g[256:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self):
        rows = range(0, 170) if self.trainer.global_rank == 0 else range(170, 300)
        return DataLoader(torch.utils.data.Subset(self.val_set, list(rows)), batch_size=64)


class _SaveCalibratorOnRanks(pl.Callback):
    def __init__(self, calibration, out_dir):
        self.calibration, self.out_dir, self.logits = calibration, out_dir, []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.logits.append(pl_module(batch[0]).detach())

    def on_train_end(self, trainer, pl_module):
        import os

        torch.save({"logits": torch.cat(self.logits), "state": self.calibration.calibrator.state_dict()},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_ddp_k_class_calibrator_is_fitted_on_the_union_of_the_ranks(tmp_path):
    """Under 2-process DDP with uneven validation shards, both ranks fit the same vector-scaling
    calibrator, the one a single process fits on the union of their (N, K) logits."""
    from tests._ddp import DestroyProcessGroup

    pl.seed_everything(0, verbose=False)
    calibration = GroupCalibrationCallback("vector", when="validation_epoch_end", min_group_size=10)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=1, num_sanity_val_steps=0,
        use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[calibration, _SaveCalibratorOnRanks(calibration, str(tmp_path)), DestroyProcessGroup()],
    )
    trainer.fit(FairLightningModule(model, num_groups=2, mode="erm", lr=3e-2), datamodule=_UnevenClassRanks())
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert (len(r0["logits"]), len(r1["logits"])) == (170, 130)
    on_ranks = [GroupFairnessCalibrator.from_state_dict(r["state"]) for r in (r0, r1)]
    x, y, g = _class_data(556, seed=3)
    expected = GroupFairnessCalibrator("vector", num_groups=2, min_group_size=10)
    expected.fit(torch.cat((r0["logits"], r1["logits"])).double(), y[256:], g[256:])
    probe = torch.randn(40, 3, dtype=torch.float64)
    groups = torch.arange(40) % 2
    for fitted in on_ranks:
        torch.testing.assert_close(fitted.transform(probe, groups), expected.transform(probe, groups), rtol=1e-6, atol=1e-8)
