"""Accuracy-fairness trade-offs: non-dominated fronts, hypervolume, sweep tables and plots.

* :func:`pareto_front`: the non-dominated points of a set (any number of objectives).
* :func:`hypervolume`: the area a 2-D front dominates up to a reference point (exact).
* :func:`load_sweep`: a Hydra multirun directory as a table, one row per job's ``metrics.json``
  (written by :mod:`fair_lightning.train`); unfinished and failed jobs are reported and skipped.
* :func:`plot_pareto_frontier`: all points, the frontier, each point labelled (by ``eta``), an
  optional fairness threshold and baselines.
* :func:`pareto_sweep`: the in-process alternative to a Hydra sweep, for notebooks: one model per
  ``eta`` on a data module you already have.
* :func:`main`: the command line behind ``scripts/pareto.py`` (and ``python -m
  fair_lightning.pareto``): ``frontier.csv``, ``frontier.png``, the hypervolume and a TensorBoard
  entry for a sweep directory.

Objectives are columns of the table, ``maximize`` says which way each is better; by default it
is inferred from the name (:func:`higher_is_better`: accuracy, AUROC and ratios up; differences,
errors and losses down).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from fair_lightning._records import effective_status

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # the same name as fair_lightning.train.METRICS_FILE (not imported: no Hydra needed here)
#: Files :func:`main` writes into the sweep directory.
FRONTIER_CSV, FRONTIER_PNG, TENSORBOARD_DIR = "frontier.csv", "frontier.png", "tensorboard"
#: Record keys left out of the table (the raw logged metrics and the traceback stay in ``metrics.json``).
_NOT_IN_TABLE = ("metrics", "traceback", "selection", "crossfit")
_GROUP_SUFFIX = "_by_group"
_FIRST_COLUMNS = ("job", "job_dir", "status", "mode", "fairness", "eta", "tolerance", "overrides")


# --------------------------------------------------------------------------------- the front
def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better, from its name.

    ``accuracy``, ``auroc`` and ``*ratio*`` (disparate impact) are maximized; ``*difference*``,
    ``*error*``, ``*loss*``, ``*seconds*``, ``*cdf_gap*``, ``*mse`` and ``*mae`` minimized.

    Raises:
        ValueError: for a name matching neither rule (pass ``maximize`` explicitly).
    """
    lowered = name.lower()
    if any(word in lowered for word in ("difference", "error", "loss", "seconds", "cdf_gap")) or lowered.endswith(("mse", "mae")):
        return False
    if "ratio" in lowered or lowered.endswith(("accuracy", "auroc", "auc")):
        return True
    raise ValueError(f"cannot tell whether higher {name!r} is better; pass `maximize` explicitly")


def _points(points: Any) -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim == 1 and array.size:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise ValueError(f"`points` must be an (n, d) array of objective values, got shape {array.shape}")
    return array


def _signs(maximize: bool | Sequence[bool], d: int) -> np.ndarray:
    if isinstance(maximize, (bool, np.bool_)):
        maximize = [bool(maximize)] * d
    maximize = list(maximize)
    if len(maximize) != d:
        raise ValueError(f"`maximize` must have one entry per objective ({d}), got {maximize!r}")
    return np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)


def pareto_front(points: Any, maximize: bool | Sequence[bool] = (True, False)) -> np.ndarray:
    """Mask of the non-dominated points.

    A point dominates another if it is at least as good in every objective and strictly better in
    one. So duplicates of a non-dominated point are all on the front (none dominates the other),
    and a point tied with a front point in one objective but worse in another is not. Rows with a
    NaN or infinite value are never on the front and dominate nothing.

    Args:
        points: ``(n, d)`` objective values (one row per model); a single point may be ``(d,)``.
        maximize: per objective, whether larger is better (one bool for all). The default fits
            ``(accuracy, dp_difference)``.

    Returns:
        ``(n,)`` boolean mask, True for the non-dominated rows.

    Example:
        >>> pareto_front([[0.85, 0.18], [0.83, 0.02], [0.80, 0.05], [0.83, 0.02]]).tolist()
        [True, True, False, True]
    """
    p = _points(points)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    q = p * _signs(maximize, p.shape[1])  # every objective maximized
    finite = np.isfinite(q).all(axis=1)
    q = np.where(finite[:, None], q, -np.inf)
    # dominates[j, i]: row j dominates row i (O(n^2 d) memory: sweeps have at most thousands of jobs)
    at_least = (q[:, None, :] >= q[None, :, :]).all(axis=-1)
    better = (q[:, None, :] > q[None, :, :]).any(axis=-1)
    dominated = (at_least & better & finite[:, None]).any(axis=0)
    return finite & ~dominated


def hypervolume(points: Any, reference: Sequence[float], maximize: bool | Sequence[bool] = (True, False)) -> float:
    """Area dominated by 2-D points up to ``reference`` (exact, by a sweep over the sorted front).

    The area of the union of the boxes between each point and the reference point; a larger
    hypervolume is a better front. Only points strictly better than ``reference`` in both
    objectives count; rows with NaN are ignored; no point gives 0.

    Args:
        points: ``(n, 2)`` objective values.
        reference: the reference point, worse than every point of interest in both objectives
            (for metrics in [0, 1]: 0 for a maximized one, 1 for a minimized one, see
            :func:`default_reference`).
        maximize: per objective, whether larger is better.

    Returns:
        The hypervolume (an area, in the units of the two objectives).

    Example:
        >>> round(hypervolume([[0.8, 0.1], [0.7, 0.0]], reference=(0.0, 1.0)), 6)  # 0.8 * 0.9 + 0.7 * 0.1
        0.79
    """
    p = _points(points) if np.size(points) else np.zeros((0, 2))
    if p.shape[1] != 2:
        raise ValueError(f"`hypervolume` is for 2 objectives, got points with {p.shape[1]}")
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (2,) or not np.isfinite(ref).all():
        raise ValueError(f"`reference` must be 2 finite numbers, got {reference!r}")
    signs = _signs(maximize, 2)
    q, r = -p * signs, -ref * signs  # every objective minimized
    q = q[np.isfinite(q).all(axis=1) & (q < r).all(axis=1)]
    if q.shape[0] == 0:
        return 0.0
    q = q[np.lexsort((q[:, 1], q[:, 0]))]  # by the first objective, then the second
    area, best = 0.0, r[1]
    for x, y in q:
        if y < best:
            area += (r[0] - x) * (best - y)
            best = y
    return float(area)


def default_reference(maximize: Sequence[bool]) -> tuple[float, ...]:
    """The worst value of metrics in [0, 1]: 0 for a maximized one, 1 for a minimized one.

    A fixed reference makes hypervolumes of different sweeps comparable: for
    ``(test_dp_difference, test_accuracy)`` it is ``(1, 0)``, and the hypervolume is the share
    of the unit square the front dominates.
    """
    return tuple(0.0 if m else 1.0 for m in maximize)


def frontier_table(
    table: pd.DataFrame, x: str = "test_dp_difference", y: str = "test_accuracy", maximize: Sequence[bool] | None = None
) -> pd.DataFrame:
    """A copy of ``table`` with ``constant_predictor`` (:func:`constant_predictors`) and ``is_pareto``
    columns: the front among rows with ``status == "ok"`` (if present) that are not constant predictors."""
    maximize = _maximize(x, y, maximize)
    out = table.copy()
    mask = np.zeros(len(out), dtype=bool)
    stage = x.split("_", 1)[0] if x.split("_", 1)[0] in _STAGES else "test"
    constant = constant_predictors(out, stage) if len(out) else np.zeros(0, dtype=bool)
    if len(out):
        ok = _ok_rows(out, x, y) & ~constant
        mask[ok] = pareto_front(out.loc[ok, [x, y]].to_numpy(float), maximize)
    out["constant_predictor"] = constant
    out["is_pareto"] = mask
    return out


def _maximize(x: str, y: str, maximize: Sequence[bool] | None) -> tuple[bool, bool]:
    if maximize is None:
        return higher_is_better(x), higher_is_better(y)
    maximize = tuple(bool(m) for m in maximize)
    if len(maximize) != 2:
        raise ValueError(f"`maximize` must be two bools (for x and y), got {maximize!r}")
    return maximize


def _ok_rows(table: pd.DataFrame, x: str, y: str) -> np.ndarray:
    for column in (x, y):
        if column not in table.columns:
            raise ValueError(f"column {column!r} is not in the table; numeric columns: {_numeric_columns(table)}")
    ok = np.isfinite(table[[x, y]].to_numpy(float)).all(axis=1)
    if "status" in table.columns:
        ok &= (table["status"] == "ok").to_numpy()
    return ok


def _numeric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and table[c].dtype != bool]


# --------------------------------------------------------------------------------- sweeps
def flatten_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from a ``metrics.json`` record.

    Scalars stay; per-group mappings ``<name>_by_group: {group: v}`` become columns
    ``<name>/<group>`` (``test_selection_rate/sex=Female``); lists become strings (overrides
    joined by spaces, groups by commas); the raw ``metrics`` and the ``traceback`` are left out.
    """
    row: dict[str, Any] = {}
    selection = record.get("selection")
    if isinstance(selection, Mapping) and "objective" in selection:
        # what a selection judged on validation (cross-fitted where it fitted group thresholds)
        row["selection_objective"] = selection["objective"]
        row["selection_thresholds"] = bool(selection.get("thresholds", False))
    crossfit = record.get("crossfit")
    if isinstance(crossfit, Mapping):
        # a cross-fit job (crossfit.folds=K): its fold mixture is what the row's metrics are of
        row["crossfit_folds"] = crossfit.get("folds")
    for key, value in record.items():
        if key in _NOT_IN_TABLE:
            continue
        if isinstance(value, Mapping):
            base = key[: -len(_GROUP_SUFFIX)] if key.endswith(_GROUP_SUFFIX) else key
            for group, v in value.items():
                row[f"{base}/{group}"] = np.nan if v is None else v
        elif isinstance(value, (list, tuple)):
            row[key] = (" " if key == "overrides" else ",").join(str(v) for v in value)
        else:
            row[key] = np.nan if value is None and key not in ("error", "fairness") else value
    return row


#: Record keys whose values must lie in [0, 1] (rates, accuracies, ratios, calibration errors,
#: differences of rates), matched by the end of the name (per-group mappings too).
_UNIT_SUFFIXES = (
    "accuracy", "auroc", "auc", "ratio", "selection_rate", "true_positive_rate", "false_positive_rate",
    "calibration_error", "calibration_error_max", "difference", "base_rate",
)  # fmt: skip
#: Record keys whose values must be finite and >= 0.
_NONNEGATIVE_KEYS = ("eta", "tolerance", "lr", "epochs", "global_step", "job")
_CI_SUFFIXES = ("_ci_low", "_ci_high")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _range_of(key: str, task: str | None = None) -> tuple[float, float] | None:
    """The valid range of a record key, from its name and the job's ``task`` (``None``: any finite
    number). A regression job's differences (of mean predictions, of group MSEs) and its errors
    are >= 0 without an upper end; its ``cdf_gap`` lies in [0, 1]."""
    base = key
    for suffix in (*_CI_SUFFIXES, _GROUP_SUFFIX):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    if base.endswith(("_count", "_seconds", "_mse", "_mae", "mean_squared_error")) or base in _NONNEGATIVE_KEYS:
        return (0.0, math.inf)
    if base.endswith("cdf_gap"):
        return (0.0, 1.0)
    if task == "regression" and base.endswith("difference"):
        return (0.0, math.inf)
    if base.endswith(_UNIT_SUFFIXES):
        return (0.0, 1.0)
    return None


def _check_value(key: str, value: Any, task: str | None = None) -> str | None:
    bounds = _range_of(key, task)
    expected = "a number" if bounds is None else (
        f"a number >= {bounds[0]:g}" if math.isinf(bounds[1]) else f"a number in [{bounds[0]:g}, {bounds[1]:g}]"
    )  # fmt: skip
    if not _is_number(value):
        return f"`{key}` must be {expected}, got {value!r} ({type(value).__name__})"
    if not math.isfinite(float(value)):
        return f"`{key}` must be {expected}, got {value!r} (not finite)"
    if bounds is not None and not bounds[0] <= float(value) <= bounds[1]:
        return f"`{key}` must be {expected}, got {value!r}"
    return None


def validate_record(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with a finished job's record: one message per impossible value (empty if none).

    Every metric present (``null`` means not logged, and is allowed) must be a finite number:
    accuracies, AUROC, rates, ratios, calibration errors and differences of rates in [0, 1]
    (a negative difference or an accuracy of 1.7 cannot come from a model), counts, timings,
    ``eta``, ``tolerance`` and ``lr`` >= 0; per-group mappings (``<name>_by_group``) and
    confidence-interval bounds (``<name>_ci_low``/``_ci_high``) likewise.

    Example:
        >>> validate_record({"test_accuracy": 1.7, "test_dp_difference": "abc"})
        ['`test_accuracy` must be a number in [0, 1], got 1.7', "`test_dp_difference` must be a number in [0, 1], got 'abc' (str)"]
    """
    problems = []
    task = record.get("task")
    for key, value in record.items():
        if key in _NOT_IN_TABLE or value is None:
            continue
        if key.endswith(_GROUP_SUFFIX):
            if not isinstance(value, Mapping):
                problems.append(f"`{key}` must be a mapping of groups to numbers, got {value!r}")
                continue
            for group, v in value.items():
                if v is not None and (problem := _check_value(key, v, task)):
                    problems.append(problem.replace(f"`{key}`", f"`{key}[{group!r}]`", 1))
        elif _range_of(key, task) is not None or key.endswith(("_loss", *_CI_SUFFIXES)) or key.startswith(("val_", "test_")):
            if key == "job" and not _is_number(value):
                continue
            if problem := _check_value(key, value, task):
                problems.append(problem)
    return problems


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Directories of the jobs: those holding Hydra's ``.hydra/`` or a ``metrics.json``."""
    found = {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in sweep_dir.rglob(METRICS_FILE) if p.is_file()}
    return sorted(found, key=lambda p: (len(p.relative_to(sweep_dir).parts), _job_number(p, sweep_dir), str(p)))


