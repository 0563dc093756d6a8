import itertools

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.calibration import GroupFairnessCalibrator
from fair_lightning.callbacks import GroupThresholdCallback
from fair_lightning.postprocessing import GroupThresholds, operating_points

FAIRLEARN_NAME = {
    "demographic_parity": "demographic_parity",
    "equal_opportunity": "true_positive_rate_parity",
    "equalized_odds": "equalized_odds",
}


def _synthetic(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3)) + a[:, None] * 0.5
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.8 * a + rng.normal(size=n) > 0.8).astype(int)
    return x, y, a


def _adult_sample(n=5000):
    from fair_lightning.data import load_adult

    data = load_adult()
    frame = data.frame.sample(n=n, random_state=0)
    x = frame[["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]].to_numpy(float)
    x = (x - x.mean(0)) / x.std(0)
    a = (frame["sex"].astype(str) == "Male").to_numpy().astype(int)
    return x, frame[data.target].to_numpy(), a


def _fairlearn_expected(to, x, y, a):
    """Expected accuracy and per-group rate ranges of fairlearn's randomized predictor."""
    p = to._pmf_predict(x, sensitive_features=a)[:, 1]
    groups = np.unique(a)

    def spread(mask):
        return np.ptp([p[(a == g) & mask].mean() for g in groups])

    acc = float(np.mean(p * y + (1 - p) * (1 - y)))
    ones = np.ones_like(y, dtype=bool)
    return acc, {"selection_rate": spread(ones), "true_positive_rate": spread(y == 1), "false_positive_rate": spread(y == 0)}


CONSTRAINED = {
    "demographic_parity": ("selection_rate",),
    "equal_opportunity": ("true_positive_rate",),
    "equalized_odds": ("true_positive_rate", "false_positive_rate"),
}


@pytest.mark.parametrize("data", ["synthetic", "adult", "synthetic_platt", "synthetic_isotonic"])
@pytest.mark.parametrize(
    "constraint, tol",
    [("demographic_parity", 0.02), ("demographic_parity", None), ("equal_opportunity", 0.02), ("equalized_odds", None)],
)
def test_agrees_with_fairlearn_threshold_optimizer(data, constraint, tol):
    x, y, a = _adult_sample() if data == "adult" else _synthetic()
    lr = LogisticRegression().fit(x, y)
    scores = lr.predict_proba(x)[:, 1]
    if data.startswith("synthetic_"):  # after group calibration
        method = data.split("_")[1]
        scores = GroupFairnessCalibrator(method=method, num_groups=2).fit(scores, y, a).transform(scores, a)
        scores = np.asarray(scores, dtype=float)
        estimator = _FixedScores(scores)
        x_in = np.arange(len(y))[:, None]
    else:
        estimator, x_in = lr, x
    to = ThresholdOptimizer(
        estimator=estimator, constraints=FAIRLEARN_NAME[constraint], prefit=True, predict_method="predict_proba", tol=tol
    ).fit(x_in, y, sensitive_features=a)
    fl_acc, fl_spread = _fairlearn_expected(to, x_in, y, a)
    tolerance = tol or 0.0
    for name in CONSTRAINED[constraint]:
        assert fl_spread[name] <= tolerance + 1e-9

    s, yt, at = torch.tensor(scores), torch.tensor(y), torch.tensor(a)
    randomized = GroupThresholds(constraint, tolerance=tolerance, randomized=True).fit(s, yt, at)
    # same constraint satisfied (in expectation, like fairlearn), accuracy within 0.002 (ours is exact, never worse)
    assert randomized.fit_difference_ <= tolerance + 1e-9
    assert fl_acc - 1e-9 <= randomized.fit_accuracy_ <= fl_acc + 0.002
    sums = randomized.expected_sums(s, yt, at)
    expected_acc = float(sums.total().accuracy().value[0])
    assert expected_acc == pytest.approx(randomized.fit_accuracy_, abs=1e-12)
    # predictions drawn with the mixing probabilities reproduce the expected rates
    draws = torch.stack([randomized.predict(s, yt * 0 + at, generator=torch.Generator().manual_seed(i)) for i in range(20)])
    assert float((draws.mean(0).double() - randomized.predict_proba(s, at)).abs().mean()) < 0.1

    # deterministic thresholds: the hard difference meets the tolerance, accuracy within 0.002. Not after
    # isotonic calibration: its plateaus tie hundreds of rows, so one threshold per group cannot reach the
    # hull between two plateaus (measured: 0.0045 below fairlearn's randomized accuracy for equal opportunity)
    if tol and data != "synthetic_isotonic":
        det = GroupThresholds(constraint, tolerance=tol).fit(s, yt, at)
        hard = det.predict(s, at)
        assert set(hard.unique().tolist()) <= {0.0, 1.0}
        for name in CONSTRAINED[constraint]:
            rate = det.fit_rates_[name]
            assert float(rate.max() - rate.min()) <= tol + 1e-12
        assert det.fit_accuracy_ >= fl_acc - 0.002
        assert float((hard == torch.tensor(y)).double().mean()) == pytest.approx(det.fit_accuracy_, abs=1e-12)


class _FixedScores(ClassifierMixin, BaseEstimator):
    """A fitted 'estimator' whose scores are given (row index -> score), for fairlearn's prefit mode."""

    def __init__(self, scores=None):
        self.scores = scores
        self.classes_ = np.array([0, 1])
        self.fitted_ = True

    def fit(self, X, y):  # noqa: N803
        return self

    def predict_proba(self, X):  # noqa: N803
        p = np.asarray(self.scores)[np.asarray(X)[:, 0].astype(int)]
        return np.stack([1 - p, p], 1)


def test_deterministic_equalized_odds_meets_tolerance_near_fairlearn():
    x, y, a = _synthetic()
    lr = LogisticRegression().fit(x, y)
    scores = lr.predict_proba(x)[:, 1]
    to = ThresholdOptimizer(estimator=lr, constraints="equalized_odds", prefit=True, predict_method="predict_proba")
    fl_acc, _ = _fairlearn_expected(to.fit(x, y, sensitive_features=a), x, y, a)
    det = GroupThresholds("equalized_odds", tolerance=0.02).fit(torch.tensor(scores), torch.tensor(y), torch.tensor(a))
    assert det.fit_difference_ <= 0.02 + 1e-12
    assert det.fit_accuracy_ >= fl_acc - 0.002


def test_deterministic_search_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(3)
    n = 60
    groups = torch.randint(0, 3, (n,), generator=g)
    labels = (torch.rand(n, generator=g) < 0.3 + 0.2 * groups).long()
    scores = torch.randint(0, 8, (n,), generator=g).double() / 8 + 0.1 * labels  # ties on purpose
    for constraint, tol in [("demographic_parity", 0.1), ("equal_opportunity", 0.15), ("equalized_odds", 0.2)]:
        fitted = GroupThresholds(constraint, tolerance=tol).fit(scores, labels, groups)
        pts = operating_points(scores, labels, groups, 3)
        names = CONSTRAINED[constraint]
        rates = {k: pts.rate(k) for k in names}
        correct = pts.correct()
        best = -1.0
        for combo in itertools.product(range(pts.threshold.shape[1]), repeat=3):
            ok = all(
                float(max(rates[k][i, c] for i, c in enumerate(combo)) - min(rates[k][i, c] for i, c in enumerate(combo)))
                <= tol + 1e-12
                for k in names
            )
            if ok:
                best = max(best, float(sum(correct[i, c] for i, c in enumerate(combo))) / n)
        assert fitted.fit_accuracy_ == pytest.approx(best, abs=1e-12), constraint
        assert fitted.fit_difference_ <= tol + 1e-12


def test_group_without_positives_is_left_unconstrained():
    scores = torch.tensor([0.9, 0.8, 0.2, 0.1, 0.7, 0.3, 0.6, 0.4])
    labels = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    fitted = GroupThresholds("equal_opportunity", tolerance=0.0).fit(scores, labels, groups)
    assert fitted.unconstrained_ == [1]
    assert fitted.predict(scores, groups)[4:].sum() == 0  # its most accurate threshold: all negative


def test_state_dict_round_trip_through_a_weights_only_file(tmp_path):
    x, y, a = _synthetic(1000)
    s = torch.tensor(LogisticRegression().fit(x, y).predict_proba(x)[:, 1])
    for randomized in (False, True):
        fitted = GroupThresholds("equalized_odds", tolerance=0.05, randomized=randomized).fit(s, torch.tensor(y), torch.tensor(a))
        torch.save(fitted.state_dict(), tmp_path / "t.pt")
        loaded = GroupThresholds.from_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
        assert loaded.randomized == randomized and loaded.constraint == "equalized_odds"
        assert torch.equal(loaded.predict_proba(s, torch.tensor(a)), fitted.predict_proba(s, torch.tensor(a)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"constraint": "parity"}, "`constraint` must be one of"),
        ({"tolerance": -0.1}, "`tolerance` must be a number >= 0, got -0.1"),
        ({"grid_size": 0}, "`grid_size`"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupThresholds(**kwargs)


def test_input_errors_name_the_argument():
    t = GroupThresholds()
    with pytest.raises(ValueError, match="`labels` must contain only 0 and 1"):
        t.fit(torch.rand(4), torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="`scores` must be finite"):
        t.fit(torch.tensor([0.1, float("inf")]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`groups` must be an integer tensor"):
        t.fit(torch.rand(2), torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="not fitted"):
        t.predict(torch.rand(2), torch.tensor([0, 1]))


# --- the callback -----------------------------------------------------------------------------------
class _PlainModule(pl.LightningModule):
    """An ordinary LightningModule: its validation step returns logits, target and groups."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, groups = batch
        return {"logits": self(x), "target": y, "groups": groups}

    def predict_step(self, batch, batch_idx):
        x, _, groups = batch
        probs = torch.sigmoid(self(x))
        thresholds = getattr(self, "prediction_thresholds", None)
        return probs if thresholds is None else thresholds.apply(probs, groups)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def _loaders():
    x, y, a = _synthetic(1200)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), torch.tensor(a))
    return DataLoader(data, batch_size=200), DataLoader(data, batch_size=300)


def _trainer(callbacks, tmp_path, **kwargs):
    return pl.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        default_root_dir=tmp_path, enable_checkpointing=False, **kwargs,
    )  # fmt: skip


def test_callback_fits_on_validation_outputs_and_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    train, val = _loaders()
    callback = GroupThresholdCallback("demographic_parity", tolerance=0.03)
    module = _PlainModule()
    trainer = _trainer([callback], tmp_path)
    trainer.fit(module, train, val)
    assert module.prediction_thresholds is callback.thresholds
    x, y, a = val.dataset.tensors
    with torch.no_grad():
        probs = torch.sigmoid(module(x).double())
    direct = GroupThresholds("demographic_parity", tolerance=0.03).fit(probs, y.long(), a)
    assert torch.equal(callback.thresholds.thresholds_, direct.thresholds_)
    assert callback.thresholds.fit_difference_ <= 0.03
    preds = torch.cat(trainer.predict(module, val))
    assert torch.equal(preds, direct.predict(probs, a))

    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = GroupThresholdCallback("demographic_parity", tolerance=0.03)
    fresh = _PlainModule()
    preds2 = torch.cat(_trainer([restored], tmp_path).predict(fresh, val, ckpt_path=tmp_path / "m.ckpt"))
    assert torch.equal(preds2, preds)
    assert fresh.prediction_thresholds is restored.thresholds


def test_callback_uses_the_group_calibrator_and_an_outputs_fn(tmp_path):
    from fair_lightning.callbacks import GroupCalibrationCallback

    torch.manual_seed(0)
    train, val = _loaders()
    seen = []

    def outputs_fn(pl_module, outputs, batch):
        seen.append(1)
        return torch.sigmoid(outputs["logits"].double()), outputs["target"], outputs["groups"]

    module = _PlainModule()
    module.num_groups = 2
    calibration = GroupCalibrationCallback("isotonic", min_group_size=10)
    thresholds = GroupThresholdCallback("equal_opportunity", tolerance=0.02, outputs_fn=outputs_fn)
    _trainer([calibration, thresholds], tmp_path).fit(module, train, val)
    assert seen
    x, y, a = val.dataset.tensors
    with torch.no_grad():
        probs = torch.sigmoid(module(x).double())
    calibrated = torch.as_tensor(calibration.calibrator.transform(probs, a)).double()
    direct = GroupThresholds("equal_opportunity", tolerance=0.02).fit(calibrated, y.long(), a)
    assert torch.equal(thresholds.thresholds.thresholds_, direct.thresholds_)


def _thin_group_loaders():
    """1,200 rows in group 0 and 3 in group 1: exact parity with group 1 constrained leaves only
    the rates 0 and 1 (no share of 1,200 rows equals 1/3 or 2/3), a constant classifier."""
    x, y, _ = _synthetic(1203)
    a = np.zeros(1203, dtype=np.int64)
    a[:3] = 1
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), torch.tensor(a))
    return DataLoader(data, batch_size=401), DataLoader(data, batch_size=401)


def test_callback_leaves_thin_groups_unconstrained_and_warns_of_a_constant_result(tmp_path, recwarn):
    torch.manual_seed(0)
    train, val = _thin_group_loaders()
    # the default (min_count=10, as the selection and the module's constraints): group 1 is listed
    # as unconstrained, and group 0 keeps an informative threshold
    default = GroupThresholdCallback("demographic_parity", tolerance=0.0)
    module = _PlainModule()
    _trainer([default], tmp_path).fit(module, train, val)
    assert default.min_count == 10 and default.thresholds.unconstrained_ == [1]
    x, y, a = val.dataset.tensors
    with torch.no_grad():
        probs = torch.sigmoid(module(x).double())
    share = float(default.thresholds.predict(probs, a).mean())
    assert 0.05 < share < 0.95
    assert not [w for w in recwarn if "constant classifier" in str(w.message)]
    # min_count=0 constrains the 3 rows too (fairlearn's behaviour): exact parity then forces one
    # class on everyone, and the callback says so
    strict = GroupThresholdCallback("demographic_parity", tolerance=0.0, min_count=0)
    with pytest.warns(UserWarning, match=r"predict 1 for (0\.0|100\.0)% of the 1203 validation rows, a constant classifier"):
        _trainer([strict], tmp_path).fit(_PlainModule(), train, val)
    assert strict.thresholds.unconstrained_ == []
    with pytest.raises(ValueError, match="`min_count`"):
        GroupThresholdCallback(min_count=-1)


def test_callback_argument_errors():
    with pytest.raises(ValueError, match="`tolerance`"):
        GroupThresholdCallback(tolerance=-1)
    with pytest.raises(ValueError, match="`outputs_fn` must be callable"):
        GroupThresholdCallback(outputs_fn=3)
    with pytest.raises(RuntimeError, match="no thresholds yet"):
        GroupThresholdCallback().apply(torch.rand(2), torch.tensor([0, 1]))


def test_min_count_leaves_thin_groups_unconstrained():
    gen = torch.Generator().manual_seed(3)
    n = 2000
    groups = torch.zeros(n, dtype=torch.long)
    groups[: n // 2] = 1
    groups[:8] = 2  # a group of 8 rows
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    scores[groups == 1] = (scores[groups == 1] + 0.3).clamp(max=1.0)
    labels = (torch.rand(n, generator=gen, dtype=torch.float64) < scores).long()
    everyone = GroupThresholds("demographic_parity", tolerance=0.02).fit(scores, labels, groups, 3)
    thin = GroupThresholds("demographic_parity", tolerance=0.02, min_count=10).fit(scores, labels, groups, 3)
    assert everyone.unconstrained_ == [] and thin.unconstrained_ == [2]
    big = groups < 2
    preds = thin.predict(scores, groups)
    rates = [float(preds[groups == g].mean()) for g in (0, 1)]
    assert abs(rates[0] - rates[1]) <= 0.02 + 1e-9  # the groups with enough rows still meet the tolerance
    assert thin.fit_accuracy_ >= everyone.fit_accuracy_ - 1e-12
    restored = GroupThresholds.from_state_dict(thin.state_dict())
    assert restored.min_count == 10 and torch.equal(restored.predict(scores, groups), preds)
    assert big.any()
    with pytest.raises(ValueError, match="`min_count` must be a finite number >= 0"):
        GroupThresholds(min_count=-1)


def test_shared_threshold_is_one_threshold_for_every_group_with_fit_summaries():
    """GroupThresholds.shared: the model's own decision rule (score > t) as a fitted instance, so
    that selection can hand back 'no group thresholds' through the same attribute; its summaries
    are of the data given, and a non-finite threshold is refused."""
    gen = torch.Generator().manual_seed(3)
    groups = torch.randint(0, 3, (500,), generator=gen)
    labels = torch.randint(0, 2, (500,), generator=gen)
    scores = torch.rand(500, generator=gen, dtype=torch.float64)
    own = GroupThresholds.shared(0.4, scores, labels, groups, 3)
    preds = (scores > 0.4).double()
    torch.testing.assert_close(own.predict(scores, groups).double(), preds)
    assert own.fit_accuracy_ == pytest.approx(float((preds == labels).double().mean()))
    rates = [float(preds[groups == g].mean()) for g in range(3)]
    assert own.fit_difference_ == pytest.approx(max(rates) - min(rates))
    again = GroupThresholds.from_state_dict(own.state_dict())
    torch.testing.assert_close(again.predict(scores, groups), own.predict(scores, groups))
    for bad in (float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="`threshold` must be a finite number, got"):
            GroupThresholds.shared(bad, scores, labels, groups, 3)


def test_predict_step_thresholds_the_probabilities_the_thresholds_were_fitted_on():
    """Thresholds are fitted on float64 probabilities (``validation_probabilities``) and sit midway
    between neighbouring scores; predict_step must compare the same numbers. Two logits one float32
    ulp apart have float64 probabilities on either side of their midpoint, and one float32
    probability: a float32 sigmoid would decide both rows alike."""
    from fair_lightning.module import FairLightningModule

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x[:, 0]

    low = torch.tensor(0.3, dtype=torch.float32)
    high = torch.nextafter(low, torch.tensor(1.0))
    logits = torch.stack([low, high])
    probs = torch.sigmoid(logits.double())
    assert torch.sigmoid(low) == torch.sigmoid(high)  # one float32 probability for both
    groups, labels = torch.zeros(2, dtype=torch.long), torch.tensor([0, 1])
    thresholds = GroupThresholds.shared(float(probs.mean()), probs, labels, groups, 1)
    assert thresholds.predict(probs, groups).tolist() == [0.0, 1.0]
    module = FairLightningModule(Identity(), num_groups=1)
    module.prediction_thresholds = thresholds
    decided = module.predict_step((logits[:, None], labels.float(), groups), 0)
    assert decided.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_predict_step_calibrates_before_thresholds_as_the_callback_fitted_them(method):
    """Thresholds fitted after group calibration (GroupThresholdCallback) see the calibrator's
    ``transform_probabilities`` of float64 probabilities; predict_step applies the same, so two
    logits one float32 ulp apart stay on either side of a threshold between them."""
    from fair_lightning.calibration import GroupFairnessCalibrator
    from fair_lightning.module import FairLightningModule

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x[:, 0]

    gen = torch.Generator().manual_seed(1)
    fit_logits = torch.randn(2000, generator=gen, dtype=torch.float64)
    fit_groups = torch.randint(0, 2, (2000,), generator=gen)
    fit_labels = (torch.rand(2000, generator=gen, dtype=torch.float64) < torch.sigmoid(1.5 * fit_logits)).long()
    scores = fit_logits if method == "temperature" else torch.sigmoid(fit_logits)
    calibrator = GroupFairnessCalibrator(method, num_groups=2).fit(scores, fit_labels, fit_groups)

    low = torch.tensor(0.3, dtype=torch.float32)
    logits = torch.stack([low, torch.nextafter(low, torch.tensor(1.0))])
    groups, labels = torch.zeros(2, dtype=torch.long), torch.tensor([0, 1])
    calibrated = calibrator.transform_probabilities(torch.sigmoid(logits.double()), groups)
    assert calibrated[0] < calibrated[1]
    thresholds = GroupThresholds.shared(float(calibrated.mean()), calibrated, labels, groups, 2)
    thresholds.calibrated = True
    module = FairLightningModule(Identity(), num_groups=2)
    module.prediction_calibrator = calibrator
    module.prediction_thresholds = thresholds
    decided = module.predict_step((logits[:, None], labels.float(), groups), 0)
    assert decided.tolist() == [0.0, 1.0]
