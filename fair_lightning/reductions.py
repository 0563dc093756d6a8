"""Fair classification by reduction: a scikit-learn meta-estimator around fairlearn.

:class:`ReductionsWrapper` runs fairlearn's
:class:`~fairlearn.reductions.ExponentiatedGradient` (Agarwal et al., 2018, "A Reductions
Approach to Fair Classification") around any scikit-learn classifier whose ``fit`` accepts
``sample_weight``, and behaves like a native scikit-learn classifier: parameters are stored by
``__init__`` and validated by ``fit``, labels may be any two classes, ``sensitive_features`` is
routed by scikit-learn's metadata routing (so the wrapper works inside ``Pipeline`` and
``GridSearchCV``), and the fitted model is either fairlearn's randomized ensemble or, with
``deterministic=True``, the single best classifier of that ensemble that meets the constraint on
the training data.

Example:
    >>> import sklearn
    >>> from sklearn.model_selection import GridSearchCV
    >>> from fair_lightning.reductions import ReductionsWrapper
    >>> sklearn.set_config(enable_metadata_routing=True)  # doctest: +SKIP
    >>> search = GridSearchCV(ReductionsWrapper(), {"difference_bound": [0.01, 0.05]})
    >>> search.fit(X, y, sensitive_features=sex)  # doctest: +SKIP

``sensitive_features`` is requested by default (like ``groups`` in scikit-learn's group
splitters), because the wrapper cannot fit without it.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.reductions import (
    ClassificationMoment,
    DemographicParity,
    EqualizedOdds,
    ErrorRateParity,
    ExponentiatedGradient,
    FalsePositiveRateParity,
    Moment,
    TruePositiveRateParity,
)
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state, get_tags, metadata_routing
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    check_array,
    check_is_fitted,
    check_X_y,
    has_fit_parameter,
    validate_data,
)

__all__ = ["CONSTRAINTS", "ReductionsWrapper"]

#: Constraint names accepted by :class:`ReductionsWrapper`, and the fairlearn moment each builds.
CONSTRAINTS: dict[str, type[ClassificationMoment]] = {
    "demographic_parity": DemographicParity,
    "equalized_odds": EqualizedOdds,
    "true_positive_rate_parity": TruePositiveRateParity,
    "false_positive_rate_parity": FalsePositiveRateParity,
    "error_rate_parity": ErrorRateParity,
}

# A predictor "meets the constraint" when every entry of gamma - bound is <= this tolerance; a
# constant predictor has gamma ~ 1e-17, which must count as meeting a zero bound.
_FEASIBILITY_TOL = 1e-10

_MESSAGE_UNKNOWN_CONSTRAINT = (
    "`constraints` must be one of {names} or a fairlearn ClassificationMoment instance, "
    "got {value!r}"
)
_MESSAGE_MISSING_SENSITIVE_FEATURES = (
    "`sensitive_features` is required by ReductionsWrapper.fit, got None. Pass "
    "fit(X, y, sensitive_features=A); inside Pipeline or GridSearchCV, enable metadata routing "
    "(sklearn.set_config(enable_metadata_routing=True)) and pass sensitive_features=A to their "
    "fit (the wrapper requests it by default)."
)
_MESSAGE_NO_SAMPLE_WEIGHT = (
    "`estimator` must accept `sample_weight` in `fit`: ExponentiatedGradient refits it on "
    "reweighted data at every iteration, but {estimator!r}.fit has no `sample_weight` parameter."
)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_sensitive_features(sensitive_features: Any, n_samples: int) -> None:
    """Validate ``sensitive_features`` for ``fit``: present, 1-D or 2-D, one row per sample, no missing values."""
    if sensitive_features is None:
        raise ValueError(_MESSAGE_MISSING_SENSITIVE_FEATURES)
    values = check_array(
        sensitive_features,
        ensure_2d=False,
        dtype=None,
        ensure_all_finite=False,
        allow_nd=True,
        input_name="sensitive_features",
    )
    if values.ndim > 2:
        raise ValueError(
            "`sensitive_features` must be 1-D (one attribute) or 2-D (one column per "
            f"attribute), got an array of shape {values.shape}"
        )
    if values.shape[0] != n_samples:
        raise ValueError(
            f"`sensitive_features` must have one row per sample ({n_samples}), got "
            f"{values.shape[0]} rows"
        )
    if pd.isna(pd.DataFrame(values.reshape(n_samples, -1))).to_numpy().any():
        raise ValueError(
            "`sensitive_features` contains missing values (NaN/None); encode them as their "
            "own group first"
        )


# Mixins before BaseEstimator: scikit-learn's required order, without which the classifier tags
# set by ClassifierMixin are lost.
class ReductionsWrapper(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """Binary classifier trained under a fairness constraint by exponentiated gradient.

    A scikit-learn meta-estimator around fairlearn's
    :class:`~fairlearn.reductions.ExponentiatedGradient`: the base ``estimator`` is refitted on
    reweighted and relabelled training data until the Lagrangian game between the error and the
    constraint violations reaches a small duality gap. The result is a randomized classifier, a
    distribution ``weights_`` over the fitted ``predictors_``; ``predict`` samples it (one draw
    per row) and ``predict_proba`` gives the probability of each output. With
    ``deterministic=True`` the wrapper instead predicts with one member of that ensemble: the
    one with the best training accuracy among those that meet the constraint on the training
    data.

    Args:
        estimator: Base classifier; its ``fit`` must accept ``sample_weight`` and it must predict
            0/1 labels when fitted on 0/1 labels (every scikit-learn classifier does). ``None``
            means ``LogisticRegression()``. It is cloned, never fitted in place.
        constraints: The fairness constraint: one of ``"demographic_parity"``,
            ``"equalized_odds"``, ``"true_positive_rate_parity"``,
            ``"false_positive_rate_parity"``, ``"error_rate_parity"`` (see :data:`CONSTRAINTS`),
            or a fairlearn :class:`~fairlearn.reductions.ClassificationMoment` instance, which
            is deep-copied at every fit so that refitting starts clean.
        difference_bound: Largest allowed difference between a group's statistic and the
            overall one (fairlearn's ``difference_bound``; for ``"error_rate_parity"`` it bounds
            the differences of error rates, as fairlearn's ``ErrorRateParity`` does). ``None``
            keeps fairlearn's default, 0.01. Only valid with a constraint name: a moment
            instance carries its own bound.
        eps: Allowed constraint violation in the optimization; the L1 bound on the Lagrange
            multipliers is ``1 / eps`` (fairlearn's ``eps``).
        max_iter: Maximum number of exponentiated-gradient iterations.
        nu: Convergence threshold on the duality gap; ``None`` lets fairlearn choose it from the
            statistical uncertainty of the training error.
        eta0: Initial learning rate of the multipliers.
        random_state: Seeds the randomized predictions of ``predict`` when it gets no
            ``random_state`` of its own: an int gives the same draws at every call, ``None``
            fresh draws. It does not seed the base estimator: set the base estimator's own
            ``random_state`` for a reproducible fit.
        deterministic: Predict with the single selected classifier (``selected_index_``)
            instead of the randomized ensemble.

    Attributes:
        classes_ (numpy.ndarray): The two class labels; ``classes_[1]`` is the positive class
            (the one fairlearn's constraints call 1).
        n_features_in_ (int): Number of features seen in ``fit``.
        feature_names_in_ (numpy.ndarray): Feature names seen in ``fit``, when ``X`` had
            string column names.
        estimator_ (estimator): The unfitted clone of the base estimator handed to fairlearn.
        constraints_ (fairlearn.reductions.Moment): The unloaded moment handed to fairlearn.
        exponentiated_gradient_ (fairlearn.reductions.ExponentiatedGradient): The fitted fairlearn
            object (its ``nu`` holds the value chosen when ``nu=None``).
        n_iter_ (int): Number of exponentiated-gradient iterations run (at most ``max_iter``).
        predictors_ (list): The classifiers fitted by fairlearn, in the order it found them.
        weights_ (numpy.ndarray): Weight of each of ``predictors_`` in the randomized classifier
            (sums to 1), aligned with ``predictors_``.
        selected_index_ (int | None): With ``deterministic=True``, the index into
            ``predictors_`` of the classifier used by ``predict``; ``None`` otherwise.
        predictor_violations_ (numpy.ndarray | None): With ``deterministic=True``, the largest
            constraint violation beyond the bound (``max(gamma - bound)``, from fairlearn's own
            moment on the training data) of each of ``predictors_``; ``<= 0`` means the
            constraint is met. ``None`` otherwise.
        predictor_accuracies_ (numpy.ndarray | None): With ``deterministic=True``, the training
            accuracy of each of ``predictors_``; ``None`` otherwise.

    Note:
        fairlearn's exponentiated gradient takes no per-sample weights (its moments are
        unweighted group rates), so ``fit`` has no ``sample_weight`` parameter: advertising one
        would make meta-estimators such as ``BaggingClassifier`` or ``AdaBoostClassifier`` pass
        weights that cannot be honoured.

    Example:
        >>> wrapper = ReductionsWrapper(constraints="equalized_odds", difference_bound=0.02)
        >>> wrapper.fit(X, y, sensitive_features=df[["sex", "race"]])  # doctest: +SKIP
        >>> wrapper.predict(X_test, random_state=0)  # doctest: +SKIP
    """

    # Required metadata is requested by default, as scikit-learn does for `groups` in its
    # group splitters; `random_state` of `predict` is an argument, not metadata.
    __metadata_request__fit = {"sensitive_features": True}
    __metadata_request__predict = {"random_state": metadata_routing.UNUSED}

    def __init__(
        self,
        estimator: Any = None,
        constraints: str | Moment = "demographic_parity",
        *,
        difference_bound: float | None = None,
        eps: float = 0.01,
        max_iter: int = 50,
        nu: float | None = None,
        eta0: float = 2.0,
        random_state: int | np.random.RandomState | None = None,
        deterministic: bool = False,
    ) -> None:
        self.estimator = estimator
        self.constraints = constraints
        self.difference_bound = difference_bound
        self.eps = eps
        self.max_iter = max_iter
        self.nu = nu
        self.eta0 = eta0
        self.random_state = random_state
        self.deterministic = deterministic

    # ------------------------------------------------------------------ validation helpers
    def _base_estimator(self) -> Any:
        return LogisticRegression() if self.estimator is None else self.estimator

    def _check_params(self) -> None:  # noqa: C901 - one flat list of argument checks
        estimator = self._base_estimator()
        if isinstance(estimator, type):
            raise TypeError(
                f"`estimator` must be an estimator instance, got the class {estimator!r}; "
                f"pass {estimator.__name__}() instead"
            )
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
            raise TypeError(
                f"`estimator` must implement `fit` and `predict`, got {estimator!r}"
            )
        if not has_fit_parameter(estimator, "sample_weight"):
            raise ValueError(_MESSAGE_NO_SAMPLE_WEIGHT.format(estimator=estimator))

        constraints = self.constraints
        if isinstance(constraints, str):
            if constraints not in CONSTRAINTS:
                raise ValueError(
                    _MESSAGE_UNKNOWN_CONSTRAINT.format(names=list(CONSTRAINTS), value=constraints)
                )
        elif isinstance(constraints, Moment):
            if not isinstance(constraints, ClassificationMoment):
                raise ValueError(
                    "`constraints` must be a ClassificationMoment for a classifier, got "
                    f"{constraints!r} (a {type(constraints).__name__}, which is a loss moment "
                    "for regression)"
                )
            if self.difference_bound is not None:
                raise ValueError(
                    "`difference_bound` applies only when `constraints` is a name; a moment "
                    "instance carries its own bound. Got difference_bound="
                    f"{self.difference_bound!r} with constraints={constraints!r}"
                )
        else:
            raise ValueError(
                _MESSAGE_UNKNOWN_CONSTRAINT.format(names=list(CONSTRAINTS), value=constraints)
            )

        if self.difference_bound is not None and not (
            _is_real(self.difference_bound) and self.difference_bound >= 0
        ):
            raise ValueError(
                f"`difference_bound` must be a number >= 0 or None, got {self.difference_bound!r}"
            )
        if not (_is_real(self.eps) and self.eps > 0):
            raise ValueError(f"`eps` must be a number > 0, got {self.eps!r}")
        if not (_is_int(self.max_iter) and self.max_iter >= 1):
            raise ValueError(f"`max_iter` must be an integer >= 1, got {self.max_iter!r}")
        if self.nu is not None and not (_is_real(self.nu) and self.nu > 0):
            raise ValueError(f"`nu` must be a number > 0 or None, got {self.nu!r}")
        if not (_is_real(self.eta0) and self.eta0 > 0):
            raise ValueError(f"`eta0` must be a number > 0, got {self.eta0!r}")
        if not isinstance(self.deterministic, bool | np.bool_):
            raise ValueError(f"`deterministic` must be a bool, got {self.deterministic!r}")
        try:
            check_random_state(self.random_state)
        except ValueError:
            raise ValueError(
                "`random_state` must be None, an int or a numpy RandomState, got "
                f"{self.random_state!r}"
            ) from None

    def _make_constraints(self) -> ClassificationMoment:
        if isinstance(self.constraints, Moment):
            # A fresh copy per fit: a moment holds its training data once loaded.
            return copy.deepcopy(self.constraints)
        moment_class = CONSTRAINTS[self.constraints]
        if self.difference_bound is None:
            return moment_class()
        return moment_class(difference_bound=self.difference_bound)

    def _finite_mode(self) -> bool | str:
        return "allow-nan" if self.__sklearn_tags__().input_tags.allow_nan else True

    def _input_for_base(self, X: Any, X_checked: np.ndarray) -> Any:
        # Data frames reach the base estimator as data frames (feature names, categorical
        # columns, column-selecting pipelines); anything else as the validated array.
        return X if isinstance(X, pd.DataFrame) else X_checked

    # ---------------------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any, *, sensitive_features: Any = None) -> ReductionsWrapper:
        """Fit the randomized classifier by exponentiated gradient.

        Args:
            X: Features, array-like or pandas data frame of shape ``(n_samples, n_features)``,
                any dtype the base estimator accepts (float32 and float64 stay as given).
            y: Binary labels of shape ``(n_samples,)``, any two classes.
            sensitive_features: Required. The sensitive attribute(s): shape ``(n_samples,)``
                (array, list or Series) for one attribute, or ``(n_samples, n_attributes)``
                (array or DataFrame) for several, whose combinations become the groups (as in
                fairlearn). Routed by metadata routing inside ``Pipeline`` / ``GridSearchCV``.

        Returns:
            The fitted wrapper.

        Raises:
            ValueError: On invalid arguments, a missing ``sensitive_features``, a base estimator
                whose ``fit`` has no ``sample_weight``, or a target that is not binary.
        """
        self._check_params()
        ensure_all_finite = self._finite_mode()
        # Validate everything before setting any fitted attribute, so that a failed fit does
        # not leave a half-fitted estimator behind.
        X_checked, y_checked = check_X_y(
            X,
            y,
            accept_sparse=False,
            dtype=None,
            ensure_all_finite=ensure_all_finite,
            y_numeric=False,
            estimator=self,
        )
        check_classification_targets(y_checked)
        y_type = type_of_target(y_checked, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError(
                "Only binary classification is supported. The type of the target is "
                f"{y_type}."
            )
        classes, y_encoded = np.unique(y_checked, return_inverse=True)
        if classes.shape[0] != 2:
            raise ValueError(
                "`y` must contain two classes for binary classification, got "
                f"{classes.shape[0]} class: {classes.tolist()}"
            )
        check_sensitive_features(sensitive_features, X_checked.shape[0])

        validate_data(self, X, reset=True, skip_check_array=True)
        self.classes_ = classes
        self.estimator_ = clone(self._base_estimator())
        self.constraints_ = self._make_constraints()
        X_base = self._input_for_base(X, X_checked)

        exponentiated_gradient = ExponentiatedGradient(
            estimator=self.estimator_,
            # fairlearn copies the moment before loading data; the copy here keeps
            # `constraints_` unloaded and reusable.
            constraints=copy.deepcopy(self.constraints_),
            eps=self.eps,
            max_iter=self.max_iter,
            nu=self.nu,
            eta0=self.eta0,
        )
        exponentiated_gradient.fit(X_base, y_encoded, sensitive_features=sensitive_features)
        self.exponentiated_gradient_ = exponentiated_gradient
        self.n_iter_ = int(exponentiated_gradient.last_iter_) + 1

        order = exponentiated_gradient.predictors_.index
        self.predictors_ = list(exponentiated_gradient.predictors_)
        self.weights_ = (
            exponentiated_gradient.weights_.reindex(order).fillna(0.0).to_numpy(dtype=np.float64)
        )

        self.selected_index_ = None
        self.predictor_violations_ = None
        self.predictor_accuracies_ = None
        if self.deterministic:
            self._select_predictor(X_base, y_encoded)
        return self

    def _select_predictor(self, X_base: Any, y_encoded: np.ndarray) -> None:
        """Pick the most accurate predictor that meets the constraint on the training data."""
        moment = self.exponentiated_gradient_.constraints_  # loaded with the training data
        bound = moment.bound()
        violations = np.empty(len(self.predictors_))
        accuracies = np.empty(len(self.predictors_))
        for i, predictor in enumerate(self.predictors_):
            y_pred = np.asarray(predictor.predict(X_base)).reshape(-1)
            violations[i] = float((moment.gamma(lambda _X, y_pred=y_pred: y_pred) - bound).max())
            accuracies[i] = float(np.mean(y_pred == y_encoded))

        feasible = np.flatnonzero(violations <= _FEASIBILITY_TOL)
        if feasible.size:
            # Best accuracy; ties go to the smaller violation, then to the earlier predictor.
            ranking = np.lexsort((feasible, violations[feasible], -accuracies[feasible]))
            selected = feasible[ranking[0]]
        else:
            candidates = np.arange(len(self.predictors_))
            selected = candidates[np.lexsort((candidates, -accuracies, violations))[0]]
            warnings.warn(
                "No classifier found by ExponentiatedGradient meets the constraint on the "
                f"training data; using predictor {selected}, the least violating one "
                f"(max(gamma - bound) = {violations[selected]:.4g}, training accuracy "
                f"{accuracies[selected]:.4f}). Increase `max_iter`, lower `nu` or relax the "
                "bound to find a feasible one.",
                UserWarning,
                stacklevel=3,
            )
        self.selected_index_ = int(selected)
        self.predictor_violations_ = violations
        self.predictor_accuracies_ = accuracies

    # ------------------------------------------------------------------------- prediction
    def _check_predict_input(self, X: Any) -> Any:
        check_is_fitted(self)
        X_checked = validate_data(
            self,
            X,
            reset=False,
            accept_sparse=False,
            dtype=None,
            ensure_all_finite=self._finite_mode(),
        )
        return self._input_for_base(X, X_checked)

    def predict(self, X: Any, random_state: int | np.random.RandomState | None = None) -> Any:
        """Predict class labels.

        Randomized (default): for each row, a classifier is drawn from ``weights_`` and
        applied, exactly as ``ExponentiatedGradient.predict`` does (one uniform draw per row,
        compared with the probability of the positive class). Deterministic: the predictions
        of ``predictors_[selected_index_]``.

        Args:
            X: Features with the columns seen in ``fit``.
            random_state: Seed of the draws; ``None`` falls back to the ``random_state`` given
                to the constructor. Ignored with ``deterministic=True``.

        Returns:
            numpy.ndarray: Labels from ``classes_``, shape ``(n_samples,)``.

        Raises:
            sklearn.exceptions.NotFittedError: If called before ``fit``.
        """
        X_base = self._check_predict_input(X)
        if self.selected_index_ is not None:
            y_pred = self.predictors_[self.selected_index_].predict(X_base)
        else:
            seed = self.random_state if random_state is None else random_state
            y_pred = self.exponentiated_gradient_.predict(X_base, random_state=seed)
        return self.classes_[np.asarray(y_pred).reshape(-1).astype(np.intp)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probability of each class being the output of :meth:`predict`.

        Randomized: the mixture ``sum_k weights_[k] * predictors_[k].predict(X)`` (fairlearn's
        probability mass function), so that ``predict`` is a draw from it. Deterministic: one
        column is 1 (the selected classifier's prediction), the other 0. These are
        probabilities of the wrapper's output, not calibrated class probabilities.

        Args:
            X: Features with the columns seen in ``fit``.

        Returns:
            numpy.ndarray: Shape ``(n_samples, 2)``, columns ordered as ``classes_``.

        Raises:
            sklearn.exceptions.NotFittedError: If called before ``fit``.
        """
        X_base = self._check_predict_input(X)
        if self.selected_index_ is not None:
            y_pred = np.asarray(self.predictors_[self.selected_index_].predict(X_base))
            positive = y_pred.reshape(-1).astype(np.float64)
            return np.column_stack((1.0 - positive, positive))
        return np.asarray(self.exponentiated_gradient_._pmf_predict(X_base), dtype=np.float64)

    def __sklearn_tags__(self):
        """Binary classifier; dense input; missing values allowed iff the base allows them."""
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.sparse = False
        try:
            tags.input_tags.allow_nan = get_tags(self._base_estimator()).input_tags.allow_nan
        except (AttributeError, TypeError):  # a base estimator without scikit-learn tags
            tags.input_tags.allow_nan = False
        return tags
