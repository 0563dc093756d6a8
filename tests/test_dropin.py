"""The drop-in path: fairness methods inside an ordinary LightningModule (automatic optimization,
its own training_step, metrics and scheduler), and FairLightningModule subclasses that keep
their own training_step."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAccuracy

from fair_lightning.functional import demographic_parity_difference
from fair_lightning.methods import ERM, Adversarial, FairnessMethod, Lagrangian, Penalty
from fair_lightning.module import FairLightningModule

BATCH, EPOCHS, LR = 128, 6, 1e-2


def _biased(n=3000, seed=0):
    """The label depends on the group; a feature leaks the group, so ERM learns a large DP gap."""
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(n, generator=gen) < 0.4).long()
    x = torch.randn(n, 5, generator=gen)
    x[:, 4] += 1.5 * g
    y = ((x[:, 0] + 0.5 * x[:, 1] + 2.0 * g + 0.4 * torch.randn(n, generator=gen)) > 1.0).float()
    return x, y, g


def _loaders(seed=0):
    x, y, g = _biased(seed=seed)
    train = DataLoader(TensorDataset(x[:2000], y[:2000], g[:2000]), batch_size=BATCH, shuffle=True)
    val = DataLoader(TensorDataset(x[2000:2500], y[2000:2500], g[2000:2500]), batch_size=500)
    return train, val, (x[2500:], y[2500:], g[2500:])


class TemplateModule(pl.LightningModule):
    """A module in the style of lightning-hydra-template's MNISTLitModule: its own step, its own
    torchmetrics and a StepLR from configure_optimizers; ``fairness`` is the drop-in."""

    def __init__(self, fairness: FairnessMethod | None = None, lr: float = LR):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))
        self.fairness = fairness  # drop-in, line 1
        self.criterion = nn.BCEWithLogitsLoss()
        self.train_acc, self.val_acc = BinaryAccuracy(), BinaryAccuracy()
        self.lr = lr
        self.lrs: list[float] = []

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def model_step(self, batch):
        x, y, groups = batch
        logits = self(x)
        return self.criterion(logits, y), logits, y, groups

    def training_step(self, batch, batch_idx):
        loss, logits, y, groups = self.model_step(batch)
        if self.fairness is not None:
            loss = loss + self.fairness(logits, y, groups)  # drop-in, line 2
        self.train_acc(logits.sigmoid(), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, y, _ = self.model_step(batch)
        self.val_acc(logits.sigmoid(), y)
        self.log("val/loss", loss)
        self.log("val/acc", self.val_acc)

    def on_train_epoch_end(self):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}


def _trainer(**kwargs):
    return pl.Trainer(max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def _test_dp(module, test):
    x, y, g = test
    module.eval()
    with torch.no_grad():
        logits = module(x).reshape(-1)
    return float(demographic_parity_difference(logits, g, 2, from_logits=True))


def _fit(fairness, seed=0):
    pl.seed_everything(seed)
    train, val, test = _loaders(seed)
    module = TemplateModule(fairness)
    _trainer().fit(module, train, val)
    return module, _test_dp(module, test)


STEPS = -(-2000 // BATCH)
DROP_IN = {
    "penalty": lambda: Penalty(2, eta=4.0),
    "lagrangian": lambda: Lagrangian(2, tolerance=0.02, steps_per_epoch=STEPS),
    "adversarial": lambda: Adversarial(2, eta=2.0),
}


@pytest.fixture(scope="module")
def erm_dp():
    module, dp = _fit(None)
    assert dp > 0.3, "the biased set must give the unconstrained model a large DP gap"
    return dp


@pytest.mark.parametrize("name", list(DROP_IN))
def test_drop_in_method_in_an_ordinary_module(name, erm_dp):
    module, dp = _fit(DROP_IN[name]())
    # the user's scheduler ran as Lightning runs it: StepLR halves the lr every epoch
    assert module.lrs == pytest.approx([LR * 0.5 ** (e + 1) for e in range(EPOCHS)])
    assert dp < 0.5 * erm_dp, (name, dp, erm_dp)
    assert int(module.fairness.num_steps) == EPOCHS * STEPS
    if name == "lagrangian":
        # the dual step ran after each optimizer step (the last one is pending until the next forward)
        assert int(module.fairness.multipliers.num_updates) == EPOCHS * STEPS - 1
        assert bool(module.fairness.has_pending)
        assert module.fairness.multipliers.multipliers.max() > 0
        assert "method" not in module.state_dict() and "fairness.multipliers.multipliers" in module.state_dict()
    if name == "adversarial":  # the adversary trained in the user's optimizer (its parameters joined)
        params = {id(p) for group in module.trainer.optimizers[0].param_groups for p in group["params"]}
        assert all(id(p) in params for p in module.fairness.adversary.parameters())


def test_drop_in_erm_term_is_zero():
    method = ERM(2)
    assert method(torch.randn(4), torch.tensor([0.0, 1, 1, 0]), torch.tensor([0, 1, 0, 1])).item() == 0.0


def test_drop_in_lagrangian_without_steps_per_epoch_warns_once():
    method = Lagrangian(2)
    logits, y, g = torch.randn(8), torch.randint(0, 2, (8,)).float(), torch.arange(8) % 2
    with pytest.warns(UserWarning, match="`steps_per_epoch` is not set"):
        method(logits, y, g)
    assert int(method.steps_per_epoch) == 100


class SubclassWithOwnStep(FairLightningModule):
    """A FairLightningModule subclass keeping a template-style training_step and optimizers."""

    def __init__(self, call_method=True, **kwargs):
        super().__init__(nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1)), num_groups=2, **kwargs)
        self.call_method = call_method
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y, groups = batch
        logits = self(x).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        if self.call_method:
            loss = loss + self.method(logits, y, groups)
        return loss

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        self.lrs.append(self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=LR)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


@pytest.mark.parametrize("mode", ["erm", "penalty"])
def test_subclass_keeping_its_training_step_trains_and_steps_its_scheduler(mode, erm_dp):
    pl.seed_everything(0)
    train, val, test = _loaders()
    module = SubclassWithOwnStep(mode=mode, **({"eta": 4.0} if mode == "penalty" else {}))
    before = [p.detach().clone() for p in module.parameters()]
    _trainer().fit(module, train, val)
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))  # the weights moved
    assert module.lrs == pytest.approx([LR * 0.5 ** (e + 1) for e in range(EPOCHS)])
    if mode == "penalty":
        assert _test_dp(module, test) < 0.5 * erm_dp
        assert int(module.method.num_steps) == EPOCHS * STEPS


def test_subclass_step_that_skips_the_method_is_refused():
    train, val, _ = _loaders()
    module = SubclassWithOwnStep(call_method=False, mode="lagrangian")
    with pytest.raises(RuntimeError, match=r"never called `self.method\(logits, target, groups\)`.*'lagrangian'"):
        _trainer(max_steps=1).fit(module, train)


def test_subclass_calling_super_training_step_is_not_optimized_twice():
    class Recorder(FairLightningModule):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.seen = getattr(self, "seen", 0) + 1
            return out

    train, _, _ = _loaders()
    module = Recorder(nn.Linear(5, 1), num_groups=2, mode="penalty")
    _trainer(max_steps=3).fit(module, train)
    assert module.seen == 3 and int(module.method.num_steps) == 3  # one method step per batch, not two


def test_fair_lightning_module_steps_a_step_interval_scheduler():
    train, _, _ = _loaders()
    module = FairLightningModule(
        nn.Linear(5, 1), num_groups=2, mode="erm", lr=1.0,
        lr_scheduler=lambda opt: {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), "interval": "step", "frequency": 2},
    )
    _trainer(max_steps=8).fit(module, train)
    # stepped on steps 2, 4, 6, 8 (frequency 2): the StepLR counter is 4 -> lr halved twice
    assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.25)
