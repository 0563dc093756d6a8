"""Cross-fitted group thresholds and the fold mixture (``fair_lightning.crossfit``)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from fair_lightning.crossfit import FoldMixture, cross_fit, fold_of
from fair_lightning.data import TabularDataModule, make_biased_lending
from fair_lightning.functional import constraint_holds, group_sums
from fair_lightning.models import MLP
from fair_lightning.module import FairLightningModule
from fair_lightning.postprocessing import GroupThresholds
from tests._ddp import DestroyProcessGroup


# ------------------------------------------------------------------------------------- fold_of
def test_fold_of_is_a_function_of_the_row_alone():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 7, generator=gen)
    folds = fold_of(x, 5)
    assert folds.dtype == torch.int64 and folds.shape == (5000,)
    assert int(folds.min()) == 0 and int(folds.max()) == 4
    # the same row gets the same fold in any batch, order or dtype it arrives in
    perm = torch.randperm(5000, generator=gen)
    assert torch.equal(fold_of(x[perm], 5), folds[perm])
    assert torch.equal(torch.cat([fold_of(x[:7], 5), fold_of(x[7:], 5)]), folds)
    assert torch.equal(fold_of(x.double(), 5), folds)
    assert torch.equal(fold_of(x.reshape(5000, 7, 1), 5), folds)
    # near uniform (each of 5 folds expects 1000 rows; 4 SDs is about 113)
    counts = torch.bincount(folds, minlength=5)
    assert (counts - 1000).abs().max() < 120, counts
    # another seed deals the rows differently; rows one bit apart hash independently
    assert (fold_of(x, 5, seed=1) != folds).float().mean() > 0.7
    nudged = torch.nextafter(x[:, :1], torch.tensor(float("inf")))
    assert (fold_of(torch.cat([nudged, x[:, 1:]], 1), 5) != folds).float().mean() > 0.7
    # -0.0 and 0.0 are the same feature value
    assert torch.equal(fold_of(torch.zeros(3, 2), 3), fold_of(-torch.zeros(3, 2), 3))


def test_fold_of_on_one_hot_features_is_balanced_and_unrelated_to_a_feature():
    """Tabular rows are mostly 0/1 columns: the hash must still spread them."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(4000, 20, generator=gen) < 0.3).float()
    x = torch.unique(x, dim=0)
    folds = fold_of(x, 4)
    share = torch.bincount(folds, minlength=4).double() / len(x)
    assert (share - 0.25).abs().max() < 0.03
    # the fold does not depend on any one feature's value
    for j in range(20):
        on = x[:, j] == 1
        assert abs(float(folds[on].double().mean()) - float(folds[~on].double().mean())) < 0.12


@pytest.mark.parametrize("bad", [1, 0, -2, 2.0, True, "5"])
def test_fold_of_refuses_bad_folds(bad):
    with pytest.raises(ValueError, match="`folds` must be an int >= 2, got"):
        fold_of(torch.zeros(3, 2), bad)


