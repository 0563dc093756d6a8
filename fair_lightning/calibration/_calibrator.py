"""Per-group post-hoc calibration with hierarchical fallback for small groups.

Small-group rule (one rule for every method):

1. *Fit units.* Everyone (``"global"``); each marginal group ``attr=level`` (only with a
   :class:`~fair_lightning.groups.GroupSpec` of two or more attributes: these are the parents of
   the intersections); each group. A unit gets its own fit when it has at least
   ``min_group_size`` samples; the global map is always fitted.
2. *Parent.* A group's parent is, among its marginal parents that have their own fit, the one
   with the most samples (ties: the first attribute of the spec); when there is none (or no spec,
   or a spec of one attribute) it is the global map. A marginal group's parent is the global map.
   The largest parent is the most precise estimate that still shares an attribute level with
   the group.
3. *Enough data* (``n >= min_group_size``): the group's own map, shrunk towards its parent's
   map with weight ``w = n / (n + shrinkage)`` on the own fit (``shrinkage=0``, the default:
   no shrinkage). Platt and temperature shrink the parameters ``(a, b)``; isotonic takes the
   pointwise ``w``-average of the two piecewise-linear maps (still non-decreasing).
4. *Too little data* (``0 < n < min_group_size``): the parent's map, whole.
5. *Not seen at fit time* (``n = 0``): the global map; :meth:`GroupFairnessCalibrator.transform`
   warns when such a group appears.

The rule is the same for K-class logits (``method="temperature"`` or ``"vector"`` on ``(N, K)``
scores): shrinkage blends the per-class scale and bias vectors.

Groups under rules 4 and 5 are listed in ``fallback_`` (group name -> :class:`Fallback`) and every
group is in :meth:`GroupFairnessCalibrator.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import Tensor

from fair_lightning.calibration._inputs import as_tensor, check_finite, check_in_unit_interval, restore_kind
from fair_lightning.calibration._maps import (
    blend_piecewise,
    fit_isotonic,
    fit_logistic,
    fit_softmax_scaling,
    interpolate_rows,
    pad_breakpoints,
)
from fair_lightning.functional import (
    check_binary_target,
    check_groups,
    check_num_groups,
    check_scores,
    group_calibration_error,
    grouped_sum,
)
from fair_lightning.functional._calibration import calibration_error_summary
from fair_lightning.functional._multiclass import (
    check_class_target,
    multiclass_calibration_error_from_sums,
    multiclass_calibration_sums,
)
from fair_lightning.groups import GroupSpec

METHODS = ("platt", "isotonic", "temperature", "vector")
#: Methods that take K-class logits ``(N, K)`` (``"temperature"`` takes binary logits ``(N,)`` too).
MULTICLASS_METHODS = ("temperature", "vector")
#: Newest state version read; a binary calibrator writes version 1 (older readers load it), a
#: K-class one version 2.
STATE_VERSION = 2
GLOBAL_NAME = "global"
#: Smallest inverse temperature kept for ``method="temperature"`` (a fit below it is clipped).
MIN_INVERSE_TEMPERATURE = 1e-3

_METHOD_ERROR = "`method` must be one of {valid}, got {got!r}"


class Fallback(NamedTuple):
    """Why a group does not use its own calibration map.

    Attributes:
        map: ``"parent"`` (a marginal parent's map) or ``"global"``.
        source: name of the fit unit whose map is used (``"race=Black"``, ``"global"``).
        count: the group's number of samples at fit time.
        reason: a sentence for humans.
    """

    map: str
    source: str
    count: int
    reason: str


class _Hierarchy(NamedTuple):
    names: list[str]  # unit names: global, marginal groups..., groups...
    parents: list[list[int]]  # candidate parent units of each unit (marginal units of a group)
    group_offset: int  # unit index of group 0


class GroupFairnessCalibrator(BaseEstimator):
    """One post-hoc calibration map per group, with fallback to parent groups when data are few.

    Inputs may be torch tensors or array-likes (numpy arrays, lists, pandas Series); the output of
    :meth:`transform` is of the same kind as ``scores`` (torch in -> torch out, of the input's
    dtype and device; anything else -> numpy). The fitted state is plain tensors, lists and
    strings (:meth:`state_dict`), loadable with ``torch.load(..., weights_only=True)``.

    Methods:
        * ``"platt"``: ``sigmoid(a_g * logit(score) + b_g)``; ``scores`` are probabilities in
          ``[0, 1]`` (clipped to ``[eps, 1 - eps]`` before the logit). Fitted by Newton steps
          vectorized over groups.
        * ``"isotonic"``: a non-decreasing piecewise-linear map per group from
          pool-adjacent-violators (scikit-learn's ``IsotonicRegression`` during :meth:`fit`;
          the state is breakpoints ``X, Y``); ``scores`` are probabilities in ``[0, 1]``.
        * ``"temperature"``: ``sigmoid(logit / T_g + b_g)``; here ``scores`` are **logits**
          (any finite real), one temperature per group, and a bias ``b_g`` only with
          ``temperature_bias=True`` (else ``b_g = 0``). Fitted by minimizing the NLL (Newton on
          ``1 / T_g``). On ``(N, K)`` K-class logits: ``softmax(logits / T_g + b_g)`` with one
          temperature per group (the argmax, hence the accuracy, is unchanged) and, with
          ``temperature_bias=True``, a bias per class.
        * ``"vector"``: vector scaling of ``(N, K)`` K-class logits (Guo et al. 2017),
          ``softmax(a_g * logits + b_g)`` with a scale and a bias per group and class. Fitted by
          minimizing the NLL (Newton, vectorized over groups).

    Every method returns calibrated probabilities: ``(N,)`` for one score per sample, ``(N, K)``
    rows summing to 1 for K-class logits (``labels`` are then class indices in ``[0, K)``). Small and unseen groups follow the rule in
    the module docstring of ``fair_lightning.calibration._calibrator`` (summarized: group ->
    largest marginal parent with enough data -> global; optional shrinkage
    ``n / (n + shrinkage)``).

    Args:
        method: ``"platt"``, ``"isotonic"``, ``"temperature"`` or ``"vector"``.
        num_groups: number of groups ``G``; inferred from ``group_spec``, else from the largest
            group id seen by :meth:`fit`.
        group_spec: a :class:`~fair_lightning.groups.GroupSpec` (or its ``attributes`` mapping):
            gives group names and the marginal parents of each intersection. With a spec,
            ``groups`` may also be ``(N, A)`` attribute codes.
        min_group_size: groups with fewer fit samples borrow their parent's map.
        shrinkage: pseudo-count ``k`` of the shrinkage towards the parent, ``w = n / (n + k)``;
            0 disables it.
        n_bins: equal-width bins of the per-group ECE recorded at fit time
            (``calibration_error_``).
        temperature_bias: also fit a per-group bias (``method="temperature"`` only; per class for
            K-class logits).
        max_iter: maximum Newton steps (``"platt"``, ``"temperature"``, ``"vector"``).
        tol: Newton stops when no parameter moves more than ``tol``.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` before the logit (``"platt"``).

    Attributes:
        num_groups_: number of groups.
        group_names_: group names in id order (``"sex=Female&race=Black"`` or ``"group_3"``).
        group_counts_: ``(G,)`` number of fit samples per group.
        fallback_: group name -> :class:`Fallback`, for groups that do not use their own map.
        num_classes_: ``K`` for K-class logits, ``None`` for one score per sample.
        maps_: the maps as tensors, row ``g`` for group ``g`` and row ``G`` for the global map:
            ``{"coef", "intercept"}`` of shape ``(G + 1,)`` (platt, temperature) or
            ``(G + 1, K)`` (K-class temperature, vector), or ``{"x", "y", "length"}`` padded
            breakpoints ``(G + 1, L)`` and lengths (isotonic).
        calibration_error_: ``{"before", "after"}`` per-group ECE on the fit data (NaN for
            groups without samples; for K classes the classwise ECE, the mean over classes of
            the one-vs-rest ECE); "after" is in-sample, so optimistic.
        n_iter_: Newton steps taken (0 for isotonic).

    Raises:
        ValueError: from :meth:`fit` / :meth:`transform` on invalid arguments or inputs, naming
            the argument and the value received.
        sklearn.exceptions.NotFittedError: :meth:`transform` before :meth:`fit` (it is a
            ``ValueError`` subclass).

    Example:
        >>> spec = GroupSpec({"sex": ["Female", "Male"], "race": ["Black", "White"]})
        >>> cal = GroupFairnessCalibrator("platt", group_spec=spec, min_group_size=50)
        >>> probs = cal.fit(val_probs, val_labels, val_groups).transform(test_probs, test_groups)  # doctest: +SKIP
        >>> cal.report()  # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "platt",
        num_groups: int | None = None,
        group_spec: GroupSpec | Mapping[str, Sequence[str]] | None = None,
        *,
        min_group_size: int = 50,
        shrinkage: float = 0.0,
        n_bins: int = 15,
        temperature_bias: bool = False,
        max_iter: int = 100,
        tol: float = 1e-10,
        eps: float = 1e-7,
    ) -> None:
        self.method = method
        self.num_groups = num_groups
        self.group_spec = group_spec
        self.min_group_size = min_group_size
        self.shrinkage = shrinkage
        self.n_bins = n_bins
        self.temperature_bias = temperature_bias
        self.max_iter = max_iter
        self.tol = tol
        self.eps = eps

    # --- argument checks ---------------------------------------------------------------------
    def _check_params(self) -> GroupSpec | None:
        if self.method not in METHODS:
            raise ValueError(_METHOD_ERROR.format(valid=list(METHODS), got=self.method))
        if self.num_groups is not None:
            check_num_groups(self.num_groups)
        spec = self.group_spec
        if spec is not None and not isinstance(spec, GroupSpec):
            if not isinstance(spec, Mapping):
                raise ValueError(
                    f"`group_spec` must be a GroupSpec or a mapping attribute -> levels, got {type(spec).__name__}"
                )
            spec = GroupSpec(spec)
        if spec is not None and self.num_groups is not None and self.num_groups != spec.num_groups:
            raise ValueError(
                f"`num_groups` ({self.num_groups}) does not match `group_spec`, which has {spec.num_groups} groups"
            )
        _check_int(self.min_group_size, "min_group_size", 1)
        _check_int(self.n_bins, "n_bins", 1)
        _check_int(self.max_iter, "max_iter", 1)
        if isinstance(self.shrinkage, bool) or not isinstance(self.shrinkage, (int, float)) or not (
            math.isfinite(self.shrinkage) and self.shrinkage >= 0
        ):
            raise ValueError(f"`shrinkage` must be a finite number >= 0, got {self.shrinkage!r}")
        if not isinstance(self.temperature_bias, bool):
            raise ValueError(f"`temperature_bias` must be a bool, got {self.temperature_bias!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ValueError(f"`tol` must be > 0, got {self.tol!r}")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 0.5):
            raise ValueError(f"`eps` must be in (0, 0.5), got {self.eps!r}")
        return spec

    @staticmethod
    def _check_scores(scores: object, method: str) -> tuple[Tensor, bool, int | None]:
        """``(scores, was_tensor, K)``: ``(N,)`` scores and ``K = None``, or ``(N, K)`` logits and ``K``."""
        tensor, was_tensor = as_tensor(scores, "scores")
        if tensor.ndim == 2 and tensor.shape[1] > 1:
            if method not in MULTICLASS_METHODS:
                raise ValueError(
                    f"`scores` of shape {tuple(tensor.shape)} are K-class scores, but method={method!r} calibrates one "
                    f"probability per sample, shape (N,): use method='temperature' or 'vector' on (N, K) logits"
                )
            if not tensor.is_floating_point():
                raise ValueError(f"`scores` must be floating-point logits, got dtype {tensor.dtype}")
            check_finite(tensor, "scores")
            return tensor, was_tensor, int(tensor.shape[1])
        if method == "vector":
            raise ValueError(
                f"`scores` must be (N, K) logits with K >= 2 for method='vector' (vector scaling of K-class "
                f"logits), got shape {tuple(tensor.shape)}: one score per sample is a binary classifier, use "
                "method='temperature' (logits) or 'platt' (probabilities)"
            )
        tensor = check_scores(tensor, "scores")
        if method == "temperature":
            check_finite(tensor, "scores")
        else:
            check_in_unit_interval(tensor, "scores", f" for method={method!r} (method='temperature' takes logits)")
        return tensor, was_tensor, None

    @staticmethod
    def _check_groups(groups: object, n: int, num_groups: int, spec: GroupSpec | None) -> Tensor:
        tensor, _ = as_tensor(groups, "groups")
        if spec is not None and len(spec.sizes) > 1 and tensor.ndim == 2 and tensor.shape[1] == len(spec.sizes):
            if tensor.shape[0] != n:
                raise ValueError(f"`groups` must have the same length as `scores` ({n}), got {tensor.shape[0]}")
            try:
                tensor = spec.encode(tensor)
            except ValueError as err:
                raise ValueError(f"`groups` given as (N, {len(spec.sizes)}) attribute codes are invalid: {err}") from None
        return check_groups(tensor, n, num_groups, "groups").cpu()

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "maps_")

    # --- fit ---------------------------------------------------------------------------------
    def fit(self, scores: Any, labels: Any, groups: Any) -> GroupFairnessCalibrator:
        """Fit one calibration map per group (plus the marginal and global maps they fall back on).

        Args:
            scores: ``(N,)`` probabilities in ``[0, 1]`` (``"platt"``, ``"isotonic"``) or logits
                (``"temperature"``); ``(N, K)`` K-class logits (``"temperature"``, ``"vector"``).
            labels: ``(N,)`` binary labels, or class indices in ``[0, K)`` with K-class logits.
            groups: ``(N,)`` integer group ids, or ``(N, A)`` attribute codes with a
                ``group_spec`` of ``A`` attributes.

        Returns:
            ``self``.
        """
        spec = self._check_params()
        method = self.method
        x, _, num_classes = self._check_scores(scores, method)
        n = x.shape[0]
        if n == 0:
            raise ValueError("`scores` must not be empty, got 0 samples")
        y, _ = as_tensor(labels, "labels")
        if num_classes is None:
            y = check_binary_target(y, n, "labels").cpu().double()
        else:
            y = check_class_target(y, n, num_classes, "labels").cpu()
        x = x.detach().cpu().double()
        num_groups = self._resolve_num_groups(groups, spec)
        g = self._check_groups(groups, n, num_groups, spec)
        names = spec.names if spec is not None else [f"group_{i}" for i in range(num_groups)]

        hierarchy, unit, sample = _units(spec, g, num_groups)
        num_units = len(hierarchy.names)
        counts = grouped_sum(torch.ones(unit.numel(), dtype=torch.float64), unit, num_units).long()
        own = counts >= self.min_group_size
        one_label = torch.zeros_like(own)
        if method == "temperature" and not self.temperature_bias and num_classes is None:
            # a temperature alone cannot move a group's probabilities towards its only label
            positives = grouped_sum(y[sample], unit, num_units)
            one_label = own & ((positives == 0) | (positives == counts))
            own &= ~one_label
            if bool(one_label[1:].any()):
                _warn(
                    f"{int(one_label[1:].sum())} calibration group(s) hold a single label; temperature scaling "
                    "(without `temperature_bias`) cannot fit them, so they use their parent's or the global map "
                    "(see `report()`)",
                    stacklevel=6,
                )
        own[0] = True
        if int(counts[0]) < self.min_group_size:
            _warn(
                f"The global calibration map, which small and unseen groups fall back on, rests on only "
                f"{int(counts[0])} samples (fewer than `min_group_size`={self.min_group_size}).",
                stacklevel=6,
            )
        parent = _choose_parents(hierarchy, counts, own)
        if method == "vector":
            _warn_missing_classes(hierarchy, own, y[sample], unit, num_classes)

        rows = own[unit]
        if method == "isotonic":
            fitted = fit_isotonic(x[sample].numpy(), y[sample].numpy(), unit.numpy(), torch.nonzero(own).flatten().tolist())
            self.n_iter_ = 0
            final = _resolve(hierarchy, counts, own, parent, self.shrinkage, fitted, blend_piecewise)
            group_maps = [final[hierarchy.group_offset + i] for i in range(num_groups)] + [final[0]]
            bx, by, length = pad_breakpoints(group_maps)
            self.maps_ = {"x": bx, "y": by, "length": length}
        else:
            if num_classes is None:
                feature = torch.logit(x.clamp(self.eps, 1 - self.eps)) if method == "platt" else x
                a, b, self.n_iter_ = fit_logistic(
                    feature[sample][rows],
                    y[sample][rows],
                    unit[rows],
                    num_units,
                    fit_bias=method == "platt" or self.temperature_bias,
                    max_iter=self.max_iter,
                    tol=self.tol,
                )
            else:
                scaling = "temperature_bias" if method == "temperature" and self.temperature_bias else method
                a, b, self.n_iter_ = fit_softmax_scaling(
                    x[sample][rows], y[sample][rows], unit[rows], num_units, scaling=scaling,
                    max_iter=self.max_iter, tol=self.tol,
                )
            if method == "temperature":
                a = self._clip_inverse_temperature(a, own, hierarchy.names)
            params = {u: torch.stack((a[u], b[u])) for u in torch.nonzero(own).flatten().tolist()}
            final = _resolve(hierarchy, counts, own, parent, self.shrinkage, params, _blend_params)
            stacked = torch.stack([final[hierarchy.group_offset + i] for i in range(num_groups)] + [final[0]])
            self.maps_ = {"coef": stacked[:, 0].clone(), "intercept": stacked[:, 1].clone()}

        self.num_groups_ = num_groups
        self.num_classes_ = num_classes
        self.group_names_ = list(names)
        self.group_spec_ = spec
        group_counts = counts[hierarchy.group_offset : hierarchy.group_offset + num_groups]
        self.group_counts_ = group_counts.clone()
        self._report = _group_report(hierarchy, counts, own, parent, self.shrinkage, self.min_group_size, num_groups, one_label)
        self.fallback_ = _fallbacks(self._report, names, group_counts)

        if num_classes is not None:
            before = torch.softmax(x, 1)
        else:
            before = torch.sigmoid(x) if method == "temperature" else x
        after = self._apply(x, g)
        self.calibration_error_ = {
            "before": group_errors(before, y, g, num_groups, self.n_bins),
            "after": group_errors(after, y, g, num_groups, self.n_bins),
        }
        return self

    def _resolve_num_groups(self, groups: Any, spec: GroupSpec | None) -> int:
        if spec is not None:
            return spec.num_groups
        if self.num_groups is not None:
            return self.num_groups
        tensor, _ = as_tensor(groups, "groups")
        if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.numel() == 0:
            return 1  # let check_groups report the problem
        return max(int(tensor.max()) + 1, 1)

    def _clip_inverse_temperature(self, a: Tensor, own: Tensor, names: list[str]) -> Tensor:
        low = a < MIN_INVERSE_TEMPERATURE
        bad = own & (low.any(1) if low.ndim == 2 else low)
        if bad.any():
            which = [names[u] for u in torch.nonzero(bad).flatten().tolist()]
            _warn(
                f"Temperature scaling gave a non-positive or huge temperature for {which} (logits anti-correlated "
                f"with the labels?); the temperature is clipped to {1 / MIN_INVERSE_TEMPERATURE:g}.",
                stacklevel=7,
            )
        return a.clamp_min(MIN_INVERSE_TEMPERATURE)

    def fit_transform(self, scores: Any, labels: Any, groups: Any) -> Tensor | np.ndarray:
        """:meth:`fit`, then :meth:`transform` the same ``scores``."""
        return self.fit(scores, labels, groups).transform(scores, groups)

    # --- transform ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "maps_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call `fit` (or `load_state_dict`) first."
            )

    def transform_probabilities(self, probs: Tensor, groups: Any = None) -> Tensor:
        """Calibrated float64 probabilities of a binary classifier's float64 probabilities ``probs``,
        whatever the method: a ``"temperature"`` calibrator gets their logits (``probs`` clamped to
        ``[1e-15, 1 - 1e-15]``). What group thresholds fitted after calibration are fitted on
        (:class:`~fair_lightning.callbacks.GroupThresholdCallback`) and applied to
        (``FairLightningModule.predict_step``): one computation, so that both see the same numbers."""
        probs = torch.as_tensor(probs).double()
        scores = torch.logit(probs.clamp(1e-15, 1 - 1e-15)) if self.method == "temperature" else probs
        return torch.as_tensor(self.transform(scores, groups)).double()

    def transform(self, scores: Any, groups: Any = None) -> Tensor | np.ndarray:
        """Calibrated probabilities: each score through its group's map.

        Args:
            scores: ``(N,)`` (or ``(N, 1)``) probabilities, or logits for ``"temperature"``;
                ``(N, K)`` logits for a calibrator fitted on K-class logits.
            groups: ``(N,)`` group ids (or ``(N, A)`` codes with a spec); ``None`` applies the
                global map to every score. Groups not seen at fit time get the global map and a
                warning.

        Returns:
            Probabilities, of the same kind, shape and (floating) dtype as ``scores``.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: ``scores`` not of the fit data's kind (one score per sample, or ``K``
                logits).
        """
        self._check_fitted()
        shape = as_tensor(scores, "scores")[0].shape
        x, was_tensor, num_classes = self._check_scores(scores, self.method)
        if num_classes != self.num_classes_:
            fitted = "one score per sample, shape (N,)" if self.num_classes_ is None else f"shape (N, {self.num_classes_})"
            raise ValueError(
                f"`scores` must be like the data this calibrator was fitted on ({fitted}), got shape {tuple(shape)}"
            )
        dtype, device = x.dtype, x.device
        if num_classes is None:
            x = x.reshape(-1)
        if groups is None:
            g = torch.full(x.shape[:1], self.num_groups_, dtype=torch.long)
        else:
            g = self._check_groups(groups, x.shape[0], self.num_groups_, self.group_spec_)
            self._warn_unseen(g)
        out = self._apply(x.detach().to(device).double(), g.to(device))
        return restore_kind(out.to(dtype).reshape(shape), was_tensor)

    def _warn_unseen(self, g: Tensor) -> None:
        if g.numel() == 0:
            return
        present = grouped_sum(torch.ones(g.shape, dtype=torch.float64), g.cpu(), self.num_groups_) > 0
        unseen = torch.nonzero(present & (self.group_counts_ == 0)).flatten().tolist()
        if unseen:
            names = [self.group_names_[i] for i in unseen]
            _warn(
                f"{len(names)} group(s) were not seen when the calibrator was fitted and use the global map: "
                f"{names[:10]}{' ...' if len(names) > 10 else ''}",
                stacklevel=7,
            )

    def _apply(self, x: Tensor, rows: Tensor) -> Tensor:
        """Apply map row ``rows[i]`` to ``x[i]`` (float64, same device); row ``G`` is global."""
        maps = {k: v.to(x.device) for k, v in self.maps_.items()}
        rows = rows.to(x.device)
        if self.method == "isotonic":
            return interpolate_rows(x, rows, maps["x"], maps["y"], maps["length"])
        if self.method == "platt":
            x = torch.logit(x.clamp(self.eps, 1 - self.eps))
        z = maps["coef"][rows] * x + maps["intercept"][rows]
        return torch.sigmoid(z) if z.ndim == 1 else torch.softmax(z, 1)

    # --- inspection --------------------------------------------------------------------------
    @property
    def coef_(self) -> Tensor:
        """``(G,)`` slopes ``a_g`` (``"platt"``, and ``1 / T_g`` for ``"temperature"``); ``(G, K)``
        per-class scales for K-class logits."""
        self._check_fitted()
        if self.method == "isotonic":
            raise AttributeError("`coef_` is defined for method='platt', 'temperature' or 'vector', not 'isotonic'")
        return self.maps_["coef"][:-1]

    @property
    def intercept_(self) -> Tensor:
        """``(G,)`` intercepts ``b_g`` (``"platt"``, ``"temperature"``); ``(G, K)`` per-class biases
        for K-class logits."""
        self._check_fitted()
        if self.method == "isotonic":
            raise AttributeError("`intercept_` is defined for method='platt', 'temperature' or 'vector', not 'isotonic'")
        return self.maps_["intercept"][:-1]

    @property
    def temperature_(self) -> Tensor:
        """``(G,)`` temperatures ``T_g`` (``"temperature"`` only)."""
        self._check_fitted()
        if self.method != "temperature":
            raise AttributeError(f"`temperature_` is defined for method='temperature', not {self.method!r}")
        coef = self.maps_["coef"][:-1]
        return 1.0 / (coef if coef.ndim == 1 else coef[:, 0])

    def breakpoints(self, group: int | None = None) -> tuple[Tensor, Tensor]:
        """The isotonic map ``(X, Y)`` of ``group`` (``None``: the global map)."""
        self._check_fitted()
        if self.method != "isotonic":
            raise AttributeError(f"`breakpoints` is defined for method='isotonic', not {self.method!r}")
        row = self.num_groups_ if group is None else int(group)
        if group is not None and not 0 <= row < self.num_groups_:
            raise ValueError(f"`group` must be in [0, {self.num_groups_}) or None, got {group!r}")
        k = int(self.maps_["length"][row])
        return self.maps_["x"][row, :k], self.maps_["y"][row, :k]

    def report(self):
        """One row per group: which map it uses and why, and its ECE before/after on the fit data.

        Returns:
            ``pandas.DataFrame`` with columns ``group``, ``count``, ``map`` (``"own"``,
            ``"parent"``, ``"global"``), ``source`` (the fit unit whose map is used),
            ``own_weight`` (weight of the group's own fit: 1 without shrinkage, 0 on fallback),
            ``reason``, ``ece_before``, ``ece_after``.
        """
        import pandas as pd

        self._check_fitted()
        return pd.DataFrame(
            {
                "group": self.group_names_,
                "count": self.group_counts_.tolist(),
                "map": self._report["map"],
                "source": self._report["source"],
                "own_weight": list(self._report["own_weight"]),
                "reason": self._report["reason"],
                "ece_before": self.calibration_error_["before"].tolist(),
                "ece_after": self.calibration_error_["after"].tolist(),
            }
        )

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The fitted calibrator as plain tensors, numbers, strings, lists and dicts.

        ``torch.save(cal.state_dict(), path)`` writes a file that ``torch.load(path,
        weights_only=True)`` reads back; :meth:`load_state_dict` restores identical outputs.
        """
        self._check_fitted()
        spec = self.group_spec_
        return {
            "version": 1 if self.num_classes_ is None else 2,
            "num_classes": self.num_classes_,
            "params": {
                "method": self.method,
                "num_groups": self.num_groups,
                "min_group_size": int(self.min_group_size),
                "shrinkage": float(self.shrinkage),
                "n_bins": int(self.n_bins),
                "temperature_bias": bool(self.temperature_bias),
                "max_iter": int(self.max_iter),
                "tol": float(self.tol),
                "eps": float(self.eps),
            },
            "group_spec": None if spec is None else {name: list(levels) for name, levels in spec.attributes.items()},
            "num_groups": int(self.num_groups_),
            "group_names": list(self.group_names_),
            "group_counts": self.group_counts_.clone(),
            "maps": {k: v.clone() for k, v in self.maps_.items()},
            "report": {
                "map": list(self._report["map"]),
                "source": list(self._report["source"]),
                "own_weight": torch.tensor(self._report["own_weight"], dtype=torch.float64),
                "reason": list(self._report["reason"]),
            },
            "calibration_error": {k: v.clone() for k, v in self.calibration_error_.items()},
            "n_iter": int(self.n_iter_),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a fitted calibrator from :meth:`state_dict` (its hyper-parameters included)."""
        if not isinstance(state, Mapping) or "maps" not in state:
            raise ValueError(f"`state` must be a dict from GroupFairnessCalibrator.state_dict(), got {type(state).__name__}")
        version = state.get("version", STATE_VERSION)
        if version > STATE_VERSION:
            raise ValueError(f"`state` has version {version}; this fair-lightning reads versions <= {STATE_VERSION}")
        params = dict(state.get("params", {}))
        spec_attributes = state.get("group_spec")
        spec = None if spec_attributes is None else GroupSpec(dict(spec_attributes))
        params["group_spec"] = spec
        self.set_params(**params)
        self._check_params()
        maps = {k: torch.as_tensor(v) for k, v in state["maps"].items()}
        expected = ("x", "y", "length") if self.method == "isotonic" else ("coef", "intercept")
        if sorted(maps) != sorted(expected):
            raise ValueError(f"`state['maps']` for method={self.method!r} needs keys {list(expected)}, got {sorted(maps)}")
        num_classes = None if maps.get("coef") is None or maps["coef"].ndim == 1 else int(maps["coef"].shape[1])
        if (self.method == "vector" and num_classes is None) or state.get("num_classes", num_classes) != num_classes:
            raise ValueError(
                f"`state['maps']` do not match method={self.method!r} and num_classes={state.get('num_classes')!r}: "
                f"got coef of shape {tuple(maps['coef'].shape)}"
            )
        num_groups = int(state["num_groups"])
        self.maps_ = maps
        self.num_classes_ = num_classes
        self.num_groups_ = num_groups
        self.group_spec_ = spec
        self.group_names_ = list(state.get("group_names", spec.names if spec else [f"group_{i}" for i in range(num_groups)]))
        self.group_counts_ = torch.as_tensor(state["group_counts"]).long()
        report = state.get("report", {})
        self._report = {
            "map": list(report.get("map", ["own"] * num_groups)),
            "source": list(report.get("source", self.group_names_)),
            "own_weight": torch.as_tensor(report.get("own_weight", torch.ones(num_groups))).tolist(),
            "reason": list(report.get("reason", [""] * num_groups)),
        }
        self.fallback_ = _fallbacks(self._report, self.group_names_, self.group_counts_)
        nan = torch.full((num_groups,), float("nan"), dtype=torch.float64)
        errors = state.get("calibration_error", {})
        self.calibration_error_ = {"before": errors.get("before", nan), "after": errors.get("after", nan)}
        self.n_iter_ = int(state.get("n_iter", 0))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> GroupFairnessCalibrator:
        """A new fitted calibrator from :meth:`state_dict`."""
        calibrator = cls()
        calibrator.load_state_dict(state)
        return calibrator


# --- helpers -----------------------------------------------------------------------------------
def _warn(message: str, stacklevel: int) -> None:
    """A ``UserWarning`` on global rank zero only (Lightning's ``rank_zero_warn``, imported lazily)."""
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(message, stacklevel=stacklevel, category=UserWarning)


# --- helpers: the hierarchy of fit units ------------------------------------------------------
def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")


def _units(spec: GroupSpec | None, groups: Tensor, num_groups: int) -> tuple[_Hierarchy, Tensor, Tensor]:
    """The fit units and the ``(unit, sample)`` membership rows (a sample is in several units)."""
    n = groups.numel()
    names, parents = [GLOBAL_NAME], [[]]
    columns = [torch.zeros(n, dtype=torch.long)]
    if spec is not None and len(spec.sizes) > 1:
        codes = spec.decode(groups)
        group_codes = spec.decode(torch.arange(num_groups))
        offsets = []
        for j, (attr, levels) in enumerate(spec.attributes.items()):
            offsets.append(len(names))
            columns.append(offsets[-1] + codes[:, j])
            names += [f"{attr}={level}" for level in levels]
            parents += [[] for _ in levels]
        group_offset = len(names)
        parents += [[offsets[j] + int(c) for j, c in enumerate(row)] for row in group_codes.tolist()]
    else:
        group_offset = 1
        parents += [[] for _ in range(num_groups)]
    names += spec.names if spec is not None else [f"group_{i}" for i in range(num_groups)]
    columns.append(group_offset + groups)
    unit = torch.cat(columns)
    sample = torch.arange(n).repeat(len(columns))
    return _Hierarchy(names, parents, group_offset), unit, sample


def _choose_parents(hierarchy: _Hierarchy, counts: Tensor, own: Tensor) -> list[int]:
    """Parent unit of every unit: the largest candidate with its own fit, else global (0)."""
    parent = []
    for candidates in hierarchy.parents:
        fitted = [p for p in candidates if bool(own[p])]
        parent.append(max(fitted, key=lambda p: (int(counts[p]), -p)) if fitted else 0)
    return parent


def _shrink_weight(count: int, shrinkage: float) -> float:
    return 1.0 if shrinkage == 0 else count / (count + shrinkage)


def _resolve(hierarchy, counts, own, parent, shrinkage, fitted, blend):
    """Final map of every unit, parents before children (global, marginals, groups)."""
    final = {0: fitted[0]}
    for u in range(1, len(hierarchy.names)):
        p = parent[u] if int(counts[u]) > 0 else 0
        final[u] = blend(fitted[u], final[p], _shrink_weight(int(counts[u]), shrinkage)) if bool(own[u]) else final[p]
    return final


def _blend_params(own: Tensor, parent: Tensor, weight: float) -> Tensor:
    return weight * own + (1 - weight) * parent


def _group_report(hierarchy, counts, own, parent, shrinkage, min_group_size, num_groups, one_label=None) -> dict[str, list]:
    report = {"map": [], "source": [], "own_weight": [], "reason": []}
    names = hierarchy.names
    for i in range(num_groups):
        u = hierarchy.group_offset + i
        n, p = int(counts[u]), parent[u]
        if bool(own[u]):
            w = _shrink_weight(n, shrinkage)
            entry = ("own", names[u], w, f"{n} samples >= min_group_size={min_group_size}")
            if w < 1:
                entry = (*entry[:3], entry[3] + f"; shrunk towards {names[p]!r} with weight {w:.3g} on its own fit")
        elif n == 0:
            entry = ("global", GLOBAL_NAME, 0.0, "not seen at fit time (0 samples): uses the global map")
        elif one_label is not None and bool(one_label[u]):
            entry = (
                "parent" if p else "global", names[p] if p else GLOBAL_NAME, 0.0,
                f"{n} samples, all with one label: a temperature without a bias cannot fit it "
                f"(temperature_bias=True can); uses the map of {names[p] if p else GLOBAL_NAME!r}",
            )
        elif p == 0:
            why = "no marginal parent has enough samples" if hierarchy.parents[u] else "no parent group"
            entry = ("global", GLOBAL_NAME, 0.0, f"{n} samples < min_group_size={min_group_size} and {why}: uses the global map")
        else:
            entry = (
                "parent",
                names[p],
                0.0,
                f"{n} samples < min_group_size={min_group_size}: uses the map of its largest marginal parent "
                f"{names[p]!r} ({int(counts[p])} samples)",
            )
        for key, value in zip(report, entry):
            report[key].append(value)
    return report


def group_errors(probs: Tensor, labels: Tensor, groups: Tensor, num_groups: int, n_bins: int) -> Tensor:
    """``(G,)`` per-group ECE (NaN for groups without samples): of the probabilities ``(N,)``, or
    the classwise ECE of ``(N, K)`` class probabilities (the mean of the one-vs-rest ECEs)."""
    if probs.ndim == 1:
        return group_calibration_error(probs, labels, groups, num_groups, n_bins=n_bins)["per_group"]
    sums = multiclass_calibration_sums(probs, labels, groups, num_groups, probs.shape[1], n_bins=n_bins)
    return calibration_error_summary(multiclass_calibration_error_from_sums(*sums)["classwise"])["per_group"]


def _warn_missing_classes(hierarchy: _Hierarchy, own: Tensor, labels: Tensor, unit: Tensor, num_classes: int) -> None:
    """Warn about fit units with their own vector scaling that lack a class (its bias runs to the ridge's bound)."""
    present = grouped_sum(torch.nn.functional.one_hot(labels, num_classes).double(), unit, len(hierarchy.names)) > 0
    lacking = torch.nonzero(own & ~present.all(1)).flatten().tolist()
    if lacking:
        names = [hierarchy.names[u] for u in lacking]
        _warn(
            f"{len(names)} calibration unit(s) lack some class in the fit data: {names[:10]}"
            f"{' ...' if len(names) > 10 else ''}; vector scaling gives such a class a near-zero probability there. "
            "Raise `min_group_size`, use `shrinkage`, or method='temperature'.",
            stacklevel=7,
        )


def _fallbacks(report: dict[str, list], names: list[str], counts: Tensor) -> dict[str, Fallback]:
    return {
        names[i]: Fallback(report["map"][i], report["source"][i], int(counts[i]), report["reason"][i])
        for i in range(len(names))
        if report["map"][i] != "own"
    }


__all__ = ["Fallback", "GroupFairnessCalibrator", "METHODS", "MULTICLASS_METHODS"]
