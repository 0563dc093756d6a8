"""Regression: the demographic-parity penalty on group mean predictions, the bounded-group-loss
constraint (against fairlearn), and FairLightningModule(task="regression")."""

import itertools
import logging
import warnings

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.data import TabularData, TabularDataModule, make_group_shift_regression
from fair_lightning.losses import LOSSES, REGRESSION_LOSSES, RegressionDemographicParityLoss, make_fairness_loss
from fair_lightning.methods import BoundedGroupLossConstraint, Lagrangian, Penalty
from fair_lightning.models import MLP
from fair_lightning.module import FairLightningModule

BOUND = 1.2  # between the unconstrained group MSEs of the shifted data (about 0.56 and 1.7)


def _batch(n=200, num_groups=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, num_groups, (n,), generator=g)
    preds = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) + 0.5 * groups.to(dtype)
    target = preds.detach() + torch.randn(n, generator=g, dtype=torch.float64).to(dtype) * (1 + groups.to(dtype))
    return preds, target, groups


# ------------------------------------------------------------------ the penalty
def _reference_loss(preds, groups, num_groups, penalty, reduction, pairwise, weighting, min_count, scale):
    """A plain loop: group means, gaps to the overall mean (or pairs), weights, reduction."""
    p = [float(v) for v in preds]
    gs = [int(v) for v in groups]
    count = [sum(1 for x in gs if x == k) for k in range(num_groups)]
    mean = [sum(v for v, x in zip(p, gs) if x == k) / count[k] if count[k] else 0.0 for k in range(num_groups)]
    overall = sum(p) / len(p)
    keep = [count[k] >= max(min_count, 1e-300) and count[k] > 0 for k in range(num_groups)]
    if weighting == "uniform":
        w = [1.0] * num_groups
    else:
        raw = [count[k] if weighting == "proportional" else count[k] ** 0.5 for k in range(num_groups)]
        kept = [r for r, k in zip(raw, range(num_groups)) if count[k] > 0]
        w = [r * len(kept) / sum(kept) for r in raw]
    if pairwise:
        items = [((mean[a] - mean[b]) / scale, w[a] * w[b]) for a, b in itertools.combinations(range(num_groups), 2)
                 if keep[a] and keep[b]]
    else:
        items = [((mean[k] - overall) / scale, w[k]) for k in range(num_groups) if keep[k]]
    values = [(abs(gap) if penalty == "abs" else gap * gap, wk) for gap, wk in items]
    if not values:
        return 0.0
    if reduction == "max":
        return max(v for v, wk in values if wk > 0)
    return sum(v * wk for v, wk in values) / sum(wk for _, wk in values)


@pytest.mark.parametrize(
    ("penalty", "reduction", "pairwise", "weighting", "min_count", "scale"),
    [
        ("abs", "mean", False, "uniform", 1, None),
        ("squared", "mean", False, "proportional", 1, 2.0),
        ("abs", "max", True, "uniform", 1, None),
        ("squared", "mean", True, "sqrt", 1, None),
        ("abs", "mean", False, "uniform", 70, 0.5),  # a group below min_count is masked
    ],
)
def test_regression_dp_loss_matches_a_plain_reference(penalty, reduction, pairwise, weighting, min_count, scale):
    preds, _, groups = _batch(n=200, num_groups=3, seed=1)
    loss = RegressionDemographicParityLoss(
        3, penalty=penalty, reduction=reduction, pairwise=pairwise, weighting=weighting, min_count=min_count, scale=scale
    )
    expected = _reference_loss(preds, groups, 3, penalty, reduction, pairwise, weighting, min_count, scale or 1.0)
    value = loss(preds, None, groups)
    assert value.dtype == preds.dtype
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_regression_dp_loss_is_zero_for_equal_means_and_gradchecks():
    groups = torch.tensor([0, 0, 1, 1])
    assert float(RegressionDemographicParityLoss(2)(torch.tensor([1.0, 3.0, 2.0, 2.0]), None, groups)) == 0.0
    preds, _, groups = _batch(n=40, num_groups=3, seed=2, dtype=torch.float64)
    for options in ({"penalty": "squared"}, {"penalty": "abs", "pairwise": True}, {"weighting": "proportional", "scale": 3.0}):
        loss = RegressionDemographicParityLoss(3, **options)
        x = preds.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda p: loss(p, None, groups), (x,))