# --------------------------------------------------------------------------------- FoldMixture
class _Const(nn.Module):
    """A model whose logit is a fixed function of the row: ``w * x[:, 0] + b``."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(w)
            self.linear.bias.fill_(b)

    def forward(self, x):
        return self.linear(x[:, :1])


def test_mixture_routes_each_row_to_its_fold_model_and_applies_the_shared_thresholds():
    models = [_Const(1.0, 0.0), _Const(2.0, -1.0), _Const(-1.0, 0.5)]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(600, 3, generator=gen)
    groups = torch.randint(0, 2, (600,), generator=gen)
    thresholds = GroupThresholds("demographic_parity", tolerance=0.05).fit(torch.rand(600, generator=gen), torch.randint(0, 2, (600,), generator=gen), groups, 2)
    mixture = FoldMixture(models, thresholds)
    fold = fold_of(x, 3)
    with torch.no_grad():
        expected = torch.stack([m(x).reshape(-1) for m in models]).gather(0, fold[None]).reshape(-1)
        logits = mixture(x)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(mixture.predict_proba(x), torch.sigmoid(expected.double()))
    assert torch.equal(mixture.predict(x, groups), thresholds.predict(torch.sigmoid(expected.double()), groups))
    # a randomized mixture draws the fold per call, from the generator
    randomized = FoldMixture(models, thresholds, assignment="random")
    a = randomized.fold_of(x, generator=torch.Generator().manual_seed(5))
    b = randomized.fold_of(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, fold)
    assert mixture(x[:0]).shape == (0,)


def test_mixture_predicts_in_evaluation_mode_and_restores_the_mode():
    """Dropout must not make the mixture's decisions random: predict scores as out of fold (eval, no grad)."""
    gen = torch.Generator().manual_seed(4)
    models = [nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.Linear(16, 1)) for _ in range(2)]
    x = torch.randn(300, 3, generator=gen)
    groups = torch.randint(0, 2, (300,), generator=gen)
    thresholds = GroupThresholds("demographic_parity", tolerance=0.1).fit(torch.rand(300, generator=gen), torch.randint(0, 2, (300,), generator=gen), groups, 2)
    mixture = FoldMixture(models, thresholds)
    assert mixture.training
    first, second = mixture.predict(x, groups), mixture.predict(x, groups)
    assert torch.equal(first, second) and mixture.training  # same decisions; the mode is the caller's again
    proba = mixture.predict_proba(x)
    assert not proba.requires_grad
    mixture.eval()
    with torch.no_grad():
        torch.testing.assert_close(proba, torch.sigmoid(mixture(x).double()))


def test_fold_of_cannot_deal_few_distinct_rows_evenly_and_cross_fit_says_so():
    from fair_lightning.crossfit import _warn

    folds = fold_of(torch.tensor([[0.0], [1.0], [2.0]]).repeat(100, 1), 5)
    assert torch.unique(folds).numel() <= 3  # three distinct rows reach at most three of five fold models
    shares = (torch.bincount(folds, minlength=5).double() / 300).tolist()
    report = {"rows": 300, "constant": False, "verdict": "holds", "assignment_shares": shares}
    with pytest.warns(UserWarning, match=r"the hash sends the out-of-fold rows to the 5 fold models in shares .* "
                                         r"`FoldMixture.assignment = 'random'`"):
        _warn(report, GroupThresholds("demographic_parity", tolerance=0.05))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn({**report, "assignment_shares": [0.21, 0.19, 0.2, 0.2, 0.2]}, GroupThresholds("demographic_parity", tolerance=0.05))


def test_mixture_state_dict_round_trip_keeps_models_thresholds_and_assignment(tmp_path):
    gen = torch.Generator().manual_seed(3)
    scores, labels, groups = torch.rand(400, generator=gen), torch.randint(0, 2, (400,), generator=gen), torch.randint(0, 3, (400,), generator=gen)
    thresholds = GroupThresholds("equalized_odds", tolerance=0.1).fit(scores, labels, groups, 3)
    mixture = FoldMixture([_Const(1.0, 0.1), _Const(0.5, -0.2)], thresholds, seed=7)
    torch.save(mixture.state_dict(), tmp_path / "mixture.pt")
    fresh = FoldMixture([_Const(0.0, 0.0), _Const(0.0, 0.0)], None)
    fresh.load_state_dict(torch.load(tmp_path / "mixture.pt", weights_only=True))
    assert fresh.seed == 7 and fresh.assignment == "hash"
    assert fresh.thresholds.constraint == "equalized_odds"
    torch.testing.assert_close(fresh.thresholds.thresholds_, thresholds.thresholds_)
    x = torch.randn(300, 2, generator=gen)
    g = torch.randint(0, 3, (300,), generator=gen)
    assert torch.equal(fresh.predict(x, g), mixture.predict(x, g))


