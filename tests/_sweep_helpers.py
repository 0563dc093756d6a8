"""Test-only helpers for sweeps: a callback that makes one job of a sweep kill itself once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class KillJobOnce(Callback):
    """Sends ``signal`` to its own process at the first training batch of job ``job`` of a sweep.

    A marker file in the job's directory makes it happen once: a re-run of the sweep completes the job.
    """

    def __init__(self, job: int, signal: str = "SIGKILL") -> None:
        self.job = job
        self.signal = getattr(__import__("signal"), signal)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        marker = Path(hc.runtime.output_dir) / ".killed-once"
        if hc.job.get("num") == self.job and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), self.signal)
