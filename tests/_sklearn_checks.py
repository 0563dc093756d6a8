"""scikit-learn common-check helpers shared by the estimator tests.

Both ``ReductionsWrapper`` and ``FairNeuralClassifier`` require ``sensitive_features`` in ``fit``;
scikit-learn's common checks call ``fit(X, y)`` without it. The same list of checks fails for
that one reason on both (proved by each test file's ``test_expected_failures_are_...``).
"""

from __future__ import annotations

import functools

import numpy as np


def _rows(X) -> int:
    shape = getattr(X, "shape", None)
    if shape is None:
        shape = np.asarray(X).shape
    return shape[0] if len(shape) else 0


_MISSING_SF = (
    "calls fit(X, y) without the required sensitive_features (ValueError); "
    "passes on _RowParityGroups"
)
#: Checks the bare wrapper fails, all because sensitive_features is required (see
#: test_expected_failures_are_the_missing_sensitive_features for the proof of the reason).
EXPECTED_FAILED_CHECKS = {
    name: _MISSING_SF
    for name in [
        "check_fit_score_takes_y",
        "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self",
        "check_readonly_memmap_input",
        "check_n_features_in_after_fitting",
        "check_estimators_dtypes",
        "check_dtype_object",
        "check_pipeline_consistency",
        "check_estimators_nan_inf",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_classifier_data_not_an_array",
        "check_classifiers_classes",
        "check_classifiers_train",
        "check_supervised_y_2d",
        "check_non_transformer_estimators_n_iter",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit_check_is_fitted",
        "check_n_features_in",
        "check_fit2d_predict1d",
    ]
}
EXPECTED_FAILED_CHECKS["check_positive_only_tag_during_fit"] = (
    _MISSING_SF + "; reported as 'raised ValueError unexpectedly'"
)
EXPECTED_FAILED_CHECKS["check_fit2d_1feature"] = (
    _MISSING_SF + "; the check wants that ValueError to be about 1 feature"
)


def _check_name(check) -> str:
    return check.func.__name__ if isinstance(check, functools.partial) else check.__name__


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__