def test_mixture_refuses_bad_arguments_and_predicting_without_thresholds():
    with pytest.raises(ValueError, match="`models` must be a sequence of nn.Modules, got Linear"):
        FoldMixture(nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"`models` must hold nn.Modules only, got \['str'\]"):
        FoldMixture([nn.Linear(1, 1), "model"])
    with pytest.raises(ValueError, match="`models` must hold one model per fold, at least 2, got 1"):
        FoldMixture([nn.Linear(1, 1)])
    with pytest.raises(ValueError, match="`assignment` must be one of"):
        FoldMixture([nn.Linear(1, 1)] * 2, assignment="vote")
    with pytest.raises(ValueError, match="`thresholds` must be a GroupThresholds or None, got float"):
        FoldMixture([nn.Linear(1, 1)] * 2, 0.5)
    with pytest.raises(ValueError, match="`seed` must be an int, got 1.5"):
        FoldMixture([nn.Linear(1, 1)] * 2, seed=1.5)
    with pytest.raises(RuntimeError, match="no fitted thresholds"):
        FoldMixture([nn.Linear(1, 1)] * 2).predict(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="binary models"):
        FoldMixture([nn.Linear(1, 2)] * 2)(torch.zeros(4, 1))


# ----------------------------------------------------------------------------------- cross_fit
def _trainer(k, **kwargs):
    return pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, **kwargs)


def _german(k, folds=3):
    return TabularDataModule("german", batch_size=64, cv_folds=folds, cv_fold=k, seed=0)


def _module(k):
    pl.seed_everything(k, verbose=False)
    return FairLightningModule(MLP(62, hidden=[16]), num_groups=2, lr=3e-3)


def test_cross_fit_fits_thresholds_on_every_out_of_fold_score_and_ships_the_mixture(tmp_path):
    thresholds = GroupThresholds("demographic_parity", tolerance=0.05, min_count=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixture = cross_fit(_module, _german, thresholds, folds=3, trainer_fn=_trainer)
    assert thresholds.thresholds_ is None  # the caller's object is left as given
    report = mixture.report
    # every non-test row of German credit, each scored by the fold model that did not see it
    assert report["rows"] == 800 and sum(report["rows_per_fold"]) == 800 and report["folds"] == 3
    expected_scores = []
    for k in range(3):
        dm = _german(k)
        dm.setup()
        x, y, g = dm.val_tensors
        with torch.no_grad():
            expected_scores.append(torch.sigmoid(mixture.models[k](x).reshape(-1)).double())
    scores = torch.cat(expected_scores)
    torch.testing.assert_close(report["scores"], scores)
    reference = GroupThresholds("demographic_parity", tolerance=0.05, min_count=10).fit(scores, report["labels"], report["groups"], 2)
    torch.testing.assert_close(mixture.thresholds.thresholds_, reference.thresholds_)
    # the report is the mixture's decisions on those rows, judged as the selection judges
    decisions = reference.predict(scores, report["groups"])
    sums = group_sums(decisions, report["labels"].double(), report["groups"], 2)
    verdict = constraint_holds(sums, "demographic_parity", 0.05)
    assert report["verdict"] == verdict.status and report["difference"] == pytest.approx(verdict.difference)
    assert report["difference"] <= 0.05 + 1e-12
    assert report["accuracy"] == pytest.approx(float((decisions == report["labels"]).double().mean()))
    assert report["selection_share"] == pytest.approx(float(decisions.mean()))
    # how the hash deals rows like these to the fold models: about a third each
    shares = report["assignment_shares"]
    assert len(shares) == 3 and sum(shares) == pytest.approx(1.0) and max(abs(s - 1 / 3) for s in shares) < 0.06
    # on new rows, the mixture decides with the fold model its hash names
    dm = _german(0)
    dm.setup()
    x, _, g = dm.test_tensors
    fold = fold_of(x, 3)
    with torch.no_grad():
        own = torch.stack([torch.sigmoid(m(x).reshape(-1)).double() for m in mixture.models]).gather(0, fold[None]).reshape(-1)
    assert torch.equal(mixture.predict(x, g), reference.predict(own, g))


class _NoTraining(pl.Trainer):
    """A trainer that only sets the data up: the models keep their initial weights."""

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None, **kwargs):
        datamodule.setup("fit")


