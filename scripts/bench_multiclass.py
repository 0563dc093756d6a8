#!/usr/bin/env python3
"""Throughput of multiclass group-metric updates: fair-lightning vs torchmetrics, group by group.

    python scripts/bench_multiclass.py [--rows 1000000] [--classes 10] [--groups 20] [--repeats 5]
                                       [--threads 1] [--chunk-size 65536] [--device cpu]

Data: ``--rows`` synthetic rows (seeded), ``--groups`` groups of about equal size, ``--classes``
classes, float32 logits ``(N, K)`` whose argmax is the prediction. Contenders, each timed from the
first ``update`` to the end of ``compute``:

* ours: ``MulticlassGroupRates(G, K)`` -- one ``update`` on all rows (one ``bincount`` over
  (group, true class, predicted class) cells), then ``compute`` (every per-(class, group) rate);
* ours, streaming: the same, ``update`` on consecutive ``--chunk-size`` slices;
* torchmetrics: one ``MulticlassStatScores(num_classes=K, average=None)`` per group, each updated
  on its group's rows (``preds[groups == g]``, the boolean selection inside the timed span), then
  ``compute`` of each (per-class TP, FP, TN, FN and support per group: the counts our rates are
  made of) -- the way to get per-class, per-group statistics from torchmetrics;
* torchmetrics, streaming: the same on each chunk, group by group.

The metrics are built once and ``reset()`` before each timed run (outside the timer); both run with
their defaults (``validate_args=True``). Before timing, one untimed run of every contender checks that
they agree (per-class, per-group TP/FP/TN/FN exactly) and doubles as the warm-up. Repeats are
interleaved (order rotated per repeat); the script reports medians, and each ratio is the median over
repeats of torchmetrics' time over ours in the same repeat. ``--threads`` (default 1) sets
``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchmetrics
from torchmetrics.classification import MulticlassStatScores

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fair_lightning.metrics_multiclass import MulticlassGroupRates  # noqa: E402


def make_data(rows: int, classes: int, groups: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, groups, (rows,), generator=gen)
    y = torch.randint(0, classes, (rows,), generator=gen)
    logits = torch.randn(rows, classes, generator=gen)
    logits[torch.arange(rows), y] += 1.0 + 0.05 * g.float()
    return logits.to(device), y.to(device), g.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(metric: MulticlassGroupRates, logits, y, g, chunk: int | None):
    if chunk is None:
        metric.update(logits, y, g)
    else:
        for s in range(0, len(y), chunk):
            metric.update(logits[s : s + chunk], y[s : s + chunk], g[s : s + chunk])
    return metric.compute()


def run_torchmetrics(metrics: list[MulticlassStatScores], logits, y, g, chunk: int | None):
    spans = [(0, len(y))] if chunk is None else [(s, s + chunk) for s in range(0, len(y), chunk)]
    for s, e in spans:
        lg, yy, gg = logits[s:e], y[s:e], g[s:e]
        for gi, m in enumerate(metrics):
            mask = gg == gi
            m.update(lg[mask], yy[mask])
    return [m.compute() for m in metrics]


def check_agreement(ours_metric: MulticlassGroupRates, tm_out: list[torch.Tensor]) -> None:
    """Per-class, per-group TP, FP, TN, FN of both contenders must be equal."""
    s = ours_metric.group_sums  # fields (K, G)
    tp = s.pred_label
    fp = s.pred - s.pred_label
    fn = s.label - s.pred_label
    tn = s.count - s.label - s.pred + s.pred_label
    theirs = torch.stack([o.double() for o in tm_out], 1)  # (K, G, 5): tp, fp, tn, fn, support
    for i, ours in enumerate((tp, fp, tn, fn)):
        if not torch.equal(ours.cpu(), theirs[..., i].cpu()):
            raise SystemExit(f"disagreement in field {('tp', 'fp', 'tn', 'fn')[i]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logits, y, g = make_data(args.rows, args.classes, args.groups, args.device)
    K, G = args.classes, args.groups

    ours = MulticlassGroupRates(G, K).to(args.device)
    theirs = [MulticlassStatScores(num_classes=K, average=None).to(args.device) for _ in range(G)]

    def reset() -> None:
        ours.reset()
        for m in theirs:
            m.reset()

    contenders: dict[str, Callable[[], object]] = {
        "ours": lambda: run_ours(ours, logits, y, g, None),
        "ours, streaming": lambda: run_ours(ours, logits, y, g, args.chunk_size),
        "torchmetrics per group": lambda: run_torchmetrics(theirs, logits, y, g, None),
        "torchmetrics per group, streaming": lambda: run_torchmetrics(theirs, logits, y, g, args.chunk_size),
    }
    # warm-up and agreement
    for chunk in (None, args.chunk_size):
        reset()
        run_ours(ours, logits, y, g, chunk)
        check_agreement(ours, run_torchmetrics(theirs, logits, y, g, chunk))

    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            reset()
            _sync(args.device)
            t0 = time.perf_counter()
            contenders[name]()
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)

    print(
        f"rows={args.rows} classes={K} groups={G} repeats={args.repeats} threads={args.threads} "
        f"chunk={args.chunk_size} device={args.device} torch={torch.__version__} torchmetrics={torchmetrics.__version__}"
    )
    print("agreement: per-class, per-group TP/FP/TN/FN identical (whole and streaming)")
    for name in names:
        med = statistics.median(times[name])
        print(f"{name:36s} median {med * 1e3:9.1f} ms   {args.rows / med / 1e6:8.2f} M rows/s")
    for ours_name, tm_name in (("ours", "torchmetrics per group"), ("ours, streaming", "torchmetrics per group, streaming")):
        ratio = statistics.median(t / o for t, o in zip(times[tm_name], times[ours_name]))
        print(f"ratio {tm_name} / {ours_name}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