def _job_number(path: Path, root: Path) -> float:
    name = path.name if path != root else ""
    return int(name) if name.isdigit() else math.inf


def load_sweep(sweep_dir: str | os.PathLike, *, include_failed: bool = False) -> pd.DataFrame:
    """One row per job of a Hydra multirun (or run) directory, from each job's ``metrics.json``.

    A job is a directory with Hydra's ``.hydra/`` or a ``metrics.json``. Jobs without
    ``metrics.json`` (``"unfinished"``), with an unreadable one (``"unreadable"``), with
    ``status`` ``"failed"`` or ``"killed"``, still ``"running"`` (a ``"running"`` record whose
    process is gone reads as ``"killed"``, see :func:`fair_lightning._records.effective_status`),
    or ``"ok"`` with impossible values (``"invalid"``: :func:`validate_record`) are reported (a warning on the ``fair_lightning.pareto`` logger,
    one line per job with the reason or error) and skipped; the list is in
    ``table.attrs["skipped"]``.

    Args:
        sweep_dir: the sweep directory (``hydra.sweep.dir``).
        include_failed: keep the skipped jobs as rows too, with ``status`` ``"failed"``,
            ``"unfinished"`` or ``"unreadable"`` and the reason in ``error``.

    Returns:
        A DataFrame with ``job`` (number), ``job_dir`` (relative to ``sweep_dir``), ``status``,
        the method (``mode``, ``fairness``, ``eta``, ``tolerance``), ``overrides``, the metrics
        (``test_accuracy``, ``test_dp_difference``, ... and per group ``test_selection_rate/<g>``)
        and timings, sorted by job number.

    Raises:
        FileNotFoundError: if ``sweep_dir`` is not a directory.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {str(root)!r} does not exist")
    rows, skipped = [], []
    for job_dir in _job_dirs(root):
        rel = job_dir.relative_to(root).as_posix() or "."
        number = _job_number(job_dir, root)
        path = job_dir / METRICS_FILE
        if path.exists() and not path.is_file():
            reason, status, record = "unreadable metrics.json (not a file)", "unreadable", None
        elif not path.is_file():
            reason, status, record = "no metrics.json (unfinished, or killed before writing one)", "unfinished", None
        else:
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                reason, status, record = f"unreadable metrics.json ({exc})", "unreadable", None
            else:
                status, why = effective_status(record)
                if status == "ok":
                    problems = validate_record(record)
                    reason = None
                    if problems:
                        status, reason = "invalid", "rejected, impossible values: " + "; ".join(problems)
                elif status in ("running", "killed") and why is not None:
                    reason = why
                else:
                    reason = f"status {status!r}: {record.get('error') or 'no error recorded'}"
        row = flatten_record(record) if record else {}
        if not isinstance(row.get("job"), (int, np.integer)):  # a single run records no job number
            row["job"] = number if math.isfinite(number) else np.nan
        row["job_dir"] = rel
        if reason is not None:
            skipped.append({"job_dir": rel, "status": status, "reason": reason})
            log.warning("skipping job %s: %s", rel, reason)
            if include_failed:
                rows.append({**row, "status": status, "error": reason})
            continue
        rows.append(row)
    if skipped:
        n_ok = sum(row.get("status") == "ok" for row in rows)
        log.warning("%d of %d jobs in %s skipped (unfinished or failed)", len(skipped), len(skipped) + n_ok, root)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["job", "job_dir", "status"])
    else:
        first = [c for c in _FIRST_COLUMNS if c in table]
        table = table[first + [c for c in table.columns if c not in first]]
        table = table.sort_values(["job", "job_dir"], na_position="last", kind="stable").reset_index(drop=True)
    for column in table.columns:  # a rejected row's "abc" must not turn a metric column into text
        if column not in ("job_dir", "status", "error") and (column.startswith(("val_", "test_")) or _range_of(column)):
            table[column] = pd.to_numeric(table[column], errors="coerce")
    table.attrs["skipped"] = skipped
    return table


# --------------------------------------------------------------------------------- plotting
def _label(row: pd.Series, label: str) -> str:
    """``row[label]`` as short text; where it is missing (a Lagrangian job has no ``eta``), the
    row's tolerance (``"tol=0.01"``) or its ``mode`` (``"erm"``)."""

    def missing(value: Any) -> bool:
        return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))

    value = row.get(label)
    if missing(value):
        tolerance = row.get("tolerance")
        if label != "tolerance" and not missing(tolerance):
            return f"tol={tolerance:g}"
        mode = row.get("mode")
        return mode if isinstance(mode, str) else ""
    return f"{value:g}" if isinstance(value, (float, np.floating, int, np.integer)) else str(value)


#: Readable names of record columns for axes and tables (the stage is added in brackets).
READABLE_NAMES: dict[str, str] = {
    "accuracy": "accuracy",
    "auroc": "AUROC",
    "dp_difference": "demographic-parity difference",
    "dp_ratio": "demographic-parity ratio",
    "eo_difference": "equalized-odds difference",
    "eopp_difference": "equal-opportunity difference",
    "calibration_error_max": "largest group calibration error",
    "loss": "loss",
    "mse": "MSE",
    "mae": "MAE",
    "mse_difference": "group MSE difference",
    "cdf_gap": "largest gap between the groups' prediction CDFs",
}
#: what a column means for a regression job where it differs from a classifier's
REGRESSION_NAMES: dict[str, str] = {"dp_difference": "group mean-prediction difference"}
_STAGES = {"test": "test", "val": "validation"}
#: Marker and colour of each method (``mode``) on the frontier plot.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "erm": ("s", "tab:gray"),
    "penalty": ("o", "tab:blue"),
    "lagrangian": ("^", "tab:green"),
    "adversarial": ("D", "tab:purple"),
    "mutual_information": ("P", "tab:brown"),
}
_OTHER_STYLES = [("v", "tab:olive"), ("X", "tab:cyan"), ("h", "tab:pink")]
#: A selection rate this close to 0 or 1 in every group marks a constant (collapsed) predictor.
CONSTANT_RATE_TOLERANCE = 0.01


