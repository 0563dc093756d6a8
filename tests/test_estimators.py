"""Tests of :class:`fair_lightning.estimators.FairNeuralClassifier`.

Tiny data, small networks and few epochs keep the whole file fast; torch and BLAS run on one
thread (hundreds of rows: threads only add overhead, and on a shared machine their busy-waiting
makes the file several times slower). Fairness is checked with fairlearn's own metrics, never
with the estimator's numbers.
"""

from __future__ import annotations

import inspect
import pickle

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from fairlearn.metrics import demographic_parity_difference
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import estimator_checks_generator, parametrize_with_checks
from threadpoolctl import threadpool_limits

from fair_lightning.constraints import FairnessConstraint
from fair_lightning.data import make_biased_lending
from fair_lightning.estimators import MODULE_MANAGED_KWARGS, FairNeuralClassifier
from fair_lightning.groups import GroupSpec
from fair_lightning.functional._rates import DEFINITIONS as CONDITIONS
from fair_lightning.losses import LOSSES
from fair_lightning.module import MODES, FairLightningModule
from fair_lightning.reductions import ReductionsWrapper
from tests._sklearn_checks import EXPECTED_FAILED_CHECKS as REDUCTIONS_EXPECTED_FAILED_CHECKS
from tests._sklearn_checks import _MISSING_SF, _chain, _check_name, _rows

