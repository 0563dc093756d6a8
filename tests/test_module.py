import os

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.adversarial import GradientReversalLayer, gradient_reversal
from fair_lightning.constraints import constraint_violations
from fair_lightning.functional import GroupSums, ema_update
from fair_lightning.losses import FairnessLoss
from fair_lightning.module import FairLightningModule
from tests._ddp import DestroyProcessGroup



def _data(n=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    g = (torch.rand(n, generator=gen) < 0.35).long()
    y = ((x[:, 0] + 1.2 * g + 0.5 * torch.randn(n, generator=gen)) > 0.6).float()
    x[:, 3] += g  # the group leaks through a feature
    return x, y, g


class EpochSeededLoader:
    """Whole-batch loader whose shuffle depends only on (seed, epoch): resumable."""

    def __init__(self, tensors, batch_size=64, seed=0):
        self.tensors, self.batch_size, self.seed, self.epoch = tensors, batch_size, seed, 0

    def __len__(self):
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


def _mlp(d=4):
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1))


def _trainer(**kwargs):
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


MODE_KWARGS = {
    "erm": {},
    "penalty": {"fairness": "demographic_parity", "eta": 2.0},
    "lagrangian": {"constraints": ["demographic_parity", "equalized_odds"], "tolerance": 0.02},
    "adversarial": {"fairness": "equalized_odds", "adversary_input": "representation", "eta": 0.5},
}