def readable_name(column: str, task: str | None = None) -> str:
    """``"test_accuracy"`` -> ``"Test accuracy"``, ``"test_dp_difference"`` -> ``"Demographic-parity difference (test)"``
    (for ``task="regression"``: ``"Group mean-prediction difference (test)"``)."""
    stage, _, name = column.partition("_")
    names = {**READABLE_NAMES, **REGRESSION_NAMES} if task == "regression" else READABLE_NAMES
    if stage in _STAGES and name in names:
        text = names[name]
        return f"{_STAGES[stage].capitalize()} {text}" if name in ("accuracy", "auroc", "loss", "mse", "mae") else f"{text[0].upper()}{text[1:]} ({_STAGES[stage]})"
    text = column.replace("_", " ")
    return text[:1].upper() + text[1:]


def _task_of(table: pd.DataFrame) -> str | None:
    """``"regression"`` when every job of ``table`` with a recorded task is a regression one."""
    if "task" not in table.columns:
        return None
    tasks = set(table["task"].dropna())
    return "regression" if tasks == {"regression"} else None


def constant_predictors(table: pd.DataFrame, stage: str = "test") -> np.ndarray:
    """Mask of rows whose model predicts (nearly) one class for everyone.

    A row is constant if its record says ``constant_predictor: true``, if the selection rate of
    every group (``<stage>_selection_rate/<group>``) is within :data:`CONSTANT_RATE_TOLERANCE` of
    0 or of 1, or if its accuracy equals the majority rate ``max(p, 1 - p)`` of a recorded base
    rate ``<stage>_base_rate`` (within 0.001). Such a model has a demographic-parity difference
    of about 0 for free: it must not be the frontier's "fairest" model.
    """
    mask = np.zeros(len(table), dtype=bool)
    if "constant_predictor" in table.columns:
        mask |= table["constant_predictor"].fillna(False).astype(bool).to_numpy()
    rates = [c for c in table.columns if c.startswith(f"{stage}_selection_rate/")]
    if rates:
        values = table[rates].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        tol = CONSTANT_RATE_TOLERANCE
        with np.errstate(invalid="ignore"):
            all_zero = np.all(values <= tol, axis=1)
            all_one = np.all(values >= 1 - tol, axis=1)
        mask |= np.isfinite(values).all(axis=1) & (all_zero | all_one)
    base, accuracy = f"{stage}_base_rate", f"{stage}_accuracy"
    if base in table.columns and accuracy in table.columns:
        p = pd.to_numeric(table[base], errors="coerce").to_numpy(float)
        acc = pd.to_numeric(table[accuracy], errors="coerce").to_numpy(float)
        with np.errstate(invalid="ignore"):
            mask |= np.abs(acc - np.maximum(p, 1 - p)) < 1e-3
    return mask


def _validation_column(column: str) -> str:
    return "val_" + column[len("test_"):] if column.startswith("test_") else column


def choose_on_validation(
    table: pd.DataFrame,
    x: str = "test_dp_difference",
    y: str = "test_accuracy",
    threshold: float | None = None,
    maximize: Sequence[bool] | None = None,
) -> tuple[Any, str]:
    """The job to ship under a requirement on ``x``, chosen on the **validation** split.

    The test split reports; it does not choose. Among finished jobs that are not constant
    predictors on validation and meet ``threshold`` on the validation column of ``x``
    (``test_dp_difference`` -> ``val_dp_difference``), the best validation value of ``y``; its
    test values are what the frontier shows. For ``y="test_accuracy"`` a job whose
    ``ConstrainedModelSelection`` fitted group thresholds on validation is compared by the
    selection's cross-fitted accuracy (``selection_objective``), not by the accuracy of thresholds
    on the rows they were fitted on. Without a threshold: the best validation ``y``.

    Returns:
        ``(index, why)``: the row's index label (``None`` when no job qualifies or the table has
        no validation columns) and a sentence saying what was chosen or why nothing was.
    """
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating))
                                  or not math.isfinite(threshold)):
        raise ValueError(f"`threshold` must be a finite number or None, got {threshold!r}")
    mx, my = _maximize(x, y, maximize)
    vx, vy = _validation_column(x), _validation_column(y)
    missing = [c for c in ((vx, vy) if threshold is not None else (vy,)) if c not in table.columns]
    if missing:
        return None, f"no validation column {', '.join(missing)} in the records: cannot choose on validation"
    ok = np.array(table["status"].eq("ok"), dtype=bool) if "status" in table.columns else np.ones(len(table), dtype=bool)
    ok &= ~constant_predictors(table.drop(columns="constant_predictor", errors="ignore"), "val")
    score = pd.to_numeric(table[vy], errors="coerce").to_numpy(float)
    replaced = np.zeros(len(table), dtype=bool)
    if y == "test_accuracy" and "selection_objective" in table.columns:
        cross_fitted = pd.to_numeric(table["selection_objective"], errors="coerce").to_numpy(float)
        used = np.array(table.get("selection_thresholds", pd.Series(False, index=table.index)).fillna(False), dtype=bool)
        replaced = used & np.isfinite(cross_fitted)
        score = np.where(replaced, cross_fitted, score)
    ok &= np.isfinite(score)
    requirement = ""
    if threshold is not None:
        vals = pd.to_numeric(table[vx], errors="coerce").to_numpy(float)
        with np.errstate(invalid="ignore"):
            ok &= (vals >= threshold) if mx else (vals <= threshold)
        requirement = f" with {vx} {'>=' if mx else '<='} {threshold:g}"
    if not ok.any():
        return None, f"no non-constant job{requirement} on validation"
    best = np.flatnonzero(ok)[int(np.argmax(score[ok]) if my else np.argmin(score[ok]))]
    how = f"{score[best]:.4f}, cross-fitted over its group thresholds" if replaced[best] else f"{score[best]:.4f}"
    return table.index[best], f"chosen on validation: the best {vy} ({how}) of the {int(ok.sum())} jobs{requirement}"


