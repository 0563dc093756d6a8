"""``GroupThresholdCallback``: fit per-group decision thresholds on validation outputs, keep them in checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from fair_lightning._verdicts import one_class
from fair_lightning.callbacks._outputs import CollectsValidationRows, ValidationRows, evaluation_outputs, warn_if_left_in_worker
from fair_lightning.postprocessing import GroupThresholds

STATE_VERSION = 1
#: The attribute of the LightningModule the callback sets (``predict_step`` applies it).
ATTRIBUTE = "prediction_thresholds"

OutputsFn = Callable[[pl.LightningModule, Any, Any], tuple[Tensor, Tensor, Tensor]]


def validation_probabilities(pl_module: pl.LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(probs, target, groups)`` of a validation batch.

    A step output mapping with ``"probs"`` (probabilities) or ``"logits"`` and ``"target"``,
    ``"groups"`` is used as it is; otherwise the batch goes through ``pl_module.unpack_batch`` and
    a forward pass (see :func:`~fair_lightning.callbacks._outputs.evaluation_outputs`).
    """
    if isinstance(outputs, Mapping) and outputs.get("probs") is not None:
        target, groups = outputs.get("target"), outputs.get("groups")
        if target is None or groups is None:
            raise ValueError("a validation step output with 'probs' must also hold 'target' and 'groups'")
        probs = outputs["probs"].detach()
        probs = probs if probs.ndim == 2 and probs.shape[1] > 1 else probs.reshape(-1)
        return probs, target.detach().reshape(-1), groups.detach().reshape(-1).long()
    logits, target, groups = evaluation_outputs(pl_module, outputs, batch)
    if logits.ndim == 2:  # K-class logits: class probabilities
        return torch.softmax(logits.double(), 1), target, groups
    return torch.sigmoid(logits.double()), target, groups


