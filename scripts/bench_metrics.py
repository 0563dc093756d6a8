#!/usr/bin/env python3
"""Throughput of group-metric updates: fair-lightning vs torchmetrics vs fairlearn.

    python scripts/bench_metrics.py [--rows 1000000] [--groups 20] [--repeats 5] [--threads 1]
                                    [--chunk-size 65536] [--fairlearn-repeats 3] [--device cpu]
    python scripts/bench_metrics.py multiclass [--classes 10] ...   # K classes vs torchmetrics
                                                                     # (scripts/bench_multiclass.py)

Data: ``--rows`` synthetic rows (seeded), ``--groups`` groups of about equal size, binary labels
(base rate varying by group) and float32 probabilities as ``preds``, thresholded at 0.5 by every
contender. Contenders, each timed from the first ``update`` to the end of ``compute`` (``.by_group``
for fairlearn):

* ours: ``GroupRates(G)`` -- one ``update`` on all rows, then ``compute``;
* ours, streaming: ``GroupRates(G)`` -- ``update`` on consecutive ``--chunk-size`` slices (views,
  accumulating), then ``compute``;
* ours: ``fairness_metrics(G)`` -- the whole ``MetricCollection`` (group rates, DP difference and
  ratio, EO and EOpp differences, group calibration error), one ``update`` then ``compute``;
* torchmetrics: ``BinaryGroupStatRates(num_groups=G)``, whole and in the same chunks;
* fairlearn: ``MetricFrame`` with selection_rate, true_positive_rate, false_positive_rate, count and
  sklearn's accuracy_score on numpy arrays of the same data (``y_pred = preds > 0.5``, done inside
  the timed span), ``.by_group`` -- always on the CPU.

The torch metrics are built once and ``reset()`` before each timed run (outside the timer), as a
training loop does between epochs; both libraries run with their defaults (``validate_args=True``).
Before timing, one untimed run of every contender checks that they agree (per-group selection rate,
TPR, FPR and accuracy to 1e-6, counts exactly) and doubles as the warm-up; it also lets the
``MetricCollection`` find its compute groups, so its five hard-prediction members share one update.

Repeats are interleaved (each repeat runs every contender once, in an order rotated per repeat) and
the script reports medians; each ratio is the median over repeats of a run's time divided by the
time of the matching "ours" run of the same repeat -- robust to load on a shared machine drifting
between repeats. fairlearn takes seconds per call at 1M rows, so it runs only in the first
``--fairlearn-repeats`` repeats (default 3; its ratios pair those repeats only).

``--threads`` (default 1) sets ``torch.set_num_threads`` and, through threadpoolctl, the BLAS/OpenMP
pools numpy and pandas may use: one thread gives every contender the same compute and stable
timings on a shared machine. ``--device cuda`` runs ours and torchmetrics on the GPU (synchronized
before the timer stops); fairlearn stays on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch
import torchmetrics
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fairlearn  # noqa: E402
from fairlearn.metrics import (  # noqa: E402
    MetricFrame,
    count,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score  # noqa: E402
from torchmetrics.classification import BinaryGroupStatRates  # noqa: E402

from fair_lightning.metrics import GroupRates, fairness_metrics  # noqa: E402

THRESHOLD = 0.5
ATOL = 1e-6
FAIRLEARN_METRICS = {
    "selection_rate": selection_rate,
    "true_positive_rate": true_positive_rate,
    "false_positive_rate": false_positive_rate,
    "count": count,
    "accuracy": accuracy_score,
}
CHECKED_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")

OURS = "ours: GroupRates, whole"
OURS_CHUNKED = "ours: GroupRates, chunked"
OURS_COLLECTION = "ours: fairness_metrics (collection), whole"
TM = "torchmetrics: BinaryGroupStatRates, whole"
TM_CHUNKED = "torchmetrics: BinaryGroupStatRates, chunked"
FAIRLEARN = "fairlearn: MetricFrame(...).by_group"
# each contender's ratio is against the "ours" run doing the same work (whole vs chunked)
REFERENCE = {
    OURS: OURS,
    OURS_CHUNKED: OURS,
    OURS_COLLECTION: OURS,
    TM: OURS,
    TM_CHUNKED: OURS_CHUNKED,
    FAIRLEARN: OURS,
}
SHORT = {
    OURS: "ours",
    OURS_CHUNKED: "ours-chunked",
    OURS_COLLECTION: "fairness_metrics",
    TM: "torchmetrics",
    TM_CHUNKED: "torchmetrics-chunked",
    FAIRLEARN: "fairlearn",
}


# ----------------------------------------------------------------------------------- data
def make_data(rows: int, groups: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``preds`` (float32 probabilities), ``target`` (long 0/1), ``groups`` (long), on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, groups, (rows,), generator=gen)
    base_rate = torch.linspace(0.2, 0.6, groups)[g]
    y = (torch.rand(rows, generator=gen) < base_rate).long()
    bias = torch.linspace(-0.5, 0.5, groups)[g]  # group-dependent selection rates
    logits = 1.5 * (2 * y - 1) + bias + torch.randn(rows, generator=gen)
    return torch.sigmoid(logits).float(), y, g


def chunks(tensors: tuple[torch.Tensor, ...], size: int):
    n = tensors[0].shape[0]
    for start in range(0, n, size):
        yield tuple(t[start : start + size] for t in tensors)


# ------------------------------------------------------------------------------ contenders
def torch_runner(metric, data, chunk_size: int | None, device: torch.device) -> Callable[[], tuple[float, object]]:
    """A function that resets ``metric`` (untimed), then times update(s) + compute."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run() -> tuple[float, object]:
        metric.reset()
        sync()
        start = time.perf_counter()
        if chunk_size is None:
            metric.update(*data)
        else:
            for batch in chunks(data, chunk_size):
                metric.update(*batch)
        result = metric.compute()
        sync()
        return time.perf_counter() - start, result

    return run


