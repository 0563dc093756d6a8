"""Rows of ../shared/audits/bad-inputs.md that were unclear, crashing, silent or NaN in 0.1: each
now raises a clear error naming the argument, or returns NaN with a warning (one test per row)."""

import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.calibration import GroupFairnessCalibrator, multicalibration_audit
from fair_lightning.losses import DemographicParityLoss
from fair_lightning.metrics import DemographicParityDifference, DemographicParityRatio
from fair_lightning.module import FairLightningModule


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _loader(n=64, groups=None, x_dtype=torch.float32, batch_size=16):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen).to(x_dtype)
    g = torch.randint(0, 2, (n,), generator=gen) if groups is None else groups
    y = (torch.rand(n, generator=gen) < 0.5).float()
    return DataLoader(TensorDataset(x, y, g), batch_size=batch_size)


def _fit(module, loader, **kwargs):
    trainer = pl.Trainer(max_steps=kwargs.pop("max_steps", 2), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **kwargs)
    trainer.fit(module, loader)
    return trainer


# --- metrics: M9, M9b, M9c ------------------------------------------------------------------
def test_m9_difference_after_an_empty_batch_is_nan_with_a_warning():
    metric = DemographicParityDifference(2)
    metric.update(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    with pytest.warns(UserWarning, match="undefined: no group has a defined rate"):
        assert torch.isnan(metric.compute())


def test_m9b_ratio_after_an_empty_batch_is_nan_with_a_warning():
    metric = DemographicParityRatio(2)
    metric.update(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    with pytest.warns(UserWarning, match="ratio is undefined"):
        assert torch.isnan(metric.compute())


def test_m9c_difference_without_any_update_is_nan_with_a_warning():
    with pytest.warns(UserWarning):  # torchmetrics' "compute before update" and ours
        assert torch.isnan(DemographicParityDifference(2).compute())


def test_one_group_seen_is_zero_difference_as_fairlearn():
    metric = DemographicParityDifference(2)
    metric.update(torch.tensor([0.9, 0.1]), None, torch.tensor([0, 0]))
    assert metric.compute().item() == 0.0


# --- losses and unchecked batches: L10, F16b, F16c -------------------------------------------
def test_l10_unchecked_loss_names_out_of_range_groups():
    loss = DemographicParityLoss(2, validate_args=False)
    with pytest.raises(IndexError, match=r"`groups` must be ids in \[0, num_groups=2\), got values in \[0, 5\]"):
        loss(torch.randn(4), None, torch.tensor([0, 0, 1, 5]))


@pytest.mark.parametrize("mode", ["lagrangian", "penalty"])
def test_f16b_f16c_unchecked_bad_group_ids_get_a_clear_error(mode):
    module = FairLightningModule(_mlp(), num_groups=2, mode=mode, validate_args=False)
    with pytest.raises(ValueError, match=r"`groups` must be ids in \[0, num_groups=2\), got values in \[0, 2\].*validate_args=False"):
        _fit(module, _loader(groups=torch.arange(64) % 3))


# --- the module: F5c-F5f, F7, F12, F28, F29, X5-X7 ------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "unknown"),
    [
        ({"mode": "erm", "constraints": "typo", "fairness": "typo"}, "`constraints`, `fairness` are not arguments of method 'erm'"),
        ({"mode": "penalty", "constraints": "equalized_odds"}, "`constraints` is not an argument of method 'penalty'"),
        ({"mode": "lagrangian", "fairness": "equalized_odds"}, "`fairness` is not an argument of method 'lagrangian'"),
        ({"mode": "adversarial", "constraints": "equalized_odds"}, "`constraints` is not an argument of method 'adversarial'"),
        ({"mode": "erm", "eta": 2.0}, "`eta` is not an argument of method 'erm'"),
    ],
)
def test_f5_an_argument_the_method_does_not_take_is_an_error(kwargs, unknown):
    with pytest.raises(TypeError, match=unknown + r".*its arguments are \["):
        FairLightningModule(_mlp(), num_groups=2, **kwargs)


def test_a_method_object_with_extra_arguments_is_an_error():
    from fair_lightning.methods import Penalty

    with pytest.raises(TypeError, match=r"\['eta'\] given alongside a ready Penalty"):
        FairLightningModule(_mlp(), num_groups=2, mode=Penalty(2), eta=2.0)
    with pytest.raises(ValueError, match="has num_groups=3, but the module has num_groups=2"):
        FairLightningModule(_mlp(), num_groups=2, mode=Penalty(3))


def test_f7_one_group_with_a_fairness_method_is_an_error():
    with pytest.raises(ValueError, match="`num_groups` must be >= 2 for Lagrangian: fairness compares groups"):
        FairLightningModule(_mlp(), num_groups=1, mode="lagrangian")
    FairLightningModule(_mlp(), num_groups=1, mode="erm")  # ERM compares nothing: allowed


def test_f12_dict_batches_with_other_keys_name_the_expected_keys():
    module = FairLightningModule(_mlp(), num_groups=2)
    with pytest.raises(ValueError, match=r"a dict batch must have the keys 'x', 'target' and 'groups', got keys \['features', 'group', 'label'\]"):
        module.unpack_batch({"features": 1, "label": 2, "group": 3})


def test_f28_unknown_constraint_key_is_an_error():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tol'\]"):
        FairLightningModule(_mlp(), num_groups=2, mode="lagrangian", constraints={"definition": "demographic_parity", "tol": 0.05})


def test_f29_float64_features_into_a_float32_model_name_the_dtypes():
    module = FairLightningModule(_mlp(), num_groups=2)
    with pytest.raises(ValueError, match=r"features `x` have dtype torch.float64 but the model's parameters are torch.float32"):
        _fit(module, _loader(x_dtype=torch.float64))


def test_f29_predicting_float64_features_names_the_dtypes_too():
    module = FairLightningModule(_mlp(), num_groups=2)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"features `x` have dtype torch.float64 but the model's parameters are torch.float32"):
        trainer.predict(module, _loader(x_dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dual_lr": float("inf")}, r"`dual_lr` must be a finite number > 0 and <= \S+, got inf"),
        ({"multiplier_max": float("inf")}, r"`multiplier_max` must be a finite number > 0 and <= \S+, got inf"),
        ({"dual_lr": float("nan")}, r"`dual_lr` must be a finite number > 0 and <= \S+, got nan"),
        # X6 proper: finite, but beyond float32, overflowed inside torch ("value cannot be converted")
        ({"dual_lr": 1e300}, r"`dual_lr` must be a finite number > 0 and <= 3.4028\d*e\+38, got 1e\+300"),
        ({"multiplier_max": 1e40}, r"`multiplier_max` must be a finite number > 0 and <= 3.4028\d*e\+38, got 1e\+40"),
        ({"dual_damping": 1e300}, r"`dual_damping` must be a finite number >= 0 and <= 3.4028\d*e\+38, got 1e\+300"),
    ],
)
def test_x5_x6_non_finite_dual_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FairLightningModule(_mlp(), num_groups=2, mode="lagrangian", **kwargs)