def _method(row: pd.Series) -> str:
    mode = row.get("mode")
    return mode if isinstance(mode, str) and mode else "unknown"


def _setting(row: pd.Series, label: str | None) -> str:
    """The swept setting of a row: ``eta=4`` (penalty, adversarial), ``tolerance=0.01`` (Lagrangian)."""

    def number(value: Any) -> str | None:
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
            return None
        return f"{value:.3g}" if isinstance(value, (float, np.floating, int, np.integer)) else str(value)

    parts = []
    for key in dict.fromkeys([k for k in (label, "eta", "tolerance") if k]):
        text = number(row.get(key))
        if text is not None:
            parts.append(f"{key}={text}")
    if row.get("lr") is not None and number(row.get("lr")) is not None and "lr" in (row.get("overrides") or ""):
        parts.append(f"lr={number(row.get('lr'))}")
    return ", ".join(parts)


def _place_labels(ax: Axes, points: np.ndarray, texts: Sequence[str]) -> None:
    """Write ``texts`` next to ``points`` where they overlap no other label and no point (greedy)."""
    if not len(points):
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else None
    if renderer is None:  # pragma: no cover
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering() if hasattr(fig, "draw_without_rendering") else None
    display = ax.transData.transform(points)
    dots = [(px - 5, py - 5, px + 5, py + 5) for px, py in display]
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (0, 9), (0, -17), (11, -4), (-11, -4),
               (14, 12), (14, -20), (-14, 12), (-14, -20), (22, -4), (-22, -4), (0, 20), (0, -28)]  # fmt: skip

    def overlaps(box, others):
        return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)

    order = np.argsort(display[:, 0], kind="stable")
    for i in order:
        text = texts[i]
        annotation = None
        for dx, dy in offsets:
            if annotation is not None:
                annotation.remove()
            annotation = ax.annotate(
                text, points[i], xytext=(dx, dy), textcoords="offset points", fontsize=8, color="0.1",
                ha="left" if dx >= 0 else "right", zorder=6,
                arrowprops=None if abs(dx) + abs(dy) <= 16 else {"arrowstyle": "-", "color": "0.6", "lw": 0.6},
            )  # fmt: skip
            extent = annotation.get_window_extent(renderer)
            box = (extent.x0 - 1, extent.y0 - 1, extent.x1 + 1, extent.y1 + 1)
            if not overlaps(box, placed) and not overlaps(box, [d for j, d in enumerate(dots) if j != i]):
                break
        placed.append(box)


