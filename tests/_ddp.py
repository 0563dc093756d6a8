"""Helpers to run a function on every rank of a real 2-process ``ddp_spawn`` CPU job."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class _RunOnRanks(pl.LightningModule):
    def __init__(self, fn: Callable, out_dir: str) -> None:
        super().__init__()
        self.fn, self.out_dir = fn, out_dir
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def on_train_start(self) -> None:
        result = self.fn(self.global_rank, self.trainer.world_size, self)
        torch.save(result, os.path.join(self.out_dir, f"rank{self.global_rank}.pt"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class DestroyProcessGroup(pl.Callback):
    """Close the process group in each ``ddp_spawn`` worker once the trainer is done.

    Workers end with ``os._exit``, which skips the ``atexit`` handler in which Lightning destroys
    the process group; gloo's threads are then torn down mid-flight and now and then abort the
    worker ("terminate called without an active exception", SIGABRT) after a successful run.
    ``teardown`` is the trainer's last step in the worker, after every collective.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_on_ranks(fn: Callable, tmp_path: Path, world_size: int = 2) -> list:
    """Call ``fn(rank, world_size, module)`` inside a ``ddp_spawn`` job; return each rank's result."""
    trainer = pl.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=world_size,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DestroyProcessGroup()],
    )
    data = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=2)
    trainer.fit(_RunOnRanks(fn, str(tmp_path)), data)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
