"""Fair neural networks as scikit-learn classifiers: :class:`FairNeuralClassifier`.

:class:`FairNeuralClassifier` trains a :class:`~fair_lightning.module.FairLightningModule`
around a multi-layer perceptron with a Lightning ``Trainer`` and behaves like a native
scikit-learn classifier, the neural twin of
:class:`~fair_lightning.reductions.ReductionsWrapper`: parameters are stored by ``__init__`` and
validated by ``fit``, labels may be any two classes, and ``sensitive_features`` is an explicit
keyword of ``fit`` that scikit-learn's metadata routing passes through ``Pipeline`` and
``GridSearchCV`` (it is requested by default, because the classifier cannot fit without it).
Prediction needs only ``X``.

Example:
    >>> import sklearn
    >>> from sklearn.model_selection import GridSearchCV
    >>> from fair_lightning.estimators import FairNeuralClassifier
    >>> sklearn.set_config(enable_metadata_routing=True)  # doctest: +SKIP
    >>> search = GridSearchCV(FairNeuralClassifier(), {"tolerance": [0.01, 0.05]})
    >>> search.fit(X, y, sensitive_features=sex)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data
from torch import nn
from typing_extensions import override

from fair_lightning.constraints import FairnessConstraint
from fair_lightning.data._batching import (
    BatchIndexSampler,
    InMemoryDataLoader,
    TensorBatchDataset,
    no_collate,
)
from fair_lightning.groups import GroupSpec
from fair_lightning.functional._rates import DEFINITIONS
from fair_lightning.losses import LOSSES, FairnessLoss
from fair_lightning.module import MODES, FairLightningModule
from fair_lightning.reductions import _is_int, _is_real, check_sensitive_features

__all__ = ["FairNeuralClassifier", "MODULE_MANAGED_KWARGS"]

#: ``FairLightningModule`` arguments that :class:`FairNeuralClassifier` sets itself (from its
#: own parameters or the data); ``module_kwargs`` may not contain them.
MODULE_MANAGED_KWARGS: dict[str, str] = {
    "model": "hidden_layer_sizes",
    "num_groups": "sensitive_features (given to fit)",
    "group_names": "sensitive_features (given to fit)",
    "mode": "mode",
    "fairness": "constraints",
    "constraints": "constraints",
    "eta": "eta",
    "tolerance": "tolerance",
    "dual_lr": "dual_lr",
    "lr": "lr",
    "weight_decay": "weight_decay",
}

# Defaults of the module that differ for the estimator: there is no logger to receive the
# gradient-norm ratio (an extra backward pass), and fit builds the batches itself, so the
# per-batch checks of targets and group ids are redundant. `module_kwargs` can override both.
_MODULE_DEFAULTS: dict[str, Any] = {"grad_ratio_every_n_steps": 0, "validate_args": False}

#: Valid ``constraints`` names for each mode that uses them.
_CONSTRAINT_NAMES: dict[str, tuple[str, ...]] = {
    "penalty": tuple(LOSSES),
    "lagrangian": tuple(DEFINITIONS),
    "adversarial": tuple(d for d in DEFINITIONS if d != "accuracy_parity"),
}

_MESSAGE_UNKNOWN_CONSTRAINT = (
    "`constraints` must be one of {names} for mode={mode!r}{extra}, got {value!r}"
)
_MESSAGE_MISSING_SENSITIVE_FEATURES = (
    "`sensitive_features` is required by FairNeuralClassifier.fit, got None. Pass "
    "fit(X, y, sensitive_features=A); inside Pipeline or GridSearchCV, enable metadata routing "
    "(sklearn.set_config(enable_metadata_routing=True)) and pass sensitive_features=A to their "
    "fit (the classifier requests it by default)."
)
# Rows per forward pass in predict: bounds the memory of the activations on large inputs.
_PREDICT_CHUNK = 65_536


def _sensitive_frame(sensitive_features: Any, n_samples: int) -> pd.DataFrame:
    """The sensitive attributes as a data frame with one string-named column per attribute.

    Unnamed attributes are called ``sensitive_feature_0``, ``sensitive_feature_1``, ... as in
    fairlearn; a Series keeps its name, a DataFrame its column names.
    """
    if isinstance(sensitive_features, pd.DataFrame):
        frame = sensitive_features.reset_index(drop=True)
    elif isinstance(sensitive_features, pd.Series):
        name = sensitive_features.name
        frame = sensitive_features.reset_index(drop=True).to_frame(
            name="sensitive_feature_0" if name is None else name
        )
    else:
        values = np.asarray(sensitive_features).reshape(n_samples, -1)
        frame = pd.DataFrame(
            values, columns=[f"sensitive_feature_{j}" for j in range(values.shape[1])]
        )
    names = [str(column) for column in frame.columns]
    if len(set(names)) != len(names):  # e.g. the columns 1 and "1": keep them apart
        names = [f"{name}_{j}" for j, name in enumerate(names)]
    frame.columns = names
    return frame


class _EpochHistory(pl.Callback):
    """Record the epoch-level training metrics (and the largest multiplier) after every epoch."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row: dict[str, float] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_epoch"):
                row[key] = float(value)
        if getattr(pl_module, "multipliers", None) is not None:
            row["fairness/multiplier_max"] = float(pl_module.multipliers.multipliers.max())
        self.history.append(row)