def plot_pareto_frontier(
    table: pd.DataFrame,
    x: str = "test_dp_difference",
    y: str = "test_accuracy",
    label: str | None = "eta",
    *,
    threshold: float | None = None,
    baselines: Mapping[str, Sequence[float]] | None = None,
    ax: Axes | None = None,
    maximize: Sequence[bool] | None = None,
    title: str | None = None,
    key: bool = True,
) -> Figure:
    """Every model, one marker per method, the Pareto frontier, numbered points and their key.

    What a stakeholder reads: readable axis names (:func:`readable_name`), one marker and legend
    entry per method (``mode``: ERM, penalty, Lagrangian, ...), the frontier drawn as a line
    through its (filled, outlined) points, dominated models hollow, constant (collapsed)
    predictors (:func:`constant_predictors`) as grey crosses named in the legend and left off
    the frontier, error bars where the table has ``<x>_ci_low``/``<x>_ci_high`` (and the same
    for ``y``), each point numbered without overlaps, and a key beside the plot: number, method,
    swept setting (``eta=4``, ``tolerance=0.01``), the two values.

    Args:
        table: one row per model (:func:`load_sweep`, :func:`pareto_sweep`); rows with a
            ``status`` other than ``"ok"`` or without both values are left out.
        x, y: the two objective columns (fairness on x, performance on y by default).
        label: the setting shown first in the key (``"eta"``; each row also shows its
            ``eta``/``tolerance``, whichever it has). ``None``: no numbers and no key.
        threshold: a fairness requirement on ``x``: a dashed vertical line, the acceptable side
            shaded, and the model to ship starred: chosen on validation (:func:`choose_on_validation`).
        baselines: name -> ``(x, y)`` of reference models drawn as labelled diamonds.
        ax: axes to draw on (then no key panel); default a new figure with the key beside it.
        maximize: whether larger is better for ``x`` and ``y``; default from the names.
        title: the axes' title; default names the objectives and counts the frontier.
        key: draw the key of numbered points beside the plot (new figure only).

    Returns:
        The matplotlib ``Figure`` (``fig.savefig("frontier.png")``).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    mx, my = _maximize(x, y, maximize)
    key_ax = None
    if ax is None:
        with_key = key and label is not None
        fig = Figure(figsize=(11.5 if with_key else 7.5, 5.6), layout="constrained")
        if with_key:
            ax, key_ax = fig.subplots(1, 2, width_ratios=[2.4, 1])
        else:
            ax = fig.add_subplot()
    else:
        fig = ax.figure
    data = table.loc[_ok_rows(table, x, y)] if len(table) else table
    if len(data):  # numbered by method, then along x: the key reads method by method
        rank = {m: i for i, m in enumerate(METHOD_STYLES)}
        order = sorted(range(len(data)), key=lambda i: (rank.get(_method(data.iloc[i]), len(rank)), _method(data.iloc[i]),
                                                        float(data.iloc[i][x])))  # fmt: skip
        data = data.iloc[order]
    points = data[[x, y]].to_numpy(float) if len(data) else np.zeros((0, 2))
    stage = x.split("_", 1)[0] if x.split("_", 1)[0] in _STAGES else "test"
    constant = constant_predictors(data, stage) if len(data) else np.zeros(0, dtype=bool)
    front = np.zeros(len(points), dtype=bool)
    if (~constant).any():
        front[~constant] = pareto_front(points[~constant], (mx, my))
    methods = [_method(row) for _, row in data.iterrows()]
    styles: dict[str, tuple[str, str]] = {}
    for method in dict.fromkeys(methods):
        styles[method] = METHOD_STYLES.get(method) or _OTHER_STYLES[len(styles) % len(_OTHER_STYLES)]

    # error bars first, under the markers
    xerr = _ci(data, x)
    yerr = _ci(data, y)
    if xerr is not None or yerr is not None:
        ax.errorbar(points[:, 0], points[:, 1], xerr=xerr, yerr=yerr, fmt="none", ecolor="0.55", elinewidth=0.8,
                    capsize=2, zorder=1)  # fmt: skip
    if front.any():
        order = np.argsort(points[front, 0], kind="stable")
        fx, fy = points[front][order, 0], points[front][order, 1]
        ax.step(fx, fy, where="pre" if mx else "post", color="black", lw=1.2, alpha=0.7, zorder=2)
    for method, (marker, color) in styles.items():
        mine = np.array([m == method for m in methods]) & ~constant
        on, off = mine & front, mine & ~front
        if on.any():
            ax.scatter(points[on, 0], points[on, 1], marker=marker, s=60, color=color, edgecolor="black", lw=1.0, zorder=4)
        if off.any():
            ax.scatter(points[off, 0], points[off, 1], marker=marker, s=46, facecolor="none", edgecolor=color, lw=1.3, zorder=3)
    if constant.any():
        ax.scatter(points[constant, 0], points[constant, 1], marker="x", s=60, color="0.45", lw=1.6, zorder=3)

    handles = [Line2D([], [], marker=m, color=c, ls="none", markersize=7, label=_method_name(name))
               for name, (m, c) in styles.items() if any(mm == name for mm, k in zip(methods, constant) if not k)]  # fmt: skip
    handles.append(Line2D([], [], marker="o", ls="-", color="black", markerfacecolor="0.7", markersize=7,
                          label="Pareto frontier (filled)"))  # fmt: skip
    if (~front & ~constant).any():
        handles.append(Line2D([], [], marker="o", ls="none", color="0.4", markerfacecolor="none", markersize=7,
                              label="dominated (hollow)"))  # fmt: skip
    if constant.any():
        handles.append(Line2D([], [], marker="x", ls="none", color="0.45", markersize=8, mew=1.6,
                              label=f"constant predictor ({int(constant.sum())}; not on the frontier)"))  # fmt: skip

    for name, (bx, by) in (baselines or {}).items():
        ax.scatter([bx], [by], marker="D", s=50, color="tab:orange", edgecolor="k", zorder=5)
        ax.annotate(name, (bx, by), xytext=(5, -10), textcoords="offset points", fontsize=8, color="tab:orange")
    if threshold is not None:
        threshold = float(threshold)
        ax.axvline(threshold, color="tab:red", ls="--", lw=1.2)
        handles.append(Line2D([], [], color="tab:red", ls="--", label=f"requirement: {'≥' if mx else '≤'} {threshold:g}"))
        lo, hi = ax.get_xlim()
        if mx:
            ax.axvspan(threshold, max(hi, threshold), color="tab:green", alpha=0.06)
        else:
            ax.axvspan(min(lo, threshold), threshold, color="tab:green", alpha=0.06)
        ax.set_xlim(min(lo, threshold), max(hi, threshold))
        chosen, _ = choose_on_validation(table, x, y, threshold, (mx, my))
        if chosen is not None and chosen in data.index:
            at = (float(data.at[chosen, x]), float(data.at[chosen, y]))
            ax.scatter(*at, marker="*", s=320, facecolor="none", edgecolor="tab:red", lw=1.5, zorder=5)
            handles.append(Line2D([], [], marker="*", ls="none", markersize=13, markerfacecolor="none",
                                  markeredgecolor="tab:red", label="chosen on validation (meets it there)"))  # fmt: skip

    task = _task_of(table)
    ax.set_xlabel(f"{readable_name(x, task)} ({'higher' if mx else 'lower'} is better)")
    ax.set_ylabel(f"{readable_name(y, task)} ({'higher' if my else 'lower'} is better)")
    n_models = len(points)
    default_title = (
        f"{readable_name(y, task)} vs {readable_name(x, task)[0].lower()}{readable_name(x, task)[1:]}: "
        f"{int(front.sum())} of {n_models} models on the frontier"
    )
    ax.set_title(title or default_title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)

    if label is not None and n_models:
        numbers = [str(i + 1) for i in range(n_models)]
        _place_labels(ax, points, numbers)
        if key_ax is not None:
            _draw_key(key_ax, data, numbers, methods, constant, front, x, y, label)
    return fig


def _method_name(mode: str) -> str:
    return {"erm": "ERM (no fairness term)", "penalty": "penalty", "lagrangian": "Lagrangian constraint",
            "adversarial": "adversarial", "mutual_information": "mutual information"}.get(mode, mode)  # fmt: skip


def _ci(data: pd.DataFrame, column: str) -> np.ndarray | None:
    low, high = f"{column}_ci_low", f"{column}_ci_high"
    if low not in data.columns or high not in data.columns or not len(data):
        return None
    value = data[column].to_numpy(float)
    lo = np.clip(value - pd.to_numeric(data[low], errors="coerce").to_numpy(float), 0, None)
    hi = np.clip(pd.to_numeric(data[high], errors="coerce").to_numpy(float) - value, 0, None)
    return np.nan_to_num(np.vstack([lo, hi]), nan=0.0)


def _draw_key(ax: Axes, data: pd.DataFrame, numbers: Sequence[str], methods: Sequence[str], constant: np.ndarray,
              front: np.ndarray, x: str, y: str, label: str) -> None:  # fmt: skip
    """The key of the numbered points: number, method, setting, y, x, a mark for the frontier."""
    ax.axis("off")
    short = {"erm": "ERM", "penalty": "penalty", "lagrangian": "Lagrangian", "adversarial": "adversarial",
             "mutual_information": "mut. info"}  # fmt: skip
    rows = []
    for (_, row), number, method, c, f in zip(data.iterrows(), numbers, methods, constant, front):
        flag = "constant" if c else ("frontier" if f else "")
        job = row.get("job_dir", row.get("job", ""))
        job = "" if job is None or (isinstance(job, float) and math.isnan(job)) else str(job)
        rows.append([number, job, short.get(method, method), _setting(row, label) or "-", f"{row[y]:.3f}", f"{row[x]:.3f}", flag])
    task = _task_of(data)
    x_short = ("mean gap" if task == "regression" else "DP diff.") if "dp_difference" in x else readable_name(x, task)[:10]
    header = ["#", "job", "method", "setting", readable_name(y, task).split(" (")[0].replace("Test ", ""), x_short, ""]
    size = 7.5 if len(rows) <= 24 else 6
    table = ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="left", colLoc="left", edges="horizontal")
    table.auto_set_font_size(False)
    table.set_fontsize(size)
    table.auto_set_column_width(list(range(len(header))))
    for (r, _), cell in table.get_celld().items():
        cell.set_height(1.0 / (max(len(rows), 18) + 2))
        if r > 0 and rows[r - 1][-1] == "frontier":
            cell.set_text_props(fontweight="bold")
        if r > 0 and rows[r - 1][-1] == "constant":
            cell.set_text_props(color="0.45")
    ax.set_title("Key (bold: on the frontier)", fontsize=9)


# --------------------------------------------------------------------------------- in process
def pareto_sweep(
    etas: Iterable[float],
    *,
    datamodule: Any,
    mode: str = "penalty",
    fairness: str = "demographic_parity",
    max_epochs: int = 5,
    seed: int = 0,
    model: Callable[[int], Any] | None = None,
    module_kwargs: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Train one ``FairLightningModule`` per value of ``eta``, in this process; the table of results.

    For notebooks without Hydra: the same record per model as a Hydra job's ``metrics.json``
    (:func:`fair_lightning.train.fit_and_test`), as a table for :func:`plot_pareto_frontier`.
    Errors propagate.

    Args:
        etas: the values to sweep. ``mode="penalty"`` or ``"adversarial"``: the fairness strength
            ``eta``; ``mode="lagrangian"``: the constraint ``tolerance`` (column ``tolerance``,
            plot with ``label="tolerance"``).
        datamodule: a :class:`~fair_lightning.data.TabularDataModule` (set up here if needed).
        mode: ``"penalty"``, ``"lagrangian"`` or ``"adversarial"``.
        fairness: the fairness definition (the penalty's loss, the constraint, or the
            adversary's target).
        max_epochs: epochs per model.
        seed: seed of every model (the same initial weights for every value).
        model: ``in_features -> nn.Module`` returning logits; default
            ``MLP(in_features, hidden=(64, 64))``.
        module_kwargs: more ``FairLightningModule`` arguments (``lr``, ``temperature``, ...).
        trainer_kwargs: more ``Trainer`` arguments (``logger``, ``accelerator``, ...).

    Returns:
        One row per value, in order, with the columns of :func:`load_sweep` and ``is_pareto`` (for
        ``test_dp_difference`` vs ``test_accuracy``).

    Example:
        >>> dm = TabularDataModule("adult", sensitive="sex", batch_size=512)  # doctest: +SKIP
        >>> table = pareto_sweep([0, 1, 4, 16], datamodule=dm, max_epochs=5)  # doctest: +SKIP
        >>> plot_pareto_frontier(table, threshold=0.05).savefig("frontier.png")  # doctest: +SKIP
    """
    import time

    import lightning.pytorch as pl

    from fair_lightning.models import MLP
    from fair_lightning.module import FairLightningModule
    from fair_lightning.train import describe_method, fit_and_test

    if mode not in ("penalty", "lagrangian", "adversarial"):
        raise ValueError(f"`mode` must be one of ['penalty', 'lagrangian', 'adversarial'], got {mode!r}")
    values = [float(v) for v in etas]
    if not values:
        raise ValueError("`etas` must hold at least one value, got none")
    datamodule.setup("fit")
    build_model = model if model is not None else (lambda n: MLP(n, hidden=(64, 64)))
    rows = []
    for value in values:
        pl.seed_everything(seed, workers=True, verbose=False)
        method: dict[str, Any] = {"mode": mode}
        if mode == "lagrangian":
            method.update(constraints=fairness, tolerance=value)
        else:
            method.update(fairness=fairness, eta=value)
        module = FairLightningModule(
            build_model(datamodule.num_features),
            num_groups=datamodule.num_groups,
            group_names=list(datamodule.group_names),
            **{**dict(module_kwargs or {}), **method},
        )
        options = dict(
            max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
        )  # fmt: skip
        options.update(trainer_kwargs or {})
        start = time.perf_counter()
        result = fit_and_test(pl.Trainer(**options), module, datamodule)
        record = {
            "job": len(rows),
            "status": "ok",
            "dataset": datamodule.hparams.get("dataset"),
            "groups": list(datamodule.group_names),
            **describe_method(method),
            "seed": seed,
            **result,
            "total_seconds": time.perf_counter() - start,
        }
        rows.append(flatten_record(record))
    table = pd.DataFrame(rows)
    return frontier_table(table) if {"test_dp_difference", "test_accuracy"} <= set(table.columns) else table


