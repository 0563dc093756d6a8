"""The main job: an eta sweep on Adult (sex) in parallel, then its Pareto frontier.

    python -m fair_lightning.main                   # what `python3 tasks.py main` runs
    python -m fair_lightning.main trainer.max_epochs=4 hydra.launcher.n_jobs=4
    python -m fair_lightning.main fairness=lagrangian_dp fairness.tolerance=0.005,0.01,0.02,0.04,0.08

1. Runs the Hydra application as two sweeps (:data:`DEFAULT_SWEEPS`) on the ``adult_sex``
   experiment, two jobs at a time with the joblib launcher (``hydra/launcher=parallel``), into a
   fresh ``outputs/sweep-<timestamp>``: the demographic-parity penalty with ``eta`` in
   ``0 ... 64`` (8 values), and the Lagrangian constraint with ``tolerance`` (the max - min DP
   difference) in ``0.005 ... 0.1``.
   Extra arguments are Hydra overrides for both; choosing a ``fairness`` option runs that one
   sweep instead (the user's own axes), e.g. ``fairness=lagrangian_dp fairness.tolerance=...``.
2. Runs the Pareto report on the whole directory (:func:`fair_lightning.pareto.main`, as
   ``scripts/pareto.py`` does): ``frontier.csv``, ``frontier.png`` (threshold: DP difference
   0.05), the hypervolume and the TensorBoard entry.
   Jobs that failed, were killed or did not finish are listed by the report; the main job exits
   non-zero only if no job finished. Re-running with the same ``hydra.sweep.dir=...`` and
   ``+resume=true`` runs only the jobs without an ``ok`` record.
3. Prints where the files are, the wall time, and how much of it went into training (each job's
   ``fit_seconds`` from ``metrics.json``) versus start-up, imports, Hydra, data set-up and testing.

Why both: a penalty on soft scores traces the accurate end of the trade-off but stalls around a
DP difference of 0.04 before collapsing to a constant classifier at large ``eta``; the Lagrangian
mode, which enforces the constraint on thresholded predictions, fills the fair end (DP below
0.01 at about 0.83 accuracy). ``scripts/bench_fairness.py`` compares this frontier with the peers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

#: Overrides common to the main job's sweeps (``hydra.sweep.dir`` is added per run).
DEFAULT_OVERRIDES: dict[str, str] = {
    "experiment": "adult_sex",
    "hydra/launcher": "parallel",
    "hydra.launcher.n_jobs": "2",
}
#: The main job's sweeps: name (subdirectory) -> the method and its axis.
DEFAULT_SWEEPS: dict[str, dict[str, str]] = {
    "penalty": {"fairness": "penalty_dp", "fairness.eta": "0,0.25,0.5,1,2,4,8,64"},
    "lagrangian": {"fairness": "lagrangian_dp", "fairness.tolerance": "0.005,0.01,0.02,0.04,0.06,0.1"},
}
#: Fairness requirement drawn on the frontier (demographic-parity difference).
THRESHOLD = 0.05
# Lines of the sweep's output shown live (everything goes to <sweep dir>/sweep.log).
_SHOWN = re.compile(r"\]\[HYDRA\]|\]\[(__main__|fair_lightning\.train)\]|ERROR|Error|Traceback")


def _key(override: str) -> str:
    """The key an override sets: ``fairness.eta=1,2`` -> ``fairness.eta``, ``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def sweep_overrides(extra: Sequence[str], sweep_dir: Path, sweep: Mapping[str, str] | None = None) -> list[str]:
    """:data:`DEFAULT_OVERRIDES` and one of :data:`DEFAULT_SWEEPS` with ``extra`` applied (same
    key: ``extra`` wins), plus the sweep dir. With a ``fairness`` override the sweep is the user's."""
    extra_keys = {_key(o) for o in extra}
    defaults = dict(DEFAULT_OVERRIDES)
    if "fairness" not in extra_keys:
        defaults.update(sweep or {})
    if "hydra/launcher" in extra_keys:  # the other launchers have no n_jobs
        defaults.pop("hydra.launcher.n_jobs")
    defaults["hydra.sweep.dir"] = str(sweep_dir)
    return [f"{k}={v}" for k, v in defaults.items() if k not in extra_keys] + list(extra)


