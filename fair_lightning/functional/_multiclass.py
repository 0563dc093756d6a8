"""Group statistics for K-class classifiers, on the same rate table as binary classification.

For ``K`` classes, each class ``c`` is one binary problem seen one-vs-rest: its label is
``[y == c]`` and its prediction ``[yhat == c]`` (hard, from the argmax or a decision rule) or the
softmax probability of ``c`` (soft, differentiable). The per-(class, group) sums of those binary
problems are a :class:`~fair_lightning.functional.GroupSums` whose fields have shape ``(K, G)``,
so every rate of :data:`~fair_lightning.functional._rates.RATES` applies per class unchanged
(:meth:`GroupSums.numerators_denominators` takes the leading class dimension): the selection rate
of class ``c`` is ``P(yhat = c | g)``, its TPR ``P(yhat = c | y = c, g)``, its FPR
``P(yhat = c | y != c, g)``.

Hard sums come from one ``bincount`` over ``(group, true class, predicted class)`` cells, a
``(G, K, K)`` confusion tensor (:func:`multiclass_confusion_counts`), exact and cheap to all-reduce;
soft sums from two ``index_add`` calls. Group accuracy is the micro-averaged one-vs-rest TPR of the
class-pooled sums (``sum_c TP_c / sum_c P_c = correct / count``): the table's
``true_positive_rate`` of :meth:`pooled`, not a new rate.

A difference reduces over groups per class (max - min over the groups where the rate is
defined, as :func:`~fair_lightning.functional.rate_difference`), then over classes
(``average="max"``: the worst class; ``"mean"``: the mean over classes where it is defined;
``None``: the ``(K,)`` per-class values, NaN where undefined).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from fair_lightning.functional._checks import _describe, check_groups, check_names, check_num_groups
from fair_lightning.functional._core import GroupSums, Rate, grouped_sum, masked_divide
from fair_lightning.functional._fairness import EO_AGGREGATIONS
from fair_lightning.functional._rates import definition_rates

#: how a per-class difference reduces over classes
AVERAGES = ("max", "mean", None)
#: how a per-class ratio reduces over classes
RATIO_AVERAGES = ("min", "mean", None)
#: the per-class rates a multiclass group table reports
MULTICLASS_TABLE_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "false_negative_rate")

DecisionRule = Callable[[Tensor], Tensor]


# --- argument checks -----------------------------------------------------------------------
def check_num_classes(num_classes: object) -> int:
    """Return ``num_classes`` if it is an int >= 2, else raise ``ValueError`` naming it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
    return num_classes


def check_average(average: object, choices: tuple = AVERAGES) -> None:
    """Raise ``ValueError`` naming ``average`` unless it is one of ``choices``."""
    if average not in choices:
        raise ValueError(f"`average` must be one of {list(choices)}, got {average!r}")


def check_class_names(class_names: object, num_classes: int) -> list[str]:
    """``class_names`` as ``num_classes`` unique strings (default ``class_0``, ...)."""
    return check_names(class_names, num_classes, "class")


def check_class_target(target: Tensor, n: int, num_classes: int, name: str = "target") -> Tensor:
    """Flatten ``target`` to ``(N,)`` long class indices in ``[0, num_classes)``.

    Raises a ``ValueError`` naming ``name`` for one-hot (``(N, K)``) targets, continuous
    (regression) targets, and indices outside ``[0, num_classes)``.
    """
    if not isinstance(target, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(target).__name__}")
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim == 2:
        raise ValueError(
            f"`{name}` must be class indices of shape (N,), got {_describe(target)}; one-hot or "
            f"probability targets are not accepted: pass `{name}.argmax(1)`"
        )
    if target.ndim != 1:
        raise ValueError(f"`{name}` must be class indices of shape (N,), got {_describe(target)}")
    if target.numel() != n:
        raise ValueError(f"`{name}` must have the same length as the predictions ({n}), got {target.numel()}")
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"`{name}` must be integer class indices, got {_describe(target)}")
    if target.is_floating_point():
        if torch.isnan(target).any():
            raise ValueError(f"`{name}` contains NaN")
        frac = target != torch.round(target)
        if frac.any():
            raise ValueError(
                f"`{name}` must be integer class indices in [0, {num_classes}), got continuous values such as "
                f"{torch.unique(target[frac])[:3].tolist()} (a regression target? use the regression metrics)"
            )
    if n:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0:
            raise ValueError(f"`{name}` must be class indices >= 0, got minimum {lo}")
        if hi >= num_classes:
            raise ValueError(f"`{name}` must be class indices < num_classes={num_classes}, got maximum {hi}")
    return target.long()