# --------------------------------------------------------------------------------- command line
def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be two numbers 'x,y', got {text!r}") from None
    return a, b


def _baseline(text: str) -> tuple[str, tuple[float, float]]:
    name, sep, pair = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a baseline must be NAME=X,Y, got {text!r}")
    return name, _pair(pair, "a baseline's point")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pareto.py",
        description=(
            "Turn a fair-lightning sweep directory (one metrics.json per job) into frontier.csv, frontier.png, "
            "the hypervolume and a TensorBoard entry (SWEEP_DIR/tensorboard). Unfinished and failed jobs are "
            "reported and skipped."
        ),
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path, help="the Hydra sweep directory (hydra.sweep.dir)")
    add = parser.add_argument
    add("--x", default="test_dp_difference", help="fairness column on the x axis (default: %(default)s)")
    add("--y", default=None, help="performance column on the y axis (default: test_accuracy; test_mse for a regression sweep)")
    add("--label", default="eta", help="column labelling the points (default: %(default)s; 'tolerance' for Lagrangian sweeps)")
    add("--threshold", type=float, default=None, help="requirement on x, e.g. 0.05 for a DP difference, 0.8 for a DP ratio")
    add("--baseline", type=_baseline, action="append", default=[], metavar="NAME=X,Y", help="a reference model (repeatable)")
    add(
        "--reference", type=lambda s: _pair(s, "--reference"), default=None, metavar="X,Y",
        help="hypervolume reference point; default the worst value of a [0, 1] metric: 1 if minimized, 0 if maximized",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where to write frontier.csv/png (default: SWEEP_DIR)")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not log the figure to SWEEP_DIR/tensorboard")
    return parser


