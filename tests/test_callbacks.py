import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.calibration import GroupFairnessCalibrator
from fair_lightning.callbacks import FairnessDashboard, GroupCalibrationCallback
from fair_lightning.data import TabularDataModule
from fair_lightning.module import FairLightningModule
from tests._ddp import DestroyProcessGroup

NAMES = ["A", "B"]


def _data(n=600, seed=0):
    """Two groups whose logits the model will learn with a group-specific miscalibration."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    g = (torch.rand(n, generator=gen) < 0.4).long()
    y = ((x[:, 0] + 1.2 * g + 0.8 * torch.randn(n, generator=gen)) > 0.6).float()
    x[:, 3] += g
    return x, y, g


def _loaders(seed=0, batch_size=64):
    train, val, test = (TensorDataset(*_data(600, seed + k)) for k in range(3))
    return (DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size),
            DataLoader(test, batch_size=batch_size))


def _module(num_features=4, **kwargs):
    model = nn.Sequential(nn.Linear(num_features, 16), nn.ReLU(), nn.Linear(16, 1))
    kwargs.setdefault("group_names", NAMES)
    kwargs.setdefault("num_groups", len(kwargs["group_names"]))
    return FairLightningModule(model, lr=1e-2, **kwargs)


def _trainer(**kwargs):
    defaults = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, max_epochs=1,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def _equal_states(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _equal_states(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], equal_nan=True, rtol=0, atol=0)
        else:
            assert a[key] == b[key], key


# --- Adult: calibration lowers the worst group's ECE on the test split -------------------------
@pytest.fixture(scope="module")
def adult():
    dm = TabularDataModule("adult", sensitive="sex", batch_size=1024, eval_batch_size=4096)
    dm.setup()
    return dm


def test_calibration_lowers_max_group_ece_on_adult_test_split(adult):
    pl.seed_everything(0)
    module = _module(adult.num_features, group_names=adult.group_names)
    calibration = GroupCalibrationCallback("platt")  # when="fit_end"
    trainer = _trainer(callbacks=[calibration], limit_train_batches=12)
    trainer.fit(module, datamodule=adult)

    cal = calibration.calibrator
    assert isinstance(cal, GroupFairnessCalibrator)
    assert int(cal.group_counts_.sum()) == len(adult.val_tensors[1])  # the whole validation split, once
    assert cal.group_names_ == adult.group_names  # the datamodule's GroupSpec was picked up
    assert module.prediction_calibrator is cal

    results = trainer.test(module, datamodule=adult, verbose=False)[0]
    before, after = results["calibration/test_ece_before_max"], results["calibration/test_ece_after_max"]
    assert after < before
    # "before" is the module's own metric, from the same statistics core
    assert before == pytest.approx(results["test/calibration_error_max"], abs=1e-6)
    for name in adult.group_names:
        assert f"calibration/test_ece_after/{name}" in results


# --- checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["platt", "isotonic", "temperature"])
def test_checkpoint_round_trip_gives_identical_calibrated_predictions(tmp_path, method):
    train, val, test = _loaders()
    pl.seed_everything(0)
    module = _module()
    calibration = GroupCalibrationCallback(method, when="validation_epoch_end", min_group_size=20)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = _trainer(callbacks=[calibration, checkpoint], enable_checkpointing=True, max_epochs=2)
    trainer.fit(module, train, val)
    expected = torch.cat(trainer.predict(module, test))

    path = checkpoint.best_model_path
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only
    stored = GroupCalibrationCallback.calibrator_from_checkpoint(raw)
    _equal_states(stored.state_dict(), calibration.calibrator.state_dict())

    fresh_module, fresh_callback = _module(), GroupCalibrationCallback(method, min_group_size=20)
    assert fresh_module.prediction_calibrator is None
    restored = torch.cat(_trainer(callbacks=[fresh_callback]).predict(fresh_module, test, ckpt_path=path))
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)
    _equal_states(fresh_callback.calibrator.state_dict(), stored.state_dict())

    # the calibrator travels with the module: no callback needed to predict calibrated
    without_callback = torch.cat(_trainer().predict(_module(), test, ckpt_path=path))
    torch.testing.assert_close(without_callback, expected, rtol=0, atol=0)
    loaded = FairLightningModule.load_from_checkpoint(path, model=_module().model)
    assert loaded.prediction_calibrator is not None
    torch.testing.assert_close(torch.cat(_trainer().predict(loaded, test)), expected, rtol=0, atol=0)
    # the module's state_dict carries it too (torch.save(module.state_dict()) keeps the calibrator)
    plain = _module()
    plain.load_state_dict(raw["state_dict"])
    assert plain.prediction_calibrator is not None
    torch.testing.assert_close(torch.cat(_trainer().predict(plain, test)), expected, rtol=0, atol=0)
    bare = _module()
    weights = {k: v for k, v in raw["state_dict"].items() if k != "_extra_state"}
    bare.load_state_dict(weights)  # weights alone (as saved before 0.2): uncalibrated, and visibly so
    assert bare.prediction_calibrator is None
    assert not torch.allclose(torch.cat(_trainer().predict(bare, test)), expected)


class _Probe(Callback):
    def __init__(self):
        self.seen = []

    def on_train_start(self, trainer, pl_module):
        self.seen.append(pl_module.prediction_calibrator)


def test_fit_from_checkpoint_restores_the_calibrator(tmp_path):
    train, val, test = _loaders()
    pl.seed_everything(0)
    module, calibration = _module(), GroupCalibrationCallback("isotonic")
    trainer = _trainer(callbacks=[calibration])
    trainer.fit(module, train, val)
    path = tmp_path / "after_fit.ckpt"
    trainer.save_checkpoint(path)  # when="fit_end": the calibrator exists only once fit is over

    fresh, probe = GroupCalibrationCallback("isotonic"), _Probe()
    resumed = _trainer(callbacks=[fresh, probe], max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match="no new calibrator was fitted; the previous one is kept"):
        resumed.fit(_module(), train, val, ckpt_path=path)
    (attached,) = probe.seen
    assert attached is fresh.calibrator
    _equal_states(attached.state_dict(), calibration.calibrator.state_dict())


def test_checkpoint_without_calibrator_leaves_predictions_uncalibrated(tmp_path):
    train, val, test = _loaders()
    pl.seed_everything(0)
    module, calibration = _module(), GroupCalibrationCallback("platt")  # fitted after ModelCheckpoint saved
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="during_fit")
    trainer = _trainer(callbacks=[calibration, checkpoint], enable_checkpointing=True)
    trainer.fit(module, train, val)
    assert calibration.calibrator is not None
    assert GroupCalibrationCallback.calibrator_from_checkpoint(checkpoint.best_model_path) is None

    with pytest.warns(UserWarning, match="holds no calibrator"):
        preds = torch.cat(trainer.predict(module, test, ckpt_path=checkpoint.best_model_path))
    assert calibration.calibrator is None and module.prediction_calibrator is None
    x = torch.cat([batch[0] for batch in test])
    torch.testing.assert_close(preds, torch.sigmoid(module(x).squeeze(-1)))


class _ReturnsLogits(FairLightningModule):
    """Returns the logits from the evaluation step, so the callbacks need no forward pass of their own."""

    forward_calls = 0

    def forward(self, x):
        type(self).forward_calls += 1
        return super().forward(x)

    def validation_step(self, batch, batch_idx):
        x, target, groups = self.unpack_batch(batch)
        logits = self(x).squeeze(-1)
        self.val_metrics.update(logits, target, groups)
        self.val_accuracy.update(torch.sigmoid(logits), target)
        self.val_auroc.update(torch.sigmoid(logits), target)
        return {"logits": logits, "target": target, "groups": groups}


def test_callbacks_use_logits_returned_by_the_evaluation_step(tmp_path):
    train, val, test = _loaders()
    module = _ReturnsLogits(nn.Linear(4, 1), num_groups=2, group_names=NAMES)
    calibration = GroupCalibrationCallback("platt", when="validation_epoch_end")
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    trainer = _trainer(callbacks=[calibration, FairnessDashboard()], logger=logger, limit_train_batches=0)
    trainer.validate(module, val, verbose=False)
    assert _ReturnsLogits.forward_calls == len(val)  # once per batch: the module's own
    assert int(calibration.calibrator.group_counts_.sum()) == len(val.dataset)
    assert "figures/val/reliability" in _events(logger.log_dir).Tags()["images"]


# --- TensorBoard ---------------------------------------------------------------------------------
def _events(log_dir):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_gets_scalars_figures_and_hparams(tmp_path):
    train, val, test = _loaders()
    pl.seed_everything(0)
    module = _module(mode="lagrangian", constraints="demographic_parity", grad_ratio_every_n_steps=1)
    logger = TensorBoardLogger(tmp_path, name="run")  # default_hp_metric=True: our HParams declaration must still win
    trainer = _trainer(
        logger=logger, log_every_n_steps=1, max_epochs=2, num_sanity_val_steps=1,
        callbacks=[GroupCalibrationCallback("platt", when="validation_epoch_end"), FairnessDashboard()],
    )
    trainer.fit(module, train, val)
    val_accuracy = float(trainer.callback_metrics["val/accuracy"])
    trainer.test(module, test, verbose=False)
    events = _events(logger.log_dir)

    scalars = set(events.Tags()["scalars"])
    expected = {
        "val/dp_difference", "val/selection_rate/A", "train/grad_norm_ratio", "fairness/violation_hard_max",
        *(f"fairness/multiplier/{name}" for name in module.constraint_names),
        "calibration/ece_before/A", "calibration/ece_after/B", "calibration/ece_after_max",
        "calibration/test_ece_before_max", "calibration/test_ece_after/A",
        "hp/accuracy", "hp/dp_difference", "hp/eo_difference", "hp/ece_max", "hp/test_accuracy",
    }
    assert expected <= scalars, expected - scalars
    # one figure per validation epoch (none for the sanity check), and one for the test run
    images = events.Tags()["images"]
    for tag in ("figures/val/group_rates", "figures/val/reliability"):
        assert tag in images and len(events.Images(tag)) == 2
    for tag in ("figures/test/group_rates", "figures/test/reliability"):
        assert tag in images and len(events.Images(tag)) == 1
    # hp/ values copy the module's logged metrics; placeholders were NaN
    assert events.Scalars("hp/accuracy")[-1].value == pytest.approx(val_accuracy)
    assert events.Scalars("hp/test_accuracy")[-1].value == pytest.approx(float(trainer.callback_metrics["test/accuracy"]))

    hparams = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(content)
        for tag, content in events.PluginTagToContent("hparams").items()
    }
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= hparams.keys()
    session = hparams["_hparams_/session_start_info"].session_start_info
    assert session.hparams["mode"].string_value == "lagrangian"
    assert session.hparams["lr"].number_value == pytest.approx(1e-2)
    metrics = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert {"hp/accuracy", "hp/dp_difference", "hp/eo_difference", "hp/ece_max"} <= metrics


@pytest.mark.parametrize("logger", [False, "csv"])
def test_dashboard_without_tensorboard_is_a_noop_that_warns_once(tmp_path, logger):
    train, val, test = _loaders()
    if logger == "csv":
        logger = CSVLogger(tmp_path)
    dashboard = FairnessDashboard()
    trainer = _trainer(logger=logger, callbacks=[dashboard], num_sanity_val_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_module(), train, val)
        trainer.test(trainer.lightning_module, test, verbose=False)
    ours = [w for w in caught if "FairnessDashboard found no TensorBoardLogger" in str(w.message)]
    assert len(ours) == 1
    assert "val/accuracy" in trainer.callback_metrics or "test/accuracy" in trainer.callback_metrics
    assert not list(tmp_path.rglob("events.out.tfevents*"))


# --- arguments -----------------------------------------------------------------------------------
def test_bad_arguments_are_refused_early():
    with pytest.raises(ValueError, match=r"`method` must be one of \['platt', 'isotonic', 'temperature', 'vector'\], got 'beta'"):
        GroupCalibrationCallback("beta")
    with pytest.raises(ValueError, match=r"`when` must be one of \['fit_end', 'validation_epoch_end'\], got 'never'"):
        GroupCalibrationCallback(when="never")
    with pytest.raises(ValueError, match="`min_group_size`"):
        GroupCalibrationCallback(min_group_size=0)
    with pytest.raises(ValueError, match="`n_bins`"):
        GroupCalibrationCallback(n_bins=0)
    with pytest.raises(ValueError, match="`shrinkage`"):
        GroupCalibrationCallback(shrinkage=-1.0)
    with pytest.raises(TypeError, match="num_groups"):
        GroupCalibrationCallback(num_groups=3)
    with pytest.raises(ValueError, match="`n_bins`"):
        FairnessDashboard(n_bins=0)
    with pytest.raises(ValueError, match="`hp_metrics`"):
        FairnessDashboard(hp_metrics=["hp/accuracy"])
    assert GroupCalibrationCallback("temperature").state_key != GroupCalibrationCallback("platt").state_key


# --- DDP -----------------------------------------------------------------------------------------
class _UnevenRanks(pl.LightningDataModule):
    """Rank 0 validates on 170 rows, rank 1 on the other 130 (no distributed sampler)."""

    def __init__(self):
        super().__init__()
        self.train_set, self.val_set = TensorDataset(*_data(256, 0)), TensorDataset(*_data(300, 1))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self):
        rows = range(0, 170) if self.trainer.global_rank == 0 else range(170, 300)
        return DataLoader(torch.utils.data.Subset(self.val_set, list(rows)), batch_size=64)


class _SaveOnRanks(Callback):
    """Saves, per rank, the validation rows it saw and the calibrator the calibration callback fitted."""

    def __init__(self, calibration, out_dir):
        self.calibration, self.out_dir, self.rows = calibration, out_dir, []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            x, y, g = batch
            self.rows.append((pl_module(x).squeeze(-1).detach(), y, g))

    def on_train_end(self, trainer, pl_module):
        logits, y, g = (torch.cat(parts) for parts in zip(*self.rows))
        record = {"logits": logits, "y": y, "g": g, "state": self.calibration.calibrator.state_dict()}
        torch.save(record, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_ddp_calibrator_is_fitted_on_the_union_of_the_ranks(tmp_path):
    pl.seed_everything(0)
    calibration = GroupCalibrationCallback("platt", when="validation_epoch_end", min_group_size=10)
    logger = TensorBoardLogger(tmp_path, name="ddp", default_hp_metric=False)
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=1, num_sanity_val_steps=1,
        use_distributed_sampler=False, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[calibration, _SaveOnRanks(calibration, str(tmp_path)), FairnessDashboard(), DestroyProcessGroup()],
    )
    trainer.fit(_module(), datamodule=_UnevenRanks())

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert (len(r0["y"]), len(r1["y"])) == (170, 130)
    _equal_states(r0["state"], r1["state"])  # the same calibrator on both ranks
    union = {k: torch.cat((r0[k], r1[k])) for k in ("logits", "y", "g")}
    expected = GroupFairnessCalibrator("platt", num_groups=2, min_group_size=10)
    expected.fit(torch.sigmoid(union["logits"].double()), union["y"], union["g"])
    fitted = GroupFairnessCalibrator.from_state_dict(r0["state"])
    torch.testing.assert_close(fitted.group_counts_, expected.group_counts_)
    for key, value in expected.maps_.items():
        torch.testing.assert_close(fitted.maps_[key], value, rtol=1e-9, atol=1e-12)
    scores = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    groups = torch.arange(50) % 2
    torch.testing.assert_close(fitted.transform(scores, groups), expected.transform(scores, groups))

    (log_dir,) = (tmp_path / "ddp").glob("version_*")  # written by rank zero of the spawned processes
    events = _events(log_dir)
    for tag in ("figures/val/group_rates", "figures/val/reliability"):  # drawn once, by rank zero, from summed sums
        assert len(events.Images(tag)) == 1


def test_reliability_figure_draws_on_a_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fair_lightning.callbacks import reliability_figure
    from fair_lightning.functional import calibration_sums

    gen = torch.Generator().manual_seed(0)
    probs, target, groups = torch.rand(200, generator=gen), torch.randint(0, 2, (200,), generator=gen), torch.randint(0, 2, (200,), generator=gen)
    sums = calibration_sums(probs, target, groups, 2, n_bins=5)
    figure, (left, right) = plt.subplots(1, 2)
    assert reliability_figure(sums, ["a", "b"], title="before", ax=right) is figure
    assert len(right.lines) == 3 and not left.lines  # the diagonal and one curve per group
    assert right.get_title() == "Reliability (before)"
    plt.close(figure)
    alone = reliability_figure(sums, ["a", "b"])
    assert alone is not figure and len(alone.axes) == 1


def test_a_fit_end_calibrator_is_refitted_by_validate_when_the_weights_changed_after_it_was_fitted():
    """``ConstrainedModelSelection`` restores an earlier epoch after a ``"fit_end"`` calibrator was
    fitted on the last epoch's outputs. The callback keeps a fingerprint of the weights it was
    fitted for: ``test``/``predict`` on other weights warn, and ``validate`` refits on them."""
    from fair_lightning.callbacks import ConstrainedModelSelection

    train, val, test = _loaders()
    pl.seed_everything(0)
    module = _module()
    calibration = GroupCalibrationCallback("platt", min_group_size=20)  # when="fit_end"
    # a tolerance only the early, nearly constant epochs meet: the selection restores one of them
    selection = ConstrainedModelSelection([("demographic_parity", 0.03)], min_count=0)
    trainer = _trainer(callbacks=[calibration, selection], max_epochs=4)
    trainer.fit(module, train, val)
    assert selection.best_epoch < 3  # an earlier epoch was restored after the calibrator was fitted
    fitted_on_last = calibration.calibrator
    with pytest.warns(UserWarning, match="the calibrator was fitted for other weights"):
        trainer.test(module, test, verbose=False)
    trainer.validate(module, val, verbose=False)
    assert calibration.calibrator is not fitted_on_last and module.prediction_calibrator is calibration.calibrator
    # the refit equals a calibrator fitted directly on the restored weights' validation outputs
    x, y, g = val.dataset.tensors
    module.eval()
    with torch.no_grad():
        probs = torch.sigmoid(module(x).reshape(-1).double())
    direct = GroupFairnessCalibrator("platt", num_groups=2, min_group_size=20).fit(probs, y.long(), g)
    torch.testing.assert_close(calibration.calibrator.transform_probabilities(probs, g),
                               direct.transform_probabilities(probs, g), rtol=0, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.test(module, test, verbose=False)  # fitted for these weights now: no warning