pytestmark = [
    # fairlearn 0.15 writes to pandas objects in ways pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:fairlearn"),
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

#: Small and quick settings for the tests that train.
FAST = dict(hidden_layer_sizes=(16,), max_epochs=5, batch_size=64, lr=1e-2, random_state=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def lending(n: int = 600, seed: int = 0):
    """Biased-lending features, labels and group, with the group as a 0/1 feature.

    The generator draws the features alike in both groups, so a model that does not see the
    group cannot treat the groups differently; the ``group_B`` column lets the unconstrained
    model learn the label bias against group B, which the fair modes must then undo.
    """
    data = make_biased_lending(n, bias=0.6, seed=seed)
    frame = data.frame
    X = frame[list(data.numeric)].assign(group_B=(frame["group"] == "B").astype(np.float64))
    return X, data.y.to_numpy(), frame["group"]


@pytest.fixture(scope="module")
def data():
    return lending()


# ------------------------------------------------------------------ scikit-learn common checks
class _RowParityGroups(FairNeuralClassifier):
    """Test-only adapter: scikit-learn's common checks call ``fit(X, y)`` with no metadata.

    When ``sensitive_features`` is missing it uses two groups by row parity (0, 1, 0, 1, ...),
    independent of X and y, so that the constraint does not fight the checks' accuracy
    thresholds (as ``_RowParityGroups`` does for ReductionsWrapper in test_reductions.py).
    Everything else (validation, training, prediction, tags, pickling) is
    FairNeuralClassifier's own code.
    """

    def fit(self, X, y, *, sensitive_features=None):
        if sensitive_features is None:
            sensitive_features = np.arange(_rows(X)) % 2
        return super().fit(X, y, sensitive_features=sensitive_features)


# Enough training for check_classifiers_train's accuracy > 0.83 on its 300 blobs, still quick.
CHECKED = dict(hidden_layer_sizes=(16,), max_epochs=10, batch_size=64, lr=1e-2)

#: Checks the bare classifier fails, all because sensitive_features is required (see
#: test_expected_failures_are_the_missing_sensitive_features for the proof of the reason):
#: ReductionsWrapper's list, less check_non_transformer_estimators_n_iter (run only for
#: estimators with a `max_iter` parameter), plus check_decision_proba_consistency (run only for
#: estimators with a `decision_function`).
EXPECTED_FAILED_CHECKS = {
    name: reason
    for name, reason in REDUCTIONS_EXPECTED_FAILED_CHECKS.items()
    if name != "check_non_transformer_estimators_n_iter"
}
EXPECTED_FAILED_CHECKS["check_decision_proba_consistency"] = _MISSING_SF


def _expected_failed_checks(estimator) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS if type(estimator) is FairNeuralClassifier else {}


@parametrize_with_checks(
    [
        FairNeuralClassifier(**CHECKED),
        _RowParityGroups(**CHECKED),
        _RowParityGroups("adversarial", **CHECKED),
        _RowParityGroups("penalty", "mutual_information", **CHECKED),
    ],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_common_checks(estimator, check):
    check(estimator)


def test_expected_failures_are_the_missing_sensitive_features():
    """Every expected failure of the bare classifier is our missing-sensitive_features error."""
    seen = set()
    for estimator, check in estimator_checks_generator(
        FairNeuralClassifier(**CHECKED), mark=None
    ):
        name = _check_name(check)
        if name not in EXPECTED_FAILED_CHECKS:
            continue
        seen.add(name)
        with pytest.raises(BaseException) as info:  # noqa: PT011 - the cause is asserted below
            check(estimator)
        messages = [str(exc) for exc in _chain(info.value)]
        assert any("`sensitive_features` is required" in m for m in messages), (name, messages)
    assert seen == set(EXPECTED_FAILED_CHECKS)


# ------------------------------------------------------------------------ fitted attributes
def test_fitted_attributes_and_predictions(data):
    X, y, group = data
    clf = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=group)

    assert isinstance(clf.module_, FairLightningModule) and clf.module_.mode == "lagrangian"
    assert clf.module_._trainer is None and not clf.module_.training  # the trainer is not kept
    assert clf.module_.device.type == "cpu"
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    assert clf.n_features_in_ == 4
    np.testing.assert_array_equal(clf.feature_names_in_, X.columns)
    assert clf.group_names_ == ["group=A", "group=B"] == clf.module_.group_names
    assert clf.group_spec_ == GroupSpec({"group": ["A", "B"]})
    assert clf.n_iter_ == 5 and len(clf.history_) == 5
    assert {"train/loss_epoch", "fairness/multiplier_max"} <= set(clf.history_[-1])
    assert clf.multipliers_.shape == (2,) and (clf.multipliers_ >= 0).all()
    assert len(clf.constraint_names_) == 2  # bound="difference": one inequality per ordered pair of the 2 groups
    np.testing.assert_allclose(clf.scaler_.mean_, X.to_numpy().mean(axis=0))

    proba = clf.predict_proba(X)
    decision = clf.decision_function(X)
    assert proba.shape == (len(y), 2) and decision.shape == (len(y),)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), (decision > 0).astype(int))
    # The network itself, on the standardized features, gives the same logits.
    with torch.no_grad():
        features = clf.scaler_.transform(X.to_numpy())
        logits = clf.module_(torch.tensor(features, dtype=torch.float32))
    np.testing.assert_allclose(decision, logits.reshape(-1).double().numpy(), rtol=1e-6)
    assert clf.score(X, y) == pytest.approx(np.mean(clf.predict(X) == y))


def test_seeded_fit_is_reproducible_and_leaves_global_rng_alone(data):
    X, y, group = data
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=group)
    after = torch.rand(3)
    second = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=group)
    other = FairNeuralClassifier(**{**FAST, "random_state": 1}).fit(
        X, y, sensitive_features=group
    )

    torch.testing.assert_close(before, after)  # the fit ran in a forked RNG state
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    assert not np.allclose(first.predict_proba(X), other.predict_proba(X))


def test_pickle_round_trip(data):
    X, y, group = data
    clf = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=group)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(restored.multipliers_, clf.multipliers_)
    assert not any(isinstance(v, pl.Trainer) for v in vars(clf).values())


@pytest.mark.parametrize(
    ("mode", "constraints"),
    [
        ("erm", "demographic_parity"),
        ("penalty", "mutual_information"),
        ("penalty", "equal_opportunity"),
        ("lagrangian", ["demographic_parity", FairnessConstraint("equalized_odds", 0.05)]),
        ("adversarial", "equalized_odds"),
    ],
)
def test_modes_train_the_module_they_name(data, mode, constraints):
    X, y, group = data
    clf = FairNeuralClassifier(mode, constraints, **{**FAST, "max_epochs": 2}).fit(
        X, y, sensitive_features=group
    )
    assert clf.module_.mode == mode
    assert (clf.multipliers_ is not None) == (mode == "lagrangian")
    if mode == "lagrangian":  # 2 groups: 2 ordered pairs x (1 rate for DP + 2 for EO)
        assert len(clf.multipliers_) == len(clf.constraint_names_) == 6
    if mode == "adversarial":
        assert clf.module_.method.uses_label  # equalized odds shows the label to the adversary
    assert np.isin(clf.predict(X), [0, 1]).all()


