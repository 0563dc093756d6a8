"""Mid-epoch resume: ``fit(ckpt_path=...)`` from a checkpoint written in the middle of an epoch
continues with the next unseen batch of that epoch's order and reproduces the uninterrupted run
bit for bit (weights, method state, optimizer and scheduler state), in a new process.

What Lightning 2.6 restores (checked by ``test_lightning_restores_the_consumed_batch_count``):
a checkpoint written in ``on_train_batch_end`` of the epoch's batch ``i`` (0-based) holds
``batch_progress.current`` with ``ready = started = processed = i + 1`` and ``completed = i``;
on resume ``reset()`` completes that batch and training goes on at ``batch_idx = i + 1``. With
a sized loader the fetcher does not prefetch, so the loader had handed out exactly ``i + 1``
batches when it was asked for its ``state_dict``: the count it saves is the count to skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from fair_lightning.data import BatchIndexSampler, GroupStratifiedBatchSampler, InMemoryDataLoader, TensorBatchDataset
from fair_lightning.data._batching import no_collate
from tests._resume_helpers import (
    BATCHES_PER_EPOCH,
    MAX_EPOCHS,
    make_datamodule,
    make_module,
    make_trainer,
    resume,
    snapshot,
    steps_per_batch,
)

ROOT = Path(__file__).resolve().parents[1]
#: the checkpoint is written after 7 batches: batch 2 of epoch 1 is the next (7 % 5 != 0)
CKPT_BATCHES = 7
NOT_RESUMABLE = "your dataloader is not resumable"


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-exact equality of nested state (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max difference {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class BatchRecorder(pl.Callback):
    """Records, per training batch: epoch, batch_idx, the batch's row sum, and Lightning's batch
    progress at the time."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []
        self.saved_progress: dict[str, int] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, float(batch[0].double().sum())))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        self.saved_progress = {k: getattr(current, k) for k in ("ready", "started", "processed", "completed")}


def _uninterrupted(mode: str, stratified: bool, recorder: pl.Callback | None = None) -> dict[str, Any]:
    module, trainer = make_module(mode), make_trainer(callbacks=[recorder] if recorder else [])
    trainer.fit(module, datamodule=make_datamodule(stratified))
    return snapshot(module, trainer)