def test_penalty_takes_the_regression_loss_and_keeps_the_classification_ones():
    preds, target, groups = _batch(n=100, num_groups=2, seed=3)
    method = Penalty(2, fairness="regression_demographic_parity", eta=2.0, penalty="squared", scale=2.0)
    assert method.task == "regression" and method.requires_target is False
    reference = RegressionDemographicParityLoss(2, penalty="squared", scale=2.0)(preds, None, groups)
    assert float(method(preds, target, groups)) == pytest.approx(2 * float(reference), rel=1e-6)
    assert float(method(preds[:, None], None, groups)) == pytest.approx(2 * float(reference), rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        Penalty(2, fairness="regression_demographic_parity", temperature=2.0)
    with pytest.raises(ValueError, match="scale"):
        Penalty(2, fairness="demographic_parity", scale=1.0)
    # the classification losses: same names, same binary checks as before
    assert "regression_demographic_parity" not in LOSSES and set(REGRESSION_LOSSES) == {"regression_demographic_parity"}
    for name in LOSSES:
        assert Penalty(2, fairness=name).task == "binary"
    binary = Penalty(2, fairness="demographic_parity", temperature=2.0, penalty="squared", pairwise=True)
    logits = torch.randn(50)
    assert torch.isfinite(binary(logits, (logits > 0).float(), torch.arange(50) % 2))
    with pytest.raises(ValueError, match="binary"):
        Penalty(2, fairness="equalized_odds")(logits, torch.randn(50), torch.arange(50) % 2)
    assert isinstance(make_fairness_loss("regression_demographic_parity", 2), RegressionDemographicParityLoss)


# ------------------------------------------------------------------ bounded group loss vs fairlearn
@pytest.mark.filterwarnings("ignore::Warning:fairlearn")
def test_bounded_group_loss_violations_equal_fairlearn_gamma_and_metric_frame():
    from fairlearn.metrics import MetricFrame
    from fairlearn.reductions import BoundedGroupLoss, SquareLoss
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    preds, target, groups = _batch(n=300, num_groups=3, seed=4, dtype=torch.float64)
    names = ["a", "b", "c"]
    sensitive = pd.Series(np.array(names)[groups.numpy()], name="group")
    X = pd.DataFrame({"i": np.arange(300)})
    y = pd.Series(target.numpy())
    for bound in (0.5, 2.0):
        method = BoundedGroupLossConstraint(3, bound=bound, steps_per_epoch=10, group_names=names)
        method.train()
        method(preds, target, groups)
        method.after_optimizer_step()  # the first update copies the batch's sums
        moment = BoundedGroupLoss(SquareLoss(-100.0, 100.0), upper_bound=bound)
        moment.load_data(X, y, sensitive_features=sensitive)
        gamma = moment.gamma(lambda frame: preds.numpy()[frame["i"].to_numpy()]) - moment.bound()
        expected = gamma.reindex(names).to_numpy()
        np.testing.assert_allclose(method.hard_violations().numpy(), expected, atol=1e-9)
        table = method.state_table()
        np.testing.assert_allclose(table["violation"].to_numpy(), expected, atol=1e-9)
        # the integral moved by dual_lr / steps_per_epoch * violation, the model sees it plus the PI
        # term dual_damping * violation, each projected onto [0, 10]
        integral = np.clip(0.2 * expected, 0, 10)
        np.testing.assert_allclose(method.integral.double().numpy(), integral, atol=1e-6)
        np.testing.assert_allclose(method.multipliers.double().numpy(), np.clip(integral + 2.0 * expected, 0, 10), atol=1e-6)
    frame = MetricFrame(metrics=mean_squared_error, y_true=y, y_pred=preds.numpy(), sensitive_features=sensitive)
    np.testing.assert_allclose(method.group_losses().numpy(), frame.by_group.reindex(names).to_numpy(), atol=1e-6)
    absolute = BoundedGroupLossConstraint(3, bound=1.0, loss="absolute_error", steps_per_epoch=1)
    absolute.train()
    absolute(preds, target, groups)
    absolute.after_optimizer_step()
    frame = MetricFrame(metrics=mean_absolute_error, y_true=y, y_pred=preds.numpy(), sensitive_features=sensitive)
    np.testing.assert_allclose(absolute.group_losses().numpy(), frame.by_group.reindex(names).to_numpy(), atol=1e-6)


def test_bounded_group_loss_term_and_small_groups():
    preds, target, groups = _batch(n=120, num_groups=2, seed=5)
    method = BoundedGroupLossConstraint(2, bound=0.5, steps_per_epoch=1, min_count=10)
    method.multipliers.copy_(torch.tensor([2.0, 3.0]))
    x = preds.clone().requires_grad_(True)
    term = method(x, target, groups)
    losses = torch.stack([((preds - target)[groups == k] ** 2).mean() for k in range(2)])
    assert float(term.detach()) == pytest.approx(float((torch.tensor([2.0, 3.0]) * (losses - 0.5)).sum()), rel=1e-5)
    term.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # a custom per-sample loss
    huber = BoundedGroupLossConstraint(2, bound=0.1, steps_per_epoch=1, loss=lambda p, y: nn.functional.huber_loss(p, y, reduction="none"))
    assert torch.isfinite(huber(preds, target, groups))
    # a group below min_count in the running sums is not constrained
    few = BoundedGroupLossConstraint(2, bound=0.0, steps_per_epoch=1, min_count=10)
    few.train()
    few(preds[:15], target[:15], torch.tensor([0] * 12 + [1] * 3))
    few.after_optimizer_step()
    assert float(few.multipliers[0]) > 0 and float(few.multipliers[1]) == 0.0
    assert few.state_table()["active"].tolist() == [True, False]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, p, y, g: m(torch.randn(len(g), 3), y, g), "`preds` must be one continuous value per sample"),
        (lambda m, p, y, g: m(p, torch.where(g == 0, torch.nan, y), g), "`target` contains NaN"),
        (lambda m, p, y, g: m(p, None, g), "`target` is required"),
        (lambda m, p, y, g: m(p, y[:-1], g), "`target` must have the same length"),
    ],
)
def test_bounded_group_loss_bad_batches_name_the_argument(call, match):
    preds, target, groups = _batch(n=30, num_groups=2, seed=6)
    with pytest.raises(ValueError, match=match):
        call(BoundedGroupLossConstraint(2, bound=1.0, steps_per_epoch=1), preds, target, groups)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bound": -0.1}, "`bound` must be a finite number >= 0"),
        ({"bound": float("nan")}, "`bound`"),
        ({"bound": 1.0, "loss": "huber"}, "`loss` must be one of \\['squared_error', 'absolute_error'\\]"),
        ({"bound": 1.0, "loss": 3}, "`loss`"),
        ({"bound": 1.0, "dual_lr": 0}, "`dual_lr`"),
        ({"bound": 1.0, "memory": -1}, "`memory`"),
        ({"bound": 1.0, "steps_per_epoch": 0}, "`steps_per_epoch`"),
    ],
)
def test_bounded_group_loss_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoundedGroupLossConstraint(2, **kwargs)