def _run_sweep(command: list[str], log_path: Path) -> int:
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            if _SHOWN.search(line):
                print("  " + line.rstrip(), flush=True)
        return process.wait()


def _timing(sweep_dir: Path, wall: float, workers: int) -> list[str]:
    records = []
    for path in sorted(sweep_dir.rglob("metrics.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    fit = sum(r.get("fit_seconds") or 0.0 for r in records)
    job = sum(r.get("total_seconds") or 0.0 for r in records)
    slots = wall * workers
    if not records or slots <= 0:
        return [f"sweep wall time {wall:.1f} s; no metrics.json to time the jobs"]
    return [
        f"sweep wall time {wall:.1f} s for {len(records)} jobs on {workers} parallel workers "
        f"({slots:.1f} worker-seconds)",
        f"  training (trainer.fit, sum over jobs):              {fit:7.1f} s = {fit / slots:6.1%} of the worker time",
        f"  in jobs, outside fit (data set-up, test, metrics):  {job - fit:7.1f} s = {(job - fit) / slots:6.1%}",
        f"  outside jobs (interpreter start-up, imports, Hydra, launcher, idle workers): "
        f"{slots - job:.1f} s = {(slots - job) / slots:.1%}",
        f"  share of the sweep spent outside training: {1 - fit / slots:.1%}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the default sweep and its Pareto report; extra arguments are Hydra overrides."""
    extra = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in extra):
        print(__doc__)
        return 0
    from fair_lightning import pareto

    start = time.perf_counter()
    sweep_dir = Path("outputs", f"sweep-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}").resolve()
    if any(_key(o) == "hydra.sweep.dir" for o in extra):
        sweep_dir = Path(next(o for o in extra if _key(o) == "hydra.sweep.dir").split("=", 1)[1]).resolve()
        extra = [o for o in extra if _key(o) != "hydra.sweep.dir"]  # each sub-sweep gets its own subdirectory
    sweep_dir.mkdir(parents=True, exist_ok=True)
    user_sweep = any(_key(o) == "fairness" for o in extra)
    sweeps = {"": {}} if user_sweep else DEFAULT_SWEEPS
    sweep_wall = 0.0
    for name, sweep in sweeps.items():
        overrides = sweep_overrides(extra, sweep_dir / name, sweep)
        command = [sys.executable, "-m", "fair_lightning.train", "-m", *overrides]
        print("+ python " + " ".join(command[1:]), flush=True)
        sweep_start = time.perf_counter()
        (sweep_dir / name).mkdir(parents=True, exist_ok=True)
        code = _run_sweep(command, sweep_dir / name / "sweep.log")
        sweep_wall += time.perf_counter() - sweep_start
        if code != 0:  # report what finished anyway: the Pareto report says which jobs did not
            log = sweep_dir / name / "sweep.log"
            print(f"the sweep {name or str(sweep_dir)!r} ended with exit status {code}; its output is in {log}:", file=sys.stderr)
            print("".join(log.read_text().splitlines(keepends=True)[-25:]), file=sys.stderr)

    fairness = next((o.split("=", 1)[1] for o in extra if _key(o) == "fairness"), "")
    label = "tolerance" if fairness.startswith("lagrangian") else ("mode" if fairness == "erm" else "eta")
    report_args = [str(sweep_dir), "--threshold", str(THRESHOLD), "--label", label]
    print("+ python scripts/pareto.py " + " ".join(report_args), flush=True)
    report_start = time.perf_counter()
    code = pareto.main(report_args)
    report_wall = time.perf_counter() - report_start
    if code != 0:
        print("no job of the sweep finished; nothing to report (see the messages above)", file=sys.stderr)
        return code

    workers = next((int(o.split("=", 1)[1]) for o in overrides if _key(o) == "hydra.launcher.n_jobs"), 1)
    print()
    for line in _timing(sweep_dir, sweep_wall, workers):
        print(line)
    print(f"Pareto report {report_wall:.1f} s; total wall time {time.perf_counter() - start:.1f} s")
    print(f"frontier.png: {sweep_dir / pareto.FRONTIER_PNG}")
    print(f"frontier.csv: {sweep_dir / pareto.FRONTIER_CSV}")
    return 0


__all__ = ["DEFAULT_OVERRIDES", "DEFAULT_SWEEPS", "THRESHOLD", "main", "sweep_overrides"]


if __name__ == "__main__":
    sys.exit(main())
