"""Pareto fronts, hypervolume, sweep tables and plots; a real Hydra multirun and scripts/pareto.py on it."""

import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fair_lightning.data import TabularDataModule
from fair_lightning.pareto import (
    default_reference,
    flatten_record,
    frontier_table,
    higher_is_better,
    hypervolume,
    load_sweep,
    pareto_front,
    pareto_sweep,
    plot_pareto_frontier,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=biased_lending", "data.dataset_kwargs.n=2000", "trainer=fast", "callbacks=none"]


def _env():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


# ------------------------------------------------------------------------------------ the front
def test_front_of_hand_made_points():
    # (accuracy up, dp_difference down)
    points = [
        [0.85, 0.18],  # best accuracy: on the front
        [0.83, 0.02],  # on the front
        [0.80, 0.05],  # dominated by [0.83, 0.02]
        [0.83, 0.02],  # duplicate of a front point: on the front too (neither dominates the other)
        [0.83, 0.03],  # tied in accuracy, worse in dp: dominated
        [0.75, 0.00],  # lowest dp: on the front
        [0.75, 0.00001],  # dominated
        [np.nan, 0.0],  # NaN: never on the front, dominates nothing
    ]
    assert pareto_front(points).tolist() == [True, True, False, True, False, True, False, False]
    assert pareto_front(points, maximize=(True, False)).tolist() == pareto_front(points).tolist()


def test_front_edge_cases():
    assert pareto_front([[0.5, 0.1]]).tolist() == [True]  # a single point
    assert pareto_front([0.5, 0.1]).tolist() == [True]  # ... given as (d,)
    assert pareto_front(np.zeros((0, 2))).tolist() == []
    assert pareto_front([[1.0, 1.0]] * 3).tolist() == [True] * 3  # all duplicates
    # other directions: both maximized, both minimized, three objectives
    assert pareto_front([[1, 1], [2, 0], [0, 0]], maximize=True).tolist() == [True, True, False]
    assert pareto_front([[1, 1], [2, 0], [0, 0]], maximize=False).tolist() == [False, False, True]
    assert pareto_front([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], maximize=True).tolist() == [True] * 3 + [False]
    with pytest.raises(ValueError, match="one entry per objective"):
        pareto_front([[1, 2]], maximize=(True,))
    with pytest.raises(ValueError, match=r"\(n, d\) array"):
        pareto_front(np.zeros((2, 2, 2)))


def test_front_matches_brute_force():
    rng = np.random.default_rng(0)
    points = np.round(rng.random((60, 2)), 1)  # coarse grid: many ties and duplicates
    expected = []
    for i, p in enumerate(points):
        dominated = any(
            q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for j, q in enumerate(points) if j != i
        )
        expected.append(not dominated)
    assert pareto_front(points, (True, False)).tolist() == expected


# ------------------------------------------------------------------------------------ hypervolume
def _union_area(points, reference, maximize):
    """Exact area of the union of boxes by coordinate compression (an independent check)."""
    signs = np.where(np.asarray(maximize), 1.0, -1.0)
    q, r = -np.asarray(points, float) * signs, -np.asarray(reference, float) * signs
    q = q[(q < r).all(1)]
    xs, ys = np.unique(np.append(q[:, 0], r[0])), np.unique(np.append(q[:, 1], r[1]))
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs[:-1], xs[1:]), zip(ys[:-1], ys[1:])):
        if ((q[:, 0] <= x0) & (q[:, 1] <= y0)).any():
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_of_hand_made_points():
    ref = (0.0, 1.0)  # (accuracy, dp_difference): the worst values
    assert hypervolume([[0.8, 0.2]], ref) == pytest.approx(0.8 * 0.8)  # a single point: its box
    two = hypervolume([[0.8, 0.1], [0.7, 0.0]], ref)
    assert two == pytest.approx(0.8 * 0.9 + 0.7 * 0.1)
    # dominated points and duplicates add nothing
    assert hypervolume([[0.8, 0.1], [0.7, 0.0], [0.6, 0.2], [0.8, 0.1], [0.7, 0.0]], ref) == pytest.approx(two)
    # points no better than the reference, and NaN rows, add nothing
    assert hypervolume([[0.8, 0.1], [0.7, 0.0], [-0.1, 0.0], [0.5, 1.0], [np.nan, 0.0]], ref) == pytest.approx(two)
    assert hypervolume(np.zeros((0, 2)), ref) == 0.0
    assert hypervolume([[1, 1], [2, 0.5]], (0, 0), maximize=True) == pytest.approx(1 * 1 + 1 * 0.5)
    assert hypervolume([[1, 1]], (2, 3), maximize=False) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="2 objectives"):
        hypervolume([[1, 2, 3]], (0, 0, 0))
    with pytest.raises(ValueError, match="2 finite numbers"):
        hypervolume([[1, 2]], (0, np.nan))