class GroupThresholdCallback(CollectsValidationRows):
    """Fit :class:`~fair_lightning.postprocessing.GroupThresholds` on the validation outputs at the end of fit.

    During each validation run the callback keeps each batch's probabilities, labels and groups
    (all ranks' under DDP, gathered when fitting, so every rank fits the same thresholds). When
    training ends it fits per-group thresholds on the outputs of the **last** validation run
    (pair it with a selection callback, or ``ModelCheckpoint``, that has already restored the
    weights you ship: thresholds belong to the weights whose scores they were fitted on).

    Where the outputs come from, in order:
        * ``outputs_fn(pl_module, outputs, batch) -> (probs, target, groups)`` when given;
        * the validation step's output when it is a mapping with ``"probs"`` or ``"logits"``
          plus ``"target"`` and ``"groups"`` (works with any LightningModule);
        * else ``pl_module.unpack_batch(batch)`` and a forward pass (``FairLightningModule``).

    Calibration: when ``use_calibrator`` is true and the module has a ``prediction_calibrator``
    (set by :class:`~fair_lightning.callbacks.GroupCalibrationCallback`, which must then come
    *before* this callback in ``callbacks=[...]`` so that it fits first), the thresholds are
    fitted on calibrated probabilities, the scores ``predict_step`` hands them.

    Prediction: the callback sets ``pl_module.prediction_thresholds`` to the fitted
    ``GroupThresholds``; ``predict_step`` turns a batch's probabilities (calibrated, if a calibrator
    is set) into hard predictions with ``pl_module.prediction_thresholds.apply(probs, groups)``.
    The thresholds are plain tensors in the checkpoint (``state_key``), restored by
    ``trainer.predict/test/fit(..., ckpt_path=...)`` when this callback is among the trainer's.
    Outside Lightning: :meth:`apply` or ``self.thresholds.predict(probs, groups)``.

    Nothing happens during the sanity check; only the first validation data loader is used.

    Args:
        constraint: ``"demographic_parity"``, ``"equal_opportunity"`` or ``"equalized_odds"``.
        tolerance: bound on the max - min difference of the constrained rate(s) on validation.
        randomized: mix two thresholds per group (see ``GroupThresholds``).
        outputs_fn: ``(pl_module, outputs, batch) -> (probs, target, groups)``.
        use_calibrator: fit on the module's calibrated probabilities when it has a calibrator.
        num_groups: number of groups; default ``pl_module.num_groups``, else ``max(groups) + 1``.
        min_count: a group with fewer validation samples behind a constrained rate is left
            unconstrained (its own most accurate threshold) and listed when fitting: a threshold
            fitted on a handful of rows follows their noise, and on data sets with very small
            groups it can force every group to one class. 10 by default, as
            :class:`~fair_lightning.callbacks.ConstrainedModelSelection` and the module's
            constraints; 0 constrains every group with data, as fairlearn's ``ThresholdOptimizer``.

    Warns:
        UserWarning: when the thresholds predict one class for at least 99% of the validation
            rows (the tolerance left nothing else on these scores).

    Attributes:
        thresholds: the fitted ``GroupThresholds``, or ``None``.

    Example:
        >>> thresholds = GroupThresholdCallback("demographic_parity", tolerance=0.02)
        >>> trainer = pl.Trainer(callbacks=[thresholds])  # doctest: +SKIP
        >>> trainer.fit(module, datamodule=dm)  # doctest: +SKIP
        >>> hard = thresholds.apply(probs, groups)  # doctest: +SKIP
    """

    def __init__(
        self,
        constraint: str = "demographic_parity",
        tolerance: float = 0.02,
        randomized: bool = False,
        *,
        outputs_fn: OutputsFn | None = None,
        use_calibrator: bool = True,
        num_groups: int | None = None,
        min_count: float = 10,
    ) -> None:
        # bad arguments fail now, not after training
        GroupThresholds(constraint, tolerance, randomized, min_count=min_count)
        if outputs_fn is not None and not callable(outputs_fn):
            raise ValueError(f"`outputs_fn` must be callable, got {type(outputs_fn).__name__}")
        if num_groups is not None and (isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1):
            raise ValueError(f"`num_groups` must be a positive int or None, got {num_groups!r}")
        self.constraint = GroupThresholds(constraint).constraint
        self.tolerance = float(tolerance)
        self.randomized = bool(randomized)
        self.outputs_fn = outputs_fn
        self.use_calibrator = bool(use_calibrator)
        self.num_groups = num_groups
        self.min_count = float(min_count)
        self.thresholds: GroupThresholds | None = None
        self._rows = ValidationRows()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(constraint=self.constraint, tolerance=self.tolerance, randomized=self.randomized)

    def apply(self, probs: Tensor, groups: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Hard 0/1 predictions of ``probs`` (calibrated if fitted so) with the fitted thresholds.

        Raises:
            RuntimeError: nothing fitted yet.
        """
        if self.thresholds is None:
            raise RuntimeError("GroupThresholdCallback has no thresholds yet: fit first, or load a checkpoint holding them")
        return self.thresholds.apply(probs, groups, generator=generator)

    # --- collecting outputs ---------------------------------------------------------------------
    def _scores(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Uncalibrated ``(probs, target, groups)`` of a batch (the calibrator is applied when fitting)."""
        if self.outputs_fn is None:
            return validation_probabilities(pl_module, outputs, batch)
        probs, target, groups = self.outputs_fn(pl_module, outputs, batch)
        return probs.detach().reshape(-1), target.detach().reshape(-1), groups.detach().reshape(-1).long()

    def _calibrate(self, pl_module: pl.LightningModule, probs: Tensor, groups: Tensor) -> Tensor:
        calibrator = getattr(pl_module, "prediction_calibrator", None)
        if not self.use_calibrator or calibrator is None:
            return probs
        return calibrator.transform_probabilities(probs, groups)

    _batch_rows = _scores  # what the validation hooks keep (CollectsValidationRows)

    # --- fitting ----------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = self._rows.gather(trainer, pl_module.device).cpu()
        if rows.shape[0] == 0:
            rank_zero_warn(
                "GroupThresholdCallback saw no validation data (no validation run, or `limit_val_batches=0`): "
                "no thresholds were fitted",
                category=UserWarning,
            )
            return
        probs, target, groups = rows[:, 0], rows[:, 1].long(), rows[:, 2].long()
        probs = self._calibrate(pl_module, probs, groups)
        num_groups = self.num_groups or getattr(pl_module, "num_groups", None)
        if not isinstance(num_groups, int):
            num_groups = int(groups.max()) + 1
        with torch.inference_mode(False):
            self.thresholds = GroupThresholds(
                self.constraint, self.tolerance, self.randomized, min_count=self.min_count
            ).fit(probs, target, groups, num_groups)
        # predict_step calibrates before thresholding only when the thresholds were fitted so
        self.thresholds.calibrated = bool(self.use_calibrator and getattr(pl_module, "prediction_calibrator", None) is not None)
        setattr(pl_module, ATTRIBUTE, self.thresholds)
        warn_if_left_in_worker(trainer, pl_module, "GroupThresholdCallback set `prediction_thresholds`")
        t = self.thresholds
        rank_zero_info(
            f"GroupThresholdCallback: {self.constraint} thresholds fitted on {rows.shape[0]} validation rows: "
            f"accuracy {t.fit_accuracy_:.4f}, difference {t.fit_difference_:.4f} (tolerance {self.tolerance})"
            + (f"; unconstrained groups {t.unconstrained_}" if t.unconstrained_ else "")
        )
        share = float(t.predict_proba(probs, groups).mean())
        if one_class(share):
            rank_zero_warn(
                f"GroupThresholdCallback: the fitted {self.constraint} thresholds predict 1 for {share:.1%} of the "
                f"{rows.shape[0]} validation rows, a constant classifier: tolerance {self.tolerance} leaves nothing "
                "else on these scores (a looser tolerance, a model whose group score distributions overlap more, "
                "or `min_count` to leave groups too small to constrain out)",
                category=UserWarning,
            )

    # --- checkpoints --------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "thresholds": None if self.thresholds is None else self.thresholds.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", STATE_VERSION)
        if version > STATE_VERSION:
            raise ValueError(
                f"the checkpoint's GroupThresholdCallback state has version {version}; this fair-lightning reads "
                f"versions <= {STATE_VERSION}"
            )
        state = state_dict.get("thresholds")
        self.thresholds = None if state is None else GroupThresholds.from_state_dict(state)

    def _attach(self, pl_module: pl.LightningModule) -> None:
        if self.thresholds is not None:
            setattr(pl_module, ATTRIBUTE, self.thresholds)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(pl_module)


__all__ = ["ATTRIBUTE", "GroupThresholdCallback", "validation_probabilities"]
