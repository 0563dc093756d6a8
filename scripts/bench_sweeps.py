#!/usr/bin/env python
"""Adaptive (Optuna) search of the frontier against a grid of the same budget, on Adult (sex).

    python scripts/bench_sweeps.py                  # N = 8 jobs each, 4 epochs per job
    python scripts/bench_sweeps.py --n 16 --epochs 8 --n-jobs 2

Both searches run the Hydra application on ``experiment=adult_sex fairness=penalty_dp``:

* **grid**: ``fairness.eta`` on N values (0 and a log grid up to 64), the default learning rate;
* **optuna**: ``hydra/sweeper=optuna_frontier`` with ``hydra.sweeper.n_trials=N`` over ``eta``
  (log, 0.05 ... 64) and the learning rate (log, 3e-4 ... 1e-2), multi-objective TPE on the
  validation objectives (maximize ``val_accuracy``, minimize ``val_dp_difference``).

Each sweep is read back with :func:`fair_lightning.pareto.load_sweep` (the report's loader:
invalid, failed and killed jobs are skipped) and scored by the hypervolume of its (accuracy, DP
difference) front, reference (0, 1), on validation (what the search optimizes) and on the test
split (what a decision-maker sees). Constant predictors are left out, as in the report. One seed:
the numbers are one draw of each search, not a distribution.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def grid_values(n: int) -> list[float]:
    """0 and ``n - 1`` log-spaced values of ``eta`` up to 64."""
    if n < 2:
        raise ValueError(f"`n` must be >= 2, got {n}")
    return [0.0] + [float(f"{v:.3g}") for v in np.geomspace(0.125, 64, n - 1)]


def run_sweep(kind: str, n: int, epochs: int, n_jobs: int, out: Path) -> float:
    """Run one sweep into ``out``; its wall time in seconds."""
    common = ["experiment=adult_sex", "fairness=penalty_dp", f"trainer.max_epochs={epochs}", "logger=none",
              "callbacks=none", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweep.dir={out}"]  # fmt: skip
    if kind == "grid":
        axes = ["fairness.eta=" + ",".join(f"{v:g}" for v in grid_values(n))]
    else:
        axes = ["hydra/sweeper=optuna_frontier", f"hydra.sweeper.n_trials={n}", f"hydra.sweeper.n_jobs={n_jobs}"]
    command = [sys.executable, "-m", "fair_lightning.train", "-m", *common, *axes]
    print("+ python " + " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    with open(out.parent / f"{kind}.log", "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def score(sweep_dir: Path) -> dict[str, float]:
    """Finished jobs and the hypervolumes of the validation and test fronts."""
    from fair_lightning import pareto

    table = pareto.load_sweep(sweep_dir)
    out: dict[str, float] = {"finished": float(len(table))}
    for stage in ("val", "test"):
        x, y = f"{stage}_dp_difference", f"{stage}_accuracy"
        framed = pareto.frontier_table(table, x, y)
        usable = framed[~framed["constant_predictor"]]
        out[f"{stage}_hv"] = pareto.hypervolume(usable[[x, y]].to_numpy(float), (1.0, 0.0), (False, True))
        out[f"{stage}_front"] = float(framed["is_pareto"].sum())
        out[f"{stage}_best_acc_dp05"] = float(usable.loc[usable[x] <= 0.05, y].max()) if (usable[x] <= 0.05).any() else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="jobs per search (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per job (default: %(default)s)")
    parser.add_argument("--n-jobs", type=int, default=1, help="parallel jobs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / f"bench-sweeps-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for kind in ("grid", "optuna"):
        wall = run_sweep(kind, args.n, args.epochs, args.n_jobs, args.out / kind)
        rows[kind] = {**score(args.out / kind), "wall": wall}
    print(f"\nAdult (sex), penalty_dp, {args.n} jobs per search, {args.epochs} epochs per job; "
          "hypervolume of the (accuracy, DP difference) front, reference (0, 1), constant predictors left out")  # fmt: skip
    print(f"grid eta values: {grid_values(args.n)}")
    header = f"{'search':<8} {'finished':>8} {'val HV':>8} {'val front':>9} {'test HV':>8} {'test front':>10} " \
             f"{'test acc @ DP<=0.05':>19} {'wall s':>7}"  # fmt: skip
    print(header)
    for kind, r in rows.items():
        print(f"{kind:<8} {r['finished']:>8.0f} {r['val_hv']:>8.4f} {r['val_front']:>9.0f} {r['test_hv']:>8.4f} "
              f"{r['test_front']:>10.0f} {r['test_best_acc_dp05']:>19.4f} {r['wall']:>7.0f}")  # fmt: skip
    print(f"sweeps in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
