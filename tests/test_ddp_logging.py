"""Every epoch value FairLightningModule logs under 2-process DDP equals the single-process value.

The model is held fixed (SGD at lr 0), so both runs see the same weights; the DDP run's global
batch (one local batch per rank) is the single run's batch of twice the size. Epoch means are sample-weighted sums reduced across ranks, so they must agree
exactly, on every rank.
"""

import os

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.module import FairLightningModule
from tests._ddp import DestroyProcessGroup

N, LOCAL_BATCH = 480, 40


class _Dump(pl.Callback):
    def __init__(self, out_dir: str, tag: str) -> None:
        self.out_dir, self.tag = out_dir, tag

    def on_train_end(self, trainer, pl_module):
        values = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save(values, os.path.join(self.out_dir, f"{self.tag}{trainer.global_rank}.pt"))


def _data(task="binary"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=gen)
    g = (torch.rand(N, generator=gen) < 0.4).long()
    score = x[:, 0] + g + 0.3 * torch.randn(N, generator=gen)
    if task == "regression":
        y = score
    elif task == "multiclass":
        y = torch.bucketize(score, torch.tensor([0.0, 1.0]))  # 3 classes
    else:
        y = (score > 0.5).float()
    return TensorDataset(x, y, g)


def _frozen_sgd(params):
    return torch.optim.SGD(params, lr=0.0)


def _module(mode, task="binary"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3 if task == "multiclass" else 1))
    steps = N // (2 * LOCAL_BATCH)
    kwargs = {"tolerance": 0.02, "steps_per_epoch": steps} if mode == "lagrangian" else {}
    if mode == "bounded_group_loss":
        kwargs = {"bound": 0.5, "steps_per_epoch": steps}
    if task == "regression":
        kwargs["task"] = "regression"
    return FairLightningModule(
        model, num_groups=2, group_names=["A", "B"], mode=mode, grad_ratio_every_n_steps=0,
        optimizer=_frozen_sgd, **kwargs,
    )


class _RankBlocks(torch.utils.data.Sampler):
    """Rank r's t-th batch is rows [2tB + rB, 2tB + (r + 1)B): the two ranks' t-th batches together
    are the single run's t-th batch of 2B rows."""

    def __len__(self):
        return N // (2 * LOCAL_BATCH)

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        for t in range(len(self)):
            start = 2 * t * LOCAL_BATCH + rank * LOCAL_BATCH
            yield list(range(start, start + LOCAL_BATCH))


def _fit(tmp_path, mode, tag, task="binary", **trainer_kwargs):
    data = _data(task)
    if trainer_kwargs.get("devices", 1) == 2:
        loader = DataLoader(data, batch_sampler=_RankBlocks())
        trainer_kwargs["use_distributed_sampler"] = False
    else:
        loader = DataLoader(data, batch_size=2 * LOCAL_BATCH)
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[_Dump(str(tmp_path), tag), DestroyProcessGroup()],
        **trainer_kwargs,
    )
    trainer.fit(_module(mode, task), loader, loader)


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("task", "mode"),
    [("binary", "erm"), ("binary", "lagrangian"), ("multiclass", "lagrangian"), ("regression", "bounded_group_loss")],
)
def test_every_logged_epoch_value_equals_single_process(tmp_path, task, mode):
    _fit(tmp_path, mode, "single", task)
    _fit(tmp_path, mode, "ddp", task, strategy="ddp_spawn", accelerator="cpu", devices=2)
    single = torch.load(tmp_path / "single0.pt")
    ranks = [torch.load(tmp_path / f"ddp{r}.pt") for r in range(2)]
    # step values (the last local batch) differ by design; the fairness term of a batch is not a
    # per-sample mean (its value depends on the batch), so its epoch mean is not compared
    epoch_keys = [k for k in single if k.startswith(("val/", "fairness/")) or k in ("train/task_loss_epoch",)]
    if mode == "erm":
        epoch_keys.append("train/loss_epoch")
    assert "val/loss" in epoch_keys and "val/dp_difference" in epoch_keys and "train/task_loss_epoch" in epoch_keys
    if mode in ("lagrangian", "bounded_group_loss"):
        assert "fairness/violation_hard_max_epoch" in epoch_keys
    if task == "regression":
        assert "val/mse" in epoch_keys and "val/cdf_gap" in epoch_keys
    for key in epoch_keys:
        for rank, values in enumerate(ranks):
            assert values[key] == pytest.approx(single[key], rel=1e-6, abs=1e-7), (key, rank, values[key], single[key])
