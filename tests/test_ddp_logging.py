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


class _DumpTest(pl.Callback):
    """Each rank's test metrics, and the warnings raised while testing (they never reach the caller)."""

    def __init__(self, out_dir: str, tag: str) -> None:
        self.out_dir, self.tag = out_dir, tag

    def on_test_start(self, trainer, pl_module):
        import warnings

        self.catcher = warnings.catch_warnings(record=True)
        self.caught = self.catcher.__enter__()
        warnings.simplefilter("always")

    def on_test_end(self, trainer, pl_module):
        self.catcher.__exit__(None, None, None)
        values = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save(values, os.path.join(self.out_dir, f"{self.tag}{trainer.global_rank}.pt"))
        torch.save([str(w.message) for w in self.caught], os.path.join(self.out_dir, f"{self.tag}{trainer.global_rank}.warnings"))


@pytest.mark.ddp
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_first_evaluation_after_spawn_counts_every_row_once(tmp_path, task):
    """``ddp_spawn`` hands the workers a module whose metric states sit in shared memory; unless
    each rank takes its own copy, both ranks add into one tensor and the first evaluation counts
    every row twice (the rates, ratios of doubled sums, looked right; counts and intervals did not)."""
    data = _data(task)
    single = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[_DumpTest(str(tmp_path), "single")])
    single.test(_module("erm", task), DataLoader(data, batch_size=2 * LOCAL_BATCH), verbose=False)
    ddp = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False,
                     callbacks=[_DumpTest(str(tmp_path), "ddp"), DestroyProcessGroup()])
    module = _module("erm", task)
    ddp.test(module, DataLoader(data, batch_sampler=_RankBlocks()), verbose=False)
    expected = torch.load(tmp_path / "single0.pt")
    counts = [k for k in expected if k.startswith("test/count/")]
    assert counts and sum(expected[k] for k in counts) == N
    if task == "binary":
        assert "test/dp_difference_ci_high" in expected
    for rank in range(2):
        values = torch.load(tmp_path / f"ddp{rank}.pt")
        assert values.keys() == expected.keys()
        for key, value in expected.items():
            assert values[key] == pytest.approx(value, rel=1e-6, abs=1e-7, nan_ok=True), (key, rank)
        # the logged values are reduced already: no "use sync_dist=True" advice for them
        advice = [m for m in torch.load(tmp_path / f"ddp{rank}.warnings") if "sync_dist=True" in m]
        assert not advice, advice[:3]
    # the calling process's module is untouched by the workers' evaluation
    assert float(module.test_loss.weight) == 0.0


def test_own_shared_tensors_copies_states_and_keeps_shared_references():
    from fair_lightning.methods._base import own_shared_tensors

    module = _module("erm")
    metrics = module.test_metrics
    metrics.update(torch.randn(10), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,)))  # forms compute groups
    members = dict(metrics.items(keep_base=True, copy_state=False))  # plain indexing would copy the states
    group, dp = members["group"], members["dp_difference"]
    assert group.count is dp.count  # one state for the compute group
    before = group.count.clone()
    weight = module.model[0].weight
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor):
                value.share_memory_()
    weight.share_memory_()  # parameters are Lightning's to copy; left alone
    assert group.count.is_shared() and module._val_moments.is_shared()
    assert own_shared_tensors(module) > 0
    assert not group.count.is_shared() and not module._val_moments.is_shared()
    assert group.count is dp.count  # still one state
    torch.testing.assert_close(group.count, before)
    assert module.model[0].weight is weight and weight.is_shared()
    assert own_shared_tensors(module) == 0  # nothing left to copy
