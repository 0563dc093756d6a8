"""Adversarial(sensitive="continuous"): the adversary regresses a real-valued attribute (drop-in path)."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.methods import Adversarial, FairnessMethod
from fair_lightning.module import FairLightningModule
from tests._ddp import run_on_ranks


def _leaky(n=3000, seed=0):
    """The label depends on a continuous attribute (age, in years) that a feature shows: ERM's
    score then carries the attribute."""
    gen = torch.Generator().manual_seed(seed)
    age = 40 + 12 * torch.randn(n, generator=gen)
    z = (age - 40) / 12
    x = torch.randn(n, 4, generator=gen)
    x[:, 3] = z + 0.2 * torch.randn(n, generator=gen)
    y = ((x[:, 0] + 0.5 * x[:, 1] + 1.2 * z + 0.3 * torch.randn(n, generator=gen)) > 0).float()
    return x, y, age


class _Module(pl.LightningModule):
    """An ordinary module (automatic optimization); ``fairness`` is the drop-in."""

    def __init__(self, fairness: FairnessMethod | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
        self.fairness = fairness

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y, age = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        if self.fairness is not None:
            loss = loss + self.fairness(logits, y, age)  # the attribute in the groups' place
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)  # the adversary's parameters join


def _r2_of_fresh_regressor(score, attribute):
    """R^2 of a cubic least-squares fit of the attribute on the score (a fresh adversary)."""
    s = (score - score.mean()) / score.std()
    design = torch.stack((torch.ones_like(s), s, s**2, s**3), 1).double()
    target = attribute.double()
    coef = torch.linalg.lstsq(design, target[:, None]).solution
    residual = target - (design @ coef)[:, 0]
    return float(1 - residual.var() / target.var())


def _fit(fairness):
    x, y, age = _leaky()
    pl.seed_everything(0, verbose=False)
    module = _Module(fairness)
    train = DataLoader(TensorDataset(x[:2000], y[:2000], age[:2000]), batch_size=128, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, train)
    module.eval()
    with torch.no_grad():
        score = torch.sigmoid(module(x[2000:]))
    accuracy = float(((score > 0.5).float() == y[2000:]).float().mean())
    return module, score, age[2000:], accuracy


def test_continuous_adversary_removes_the_attribute_from_the_prediction():
    _, erm_score, age, erm_accuracy = _fit(None)
    # eta=2: R^2 0.42 -> 0.05, |corr| 0.62 -> 0.21, accuracy 0.925 -> 0.816 (eta=1: R^2 0.12 at 0.866; eta=4: 0.003 at 0.729)
    module, fair_score, _, fair_accuracy = _fit(Adversarial(sensitive="continuous", eta=2.0))
    erm_r2, fair_r2 = _r2_of_fresh_regressor(erm_score, age), _r2_of_fresh_regressor(fair_score, age)
    erm_corr = abs(float(torch.corrcoef(torch.stack((erm_score, age)))[0, 1]))
    fair_corr = abs(float(torch.corrcoef(torch.stack((fair_score, age)))[0, 1]))
    assert erm_r2 > 0.3 and erm_corr > 0.5, (erm_r2, erm_corr)  # ERM's score carries age
    assert fair_r2 < 0.25 * erm_r2 and fair_corr < 0.5 * erm_corr, (fair_r2, erm_r2, fair_corr, erm_corr)
    # the cost: age explains part of the label, so hiding it costs accuracy, but far above chance
    assert fair_accuracy > 0.7 and fair_accuracy > erm_accuracy - 0.2, (fair_accuracy, erm_accuracy)
    # the running moments standardize the attribute: mean ~40, sd ~12 of the training ages seen
    method = module.fairness
    assert float(method.sensitive_mean) == pytest.approx(40, abs=1.5)
    std = float((method.sensitive_m2 / (method.sensitive_count - 1)).sqrt())
    assert std == pytest.approx(12, abs=1.5)
    assert {"fairness.sensitive_mean", "fairness.sensitive_m2", "fairness.sensitive_count"} <= set(module.state_dict())


@pytest.mark.parametrize("num_classes,fairness", [(None, "demographic_parity"), (3, "equalized_odds")])
def test_continuous_adversary_shapes_and_gradient_reversal(num_classes, fairness):
    method = Adversarial(sensitive="continuous", num_classes=num_classes, fairness=fairness, eta=2.0)
    n = 16
    logits = torch.randn(n, num_classes or 1).squeeze(-1).requires_grad_()
    target = torch.randint(0, num_classes or 2, (n,)).float() if num_classes is None else torch.randint(0, 3, (n,))
    income = torch.rand(n) * 1e5  # any units: standardized inside
    loss = method(logits, target, income)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    head = method.adversary[-1]
    assert head.out_features == 1 and head.weight.grad is not None
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # the reversed gradient reaches the model
    assert method.diagnostics()["train/adversary_loss"] == pytest.approx(float(loss))


def test_continuous_adversary_bad_inputs_name_the_argument():
    method = Adversarial(sensitive="continuous")
    logits = torch.randn(8)
    with pytest.raises(ValueError, match=r"`groups` \(the continuous sensitive attribute.*floating-point.*int64"):
        method(logits, None, torch.randint(0, 2, (8,)))
    with pytest.raises(ValueError, match=r"`groups` .* must be finite, got 1 NaN"):
        method(logits, None, torch.tensor([0.0, 1, 2, float("nan"), 4, 5, 6, 7]))
    with pytest.raises(ValueError, match=r"`groups` .* one value per sample \(8\), got 7"):
        method(logits, None, torch.randn(7))
    with pytest.raises(ValueError, match=r"`groups` must have shape"):
        method(logits, None, torch.randn(8, 2))
    with pytest.raises(ValueError, match="`num_groups` must be None with sensitive='continuous'"):
        Adversarial(2, sensitive="continuous")
    with pytest.raises(ValueError, match="`num_groups` is required"):
        Adversarial()
    with pytest.raises(ValueError, match="`sensitive` must be one of"):
        Adversarial(2, sensitive="real")
    with pytest.raises(ValueError, match="`group_names` must be None"):
        Adversarial(sensitive="continuous", group_names=["a", "b"])
    with pytest.raises(ValueError, match="one value per sample, got shape"):
        Adversarial(sensitive="continuous", adversary=nn.Linear(1, 2))(logits, None, torch.randn(8))
    # the module needs groups for its metrics: a continuous adversary is refused there, by name
    with pytest.raises(ValueError, match="`num_groups` must be None"):
        FairLightningModule(nn.Linear(4, 1), num_groups=2, mode="adversarial", sensitive="continuous")


def test_group_adversary_is_unchanged():
    method = Adversarial(2)
    assert method.sensitive == "groups" and method.adversary[-1].out_features == 2
    assert not any(k.startswith("sensitive_") for k in method.state_dict())
    loss = method(torch.randn(8), None, torch.randint(0, 2, (8,)))
    assert torch.isfinite(loss)


def _standardize_on_rank(rank, world_size, module):
    """Each rank standardizes its half of every global batch; the running moments are the global ones."""
    import torch

    from fair_lightning.methods import Adversarial

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2 * 6, generator=gen, dtype=torch.float64) * 3.0 + 40.0 for _ in range(4)]
    method = Adversarial(sensitive="continuous", eta=1.0)
    method.train()
    outs = []
    for batch in batches:
        local = batch.view(world_size, -1)[rank] if world_size > 1 else batch
        outs.append(method._standardize(local))
    return {"count": float(method.sensitive_count), "mean": float(method.sensitive_mean),
            "m2": float(method.sensitive_m2), "last": outs[-1]}


@pytest.mark.ddp
def test_running_moments_are_reduced_across_ranks(tmp_path):
    """Under 2-process DDP the attribute's running mean and variance (and so the adversary's
    regression target) are those of the whole global batch, as on one process."""
    import torch

    single = _standardize_on_rank(0, 1, None)
    ranks = run_on_ranks(_standardize_on_rank, tmp_path)
    all_values = torch.cat([torch.randn(12, generator=g, dtype=torch.float64) * 3.0 + 40.0
                            for g in [torch.Generator().manual_seed(0)] for _ in range(4)])
    assert single["count"] == 48 and single["mean"] == pytest.approx(float(all_values.mean()), rel=1e-12)
    assert single["m2"] / 47 == pytest.approx(float(all_values.var()), rel=1e-9)
    for r, out in enumerate(ranks):
        for key in ("count", "mean", "m2"):
            assert out[key] == pytest.approx(single[key], rel=1e-12), (r, key)
        assert torch.allclose(out["last"], single["last"].view(2, -1)[r], rtol=1e-12)