def test_regression_penalty_rejects_k_columns_and_nan():
    preds, target, groups = _batch(n=30, num_groups=2, seed=7)
    method = Penalty(2, fairness="regression_demographic_parity")
    with pytest.raises(ValueError, match="`preds` must be one continuous value per sample"):
        method(torch.randn(30, 2), target, groups)
    with pytest.raises(ValueError, match="`target` contains NaN"):
        method(preds, torch.full((30,), float("nan")), groups)


def test_bounded_group_loss_state_round_trips_through_state_dict():
    preds, target, groups = _batch(n=100, num_groups=2, seed=8)
    method = BoundedGroupLossConstraint(2, bound=0.3, steps_per_epoch=4)
    method.train()
    for i in range(5):
        method(preds[i * 20:(i + 1) * 20], target[i * 20:(i + 1) * 20], groups[i * 20:(i + 1) * 20])
        if i < 4:
            method.after_optimizer_step()  # the last step stays pending, as in a checkpoint mid-step
    state = {k: v.clone() for k, v in method.state_dict().items()}
    assert {"multipliers", "running_sums", "num_updates", "steps_per_epoch", "pending_sums", "has_pending"} <= set(state)
    restored = BoundedGroupLossConstraint(2, bound=0.3)
    restored.load_state_dict(state)
    for name in ("multipliers", "running_sums", "num_updates", "num_steps", "steps_per_epoch"):
        assert torch.equal(getattr(restored, name), getattr(method, name)), name
    method.after_optimizer_step()
    restored.after_optimizer_step()  # the pending step and the clock survive the round trip
    assert torch.equal(restored.multipliers, method.multipliers) and float(method.multipliers.sum()) > 0
    assert torch.equal(restored.running_sums, method.running_sums)


# ------------------------------------------------------------------ training
def _quiet_trainer(epochs):
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return pl.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )


@pytest.fixture(scope="module")
def shifted():
    dm = TabularDataModule("group_shift_regression", batch_size=256, official_split=False, dataset_kwargs={"n": 4000})
    dm.setup("fit")
    return dm


def _fit(dm, mode="erm", epochs=8, callbacks=(), **kwargs):
    pl.seed_everything(0, verbose=False)
    module = FairLightningModule(
        MLP(dm.num_features, hidden=(32,)), num_groups=dm.num_groups, group_names=dm.group_names, task="regression",
        mode=mode, lr=1e-2, grad_ratio_every_n_steps=0, **kwargs,
    )
    trainer = _quiet_trainer(epochs)
    trainer.callbacks.extend(callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module, trainer, metrics


def test_bounded_group_loss_keeps_every_group_under_the_bound_on_validation(shifted):
    _, _, erm = _fit(shifted)
    module, _, bgl = _fit(shifted, "bounded_group_loss", bound=BOUND)
    erm_losses = [erm[f"val/mean_squared_error/group={g}"] for g in "AB"]
    bgl_losses = [bgl[f"val/mean_squared_error/group={g}"] for g in "AB"]
    # the bound lies between the unconstrained groups' losses: the constraint bites
    assert erm_losses[0] < BOUND < erm_losses[1], erm_losses
    assert max(bgl_losses) <= BOUND, bgl_losses
    assert float(module.method.multipliers.max()) > 0
    table = module.constraint_state()
    assert list(table.index) == ["group=A", "group=B"] and (table["bound"] == BOUND).all()
    assert "fairness/violation_hard_max_epoch" in bgl


def test_regression_dp_penalty_shrinks_the_gap_monotonically_in_eta(shifted):
    gaps = []
    for eta in (0.0, 0.3, 1.0, 3.0, 10.0):
        _, _, metrics = _fit(shifted, "penalty", fairness="regression_demographic_parity", eta=eta, penalty="squared")
        gaps.append(metrics["val/dp_difference"])
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.25 * gaps[0], gaps


def test_regression_module_logs_regression_metrics_and_predicts_values(shifted):
    module, trainer, metrics = _fit(shifted, "penalty", epochs=2, fairness="regression_demographic_parity")
    for key in ("val/mse", "val/mae", "val/loss", "val/dp_difference", "val/mse_difference", "val/cdf_gap",
                "val/mean_prediction/group=A", "val/mean_squared_error/group=B", "train/loss_epoch"):
        assert key in metrics, key
    assert not any("accuracy" in k or "auroc" in k for k in metrics)
    assert metrics["val/loss"] == pytest.approx(metrics["val/mse"], rel=1e-5)
    x, y, g = shifted.val_tensors
    with torch.no_grad():
        expected = module(x).reshape(-1)
    assert metrics["val/mse"] == pytest.approx(float(((expected - y) ** 2).mean()), rel=1e-5)
    means = [float(expected[g == k].mean()) for k in range(2)]
    assert metrics["val/dp_difference"] == pytest.approx(abs(means[1] - means[0]), rel=1e-4)
    # the CDF bins span the training targets
    edges = module.val_metrics["cdf_gap"].bin_edges
    assert float(edges[0]) < float(shifted.train_tensors[1].min()) and float(edges[-1]) > float(shifted.train_tensors[1].max())
    predictions = torch.cat(trainer.predict(module, datamodule=shifted))
    assert predictions.shape == (len(shifted.test_tensors[1]),)
    with torch.no_grad():
        torch.testing.assert_close(predictions, module(shifted.test_tensors[0]).reshape(-1))
    trainer.test(module, datamodule=shifted, verbose=False)
    assert "test/mse" in trainer.callback_metrics and "test/dp_difference" in trainer.callback_metrics


def test_constant_regression_model_warns_at_the_end_of_fit():
    x, groups = torch.randn(200, 3), torch.arange(200) % 2
    y = x[:, 0] + groups
    loader = DataLoader(TensorDataset(x, y, groups), batch_size=100)
    model = nn.Linear(3, 1)
    nn.init.zeros_(model.weight)
    module = FairLightningModule(model, num_groups=2, task="regression", lr=1e-9, value_range=(-3.0, 4.0))
    with pytest.warns(UserWarning, match="near-\\)constant regression model"):
        _quiet_trainer(1).fit(module, loader, loader)


# ------------------------------------------------------------------ module arguments
def test_regression_module_refuses_classification_methods_and_post_processing():
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="Lagrangian, fairness definition \\['demographic_parity'\\]\\) is for classifiers, but task='regression'"):
        FairLightningModule(model, num_groups=2, task="regression", mode="lagrangian")
    with pytest.raises(ValueError, match="is for classifiers, but task='regression'.*regression_demographic_parity"):
        FairLightningModule(model, num_groups=2, task="regression", mode="penalty")
    with pytest.raises(ValueError, match="is for classifiers"):
        FairLightningModule(model, num_groups=2, task="regression", mode=Lagrangian(2))
    with pytest.raises(ValueError, match="pass task='regression'"):
        FairLightningModule(model, num_groups=2, mode="bounded_group_loss", bound=1.0)
    with pytest.raises(ValueError, match="pass task='regression'"):
        FairLightningModule(model, num_groups=2, mode="penalty", fairness="regression_demographic_parity")
    with pytest.raises(ValueError, match="`task` must be one of"):
        FairLightningModule(model, num_groups=2, task="ordinal")
    with pytest.raises(ValueError, match="`num_classes` does not apply to task='regression'"):
        FairLightningModule(model, num_groups=2, task="regression", num_classes=3)
    with pytest.raises(ValueError, match="task='multiclass' needs `num_classes`"):
        FairLightningModule(model, num_groups=2, task="multiclass")
    with pytest.raises(ValueError, match="task='binary' takes one logit"):
        FairLightningModule(model, num_groups=2, task="binary", num_classes=3)
    with pytest.raises(ValueError, match="`value_range` applies to task='regression'"):
        FairLightningModule(model, num_groups=2, value_range=(0, 1))
    module = FairLightningModule(model, num_groups=2, task="regression", mode="bounded_group_loss", bound=1.0)
    assert module.task == "regression" and module.mode == "bounded_group_loss" and module.hparams.task == "regression"
    with pytest.raises(ValueError, match="prediction_thresholds.*task='regression'"):
        module.prediction_thresholds = object()
    with pytest.raises(ValueError, match="prediction_calibrator.*task='regression'"):
        module.prediction_calibrator = object()
    assert module.prediction_thresholds is None and module.prediction_calibrator is None
    # binary and multiclass are inferred as before
    assert FairLightningModule(nn.Linear(3, 1), num_groups=2).task == "binary"
    assert FairLightningModule(nn.Sequential(nn.Linear(3, 4)), num_groups=2).task == "multiclass"