@pytest.mark.parametrize("maximize", [(True, False), (True, True), (False, False)])
def test_hypervolume_matches_union_of_boxes(maximize):
    rng = np.random.default_rng(1)
    points = np.round(rng.random((40, 2)), 2)
    reference = default_reference(maximize)
    assert hypervolume(points, reference, maximize) == pytest.approx(_union_area(points, reference, maximize))


def test_objective_directions():
    assert higher_is_better("test_accuracy") and higher_is_better("val_auroc") and higher_is_better("test_dp_ratio")
    assert not higher_is_better("test_dp_difference") and not higher_is_better("test_calibration_error_max")
    with pytest.raises(ValueError, match="pass `maximize`"):
        higher_is_better("eta")
    assert default_reference((False, True)) == (1.0, 0.0)


# ------------------------------------------------------------------------------------ tables
def _record(job, eta, accuracy, dp, status="ok"):
    return {
        "job": job, "status": status, "mode": "penalty", "fairness": "demographic_parity", "eta": eta,
        "tolerance": None, "overrides": [f"fairness.eta={eta}"], "groups": ["A", "B"],
        "test_accuracy": accuracy, "test_dp_difference": dp, "test_dp_ratio": 1 - dp,
        "val_accuracy": accuracy + 0.01, "val_dp_difference": dp,
        "test_selection_rate_by_group": {"A": 0.3, "B": 0.3 - dp}, "metrics": {"test/accuracy": accuracy},
        "traceback": None, "error": None,
    }  # fmt: skip


def _fake_sweep(root: Path) -> Path:
    for job, (eta, acc, dp) in enumerate([(0, 0.85, 0.18), (1, 0.83, 0.03), (4, 0.80, 0.05)]):
        (root / str(job) / ".hydra").mkdir(parents=True)
        (root / str(job) / "metrics.json").write_text(json.dumps(_record(job, eta, acc, dp)))
    failed = {"job": 3, "status": "failed", "mode": "penalty", "eta": 8.0, "error": "FloatingPointError: the task loss is nan"}
    (root / "3" / ".hydra").mkdir(parents=True)
    (root / "3" / "metrics.json").write_text(json.dumps(failed))
    (root / "4" / ".hydra").mkdir(parents=True)  # started, never finished
    (root / "5" / ".hydra").mkdir(parents=True)
    (root / "5" / "metrics.json").write_text("{not json")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_flatten_record():
    row = flatten_record(_record(0, 1.0, 0.8, 0.1))
    assert row["test_selection_rate/A"] == 0.3 and row["overrides"] == "fairness.eta=1.0" and row["groups"] == "A,B"
    assert "metrics" not in row and "traceback" not in row and np.isnan(row["tolerance"])
    assert "crossfit_folds" not in row
    # a cross-fit job (crossfit.folds=5): one column says so; its report stays in metrics.json
    crossfit = flatten_record({**_record(0, 1.0, 0.8, 0.1), "crossfit": {"folds": 5, "rows": 900, "rows_per_fold": [180] * 5}})
    assert crossfit["crossfit_folds"] == 5 and not any(k.startswith("crossfit/") for k in crossfit)


def test_load_sweep_reports_and_skips_unfinished_and_failed_jobs(tmp_path, caplog):
    root = _fake_sweep(tmp_path / "sweep")
    with caplog.at_level(logging.WARNING, logger="fair_lightning.pareto"):
        table = load_sweep(root)
    assert table["job"].tolist() == [0, 1, 2] and (table["status"] == "ok").all()
    assert table["eta"].tolist() == [0, 1, 4] and "test_selection_rate/B" in table.columns
    skipped = {s["job_dir"]: s for s in table.attrs["skipped"]}
    assert set(skipped) == {"3", "4", "5"}
    assert skipped["3"]["status"] == "failed" and "FloatingPointError" in skipped["3"]["reason"]
    assert skipped["4"]["status"] == "unfinished" and skipped["5"]["status"] == "unreadable"
    messages = caplog.text
    assert "skipping job 3" in messages and "skipping job 4: no metrics.json" in messages
    assert "3 of 6 jobs" in messages

    everything = load_sweep(root, include_failed=True)
    assert everything["status"].tolist() == ["ok", "ok", "ok", "failed", "unfinished", "unreadable"]
    assert everything["job"].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sweep(tmp_path / "nowhere")


def test_frontier_table_and_plot(tmp_path):
    table = load_sweep(_fake_sweep(tmp_path / "sweep"), include_failed=True)
    front = frontier_table(table)
    assert front["is_pareto"].tolist() == [True, True, False, False, False, False]
    fig = plot_pareto_frontier(front, threshold=0.05, baselines={"reductions": (0.02, 0.82)})
    assert isinstance(fig, Figure)
    ax, key = fig.axes
    labels = {t.get_text() for t in ax.texts}
    assert {"1", "2", "3", "reductions"} <= labels  # every finished job numbered, and the baseline
    cells = {c.get_text().get_text() for c in key.tables[0].get_celld().values()}
    assert {"eta=0", "eta=1", "eta=4", "0", "1", "2"} <= cells  # the key: number, job, setting
    assert any("chosen on validation" in t.get_text() for t in ax.get_legend().get_texts())
    fig.savefig(tmp_path / "f.png")
    # on given axes, other columns, a DP-ratio threshold (higher is better)
    other = Figure()
    ax = other.add_subplot()
    assert plot_pareto_frontier(front, x="test_dp_ratio", threshold=0.8, label=None, ax=ax) is other
    with pytest.raises(ValueError, match="column 'nope' is not in the table"):
        plot_pareto_frontier(front, x="nope", maximize=(False, True))


