"""``ConstrainedModelSelection``: keep the best snapshot that meets the fairness constraints on validation."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from fair_lightning.callbacks._outputs import CollectsValidationRows, ValidationRows, evaluation_outputs, warn_if_left_in_worker
from fair_lightning.callbacks._thresholds import validation_probabilities
from fair_lightning.functional import GroupSums, Rate, confusion_counts, constraint_holds, rate_difference
from fair_lightning.functional._fairness import group_rate_table
from fair_lightning.functional._multiclass import group_sums_from_multiclass_confusion, multiclass_confusion_counts
from fair_lightning._verdicts import CONSTANT_SHARE, judged_sums, one_class
from fair_lightning.functional._rates import DEFINITIONS
from fair_lightning.functional._regression import regression_group_sums

STATE_VERSION = 1
#: order of the verdicts of :func:`~fair_lightning.functional.constraint_holds`, best first
_STATUS = ("holds", "uncertain", "violated")
#: the rates recorded per group for each validation run
_RECORDED_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate")
#: constraints of a regression model (``task="regression"``): every group's mean squared error
#: ``<= tolerance`` (fairlearn's BoundedGroupLoss), and the max - min of the group mean predictions
REGRESSION_CONSTRAINTS = ("bounded_group_loss", "demographic_parity")
#: a regression snapshot is constant when its predictions' std is at most this share of the target's
CONSTANT_STD_SHARE = 0.01


def rank_key(record: Mapping[str, Any], maximize: bool = True) -> tuple:
    """How :class:`ConstrainedModelSelection` orders validation runs (smaller is better): runs that
    meet every constraint and are not constant predictors, by objective; then feasible constant
    predictors (only when the tolerance leaves nothing else); then the least violating.

    ``record`` needs ``feasible``, ``objective`` and, when infeasible, ``max_violation``
    (``constant`` defaults to false): a selection's :attr:`~ConstrainedModelSelection.records`, or
    :meth:`~ConstrainedModelSelection.summary` of several runs (:func:`choose_run`).
    """
    sign = 1.0 if maximize else -1.0
    if record["feasible"]:
        return (int(bool(record.get("constant", False))), 0.0, -sign * float(record["objective"]))
    return (2, float(record["max_violation"]), -sign * float(record["objective"]))


def choose_run(summaries: Sequence[Mapping[str, Any]], maximize: bool = True) -> int:
    """Index of the run to ship among several trained runs judged on the same validation split
    against the same constraints (e.g. the ERM and Lagrangian jobs of a sweep), by the rule that
    chooses the epoch within a run (:func:`rank_key`); ties go to the first.

    Each summary is a run's :meth:`ConstrainedModelSelection.summary` (also in the Hydra app's
    ``metrics.json`` under ``selection``). Its ``objective`` is the chosen epoch's validation
    objective, cross-fitted where group thresholds were fitted on those rows, so that runs with
    and without thresholds compare fairly.

    Raises:
        ValueError: no summaries, or summaries of different constraints.
    """
    if not summaries:
        raise ValueError("`summaries` must hold at least one run's selection summary, got none")
    constraints = [tuple(map(tuple, s.get("constraints", ()))) for s in summaries]
    if len(set(constraints)) > 1:
        raise ValueError(f"runs judged against different constraints cannot be compared: {sorted(set(constraints))}")
    return min(range(len(summaries)), key=lambda i: (rank_key(summaries[i], maximize), i))


def _parse_constraints(constraints: Any) -> list[tuple[str, float]]:
    if _is_constraint(constraints):
        constraints = [constraints]
    if isinstance(constraints, Sequence) and not isinstance(constraints, str) and constraints and all(
        _is_constraint(c) for c in constraints
    ):
        return [(c.definition, float(c.tolerance)) for c in constraints]
    if isinstance(constraints, Mapping):
        constraints = list(constraints.items())
    elif isinstance(constraints, tuple) and len(constraints) == 2 and isinstance(constraints[0], str):
        constraints = [constraints]
    parsed = []
    for item in constraints if isinstance(constraints, Sequence) and not isinstance(constraints, str) else [None]:
        known = (*DEFINITIONS, "bounded_group_loss")
        ok = isinstance(item, (tuple, list)) and len(item) == 2 and item[0] in known
        ok = ok and not isinstance(item[1], bool) and isinstance(item[1], (int, float)) and item[1] >= 0
        if not ok:
            raise ValueError(
                "`constraints` must be (definition, tolerance) pairs (or a mapping) with definition in "
                f"{list(known)} and tolerance >= 0, got {constraints!r}"
            )
        parsed.append((item[0], float(item[1])))
    if not parsed:
        raise ValueError("`constraints` must name at least one (definition, tolerance) pair, got none")
    return parsed


def _coarse(sums: GroupSums, partition: tuple[int, ...]) -> GroupSums:
    """The sums of coarse groups: ``partition[g]`` is the coarse group of group ``g``."""
    stacked = sums.stack()
    index = torch.as_tensor(partition, device=stacked.device)
    out = stacked.new_zeros(stacked.shape[0], int(index.max()) + 1).index_add_(1, index, stacked)
    return GroupSums.from_stacked(out)


def _is_constraint(value: Any) -> bool:
    from fair_lightning.constraints import FairnessConstraint

    return isinstance(value, FairnessConstraint)


def _partitions(constraints: Any) -> list[tuple[tuple[int, ...] | None, str]]:
    """``(partition, label)`` of each constraint (FairnessConstraint objects may carry a partition)."""
    items = [constraints] if _is_constraint(constraints) else constraints
    if isinstance(items, Sequence) and not isinstance(items, str) and items and all(_is_constraint(c) for c in items):
        return [(c.partition, c.label) for c in items]
    return [(None, definition) for definition, _ in _parse_constraints(constraints)]


def _is_regression(pl_module: pl.LightningModule) -> bool:
    return getattr(pl_module, "task", None) == "regression"


def _snapshot(pl_module: pl.LightningModule) -> dict[str, Any]:
    """A CPU copy of the module's ``state_dict`` (tensors cloned; extra states such as optimizer
    dicts deep-copied), without a ``FairLightningModule``'s own post-processing (its top-level
    ``_extra_state``): the selection restores weights, and sets the thresholds it judged them with."""
    import copy

    from fair_lightning.module import FairLightningModule

    drop = "_extra_state" if isinstance(pl_module, FairLightningModule) else None
    state = pl_module.state_dict()
    return {k: v.detach().cpu().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in state.items() if k != drop}


class ConstrainedModelSelection(CollectsValidationRows):
    """Restore, at the end of fit, the best validation snapshot that meets the fairness constraints.

    After every validation run during ``fit`` the callback records the objective (default: the
    accuracy of ``probs > threshold`` on the validation split; or any logged metric, ``monitor``)
    and, for each constraint ``(definition, tolerance)``, the **hard** violation ``max - min
    difference - tolerance`` of the thresholded predictions, computed from the validation outputs
    gathered across ranks with the statistics core (so every rank records the same numbers and
    makes the same choice). It keeps a copy of the weights (``state_dict`` on the CPU).

    When fit ends it restores the chosen snapshot into the module: among the **feasible** ones (all
    violations <= 0) the best objective; if none is feasible, the one with the smallest largest
    violation (then the objective). It says which epoch and why (``rank_zero_info``, and
    :meth:`report`, :attr:`best_epoch`, :attr:`reason`). TFCO's ``find_best_candidate_index``,
    on validation data.

    Optionally (:meth:`mixture`), the randomized classifier of TFCO's
    ``find_best_candidate_distribution``: weights over the snapshots, found by a small linear
    program (``scipy.optimize.linprog``), maximizing the expected objective subject to the
    mixture's expected per-group rates meeting every constraint (pairwise ``rate_g - rate_h <=
    tolerance``, linear in the weights); a vertex solution uses at most (active constraints + 1)
    snapshots.

    **Regression** (a module with ``task="regression"``, e.g. ``FairLightningModule(task="regression")``):
    the outputs are the predictions themselves, the objective is minus the validation mean squared
    error, and the constraints are ``("bounded_group_loss", bound)`` (every group's mean squared
    error ``<= bound``, fairlearn's ``BoundedGroupLoss``) and ``("demographic_parity", tolerance)``
    (max - min of the group mean predictions); a snapshot is constant when its predictions' std is
    at most 1% of the targets'. No thresholds, mixture or certification.

    **K classes** (a module with ``(N, K)`` logits, e.g. ``FairLightningModule(num_classes=K)``):
    the predictions are the argmax of the softmax, the objective is their accuracy, and each
    constraint holds for every class's one-vs-rest rates (the recorded difference is the largest
    over classes); a snapshot is constant when one class takes 99% of the rows. Group thresholds
    (``thresholds=True``) are binary only.

    Outputs come from ``outputs_fn(pl_module, outputs, batch) -> (probs, target, groups)`` when
    given (``probs`` ``(N,)``, or ``(N, K)`` class probabilities), else from a validation step output mapping with ``"probs"`` or ``"logits"``,
    ``"target"``, ``"groups"``, else from ``pl_module.unpack_batch`` and a forward pass.

    Args:
        constraints: ``(definition, tolerance)`` pairs, or a mapping ``{definition: tolerance}``;
            definitions ``"demographic_parity"``, ``"equal_opportunity"``, ``"equalized_odds"``.
            The tolerance bounds the max - min difference across groups. Or
            :class:`~fair_lightning.constraints.FairnessConstraint` objects, whose ``partition``
            (e.g. from :func:`~fair_lightning.constraints.hierarchical_constraints`) compares coarser
            groups; records are keyed by their ``label``.
        monitor: a key of ``trainer.callback_metrics`` to use as the objective; default ``None``,
            the validation accuracy computed here.
        mode: ``"max"`` or ``"min"`` for ``monitor`` (accuracy: ``"max"``).
        keep: how many snapshots to keep: ``None`` (all), or ``k >= 1``: the ``k`` best feasible
            ones plus the least violating one (the table keeps every epoch).
        threshold: decision threshold on the probabilities.
        thresholds: at every validation run, also fit per-group thresholds
            (:class:`~fair_lightning.postprocessing.GroupThresholds`) on the validation outputs at the
            constraint's tolerance, and judge the snapshot with them or without them, whichever is
            better (feasible and non-constant first, then the accuracy; the thresholds' accuracy
            cross-fitted, see ``cv_folds``); the chosen snapshot's thresholds are set as
            ``pl_module.prediction_thresholds`` (applied by ``FairLightningModule.predict_step``;
            when it was better without, :meth:`GroupThresholds.shared` with ``threshold``, what
            it was judged with). Records say which (``thresholds``; :meth:`uses_thresholds`) and
            both accuracies (``objective/own``, ``objective/thresholds``). One constraint only.
        cv_folds: with ``thresholds``, the folds of the cross-fitted estimate of the thresholded
            accuracy: thresholds fitted on ``cv_folds - 1`` folds of the validation rows predict
            the remaining fold. Thresholds judged on the rows they were fitted on look better than
            they are, most on small groups, and then win against snapshots that need no
            thresholds and generalize better (the constraint benchmark: 6 of 103 runs less fair on
            test than the unconstrained model with in-sample judging, none with 5 folds). The
            thresholds applied are always the ones fitted on every validation row. ``0``: judge
            thresholds in-sample and always apply them (the behaviour of 0.1); with ``monitor``
            the objective is that metric and thresholds are always applied.
        margin: with ``thresholds``, the thresholds aim at ``tolerance - margin * SE``, where SE is
            the binomial standard error of the difference on the validation split (the two
            smallest groups): thresholds fitted exactly at the tolerance on a few hundred rows
            exceed it on new data about half the time; a margin trades that for accuracy and, on
            small data, for near-constant classifiers (the constraint benchmark with ``margin=1``, judged
            in-sample: every run held, 41 of 103 were constant). 0 (the default) fits at the tolerance.
        min_count: groups with fewer validation samples behind a rate are left out of that rate's
            difference (too few to judge; listed in :meth:`report` through the per-group counts).
        confidence: level of the simultaneous (Bonferroni-adjusted Wilson) intervals behind the
            certification of each constraint on validation (:func:`~fair_lightning.functional.constraint_holds`,
            ``method="conservative"``): a constraint is ``"holds"`` when the interval's upper end is
            within the tolerance, ``"uncertain"`` when the tolerance lies inside it, ``"violated"``
            when its lower end is above. Recorded per run (``certified/<name>``, ``ci_high/<name>``);
            the end-of-fit verdict warns when the chosen model's constraints are met on validation
            but not certified at this confidence (too few validation rows in some group).
        outputs_fn: ``(pl_module, outputs, batch) -> (probs, target, groups)``.
        restore: load the chosen snapshot into the module at the end of fit.

    Attributes:
        records: one dict per validation run (``epoch``, ``step``, ``objective``,
            ``difference/<definition>``, ``violation/<definition>``, ``feasible``, and the
            per-group rates under ``rates``).
        best_epoch: the restored epoch, or ``None``.
        reason: why it was chosen, in words.

    Example:
        >>> selection = ConstrainedModelSelection([("demographic_parity", 0.02)])
        >>> trainer = pl.Trainer(callbacks=[selection])  # doctest: +SKIP
        >>> trainer.fit(module, datamodule=dm)  # doctest: +SKIP
        >>> selection.report()  # doctest: +SKIP
    """

    def __init__(
        self,
        constraints: Any = (("demographic_parity", 0.02),),
        *,
        monitor: str | None = None,
        mode: str = "max",
        keep: int | None = None,
        threshold: float = 0.5,
        min_count: float = 10,
        outputs_fn: Callable[[pl.LightningModule, Any, Any], tuple[Tensor, Tensor, Tensor]] | None = None,
        restore: bool = True,
        thresholds: bool = False,
        margin: float = 0.0,
        confidence: float = 0.95,
        cv_folds: int = 5,
    ) -> None:
        self.constraints = _parse_constraints(constraints)
        self._parts = _partitions(constraints)
        labels = [label for _, label in self._parts]
        if len(set(labels)) != len(labels):
            raise ValueError(f"`constraints` must have distinct names (give each a `name`), got {labels}")
        if not isinstance(thresholds, bool):
            raise ValueError(f"`thresholds` must be a bool, got {thresholds!r}")
        if thresholds and (len(self.constraints) != 1 or self._parts[0][0] is not None):
            raise ValueError(
                f"`thresholds=True` fits group thresholds for one constraint, got {len(self.constraints)}: {self.constraints}"
            )
        self.thresholds = thresholds
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < math.inf:
            raise ValueError(f"`margin` must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
            raise ValueError(f"`confidence` must be a level in (0, 1), got {confidence!r}")
        self.confidence = float(confidence)
        if isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or not (cv_folds == 0 or cv_folds >= 2):
            raise ValueError(f"`cv_folds` must be 0 (no cross-fitting) or an int >= 2, got {cv_folds!r}")
        self.cv_folds = cv_folds
        self.threshold_states: dict[int, dict[str, Any]] = {}  # record index -> fitted GroupThresholds state
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise ValueError(f"`monitor` must be a metric key (str) or None, got {monitor!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"`keep` must be an int >= 1 or None, got {keep!r}")
        if outputs_fn is not None and not callable(outputs_fn):
            raise ValueError(f"`outputs_fn` must be callable, got {type(outputs_fn).__name__}")
        self.monitor, self.mode, self.keep = monitor, mode, keep
        self.threshold = float(threshold)
        if isinstance(min_count, bool) or not isinstance(min_count, (int, float)) or not 0 <= min_count < math.inf:
            raise ValueError(f"`min_count` must be a finite number >= 0, got {min_count!r}")
        self.min_count = float(min_count)
        self.outputs_fn = outputs_fn
        self.restore = bool(restore)
        self.records: list[dict[str, Any]] = []
        self.snapshots: dict[int, dict[str, Tensor]] = {}  # record index -> weights
        self.best_index: int | None = None
        self.reason = ""
        self._rows = ValidationRows(multiclass=True)
        self._fitted: dict[str, Any] | None = None
        self._judgement: dict[str, Any] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            constraints=self.constraints, monitor=self.monitor, thresholds=self.thresholds, margin=self.margin, restore=self.restore
        )

    @property
    def best_epoch(self) -> int | None:
        """Epoch of the chosen snapshot."""
        return None if self.best_index is None else self.records[self.best_index]["epoch"]

    # --- collecting -------------------------------------------------------------------------------
    def _collecting(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.state.fn == "fit"

    def _batch_rows(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if self.outputs_fn is not None:
            return self.outputs_fn(pl_module, outputs, batch)
        if _is_regression(pl_module):
            return evaluation_outputs(pl_module, outputs, batch)  # the predictions themselves
        return validation_probabilities(pl_module, outputs, batch)

    def _regression_record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        """The record of a regression model's validation run (see the class docstring)."""
        rows = self._rows.gather(trainer, pl_module.device).cpu()
        if rows.shape[0] == 0:
            return None
        if self.thresholds:
            raise ValueError("ConstrainedModelSelection(thresholds=True) fits group thresholds of a classifier; the module has task='regression'")
        preds, target, groups = ValidationRows.split(rows)
        num_groups = getattr(pl_module, "num_groups", None)
        if not isinstance(num_groups, int):
            num_groups = int(groups.max()) + 1
        sums = regression_group_sums(preds, target, groups, num_groups, validate_args=False)
        enough = sums.count >= max(self.min_count, 1)
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        mse = float(sums.squared_error.sum() / sums.count.sum())
        record["objective"] = -mse if self.monitor is None else self._objective(trainer, None)
        record["objective_name"] = self.monitor or "minus the validation MSE"
        worst = -math.inf
        for (definition, tolerance), (partition, label) in zip(self.constraints, self._parts):
            if definition not in REGRESSION_CONSTRAINTS or partition is not None:
                raise ValueError(
                    f"constraint {label!r}: a regression model (task='regression') is judged on {list(REGRESSION_CONSTRAINTS)} "
                    "over the module's own groups"
                )
            field = "squared_error" if definition == "bounded_group_loss" else "pred"
            mean = sums.mean(field)
            values = mean.value[enough & mean.valid]
            if definition == "bounded_group_loss":
                diff = float(values.max()) if values.numel() else 0.0
            else:
                diff = float(values.max() - values.min()) if values.numel() > 1 else 0.0
            record[f"difference/{label}"] = diff
            record[f"violation/{label}"] = diff - tolerance
            worst = max(worst, diff - tolerance)
        record["max_violation"] = worst
        record["feasible"] = worst <= 1e-12
        spread = float(target.std()) if target.numel() > 1 else 0.0
        record["selection_share"] = float(preds.std()) / spread if spread > 0 else 0.0  # prediction std / target std
        record["constant"] = record["selection_share"] <= CONSTANT_STD_SHARE
        record["count"] = sums.count.clone()
        return record

    def _sums(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> GroupSums | None:
        num_classes = getattr(pl_module, "num_classes", None)
        rows = self._rows.gather(trainer, pl_module.device, num_scores=num_classes or 1).cpu()
        if rows.shape[0] == 0:
            return None
        scores, target, groups = ValidationRows.split(rows)
        num_groups = getattr(pl_module, "num_groups", None)
        if not isinstance(num_groups, int):
            num_groups = int(groups.max()) + 1
        self._fitted, self._judgement = None, {}
        if scores.ndim == 2:  # K classes: one-vs-rest sums (K, G) of the argmax predictions
            if self.thresholds:
                raise ValueError(
                    f"ConstrainedModelSelection(thresholds=True) fits binary group thresholds; the module's scores "
                    f"have {scores.shape[1]} classes (use thresholds=False for K-class models)"
                )
            counts = multiclass_confusion_counts(scores.argmax(1), target.long(), groups, num_groups, scores.shape[1])
            return group_sums_from_multiclass_confusion(counts)
        rows = torch.stack((scores, target, groups.double()), 1)
        hard = rows[:, 0] > self.threshold
        if self.thresholds:
            hard = self._judge_thresholds(rows[:, 0], rows[:, 1].long(), groups, num_groups, hard)
        return GroupSums.from_confusion(confusion_counts(hard, rows[:, 1].long(), groups, num_groups))

    def _judge_thresholds(self, scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int, hard: Tensor) -> Tensor:
        """Fit group thresholds on this validation run and decide whether the snapshot is judged (and
        later applied) with them or with its own predictions; returns the judged hard predictions.

        Thresholds fitted on these rows look better on them than they are: their accuracy is
        estimated by cross-fitting (:attr:`cv_folds` folds: thresholds fitted on the other folds
        predict each fold), the snapshot's own predictions need no such correction. The better of
        the two (feasible and non-constant first, then that honest accuracy) is what this
        validation run records; the thresholds applied are the ones fitted on all rows."""
        from fair_lightning.postprocessing import GroupThresholds

        definition, tolerance = self.constraints[0]
        plain = GroupSums.from_confusion(confusion_counts(hard, labels, groups, num_groups))
        own = self._difference(plain, definition)
        # never less fair than the snapshot itself: a model already within the tolerance keeps at
        # most its own difference
        target = min(max(0.0, tolerance - self.margin * self._difference_se(plain, definition)), own)
        fitted = GroupThresholds(definition, tolerance=target, min_count=self.min_count).fit(scores, labels, groups, num_groups)
        thresholded = fitted.predict(scores, groups) > 0.5
        if self.monitor is not None or not self.cv_folds:
            self._fitted = fitted.state_dict()
            return thresholded
        if scores.numel() < 2 * self.cv_folds:
            raise ValueError(
                f"ConstrainedModelSelection(cv_folds={self.cv_folds}) cross-fits the group thresholds over the "
                f"validation rows, and needs at least {2 * self.cv_folds} of them; got {scores.numel()} "
                "(use more validation rows, fewer folds, or cv_folds=0 to judge thresholds on the rows they were fitted on)"
            )
        cv_pred = self._cross_fitted(scores, labels, groups, num_groups, definition, target)
        correct = labels.bool()
        raw_accuracy = float((hard == correct).double().mean())
        cv_accuracy = float((cv_pred == correct).double().mean())
        fitted_sums = GroupSums.from_confusion(confusion_counts(thresholded, labels, groups, num_groups))

        def key(sums: GroupSums, pred: Tensor, accuracy: float) -> tuple:
            violation = self._difference(sums, definition) - tolerance
            share = float(pred.double().mean())
            return rank_key({
                "feasible": violation <= 1e-12, "max_violation": violation, "objective": accuracy,
                "constant": one_class(share),
            })  # fmt: skip

        use = key(fitted_sums, thresholded, cv_accuracy) < key(plain, hard, raw_accuracy)  # ties: no thresholds
        self._judgement = {
            "thresholds": use,
            "objective/own": raw_accuracy,
            "objective/thresholds": cv_accuracy,
            "objective/thresholds_in_sample": float((thresholded == correct).double().mean()),
        }
        if not use:  # the model's own threshold, so that predict_step applies what was judged
            self._fitted = GroupThresholds.shared(self.threshold, scores, labels, groups, num_groups, constraint=definition).state_dict()
            return hard
        self._fitted = fitted.state_dict()
        return thresholded

    def _cross_fitted(
        self, scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int, definition: str, target: float
    ) -> Tensor:
        """Out-of-fold thresholded predictions: each fold predicted by thresholds fitted on the others.

        Folds are random (a fixed seed) over the rows sorted by (group, label, score), so they do not
        depend on the order in which the rows arrived (the same under DDP as in one process). Not
        systematic over that order: neighbours in score would then share their local label noise
        across folds, and the estimate would keep the optimism it is there to remove."""
        from fair_lightning.postprocessing import GroupThresholds

        order = torch.argsort(scores, stable=True)
        order = order[torch.argsort(labels[order], stable=True)]
        order = order[torch.argsort(groups[order], stable=True)]
        fold = torch.empty_like(groups)
        shuffle = torch.randperm(groups.numel(), generator=torch.Generator().manual_seed(0))
        fold[order] = shuffle % self.cv_folds
        out = torch.zeros(groups.numel(), dtype=torch.bool)
        for k in range(self.cv_folds):
            held = fold == k
            if not held.any() or held.all():
                continue
            thresholds = GroupThresholds(definition, tolerance=target, min_count=self.min_count).fit(
                scores[~held], labels[~held], groups[~held], num_groups
            )
            out[held] = thresholds.predict(scores[held], groups[held]) > 0.5
        return out

    def _difference(self, sums: GroupSums, definition: str) -> float:
        """The recorded max - min difference (groups below ``min_count`` left out; the larger over
        the definition's rates)."""
        return max(
            float(rate_difference(self._enough(rate, sums, name)))
            for name, rate in group_rate_table(sums, DEFINITIONS[definition]).items()
        )

    def _objective(self, trainer: pl.Trainer, sums: GroupSums) -> float:
        if self.monitor is None:
            if sums.count.ndim == 2:  # K classes: correct = each class's true positives
                return float(sums.pred_label.sum() / sums.count[0].sum().clamp_min(1))
            return float(sums.total().accuracy().value[0])
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"ConstrainedModelSelection: `monitor` {self.monitor!r} is not among the logged metrics "
                f"{sorted(trainer.callback_metrics)}"
            )
        value = torch.as_tensor(value, dtype=torch.float64).reshape(()).to(trainer.strategy.root_device)
        return float(trainer.strategy.broadcast(value, 0))  # the same number on every rank

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if _is_regression(pl_module):
            record = self._regression_record(trainer, pl_module)
            if record is not None:
                self._keep(record, pl_module)
            return
        sums = self._sums(trainer, pl_module)
        if sums is None:
            return
        if any(d == "bounded_group_loss" for d, _ in self.constraints):
            raise ValueError("constraint 'bounded_group_loss' judges a regression model's group losses; the module is a classifier")
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        record["objective"] = self._objective(trainer, sums)
        if self._judgement:  # thresholds judged by their cross-fitted accuracy (see _judge_thresholds)
            record.update(self._judgement)
            if self._judgement["thresholds"]:
                record["objective"] = self._judgement["objective/thresholds"]
        worst = -math.inf
        # binary: the (G,) sums; K classes: each class's one-vs-rest (G,) sums, judged alike
        per_class = [sums] if sums.count.ndim == 1 else [GroupSums(*(f[c] for f in sums)) for c in range(sums.count.shape[0])]
        names = tuple(dict.fromkeys((*_RECORDED_RATES, *(r for d, _ in self.constraints for r in DEFINITIONS[d]))))
        tables = [group_rate_table(s, names) for s in per_class]
        for (definition, tolerance), (partition, label) in zip(self.constraints, self._parts):
            diff, status, high = 0.0, 0, 0.0
            for class_sums, table in zip(per_class, tables):
                part_sums = class_sums if partition is None else _coarse(class_sums, partition)
                part_table = table if partition is None else group_rate_table(part_sums, DEFINITIONS[definition])
                diff = max(diff, *(float(rate_difference(self._enough(part_table[r], part_sums, r))) for r in DEFINITIONS[definition]))
                verdict = constraint_holds(
                    self._judged(part_sums, definition), definition, tolerance, self.confidence, method="conservative"
                )
                status, high = max(status, _STATUS.index(verdict.status)), max(high, float(verdict.interval.high))
            record[f"difference/{label}"] = diff
            record[f"certified/{label}"] = _STATUS[status]
            record[f"ci_high/{label}"] = high
            record[f"violation/{label}"] = diff - tolerance
            worst = max(worst, diff - tolerance)
        record["max_violation"] = worst
        record["feasible"] = worst <= 1e-12
        total = float(per_class[0].count.sum().clamp_min(1))
        if len(per_class) == 1:
            share = float(sums.pred.sum()) / total
            record["constant"] = one_class(share)
        else:  # the share of the most predicted class
            share = float(sums.pred.sum(1).max()) / total
            record["constant"] = share >= CONSTANT_SHARE
        record["selection_share"] = share
        # (G,) per rate, or (K, G) for K classes
        record["rates"] = {r: torch.stack([t[r].value for t in tables]).squeeze(0).clone() for r in _RECORDED_RATES}
        record["count"] = sums.count.clone()
        self._keep(record, pl_module)

    def _keep(self, record: dict[str, Any], pl_module: pl.LightningModule) -> None:
        self.records.append(record)
        self.snapshots[len(self.records) - 1] = _snapshot(pl_module)
        if self._fitted is not None:
            self.threshold_states[len(self.records) - 1] = self._fitted
        self._prune()

    def _difference_se(self, sums: GroupSums, definition: str) -> float:
        """Binomial standard error of a max - min difference on this validation split: the pooled
        rate between the two smallest groups (with at least ``min_count`` samples behind it); the
        largest over the definition's rates."""
        worst = 0.0
        num, den = sums.numerators_denominators(DEFINITIONS[definition])
        for c in range(num.shape[0]):
            n = den[c][den[c] >= max(self.min_count, 1)]
            if n.numel() < 2 or float(den[c].sum()) <= 0:
                continue
            p = float(num[c].sum() / den[c].sum())
            small = torch.sort(n).values[:2]
            worst = max(worst, math.sqrt(max(p * (1 - p), 0.0) * float((1 / small).sum())))
        return worst

    def _judged(self, sums: GroupSums, definition: str) -> GroupSums:
        """The sums with every group below ``min_count`` left out (as in the recorded difference)."""
        return judged_sums(sums, definition, self.min_count)

    def _enough(self, rate: Rate, sums: GroupSums, name: str) -> Rate:
        """The rate with groups below ``min_count`` validation samples behind it left out."""
        _, den = sums.numerators_denominators((name,))
        return Rate(rate.value, rate.valid & (den[0] >= self.min_count))

    # --- choosing ---------------------------------------------------------------------------------
    def _sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0

    def _rank_key(self, i: int) -> tuple:
        return (*rank_key(self.records[i], self.mode == "max"), i)

    def _prune(self) -> None:
        if self.keep is None:
            return
        kept = sorted(self.snapshots, key=self._rank_key)
        feasible = [i for i in kept if self.records[i]["feasible"]][: self.keep]
        infeasible = [i for i in kept if not self.records[i]["feasible"]][:1]
        for i in set(self.snapshots) - set(feasible) - set(infeasible):
            del self.snapshots[i]
            self.threshold_states.pop(i, None)

    def choose(self) -> int | None:
        """Index (into :attr:`records`) of the snapshot to restore; sets :attr:`reason`."""
        if not self.snapshots:
            self.reason = "no validation run recorded"
            return None
        best = min(self.snapshots, key=self._rank_key)
        r = self.records[best]
        objective = self.monitor or r.get("objective_name", "validation accuracy")
        n_feasible = sum(rec["feasible"] for rec in self.records)
        if r["feasible"] and r.get("constant"):
            self.reason = (
                f"only constant predictors meet every constraint on validation: epoch {r['epoch']} predicts one class "
                f"for {100 * max(r['selection_share'], 1 - r['selection_share']):.1f}% of the rows; the tolerance "
                "leaves nothing else on this data"
            )
        elif r["feasible"]:
            self.reason = (
                f"epoch {r['epoch']} has the best {objective} ({r['objective']:.4f}) of the {n_feasible} of "
                f"{len(self.records)} validation runs that meet every constraint"
            )
            if "thresholds" in r:
                self.reason += (
                    f", with its group thresholds (accuracy cross-fitted over {self.cv_folds} folds; "
                    f"{r['objective/thresholds_in_sample']:.4f} on the rows they were fitted on)"
                    if r["thresholds"]
                    else f", with its own predictions (group thresholds: {r['objective/thresholds']:.4f} cross-fitted)"
                )
        else:
            self.reason = (
                f"no validation run meets every constraint; epoch {r['epoch']} violates them least "
                f"(largest violation {r['max_violation']:.4f} above its tolerance; {objective} {r['objective']:.4f})"
            )
        return best

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.best_index = self.choose()
        if self.best_index is None:
            rank_zero_warn("ConstrainedModelSelection recorded no validation run: nothing restored", category=UserWarning)
            return
        if self.restore:
            state = self.snapshots[self.best_index]
            pl_module.load_state_dict({k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in state.items()})
            if self.best_index in self.threshold_states:
                from fair_lightning.postprocessing import GroupThresholds

                pl_module.prediction_thresholds = GroupThresholds.from_state_dict(self.threshold_states[self.best_index])
                warn_if_left_in_worker(trainer, pl_module, "ConstrainedModelSelection set `prediction_thresholds`")
        last = self.records[-1]
        rank_zero_info(
            f"ConstrainedModelSelection: {'restored' if self.restore else 'chose'} epoch {self.best_epoch}: {self.reason}"
            + ("" if last["feasible"] else f" (the last epoch, {last['epoch']}, violates a constraint by {last['max_violation']:.4f})")
        )
        for warning in self.verdict():
            rank_zero_warn(f"ConstrainedModelSelection: {warning}", category=UserWarning)

    def verdict(self) -> list[str]:
        """What a reader of the chosen model must know: a violated constraint on validation, a
        constant predictor, or feasibility that came and went across epochs (oscillation)."""
        out = []
        if self.best_index is None:
            return out
        r = self.records[self.best_index]
        if not r["feasible"]:
            out.append(
                f"the chosen model (epoch {r['epoch']}) violates a constraint on validation by {r['max_violation']:.4f}: "
                "no epoch met every tolerance; loosen the tolerance, train longer"
                + (" or add group thresholds" if "rates" in r and r["rates"]["selection_rate"].ndim == 1 else "")
            )
        elif self._uncertified(r):
            names = ", ".join(
                f"{label!r} (difference {r[f'difference/{label}']:.4f}, interval up to {r[f'ci_high/{label}']:.4f})"
                for label in self._uncertified(r)
            )
            fitted = " (group thresholds were fitted on these rows, so the interval is if anything optimistic)" if (
                self.uses_thresholds(self.best_index)) else ""
            out.append(
                f"the chosen model (epoch {r['epoch']}) meets every tolerance on validation, but {names} cannot be certified "
                f"at {100 * self.confidence:g}% confidence{fitted}: the validation split is too small to pin the difference "
                "down to the tolerance, and on new data it may reach the interval's end. More validation rows (above all "
                "in the smallest groups; e.g. `TabularDataModule(val_fraction=0.4)`, at the cost of training rows; or "
                "`fair_lightning.cross_fit`, which fits group thresholds on every non-test row) or a looser tolerance "
                "make it certifiable"
            )
        if r.get("constant"):
            out.append(f"the chosen model (epoch {r['epoch']}) is a constant predictor on validation")
        flips = sum(a["feasible"] != b["feasible"] for a, b in zip(self.records, self.records[1:]))
        if flips >= 3:
            out.append(
                f"feasibility on validation changed {flips} times over {len(self.records)} validation runs: the "
                "constrained rates oscillate; the chosen epoch is a snapshot of that oscillation"
            )
        return out

    def uses_thresholds(self, index: int | None = None) -> bool:
        """Whether the run ``index`` (default: the chosen one) is judged, and applied, with group
        thresholds fitted on validation (not its own shared threshold)."""
        index = self.best_index if index is None else index
        if index is None or index not in self.threshold_states:
            return False
        return bool(self.records[index].get("thresholds", True))

    def _uncertified(self, record: Mapping[str, Any]) -> list[str]:
        """Labels of the constraints not certified at :attr:`confidence` in ``record`` (records of
        older versions carry no certification: none)."""
        return [label for _, label in self._parts if record.get(f"certified/{label}", "holds") != "holds"]

    def certification(self) -> dict[str, Any]:
        """The chosen snapshot's certification on validation: ``{"certified": {name: status},
        "ci_high": {name: upper end}, "worst": status}`` (``"holds"``, ``"uncertain"`` or
        ``"violated"``; empty mappings and ``None`` for a regression model or before fit)."""
        record = {} if self.best_index is None else self.records[self.best_index]
        certified = {label: record[f"certified/{label}"] for _, label in self._parts if f"certified/{label}" in record}
        ci_high = {label: record[f"ci_high/{label}"] for _, label in self._parts if f"ci_high/{label}" in record}
        worst = max(certified.values(), key=_STATUS.index) if certified else None
        return {"certified": certified, "ci_high": ci_high, "worst": worst}

    def summary(self) -> dict[str, Any]:
        """The chosen run in the terms :func:`choose_run` compares across runs: ``constraints``
        (``[definition, tolerance]`` pairs), ``epoch``, ``objective`` (cross-fitted where thresholds
        were fitted on validation), ``feasible``, ``max_violation``, ``constant``, ``thresholds``
        (judged and applied with group thresholds), ``maximize``, and the certification
        (:meth:`certification`); empty before fit."""
        if self.best_index is None:
            return {}
        r = self.records[self.best_index]
        certification = self.certification()
        return {
            "constraints": [[definition, tolerance] for definition, tolerance in self.constraints],
            "epoch": r["epoch"], "objective": r["objective"], "maximize": self.mode == "max",
            "feasible": bool(r["feasible"]), "max_violation": r["max_violation"], "constant": bool(r.get("constant", False)),
            "thresholds": self.uses_thresholds(), "certified": certification["certified"], "ci_high": certification["ci_high"],
            "confidence": self.confidence,
        }  # fmt: skip

    def report(self) -> Any:
        """The recorded table as a pandas DataFrame (one row per validation run; ``chosen`` marks the pick)."""
        import pandas as pd

        rows = []
        for i, r in enumerate(self.records):
            row = {k: v for k, v in r.items() if k not in ("rates", "count")}
            row["snapshot_kept"] = i in self.snapshots
            row["chosen"] = i == self.best_index
            rows.append(row)
        return pd.DataFrame(rows)

    # --- randomized mixture ------------------------------------------------------------------------
    def mixture(self) -> list[tuple[float, int, dict[str, Tensor]]]:
        """TFCO's best distribution over the kept snapshots: ``[(weight, epoch, state_dict), ...]``.

        Maximizes the weighted objective subject to, for every constraint, rate and pair of groups
        (with data in both snapshots' validation), ``sum_i w_i (rate_ig - rate_ih) <= tolerance``.

        Raises:
            RuntimeError: no snapshot kept, or no mixture meets the constraints (then use the
                deterministic choice, which reports the least violating snapshot).
        """
        from scipy.optimize import linprog

        index = sorted(self.snapshots)
        if not index:
            raise RuntimeError("ConstrainedModelSelection has no snapshot: fit first")
        if any("rates" not in self.records[i] for i in index):
            raise RuntimeError("`mixture` mixes classifiers' rates; the recorded runs are a regression model's")
        if any(partition is not None for partition, _ in self._parts):
            raise RuntimeError("`mixture` supports constraints over the module's own groups only (no `partition`)")
        rows, bounds = [], []
        for definition, tolerance in self.constraints:
            for rate in DEFINITIONS[definition]:
                values = torch.stack([self.records[i]["rates"][rate] for i in index]).double()  # (S, G) or (S, K, G)
                for per_class in values.reshape(len(index), -1, values.shape[-1]).unbind(1):
                    num_groups = per_class.shape[1]
                    for g in range(num_groups):
                        for h in range(num_groups):
                            if g != h:
                                rows.append((per_class[:, g] - per_class[:, h]).tolist())
                                bounds.append(tolerance)
        objective = [-self._sign() * self.records[i]["objective"] for i in index]
        result = linprog(
            objective, A_ub=rows or None, b_ub=bounds or None, A_eq=[[1.0] * len(index)], b_eq=[1.0],
            bounds=[(0, None)] * len(index), method="highs-ds",
        )  # fmt: skip
        if not result.success:
            raise RuntimeError(f"no mixture of the kept snapshots meets the constraints ({result.message})")
        return [
            (float(w), self.records[i]["epoch"], self.snapshots[i]) for w, i in zip(result.x, index) if w > 1e-9
        ]

    # --- checkpoints --------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "records": [dict(r) for r in self.records],
            "snapshots": {int(k): v for k, v in self.snapshots.items()},
            "threshold_states": {int(k): v for k, v in self.threshold_states.items()},
            "best_index": self.best_index,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", STATE_VERSION)
        if version > STATE_VERSION:
            raise ValueError(
                f"the checkpoint's ConstrainedModelSelection state has version {version}; this fair-lightning reads "
                f"versions <= {STATE_VERSION}"
            )
        self.records = [dict(r) for r in state_dict.get("records", [])]
        self.snapshots = {int(k): v for k, v in state_dict.get("snapshots", {}).items()}
        self.threshold_states = {int(k): v for k, v in state_dict.get("threshold_states", {}).items()}
        self.best_index = state_dict.get("best_index")


__all__ = ["ConstrainedModelSelection"]
