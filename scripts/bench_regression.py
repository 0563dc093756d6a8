#!/usr/bin/env python3
"""Regression fairness on a synthetic set with a known group shift (issue: multiclass and regression).

Data: ``group_shift_regression`` (``y = x1 + 0.5 x2 + shift [group B] + noise``; the group is not a
feature, a proxy ``z`` is), 4,000 rows, a 60/20/20 split per seed. Model: an MLP with one hidden
layer of 32, Adam at lr 1e-2, batch 256. For each seed it trains

* ``erm``: the unconstrained model (MSE);
* ``bounded_group_loss``: ``mode="bounded_group_loss"`` with ``bound`` between the groups'
  unconstrained validation losses (fairlearn ``BoundedGroupLoss`` semantics), at 8 and 30 epochs,
  the last epoch and the epoch ``ConstrainedModelSelection([("bounded_group_loss", bound)])``
  restores (the best validation MSE among the epochs whose every group meets the bound there);
* ``penalty``: ``fairness="regression_demographic_parity"`` (squared gaps of group mean
  predictions) at ``eta`` in 0, 0.3, 1, 3, 10.

and prints each group's validation MSE, the group mean-prediction gap, and whether the gap falls
monotonically in ``eta``; medians over seeds.

    python scripts/bench_regression.py [--seeds 3] [--bound 1.2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ETAS = (0.0, 0.3, 1.0, 3.0, 10.0)


def fit(dm, seed, mode="erm", epochs=8, select=False, **kwargs):
    import lightning.pytorch as pl

    from fair_lightning.callbacks import ConstrainedModelSelection
    from fair_lightning.models import MLP
    from fair_lightning.module import FairLightningModule

    pl.seed_everything(seed, verbose=False)
    module = FairLightningModule(
        MLP(dm.num_features, hidden=(32,)), num_groups=dm.num_groups, group_names=dm.group_names, task="regression",
        mode=mode, lr=1e-2, grad_ratio_every_n_steps=0, **kwargs,
    )
    callbacks = [ConstrainedModelSelection([("bounded_group_loss", kwargs["bound"])])] if select else []
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    if select:  # the restored snapshot's validation metrics
        trainer.validate(module, datamodule=dm, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return [m[f"val/mean_squared_error/{g}"] for g in dm.group_names], m["val/dp_difference"]


def main(argv=None):
    import torch

    from fair_lightning.data import TabularDataModule

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bound", type=float, default=1.2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = {"erm": [], "bgl-8": [], "bgl-30": [], "bgl-8+selection": [], "bgl-30+selection": []}
    gaps = {eta: [] for eta in ETAS}
    monotone = 0
    for seed in range(args.seeds):
        dm = TabularDataModule("group_shift_regression", batch_size=256, official_split=False, seed=seed,
                               dataset_kwargs={"n": 4000, "seed": seed})
        dm.setup("fit")
        rows["erm"].append(fit(dm, seed)[0])
        rows["bgl-8"].append(fit(dm, seed, "bounded_group_loss", bound=args.bound)[0])
        rows["bgl-30"].append(fit(dm, seed, "bounded_group_loss", epochs=30, bound=args.bound)[0])
        rows["bgl-8+selection"].append(fit(dm, seed, "bounded_group_loss", select=True, bound=args.bound)[0])
        rows["bgl-30+selection"].append(fit(dm, seed, "bounded_group_loss", epochs=30, select=True, bound=args.bound)[0])
        seed_gaps = [fit(dm, seed, "penalty", fairness="regression_demographic_parity", eta=eta, penalty="squared")[1]
                     for eta in ETAS]
        monotone += all(a > b for a, b in zip(seed_gaps, seed_gaps[1:]))
        for eta, gap in zip(ETAS, seed_gaps):
            gaps[eta].append(gap)
        print(f"seed {seed}: " + "; ".join(f"{k} MSE A/B {v[-1][0]:.3f}/{v[-1][1]:.3f}" for k, v in rows.items())
              + "; gaps " + " ".join(f"{g:.3f}" for g in seed_gaps), flush=True)
    print(f"\nbounded group loss, bound {args.bound} (validation MSE per group, medians over {args.seeds} seeds):\n")
    print("| model | MSE group A | MSE group B | every group <= bound (seeds) |")
    print("| --- | --- | --- | --- |")
    for name, values in rows.items():
        a, b = (statistics.median(v[i] for v in values) for i in (0, 1))
        ok = sum(max(v) <= args.bound for v in values)
        print(f"| {name} | {a:.3f} | {b:.3f} | {ok}/{len(values)} |")
    print("\nregression DP penalty (squared gaps): group mean-prediction gap on validation by eta (median):\n")
    print("| eta | " + " | ".join(f"{e:g}" for e in ETAS) + " |")
    print("| --- | " + " | ".join("---" for _ in ETAS) + " |")
    print("| gap | " + " | ".join(f"{statistics.median(gaps[e]):.3f}" for e in ETAS) + " |")
    print(f"\nstrictly decreasing in eta: {monotone}/{args.seeds} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