def test_regression_module_refuses_k_columns_and_classifier_callbacks():
    from fair_lightning.callbacks import GroupCalibrationCallback

    x, groups = torch.randn(64, 3), torch.arange(64) % 2
    loader = DataLoader(TensorDataset(x, x[:, 0], groups), batch_size=32)
    module = FairLightningModule(nn.Linear(3, 2), num_groups=2, task="regression", value_range=(-3.0, 3.0))
    with pytest.raises(ValueError, match="`preds` must be one continuous value per sample"):
        _quiet_trainer(1).fit(module, loader)
    module = FairLightningModule(nn.Linear(3, 1), num_groups=2, task="regression")
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[GroupCalibrationCallback()])
    with pytest.raises(ValueError, match="GroupCalibrationCallback.*task='regression'"):
        trainer.fit(module, loader)


def test_bounded_group_loss_drops_into_an_ordinary_lightning_module():
    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 1)
            self.fairness = BoundedGroupLossConstraint(2, bound=0.1, steps_per_epoch=4)

        def training_step(self, batch, batch_idx):
            x, y, g = batch
            preds = self.net(x).squeeze(-1)
            return nn.functional.mse_loss(preds, y) + self.fairness(preds, y, g)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    x, groups = torch.randn(128, 3), torch.arange(128) % 2
    loader = DataLoader(TensorDataset(x, x[:, 0] + 2 * groups, groups), batch_size=32)
    module = Regressor()
    _quiet_trainer(2).fit(module, loader)
    # 8 training steps: the 7 lazy dual steps ran at the next forward, the last one is pending
    assert int(module.fairness.num_steps) == 8 and int(module.fairness.num_updates) == 7
    assert bool(module.fairness.has_pending) and float(module.fairness.multipliers.max()) > 0
    assert "fairness.multipliers" in module.state_dict()


