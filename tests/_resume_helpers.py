"""Shared builders of the mid-epoch resume tests, and the resume step run in a new process.

``python -m tests._resume_helpers MODE STRATIFIED CKPT OUT`` (with the repository on
``PYTHONPATH``) resumes ``fit`` from ``CKPT`` to the end of :data:`MAX_EPOCHS` and saves
:func:`snapshot` of the result to ``OUT``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

from fair_lightning.data import TabularDataModule
from fair_lightning.models import MLP
from fair_lightning.module import FairLightningModule

#: rows of the synthetic set: 160 training rows, 5 batches of 32 an epoch
ROWS, BATCH_SIZE, BATCHES_PER_EPOCH = 250, 32, 5
MAX_EPOCHS = 3
METHOD_ARGS: dict[str, dict[str, Any]] = {
    "erm": {},
    "penalty": {"eta": 1.0},
    # the interrupted run stops early by max_steps, so the whole run's length is given explicitly
    # (FairLightningModule would take it from the trainer; a preempted job keeps its max_epochs)
    "lagrangian": {"tolerance": 0.02, "min_count": 1, "total_steps": MAX_EPOCHS * BATCHES_PER_EPOCH},
    "adversarial": {"eta": 1.0},
}


def steps_per_batch(mode: str) -> int:
    """``trainer.global_step`` advances once per optimizer: twice a batch with the adversary's."""
    return 2 if mode == "adversarial" else 1


def step_lr(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A per-step schedule, so that the scheduler's position is part of what must resume."""
    return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7), "interval": "step"}


def make_datamodule(stratified: bool) -> TabularDataModule:
    return TabularDataModule(
        "biased_lending", dataset_kwargs={"n": ROWS, "bias": 0.8}, batch_size=BATCH_SIZE,
        stratified_batches=stratified, seed=3,
    )


def make_module(mode: str) -> FairLightningModule:
    pl.seed_everything(7, verbose=False)
    model = MLP(3, hidden=(8,))  # biased_lending's features: income, credit_score, debt_ratio
    return FairLightningModule(model, num_groups=2, mode=mode, lr=0.01, lr_scheduler=step_lr, **METHOD_ARGS[mode])


def make_trainer(**kwargs: Any) -> pl.Trainer:
    options = dict(
        max_epochs=MAX_EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def snapshot(module: FairLightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """What must match between the uninterrupted and the resumed run."""
    return {
        "state_dict": {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()},
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        "schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
        "global_step": trainer.global_step,
        "num_steps": int(module.method.num_steps),
    }


def resume(mode: str, stratified: bool, ckpt_path: str) -> tuple[FairLightningModule, pl.Trainer, list[warnings.WarningMessage]]:
    module = make_module(mode)
    trainer = make_trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=make_datamodule(stratified), ckpt_path=ckpt_path)
    return module, trainer, caught


def main(argv: list[str]) -> None:
    mode, stratified, ckpt_path, out = argv
    torch.set_num_threads(1)
    module, trainer, caught = resume(mode, stratified == "1", ckpt_path)
    state = snapshot(module, trainer)
    state["warnings"] = [str(w.message) for w in caught]
    torch.save(state, out)


if __name__ == "__main__":
    main(sys.argv[1:])