@pytest.mark.parametrize("mode", list(MODE_KWARGS))
def test_every_mode_trains_and_validates(mode):
    pl.seed_everything(0)
    x, y, g = _data()
    module = FairLightningModule(_mlp(), num_groups=2, mode=mode, group_names=["A", "B"], **MODE_KWARGS[mode])
    loader = DataLoader(TensorDataset(x, y, g), batch_size=64)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    for key in ("train/task_loss_epoch", "val/accuracy", "val/dp_difference", "val/selection_rate/A", "val/calibration_error_max"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    if mode == "lagrangian":
        assert "fairness/violation_hard_max_epoch" in metrics
        lam = module.multipliers.multipliers
        assert (lam >= 0).all() and (lam <= module.multipliers.multiplier_max).all()
        # bound="difference" on 2 groups: one inequality per ordered pair, per rate (DP: 1, EO: 2)
        assert len(module.constraint_names) == lam.numel() == 2 * 1 + 2 * 2
    preds = trainer.predict(module, DataLoader(TensorDataset(x[:10]), batch_size=5))
    assert torch.cat(preds).shape == (10,) and ((torch.cat(preds) >= 0) & (torch.cat(preds) <= 1)).all()


def test_penalty_reduces_dp_gap_against_erm():
    x, y, g = _data(2000)
    gaps = {}
    for mode, kw in (("erm", {}), ("penalty", {"eta": 5.0})):
        pl.seed_everything(0)
        module = FairLightningModule(_mlp(), num_groups=2, mode=mode, lr=1e-2, **kw)
        _trainer(max_epochs=8).fit(module, DataLoader(TensorDataset(x, y, g), batch_size=128))
        with torch.no_grad():
            p = (module(x).reshape(-1) > 0).float()
        gaps[mode] = abs(p[g == 1].mean() - p[g == 0].mean()).item()
    assert gaps["penalty"] < 0.5 * gaps["erm"], gaps


def test_logged_names_are_stable(tmp_path):
    pl.seed_everything(0)
    x, y, g = _data()
    module = FairLightningModule(_mlp(), num_groups=2, mode="lagrangian", group_names=["A", "B"], grad_ratio_every_n_steps=1)
    logger = pl.loggers.CSVLogger(str(tmp_path))
    trainer = _trainer(max_steps=3, log_every_n_steps=1, logger=logger)
    trainer.fit(module, DataLoader(TensorDataset(x, y, g), batch_size=64))
    logger.save()
    import pandas as pd

    logged = pd.read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    keys = set(logged.columns)
    assert set(module.last_detail_metrics) <= keys
    # the last step logged the multipliers and hard violations it ended with
    lam, hard = module.multipliers.multipliers, module.multipliers.hard_violations()
    for k, name in enumerate(module.constraint_names):
        assert module.last_detail_metrics[f"fairness/multiplier/{name}"] == pytest.approx(lam[k].item())
        assert module.last_detail_metrics[f"fairness/violation_hard/{name}"] == pytest.approx(hard[k].item(), abs=1e-7)
    assert module.last_detail_metrics["fairness/multiplier_max"] == pytest.approx(lam.max().item())
    assert logged["fairness/multiplier_max"].dropna().iloc[-1] == pytest.approx(lam.max().item())
    for k in (
        "fairness/multiplier/demographic_parity/selection_rate/A-B",
        "fairness/violation_hard/demographic_parity/selection_rate/B-A",
        "fairness/violation_soft/demographic_parity/selection_rate/A-B",
        "train/grad_norm_ratio",
        "train/lagrangian",
    ):
        assert k in keys, (k, sorted(keys))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "fair"}, r"`mode` must be one of \['erm', 'penalty', 'lagrangian', 'adversarial', 'bounded_group_loss'\] or a FairnessMethod, got 'fair'"),
        ({"mode": "penalty", "eta": -1.0}, "`eta` must be >= 0, got -1.0"),
        ({"mode": "adversarial", "eta": -1.0}, "`eta` must be >= 0, got -1.0"),
        ({"mode": "penalty", "eta": "1.0"}, r"`eta` must be a number >= 0, got '1.0' \(str\)"),
        ({"mode": "penalty", "eta": float("nan")}, "`eta` must be >= 0, got nan"),
        ({"mode": "lagrangian", "tolerance": -0.1}, r"`tolerance` must be a number in \[0, 1\)"),
        ({"mode": "lagrangian", "tolerance": 1.5}, r"`tolerance` must be a number in \[0, 1\).*got 1.5"),
        ({"mode": "lagrangian", "tolerance": float("inf")}, r"`tolerance` must be a number in \[0, 1\).*got inf"),
        ({"mode": "lagrangian", "constraints": "parity"}, "`constraints` must be one of .*'equalized_odds'.*got 'parity'"),
        ({"mode": "lagrangian", "constraints": {"definition": "demographic_parity", "tol": 0.05}}, r"unknown key\(s\) \['tol'\]"),
        ({"mode": "penalty", "fairness": "parity"}, "`fairness` must be one of .*mutual_information"),
        ({"mode": "lagrangian", "dual_lr": 0.0}, "`dual_lr` must be a finite number > 0"),
        ({"mode": "lagrangian", "dual_lr": float("inf")}, r"`dual_lr` must be a finite number > 0 and <= \S+, got inf"),
        ({"mode": "lagrangian", "multiplier_max": float("inf")}, "`multiplier_max` must be a finite number > 0"),
        ({"mode": "lagrangian", "min_count": -1}, "`min_count` must be a finite number >= 0, got -1"),
        ({"mode": "lagrangian", "memory": 0}, "`memory` must be a finite number > 0, got 0"),
        ({"mode": "lagrangian", "steps_per_epoch": 0}, r"`steps_per_epoch` must be an int >= 1, got 0"),
        ({"mode": "penalty", "eta_schedule": "cosine"}, "`eta_schedule` must be one of"),
        ({"num_groups": 0}, "`num_groups` must be a positive int"),
        ({"num_groups": 1, "mode": "lagrangian"}, "`num_groups` must be >= 2 for Lagrangian"),
        ({"num_groups": 1, "mode": "penalty"}, "`num_groups` must be >= 2 for Penalty"),
        ({"lr": -1}, "`lr` must be a finite number > 0, got -1"),
        ({"threshold": 0}, r"`threshold` must be a finite number > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"num_groups": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        FairLightningModule(_mlp(), **kwargs)


def test_non_binary_target_and_bad_logits_shape_raise():
    x, y, g = _data(64)
    module = FairLightningModule(_mlp(), num_groups=2, mode="lagrangian")
    with pytest.raises(ValueError, match="`target` must contain only 0 and 1"):
        _trainer(max_steps=1).fit(module, DataLoader(TensorDataset(x, y * 3, g), batch_size=64))
    wide = FairLightningModule(nn.Linear(4, 3), num_groups=2, mode="penalty")
    with pytest.raises(ValueError, match=r"`logits` must have shape \(N,\) or \(N, 1\).*got shape \(64, 3\)"):
        _trainer(max_steps=1).fit(wide, DataLoader(TensorDataset(x, y, g), batch_size=64))


class _NaNLoss(FairnessLoss):
    def forward(self, logits, target, groups):
        return logits.sum() * float("nan")


def test_nan_terms_stop_training_with_their_name():
    x, y, g = _data(64)
    module = FairLightningModule(_mlp(), num_groups=2, mode="penalty", fairness=_NaNLoss(2))
    with pytest.raises(FloatingPointError, match="fairness loss is nan at step 0"):
        _trainer(max_steps=1).fit(module, DataLoader(TensorDataset(x, y, g), batch_size=64))

    class NaNTask(FairLightningModule):
        def task_loss(self, logits, target):
            return logits.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="task loss is nan"):
        _trainer(max_steps=1).fit(NaNTask(_mlp(), num_groups=2), DataLoader(TensorDataset(x, y, g), batch_size=64))


def test_single_group_batch_gives_finite_loss_and_no_multiplier_jump():
    x, y, g = _data(256)
    only = g == 0
    module = FairLightningModule(_mlp(), num_groups=2, mode="lagrangian", tolerance=0.0)
    trainer = _trainer(max_steps=1)
    trainer.fit(module, DataLoader(TensorDataset(x[only], y[only], g[only]), batch_size=64))
    # the absent group is masked; the present group equals the overall rate: nothing to push
    assert torch.isfinite(trainer.callback_metrics["train/task_loss"])
    assert torch.count_nonzero(module.multipliers.multipliers) == 0


def test_gradient_reversal_flips_and_scales_exactly():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64)
    (gradient_reversal(x, 0.7) * w).sum().backward()
    assert torch.equal(x.grad, -0.7 * w)
    layer = GradientReversalLayer(2.0)
    y = layer(x)
    assert torch.equal(y, x)
    torch.autograd.gradcheck(lambda z: gradient_reversal(z, -1.0), (x,))  # strength -1 is the identity
    with pytest.raises(ValueError, match="`strength` must be >= 0"):
        GradientReversalLayer(-1.0)


def test_eta_schedule_warms_up():
    module = FairLightningModule(_mlp(), num_groups=2, mode="penalty", eta=2.0, eta_schedule="linear", eta_warmup_steps=4)
    values = []
    for step in range(6):
        module.method.num_steps.fill_(step)
        values.append(module.eta)
    assert values == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


@pytest.mark.parametrize("mode", ["lagrangian", "adversarial", "penalty"])
def test_resume_reproduces_uninterrupted_run(tmp_path, mode):
    x, y, g = _data(384)

    def make():
        pl.seed_everything(7)
        if mode == "lagrangian":
            # total_steps: the first run stops at max_epochs=2, the whole run's length is 4 epochs
            kw = {"dual_optimizer": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5), "total_steps": 4 * 6}
        else:
            kw = {"eta": 1.0, "eta_schedule": "linear", "eta_warmup_steps": 10}
        return FairLightningModule(
            _mlp(), num_groups=2, mode=mode,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), **kw,
        )

    full = make()
    _trainer(max_epochs=4).fit(full, EpochSeededLoader((x, y, g)))

    first = make()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(first, EpochSeededLoader((x, y, g)))
    resumed = make()
    loader = EpochSeededLoader((x, y, g))
    loader.epoch = 2  # a real data module derives the order from trainer.current_epoch
    _trainer(max_epochs=4).fit(resumed, loader, ckpt_path=os.path.join(tmp_path, "last.ckpt"))

    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if "metrics" in key or "accuracy" in key or "auroc" in key:
            continue
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert int(resumed.method.num_steps) == 4 * 6


class _LagrangianRecorder(FairLightningModule):
    """Records, at each step, the local hard sums and the violations the dual step used."""

    def __init__(self, out_dir, **kwargs):
        super().__init__(_mlp(), **kwargs)
        self.out_dir, self.records = out_dir, []

    def training_step(self, batch, batch_idx):
        x, target, groups = batch
        with torch.no_grad():
            hard = (self(x).reshape(-1) > 0).double()
        from fair_lightning.functional import group_sums

        local = group_sums(hard, target, groups, self.num_groups)
        out = super().training_step(batch, batch_idx)
        self.records.append({"local": local.stack(), "hard": self.multipliers.hard_violations().clone()})
        return out

    def on_train_end(self):
        torch.save(
            {"records": self.records, "multipliers": self.multipliers.multipliers.detach().clone()},
            os.path.join(self.out_dir, f"lag{self.global_rank}.pt"),
        )