# ------------------------------------------------------------------ data
def test_group_shift_regression_data():
    data = make_group_shift_regression(20_000, shift=2.0, seed=1, noise=0.5)
    assert data.task == "regression" and data.num_classes is None
    means = data.frame.groupby("group", observed=True)["y"].mean()
    assert means["B"] - means["A"] == pytest.approx(2.0, abs=0.05)
    with pytest.raises(ValueError, match="`noise`"):
        make_group_shift_regression(100, noise=-1.0)
    frame = pd.DataFrame({"x": [0.0, 1.0], "s": pd.Categorical(["a", "b"]), "y": [0.5, 1.5]})
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        TabularData(frame, "y", ("s",), ("x",), ())
    with pytest.raises(ValueError, match="`task` must be one of"):
        TabularData(frame, "y", ("s",), ("x",), (), task="ordinal")
    assert TabularData(frame, "y", ("s",), ("x",), (), task="regression").task == "regression"


def test_bounded_group_loss_warmup_holds_the_multipliers_then_releases_them():
    """`dual_warmup` (the clock shared with Lagrangian): the running sums follow the model from the
    first step, the multipliers stay at 0 for the first `dual_warmup * total_steps` dual steps."""
    method = BoundedGroupLossConstraint(2, bound=0.1, dual_warmup=0.5, total_steps=10, steps_per_epoch=5, min_count=1)
    method.train()
    preds, target, groups = torch.zeros(8), torch.ones(8), torch.tensor([0, 1] * 4)
    seen = []
    for _ in range(10):
        method(preds, target, groups)
        method.after_optimizer_step()
        seen.append(float(method.multipliers.sum()))
    assert int(method.warmup_steps) == 5 and int(method.num_updates) == 10
    assert seen[:5] == [0.0] * 5 and all(b > a > 0 for a, b in zip(seen[5:], seen[6:]))
    # the violation (loss 1 - bound 0.1) moves each multiplier dual_lr / steps_per_epoch * 0.9 per step
    assert seen[5] == pytest.approx(2 * (2.0 / 5 + 2.0) * 0.9)  # integral step + PI term (dual_damping=2)
    with pytest.raises(ValueError, match=r"`dual_warmup` must be a share of training in \[0, 1\), got 1"):
        BoundedGroupLossConstraint(2, bound=0.1, dual_warmup=1)