def test_module_kwargs_reach_the_module(data):
    X, y, group = data
    kwargs = {"temperature": 0.5, "multiplier_max": 3.0}
    clf = FairNeuralClassifier(**FAST, module_kwargs=kwargs).fit(X, y, sensitive_features=group)
    assert clf.module_.hparams.temperature == 0.5
    assert clf.module_.multipliers.multiplier_max == 3.0
    assert (clf.multipliers_ <= 3.0).all()
    assert kwargs == {"temperature": 0.5, "multiplier_max": 3.0}  # not mutated
    # A probability threshold moves the decision function and predict, not predict_proba (in
    # "erm" mode, where the threshold does not change the training).
    thresholded = FairNeuralClassifier("erm", **FAST, module_kwargs={"threshold": 0.7}).fit(
        X, y, sensitive_features=group
    )
    plain = FairNeuralClassifier("erm", **FAST).fit(X, y, sensitive_features=group)
    np.testing.assert_allclose(thresholded.predict_proba(X), plain.predict_proba(X))
    np.testing.assert_allclose(
        thresholded.decision_function(X), plain.decision_function(X) - np.log(0.7 / 0.3)
    )
    positive = thresholded.predict_proba(X)[:, 1]
    assert ((positive > 0.5) & (positive < 0.7)).any()
    np.testing.assert_array_equal(thresholded.predict(X), (positive > 0.7).astype(int))


# ------------------------------------------------------------------------- input types
def test_labels_dtypes_and_categorical_intersectional_groups(data):
    X, y, group = data
    labels = np.array(["deny", "grant"])[y]
    rng = np.random.default_rng(0)
    sensitive = pd.DataFrame({"group": group, "age": rng.choice(["old", "young"], len(y))})
    clf = FairNeuralClassifier(**FAST).fit(
        X.to_numpy(np.float32), labels, sensitive_features=sensitive
    )
    np.testing.assert_array_equal(clf.classes_, ["deny", "grant"])
    assert set(clf.predict(X.to_numpy())) <= {"deny", "grant"}
    assert clf.group_names_ == [
        "group=A&age=old", "group=A&age=young", "group=B&age=old", "group=B&age=young"
    ]
    assert len(clf.multipliers_) == 4 * 3  # one inequality per ordered pair of the 4 groups
    assert not hasattr(clf, "feature_names_in_")
    # The same groups as a 2-D array of codes: unnamed attributes get fairlearn's names.
    codes = np.column_stack([(group == "B").to_numpy(int), sensitive["age"] == "young"])
    as_array = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=codes)
    assert as_array.group_names_[-1] == "sensitive_feature_0=1&sensitive_feature_1=1"
    # A plain list of labels works for one attribute.
    as_list = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=list(group))
    assert as_list.group_names_ == ["sensitive_feature_0=A", "sensitive_feature_0=B"]


def test_without_standardization(data):
    X, y, group = data
    clf = FairNeuralClassifier(**FAST, standardize=False).fit(X, y, sensitive_features=group)
    assert clf.scaler_ is None
    with torch.no_grad():
        logits = clf.module_(torch.tensor(X.to_numpy(), dtype=torch.float32)).reshape(-1)
    np.testing.assert_allclose(clf.decision_function(X), logits.double().numpy(), rtol=1e-6)


# --------------------------------------------------------------------- metadata routing
def test_metadata_requests():
    routing = FairNeuralClassifier().get_metadata_routing()
    assert routing.fit.requests == {"sensitive_features": True}
    assert routing.predict.requests == {}
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FairNeuralClassifier().set_fit_request(sensitive_features="sex")
    assert clf.get_metadata_routing().fit.requests == {"sensitive_features": "sex"}