def _log_to_tensorboard(logdir: Path, fig: Figure, hv: float, table: pd.DataFrame, columns: list[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    try:
        writer.add_figure("pareto/frontier", fig, close=False)
        writer.add_scalar("pareto/hypervolume", hv)
        writer.add_text("pareto/frontier_table", _markdown(table[columns]))
    finally:
        writer.close()


def _markdown(table: pd.DataFrame) -> str:
    """A markdown table (TensorBoard's text plugin renders it), without the optional ``tabulate``."""
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/pareto.py SWEEP_DIR [--threshold 0.05] [--x ...] [--baseline NAME=X,Y ...]``.

    Writes ``frontier.csv`` (every job, with ``status`` and ``is_pareto``; metric columns no job
    logged are left out) and ``frontier.png``
    into the sweep directory (or ``--out``), prints the frontier and its hypervolume (reference:
    ``--reference``, default :func:`default_reference`), and logs the figure, the hypervolume and
    the table to TensorBoard in ``SWEEP_DIR/tensorboard``.

    Jobs left out (failed, killed, running, unreadable, invalid: see :func:`load_sweep`) are
    listed with their reason after the frontier.

    Returns:
        0, or 1 if the directory holds no finished job with valid values of ``--x`` and ``--y``.
    """
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        table = load_sweep(args.sweep_dir, include_failed=True)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.y is None:
        finished = table.loc[table["status"] == "ok"] if "status" in table.columns else table
        args.y = "test_mse" if _task_of(finished) == "regression" else "test_accuracy"
    maximize = _maximize(args.x, args.y, None)
    if table.empty or not (table["status"] == "ok").any():
        # finished jobs whose records were rejected are not "unfinished": say which happened
        rejected = int((table["status"] != "unfinished").sum()) if "status" in table.columns and not table.empty else 0
        what = "no usable job" if rejected else "no finished job"
        print(f"error: {what} in {args.sweep_dir} (see the messages above)", file=sys.stderr)
        return 1
    for column in (args.x, args.y):
        if column not in table.columns:
            print(f"error: column {column!r} is not in any record; numeric columns: {_numeric_columns(table)}", file=sys.stderr)
            return 1
    unusable = (table["status"] == "ok") & ~np.isfinite(table[[args.x, args.y]].to_numpy(float)).all(axis=1)
    for index in np.flatnonzero(unusable.to_numpy()):
        reason = f"rejected, no finite value of {args.x} and {args.y}"
        log.warning("skipping job %s: %s", table.at[table.index[index], "job_dir"], reason)
        table.loc[table.index[index], ["status", "error"]] = ["invalid", reason]
    not_ok = table[table["status"] != "ok"]
    if not (table["status"] == "ok").any():
        print(
            f"error: no usable job in {args.sweep_dir}: {len(table)} jobs, none finished with valid "
            f"{args.x} and {args.y} (" + "; ".join(f"{r.job_dir}: {r.status}" for r in not_ok.itertuples()) + ")",
            file=sys.stderr,
        )
        return 1
    table = frontier_table(table, args.x, args.y, maximize)
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / FRONTIER_CSV, out / FRONTIER_PNG
    # metrics no job logged (a classification sweep has no val_mse, a regression one no val_auroc)
    unlogged = [c for c in table.columns if c.startswith(("val_", "test_")) and table[c].isna().all()]
    table.drop(columns=unlogged).to_csv(csv_path, index=False)
    baselines = dict(args.baseline)
    fig = plot_pareto_frontier(
        table, args.x, args.y, args.label, threshold=args.threshold, baselines=baselines, maximize=maximize
    )
    fig.savefig(png_path, dpi=120)

    ok = table[table["status"] == "ok"]
    reference = args.reference or default_reference(maximize)
    if args.reference is None:  # a metric without an upper end (MSE, a gap of mean predictions): 10% past the worst job
        reference = tuple(
            r if _range_of(c, _task_of(ok)) == (0.0, 1.0) else 1.1 * float(np.nanmax(ok[c].to_numpy(float)))
            for r, c in zip(reference, (args.x, args.y))
        )
    usable = ok[~ok["constant_predictor"]]  # a constant model's DP of 0 is not a trade-off anyone can use
    hv = hypervolume(usable[[args.x, args.y]].to_numpy(float), reference, maximize)
    if "crossfit_folds" in table.columns:  # which jobs are fold mixtures (0: an ordinary job)
        table["crossfit_folds"] = pd.to_numeric(table["crossfit_folds"], errors="coerce").fillna(0).astype(int)
        ok = table[table["status"] == "ok"]
    varied = [c for c in ("lr", "seed", "crossfit_folds")
              if c in table.columns and table.loc[table["status"] == "ok", c].nunique() > 1]
    candidates = ("job_dir", "mode", "eta", "tolerance", *varied, args.label, args.y, args.x, "test_dp_ratio", "test_eo_difference",
                  "constant_predictor", "is_pareto")  # fmt: skip
    shown = [c for c in dict.fromkeys(candidates) if c in table.columns and not (c.startswith("test_") and ok[c].isna().all())]
    n_front = int(table["is_pareto"].sum())
    print(f"{len(ok)} finished jobs of {len(table)} in {args.sweep_dir}; {n_front} on the frontier:")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(ok.sort_values(args.x)[shown].rename(columns={"job_dir": "job"}).to_string(index=False))
    if len(not_ok):
        print(f"{len(not_ok)} jobs not in the report:")
        for r in not_ok.itertuples():
            print(f"  job {r.job_dir}: {r.status}: {r.error}")
    arrows = "".join("↑" if m else "↓" for m in maximize)
    print(
        f"hypervolume of ({args.x} {arrows[0]}, {args.y} {arrows[1]}) w.r.t. reference "
        f"({reference[0]:g}, {reference[1]:g}): {hv:.4f}"
    )
    if ok["constant_predictor"].any():
        names = ", ".join(ok.loc[ok["constant_predictor"], "job_dir"].astype(str))
        print(f"constant (collapsed) predictors, left off the frontier and the hypervolume: job {names}")
    if args.threshold is not None:
        chosen, why = choose_on_validation(ok, args.x, args.y, args.threshold, maximize)
        if chosen is not None:
            best = ok.loc[chosen]
            text = _label(best, args.label)
            setting = text if "=" in text or text == best.get("mode") else f"{args.label}={text}"
            print(
                f"model to ship under {args.x} {'>=' if maximize[0] else '<='} {args.threshold:g}: job {best['job_dir']} "
                f"({setting}), {why}; on test: {args.y} {best[args.y]:.4f}, {args.x} {best[args.x]:.4f}"
            )
        else:
            print(f"no model to ship under {args.x} {'>=' if maximize[0] else '<='} {args.threshold:g}: {why}")
    if not args.no_tensorboard:
        _log_to_tensorboard(args.sweep_dir / TENSORBOARD_DIR, fig, hv, table.loc[table["is_pareto"]], shown)
        print(f"TensorBoard: tensorboard --logdir {args.sweep_dir} (pareto/frontier, pareto/hypervolume)")
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    return 0


__all__ = [
    "FRONTIER_CSV",
    "FRONTIER_PNG",
    "choose_on_validation",
    "default_reference",
    "validate_record",
    "flatten_record",
    "frontier_table",
    "higher_is_better",
    "hypervolume",
    "load_sweep",
    "main",
    "pareto_front",
    "pareto_sweep",
    "plot_pareto_frontier",
]


if __name__ == "__main__":
    sys.exit(main())