def _interrupted(mode: str, stratified: bool, tmp_path: Path, batches: int = CKPT_BATCHES,
                 recorder: pl.Callback | None = None) -> Path:
    """Train ``batches`` batches, writing a checkpoint at that step, and stop."""
    steps = batches * steps_per_batch(mode)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=steps)
    callbacks = [checkpoint] + ([recorder] if recorder else [])
    trainer = make_trainer(max_steps=steps, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(make_module(mode), datamodule=make_datamodule(stratified))
    path = tmp_path / "mid.ckpt"
    assert path.is_file()
    return path


def _resume_in_new_process(mode: str, stratified: bool, ckpt: Path, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "resumed.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tests._resume_helpers", mode, "1" if stratified else "0", str(ckpt), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize(
    ("mode", "stratified"),
    [("erm", False), ("penalty", False), ("lagrangian", False), ("adversarial", False), ("lagrangian", True)],
)
def test_mid_epoch_resume_in_new_process_reproduces_uninterrupted_run(tmp_path, mode, stratified):
    full = _uninterrupted(mode, stratified)
    ckpt = _interrupted(mode, stratified, tmp_path)
    loader_state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": CKPT_BATCHES // BATCHES_PER_EPOCH, "batches": CKPT_BATCHES % BATCHES_PER_EPOCH}]

    resumed = _resume_in_new_process(mode, stratified, ckpt, tmp_path)
    assert not [w for w in resumed["warnings"] if NOT_RESUMABLE in w]
    expected_steps = MAX_EPOCHS * BATCHES_PER_EPOCH
    assert full["num_steps"] == resumed["num_steps"] == expected_steps  # every method counts its steps, ERM too
    assert full["global_step"] == resumed["global_step"] == expected_steps * steps_per_batch(mode)
    assert_same(full["state_dict"], resumed["state_dict"], "state_dict")
    assert_same(full["optimizers"], resumed["optimizers"], "optimizers")
    assert_same(full["schedulers"], resumed["schedulers"], "schedulers")
    if mode == "lagrangian":
        assert full["state_dict"]["method.multipliers.multipliers"].abs().sum() > 0  # the dual step did move
    if mode == "adversarial":
        assert any(k.startswith("method.adversary.") for k in full["state_dict"])
        assert len(full["optimizers"]) == 2  # the model's and the adversary's


def test_lightning_restores_the_consumed_batch_count(tmp_path):
    """The finding the loader relies on: the batches handed out when the checkpoint is written
    are the batches trained on, and the resumed run goes on with the next one of the same order."""
    full, before, after = BatchRecorder(), BatchRecorder(), BatchRecorder()
    _uninterrupted("erm", False, full)
    ckpt = _interrupted("erm", False, tmp_path, recorder=before)
    assert before.saved_progress == {"ready": 2, "started": 2, "processed": 2, "completed": 1}
    module, trainer = make_module("erm"), make_trainer(callbacks=[after])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=make_datamodule(False), ckpt_path=ckpt)
    assert not [w for w in caught if NOT_RESUMABLE in str(w.message)]
    assert before.seen + after.seen == full.seen  # no batch repeated, none skipped, same indices
    assert after.seen[0][:2] == (1, CKPT_BATCHES % BATCHES_PER_EPOCH)


@pytest.mark.parametrize("batches", [BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH])
def test_resume_from_the_last_batch_of_an_epoch_starts_the_next_epoch(tmp_path, batches):
    """A checkpoint at the epoch's last batch: the saved count is the whole epoch, and the next
    epoch (a different order) is not skipped."""
    full, before, after = BatchRecorder(), BatchRecorder(), BatchRecorder()
    expected = _uninterrupted("penalty", False, full)
    ckpt = _interrupted("penalty", False, tmp_path, batches=batches, recorder=before)
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state == [{"epoch": batches // BATCHES_PER_EPOCH - 1, "batches": BATCHES_PER_EPOCH}]
    module, trainer = make_module("penalty"), make_trainer(callbacks=[after])
    trainer.fit(module, datamodule=make_datamodule(False), ckpt_path=ckpt)
    assert before.seen + after.seen == full.seen
    assert_same(expected["state_dict"], snapshot(module, trainer)["state_dict"], "state_dict")


def test_in_process_resume_matches_too(tmp_path):
    """The same check without a new process (the loader's state goes through the checkpoint
    only, not through objects left over in this process)."""
    expected = _uninterrupted("lagrangian", True)
    ckpt = _interrupted("lagrangian", True, tmp_path)
    module, trainer, caught = resume("lagrangian", True, str(ckpt))
    assert not [w for w in caught if NOT_RESUMABLE in str(w.message)]
    got = snapshot(module, trainer)
    assert_same(expected["state_dict"], got["state_dict"], "state_dict")
    assert_same(expected["optimizers"], got["optimizers"], "optimizers")


# ------------------------------------------------------------------ the loader alone
def _loader(sampler: BatchIndexSampler, n: int = 50) -> InMemoryDataLoader:
    data = TensorBatchDataset(torch.arange(n))
    return InMemoryDataLoader(data, sampler=sampler, batch_size=None, collate_fn=no_collate)


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_state_resumes_a_plain_loop(stratified, num_workers):
    def make():
        if stratified:
            sampler = GroupStratifiedBatchSampler(torch.arange(50) % 3, 8, seed=5)
        else:
            sampler = BatchIndexSampler(50, 8, seed=5)
        loader = _loader(sampler)
        if num_workers:  # DataLoader's own iterator
            loader = InMemoryDataLoader(loader.dataset, sampler=sampler, batch_size=None, collate_fn=no_collate, num_workers=1)
        return loader

    first = make()
    assert first.state_dict() == {"epoch": None, "batches": 0}
    list(first)  # epoch 0
    list(first)  # epoch 1
    epoch2 = [b[0] for b in first]
    first.sampler.set_epoch(2)
    it = iter(first)
    seen = [next(it)[0] for _ in range(3)]
    assert [s.tolist() for s in seen] == [b.tolist() for b in epoch2[:3]]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 3}

    second = make()  # a fresh loader, sampler at epoch 0
    second.load_state_dict(state)
    assert second.state_dict() == state  # before the pass starts, the pending position
    rest = [b[0] for b in second]
    assert [r.tolist() for r in rest] == [b.tolist() for b in epoch2[3:]]
    assert second.state_dict() == {"epoch": 2, "batches": len(epoch2)}
    # the skip applies once: the next pass is the whole of epoch 3
    assert sum(len(b[0]) for b in second) == 50


def test_loader_skips_only_the_saved_epoch():
    loader = _loader(BatchIndexSampler(50, 8, seed=1))
    loader.load_state_dict({"epoch": 4, "batches": 2})
    loader.sampler.set_epoch(5)  # the trainer moved on: a different epoch is not skipped
    assert len(list(loader)) == len(loader.sampler)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"epoch": 1, "batches": -1}, "batches"),
        ({"epoch": 1, "batches": 1.5}, "batches"),
        ({"epoch": -2, "batches": 1}, "epoch"),
        ({"epoch": True, "batches": 1}, "epoch"),
        ([1, 2], "state_dict"),
    ],
)
def test_loader_rejects_bad_state(state, match):
    with pytest.raises(ValueError, match=match):
        _loader(BatchIndexSampler(50, 8)).load_state_dict(state)


def test_loader_tolerates_a_state_without_position():
    loader = _loader(BatchIndexSampler(50, 8))
    loader.load_state_dict({})
    assert len(list(loader)) == len(loader.sampler)


def test_resume_from_a_checkpoint_written_after_mid_epoch_validation(tmp_path):
    """``val_check_interval``: the checkpoint is written at validation end, after 4 of the epoch's
    5 batches; the resumed run trains batch 4 next."""
    full, before, after = BatchRecorder(), BatchRecorder(), BatchRecorder()
    module, trainer = make_module("lagrangian"), make_trainer(callbacks=[full], val_check_interval=2)
    trainer.fit(module, datamodule=make_datamodule(False))
    expected = snapshot(module, trainer)

    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="v-{step}", monitor="val/loss", save_top_k=-1)
    trainer = make_trainer(callbacks=[before, checkpoint], val_check_interval=2, enable_checkpointing=True, max_steps=5)
    trainer.fit(make_module("lagrangian"), datamodule=make_datamodule(False))
    ckpt = tmp_path / "v-step=4.ckpt"
    assert torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 4}]

    module, trainer = make_module("lagrangian"), make_trainer(callbacks=[after], val_check_interval=2)
    trainer.fit(module, datamodule=make_datamodule(False), ckpt_path=ckpt)
    assert before.seen[:4] + after.seen == full.seen
    assert_same(expected["state_dict"], snapshot(module, trainer)["state_dict"], "state_dict")
    assert_same(expected["optimizers"], snapshot(module, trainer)["optimizers"], "optimizers")