def check_class_scores(preds: Tensor, num_classes: int, *, name: str = "preds", labels_ok: bool = True) -> Tensor:
    """Validate K-class predictions: ``(N, K)`` floating scores, or (``labels_ok``) ``(N,)`` integer labels.

    Returns ``preds`` as given (``(N, 1)`` integer labels flattened).
    """
    if not isinstance(preds, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(preds).__name__}")
    if preds.ndim == 2 and preds.shape[1] == 1 and not preds.is_floating_point():
        preds = preds[:, 0]
    if preds.ndim == 2:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"`{name}` must have shape (N, num_classes={num_classes}), got {_describe(preds)}"
            )
        if not preds.is_floating_point():
            preds = preds.float()
        # one cheap reduction first: a finite total rules NaN out; only otherwise scan element-wise
        if not bool(torch.isfinite(preds.sum())) and torch.isnan(preds).any():
            raise ValueError(f"`{name}` contains NaN ({int(torch.isnan(preds).sum())} of {preds.numel()} values)")
        return preds
    if preds.ndim == 1 and labels_ok:
        if preds.is_floating_point() or preds.dtype == torch.bool or preds.is_complex():
            raise ValueError(
                f"`{name}` must be (N, {num_classes}) class scores or (N,) integer predicted labels, got "
                f"{_describe(preds)}; one score per sample is a binary classifier: use the binary metrics"
            )
        if preds.numel():
            lo, hi = int(preds.min()), int(preds.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"`{name}` labels must lie in [0, num_classes={num_classes}), got [{lo}, {hi}]")
        return preds.long()
    if preds.ndim == 1:
        raise ValueError(
            f"`{name}` must be (N, {num_classes}) class probabilities or logits, got {_describe(preds)}; "
            f"class indices are not accepted here: pass one-hot or probability rows"
        )
    raise ValueError(f"`{name}` must have shape (N, {num_classes}), got {_describe(preds)}")


def check_probability_rows(probs: Tensor, name: str = "preds", atol: float = 1e-4) -> None:
    """Raise unless every row of ``probs`` lies in ``[0, 1]`` and sums to 1 (within ``atol``)."""
    if not probs.numel():
        return
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"`{name}` must be class probabilities in [0, 1] (pass `from_logits=True` for logits), got values in "
            f"[{float(probs.min()):.4g}, {float(probs.max()):.4g}]"
        )
    total = probs.sum(1)
    if ((total - 1).abs() > atol).any():
        raise ValueError(
            f"`{name}` rows must sum to 1 (class probabilities; pass `from_logits=True` for logits), got sums in "
            f"[{float(total.min()):.4g}, {float(total.max()):.4g}]"
        )


# --- predictions ---------------------------------------------------------------------------
def class_probabilities(preds: Tensor, *, from_logits: bool = False, temperature: float = 1.0) -> Tensor:
    """``softmax(preds / temperature)`` for logits, else ``preds`` (probabilities) as they are."""
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    if from_logits:
        return torch.softmax(preds / temperature, dim=1)
    return preds