@pytest.mark.ddp
def test_lagrangian_under_ddp_syncs_hard_violations_and_multipliers(tmp_path):
    x, y, g = _data(512)
    pl.seed_everything(0)
    module = _LagrangianRecorder(str(tmp_path), num_groups=2, mode="lagrangian", dual_lr=4.0, memory=0.25, steps_per_epoch=8, tolerance=0.0)
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=6, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[DestroyProcessGroup()],
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y, g), batch_size=32, shuffle=True))
    r0, r1 = (torch.load(tmp_path / f"lag{r}.pt") for r in range(2))
    assert torch.equal(r0["multipliers"], r1["multipliers"])
    assert torch.count_nonzero(r0["multipliers"]) > 0
    # replay the dual step's running sums on the union of both ranks' batches
    running = torch.zeros(4, 2, dtype=torch.float64)
    cons = module.multipliers.constraints
    for step, (a, b) in enumerate(zip(r0["records"], r1["records"])):
        union = a["local"] + b["local"]
        running = union if step == 0 else ema_update(running, union, 0.5)
        expected, _ = constraint_violations(GroupSums.from_stacked(running), cons)
        torch.testing.assert_close(a["hard"], expected)
        torch.testing.assert_close(b["hard"], expected)
        assert not torch.equal(a["local"], b["local"])  # the ranks really saw different batches


@pytest.mark.parametrize("mode", ["penalty", "adversarial"])
def test_grad_norm_ratio_is_the_ratio_of_the_terms_gradients(mode):
    """The logged ratio (one extra backward, the fairness gradient as total minus task) equals
    the ratio of the two terms' gradient norms taken separately."""
    pl.seed_everything(0)
    x, y, g = _data(n=64)
    module = FairLightningModule(_mlp(), num_groups=2, mode=mode, grad_ratio_every_n_steps=1, **MODE_KWARGS[mode])
    reference = FairLightningModule(_mlp(), num_groups=2, mode=mode, **MODE_KWARGS[mode])
    reference.load_state_dict(module.state_dict())
    _trainer(max_steps=1).fit(module, DataLoader(TensorDataset(x, y, g), batch_size=64))

    logits = reference(x).squeeze(-1)
    task = reference.task_loss(logits, y)
    if mode == "penalty":
        fair = 2.0 * reference.method.loss(logits, y, g)
    else:
        _, rep = reference.forward_with_representation(x)
        method = reference.method
        fair = nn.functional.cross_entropy(method.adversary(torch.cat((method.reversal(rep), y[:, None]), 1)), g)
    params = reference.primal_parameters()

    def norm(term):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return torch.linalg.vector_norm(torch.stack([gr.norm() for gr in grads if gr is not None]))

    expected = (norm(fair) / norm(task)).item()
    assert expected > 1e-3
    assert module.last_detail_metrics["train/grad_norm_ratio"] == pytest.approx(expected, rel=1e-4)


def test_constraint_state_names_each_multiplier():
    module = FairLightningModule(
        _mlp(), num_groups=2, mode="lagrangian", group_names=["A", "B"],
        constraints=[{"definition": "equalized_odds", "tolerance": 0.02, "bound": "gap"}, "demographic_parity"], tolerance=0.05,
    )
    module.multipliers.multipliers.copy_(torch.arange(10.0))
    state = module.constraint_state()
    assert list(state.index) == module.constraint_names and state.index.name == "constraint"
    row = state.loc["equalized_odds/false_positive_rate/B/lower"]
    assert (row["definition"], row["rate"], row["group"], row["other"], row["side"]) == ("equalized_odds", "false_positive_rate", "B", "all", "lower")
    assert row["tolerance"] == 0.02 and row["multiplier"] == 7.0
    pair = state.loc["demographic_parity/selection_rate/A-B"]
    assert (pair["group"], pair["other"], pair["side"], pair["tolerance"]) == ("A", "B", "pair", 0.05)
    assert state["multiplier"].tolist() == list(range(10))
    torch.testing.assert_close(torch.tensor(state["violation_hard"].to_numpy()), module.multipliers.hard_violations().double())
    with pytest.raises(ValueError, match="`constraint_state` needs a constrained method"):
        FairLightningModule(_mlp(), num_groups=2, mode="penalty").constraint_state()


