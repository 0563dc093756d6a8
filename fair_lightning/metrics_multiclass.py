"""torchmetrics metrics for group fairness of K-class classifiers.

The state of every rate metric is one ``(G, K, K)`` confusion tensor ``[group, true class,
predicted class]`` of float64 counts (``dist_reduce_fx="sum"``): accumulating over batches equals
one call on all the data, and DDP reduction is exact. Rates come from the one-vs-rest sums of
:func:`~fair_lightning.functional._multiclass.group_sums_from_multiclass_confusion` and the shared
rate table, per class and group. Result keys are stable (``selection_rate/<class>/<group>``,
``accuracy/<group>``), whatever classes or groups a batch contained.

Example:
    >>> import torch
    >>> from fair_lightning.metrics_multiclass import MulticlassDemographicParityDifference
    >>> metric = MulticlassDemographicParityDifference(num_groups=2, num_classes=3)
    >>> metric.update(torch.tensor([0, 1, 2, 2]), None, torch.tensor([0, 0, 1, 1]))
    >>> metric.compute()
    tensor(1., dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

if TYPE_CHECKING:
    import pandas as pd

from fair_lightning.functional._calibration import CALIBRATION_NORMS, calibration_error_summary, check_n_bins
from fair_lightning.functional._checks import check_group_names, check_groups, check_num_groups
from fair_lightning.functional._fairness import _check_agg
from fair_lightning.functional._multiclass import (
    MULTICLASS_TABLE_RATES,
    RATIO_AVERAGES,
    DecisionRule,
    _multiclass_dp_ratio_compute,
    _multiclass_group_rates_compute,
    check_average,
    check_class_names,
    check_class_scores,
    check_class_target,
    check_num_classes,
    check_probability_rows,
    class_probabilities,
    group_sums_from_multiclass_confusion,
    multiclass_calibration_error_from_sums,
    multiclass_calibration_sums,
    multiclass_confusion_counts,
    multiclass_definition_difference,
    predicted_classes,
)
from fair_lightning.functional._core import GroupSums


class _MulticlassConfusionMetric(Metric):
    """Holds per-group ``(G, K, K)`` confusion counts of hard K-class predictions as one state.

    Args:
        num_groups: number of groups ``G``.
        num_classes: number of classes ``K``.
        from_logits: ``preds`` are logits (only matters with a ``decision_rule``, which receives
            ``softmax(preds / temperature)``; the argmax is the same for logits and probabilities).
        temperature: softmax temperature for ``decision_rule``.
        decision_rule: a callable from ``(N, K)`` probabilities to ``(N,)`` predicted labels
            (default: the argmax).
        class_names: names of the classes in result keys (default ``class_0``, ...).
        group_names: names of the groups in result keys (default ``group_0``, ...).
        validate_args: check the inputs of every ``update``.
    """

    is_differentiable = False
    full_state_update = False
    higher_is_better: bool | None = None
    confusion: Tensor

    def __init__(
        self,
        num_groups: int,
        num_classes: int,
        *,
        from_logits: bool = False,
        temperature: float = 1.0,
        decision_rule: DecisionRule | None = None,
        class_names: Sequence[str] | None = None,
        group_names: Sequence[str] | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups(num_groups)
        self.num_classes = check_num_classes(num_classes)
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if decision_rule is not None and not callable(decision_rule):
            raise ValueError(f"`decision_rule` must be callable, got {type(decision_rule).__name__}")
        self.from_logits = from_logits
        self.temperature = temperature
        self.decision_rule = decision_rule
        self.class_names = check_class_names(class_names, num_classes)
        self.group_names = check_group_names(group_names, num_groups)
        self.validate_args = validate_args
        zeros = torch.zeros(num_groups, num_classes, num_classes, dtype=torch.float64)
        self.add_state("confusion", default=zeros, dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor | None, groups: Tensor) -> None:
        """Add a batch: ``preds`` ``(N, K)`` scores or ``(N,)`` integer labels, ``target`` ``(N,)``
        class ids (``None`` for the demographic-parity metrics), ``groups`` ``(N,)`` ids."""
        k = self.num_classes
        if self.validate_args:
            preds = check_class_scores(preds, k)
            n = preds.shape[0]
            if target is None:
                target = torch.zeros(n, dtype=torch.long, device=preds.device)
            else:
                target = check_class_target(target, n, k)
            groups = check_groups(groups, n, self.num_groups)
        elif target is None:
            target = torch.zeros(preds.shape[0], dtype=torch.long, device=preds.device)
        scores = preds
        if self.decision_rule is not None and preds.ndim == 2 and self.from_logits:
            scores = preds / self.temperature
        labels = predicted_classes(scores, from_logits=self.from_logits, decision_rule=self.decision_rule)
        if self.validate_args and self.decision_rule is not None and labels.numel():
            if int(labels.min()) < 0 or int(labels.max()) >= k:
                raise ValueError(f"`decision_rule` must return labels in [0, num_classes={k})")
        self.confusion += multiclass_confusion_counts(labels, target, groups, self.num_groups, k)

    @property
    def group_sums(self) -> GroupSums:
        """The accumulated one-vs-rest sums, fields of shape ``(K, G)``."""
        return group_sums_from_multiclass_confusion(self.confusion)


class MulticlassGroupRates(_MulticlassConfusionMetric):
    """Per-(class, group) selection rate, TPR, FPR and FNR (one-vs-rest), per-group count and accuracy.

    ``compute()`` returns a flat dict with stable keys ``"{rate}/{class}/{group}"`` (e.g.
    ``"selection_rate/class_3/group_0"``), ``"count/{group}"`` and ``"accuracy/{group}"``; a rate
    undefined for a (class, group) (no samples, or none of the class for TPR/FNR) is NaN.
    """

    def compute(self) -> dict[str, Tensor]:
        table = _multiclass_group_rates_compute(self.group_sums)
        out: dict[str, Tensor] = {f"count/{name}": table["count"][g] for g, name in enumerate(self.group_names)}
        for rate in MULTICLASS_TABLE_RATES:
            for c, cname in enumerate(self.class_names):
                for g, gname in enumerate(self.group_names):
                    out[f"{rate}/{cname}/{gname}"] = table[rate][c, g]
        out.update({f"accuracy/{name}": table["accuracy"][g] for g, name in enumerate(self.group_names)})
        return out

    def compute_table(self) -> dict[str, Tensor]:
        """The rates as tensors: ``count`` and ``accuracy`` ``(G,)``, the others ``(K, G)`` (this
        process's states)."""
        return _multiclass_group_rates_compute(self.group_sums)

    def to_frame(self) -> pd.DataFrame:
        """The per-(class, group) rates as a ``pandas.DataFrame`` indexed by ``(class, group)``
        (synced like :meth:`compute`; undefined rates are NaN)."""
        import pandas as pd

        values = self.compute()
        index = pd.MultiIndex.from_product([self.class_names, self.group_names], names=["class", "group"])
        data = {
            rate: [float(values[f"{rate}/{c}/{g}"]) for c in self.class_names for g in self.group_names]
            for rate in MULTICLASS_TABLE_RATES
        }
        return pd.DataFrame(data, index=index)


class _MulticlassDifference(_MulticlassConfusionMetric):
    _definition: str
    higher_is_better = False

    def __init__(
        self, num_groups: int, num_classes: int, *, average: Literal["max", "mean"] | None = "max", **kwargs: Any
    ) -> None:
        check_average(average)
        super().__init__(num_groups, num_classes, **kwargs)
        self.average = average

    def compute(self) -> Tensor:
        return multiclass_definition_difference(self.group_sums, self._definition, average=self.average)


class MulticlassDemographicParityDifference(_MulticlassDifference):
    """Per class, largest minus smallest group selection rate ``P(yhat = c | g)``; reduced over
    classes by ``average`` (``"max"``: worst class, ``"mean"``, ``None``: the ``(K,)`` values).
    ``target`` may be ``None``."""

    _definition = "demographic_parity"


class MulticlassEqualOpportunityDifference(_MulticlassDifference):
    """Per class, largest minus smallest group one-vs-rest TPR; reduced over classes by ``average``."""

    _definition = "equal_opportunity"


class MulticlassEqualizedOddsDifference(_MulticlassDifference):
    """Per class, the larger (``agg="worst_case"``) or mean of the one-vs-rest TPR and FPR
    differences; reduced over classes by ``average``."""

    _definition = "equalized_odds"

    def __init__(
        self, num_groups: int, num_classes: int, *, agg: Literal["worst_case", "mean"] = "worst_case", **kwargs: Any
    ) -> None:
        _check_agg(agg)
        super().__init__(num_groups, num_classes, **kwargs)
        self.agg = agg

    def compute(self) -> Tensor:
        return multiclass_definition_difference(self.group_sums, self._definition, average=self.average, agg=self.agg)


class MulticlassAccuracyDifference(_MulticlassConfusionMetric):
    """Accuracy parity: largest minus smallest group accuracy."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return multiclass_definition_difference(self.group_sums, "accuracy_parity")


class MulticlassDemographicParityRatio(_MulticlassConfusionMetric):
    """Per class, smallest over largest group selection rate; reduced over classes by ``average``
    (``"min"``: worst class, ``"mean"``, ``None``: the ``(K,)`` values). ``target`` may be ``None``."""

    higher_is_better = True

    def __init__(
        self, num_groups: int, num_classes: int, *, average: Literal["min", "mean"] | None = "min", **kwargs: Any
    ) -> None:
        check_average(average, RATIO_AVERAGES)
        super().__init__(num_groups, num_classes, **kwargs)
        self.average = average

    def compute(self) -> Tensor:
        return _multiclass_dp_ratio_compute(self.group_sums, self.average)


class MulticlassGroupCalibrationError(Metric):
    """Per-group classwise and top-label calibration error of K-class probabilities.

    States: ``(G, K, n_bins, 3)`` classwise and ``(G, n_bins, 3)`` top-label sums of
    ``[count, probability, label]`` (constant memory, exact under DDP). ``compute()`` returns
    ``"classwise_calibration_error/{group}"`` (the mean over classes of each class's one-vs-rest
    ECE), ``"top_label_calibration_error/{group}"`` (the ECE of the top probability, as
    torchmetrics' ``MulticlassCalibrationError``), and for each kind ``..._max`` and
    ``..._disparity`` over the groups with samples; NaN for a group without samples.

    Args:
        num_groups: number of groups.
        num_classes: number of classes.
        n_bins: equal-width probability bins.
        norm: ``"l1"`` (expected) or ``"max"`` (maximum calibration error).
        from_logits: apply ``softmax(preds / temperature)`` first.
        temperature: softmax temperature with ``from_logits``.
        group_names: names used in the result keys.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    classwise: Tensor
    top_label: Tensor

    def __init__(
        self,
        num_groups: int,
        num_classes: int,
        *,
        n_bins: int = 15,
        norm: Literal["l1", "max"] = "l1",
        from_logits: bool = False,
        temperature: float = 1.0,
        group_names: Sequence[str] | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups(num_groups)
        self.num_classes = check_num_classes(num_classes)
        self.n_bins = check_n_bins(n_bins)
        if norm not in CALIBRATION_NORMS:
            raise ValueError(f"`norm` must be one of {list(CALIBRATION_NORMS)}, got {norm!r}")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.norm, self.from_logits, self.temperature = norm, from_logits, temperature
        self.group_names = check_group_names(group_names, num_groups)
        self.validate_args = validate_args
        g, k, b = num_groups, num_classes, n_bins
        self.add_state("classwise", default=torch.zeros(g, k, b, 3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("top_label", default=torch.zeros(g, b, 3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Add a batch of ``(N, K)`` probabilities (logits with ``from_logits=True``), class ids and group ids."""
        if self.validate_args:
            preds = check_class_scores(preds, self.num_classes, labels_ok=False)
        probs = class_probabilities(preds, from_logits=self.from_logits, temperature=self.temperature)
        if self.validate_args and not self.from_logits:
            check_probability_rows(probs)
        classwise, top_label = multiclass_calibration_sums(
            probs, target, groups, self.num_groups, self.num_classes, n_bins=self.n_bins, validate_args=self.validate_args
        )
        self.classwise += classwise
        self.top_label += top_label

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for kind, rate in multiclass_calibration_error_from_sums(self.classwise, self.top_label, self.norm).items():
            summary = calibration_error_summary(rate)
            key = f"{kind}_calibration_error"
            out.update({f"{key}/{name}": summary["per_group"][g] for g, name in enumerate(self.group_names)})
            out[f"{key}_max"] = summary["max"]
            out[f"{key}_disparity"] = summary["disparity"]
        return out


def multiclass_fairness_metrics(
    num_groups: int,
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    from_logits: bool = False,
    average: Literal["max", "mean"] = "max",
    n_bins: int = 15,
    prefix: str | None = None,
) -> MetricCollection:
    """The standard multiclass set as one ``MetricCollection``: group rates, DP difference and
    ratio, equalized-odds, equal-opportunity and accuracy differences, group calibration error.

    Every member takes ``update(preds, target, groups)`` with ``(N, K)`` scores; ``preds`` must be
    probabilities unless ``from_logits`` (the calibration member needs them). The rate members
    share one confusion state through torchmetrics' compute groups.
    """
    common = {"group_names": group_names, "from_logits": from_logits}
    hard = {**common, "class_names": class_names}
    ratio_average = "min" if average == "max" else average
    return MetricCollection(
        {
            "group": MulticlassGroupRates(num_groups, num_classes, **hard),
            "dp_difference": MulticlassDemographicParityDifference(num_groups, num_classes, average=average, **hard),
            "dp_ratio": MulticlassDemographicParityRatio(num_groups, num_classes, average=ratio_average, **hard),
            "eo_difference": MulticlassEqualizedOddsDifference(num_groups, num_classes, average=average, **hard),
            "eopp_difference": MulticlassEqualOpportunityDifference(num_groups, num_classes, average=average, **hard),
            "accuracy_difference": MulticlassAccuracyDifference(num_groups, num_classes, **hard),
            "calibration": MulticlassGroupCalibrationError(num_groups, num_classes, n_bins=n_bins, **common),
        },
        prefix=prefix,
        compute_groups=True,
    )


__all__ = [
    "MulticlassAccuracyDifference",
    "MulticlassDemographicParityDifference",
    "MulticlassDemographicParityRatio",
    "MulticlassEqualOpportunityDifference",
    "MulticlassEqualizedOddsDifference",
    "MulticlassGroupCalibrationError",
    "MulticlassGroupRates",
    "multiclass_fairness_metrics",
]
