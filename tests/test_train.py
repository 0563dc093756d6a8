"""The Hydra application: configs, in-process runs, metrics.json, error messages, the main job's overrides."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from torch import nn

from fair_lightning.main import DEFAULT_OVERRIDES, DEFAULT_SWEEPS, sweep_overrides
from fair_lightning.models import MLP
from fair_lightning.module import FairLightningModule
from fair_lightning.train import OBJECTIVE_KEYS, build, fit_and_test, module_arguments, objective_values, run, run_job

CONF = Path(__file__).resolve().parents[1] / "fair_lightning" / "conf"
FAIRNESS = ("erm", "penalty_dp", "penalty_eo", "mutual_information", "lagrangian_dp", "lagrangian_eo", "adversarial")
REGRESSION_FAIRNESS = ("penalty_regression_dp", "bounded_group_loss")
EXPERIMENTS = ("adult_sex", "adult_race", "compas_race", "german_age")
# a small, fast job: 2,000 synthetic rows, 4 training batches, no logger
TINY = ["data=biased_lending", "data.dataset_kwargs.n=2000", "trainer=fast", "logger=none"]


def _compose(overrides=(), return_hydra_config=False):
    with initialize_config_module("fair_lightning.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _env():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("HYDRA_FULL_ERROR", None)  # Hydra's short error messages, as users get them
    return env


# ------------------------------------------------------------------------------------ configs
def test_config_groups_have_the_documented_options():
    assert _options("data") == ["adult", "biased_lending", "compas", "german", "group_shift_classes", "group_shift_regression"]
    assert _options("fairness") == sorted(FAIRNESS + REGRESSION_FAIRNESS)
    assert _options("task") == ["binary", "multiclass", "regression"]
    assert _options("experiment") == sorted(EXPERIMENTS)
    assert set(_options("trainer")) == {"default", "fast"}
    assert set(_options("logger")) == {"tensorboard", "csv", "none"}
    assert {"default", "none"} <= set(_options("callbacks"))
    assert set(_options("hydra/launcher")) == {"parallel", "slurm", "local"}


def test_default_config():
    cfg = _compose()
    assert cfg.data._target_ == "fair_lightning.data.TabularDataModule"
    assert cfg.data.dataset == "adult" and cfg.data.num_workers == 0 and cfg.data.seed == cfg.seed
    assert cfg.fairness.mode == "erm"
    assert cfg.model._target_ == "fair_lightning.models.MLP"
    assert set(cfg.callbacks) == {"calibration", "dashboard"}
    assert list(cfg.objective) == ["val_accuracy", "val_dp_difference"]
    assert all(name in OBJECTIVE_KEYS for name in cfg.objective)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_set_data_and_groups(experiment):
    cfg = _compose([f"experiment={experiment}"])
    dataset, sensitive = {"adult_sex": ("adult", "sex"), "adult_race": ("adult", "race"),
                          "compas_race": ("compas", "race"), "german_age": ("german", "age_group")}[experiment]
    assert (cfg.data.dataset, cfg.data.sensitive) == (dataset, sensitive)
    if experiment == "compas_race":  # an experiment's module keys override train.yaml's (`_self_` comes first)
        assert cfg.module.min_count == 3


@pytest.mark.parametrize("option", FAIRNESS)
def test_fairness_options_build_a_module(option, tmp_path):
    cfg = _compose([*TINY, f"fairness={option}", "callbacks=none"])
    mode = {"erm": "erm", "lagrangian_dp": "lagrangian", "lagrangian_eo": "lagrangian", "adversarial": "adversarial"}
    assert cfg.fairness.mode == mode.get(option, "penalty")
    parts = build(cfg, tmp_path)
    assert isinstance(parts.module, FairLightningModule) and isinstance(parts.model, MLP)
    assert parts.module.mode == cfg.fairness.mode
    assert parts.module.group_names == ["group=A", "group=B"] and parts.module.num_groups == 2
    assert parts.model[0].in_features == parts.datamodule.num_features
    assert parts.trainer.max_epochs == 1
    assert module_arguments(cfg)["lr"] == cfg.module.lr


def test_default_task_is_binary_and_each_task_picks_offline_data():
    assert _compose().module.task == "binary" and _compose().data.dataset == "adult"
    regression = _compose(["task=regression"])
    assert (regression.module.task, regression.data.dataset) == ("regression", "group_shift_regression")
    assert list(regression.objective) == ["val_mse", "val_dp_difference"]
    assert list(regression.callbacks) == ["dashboard"]  # no calibration: it maps classifiers' probabilities
    multiclass = _compose(["task=multiclass"])
    assert (multiclass.module.task, multiclass.data.dataset) == ("multiclass", "group_shift_classes")
    assert multiclass.callbacks.calibration.method == "temperature" and "dashboard" in multiclass.callbacks
    assert _compose(["task=regression", "data=biased_lending"]).data.dataset == "biased_lending"  # the command line wins


@pytest.mark.parametrize("option", REGRESSION_FAIRNESS + ("erm",))
def test_regression_task_runs(option, tmp_path):
    cfg = _compose(["task=regression", "data.dataset_kwargs.n=2000", "trainer=fast", "logger=none", f"fairness={option}"])
    record = run(cfg, tmp_path)
    assert record["status"] == "ok" and record["dataset"] == "group_shift_regression" and record["task"] == "regression"
    from fair_lightning.pareto import validate_record

    assert validate_record(record) == []  # regression gaps have no upper end of 1
    for key in ("val_mse", "test_mse", "test_mae", "test_dp_difference", "test_mse_difference", "test_cdf_gap"):
        assert math.isfinite(record[key]), key
    assert record["test_accuracy"] is None
    assert set(record["test_mean_squared_error_by_group"]) == {"group=A", "group=B"}
    if option == "bounded_group_loss":
        assert (record["mode"], record["fairness"], record["tolerance"]) == ("bounded_group_loss", "squared_error", 1.2)
    assert math.isfinite(objective_values(record, cfg.objective)[0])


def test_multiclass_task_runs(tmp_path):
    cfg = _compose(["task=multiclass", "data.dataset_kwargs.n=2000", "trainer=fast", "logger=none", "fairness=lagrangian_dp"])
    parts = build(cfg, tmp_path)
    assert parts.module.task == "multiclass" and parts.module.num_classes == 3 and parts.model[-1].out_features == 3
    record = run(cfg, tmp_path)
    assert record["status"] == "ok" and 0 < record["test_accuracy"] <= 1 and math.isfinite(record["test_dp_difference"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["task=regression", "fairness=lagrangian_dp"], "does not fit task=regression.*bounded_group_loss"),
        (["task=regression", "fairness=penalty_dp"], "fairness='demographic_parity'.*does not fit task=regression"),
        (["task=binary", "data=biased_lending", "fairness=bounded_group_loss"], "does not fit task=binary"),
        (["task=multiclass", "fairness=penalty_regression_dp"], "does not fit task=multiclass"),
        (["task=binary", "data=group_shift_regression"], "is a regression data set, but task=binary; pass task=regression"),
        (["task=regression", "data=biased_lending"], "is a binary data set, but task=regression"),
    ],
)
def test_task_and_fairness_or_data_that_do_not_fit_are_a_clear_error(overrides, match, tmp_path):
    cfg = _compose(["trainer=fast", "logger=none", *overrides, "data.dataset_kwargs.n=2000"])
    with pytest.raises(ValueError, match=match):
        run(cfg, tmp_path)


def test_launcher_configs():
    parallel = _compose(["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert parallel._target_ == "hydra_plugins.fair_lightning_launcher.ResilientLauncher" and parallel.n_jobs == 2
    joblib = _compose(["hydra/launcher=joblib"], return_hydra_config=True).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `slurm` extra is not installed")
    slurm = _compose(["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.timeout_min > 0
    local = _compose(["hydra/launcher=local"], return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher")
    hydra_cfg = _compose(return_hydra_config=True).hydra
    assert hydra_cfg.job.chdir is False
    assert hydra_cfg.sweep.dir.startswith("outputs/sweeps/") and hydra_cfg.run.dir.startswith("outputs/runs/")


# ------------------------------------------------------------------------------------ errors
def test_misspelt_override_is_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match="Could not override 'fairness.etaa'") as info:
        _compose(["fairness=penalty_dp", "fairness.etaa=1"])
    assert "Key 'etaa' is not in struct" in str(info.value.__cause__)


def test_unknown_data_option_lists_the_options():
    with pytest.raises(MissingConfigException, match="Could not find 'data/nope'") as info:
        _compose(["data=nope"])
    assert all(name in str(info.value) for name in ("adult", "compas", "german", "biased_lending"))


def test_unknown_data_set_fails_the_job_with_the_valid_names(tmp_path):
    cfg = _compose([*TINY, "data.dataset=nope"])
    with pytest.raises(Exception, match="`dataset` must be one of"):
        run(cfg, tmp_path)
    record = run_job(cfg, tmp_path, overrides=["data.dataset=nope"])  # never raises
    assert record["status"] == "failed"
    assert record["error"].startswith("ValueError: `dataset` must be one of ['adult', 'biased_lending', 'census_kdd', 'compas', 'german', 'group_shift_classes', 'group_shift_regression']")
    assert "while instantiating `data`" in record["error"]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["status"] == "failed" and "Traceback" in on_disk["traceback"]
    assert on_disk["overrides"] == ["data.dataset=nope"]
    assert all(math.isnan(v) for v in objective_values(record, ["val_accuracy", "val_dp_difference"]))


def test_unknown_objective_is_a_clear_error(tmp_path):
    cfg = _compose([*TINY, "objective=val_acc"])
    with pytest.raises(ValueError, match="`objective` names unknown metrics \\['val_acc'\\]"):
        run(cfg, tmp_path)


def test_command_line_errors_are_one_readable_message(tmp_path):
    misspelt = subprocess.run(
        [sys.executable, "-m", "fair_lightning.train", "fairness=penalty_dp", "fairness.etaa=1",
         f"hydra.run.dir={tmp_path / 'a'}"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert misspelt.returncode == 1
    assert "Key 'etaa' is not in struct" in misspelt.stderr and "Traceback" not in misspelt.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "fair_lightning.train", *TINY, "data.dataset=nope", f"hydra.run.dir={tmp_path / 'b'}"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    output = missing.stdout + missing.stderr
    assert missing.returncode == 1, output
    assert "job failed: ValueError: `dataset` must be one of ['adult', 'biased_lending', 'census_kdd', 'compas', 'german', 'group_shift_classes', 'group_shift_regression']" in output
    assert "Traceback" not in output
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------------ running
def test_run_in_process_returns_the_record(tmp_path):
    cfg = _compose([*TINY, "fairness=penalty_dp", "fairness.eta=2", "callbacks=none"])
    record = run(cfg, tmp_path)
    assert record["status"] == "ok"
    assert (record["mode"], record["fairness"], record["eta"], record["tolerance"]) == ("penalty", "demographic_parity", 2.0, None)
    assert record["groups"] == ["group=A", "group=B"] and record["dataset"] == "biased_lending"
    for key in ("val_accuracy", "test_accuracy", "test_auroc", "test_dp_difference", "test_dp_ratio", "test_eo_difference"):
        assert 0.0 <= record[key] <= 1.0, key
    assert set(record["test_selection_rate_by_group"]) == {"group=A", "group=B"}
    assert set(record["test_calibration_error_by_group"]) == {"group=A", "group=B"}
    rates = record["test_selection_rate_by_group"]
    assert record["test_dp_difference"] == pytest.approx(abs(rates["group=A"] - rates["group=B"]), abs=1e-6)
    assert record["fit_seconds"] > 0 and record["epochs"] == 1
    assert record["metrics"]["test/accuracy"] == pytest.approx(record["test_accuracy"])


def test_run_job_writes_metrics_json_with_loggers_and_callbacks(tmp_path):
    cfg = _compose([*TINY, "logger=tensorboard", "callbacks=default", "fairness=lagrangian_dp", "fairness.tolerance=0.03"])
    record = run_job(cfg, tmp_path, overrides=["fairness=lagrangian_dp"], job_num=3)
    assert record["status"] == "ok", record.get("traceback")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["job"] == 3 and on_disk["overrides"] == ["fairness=lagrangian_dp"]
    assert (on_disk["mode"], on_disk["tolerance"], on_disk["eta"]) == ("lagrangian", 0.03, None)
    assert on_disk["total_seconds"] >= on_disk["fit_seconds"] > 0
    assert any("calibration/" in key for key in on_disk["metrics"])  # GroupCalibrationCallback ran
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert objective_values(on_disk, "test_accuracy") == pytest.approx(on_disk["test_accuracy"])
    assert objective_values(on_disk, None) is None
    # what the selection on validation chose, and whether its constraint is certified there
    selection = on_disk["selection"]
    assert isinstance(selection["epoch"], int) and selection["reason"] and selection["confidence"] == 0.95
    assert set(selection["certified"]) == {"demographic_parity"} and on_disk["certified"] in ("holds", "uncertain", "violated")
    assert on_disk["certified"] == selection["certified"]["demographic_parity"]
    assert 0 <= selection["ci_high"]["demographic_parity"] <= 1


def test_checkpoint_callbacks_enable_checkpointing(tmp_path):
    parts = build(_compose([*TINY, "callbacks=checkpoint"]), tmp_path)
    assert parts.trainer.checkpoint_callback is not None
    parts = build(_compose([*TINY, "callbacks=none"]), tmp_path)
    assert parts.trainer.checkpoint_callback is None


# ------------------------------------------------------------------------------------ models
def test_mlp_returns_one_logit_and_exposes_a_representation():
    model = MLP(5, hidden=(8, 4), dropout=0.1)
    assert model(torch.randn(3, 5)).shape == (3, 1)
    assert isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear) and model[-1].in_features == 4
    assert MLP(5, hidden=())(torch.randn(2, 5)).shape == (2, 1)  # logistic regression
    module = FairLightningModule(MLP(5, hidden=(8,)), num_groups=2, mode="adversarial", adversary_input="representation")
    logits, rep = module.forward_with_representation(torch.randn(3, 5))
    assert logits.shape == (3, 1) and rep.shape == (3, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"in_features": 0}, "`in_features` must be an int >= 1, got 0"), ({"hidden": (8, 0)}, r"`hidden\[1\]`"),
     ({"dropout": 1.0}, "`dropout` must be a number in \\[0, 1\\)"), ({"activation": "swish"}, "`activation` must be one of")],
)  # fmt: skip
def test_mlp_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**{"in_features": 4, **kwargs})


# ------------------------------------------------------------------------------------ main job
def test_main_job_overrides():
    sweep = Path("/tmp/sweep")
    penalty = sweep_overrides([], sweep, DEFAULT_SWEEPS["penalty"])
    expected = {**DEFAULT_OVERRIDES, **DEFAULT_SWEEPS["penalty"], "hydra.sweep.dir": str(sweep)}
    assert penalty == [f"{k}={v}" for k, v in expected.items()]
    assert len(DEFAULT_SWEEPS["penalty"]["fairness.eta"].split(",")) == 8
    lagrangian_default = sweep_overrides([], sweep, DEFAULT_SWEEPS["lagrangian"])
    assert "fairness=lagrangian_dp" in lagrangian_default
    assert any(o.startswith("fairness.tolerance=") for o in lagrangian_default)
    user = sweep_overrides(["fairness.eta=0,1", "trainer.max_epochs=2"], sweep, DEFAULT_SWEEPS["penalty"])
    assert "fairness.eta=0,1" in user and "trainer.max_epochs=2" in user
    assert not any(o.startswith("fairness.eta=0,0.5") for o in user)
    # choosing a method makes the sweep the user's own: no default axis is added
    lagrangian = sweep_overrides(["fairness=lagrangian_dp", "fairness.tolerance=0.01,0.05"], sweep, DEFAULT_SWEEPS["penalty"])
    assert not any(o.startswith("fairness.eta") for o in lagrangian) and "fairness=penalty_dp" not in lagrangian
    submitit = sweep_overrides(["hydra/launcher=local"], sweep)
    assert not any(o.startswith("hydra.launcher.n_jobs") for o in submitit)


# ------------------------------------------------------------------------------------ HParams
def test_hparams_show_the_swept_and_method_settings_first_and_nothing_unused(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    from fair_lightning.callbacks._dashboard import run_hparams

    logged = {}
    monkeypatch.setattr(TensorBoardLogger, "log_hyperparams", lambda self, params, metrics=None: logged.setdefault("p", dict(params)))
    cfg = _compose([*TINY, "logger=tensorboard", "callbacks.calibration=null", "callbacks.dashboard.figures=false",
                    "fairness=lagrangian_dp", "fairness.tolerance=0.03"])  # fmt: skip
    run(cfg, tmp_path)
    params = logged["p"]
    assert list(params)[:3] == ["mode", "tolerance", "constraints"] and params["tolerance"] == 0.03
    assert "eta" not in params and "adversary_lr" not in params and "penalty" not in params  # unused by the mode
    assert {"lr", "dual_lr", "dataset", "seed"} <= set(params)
    # a swept setting comes first
    penalty = run_hparams({"mode": "penalty", "eta": 4.0, "lr": 0.01, "tolerance": 0.01, "adversary_lr": 1e-3},
                          {"dataset": "adult", "seed": 0}, swept=["lr", "eta", "resume"])  # fmt: skip
    assert list(penalty) == ["lr", "eta", "mode", "dataset", "seed"]
    erm = run_hparams({"mode": "erm", "eta": 1.0, "tolerance": 0.01, "lr": 0.003}, {})
    assert erm == {"mode": "erm", "lr": 0.003}


def test_lagrangian_job_selects_on_validation_with_thresholds_and_reports_intervals(tmp_path):
    """The lagrangian configs add ConstrainedModelSelection(thresholds=True): the returned model
    meets the tolerance on validation (after group thresholds), its test metrics are of the
    thresholded classifier, and the record carries 95% intervals of the differences."""
    cfg = _compose([*TINY, "fairness=lagrangian_dp", "fairness.tolerance=0.05", "callbacks=none", "trainer.max_epochs=3"])
    from fair_lightning.callbacks import ConstrainedModelSelection

    parts = build(cfg, tmp_path)
    selection = [cb for cb in parts.trainer.callbacks if isinstance(cb, ConstrainedModelSelection)]
    assert len(selection) == 1 and selection[0].thresholds and selection[0].constraints == [("demographic_parity", 0.05)]
    record = run(cfg, tmp_path)
    assert record["status"] == "ok"
    assert record["val_dp_difference"] <= 0.05 + 1e-9  # thresholds fitted on validation at the tolerance
    for stage in ("val", "test"):
        low, high = record[f"{stage}_dp_difference_ci_low"], record[f"{stage}_dp_difference_ci_high"]
        assert 0.0 <= low <= record[f"{stage}_dp_difference"] <= high <= 1.0
    off = _compose([*TINY, "fairness=lagrangian_dp", "callbacks=none", "selection.enabled=false"])
    assert not [cb for cb in build(off, tmp_path).trainer.callbacks if isinstance(cb, ConstrainedModelSelection)]


def test_a_restored_epoch_gets_a_calibrator_fitted_on_its_own_outputs(tmp_path):
    """callbacks=default fits the calibrator when training ends, on the last epoch's outputs; the
    selection then restores an earlier epoch. The job's validation of the restored model refits
    the calibrator, so the returned module's calibrator is the one its own weights give."""
    import lightning.pytorch as pl

    from fair_lightning.calibration import GroupFairnessCalibrator
    from fair_lightning.callbacks import ConstrainedModelSelection, GroupCalibrationCallback

    cfg = _compose([*TINY, "fairness=lagrangian_dp", "fairness.tolerance=0.02", "trainer.max_epochs=4"])
    pl.seed_everything(0)
    parts = build(cfg, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_and_test(parts.trainer, parts.module, parts.datamodule)
    selection = next(cb for cb in parts.trainer.callbacks if isinstance(cb, ConstrainedModelSelection))
    calibration = next(cb for cb in parts.trainer.callbacks if isinstance(cb, GroupCalibrationCallback))
    assert selection.best_epoch < 3  # the premise: an earlier epoch was restored after the calibrator's fit
    assert parts.module.prediction_calibrator is calibration.calibrator
    x, y, groups = parts.datamodule.val_tensors
    module = parts.module.eval()
    with torch.no_grad():
        probs = torch.sigmoid(module(x).reshape(-1).double())
    limit = int(cfg.trainer.limit_val_batches) * parts.datamodule.eval_batch_size  # trainer=fast validates 2 batches
    direct = GroupFairnessCalibrator("platt", num_groups=parts.datamodule.num_groups,
                                     group_spec=parts.datamodule.group_spec, min_group_size=calibration.min_group_size)
    direct.fit(probs[:limit], y[:limit].long(), groups[:limit])
    torch.testing.assert_close(calibration.calibrator.transform_probabilities(probs, groups),
                               direct.transform_probabilities(probs, groups), rtol=0, atol=1e-6)


@pytest.mark.ddp
def test_a_ddp_spawn_job_records_what_the_workers_did(tmp_path):
    """Under trainer.strategy=ddp_spawn the workers train; the record still has the epochs, the
    steps and the selection they saw, the returned model carries the selected thresholds (its
    validation metrics meet the tolerance), and every split row is counted once."""
    cfg = _compose([*TINY, "fairness=lagrangian_dp", "fairness.tolerance=0.05", "callbacks=none", "trainer.max_epochs=2",
                    "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0", "+trainer.strategy=ddp_spawn",
                    "trainer.devices=2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = run(cfg, tmp_path)
    dm = build(cfg, tmp_path / "probe").datamodule
    assert record["epochs"] == 2 and record["global_step"] > 0
    assert record["selection"]["constraints"] == [["demographic_parity", 0.05]]
    assert record["certified"] in ("holds", "uncertain", "violated")
    assert record["val_dp_difference"] <= 0.05 + 1e-9  # the restored epoch with its thresholds, validated
    assert sum(record["val_count_by_group"].values()) == len(dm.val_tensors[1])
    assert sum(record["test_count_by_group"].values()) == len(dm.test_tensors[1])
    assert not (tmp_path / ".fit_summary.json").exists()  # read and removed


@pytest.mark.ddp
def test_a_ddp_spawn_crossfit_job_records_each_folds_fit(tmp_path):
    """Each fold trains under ddp_spawn; the record has each fold's epochs and selection, and the
    mixture is tested once per row (its evaluation passes run in one process: it failed to
    pickle a local module under ddp_spawn before)."""
    cfg = _compose([*TINY, "trainer.max_epochs=2", "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0",
                    "crossfit.folds=2", "selection.constraints={demographic_parity: 0.05}", "data.val_fraction=null",
                    "+trainer.strategy=ddp_spawn", "trainer.devices=2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = run(cfg, tmp_path)
    dm = build(cfg, tmp_path / "probe").datamodule
    assert record["crossfit"]["epochs_per_fold"] == [2, 2]
    assert all(s is not None and s["constraints"] == [["demographic_parity", 0.05]] for s in record["crossfit"]["folds_selection"])
    assert sum(record["test_count_by_group"].values()) == len(dm.test_tensors[1])
    assert sum(record["val_count_by_group"].values()) == record["crossfit"]["rows"]


def test_stated_selection_constraints_turn_an_erm_job_into_post_processing(tmp_path):
    """`selection.constraints` judges any method's epochs against stated constraints: an ERM job
    returns the unconstrained model with group thresholds where they pay off, meets the tolerance
    on validation, and records what the selection chose (for choose_run across a sweep); a
    malformed value is refused by name."""
    from fair_lightning.callbacks import ConstrainedModelSelection

    cfg = _compose([*TINY, "fairness=erm", "callbacks=none", "trainer.max_epochs=3",
                    "selection.constraints={demographic_parity: 0.03}"])  # fmt: skip
    selection = [cb for cb in build(cfg, tmp_path).trainer.callbacks if isinstance(cb, ConstrainedModelSelection)]
    assert len(selection) == 1 and selection[0].thresholds and selection[0].constraints == [("demographic_parity", 0.03)]
    record = run(cfg, tmp_path)
    assert record["status"] == "ok" and record["mode"] == "erm"
    assert record["val_dp_difference"] <= 0.03 + 1e-9
    chosen = record["selection"]
    assert chosen["constraints"] == [["demographic_parity", 0.03]] and chosen["feasible"]
    assert isinstance(chosen["thresholds"], bool) and 0.0 <= chosen["objective"] <= 1.0
    # without stated constraints an ERM job has no selection
    plain = _compose([*TINY, "fairness=erm", "callbacks=none"])
    assert not [cb for cb in build(plain, tmp_path).trainer.callbacks if isinstance(cb, ConstrainedModelSelection)]
    bad = _compose([*TINY, "fairness=erm", "callbacks=none", "selection.constraints=[demographic_parity]"])
    with pytest.raises(ValueError, match=r"`selection.constraints` must be a mapping \{definition: tolerance\}"):
        build(bad, tmp_path)
    regression = _compose(["task=regression", "trainer=fast", "logger=none", "callbacks=none",
                           "selection.constraints={demographic_parity: 0.02}"])  # fmt: skip
    with pytest.raises(ValueError, match=r"`selection.constraints` states a classifier's constraints; a regression job"):
        build(regression, tmp_path)


def test_lagrangian_job_with_group_calibration_applies_thresholds_to_the_probabilities_they_were_fitted_on(tmp_path):
    """Selection fits thresholds on the model's own probabilities; the group calibrator (fitted
    at the end of fit too) must not be applied before them: validation then meets the tolerance."""
    cfg = _compose([*TINY, "fairness=lagrangian_dp", "fairness.tolerance=0.03", "callbacks=default",
                    "callbacks.dashboard=null", "trainer.max_epochs=3"])  # fmt: skip
    record = run(cfg, tmp_path)
    assert record["status"] == "ok"
    assert record["val_dp_difference"] <= 0.03 + 1e-9
    assert "fairness/violation_hard_max_epoch" in record["metrics"]  # the training keys survive re-validation


# ------------------------------------------------------------------------------------ cross-fitting
CROSSFIT = [*TINY, "callbacks=none", "fairness=erm", "crossfit.folds=3", "selection.constraints={demographic_parity: 0.05}"]


def _fold_mixture(cfg, folds):
    """A FoldMixture of freshly built fold modules, to load a job's crossfit.pt into (what
    `load_crossfit` does from a job directory's saved config)."""
    from fair_lightning.crossfit import FoldMixture
    from fair_lightning.train import build_module, fold_config

    data = _instantiate_data(fold_config(cfg, folds, 0))
    return FoldMixture([build_module(cfg, data)[1] for _ in range(folds)]), data


def _instantiate_data(cfg):
    from hydra.utils import instantiate

    data = instantiate(cfg.data, _convert_="all")
    data.setup("fit")
    return data


def test_crossfit_job_tests_the_fold_mixture_and_reports_the_out_of_fold_rows(tmp_path):
    """`crossfit.folds=3`: one model per fold (in fold_k), thresholds on every out-of-fold score,
    val_* metrics of the mixture's decisions on those rows, test_* of the mixture on the test split,
    the mixture saved; the numbers agree with the mixture loaded from crossfit.pt."""
    from fair_lightning.functional import group_sums

    cfg = _compose(CROSSFIT)
    record = run_job(cfg, tmp_path)
    assert record["status"] == "ok", record.get("traceback")
    crossfit = record["crossfit"]
    assert crossfit["folds"] == 3 and crossfit["constraint"] == "demographic_parity" and crossfit["tolerance"] == 0.05
    assert crossfit["rows"] == sum(crossfit["rows_per_fold"]) == 1600  # the 2,000 rows less the 20% test split
    assert record["certified"] == crossfit["verdict"] in ("holds", "uncertain")
    assert [sel["constraints"] for sel in crossfit["folds_selection"]] == [[["demographic_parity", 0.05]]] * 3
    assert crossfit["epochs_per_fold"] == [1, 1, 1] and sum(crossfit["global_step_per_fold"]) == record["global_step"]
    # the out-of-fold loss and AUROC are of the scores, not of the +-30 logits of the decisions (whose loss is ~30 x the error)
    assert 0.3 < record["val_loss"] < 1.0 and 0.5 < record["val_auroc"] <= 1.0
    # validation: the mixture's decisions on the out-of-fold rows, as the cross-fit measured them
    assert record["val_accuracy"] == pytest.approx(crossfit["accuracy"], abs=1e-6)
    assert record["val_dp_difference"] == pytest.approx(crossfit["difference"], abs=1e-6)
    assert record["val_dp_difference"] <= 0.05 + 1e-9
    assert crossfit["saved"] == str(tmp_path / "crossfit.pt")
    # test: the saved mixture's decisions on the test split
    mixture, dm = _fold_mixture(cfg, 3)
    mixture.load_state_dict(torch.load(tmp_path / "crossfit.pt", weights_only=True))
    assert mixture.thresholds.tolerance == 0.05 and mixture.thresholds.min_count == 10
    x, y, g = dm.test_tensors
    with torch.no_grad():
        decisions = mixture.predict(x, g)
    sums = group_sums(decisions.double(), y.double(), g, 2)
    rates = (sums.pred / sums.count).tolist()
    assert record["test_dp_difference"] == pytest.approx(abs(rates[0] - rates[1]), abs=1e-6)
    assert record["test_accuracy"] == pytest.approx(float((decisions == y).float().mean()), abs=1e-6)
    assert objective_values(record, "val_accuracy") == pytest.approx(record["val_accuracy"])


def test_crossfit_job_fits_no_fold_calibrator_the_mixture_would_not_use(tmp_path):
    """callbacks=default has a group calibrator; the mixture thresholds the fold models' own
    probabilities, so the folds fit none (the saved fold models carry none)."""
    cfg = _compose([c for c in CROSSFIT if c != "callbacks=none"] + ["callbacks.dashboard=null"])
    assert "calibration" in cfg.callbacks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = run(cfg, tmp_path)
    mixture, _ = _fold_mixture(cfg, 3)
    mixture.load_state_dict(torch.load(tmp_path / "crossfit.pt", weights_only=True))
    assert all(model.prediction_calibrator is None for model in mixture.models)
    assert record["status"] == "ok"


def test_crossfit_job_resumes_each_fold_from_its_last_checkpoint(tmp_path):
    first = run(_compose([*CROSSFIT, "callbacks=checkpoint"]), tmp_path)
    assert first["resumed_from"] is None
    again = run(_compose([*CROSSFIT, "callbacks=checkpoint", "trainer.max_epochs=2"]), tmp_path)
    resumed = again["resumed_from"]
    assert len(resumed) == 3 and all(
        Path(p).name == "last.ckpt" and Path(p).is_relative_to(tmp_path / f"fold_{k}") for k, p in enumerate(resumed)
    )
    assert again["global_step"] == 2 * first["global_step"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["crossfit.folds=1"], r"`crossfit.folds` must be 0 \(off\) or an integer >= 2 \(the number of folds\), got 1"),
        (["crossfit.folds=abc"], r"`crossfit.folds` must be 0 \(off\) or an integer >= 2 .*got 'abc'"),
        (["selection.constraints=null"], r"fits group thresholds for one constraint, and the method has 0: state it"),
        (["selection.constraints={demographic_parity: 0.05, equalized_odds: 0.1}"],
         r"`selection.constraints` must then hold one \{definition: tolerance\}"),
        (["data.val_fraction=0.3"], r"`crossfit.folds=3` makes each fold the validation split once; `data.val_fraction=0.3`"),
        (["selection.margin=1.0"], r"`selection.margin=1.0` is not applied by a cross-fit job"),
        (["selection.min_count=null"], r"`selection.min_count` must be a number >= 0, got None"),
        (["selection.constraints={demographic_parity: 1.5}"],
         r"`selection.constraints` \{demographic_parity: 1.5\}: `tolerance` must be a number in \[0, 1\)"),
        (["selection.constraints={accuracy_parity: 0.05}"],
         r"`crossfit.folds` cannot fit group thresholds for \{accuracy_parity: 0.05\}"),
    ],
)
def test_crossfit_job_refuses_what_it_cannot_do_by_name(overrides, match, tmp_path):
    own = any(o.startswith("selection.constraints") for o in overrides)
    base = [o for o in CROSSFIT if not (own and o.startswith("selection.constraints"))]
    with pytest.raises(ValueError, match=match):
        run(_compose([*base, *overrides]), tmp_path)


def test_a_cross_fit_job_directory_loads_back_into_its_fold_mixture(tmp_path):
    """What a cross-fit job trained is not lost: `load_crossfit(job_dir)` rebuilds the fold
    mixture from the job's own config and crossfit.pt, and it decides the test split as the job
    measured it."""
    from fair_lightning.functional import group_sums
    from fair_lightning.train import load_crossfit

    job = tmp_path / "job"
    done = subprocess.run(
        [sys.executable, "-m", "fair_lightning.train", *CROSSFIT, f"hydra.run.dir={job}"],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((job / "metrics.json").read_text())
    mixture, data = load_crossfit(job)
    assert mixture.folds == 3 and not mixture.training and mixture.thresholds.tolerance == 0.05
    x, y, g = data.test_tensors
    decisions = mixture.predict(x, g)
    sums = group_sums(decisions.double(), y.double(), g, 2)
    rates = (sums.pred / sums.count).tolist()
    assert record["test_accuracy"] == pytest.approx(float((decisions == y).float().mean()), abs=1e-6)
    assert record["test_dp_difference"] == pytest.approx(abs(rates[0] - rates[1]), abs=1e-6)
    # not a cross-fit job, or not a job directory at all: said so
    plain = tmp_path / "plain"
    (plain / ".hydra").mkdir(parents=True)
    (plain / ".hydra" / "config.yaml").write_text((job / ".hydra" / "config.yaml").read_text().replace("folds: 3", "folds: 0"))
    (plain / "crossfit.pt").write_bytes((job / "crossfit.pt").read_bytes())
    with pytest.raises(ValueError, match="holds a job with crossfit.folds=0, not a cross-fit job"):
        load_crossfit(plain)
    with pytest.raises(FileNotFoundError, match=r"must be a cross-fit job's directory holding .hydra/config.yaml"):
        load_crossfit(tmp_path / "nowhere")