def fairlearn_runner(preds: np.ndarray, target: np.ndarray, groups: np.ndarray) -> Callable[[], tuple[float, object]]:
    def run() -> tuple[float, object]:
        start = time.perf_counter()
        frame = MetricFrame(
            metrics=FAIRLEARN_METRICS, y_true=target, y_pred=preds > THRESHOLD, sensitive_features=groups
        )
        by_group = frame.by_group
        return time.perf_counter() - start, by_group

    return run


# ------------------------------------------------------------------------------- agreement
def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``|a - b|``; NaN in both places counts as equal, NaN in one as infinite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.abs(np.where(both_nan, 0.0, a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def ours_table(metric: GroupRates) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in metric.compute_table().items()}


def torchmetrics_table(metric: BinaryGroupStatRates, result: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per-group rates derived from ``compute()``'s ``[tp, fp, tn, fn] / n`` fractions."""
    fractions = torch.stack([result[f"group_{g}"] for g in range(metric.num_groups)]).double().cpu().numpy()
    tp, fp, tn, fn = fractions.T
    counts = (metric.tp + metric.fp + metric.tn + metric.fn).cpu().numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": counts,
            "selection_rate": tp + fp,
            "true_positive_rate": tp / (tp + fn),
            "false_positive_rate": fp / (fp + tn),
            "accuracy": tp + tn,
        }


def fairlearn_table(by_group: pd.DataFrame, num_groups: int) -> dict[str, np.ndarray]:
    frame = by_group.reindex(range(num_groups))  # groups absent from the data become NaN rows
    return {name: frame[name].to_numpy(dtype=np.float64) for name in ("count", *CHECKED_RATES)}


def compare(name: str, ref: dict[str, np.ndarray], other: dict[str, np.ndarray], problems: list[str]) -> None:
    for rate in CHECKED_RATES:
        diff = max_abs_diff(ref[rate], other[rate])
        if not diff <= ATOL:
            problems.append(f"{name}: {rate} differs from ours by up to {diff:.3g}")
    if max_abs_diff(ref["count"], other["count"]) != 0:
        problems.append(f"{name}: per-group counts differ from ours")


def check_agreement(results: dict[str, object], metrics: dict[str, object], num_groups: int, tm_chunked_ok: bool):
    problems: list[str] = []
    ours = ours_table(metrics[OURS])
    compare("ours chunked", ours, ours_table(metrics[OURS_CHUNKED]), problems)
    compare("fairness_metrics", ours, ours_table(metrics[OURS_COLLECTION]["group"]), problems)
    compare("fairlearn", ours, fairlearn_table(results[FAIRLEARN], num_groups), problems)
    compare("torchmetrics", ours, torchmetrics_table(metrics[TM], results[TM]), problems)
    if tm_chunked_ok:
        compare("torchmetrics chunked", ours, torchmetrics_table(metrics[TM_CHUNKED], results[TM_CHUNKED]), problems)
    # the collection's disparities against the same ones taken from fairlearn's by_group
    by_group = results[FAIRLEARN]
    spread = lambda column: float(by_group[column].max() - by_group[column].min())  # noqa: E731
    collection = results[OURS_COLLECTION]
    expected = {
        "dp_difference": spread("selection_rate"),
        "eopp_difference": spread("true_positive_rate"),
        "eo_difference": max(spread("true_positive_rate"), spread("false_positive_rate")),
    }
    for key, value in expected.items():
        diff = abs(float(collection[key]) - value)
        if not diff <= ATOL:
            problems.append(f"fairness_metrics: {key} differs from fairlearn's by_group by {diff:.3g}")
    return problems


# ------------------------------------------------------------------------------------ main
def rows_per_second(rate: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{unit}"
    return f"{rate:.3g}"


def describe_ratio(name: str, ratio: float) -> str:
    label = f"{SHORT[name]}/{SHORT[REFERENCE[name]]}"
    if name == REFERENCE[name]:
        return "(reference)"
    value = f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"
    if ratio >= 1:
        return f"{label} = {value} slower"
    return f"{label} = {value} ({1 / ratio:.2f}x faster)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["multiclass"]:  # the K-class benchmark (scripts/bench_multiclass.py), same options as there
        from bench_multiclass import main as multiclass_main

        multiclass_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=65_536, help="rows per update in the streaming runs")
    parser.add_argument(
        "--fairlearn-repeats", type=int, default=3, help="timed fairlearn runs (seconds each at 1M rows), <= --repeats"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads and threadpoolctl limit, the same for all"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for ours and torchmetrics")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available to this torch build")
    if min(args.rows, args.groups, args.repeats, args.chunk_size, args.fairlearn_repeats) < 1 or args.groups < 2:
        parser.error("--rows, --repeats, --chunk-size, --fairlearn-repeats must be >= 1 and --groups >= 2")
    fairlearn_repeats = min(args.fairlearn_repeats, args.repeats)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)

    preds, target, groups = make_data(args.rows, args.groups)
    per_group = torch.bincount(groups, minlength=args.groups)
    if (per_group == 0).any():
        parser.error(f"some of the {args.groups} groups have no rows; use more --rows")
    # torchmetrics' BinaryGroupStatRates renumbers groups within a batch: it splits the sorted batch
    # by the counts of the groups *present* (torch.unique), so when a batch lacks group k, the stats
    # of groups k+1, k+2, ... land in slots k, k+1, ... Not a problem here: every chunk of this data
    # holds every group (checked below); if one does not, its chunked results are not compared.
    chunk_group_counts = [int(torch.unique(g).numel()) for (g,) in chunks((groups,), args.chunk_size)]
    tm_chunked_ok = min(chunk_group_counts) == args.groups
    n_chunks = len(chunk_group_counts)

    np_data = (preds.numpy(), target.numpy(), groups.numpy())
    data = tuple(t.to(device) for t in (preds, target, groups))
    metrics = {
        OURS: GroupRates(args.groups).to(device),
        OURS_CHUNKED: GroupRates(args.groups).to(device),
        OURS_COLLECTION: fairness_metrics(args.groups).to(device),
        TM: BinaryGroupStatRates(num_groups=args.groups).to(device),
        TM_CHUNKED: BinaryGroupStatRates(num_groups=args.groups).to(device),
    }
    chunking = {OURS_CHUNKED: args.chunk_size, TM_CHUNKED: args.chunk_size}
    runners = {name: torch_runner(m, data, chunking.get(name), device) for name, m in metrics.items()}
    runners[FAIRLEARN] = fairlearn_runner(*np_data)
    order = [OURS, OURS_CHUNKED, OURS_COLLECTION, TM, TM_CHUNKED, FAIRLEARN]

    with threadpool_limits(limits=args.threads):
        # untimed run of each: the agreement check and the warm-up
        results = {name: runners[name]()[1] for name in order}
        problems = check_agreement(results, metrics, args.groups, tm_chunked_ok)
        times: dict[str, list[float]] = {name: [] for name in order}
        paired: dict[str, list[float]] = {name: [] for name in order}  # time / matching ours run
        if not problems:
            for repeat in range(args.repeats):
                rotated = order[repeat % len(order) :] + order[: repeat % len(order)]
                this: dict[str, float] = {}
                for name in rotated:
                    if name == FAIRLEARN and repeat >= fairlearn_repeats:
                        continue
                    this[name] = runners[name]()[0]
                for name, seconds in this.items():
                    times[name].append(seconds)
                    paired[name].append(seconds / this[REFERENCE[name]])

    print(
        f"{args.rows:,} rows, {args.groups} groups (sizes {int(per_group.min()):,}-{int(per_group.max()):,}), "
        f"binary labels, float32 probabilities as preds (threshold {THRESHOLD}); chunked runs: {n_chunks} updates "
        f"of <= {args.chunk_size:,} rows"
        + ("" if tm_chunked_ok else " (some chunks lack a group: torchmetrics chunked renumbers, not compared)")
        + "."
    )
    print(
        f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, fairlearn {fairlearn.__version__}, "
        f"pandas {pd.__version__}, numpy {np.__version__}, scikit-learn {sklearn.__version__}; "
        f"{args.threads} thread(s) (torch.set_num_threads + threadpoolctl); device {device} for ours and "
        "torchmetrics, cpu for fairlearn."
    )
    print(
        f"Timed: first update -> end of compute (fairlearn: threshold + MetricFrame + .by_group); metrics reset "
        f"outside the timer; median of {args.repeats} interleaved repeats after 1 untimed run "
        f"(fairlearn: only the first {fairlearn_repeats}, it is slow)."
    )
    agree = not problems
    print(
        f"agree: {agree}  (ours vs fairlearn MetricFrame and torchmetrics TP/FP/TN/FN-derived rates: per-group "
        f"selection rate, TPR, FPR, accuracy to {ATOL:g}, counts exact; chunked == whole; fairness_metrics "
        "DP/EO/EOpp differences vs fairlearn's by_group)"
    )
    if problems:
        for problem in problems:
            print(f"  DISAGREE {problem}")
        print("not timed: the contenders disagree")
        return 1

    width = max(map(len, order)) + len(" (000 repeats)")
    print(f"  {'contender':<{width}}  {'median s':>9}  {'rows/s':>8}   ratio (median of per-repeat ratios)")
    for name in order:
        label = name if len(times[name]) == args.repeats else f"{name} ({len(times[name])} repeats)"
        median = statistics.median(times[name])
        rate = args.rows / median
        ratio = statistics.median(paired[name])
        print(f"  {label:<{width}}  {median:9.4f}  {rows_per_second(rate):>8}   {describe_ratio(name, ratio)}")
    runs = "; ".join(f"{SHORT[n]} [{', '.join(f'{t:.3g}' for t in times[n])}]" for n in order)
    print(f"runs (s): {runs}")
    print(
        "(ratio: median over repeats of each run's time / the matching ours run of the same repeat -- "
        "whole runs against ours whole, torchmetrics-chunked against ours-chunked)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