def test_x7_a_nan_multiplier_stops_training_naming_the_multipliers():
    module = FairLightningModule(
        _mlp(), num_groups=2, mode="lagrangian", min_count=1, tolerance=0.0,
        dual_optimizer=lambda params: torch.optim.SGD(params, lr=float("nan")),
    )
    with pytest.raises(FloatingPointError, match="Lagrange multipliers are not finite.*`dual_optimizer`"):
        _fit(module, _loader())


def test_a_collapsed_model_is_flagged_at_the_end_of_fit():
    """lr=10 (the audit's case) drives a model to one class; the end of fit says so."""

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([8.0]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 1) + 0 * x[:, :1]

    module = FairLightningModule(Constant(), num_groups=2, lr=1e-6)
    with pytest.warns(UserWarning, match=r"predicts class 1 for 100.0% of the validation samples: a \(near-\)constant classifier"):
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(module, _loader(), _loader())


# --- calibration: C3-temperature, C15 --------------------------------------------------------
def test_c3_temperature_group_with_one_label_falls_back_and_says_so():
    gen = torch.Generator().manual_seed(0)
    n = 400
    groups = torch.randint(0, 3, (n,), generator=gen)
    logits = 2 * torch.randn(n, generator=gen)
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(logits)).long()
    labels[groups == 1] = 0
    with pytest.warns(UserWarning, match="hold a single label; temperature scaling"):
        cal = GroupFairnessCalibrator("temperature").fit(logits, labels, groups)
    report = cal.report().set_index("group")
    assert report.loc["group_1", "map"] == "global" and "all with one label" in report.loc["group_1", "reason"]
    assert report.loc["group_0", "map"] == "own"
    probs = cal.transform(logits, groups)
    assert torch.isfinite(probs).all()


def test_c15_audit_without_sensitive_names_it():
    with pytest.raises(ValueError, match="`sensitive` is required.*got None"):
        multicalibration_audit(np.full(10, 0.5), np.zeros(10), None)


# --- scikit-learn: S9 --------------------------------------------------------------------
def test_s9_continuous_sensitive_feature_warns():
    from fair_lightning import FairNeuralClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] > 0).astype(int)
    A = rng.normal(size=300)  # 300 distinct floats: 300 groups of one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            FairNeuralClassifier(mode="erm", max_epochs=1).fit(X, y, sensitive_features=A)
        except Exception:  # noqa: BLE001 - only the warning matters here
            pass
    assert any("looks continuous: 300 distinct values in 300 rows" in str(w.message) for w in caught)


def test_m19_two_column_groups_point_to_intersectional_ids_not_to_k_class_scores():
    from fair_lightning.metrics import fairness_metrics

    with pytest.raises(ValueError, match=r"`groups` must have shape \(N,\) or \(N, 1\), got tensor of shape \(2, 2\).*"
                                         r"for 2 sensitive attributes, one intersectional id per row: GroupSpec"):
        fairness_metrics(2).update(torch.rand(2), torch.tensor([0, 1]), torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="3 columns are K-class scores or one-hot labels"):
        fairness_metrics(2).update(torch.rand(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_f10_a_sequential_ending_in_ten_outputs_with_binary_labels_warns_after_the_first_epoch():
    """Audit rows F9/F10: an nn.Sequential ending in K > 1 outputs is read as a K-class model (as
    documented); with K > 2 and only 0/1 labels that is most likely a binary model built wrong."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    module = FairLightningModule(model, num_groups=2)
    assert module.num_classes == 10
    with pytest.warns(UserWarning, match=r"num_classes=10 was inferred from the model's last layer \(10 outputs\), but every "
                                         r"label of the first epoch is 0 or 1"):
        _fit(module, _loader(), max_steps=8)  # two epochs of 4 batches
    # stated explicitly: no warning
    explicit = FairLightningModule(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10)), num_groups=2, num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(explicit, _loader(), max_steps=8)
    assert not [w for w in caught if "was inferred" in str(w.message)]