def test_grid_search_over_both_estimators_routes_sensitive_features(data):
    X, y, group = data
    with sklearn.config_context(enable_metadata_routing=True):
        pipeline = Pipeline(
            [("scale", StandardScaler()), ("clf", ReductionsWrapper(LogisticRegression()))]
        )
        grid = [
            {
                "clf": [ReductionsWrapper(LogisticRegression(), max_iter=5, random_state=0)],
                "clf__difference_bound": [0.02, 0.1],
            },
            {
                "clf": [FairNeuralClassifier("penalty", **{**FAST, "max_epochs": 3})],
                "clf__eta": [0.5, 2.0],
            },
        ]
        search = GridSearchCV(pipeline, grid, cv=2, error_score="raise")
        search.fit(X, y, sensitive_features=group)

        estimators = [type(params["clf"]) for params in search.cv_results_["params"]]
        assert estimators.count(ReductionsWrapper) == 2
        assert estimators.count(FairNeuralClassifier) == 2
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        assert np.isin(search.best_estimator_.predict(X), [0, 1]).all()
        assert search.best_estimator_.score(X, y) > 0.6
        # Without sensitive_features, the pipeline's fit fails with our message.
        with pytest.raises(ValueError, match="`sensitive_features` is required"):
            clone(pipeline).set_params(clf=FairNeuralClassifier(**FAST)).fit(X, y)


# ----------------------------------------------------------------------------- fairness
def test_lagrangian_reduces_demographic_parity_difference():
    X, y, group = lending(2000)
    settings = dict(hidden_layer_sizes=(64,), max_epochs=20, batch_size=256, random_state=0)
    erm = FairNeuralClassifier("erm", **settings).fit(X, y, sensitive_features=group)
    # the defaults: the dual rate and the running sums' memory are set per epoch (8 batches here)
    fair = FairNeuralClassifier("lagrangian", tolerance=0.02, **settings).fit(X, y, sensitive_features=group)
    dp_erm = demographic_parity_difference(y, erm.predict(X), sensitive_features=group)
    dp_fair = demographic_parity_difference(y, fair.predict(X), sensitive_features=group)
    assert dp_erm > 0.3, "the unconstrained model should learn the label bias"
    assert dp_fair < 0.5 * dp_erm, (dp_erm, dp_fair)
    assert fair.score(X, y) > 0.6


# -------------------------------------------------------------------------------- errors
def test_missing_sensitive_features(data):
    X, y, _ = data
    clf = FairNeuralClassifier(**FAST)
    with pytest.raises(ValueError, match="`sensitive_features` is required.*got None"):
        clf.fit(X, y)
    # Validation comes before any fitted attribute is set: nothing is left half-fitted.
    assert not hasattr(clf, "n_features_in_")
    with pytest.raises(NotFittedError):
        clf.predict(X)


@pytest.mark.parametrize(
    ("sensitive_features", "match"),
    [
        (np.zeros(10), r"one row per sample \(600\), got 10 rows"),
        (np.zeros((600, 2, 2)), r"must be 1-D .* or 2-D"),
        (np.where(np.arange(600) % 2, "a", None), "missing values"),
    ],
)
def test_bad_sensitive_features(data, sensitive_features, match):
    X, y, _ = data
    with pytest.raises(ValueError, match=match):
        FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=sensitive_features)


def test_mismatched_lengths(data):
    X, y, group = data
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        FairNeuralClassifier(**FAST).fit(X, y[:-1], sensitive_features=group)


def test_unknown_mode_lists_valid_modes(data):
    X, y, group = data
    with pytest.raises(ValueError) as info:
        FairNeuralClassifier("lagrange").fit(X, y, sensitive_features=group)
    assert "'lagrange'" in str(info.value)
    assert all(f"'{mode}'" in str(info.value) for mode in MODES)


@pytest.mark.parametrize(
    ("mode", "constraints", "valid"),
    [
        ("lagrangian", "demographic_party", CONDITIONS),
        ("lagrangian", "mutual_information", CONDITIONS),
        ("lagrangian", ["demographic_parity", "bogus"], CONDITIONS),
        ("lagrangian", [], CONDITIONS),
        ("penalty", "equalised_odds", LOSSES),
        ("adversarial", "mutual_information", [d for d in CONDITIONS if d != "accuracy_parity"]),
    ],
)
def test_unknown_constraint_lists_valid_names(data, mode, constraints, valid):
    X, y, group = data
    with pytest.raises(ValueError) as info:
        FairNeuralClassifier(mode, constraints).fit(X, y, sensitive_features=group)
    message = str(info.value)
    assert f"mode={mode!r}" in message and repr(constraints) in message
    assert all(f"'{name}'" in message for name in valid)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"hidden_layer_sizes": (8, 0)}, r"`hidden_layer_sizes` must be an int >= 1 .*\(8, 0\)"),
        ({"eta": -1.0}, "`eta` must be a number >= 0, got -1.0"),
        ({"tolerance": "0.1"}, "`tolerance` must be a number >= 0, got '0.1'"),
        ({"dual_lr": 0}, "`dual_lr` must be a number > 0, got 0"),
        ({"lr": -1e-3}, "`lr` must be a number > 0, got -0.001"),
        ({"weight_decay": -1}, "`weight_decay` must be a number >= 0, got -1"),
        ({"max_epochs": 0}, "`max_epochs` must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "`batch_size` must be an integer >= 1, got 2.5"),
        ({"standardize": "yes"}, "`standardize` must be a bool, got 'yes'"),
        ({"random_state": "seed"}, "`random_state` must be None, an int or a numpy RandomState"),
        ({"module_kwargs": [1]}, "`module_kwargs` must be a mapping or None"),
        (
            {"module_kwargs": {"lr": 0.1, "num_groups": 3}},
            r"must not contain \['lr', 'num_groups'\]",
        ),
    ],
)
def test_invalid_arguments(data, params, match):
    X, y, group = data
    clf = FairNeuralClassifier(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y, sensitive_features=group)


def test_managed_module_kwargs_are_module_arguments():
    from fair_lightning.methods import METHODS

    parameters = set(inspect.signature(FairLightningModule).parameters)
    for cls in METHODS.values():
        parameters |= set(cls.argument_names())
    assert set(MODULE_MANAGED_KWARGS) <= parameters


def test_predict_before_fit(data):
    X, _, _ = data
    for method in ("predict", "predict_proba", "decision_function"):
        with pytest.raises(NotFittedError):
            getattr(FairNeuralClassifier(), method)(X)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (np.arange(600) % 3, "Only binary classification is supported.*multiclass"),
        (np.linspace(0, 1, 600), "Unknown label type"),
        (np.ones(600, dtype=int), "two classes .* got 1 class"),
    ],
)
def test_non_binary_target(data, target, match):
    X, _, group = data
    with pytest.raises(ValueError, match=match):
        FairNeuralClassifier().fit(X, target, sensitive_features=group)


def test_predict_checks_features(data):
    X, y, group = data
    clf = FairNeuralClassifier(**FAST).fit(X, y, sensitive_features=group)
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing"):
        clf.predict(X.iloc[:, :3])
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X.to_numpy())
    clf = FairNeuralClassifier(**FAST).fit(X.to_numpy(), y, sensitive_features=group)
    with pytest.raises(ValueError, match="3 features, but FairNeuralClassifier is expecting 4"):
        clf.predict(X.to_numpy()[:, :3])


def test_failed_fit_leaves_no_fitted_attributes(data):
    X, y, group = data
    # Invalid module arguments surface when the module is built, after the data checks.
    clf = FairNeuralClassifier(**FAST, module_kwargs={"temperature": 1.0, "threshold": 1.5})
    with pytest.raises(ValueError, match="`threshold` must be in"):
        clf.fit(X, y, sensitive_features=group)
    assert not [name for name in vars(clf) if name.endswith("_")]
    with pytest.raises(NotFittedError):
        clf.predict(X)