def test_state_dict_carries_the_post_processing(tmp_path):
    """Group thresholds and a calibrator are part of ``state_dict()``: a plain
    ``torch.save(module.state_dict())`` file (read with ``weights_only=True``) restores the same
    decisions; weights saved without them load and leave the post-processing as it is."""
    from fair_lightning.calibration import GroupFairnessCalibrator
    from fair_lightning.postprocessing import GroupThresholds

    gen = torch.Generator().manual_seed(0)
    probs, groups = torch.rand(400, generator=gen, dtype=torch.float64), torch.randint(0, 2, (400,), generator=gen)
    labels = (torch.rand(400, generator=gen, dtype=torch.float64) < probs).long()
    module = FairLightningModule(nn.Linear(3, 1), num_groups=2)
    assert module.state_dict()["_extra_state"] == {"version": 1, "calibrator": None, "thresholds": None}
    module.prediction_calibrator = GroupFairnessCalibrator("platt", num_groups=2).fit(probs, labels, groups)
    module.prediction_thresholds = GroupThresholds("demographic_parity", 0.02).fit(probs, labels, groups, 2)
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    loaded = FairLightningModule(nn.Linear(3, 1), num_groups=2)
    loaded.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    torch.testing.assert_close(loaded.prediction_thresholds.predict(probs, groups),
                               module.prediction_thresholds.predict(probs, groups))
    torch.testing.assert_close(loaded.prediction_calibrator.transform_probabilities(probs, groups),
                               module.prediction_calibrator.transform_probabilities(probs, groups))
    x = torch.randn(8, 3)
    torch.testing.assert_close(loaded(x), module(x))
    # weights alone load strictly and keep what the module has
    weights = {k: v for k, v in module.state_dict().items() if k != "_extra_state"}
    loaded.load_state_dict(weights)
    assert loaded.prediction_thresholds is not None
    # a saved "none" clears it
    loaded.load_state_dict(FairLightningModule(nn.Linear(3, 1), num_groups=2).state_dict())
    assert loaded.prediction_thresholds is None and loaded.prediction_calibrator is None
    with pytest.raises(ValueError, match="`_extra_state` must be FairLightningModule.get_extra_state"):
        loaded.load_state_dict({**weights, "_extra_state": {"thresholds": None}})


def test_a_version_2_checkpoint_still_restores_its_thresholds():
    """Checkpoints before the post-processing moved into ``state_dict`` kept it under
    ``checkpoint["fair_lightning"]``; Lightning calls ``on_load_checkpoint`` and then loads the
    weights strictly."""
    from fair_lightning.postprocessing import GroupThresholds

    gen = torch.Generator().manual_seed(1)
    probs, groups = torch.rand(300, generator=gen, dtype=torch.float64), torch.randint(0, 2, (300,), generator=gen)
    labels = (torch.rand(300, generator=gen, dtype=torch.float64) < probs).long()
    fitted = GroupThresholds("demographic_parity", 0.05).fit(probs, labels, groups, 2)
    source = FairLightningModule(nn.Linear(3, 1), num_groups=2)
    weights = {k: v for k, v in source.state_dict().items() if k != "_extra_state"}
    checkpoint = {"state_dict": weights, "fair_lightning": {"version": 2, "mode": "erm", "thresholds": fitted.state_dict()}}
    module = FairLightningModule(nn.Linear(3, 1), num_groups=2)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    torch.testing.assert_close(module.prediction_thresholds.predict(probs, groups), fitted.predict(probs, groups))


def test_predict_step_calibrates_float64_probabilities_as_the_calibrator_was_fitted():
    """Near 1 a float32 sigmoid is coarse: at logit 15.5, 1 - p is 1.9e-7 and float32 steps are
    6e-8, so the probability a Platt map (clipping at 1 - 1e-7) sees is off by a few percent of
    1 - p, which an overconfident model's map (slope below 1) carries into its output.
    predict_step feeds the calibrator the float64 probability, as GroupCalibrationCallback
    fitted it."""
    from fair_lightning.calibration import GroupFairnessCalibrator

    gen = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(2000, generator=gen, dtype=torch.float64)
    labels = (torch.rand(2000, generator=gen, dtype=torch.float64) < torch.sigmoid(logits / 3)).long()  # overconfident
    groups = torch.randint(0, 2, (2000,), generator=gen)
    calibrator = GroupFairnessCalibrator("platt", num_groups=2).fit(torch.sigmoid(logits), labels, groups)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(15.5)
        model.bias.zero_()
    module = FairLightningModule(model, num_groups=2)
    module.prediction_calibrator = calibrator
    x, g = torch.ones(2, 1), torch.tensor([0, 1])
    out = module.predict_step((x, torch.zeros(2), g), 0)
    expected = calibrator.transform_probabilities(torch.sigmoid(torch.full((2,), 15.5, dtype=torch.float64)), g)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=2e-7)