def test_selection_on_validation_keeps_every_group_under_the_bound(shifted):
    """ConstrainedModelSelection(("bounded_group_loss", bound)) on a regression module: each record is
    the largest group MSE on validation (groups computed here independently), the objective minus
    the MSE, and the restored model meets the bound on validation (the dual alone lands the
    training loss at the bound, so validation straddles it)."""
    from fair_lightning.callbacks import ConstrainedModelSelection

    seen = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            x, y, g = shifted.val_tensors
            with torch.no_grad():
                seen.append((pl_module(x).reshape(-1), y, g))

    selection = ConstrainedModelSelection([("bounded_group_loss", BOUND), ("demographic_parity", 5.0)])
    module, trainer, _ = _fit(shifted, "bounded_group_loss", epochs=8, bound=BOUND, callbacks=[Record(), selection])
    assert len(selection.records) == len(seen) == 8
    for record, (pred, y, g) in zip(selection.records, seen):
        losses = [float(((pred - y)[g == k] ** 2).mean()) for k in range(2)]
        means = [float(pred[g == k].mean()) for k in range(2)]
        assert record["difference/bounded_group_loss"] == pytest.approx(max(losses), rel=1e-6)
        assert record["difference/demographic_parity"] == pytest.approx(abs(means[0] - means[1]), rel=1e-5, abs=1e-6)
        assert record["objective"] == pytest.approx(-float(((pred - y) ** 2).mean()), rel=1e-6)
    assert selection.records[selection.best_index]["feasible"] and "minus the validation MSE" in selection.reason
    metrics = trainer.validate(module, datamodule=shifted, verbose=False)[0]
    assert max(metrics[f"val/mean_squared_error/group={k}"] for k in "AB") <= BOUND
    with pytest.raises(RuntimeError, match="regression model"):
        selection.mixture()


def test_selection_refuses_constraints_of_the_other_task(shifted):
    from fair_lightning.callbacks import ConstrainedModelSelection

    with pytest.raises(ValueError, match=r"task='regression'\) is judged on \['bounded_group_loss', 'demographic_parity'\]"):
        _fit(shifted, epochs=1, callbacks=[ConstrainedModelSelection([("equalized_odds", 0.1)])])
    with pytest.raises(ValueError, match="fits group thresholds of a classifier"):
        _fit(shifted, epochs=1, callbacks=[ConstrainedModelSelection([("bounded_group_loss", 1.0)], thresholds=True)])
    x, groups = torch.randn(64, 3), torch.arange(64) % 2
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).float(), groups), batch_size=32)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[ConstrainedModelSelection([("bounded_group_loss", 1.0)])])
    with pytest.raises(ValueError, match="'bounded_group_loss' judges a regression model"):
        trainer.fit(FairLightningModule(nn.Linear(3, 1), num_groups=2), loader, loader)
