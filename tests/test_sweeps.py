"""Fault-tolerant sweeps: jobs killed by SIGKILL/SIGTERM under the default launcher, resume, records
the report rejects, configuration errors that name the option, checkpoint resume, Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module

from fair_lightning import _records
from fair_lightning import main as main_job
from fair_lightning import pareto
from fair_lightning.train import last_checkpoint, run, run_job, validate_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=biased_lending", "data.dataset_kwargs.n=2000", "trainer=fast", "logger=none"]
NO_CALLBACKS = ["callbacks.calibration=null", "callbacks.dashboard=null"]


def _env():
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _compose(overrides=()):
    with initialize_config_module("fair_lightning.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _sweep(sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fair_lightning.train", "-m", *TINY, "callbacks=checkpoint", *NO_CALLBACKS,
         "fairness=penalty_dp", "fairness.eta=0,1,4", "hydra/launcher=parallel", f"hydra.sweep.dir={sweep_dir}", *extra],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600,
    )  # fmt: skip


def _records_of(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))}


# ------------------------------------------------------------------------------ killed jobs
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_killed_job_is_recorded_the_others_finish_and_a_rerun_completes_only_it(tmp_path, signal_name, capsys):
    sweep_dir = tmp_path / "sweep"
    kill = ["+callbacks.kill._target_=tests._sweep_helpers.KillJobOnce", "+callbacks.kill.job=1",
            f"+callbacks.kill.signal={signal_name}"]  # fmt: skip
    result = _sweep(sweep_dir, *kill)
    assert result.returncode == 0, result.stdout + result.stderr
    records = _records_of(sweep_dir)
    assert set(records) == {"0", "1", "2"}
    assert records["0"]["status"] == records["2"]["status"] == "ok"
    assert records["1"]["status"] == "killed"
    assert ("SIGKILL" if signal_name == "SIGKILL" else "SIGTERMException") in records["1"]["error"]
    assert records["1"]["eta"] == 1.0 and records["1"]["pid"] != records["0"]["pid"] or signal_name == "SIGTERM"

    # the report: frontier of what finished, the killed job named, exit 0
    assert pareto.main([str(sweep_dir), "--no-tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "2 finished jobs of 3" in out and "job 1: killed:" in out
    table = pd.read_csv(sweep_dir / "frontier.csv")
    assert dict(zip(table["job_dir"].astype(str), table["status"])) == {"0": "ok", "1": "killed", "2": "ok"}
    assert (sweep_dir / "frontier.png").stat().st_size > 0

    # re-run with +resume=true: only job 1 runs again
    finished = {j: (sweep_dir / j / "metrics.json").read_text() for j in ("0", "2")}
    again = _sweep(sweep_dir, *kill, "+resume=true")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resume: job 0 already finished" in again.stdout + again.stderr
    assert {j: (sweep_dir / j / "metrics.json").read_text() for j in ("0", "2")} == finished
    assert _records_of(sweep_dir)["1"]["status"] == "ok"


def test_a_running_record_of_a_dead_process_reads_as_killed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = tmp_path / "sweep" / "0"
    _records.write_record({"status": "running", "pid": dead.pid, "host": None, "started": "t", "job": 0}, job)
    alive = tmp_path / "sweep" / "1"
    _records.write_record({"status": "running", **_records.process_identity(), "started": "t", "job": 1}, alive)
    table = pareto.load_sweep(tmp_path / "sweep", include_failed=True)
    assert table["status"].tolist() == ["killed", "running"]
    assert f"its process (pid {dead.pid}) is gone" in table["error"].iloc[0]
    assert "still running" in table["error"].iloc[1]


def test_main_job_reports_what_finished_and_fails_only_when_nothing_did(tmp_path, monkeypatch, capsys):
    def fake_sweep(statuses):
        def run(command, log_path):
            sweep = Path(next(a for a in command if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
            assert sweep.name in ("penalty", "lagrangian")
            log_path.write_text("the sweep's output\n")
            for job, status in enumerate(statuses):
                record = {"job": job, "status": status, "mode": "penalty", "eta": float(job), "error": None}
                if status == "ok":
                    record.update(test_accuracy=0.8 - 0.01 * job, test_dp_difference=0.1 / (job + 1))
                else:
                    record["error"] = "the job's process was killed by SIGKILL"
                _records.write_record(record, sweep / str(job))
            return 1  # the sweep process itself ended badly: the report still runs
        return run

    monkeypatch.setattr(main_job, "_run_sweep", fake_sweep(["ok", "killed", "ok"]))
    assert main_job.main([f"hydra.sweep.dir={tmp_path / 'a'}"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "a" / "frontier.png").is_file() and (tmp_path / "a" / "frontier.csv").is_file()
    assert "job penalty/1: killed" in out and "job lagrangian/1: killed" in out
    table = pd.read_csv(tmp_path / "a" / "frontier.csv")
    assert table["job_dir"].is_unique and len(table) == 6  # ids unique across the two sub-sweeps

    monkeypatch.setattr(main_job, "_run_sweep", fake_sweep(["killed", "failed"]))
    assert main_job.main([f"hydra.sweep.dir={tmp_path / 'b'}"]) == 1
    assert "no usable job" in capsys.readouterr().err  # they ended, killed or failed: none is unfinished


# ------------------------------------------------------------------------------ records the report rejects
def _ok_record(job, accuracy=0.8, dp=0.05):
    return {"job": job, "status": "ok", "mode": "penalty", "eta": float(job), "tolerance": None,
            "test_accuracy": accuracy, "test_dp_difference": dp, "test_selection_rate_by_group": {"A": 0.3, "B": 0.25}}  # fmt: skip


def _sweep_with(root: Path, bad: dict | str | None) -> Path:
    for job in (0, 1):
        _records.write_record(_ok_record(job, 0.8 + 0.01 * job, 0.05 + 0.05 * job), root / str(job))
    (root / "2" / ".hydra").mkdir(parents=True)
    if isinstance(bad, dict):
        (root / "2" / "metrics.json").write_text(json.dumps({**_ok_record(2), **bad}))
    elif isinstance(bad, str):
        (root / "2" / "metrics.json").write_text(bad)
    return root


@pytest.mark.parametrize(
    "bad, status, reason",
    [
        ({"test_accuracy": "abc"}, "invalid", "`test_accuracy` must be a number in [0, 1], got 'abc' (str)"),
        ('{"job": 2, "status": "ok", "test_accuracy": NaN, "test_dp_difference": 0.1}', "invalid",
         "`test_accuracy` must be a number in [0, 1], got nan (not finite)"),
        ({"test_accuracy": 1.7}, "invalid", "`test_accuracy` must be a number in [0, 1], got 1.7"),
        ({"test_dp_difference": -0.3}, "invalid", "`test_dp_difference` must be a number in [0, 1], got -0.3"),
        ({"test_selection_rate_by_group": {"A": 2.0}}, "invalid", "`test_selection_rate_by_group['A']`"),
        (None, "unfinished", "no metrics.json"),
        ("{trunc", "unreadable", "unreadable metrics.json"),
    ],
    ids=["string", "nan", "accuracy-out-of-range", "negative-difference", "group-rate", "missing-file", "truncated"],
)  # fmt: skip
def test_report_rejects_and_names_a_corrupt_record(tmp_path, capsys, bad, status, reason):
    root = _sweep_with(tmp_path / "sweep", bad)
    assert pareto.main([str(root), "--no-tensorboard"]) == 0
    captured = capsys.readouterr()
    assert f"job 2: {status}" in captured.out and reason in captured.out
    table = pd.read_csv(root / "frontier.csv")
    assert table["status"].tolist() == ["ok", "ok", status]
    assert not table["is_pareto"].iloc[2]
    assert "hypervolume" in captured.out
    hv = float(captured.out.split("hypervolume of")[1].split(":")[1].split()[0])
    assert hv == pytest.approx(pareto.hypervolume([[0.05, 0.8], [0.1, 0.81]], (1, 0), (False, True)), abs=1e-4)


def test_report_with_no_usable_job_exits_non_zero_naming_them(tmp_path, capsys):
    root = tmp_path / "sweep"
    for job in (0, 1):
        (root / str(job)).mkdir(parents=True)
        (root / str(job) / "metrics.json").write_text(json.dumps({**_ok_record(job), "test_accuracy": None}))
    assert pareto.main([str(root), "--no-tensorboard"]) == 1
    err = capsys.readouterr().err
    assert "no usable job" in err and "0: invalid" in err and "1: invalid" in err
    (root / "0" / "metrics.json").write_text('{"job": 0, "status": "ok", "test_accuracy": Infinity, "test_dp_difference": 0.1}')
    (root / "1" / "metrics.json").write_text('{"job": 1, "status": "ok", "test_accuracy": 1.7, "test_dp_difference": -0.3}')
    assert pareto.main([str(root), "--no-tensorboard"]) == 1
    assert "no usable job" in capsys.readouterr().err  # finished, with records rejected (audit row P7)


def test_validate_record():
    assert pareto.validate_record(_ok_record(0)) == []
    assert pareto.validate_record({"test_eo_difference": True}) == [
        "`test_eo_difference` must be a number in [0, 1], got True (bool)"
    ]
    assert pareto.validate_record({"fit_seconds": -1.0, "eta": float("inf")})[0].startswith("`fit_seconds` must be a number >= 0")


# ------------------------------------------------------------------------------ configuration errors
@pytest.mark.parametrize(
    "override, message",
    [
        ("fairness.eta=abc", "`fairness.eta` must be a number, got 'abc' (str)"),
        ("fairness.eta=nan", "`fairness.eta` must be a number, got nan (float)"),
        ("seed=abc", "`seed` must be an integer, got 'abc' (str)"),
        ("seed=1.5", "`seed` must be an integer, got 1.5 (float)"),
        ("trainer.max_epochs=abc", "`trainer.max_epochs` must be an integer, got 'abc' (str)"),
        ("trainer.limit_train_batches=x", "`trainer.limit_train_batches` must be a number, got 'x' (str)"),
        ("module.lr=fast", "`module.lr` must be a number, got 'fast' (str)"),
        ("num_threads=0", "`num_threads` must be null or an integer >= 1, got 0 (int)"),
    ],
)
def test_config_errors_name_the_option(override, message, tmp_path):
    cfg = _compose([*TINY, "fairness=penalty_dp", override])
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    assert str(info.value) == message
    record = run_job(cfg, tmp_path)  # the job's record says the same, nothing was built
    assert record["status"] == "failed" and record["error"] == f"ValueError: {message}"
    assert "setup_seconds" not in record


def test_valid_configs_pass_validation():
    for option in ("erm", "penalty_dp", "lagrangian_dp", "adversarial", "mutual_information"):
        validate_config(_compose([*TINY, f"fairness={option}"]))
    validate_config(_compose([*TINY, "trainer.max_epochs=-1", "trainer.limit_train_batches=0.5", "seed=3"]))


# ------------------------------------------------------------------------------ checkpoint resume
def test_a_job_resumes_from_last_ckpt_in_its_directory(tmp_path):
    first = run(_compose([*TINY, "callbacks=checkpoint", *NO_CALLBACKS]), tmp_path)
    ckpt = last_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "last.ckpt" and first["resumed_from"] is None and first["epochs"] == 1
    again = run(_compose([*TINY, "callbacks=checkpoint", *NO_CALLBACKS, "trainer.max_epochs=2"]), tmp_path)
    assert again["resumed_from"] == str(ckpt)
    assert again["epochs"] == 2 and again["global_step"] == 2 * first["global_step"]
    assert last_checkpoint(tmp_path / "nowhere") is None


# ------------------------------------------------------------------------------ Optuna
def test_optuna_frontier_sweep_with_a_tiny_budget_survives_a_killed_trial(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")
    sweep_dir = tmp_path / "optuna"
    result = subprocess.run(
        [sys.executable, "-m", "fair_lightning.train", "-m", *TINY, "callbacks=none", "fairness=penalty_dp",
         "hydra/sweeper=optuna_frontier", "hydra/launcher=parallel", "hydra.sweeper.n_trials=3",
         "+callbacks.kill._target_=tests._sweep_helpers.KillJobOnce", "+callbacks.kill.job=1",
         f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Directions: ['maximize', 'minimize']" in output and "Failed experiment" in output
    records = _records_of(sweep_dir)
    assert [records[j]["status"] for j in ("0", "1", "2")] == ["ok", "killed", "ok"]
    assert all(any(o.startswith("module.lr=") for o in r["overrides"]) for r in records.values())
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "solutions" in results and "fairness.eta" in results
    # the aggregator reads the study's trials like any sweep
    assert pareto.main([str(sweep_dir), "--no-tensorboard"]) == 0
    assert "2 finished jobs of 3" in capsys.readouterr().out
    table = pd.read_csv(sweep_dir / "frontier.csv")
    assert table["eta"].notna().all() and table["lr"].between(3e-4, 1e-2).all()


def test_a_failed_job_returns_no_value_to_the_sweeper():
    from fair_lightning.train import _returned_objective

    assert _returned_objective({"val_accuracy": 0.8, "val_dp_difference": 0.1}, ["val_accuracy", "val_dp_difference"]) == (0.8, 0.1)
    assert _returned_objective({}, ["val_accuracy", "val_dp_difference"]) is None  # NaN would end an Optuna study
    assert _returned_objective({"val_accuracy": 0.8, "val_dp_difference": None}, ["val_accuracy", "val_dp_difference"]) is None
    assert _returned_objective({"val_accuracy": 0.8}, "val_accuracy") == 0.8
    assert _returned_objective({"val_accuracy": 0.8}, None) is None
