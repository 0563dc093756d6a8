"""FairLightningModule with K logits: cross-entropy, multiclass metrics, softmax predictions."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.functional import multiclass_demographic_parity_difference
from fair_lightning.methods import Penalty
from fair_lightning.module import FairLightningModule

K, G = 3, 2


def _data(n=1200, seed=0):
    """Class 2 is much more frequent in group 1, and a feature leaks the group."""
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(n, generator=gen) < 0.5).long()
    x = torch.randn(n, 4, generator=gen)
    x[:, 3] += 2.0 * g
    score = torch.stack((x[:, 0], x[:, 1], x[:, 2] + 2.0 * g), 1) + 0.3 * torch.randn(n, K, generator=gen)
    y = score.argmax(1)
    return x, y, g


def _loaders():
    x, y, g = _data()
    train = DataLoader(TensorDataset(x[:800], y[:800], g[:800]), batch_size=100, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[800:], y[800:], g[800:]), batch_size=400)
    return train, val, (x[800:], y[800:], g[800:])


def _mlp():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, K))


def _trainer(**kwargs):
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    max_epochs=4)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def _fit(mode, **kwargs):
    pl.seed_everything(0, verbose=False)
    module = FairLightningModule(_mlp(), num_groups=G, mode=mode, lr=2e-2, **kwargs)
    train, val, test = _loaders()
    trainer = _trainer()
    trainer.fit(module, train, val)
    return module, trainer, test


def test_k_logits_train_validate_predict():
    module, trainer, (x, y, g) = _fit("penalty", eta=1.0, fairness="demographic_parity")
    assert module.num_classes == K  # read from the nn.Sequential's last Linear
    metrics = trainer.callback_metrics
    for key in ("val/selection_rate/class_2/group_1", "val/dp_difference", "val/eo_difference", "val/accuracy",
                "val/accuracy/group_0", "val/loss"):
        assert key in metrics, key
    module.eval()
    with torch.no_grad():
        logits = module(x)
    expected_dp = multiclass_demographic_parity_difference(logits, g, G, K, from_logits=True)
    assert float(metrics["val/dp_difference"]) == pytest.approx(float(expected_dp), abs=1e-6)
    assert float(metrics["val/accuracy"]) == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-6)
    assert float(metrics["val/accuracy"]) > 0.6
    probs = torch.cat(trainer.predict(module, DataLoader(TensorDataset(x, y, g), batch_size=128)))
    assert probs.shape == (len(x), K)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(x)))
    torch.testing.assert_close(probs, torch.softmax(logits, 1))
    test = trainer.test(module, DataLoader(TensorDataset(x, y, g), batch_size=400), verbose=False)[0]
    assert test["test/dp_difference"] == pytest.approx(float(expected_dp), abs=1e-6)


def test_penalty_lowers_multiclass_dp_against_erm():
    erm, erm_trainer, _ = _fit("erm")
    fair, fair_trainer, _ = _fit("penalty", eta=3.0)
    dp_erm = float(erm_trainer.callback_metrics["val/dp_difference"])
    dp_fair = float(fair_trainer.callback_metrics["val/dp_difference"])
    assert dp_erm > 0.2
    assert dp_fair < 0.6 * dp_erm


def test_task_loss_is_cross_entropy_and_explicit_num_classes():
    class Net(nn.Module):  # not an nn.Sequential: num_classes must be given
        def __init__(self):
            super().__init__()
            self.body = _mlp()

        def forward(self, x):
            return self.body(x)

    module = FairLightningModule(Net(), num_groups=G, num_classes=K, class_names=["a", "b", "c"])
    logits, target = torch.randn(5, K), torch.tensor([0, 1, 2, 1, 0])
    assert float(module.task_loss(logits, target)) == pytest.approx(float(nn.functional.cross_entropy(logits, target)))
    binary = FairLightningModule(Net(), num_groups=G)
    x, y, g = _data(20)
    with pytest.raises(ValueError, match=r"num_classes=3"):
        binary.training_step((x, y, g), 0)
    # a ready method's num_classes is the module's
    assert FairLightningModule(Net(), num_groups=G, mode=Penalty(G, num_classes=K)).num_classes == K


@pytest.mark.parametrize(
    ("kwargs", "batch", "match"),
    [
        ({}, (torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.zeros(6, dtype=torch.long)), r"`target` must be class indices < num_classes=3"),
        ({}, (torch.randn(6, 4), torch.eye(K)[torch.zeros(6, dtype=torch.long)], torch.zeros(6, dtype=torch.long)), r"`target`.*one-hot"),
        ({}, (torch.randn(6, 4), torch.rand(6), torch.zeros(6, dtype=torch.long)), r"`target`.*regression"),
    ],
)
def test_bad_k_class_batches(kwargs, batch, match):
    module = FairLightningModule(_mlp(), num_groups=G, mode="penalty", **kwargs)
    with pytest.raises(ValueError, match=match):
        module._check_batch(module(batch[0]), batch[1], batch[2])


def test_bad_k_class_arguments():
    with pytest.raises(ValueError, match=r"`class_names` needs `num_classes`"):
        FairLightningModule(nn.Linear(4, 1), num_groups=G, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"`class_names` must have num_classes=3 entries"):
        FairLightningModule(_mlp(), num_groups=G, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"num_classes=4, but the module has num_classes=3"):
        FairLightningModule(_mlp(), num_groups=G, mode=Penalty(G, num_classes=4))


# --- selection on validation for K classes ----------------------------------------------------------
def test_constrained_selection_judges_every_class():
    """ConstrainedModelSelection on a K-class module: each record's difference is the multiclass DP
    difference (worst class) of that epoch's argmax predictions on validation, the objective their
    accuracy, and the restored weights are the chosen epoch's."""
    from fair_lightning.callbacks import ConstrainedModelSelection

    seen = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            with torch.no_grad():
                seen.append(pl_module(x).argmax(1))

    pl.seed_everything(0, verbose=False)
    module = FairLightningModule(_mlp(), num_groups=G, mode="lagrangian", lr=2e-2, constraints="demographic_parity",
                                 tolerance=0.05)
    train, val, (x, y, g) = _loaders()
    selection = ConstrainedModelSelection([("demographic_parity", 0.05)], min_count=0)
    trainer = _trainer(callbacks=[Record(), selection], num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    assert len(selection.records) == len(seen) == 4
    for record, pred in zip(selection.records, seen):
        expected = float(multiclass_demographic_parity_difference(pred, g, num_groups=G, num_classes=K))
        assert record["difference/demographic_parity"] == pytest.approx(expected, abs=1e-12)
        assert record["objective"] == pytest.approx(float((pred == y).double().mean()), abs=1e-12)
        assert record["rates"]["selection_rate"].shape == (K, G)
        assert record["feasible"] == (expected <= 0.05 + 1e-12)
    with torch.no_grad():
        restored = module(x).argmax(1)
    assert torch.equal(restored, seen[selection.best_index])
    weights = selection.mixture()
    assert sum(w for w, _, _ in weights) == pytest.approx(1.0)


def test_constrained_selection_thresholds_are_binary_only():
    from fair_lightning.callbacks import ConstrainedModelSelection

    pl.seed_everything(0, verbose=False)
    module = FairLightningModule(_mlp(), num_groups=G, mode="erm", lr=2e-2)
    train, val, _ = _loaders()
    trainer = _trainer(callbacks=[ConstrainedModelSelection([("demographic_parity", 0.05)], thresholds=True)],
                       num_sanity_val_steps=0, max_epochs=1)
    with pytest.raises(ValueError, match=r"thresholds=True.*3 classes"):
        trainer.fit(module, train, val)