def _no_training(k):
    return _NoTraining(logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_cross_fit_warns_when_the_mixture_is_constant():
    def constant_module(k):
        module = _module(k)
        with torch.no_grad():  # every row the same score: fair thresholds can only predict one class
            module.model[-1].weight.zero_()
        return module

    with pytest.warns(UserWarning, match=r"predict 1 for (0\.0|100\.0)% of the 800 out-of-fold rows, a constant classifier"):
        mixture = cross_fit(constant_module, _german, GroupThresholds("demographic_parity", tolerance=0.0),
                            folds=3, trainer_fn=_no_training)
    assert mixture.report["constant"]
    assert mixture.report["selection_share"] in (0.0, 1.0)


def test_cross_fit_warns_when_the_constraint_is_not_certified_on_the_out_of_fold_rows():
    # 1,200 rows of which about 360 in the smaller group: a difference <= 0.01 that no 95% interval pins below 0.01
    data = make_biased_lending(n=1500, bias=0.5, seed=0)

    def lending(k):
        return TabularDataModule(data, sensitive="group", batch_size=128, cv_folds=3, cv_fold=k, seed=0)

    def module(k):
        pl.seed_everything(k, verbose=False)
        return FairLightningModule(MLP(3, hidden=[8]), num_groups=2, lr=1e-2)

    with pytest.warns(UserWarning, match=r"demographic_parity at tolerance 0.01 is uncertain on the \d+ out-of-fold rows "
                                         r"at 95% confidence \(difference 0.0\d+, interval up to 0.\d+\)") as record:
        mixture = cross_fit(module, lending, GroupThresholds("demographic_parity", tolerance=0.01, min_count=10),
                            folds=3, trainer_fn=_trainer)
    assert not any("constant classifier" in str(w.message) for w in record)
    report = mixture.report
    assert report["verdict"] == "uncertain" and not report["constant"] and 0.05 < report["selection_share"] < 0.95
    assert report["rows"] == sum(report["rows_per_fold"]) and len(report["rows_per_fold"]) == 3
    assert report["difference"] <= 0.01 < report["ci_high"] < 0.2


def test_cross_fit_refuses_bad_arguments():
    t = GroupThresholds("demographic_parity", tolerance=0.05)
    with pytest.raises(ValueError, match="`folds` must be an int >= 2, got 1"):
        cross_fit(_module, _german, t, folds=1)
    with pytest.raises(ValueError, match="`module_fn` must be callable"):
        cross_fit(None, _german, t, folds=3)
    with pytest.raises(ValueError, match="`datamodule_fn` must be callable"):
        cross_fit(_module, "german", t, folds=3)
    with pytest.raises(ValueError, match="`thresholds` must be a GroupThresholds"):
        cross_fit(_module, _german, "demographic_parity", folds=3)
    with pytest.raises(ValueError, match=r"`confidence` must be in \(0, 1\), got 95"):
        cross_fit(_module, _german, t, folds=3, confidence=95)
    with pytest.raises(ValueError, match="`assignment` must be one of"):
        cross_fit(_module, _german, t, folds=3, assignment="mean")
    with pytest.raises(ValueError, match=r"`ckpt_path_fn` must be callable \(fold -> checkpoint path or None\), got str"):
        cross_fit(_module, _german, t, folds=3, ckpt_path_fn="last.ckpt")
    # the data module must hold out fold k of the same K
    with pytest.raises(ValueError, match=r"`datamodule_fn\(0\)` must hold out fold 0 of 3 .*got cv_folds=5, cv_fold=0"):
        cross_fit(_module, lambda k: _german(k, folds=5), t, folds=3)
    with pytest.raises(ValueError, match=r"`datamodule_fn\(0\)` must hold out fold 0 of 3 .*got cv_folds=0"):
        cross_fit(_module, lambda k: TabularDataModule("german", batch_size=64), t, folds=3)

    class _PerFoldFeatures(TabularDataModule):  # a data module that preprocesses each fold its own way
        @property
        def feature_names(self):
            return [f"x{j}" for j in range(62 + self.cv_fold)]

        @feature_names.setter
        def feature_names(self, value):
            pass

    with pytest.raises(ValueError, match=r"`datamodule_fn\(1\)` presents other features than fold 0 \(63 against 62\)"):
        cross_fit(_module, lambda k: _PerFoldFeatures("german", batch_size=64, cv_folds=3, cv_fold=k, seed=0), t,
                  folds=3, trainer_fn=_no_training)
    with pytest.raises(ValueError, match=r"`module_fn\(0\)` must return a LightningModule, got Linear"):
        cross_fit(lambda k: nn.Linear(62, 1), _german, t, folds=3)


@pytest.mark.ddp
def test_cross_fit_under_ddp_scores_like_one_process(tmp_path):
    """The out-of-fold scores come from the weights the DDP fit leaves in the calling process,
    over the whole validation fold: the same rows and, for the same weights, the same thresholds."""
    thresholds = GroupThresholds("demographic_parity", tolerance=0.05, min_count=10)

    def ddp_trainer(k):
        return pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, strategy="ddp_spawn", accelerator="cpu",
                          devices=2, callbacks=[DestroyProcessGroup()])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixture = cross_fit(_module, lambda k: _german(k, folds=2), thresholds, folds=2, trainer_fn=ddp_trainer)
    assert mixture.report["rows"] == 800
    for k, model in enumerate(mixture.models):  # the fit's weights came back (they moved off the initial ones)
        fitted, initial = model.state_dict(), _module(k).state_dict()
        assert any(not torch.equal(v, initial[n]) for n, v in fitted.items() if isinstance(v, torch.Tensor))
    # one process on the same weights gives the same out-of-fold scores and thresholds
    scores = []
    for k in range(2):
        dm = _german(k, folds=2)
        dm.setup()
        with torch.no_grad():
            scores.append(torch.sigmoid(mixture.models[k](dm.val_tensors[0]).reshape(-1)).double())
    torch.testing.assert_close(mixture.report["scores"], torch.cat(scores))
    reference = GroupThresholds("demographic_parity", tolerance=0.05, min_count=10).fit(
        torch.cat(scores), mixture.report["labels"], mixture.report["groups"], 2)
    torch.testing.assert_close(mixture.thresholds.thresholds_, reference.thresholds_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_random_assignment_and_randomized_thresholds_draw_with_a_cuda_generator():
    """The draws are made on the generator's device: a CUDA generator with CUDA inputs works (it
    raised 'Expected a cpu device type for generator' when the draws were made on the CPU)."""
    gen = torch.Generator().manual_seed(3)
    groups = torch.randint(0, 2, (400,), generator=gen)
    thresholds = GroupThresholds("demographic_parity", tolerance=0.05, randomized=True).fit(
        torch.rand(400, generator=gen), torch.randint(0, 2, (400,), generator=gen), groups, 2)
    mixture = FoldMixture([_Const(1.0, 0.0), _Const(-1.0, 0.5)], thresholds, assignment="random").cuda()
    x = torch.randn(400, 3, generator=gen).cuda()
    decisions = mixture.predict(x, groups.cuda(), generator=torch.Generator(device="cuda").manual_seed(0))
    assert decisions.device.type == "cuda" and decisions.shape == (400,)