def predicted_classes(
    preds: Tensor, *, from_logits: bool = False, decision_rule: DecisionRule | None = None
) -> Tensor:
    """Hard class predictions ``(N,)``: integer labels as given, else the argmax of the scores,
    or ``decision_rule(probabilities)`` (a callable ``(N, K) -> (N,)`` integer labels)."""
    if preds.ndim == 1:
        return preds.long()
    if decision_rule is None:
        # the argmax of logits is that of their softmax; ``max(1).indices`` is the same first-index
        # argmax, and about a third faster than ``argmax(1)`` on the CPU for small K
        return preds.max(1).indices
    labels = decision_rule(class_probabilities(preds, from_logits=from_logits))
    if not isinstance(labels, Tensor) or labels.shape != preds.shape[:1] or labels.is_floating_point():
        raise ValueError(
            "`decision_rule` must return (N,) integer class labels, got "
            + (_describe(labels) if isinstance(labels, Tensor) else type(labels).__name__)
        )
    return labels.long()


# --- sums ----------------------------------------------------------------------------------
def multiclass_confusion_counts(
    pred_classes: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    weight: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Per-group confusion counts of hard K-class predictions, in one ``bincount``.

    Args:
        pred_classes: ``(N,)`` predicted class ids in ``[0, K)``.
        target: ``(N,)`` true class ids in ``[0, K)``.
        groups: ``(N,)`` group ids in ``[0, G)``.
        num_groups: ``G``.
        num_classes: ``K``.
        weight: optional ``(N,)`` sample weights.
        dtype: dtype of the counts (float64 keeps them exact up to ``2**53``).

    Returns:
        ``(G, K, K)`` counts indexed ``[group, true class, predicted class]``. Inputs are not
        validated (see :func:`multiclass_group_sums`).
    """
    k = num_classes
    groups, target, pred_classes = (t.reshape(-1) for t in (groups, target, pred_classes))
    groups, target, pred_classes = (t if t.dtype == torch.long else t.long() for t in (groups, target, pred_classes))
    cell = torch.add(pred_classes, torch.add(target, groups, alpha=k), alpha=k)  # (g * K + y) * K + yhat
    w = None if weight is None else weight.reshape(-1).to(dtype)
    counts = torch.bincount(cell, weights=w, minlength=num_groups * k * k)
    return counts.to(dtype).view(num_groups, k, k)


def group_sums_from_multiclass_confusion(counts: Tensor) -> GroupSums:
    """One-vs-rest :class:`GroupSums` of shape ``(K, G)`` per field from ``(G, K, K)`` confusion counts."""
    count = counts.sum((1, 2))  # (G,)
    label = counts.sum(2).T  # (K, G): samples of class c
    pred = counts.sum(1).T  # (K, G): samples predicted c
    pred_label = torch.diagonal(counts, dim1=1, dim2=2).T  # (K, G)
    return GroupSums(count.expand_as(label), label, pred, pred_label)


def soft_multiclass_group_sums(
    probs: Tensor, target: Tensor, groups: Tensor, num_groups: int, *, weight: Tensor | None = None
) -> GroupSums:
    """One-vs-rest sums ``(K, G)`` of soft predictions (class probabilities), differentiable in ``probs``.

    Two ``index_add`` calls: ``[1, p_1..p_K]`` by group, and ``[1, p_y]`` by (group, true class).
    Inputs are not validated (see :func:`multiclass_group_sums`).
    """
    n, k = probs.shape
    groups = groups.reshape(-1).long()
    target = target.reshape(-1).long()
    ones = probs.new_ones(n, 1)
    p_true = probs.gather(1, target[:, None])
    by_group = torch.cat((ones, probs), 1)
    by_cell = torch.cat((ones, p_true), 1)
    if weight is not None:
        w = weight.reshape(-1, 1).to(probs.dtype)
        by_group, by_cell = by_group * w, by_cell * w
    g_sums = grouped_sum(by_group, groups, num_groups)  # (G, 1 + K)
    cell_sums = grouped_sum(by_cell, groups * k + target, num_groups * k).view(num_groups, k, 2)
    label = cell_sums[..., 0].T
    return GroupSums(g_sums[:, 0].expand_as(label), label, g_sums[:, 1:].T, cell_sums[..., 1].T)


def multiclass_group_sums(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    soft: bool = False,
    from_logits: bool = False,
    temperature: float = 1.0,
    decision_rule: DecisionRule | None = None,
    weight: Tensor | None = None,
    validate_args: bool = True,
) -> GroupSums:
    """Per-(class, group) one-vs-rest sums of a K-class classifier; each field has shape ``(K, G)``.

    Args:
        preds: ``(N, K)`` class scores (probabilities, or logits with ``from_logits=True``), or
            ``(N,)`` integer predicted labels (hard only).
        target: ``(N,)`` integer class ids in ``[0, K)``.
        groups: ``(N,)`` group ids in ``[0, num_groups)``.
        num_groups: number of groups ``G``.
        num_classes: number of classes ``K``.
        soft: sum the softmax probabilities (differentiable) instead of the hard predictions.
        from_logits: ``preds`` are logits: the soft path applies ``softmax(preds / temperature)``.
        temperature: softmax temperature of the soft path (and of ``decision_rule``'s input).
        decision_rule: hard path only: a callable from ``(N, K)`` probabilities to ``(N,)``
            predicted labels (default: the argmax).
        weight: optional ``(N,)`` non-negative sample weights.
        validate_args: check shapes, dtypes and values.

    Returns:
        :class:`GroupSums` with ``(K, G)`` fields (``count`` is the group size, repeated per class),
        float64 for hard predictions.
    """
    if validate_args:
        check_num_groups(num_groups)
        check_num_classes(num_classes)
        preds = check_class_scores(preds, num_classes, labels_ok=not soft)
        n = preds.shape[0]
        target = check_class_target(target, n, num_classes)
        groups = check_groups(groups, n, num_groups)
        if weight is not None and weight.numel() != n:
            raise ValueError(f"`weight` must have the same length as `preds` ({n}), got {weight.numel()}")
    if soft:
        probs = class_probabilities(preds, from_logits=from_logits, temperature=temperature)
        if validate_args and not from_logits:
            check_probability_rows(probs)
        return soft_multiclass_group_sums(probs, target, groups, num_groups, weight=weight)
    if decision_rule is not None and preds.ndim == 2 and from_logits:
        preds = preds / temperature
    pred_classes = predicted_classes(preds, from_logits=from_logits, decision_rule=decision_rule)
    if validate_args and decision_rule is not None and pred_classes.numel():
        if int(pred_classes.min()) < 0 or int(pred_classes.max()) >= num_classes:
            raise ValueError(f"`decision_rule` must return labels in [0, num_classes={num_classes})")
    counts = multiclass_confusion_counts(pred_classes, target, groups, num_groups, num_classes, weight=weight)
    return group_sums_from_multiclass_confusion(counts)


def pooled(sums: GroupSums) -> GroupSums:
    """The class-pooled (micro) sums ``(G,)`` of one-vs-rest sums ``(K, G)``; their
    ``true_positive_rate`` is the group accuracy (``correct / count``)."""
    return GroupSums(sums.count[0], sums.label.sum(0), sums.pred.sum(0), sums.pred_label.sum(0))


# --- rates and differences -----------------------------------------------------------------
def multiclass_rate_table(sums: GroupSums, rates: tuple[str, ...] = MULTICLASS_TABLE_RATES) -> dict[str, Rate]:
    """The per-(class, group) ``rates`` (keys of the rate table) of ``(K, G)`` sums, each a
    :class:`Rate` of shape ``(K, G)``: one ``tensordot`` with the table's coefficients."""
    num, den = sums.numerators_denominators(rates)
    return {name: masked_divide(num[i], den[i]) for i, name in enumerate(rates)}


def group_accuracy(sums: GroupSums) -> Rate:
    """Per-group accuracy ``(G,)`` of ``(K, G)`` hard sums (the pooled true-positive rate)."""
    return pooled(sums).true_positive_rate()


def _masked_range(rate: Rate) -> tuple[Tensor, Tensor, Tensor]:
    """Max and min over the last (group) dimension where valid, and the number of valid groups."""
    inf = torch.full_like(rate.value, float("inf"))
    hi = torch.where(rate.valid, rate.value, -inf).amax(-1)
    lo = torch.where(rate.valid, rate.value, inf).amin(-1)
    return hi, lo, rate.valid.sum(-1)


def per_class_difference(rate: Rate) -> Tensor:
    """``max - min`` over groups per class (``(..., G) -> (...)``); 0 with one defined group,
    NaN with none."""
    hi, lo, n = _masked_range(rate)
    return torch.where(n > 0, hi - lo, torch.full_like(hi, float("nan")))


def per_class_ratio(rate: Rate) -> Tensor:
    """``min / max`` over groups per class; 1 when all are 0 or only one group is defined, NaN with none."""
    hi, lo, n = _masked_range(rate)
    ratio = torch.where(hi > 0, lo / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.ones_like(hi))
    return torch.where(n > 0, ratio, torch.full_like(hi, float("nan")))


def reduce_classes(per_class: Tensor, average: str | None, what: str = "difference") -> Tensor:
    """Reduce ``(K,)`` per-class values: ``"max"``, ``"min"``, ``"mean"`` over the defined (non-NaN)
    classes, or ``None`` (unchanged). NaN with a warning when no class is defined."""
    if average is None:
        return per_class
    defined = per_class[~torch.isnan(per_class)]
    if defined.numel() == 0:
        rank_zero_warn(
            f"the multiclass {what} is undefined: no class has a defined rate in any group (no samples "
            "were seen, or none with the label the rate conditions on); returning NaN"
        )
        return per_class.new_full((), float("nan"))
    if average == "max":
        return defined.max()
    if average == "min":
        return defined.min()
    return defined.mean()


def multiclass_definition_difference(
    sums: GroupSums,
    definition: str,
    *,
    average: str | None = "max",
    agg: str = "worst_case",
) -> Tensor:
    """The difference of a fairness definition over groups, per class, reduced over classes.

    Args:
        sums: ``(K, G)`` one-vs-rest sums.
        definition: a key of :data:`~fair_lightning.functional._rates.DEFINITIONS`;
            ``"accuracy_parity"`` is the difference of group accuracies (no class dimension).
        average: ``"max"`` (worst class), ``"mean"`` or ``None`` (the ``(K,)`` per-class values).
        agg: for definitions with several rates (equalized odds), their larger
            (``"worst_case"``) or mean difference per class.
    """
    check_average(average)
    if agg not in EO_AGGREGATIONS:
        raise ValueError(f"`agg` must be one of {list(EO_AGGREGATIONS)}, got {agg!r}")
    if definition == "accuracy_parity":
        return per_class_difference(group_accuracy(sums))
    table = multiclass_rate_table(sums, definition_rates(definition))
    diffs = torch.stack([per_class_difference(rate) for rate in table.values()])  # (C, K)
    if diffs.shape[0] == 1:
        per_class = diffs[0]
    else:
        # NaN propagates: a class whose TPR or FPR difference is undefined is undefined
        per_class = diffs.amax(0) if agg == "worst_case" else diffs.mean(0)
        per_class = torch.where(torch.isnan(diffs).any(0), torch.full_like(per_class, float("nan")), per_class)
    return reduce_classes(per_class, average)


# --- one-call twins ------------------------------------------------------------------------
def multiclass_group_rates(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    from_logits: bool = False,
    decision_rule: DecisionRule | None = None,
) -> dict[str, Tensor]:
    """Per-(class, group) hard rates and per-group accuracy.

    Returns:
        ``{"count": (G,), "selection_rate": (K, G), "true_positive_rate": (K, G),
        "false_positive_rate": (K, G), "false_negative_rate": (K, G), "accuracy": (G,)}``;
        an undefined rate (empty group, no sample of the class for TPR) is NaN.
    """
    sums = multiclass_group_sums(
        preds, target, groups, num_groups, num_classes, from_logits=from_logits, decision_rule=decision_rule
    )
    return _multiclass_group_rates_compute(sums)


def _as_nan(rate: Rate) -> Tensor:
    return torch.where(rate.valid, rate.value, torch.full_like(rate.value, float("nan")))


def _multiclass_group_rates_compute(sums: GroupSums) -> dict[str, Tensor]:
    table = {name: _as_nan(rate) for name, rate in multiclass_rate_table(sums).items()}
    return {"count": sums.count[0], **table, "accuracy": _as_nan(group_accuracy(sums))}


def _selection_target(preds: Tensor) -> Tensor:
    n = preds.shape[0] if isinstance(preds, Tensor) and preds.ndim >= 1 else 0
    return torch.zeros(n, dtype=torch.long, device=preds.device if isinstance(preds, Tensor) else None)


def multiclass_demographic_parity_difference(
    preds: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    average: Literal["max", "mean"] | None = "max",
    from_logits: bool = False,
    decision_rule: DecisionRule | None = None,
) -> Tensor:
    """Per class, the largest minus smallest group selection rate ``P(yhat = c | g)``; reduced over classes."""
    check_average(average)
    sums = multiclass_group_sums(
        preds,
        _selection_target(preds),
        groups,
        num_groups,
        num_classes,
        from_logits=from_logits,
        decision_rule=decision_rule,
    )
    return multiclass_definition_difference(sums, "demographic_parity", average=average)


def multiclass_demographic_parity_ratio(
    preds: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    average: Literal["min", "mean"] | None = "min",
    from_logits: bool = False,
    decision_rule: DecisionRule | None = None,
) -> Tensor:
    """Per class, the smallest over the largest group selection rate; reduced over classes
    (``"min"``: the worst class)."""
    check_average(average, RATIO_AVERAGES)
    sums = multiclass_group_sums(
        preds,
        _selection_target(preds),
        groups,
        num_groups,
        num_classes,
        from_logits=from_logits,
        decision_rule=decision_rule,
    )
    return _multiclass_dp_ratio_compute(sums, average)


def _multiclass_dp_ratio_compute(sums: GroupSums, average: str | None) -> Tensor:
    return reduce_classes(per_class_ratio(sums.selection_rate()), average, "ratio")


def multiclass_equal_opportunity_difference(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    average: Literal["max", "mean"] | None = "max",
    from_logits: bool = False,
    decision_rule: DecisionRule | None = None,
) -> Tensor:
    """Per class, the largest minus smallest group one-vs-rest TPR; reduced over classes."""
    check_average(average)
    sums = multiclass_group_sums(
        preds, target, groups, num_groups, num_classes, from_logits=from_logits, decision_rule=decision_rule
    )
    return multiclass_definition_difference(sums, "equal_opportunity", average=average)


def multiclass_equalized_odds_difference(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    average: Literal["max", "mean"] | None = "max",
    agg: Literal["worst_case", "mean"] = "worst_case",
    from_logits: bool = False,
    decision_rule: DecisionRule | None = None,
) -> Tensor:
    """Per class, the larger (``agg="worst_case"``) or mean of the one-vs-rest TPR and FPR
    differences (fairlearn's ``equalized_odds_difference`` of the binarized problem); reduced over classes."""
    check_average(average)
    sums = multiclass_group_sums(
        preds, target, groups, num_groups, num_classes, from_logits=from_logits, decision_rule=decision_rule
    )
    return multiclass_definition_difference(sums, "equalized_odds", average=average, agg=agg)


def multiclass_accuracy_difference(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    from_logits: bool = False,
    decision_rule: DecisionRule | None = None,
) -> Tensor:
    """Accuracy parity: the largest minus smallest group accuracy (a scalar; NaN if no group has samples)."""
    sums = multiclass_group_sums(
        preds, target, groups, num_groups, num_classes, from_logits=from_logits, decision_rule=decision_rule
    )
    return multiclass_definition_difference(sums, "accuracy_parity")



# --- calibration ---------------------------------------------------------------------------
def multiclass_calibration_sums(
    probs: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    num_classes: int,
    *,
    n_bins: int = 15,
    validate_args: bool = True,
) -> tuple[Tensor, Tensor]:
    """Classwise and top-label calibration sums of K-class probabilities.

    Returns:
        ``(classwise, top_label)``: ``(G, K, n_bins, 3)`` sums of ``[1, p_c, [y == c]]`` per group,
        class and bin of ``p_c``; ``(G, n_bins, 3)`` sums of ``[1, max_c p_c, [argmax == y]]`` per
        group and bin of the top probability (torchmetrics' ``MulticlassCalibrationError``).
        Both are :func:`~fair_lightning.functional.grouped_sum` over one flat index, as the
        binary :func:`~fair_lightning.functional.calibration_sums`.
    """
    from fair_lightning.functional._calibration import bin_index, check_n_bins

    check_n_bins(n_bins)
    if validate_args:
        check_num_groups(num_groups)
        check_num_classes(num_classes)
        probs = check_class_scores(probs, num_classes, labels_ok=False)
        check_probability_rows(probs)
        target = check_class_target(target, probs.shape[0], num_classes)
        groups = check_groups(groups, probs.shape[0], num_groups)
    n, k = probs.shape
    probs = probs.double()
    groups = groups.reshape(-1).long()
    target = target.reshape(-1).long()
    onehot = torch.nn.functional.one_hot(target, k).to(probs.dtype)
    index = ((groups[:, None] * k + torch.arange(k, device=probs.device)) * n_bins + bin_index(probs, n_bins)).reshape(-1)
    values = torch.stack((torch.ones_like(probs), probs, onehot), -1).reshape(-1, 3)
    classwise = grouped_sum(values, index, num_groups * k * n_bins).view(num_groups, k, n_bins, 3)
    conf, top = probs.max(1)
    top_values = torch.stack((torch.ones_like(conf), conf, (top == target).to(conf.dtype)), 1)
    top_label = grouped_sum(top_values, groups * n_bins + bin_index(conf, n_bins), num_groups * n_bins)
    return classwise, top_label.view(num_groups, n_bins, 3)


def multiclass_calibration_error_from_sums(classwise: Tensor, top_label: Tensor, norm: str = "l1") -> dict[str, Rate]:
    """Per-group classwise ECE (the mean over classes of each class's one-vs-rest ECE, Kull et al.
    2019) and top-label ECE, from :func:`multiclass_calibration_sums`; ``norm="max"`` gives the
    maximum calibration errors."""
    from fair_lightning.functional._calibration import calibration_error_from_sums

    per_class = calibration_error_from_sums(classwise, norm)  # (G, K)
    classwise_rate = Rate(per_class.value.mean(-1), per_class.valid.all(-1))
    return {"classwise": classwise_rate, "top_label": calibration_error_from_sums(top_label, norm)}


__all__ = [
    "check_class_scores",
    "check_class_target",
    "check_num_classes",
    "group_accuracy",
    "group_sums_from_multiclass_confusion",
    "multiclass_accuracy_difference",
    "multiclass_calibration_error_from_sums",
    "multiclass_calibration_sums",
    "multiclass_confusion_counts",
    "multiclass_definition_difference",
    "multiclass_demographic_parity_difference",
    "multiclass_demographic_parity_ratio",
    "multiclass_equal_opportunity_difference",
    "multiclass_equalized_odds_difference",
    "multiclass_group_rates",
    "multiclass_group_sums",
    "multiclass_rate_table",
    "pooled",
    "soft_multiclass_group_sums",
]