def test_the_model_to_ship_is_chosen_on_validation_not_on_test():
    """The starred / printed model under a requirement is chosen on the validation columns, with
    the selection's cross-fitted accuracy for jobs that fitted thresholds on validation; test only
    reports. Constant predictors on validation never ship; without validation columns nothing is
    chosen, and the reason says so."""
    from fair_lightning.pareto import choose_on_validation

    table = pd.DataFrame({
        "status": ["ok"] * 5,
        "job_dir": list("abcde"),
        # a: best on test within 0.05 but not within it on validation; b: best on validation
        "test_accuracy": [0.86, 0.84, 0.83, 0.90, 0.85], "test_dp_difference": [0.04, 0.05, 0.02, 0.0, 0.03],
        "val_accuracy": [0.87, 0.85, 0.84, 0.91, 0.88], "val_dp_difference": [0.07, 0.04, 0.03, 0.0, 0.05],
        # d predicts one class for everyone on validation; e's 0.88 is in-sample thresholds accuracy
        "val_selection_rate/A": [0.3, 0.3, 0.3, 0.0, 0.3], "val_selection_rate/B": [0.3, 0.3, 0.3, 0.0, 0.3],
        "selection_objective": [np.nan, np.nan, np.nan, np.nan, 0.845], "selection_thresholds": [False, False, False, False, True],
    })  # fmt: skip
    chosen, why = choose_on_validation(table, threshold=0.05)
    assert table.at[chosen, "job_dir"] == "b"
    assert "val_accuracy (0.8500) of the 3 jobs with val_dp_difference <= 0.05" in why
    # e competes with its cross-fitted accuracy; with a better one it wins
    table.loc[4, "selection_objective"] = 0.86
    assert table.at[choose_on_validation(table, threshold=0.05)[0], "job_dir"] == "e"
    # no threshold: the best validation accuracy of the jobs not constant on validation (d is)
    assert table.at[choose_on_validation(table)[0], "job_dir"] == "a"
    assert choose_on_validation(table, threshold=0.001)[0] is None
    none, why = choose_on_validation(table.drop(columns=["val_dp_difference"]), threshold=0.05)
    assert none is None and "no validation column val_dp_difference" in why
    for bad in ("0.05", float("nan"), True):
        with pytest.raises(ValueError, match="`threshold` must be a finite number or None, got"):
            choose_on_validation(table, threshold=bad)


def test_pareto_sweep_in_process():
    dm = TabularDataModule("biased_lending", batch_size=256, dataset_kwargs={"n": 2000})
    table = pareto_sweep(
        [0.0, 4.0], datamodule=dm, max_epochs=1, trainer_kwargs={"limit_train_batches": 3, "limit_val_batches": 2}
    )
    assert table["eta"].tolist() == [0.0, 4.0] and (table["mode"] == "penalty").all()
    assert {"test_accuracy", "test_dp_difference", "is_pareto", "fit_seconds"} <= set(table.columns)
    assert table["is_pareto"].any()
    lagrangian = pareto_sweep([0.05], datamodule=dm, mode="lagrangian", max_epochs=1, trainer_kwargs={"limit_train_batches": 2})
    assert lagrangian["tolerance"].tolist() == [0.05] and lagrangian["eta"].isna().all()
    with pytest.raises(ValueError, match="`mode` must be one of"):
        pareto_sweep([1.0], datamodule=dm, mode="erm")


# ------------------------------------------------------------------------------------ a real sweep
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A real two-job Hydra multirun (basic launcher) of the application."""
    root = tmp_path_factory.mktemp("multirun") / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "fair_lightning.train", "-m", *TINY, "fairness=penalty_dp", "fairness.eta=0,4",
         f"hydra.sweep.dir={root}"],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_multirun_writes_one_metrics_json_per_job(sweep_dir):
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}
    assert set(records) == {"0", "1"}
    assert [records[j]["eta"] for j in ("0", "1")] == [0.0, 4.0]
    assert all(r["status"] == "ok" and r["job"] == int(j) for j, r in records.items())
    assert records["1"]["overrides"][-1] == "fairness.eta=4"
    assert (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "0" / "tensorboard").is_dir()


def _pareto_script(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pareto.py"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300,
    )


def test_pareto_script_on_a_sweep(sweep_dir):
    result = _pareto_script(sweep_dir, "--threshold", "0.05", "--baseline", "erm=0.1,0.7")
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(sweep_dir / "frontier.csv")
    assert table["job"].tolist() == [0, 1] and table["is_pareto"].dtype == bool and table["is_pareto"].any()
    # metric columns no job logged (the regression ones in a classification sweep) are left out
    assert "test_accuracy" in table.columns and "test_mse" not in table.columns and "val_cdf_gap" not in table.columns
    assert (sweep_dir / "frontier.png").stat().st_size > 0
    assert list((sweep_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "hypervolume of (test_dp_difference ↓, test_accuracy ↑) w.r.t. reference (1, 0)" in result.stdout
    assert f"wrote {sweep_dir / 'frontier.png'}" in result.stdout
    # the model to ship under the requirement is chosen on validation, and its test values reported
    assert "model to ship under test_dp_difference <= 0.05" in result.stdout
    assert "chosen on validation: the best val_accuracy" in result.stdout


def test_pareto_script_reports_and_skips_failed_jobs(sweep_dir, tmp_path):
    import shutil

    root = tmp_path / "sweep"
    shutil.copytree(sweep_dir, root)
    (root / "2" / ".hydra").mkdir(parents=True)  # unfinished: no metrics.json
    (root / "3" / ".hydra").mkdir(parents=True)
    (root / "3" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom", "job": 3}))
    result = _pareto_script(root, "--x", "test_dp_ratio", "--threshold", "0.8", "--no-tensorboard")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipping job 2: no metrics.json" in result.stderr
    assert "skipping job 3: status 'failed': ValueError: boom" in result.stderr
    table = pd.read_csv(root / "frontier.csv")
    assert table["status"].tolist() == ["ok", "ok", "unfinished", "failed"]
    assert not table.loc[table["status"] != "ok", "is_pareto"].any()

    empty = tmp_path / "empty"
    (empty / "0" / ".hydra").mkdir(parents=True)
    result = _pareto_script(empty)
    assert result.returncode == 1 and "no finished job" in result.stderr


def test_baselines_stay_inside_the_threshold_range():
    import pandas as pd

    from fair_lightning.pareto import plot_pareto_frontier

    table = pd.DataFrame({"test_dp_difference": [0.04, 0.1, 0.2], "test_accuracy": [0.83, 0.84, 0.85],
                          "eta": [4.0, 1.0, 0.0], "status": ["ok"] * 3})
    fig = plot_pareto_frontier(table, threshold=0.05, baselines={"reductions": (0.002, 0.829)})
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 0.002 < hi and lo < 0.05 < hi


def _frontier_sweep_table():
    rows = []
    for i, (eta, acc, dp) in enumerate([(0, .851, .183), (1, .842, .085), (2, .838, .052), (4, .836, .041), (8, .835, .040), (64, .754, 0.0)]):
        rates = (0.0, 0.0) if eta == 64 else (0.1, 0.1 + dp)
        rows.append({"job_dir": f"penalty/{i}", "status": "ok", "mode": "penalty", "eta": float(eta), "tolerance": np.nan,
                     "test_accuracy": acc, "test_dp_difference": dp, "test_selection_rate/F": rates[0], "test_selection_rate/M": rates[1],
                     "test_dp_difference_ci_low": max(0.0, dp - 0.01), "test_dp_difference_ci_high": dp + 0.01})
    for i, (tol, acc, dp) in enumerate([(0.0025, .826, .006), (0.005, .829, .008), (0.01, .832, .013), (0.02, .836, .022)]):
        rows.append({"job_dir": f"lagrangian/{i}", "status": "ok", "mode": "lagrangian", "eta": np.nan, "tolerance": tol,
                     "test_accuracy": acc, "test_dp_difference": dp, "test_selection_rate/F": 0.15, "test_selection_rate/M": 0.15 + dp,
                     "test_dp_difference_ci_low": dp - 0.005, "test_dp_difference_ci_high": dp + 0.005})
    return pd.DataFrame(rows)  # fmt: skip


def test_frontier_plot_is_readable(tmp_path):
    from matplotlib.collections import LineCollection

    table = frontier_table(_frontier_sweep_table())
    assert table["constant_predictor"].tolist() == [False] * 5 + [True] + [False] * 4
    assert not table.loc[5, "is_pareto"]  # the constant model (DP 0 for free) is not the "fairest" on the frontier
    fig = plot_pareto_frontier(table, threshold=0.05)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Demographic-parity difference (test) (lower is better)"
    assert ax.get_ylabel() == "Test accuracy (higher is better)"
    assert "labels:" not in ax.get_title() and "test_accuracy" not in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "penalty" in legend and "Lagrangian constraint" in legend  # one entry per method
    assert any(t.startswith("constant predictor (1") for t in legend)
    markers = {h.get_marker() for h in ax.get_legend().legend_handles[:2]}
    assert len(markers) == 2  # penalty and Lagrangian do not share a marker
    assert any(isinstance(c, LineCollection) for c in ax.collections)  # error bars from the CI columns
    fig.savefig(tmp_path / "frontier.png")
    renderer = fig.canvas.get_renderer()
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, 11))
    boxes = [t.get_window_extent(renderer) for t in numbers]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two point labels overlap"


def _regression_record(job, eta, mse, gap):
    return {
        "job": job, "status": "ok", "task": "regression", "mode": "penalty",
        "fairness": "regression_demographic_parity", "eta": eta, "tolerance": None, "groups": ["A", "B"],
        "test_accuracy": None, "test_mse": mse, "test_mae": 0.8 * mse, "test_dp_difference": gap,
        "test_mse_difference": 1.3, "test_cdf_gap": 0.2, "test_mean_prediction_by_group": {"A": -0.5, "B": gap - 0.5},
        "test_mean_squared_error_by_group": {"A": mse, "B": mse + 1.3}, "traceback": None, "error": None,
    }  # fmt: skip


def test_regression_records_are_judged_on_regression_ranges_and_the_script_plots_mse(tmp_path):
    """A regression job's gaps of mean predictions and group MSEs have no upper end (a classifier's
    differences of rates stay in [0, 1]); the Pareto script puts the test MSE on the y axis."""
    from fair_lightning.pareto import readable_name, validate_record

    assert validate_record(_regression_record(0, 0.0, 0.96, 1.42)) == []
    assert validate_record({**_regression_record(0, 0.0, 0.96, 1.42), "test_cdf_gap": 1.5}) == [
        "`test_cdf_gap` must be a number in [0, 1], got 1.5"]
    assert validate_record({**_regression_record(0, 0.0, 0.96, 0.4), "test_mse": -0.1}) == [
        "`test_mse` must be a number >= 0, got -0.1"]
    assert validate_record({**_record(0, 1.0, 0.8, 0.1), "test_dp_difference": 1.42}) == [
        "`test_dp_difference` must be a number in [0, 1], got 1.42"]
    assert higher_is_better("test_mse") is False and higher_is_better("val_cdf_gap") is False
    assert readable_name("test_dp_difference", "regression") == "Group mean-prediction difference (test)"
    root = tmp_path / "sweep"
    for job, (eta, mse, gap) in enumerate([(0, 0.958, 0.42), (1, 0.955, 0.39), (2, 0.985, 0.22), (3, 1.057, 0.10)]):
        (root / str(job) / ".hydra").mkdir(parents=True)
        (root / str(job) / "metrics.json").write_text(json.dumps(_regression_record(job, eta, mse, gap)))
    result = _pareto_script(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hypervolume of (test_dp_difference ↓, test_mse ↓)" in result.stdout
    # the reference of metrics without an upper end: 10% past the worst job
    assert "w.r.t. reference (0.462, 1.1627)" in result.stdout
    table = pd.read_csv(root / "frontier.csv")
    assert table["is_pareto"].tolist() == [False, True, True, True]
    assert "test_accuracy" not in table.columns  # no job logged it


def test_a_metrics_json_that_is_a_directory_is_unreadable_not_unfinished(tmp_path):
    """Audit row P14: the skip reason says what is wrong with the record."""
    (tmp_path / "0" / "metrics.json").mkdir(parents=True)
    (tmp_path / "0" / ".hydra").mkdir()  # a job directory
    table = load_sweep(tmp_path, include_failed=True)
    assert table["status"].tolist() == ["unreadable"]
    assert table.attrs["skipped"][0]["reason"] == "unreadable metrics.json (not a file)"