@contextlib.contextmanager
def _quiet_lightning(verbose: bool) -> Iterator[None]:
    """Silence Lightning's info lines and its "possible mistake" warnings, unless verbose."""
    if verbose:
        yield
        return
    logger = logging.getLogger("lightning.pytorch")  # the parent of all of Lightning's loggers
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Lightning's hints for interactive runs (no val loader, few workers, few batches):
            # the estimator builds the in-memory loader itself and has no validation loop.
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            yield
    finally:
        logger.setLevel(level)


# Mixins before BaseEstimator: scikit-learn's required order, without which the classifier tags
# set by ClassifierMixin are lost.
class FairNeuralClassifier(ClassifierMixin, BaseEstimator):
    """Binary MLP classifier trained fair by design, as a scikit-learn estimator.

    ``fit`` standardizes the features (optional), turns the sensitive attributes into group ids
    (several attributes give intersectional groups, see :class:`~fair_lightning.groups.GroupSpec`),
    and trains a :class:`~fair_lightning.module.FairLightningModule` around a multi-layer
    perceptron (ReLU hidden layers, one logit out) with a quiet Lightning ``Trainer`` (no logger,
    checkpoints, progress bar or model summary) on the whole-batch in-memory data path. The
    trainer is not kept: the fitted estimator holds the trained module (moved to the CPU), so it
    pickles, and predicts with plain forward passes, without ``sensitive_features``.

    Args:
        mode: ``"lagrangian"`` (the default: rate constraints enforced by Lagrange multipliers,
            ``tolerance`` and ``dual_lr``), ``"penalty"`` (task loss + ``eta`` * fairness loss),
            ``"adversarial"`` (an adversary predicting the group through a gradient reversal of
            strength ``eta``) or ``"erm"`` (task loss only, the unconstrained baseline).
        constraints: The fairness definition. ``"demographic_parity"``, ``"equalized_odds"`` or
            ``"equal_opportunity"`` in every mode, and ``"mutual_information"`` (prejudice
            remover) for ``"penalty"``. ``"penalty"`` also takes a
            :class:`~fair_lightning.losses.FairnessLoss` instance (built for the number of
            groups of the data, deep-copied at every fit), and ``"lagrangian"`` a
            :class:`~fair_lightning.constraints.FairnessConstraint` or a list of names and
            constraints (all enforced together). It becomes the module's ``fairness``
            (penalty, adversarial) or ``constraints`` (lagrangian); ignored by ``"erm"``.
        hidden_layer_sizes: Widths of the hidden layers (an int for one layer; ``()`` gives a
            logistic regression).
        eta: Fairness strength, ``>= 0``: weight of the penalty, or strength of the gradient
            reversal. Unused by ``"erm"`` and ``"lagrangian"``.
        tolerance: Allowed max - min difference across groups of each constrained rate
            (``"lagrangian"``), in ``[0, 1)``.
        dual_lr: How far the multipliers ascend per epoch per unit of violation
            (``"lagrangian"``), ``> 0``.
        max_epochs: Number of training epochs, ``>= 1``.
        batch_size: Largest training batch, ``>= 1`` (an epoch is split into near-equal
            batches, so there is no tiny last batch).
        lr: Learning rate of the model's Adam optimizer, ``> 0``.
        weight_decay: Weight decay of that optimizer, ``>= 0``.
        standardize: Fit a :class:`~sklearn.preprocessing.StandardScaler` on the training
            features and apply it before the network (``scaler_``).
        random_state: Seeds the weight initialization and the batch order: an int gives the
            same model at every fit; ``None`` a fresh seed from numpy's global generator; a
            ``RandomState`` draws the seed from it. The global torch generator is left as it
            was (the fit runs in a forked RNG state).
        accelerator: Lightning accelerator of the training (``"cpu"``, ``"gpu"``, ``"auto"``,
            ...). Training uses one device; prediction runs on the CPU.
        verbose: Show Lightning's progress bar, model summary and info messages.
        module_kwargs: Extra arguments of :class:`~fair_lightning.module.FairLightningModule`
            (``temperature``, ``multiplier_max``, ``adversary_input``, ``penalty``,
            ``min_count``, ``optimizer``, ...). Those the estimator sets itself are refused
            (see :data:`MODULE_MANAGED_KWARGS`).

    Attributes:
        classes_ (numpy.ndarray): The two class labels; ``classes_[1]`` is the positive class
            (the favourable outcome whose rates the fairness definitions compare).
        n_features_in_ (int): Number of features seen in ``fit``.
        feature_names_in_ (numpy.ndarray): Feature names seen in ``fit``, when ``X`` had string
            column names.
        scaler_ (sklearn.preprocessing.StandardScaler | None): The fitted scaler, or ``None``
            with ``standardize=False``.
        group_spec_ (fair_lightning.groups.GroupSpec): The sensitive attributes and their
            levels (sorted distinct values, or a categorical's categories); the groups are all
            their combinations (a combination absent from the data is an empty group, which
            the fairness terms mask).
        group_names_ (list[str]): Name of each group id, ``"sex=F&race=B"``.
        module_ (fair_lightning.module.FairLightningModule): The trained module, on the CPU, in
            eval mode.
        n_iter_ (int): Number of epochs run.
        history_ (list[dict[str, float]]): One entry per epoch with the epoch-level training
            metrics (``"train/loss_epoch"``, ``"train/task_loss_epoch"``, ...; for
            ``"lagrangian"`` also ``"fairness/violation_hard_max_epoch"`` and
            ``"fairness/multiplier_max"``).
        multipliers_ (numpy.ndarray | None): Final Lagrange multipliers (``"lagrangian"``), in
            the order of ``constraint_names_``; ``None`` in other modes.
        constraint_names_ (list[str]): Name of each multiplier,
            ``"{definition}/{rate}/{group}/{upper|lower}"``; empty in other modes.

    Note:
        ``fit`` takes no ``sample_weight``: the module's task loss and group rates are
        unweighted, and advertising weights would make meta-estimators pass weights that
        cannot be honoured.

    Example:
        >>> clf = FairNeuralClassifier("lagrangian", "equalized_odds", tolerance=0.02)
        >>> clf.fit(X, y, sensitive_features=df[["sex", "race"]])  # doctest: +SKIP
        >>> clf.predict_proba(X_test)  # doctest: +SKIP
    """

    # Required metadata is requested by default, as scikit-learn does for `groups` in its
    # group splitters (and as ReductionsWrapper does).
    __metadata_request__fit = {"sensitive_features": True}

    def __init__(
        self,
        mode: str = "lagrangian",
        constraints: Any = "demographic_parity",
        *,
        hidden_layer_sizes: int | tuple[int, ...] = (128, 128),
        eta: float = 1.0,
        tolerance: float = 0.01,
        dual_lr: float = 2.0,
        max_epochs: int = 50,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        standardize: bool = True,
        random_state: int | np.random.RandomState | None = None,
        accelerator: str = "cpu",
        verbose: bool = False,
        module_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.mode = mode
        self.constraints = constraints
        self.hidden_layer_sizes = hidden_layer_sizes
        self.eta = eta
        self.tolerance = tolerance
        self.dual_lr = dual_lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.random_state = random_state
        self.accelerator = accelerator
        self.verbose = verbose
        self.module_kwargs = module_kwargs

    # ------------------------------------------------------------------ validation helpers
    def _check_constraints(self) -> None:
        mode, value = self.mode, self.constraints
        if mode == "erm":
            return
        names = _CONSTRAINT_NAMES[mode]
        if mode == "penalty" and isinstance(value, FairnessLoss):
            return
        if mode == "lagrangian" and not isinstance(value, str):
            entries = [value] if isinstance(value, FairnessConstraint) else value
            if isinstance(entries, list | tuple) and entries and all(
                isinstance(c, FairnessConstraint) or (isinstance(c, str) and c in names)
                for c in entries
            ):
                return
        if isinstance(value, str) and value in names:
            return
        extra = {
            "penalty": " or a FairnessLoss instance",
            "lagrangian": ", a FairnessConstraint, or a non-empty list of them",
        }.get(mode, "")
        raise ValueError(
            _MESSAGE_UNKNOWN_CONSTRAINT.format(
                names=list(names), mode=mode, extra=extra, value=value
            )
        )

    def _hidden_layer_sizes(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if _is_int(sizes) else sizes
        if not (
            isinstance(sizes, list | tuple | np.ndarray)
            and all(_is_int(size) and size >= 1 for size in sizes)
        ):
            raise ValueError(
                "`hidden_layer_sizes` must be an int >= 1 or a sequence of them, got "
                f"{self.hidden_layer_sizes!r}"
            )
        return tuple(int(s) for s in sizes)

    def _module_kwargs(self) -> dict[str, Any]:
        extra = self.module_kwargs
        if extra is None:
            extra = {}
        if not isinstance(extra, Mapping):
            raise ValueError(f"`module_kwargs` must be a mapping or None, got {extra!r}")
        managed = sorted(set(extra) & set(MODULE_MANAGED_KWARGS))
        if managed:
            hints = ", ".join(f"{k!r} -> {MODULE_MANAGED_KWARGS[k]}" for k in managed)
            raise ValueError(
                f"`module_kwargs` must not contain {managed}: FairNeuralClassifier sets them "
                f"itself ({hints})"
            )
        return {**_MODULE_DEFAULTS, **extra}

    def _check_params(self) -> None:  # noqa: C901 - one flat list of argument checks
        if not (isinstance(self.mode, str) and self.mode in MODES):
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {self.mode!r}")
        self._check_constraints()
        self._hidden_layer_sizes()
        for name in ("eta", "tolerance", "weight_decay"):
            value = getattr(self, name)
            if not (_is_real(value) and value >= 0):
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")
        for name in ("dual_lr", "lr"):
            value = getattr(self, name)
            if not (_is_real(value) and value > 0):
                raise ValueError(f"`{name}` must be a number > 0, got {value!r}")
        for name in ("max_epochs", "batch_size"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        for name in ("standardize", "verbose"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"`{name}` must be a bool, got {value!r}")
        if not isinstance(self.accelerator, str):
            raise ValueError(f"`accelerator` must be a string, got {self.accelerator!r}")
        self._module_kwargs()
        try:
            check_random_state(self.random_state)
        except ValueError:
            raise ValueError(
                "`random_state` must be None, an int or a numpy RandomState, got "
                f"{self.random_state!r}"
            ) from None

    def _groups(self, sensitive_features: Any, n_samples: int) -> tuple[GroupSpec, torch.Tensor]:
        if sensitive_features is None:
            raise ValueError(_MESSAGE_MISSING_SENSITIVE_FEATURES)
        # the same rules and messages as ReductionsWrapper (shape, one row per sample, no NaN)
        check_sensitive_features(sensitive_features, n_samples)
        frame = _sensitive_frame(sensitive_features, n_samples)
        from fair_lightning.data import check_sensitive_levels

        for column in frame.columns:  # a continuous attribute would make one group per value
            check_sensitive_levels(frame[column], f"sensitive_features[{column!r}]")
        return GroupSpec.from_frame(frame, list(frame.columns))

    def _build_module(self, n_features: int, spec: GroupSpec) -> FairLightningModule:
        widths = (n_features, *self._hidden_layer_sizes())
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        # each method gets only its own arguments (the estimator's others do not apply to it)
        fairness: dict[str, Any] = {}
        if self.mode in ("penalty", "adversarial"):
            # A loss instance is copied, as clone() would: every fit starts from a fresh one, and
            # the fitted module never shares it with the parameter.
            fairness["fairness"] = copy.deepcopy(self.constraints)
            fairness["eta"] = float(self.eta)
        elif self.mode == "lagrangian":
            fairness["constraints"] = self.constraints
            fairness["tolerance"] = float(self.tolerance)
            fairness["dual_lr"] = float(self.dual_lr)
        return FairLightningModule(
            nn.Sequential(*layers),
            num_groups=spec.num_groups,
            group_names=spec.names,
            mode=self.mode,
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            **fairness,
            **self._module_kwargs(),
        )

    # ---------------------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any, *, sensitive_features: Any = None) -> FairNeuralClassifier:
        """Train the network under the fairness mode and definition.

        Args:
            X: Numeric features, array-like or pandas data frame of shape
                ``(n_samples, n_features)``; float32 and float64 are kept through
                standardization, and the network computes in float32.
            y: Binary labels of shape ``(n_samples,)``, any two classes.
            sensitive_features: Required. The sensitive attribute(s), categorical or integer:
                shape ``(n_samples,)`` (array, list or Series) for one attribute, or
                ``(n_samples, n_attributes)`` (array or DataFrame) for several, whose
                combinations become the groups. Routed by metadata routing inside
                ``Pipeline`` / ``GridSearchCV``.

        Returns:
            The fitted classifier.

        Raises:
            ValueError: On invalid parameters, a missing or malformed ``sensitive_features``,
                or a target that is not binary.
        """
        self._check_params()
        # Validate everything before setting any fitted attribute, so that a failed fit does
        # not leave a half-fitted estimator behind.
        X_checked, y_checked = check_X_y(
            X,
            y,
            accept_sparse=False,
            dtype=[np.float64, np.float32],
            y_numeric=False,
            estimator=self,
        )
        check_classification_targets(y_checked)
        y_type = type_of_target(y_checked, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError(
                f"Only binary classification is supported. The type of the target is {y_type}."
            )
        classes, y_encoded = np.unique(y_checked, return_inverse=True)
        if classes.shape[0] != 2:
            raise ValueError(
                "`y` must contain two classes for binary classification, got "
                f"{classes.shape[0]} class: {classes.tolist()}"
            )
        spec, groups = self._groups(sensitive_features, X_checked.shape[0])

        # Fitted attributes are set only once training has succeeded.
        scaler = StandardScaler().fit(X_checked) if self.standardize else None
        features = self._transform(X_checked, scaler)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        history = _EpochHistory()
        fork_devices = [] if self.accelerator == "cpu" else None
        with torch.random.fork_rng(devices=fork_devices), _quiet_lightning(bool(self.verbose)):
            torch.manual_seed(seed)
            module = self._build_module(features.shape[1], spec)
            loader = InMemoryDataLoader(
                TensorBatchDataset(
                    features, torch.as_tensor(y_encoded, dtype=torch.float32), groups
                ),
                sampler=BatchIndexSampler(len(features), int(self.batch_size), seed=seed),
                batch_size=None,
                collate_fn=no_collate,
            )
            trainer = pl.Trainer(
                accelerator=self.accelerator,
                devices=1,
                max_epochs=int(self.max_epochs),
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=bool(self.verbose),
                enable_model_summary=bool(self.verbose),
                num_sanity_val_steps=0,
                callbacks=[history],
            )
            trainer.fit(module, train_dataloaders=loader)
        # Keep the module, not the trainer: detached, on the CPU, ready to pickle and predict.
        n_epochs = int(trainer.current_epoch)
        module.trainer = None
        del trainer

        validate_data(self, X, reset=True, skip_check_array=True)
        self.classes_ = classes
        self.group_spec_ = spec
        self.group_names_ = spec.names
        self.scaler_ = scaler
        self.module_ = module.cpu().eval()
        self.n_iter_ = n_epochs
        self.history_ = history.history
        if module.multipliers is not None:
            self.multipliers_ = module.multipliers.multipliers.detach().numpy().copy()
        else:
            self.multipliers_ = None
        self.constraint_names_ = list(module.constraint_names)
        return self

    # ------------------------------------------------------------------------- prediction
    @staticmethod
    def _transform(X_checked: np.ndarray, scaler: StandardScaler | None) -> torch.Tensor:
        """Validated features -> the network's float32 input (standardized when asked)."""
        if scaler is not None:
            X_checked = scaler.transform(X_checked)
        # A copy: never a view of the caller's (possibly read-only) array.
        return torch.tensor(X_checked, dtype=torch.float32)

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed distance to the decision threshold, in logits.

        The network's logit minus the logit of the module's probability ``threshold`` (0.5 by
        default, so the logit itself): positive means ``classes_[1]``.

        Args:
            X: Features with the columns seen in ``fit``.

        Returns:
            numpy.ndarray: Shape ``(n_samples,)``, float64.

        Raises:
            sklearn.exceptions.NotFittedError: If called before ``fit``.
        """
        check_is_fitted(self)
        X_checked = validate_data(
            self, X, reset=False, accept_sparse=False, dtype=[np.float64, np.float32]
        )
        features = self._transform(X_checked, self.scaler_)
        module = self.module_
        logits = []
        with torch.inference_mode():
            for start in range(0, features.shape[0], _PREDICT_CHUNK):
                logits.append(module(features[start : start + _PREDICT_CHUNK]).reshape(-1))
        return torch.cat(logits).double().numpy() - module._logit_threshold

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: the sigmoid of the network's logit for ``classes_[1]``.

        Args:
            X: Features with the columns seen in ``fit``.

        Returns:
            numpy.ndarray: Shape ``(n_samples, 2)``, columns ordered as ``classes_``.

        Raises:
            sklearn.exceptions.NotFittedError: If called before ``fit``.
        """
        decision = self.decision_function(X)  # checks that the classifier is fitted
        positive = expit(decision + self.module_._logit_threshold)
        return np.column_stack((1.0 - positive, positive))

    def predict(self, X: Any) -> np.ndarray:
        """Class labels: ``classes_[1]`` where the probability exceeds the module's threshold.

        Args:
            X: Features with the columns seen in ``fit``.

        Returns:
            numpy.ndarray: Labels from ``classes_``, shape ``(n_samples,)``.

        Raises:
            sklearn.exceptions.NotFittedError: If called before ``fit``.
        """
        decision = self.decision_function(X)  # checks that the classifier is fitted
        return self.classes_[(decision > 0).astype(np.intp)]

    def __sklearn_tags__(self):
        """Binary classifier; dense, finite, numeric input."""
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags
