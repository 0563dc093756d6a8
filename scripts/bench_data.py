#!/usr/bin/env python3
"""Cost of the data path: one training epoch of a small MLP on Adult, raw PyTorch vs Lightning.

    python scripts/bench_data.py [--repeats 5] [--batch-size 256] [--threads 1]

Variants, each timed over one training epoch of a 2x128 MLP (Adam, BCE-with-logits), median of
``--repeats`` runs (interleaved, after one untimed warm-up run of each):

* raw: a plain PyTorch loop over pre-made tensors (random permutation, one ``index_select`` per
  tensor per batch, the fastest gather) -- the floor any data path is measured against;
* ours: ``Trainer.fit`` with ``TabularDataModule`` (whole batches indexed from memory);
* ours, stratified: the same with ``stratified_batches=True``;
* TensorDataset: ``Trainer.fit`` with ``DataLoader(TensorDataset(x, y, groups), batch_size, shuffle=True)``;
* pre-made batches: ``Trainer.fit`` on a list of ready batches, the floor of Lightning's own
  per-step cost (what no data path can go below).

What is timed: from ``on_train_epoch_start`` to ``on_train_epoch_end`` (a callback), so Trainer
construction and the start-up of ``fit`` are excluded; the raw loop is timed over the same span
(its permutation included). All variants train on the same training-split tensors with the
same number of optimizer steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402

from fair_lightning.data import TabularDataModule  # noqa: E402


def make_mlp(num_features: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


class LitMLP(pl.LightningModule):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.net = make_mlp(num_features)
        self.loss = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return self.loss(self.net(x).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class PremadeBatches:
    """An iterable of ready batches: Lightning's own per-step cost, with no data path at all."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def raw_epoch(tensors, batch_size: int, seed: int) -> float:
    x, y, g = tensors
    torch.manual_seed(seed)
    model = make_mlp(x.shape[1])
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    perm = torch.randperm(x.shape[0])
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        xb, yb, _ = x.index_select(0, idx), y.index_select(0, idx), g.index_select(0, idx)
        loss = loss_fn(model(xb).squeeze(-1), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def lightning_epoch(num_features: int, seed: int, **fit_kwargs) -> float:
    pl.seed_everything(seed, verbose=False)
    timer = EpochTimer()
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
    )
    trainer.fit(LitMLP(num_features), **fit_kwargs)
    return timer.seconds[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for all variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        import logging

        logging.getLogger(name).setLevel(logging.ERROR)

    dm = TabularDataModule("adult", batch_size=args.batch_size, seed=0)
    dm.setup("fit")
    stratified = TabularDataModule("adult", batch_size=args.batch_size, seed=0, stratified_batches=True)
    stratified.setup("fit")
    tensors = dm.train_tensors
    n, f = tensors[0].shape
    tensor_loader = lambda: DataLoader(TensorDataset(*tensors), batch_size=args.batch_size, shuffle=True)  # noqa: E731

    batches = [tuple(t[idx] for t in tensors) for idx in torch.tensor_split(torch.randperm(n), len(dm.train_dataloader()))]

    variants = {
        "raw PyTorch loop over tensors": lambda seed: raw_epoch(tensors, args.batch_size, seed),
        "Lightning + TabularDataModule": lambda seed: lightning_epoch(f, seed, datamodule=dm),
        "Lightning + TabularDataModule(stratified_batches=True)": lambda seed: lightning_epoch(
            f, seed, datamodule=stratified
        ),
        "Lightning + TensorDataset/DataLoader": lambda seed: lightning_epoch(
            f, seed, train_dataloaders=tensor_loader()
        ),
        "Lightning + pre-made batches (no data path)": lambda seed: lightning_epoch(
            f, seed, train_dataloaders=PremadeBatches(batches)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, run in variants.items():  # warm-up, untimed
        run(0)
    for repeat in range(args.repeats):
        for name, run in variants.items():
            times[name].append(run(repeat + 1))

    steps = len(dm.train_dataloader())
    print(
        f"Adult training split: {n} rows x {f} features; batch {args.batch_size} -> {steps} optimizer steps per epoch; "
        f"MLP {f}-128-128-1, Adam, BCE-with-logits; torch {torch.__version__}, lightning {pl.__version__}, "
        f"{args.threads} torch thread(s); median of {args.repeats} repeats after 1 warm-up."
    )
    print(
        "Timed: one training epoch, on_train_epoch_start -> on_train_epoch_end (Trainer construction and fit "
        "start-up excluded); the raw loop over the same span (permutation + all steps)."
    )
    raw_name = "raw PyTorch loop over tensors"
    medians = {name: statistics.median(values) for name, values in times.items()}
    # Ratios pair each run with the raw run of the same repeat (run back to back), then take the
    # median: robust to load on a shared machine drifting between repeats.
    ratios = {
        name: statistics.median(t / r for t, r in zip(values, times[raw_name])) for name, values in times.items()
    }
    width = max(map(len, medians))
    for name, value in medians.items():
        spread = ", ".join(f"{1000 * t:.0f}" for t in times[name])
        print(f"  {name:<{width}}  {1000 * value:7.1f} ms   ({ratios[name]:4.2f}x raw)   runs: [{spread}] ms")
    print(f"ratio Lightning-ours / raw         : {ratios['Lightning + TabularDataModule']:.2f}")
    print(f"ratio Lightning-TensorDataset / raw: {ratios['Lightning + TensorDataset/DataLoader']:.2f}")
    print("(ratios: median over repeats of each run's time / the raw run of the same repeat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
