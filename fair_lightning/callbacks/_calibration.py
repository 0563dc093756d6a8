"""``GroupCalibrationCallback``: fit a per-group calibrator on validation outputs, keep it in checkpoints."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from fair_lightning.callbacks._outputs import (
    CollectsValidationRows,
    ValidationRows,
    evaluation_outputs,
    group_names,
    num_groups_of,
    reduce_sum,
    warn_if_left_in_worker,
)
from fair_lightning.calibration import METHODS, MULTICLASS_METHODS, GroupFairnessCalibrator
from fair_lightning.functional import Rate, calibration_error_from_sums, calibration_sums
from fair_lightning.functional._calibration import calibration_error_summary
from fair_lightning.functional._multiclass import multiclass_calibration_sums
from fair_lightning.groups import GroupSpec

#: When the calibrator is fitted.
WHEN = ("fit_end", "validation_epoch_end")
#: Keyword arguments passed on to :class:`~fair_lightning.calibration.GroupFairnessCalibrator`.
CALIBRATOR_KWARGS = ("group_spec", "shrinkage", "temperature_bias", "max_iter", "tol", "eps")
STATE_VERSION = 1


class GroupCalibrationCallback(CollectsValidationRows):
    """Fit a :class:`~fair_lightning.calibration.GroupFairnessCalibrator` on the validation outputs.

    During validation the callback keeps each batch's scores, labels and groups: probabilities
    ``sigmoid(logits)`` for ``"platt"`` and ``"isotonic"``, the logits for ``"temperature"``.
    For a K-class module (``pl_module.num_classes = K``) it keeps the ``(N, K)`` logits and
    fits ``"temperature"`` (one temperature per group) or ``"vector"`` (vector scaling: a scale
    and a bias per group and class); ``predict`` then returns calibrated ``(N, K)``
    probabilities, and the logged ECE is the classwise ECE (mean over classes of the one-vs-rest
    ECE).
    It reads the logits from the validation step's output when that is a mapping with a
    ``"logits"`` key, and otherwise runs one forward pass without gradients on the batch
    (``pl_module.unpack_batch(batch)``); no second pass over the data loader. Only the first
    validation data loader is used.

    Fitting (``when``):
        * ``"fit_end"`` (default): once, when training ends (``on_train_end``), on the outputs of
          the last validation run. Checkpoints that ``ModelCheckpoint`` wrote *during* training
          do not contain it; save one after ``fit`` (``trainer.save_checkpoint(path)``).
        * ``"validation_epoch_end"``: after every validation epoch, so every checkpoint carries
          the calibrator fitted on the outputs of its own weights (the right choice with
          ``ModelCheckpoint(monitor=...)`` and ``ckpt_path="best"``).

    Weights that change after the fit (``ConstrainedModelSelection`` restores an earlier epoch
    at the end of fit, after ``"fit_end"`` fitted on the last epoch's outputs; weights loaded by
    hand) no longer match the calibrator: the callback keeps a fingerprint of the weights it was
    fitted for. A ``trainer.validate`` run on changed weights refits a ``"fit_end"`` calibrator
    on that run's outputs; ``trainer.test`` and ``trainer.predict`` on changed weights warn.

    Under DDP the per-rank outputs (of different lengths) are gathered, so every rank fits the
    same calibrator on the union of the validation data.

    Logged (per group ``<g>``, named as in the module's ``val/...`` keys):
        * ``calibration/ece_before/<g>``, ``calibration/ece_after/<g>``,
          ``calibration/ece_before_max``, ``calibration/ece_after_max``: ECE on the validation
          data the calibrator was fitted on. "After" is **in-sample, hence optimistic**.
        * ``calibration/test_ece_before/<g>``, ``calibration/test_ece_after/<g>`` and their
          ``_max``: the same on the test data (``trainer.test``), the honest numbers.

        With ``when="validation_epoch_end"`` the validation keys go through ``pl_module.log``
        (they reach ``trainer.callback_metrics`` and can be monitored); with ``"fit_end"`` they
        are written to ``trainer.loggers`` at the global step when training ended.

    Prediction: the callback sets ``pl_module.prediction_calibrator``, which
    ``FairLightningModule.predict_step`` applies, so ``trainer.predict`` returns calibrated
    probabilities. Its state is plain tensors in the checkpoint (``torch.load(path,
    weights_only=True)`` reads it) and is restored by ``trainer.predict(..., ckpt_path=...)``,
    ``trainer.test(..., ckpt_path=...)`` and ``trainer.fit(..., ckpt_path=...)`` when this
    callback (same ``method``) is among the trainer's callbacks. A checkpoint without a
    calibrator leaves the module uncalibrated (with a warning), never with a calibrator fitted
    on other weights. Outside a trainer, :meth:`calibrator_from_checkpoint` reads it back.

    Groups: ``pl_module.num_groups`` groups. Without ``group_spec``, the ``group_spec`` of the
    trainer's datamodule (``TabularDataModule``) is used when it has that many groups, which
    enables the calibrator's fallback of small intersections to their marginal parents.

    With ``method="temperature"`` (and always for K classes), ``FairLightningModule.predict_step``
    hands the calibrator the logits; with the other methods, the probabilities.

    Nothing happens during the sanity check.

    Args:
        method: ``"platt"``, ``"isotonic"`` or ``"temperature"``; ``"temperature"`` or ``"vector"``
            for a K-class module.
        when: ``"fit_end"`` or ``"validation_epoch_end"`` (see above).
        min_group_size: groups with fewer validation samples use their parent's map.
        n_bins: equal-width bins of the expected calibration error.
        **calibrator_kwargs: more arguments of ``GroupFairnessCalibrator``: ``group_spec``,
            ``shrinkage``, ``temperature_bias``, ``max_iter``, ``tol``, ``eps``.

    Attributes:
        calibrator: the fitted ``GroupFairnessCalibrator``, or ``None``.

    Raises:
        ValueError: an unknown ``method`` or ``when`` (the valid values are listed), or an
            invalid calibrator argument; at set-up, a ``method`` that does not fit the module's
            outputs (``"platt"``/``"isotonic"`` for K classes, ``"vector"`` for one logit).
        TypeError: an unknown keyword argument.

    Example:
        >>> calibration = GroupCalibrationCallback("isotonic", when="validation_epoch_end")
        >>> trainer = pl.Trainer(callbacks=[calibration])  # doctest: +SKIP
        >>> trainer.fit(module, datamodule=dm)  # doctest: +SKIP
        >>> trainer.test(module, datamodule=dm)  # logs calibration/test_ece_after/...  # doctest: +SKIP
        >>> probs = trainer.predict(module, datamodule=dm)  # calibrated  # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "platt",
        when: str = "fit_end",
        min_group_size: int = 50,
        n_bins: int = 15,
        **calibrator_kwargs: Any,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {list(METHODS)}, got {method!r}")
        if when not in WHEN:
            raise ValueError(f"`when` must be one of {list(WHEN)}, got {when!r}")
        unknown = sorted(set(calibrator_kwargs) - set(CALIBRATOR_KWARGS))
        if unknown:
            raise TypeError(
                f"GroupCalibrationCallback got unexpected keyword argument(s) {unknown}; "
                f"the calibrator arguments are {list(CALIBRATOR_KWARGS)}"
            )
        self.method = method
        self.when = when
        #: fingerprint of the weights the calibrator was fitted for (see ``_weights_key``)
        self._fitted_for: list[float] | None = None
        self.min_group_size = min_group_size
        self.n_bins = n_bins
        self.calibrator_kwargs = dict(calibrator_kwargs)
        GroupFairnessCalibrator(**self._calibrator_params())._check_params()  # bad values fail now, not after training
        self.calibrator: GroupFairnessCalibrator | None = None
        self._rows = ValidationRows(multiclass=True)
        self._test_sums: Tensor | None = None
        self._restored = self._dropped = False
        self._attached: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method)

    # --- the calibrator -----------------------------------------------------------------------
    def _calibrator_params(self, num_groups: int | None = None, spec: GroupSpec | None = None) -> dict[str, Any]:
        params = {"method": self.method, "min_group_size": self.min_group_size, "n_bins": self.n_bins}
        params.update(self.calibrator_kwargs)
        if spec is not None and params.get("group_spec") is None:
            params["group_spec"] = spec
        if params.get("group_spec") is None:
            params["num_groups"] = num_groups
        return params

    @staticmethod
    def _datamodule_spec(trainer: pl.Trainer, num_groups: int) -> GroupSpec | None:
        spec = getattr(trainer.datamodule, "group_spec", None)
        return spec if isinstance(spec, GroupSpec) and spec.num_groups == num_groups else None

    @property
    def prediction_calibrator(self) -> Any:
        """What ``pl_module.prediction_calibrator`` is set to: the fitted calibrator (``predict_step``
        feeds it logits for ``"temperature"`` and K classes, probabilities otherwise)."""
        return self.calibrator

    def _attach(self, pl_module: pl.LightningModule) -> None:
        current = getattr(pl_module, "prediction_calibrator", None)
        if self.calibrator is not None:
            self._attached = self.prediction_calibrator
            pl_module.prediction_calibrator = self._attached
        elif current is not None and current is self._attached:
            pl_module.prediction_calibrator = None  # ours, and no longer valid
            self._attached = None

    def _sync_with_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Attach the calibrator; drop one that does not belong to weights just loaded from a checkpoint."""
        if trainer.ckpt_path is not None and not self._restored:
            dropped = self._dropped or self.calibrator is not None
            self.calibrator = None
            if dropped or stage == "predict":
                rank_zero_warn(
                    f"The checkpoint {os.fspath(trainer.ckpt_path)!r} holds no calibrator of {self.state_key}, so "
                    "predictions are not calibrated"
                    + (" (the calibrator fitted earlier belongs to other weights and was dropped)" if dropped else "")
                    + ". With when='fit_end', save a checkpoint after `fit`; with when='validation_epoch_end' every "
                    "checkpoint carries one.",
                    category=UserWarning,
                )
        self._attach(pl_module)
        if stage != "fit" and self._stale(pl_module):
            rank_zero_warn(
                f"GroupCalibrationCallback: the calibrator was fitted for other weights than {type(pl_module).__name__} "
                "has now (a callback such as ConstrainedModelSelection restored another epoch after it was fitted, or "
                f"the weights were loaded), so the {stage} probabilities are miscalibrated; run `trainer.validate` first "
                "(it refits a when='fit_end' calibrator on the current weights) or use when='validation_epoch_end'",
                category=UserWarning,
            )

    def _stale(self, pl_module: pl.LightningModule) -> bool:
        """The calibrator was fitted for other weights than the module has now."""
        if self.calibrator is None or self._fitted_for is None:
            return False
        now = _weights_key(pl_module)
        # float64 sums of the same weights agree to rounding (another device sums in another order)
        return len(now) != len(self._fitted_for) or not all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(now, self._fitted_for)
        )

    def _fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor] | None:
        num_groups = num_groups_of(pl_module)
        device = pl_module.device
        rows = self._rows.gather(trainer, device, num_scores=getattr(pl_module, "num_classes", None) or 1)
        if rows.shape[0] == 0:
            rank_zero_warn(
                "GroupCalibrationCallback saw no validation data (no validation run, or `limit_val_batches=0`): "
                "no new calibrator was fitted" + ("; the previous one is kept" if self.calibrator is not None else ""),
                category=UserWarning,
            )
            return None
        with torch.inference_mode(False):
            scores, target, groups = ValidationRows.split(rows.detach().cpu().clone())
            if scores.ndim == 1 and self.method != "temperature":
                scores = torch.sigmoid(scores)
            params = self._calibrator_params(num_groups, self._datamodule_spec(trainer, num_groups))
            self.calibrator = GroupFairnessCalibrator(**params).fit(scores, target, groups)
        self._fitted_for = _weights_key(pl_module)
        self._attach(pl_module)
        warn_if_left_in_worker(trainer, pl_module, "GroupCalibrationCallback set `prediction_calibrator`")
        names = group_names(pl_module, num_groups)
        errors = self.calibrator.calibration_error_
        return _ece_metrics("calibration/ece_", names, errors["before"], errors["after"])

    # --- hooks: set-up and checkpoints --------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        num_groups = num_groups_of(pl_module)
        self._check_method_fits(pl_module)
        spec = self.calibrator_kwargs.get("group_spec")
        if spec is not None:
            spec_groups = (spec if isinstance(spec, GroupSpec) else GroupSpec(spec)).num_groups
            if spec_groups != num_groups:
                raise ValueError(
                    f"`group_spec` has {spec_groups} groups but {type(pl_module).__name__}.num_groups is {num_groups}"
                )
        # set by `load_state_dict` when this run restores a checkpoint that holds a calibrator / dropped one
        self._restored = self._dropped = False

    def _check_method_fits(self, pl_module: pl.LightningModule) -> None:
        """``method`` against the module's outputs: K-class logits or one logit per sample."""
        if not hasattr(pl_module, "num_classes"):
            return  # a user's module: the calibrator checks the scores it gets
        num_classes = pl_module.num_classes
        if num_classes is not None and self.method not in MULTICLASS_METHODS:
            raise ValueError(
                f"`method`={self.method!r} calibrates one score per sample, but {type(pl_module).__name__} has "
                f"num_classes={num_classes} (K-class logits): use method='temperature' or 'vector'"
            )
        if num_classes is None and self.method == "vector":
            raise ValueError(
                f"`method`='vector' calibrates K-class logits, but {type(pl_module).__name__} has num_classes=None "
                "(one logit per sample): use method='temperature', 'platt' or 'isotonic'"
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._rows.clear()
        self._test_sums = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "method": self.method,
            "calibrator": None if self.calibrator is None else self.calibrator.state_dict(),
            "fitted_for": self._fitted_for,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", STATE_VERSION)
        if version > STATE_VERSION:
            raise ValueError(
                f"the checkpoint's GroupCalibrationCallback state has version {version}; this fair-lightning reads "
                f"versions <= {STATE_VERSION}"
            )
        calibrator = state_dict.get("calibrator")
        self._dropped = calibrator is None and self.calibrator is not None
        self.calibrator = None if calibrator is None else GroupFairnessCalibrator.from_state_dict(calibrator)
        self._fitted_for = state_dict.get("fitted_for") if calibrator is not None else None
        self._restored = calibrator is not None

    @classmethod
    def calibrator_from_checkpoint(
        cls, checkpoint: str | os.PathLike | Mapping[str, Any], method: str | None = None
    ) -> GroupFairnessCalibrator | None:
        """The calibrator stored in a Lightning checkpoint by this callback, or ``None``.

        Args:
            checkpoint: a checkpoint path (read with ``weights_only=True``) or the loaded dict.
            method: the callback's ``method``; needed only when the checkpoint holds several.

        Raises:
            ValueError: several calibrators and no (or no matching) ``method``.
        """
        if not isinstance(checkpoint, Mapping):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        states = {
            key: state
            for key, state in checkpoint.get("callbacks", {}).items()
            if isinstance(key, str) and key.startswith(cls.__qualname__)
            and (method is None or state.get("method") == method)
        }
        if len(states) > 1:
            raise ValueError(f"the checkpoint holds several calibrators {sorted(states)}; pass `method`")
        if not states:
            return None
        state = next(iter(states.values())).get("calibrator")
        return None if state is None else GroupFairnessCalibrator.from_state_dict(state)

    # --- hooks: validation --------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync_with_checkpoint(trainer, pl_module, "fit")

    def _batch_rows(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        return evaluation_outputs(pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.when == "validation_epoch_end":
            metrics = self._fit(trainer, pl_module)
            if metrics:
                pl_module.log_dict({k: v.float() for k, v in metrics.items()}, sync_dist=True)  # equal on all ranks
        elif trainer.state.fn == "validate" and self._stale(pl_module):
            # a `trainer.validate` run on weights that changed after the fit (a restored epoch): refit on them
            rank_zero_info(
                "GroupCalibrationCallback: the weights changed since the calibrator was fitted (e.g. a restored "
                "epoch); refitted on this validation run's outputs"
            )
            self._log_fit_end(trainer, self._fit(trainer, pl_module))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.when != "fit_end":
            return
        self._log_fit_end(trainer, self._fit(trainer, pl_module))

    @staticmethod
    def _log_fit_end(trainer: pl.Trainer, metrics: dict[str, Tensor] | None) -> None:
        if metrics:
            values = {k: float(v) for k, v in metrics.items()}
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    # --- hooks: test and predict --------------------------------------------------------------
    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync_with_checkpoint(trainer, pl_module, "test")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._test_sums = None

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.calibrator is None or dataloader_idx != 0:
            return
        logits, target, groups = evaluation_outputs(pl_module, outputs, batch)
        logits = logits.double()
        if logits.ndim == 2:  # K classes: the calibrator takes the logits
            before, after = torch.softmax(logits, 1), self.calibrator.transform(logits, groups)
        else:
            before = torch.sigmoid(logits)
            after = self.calibrator.transform(logits if self.method == "temperature" else before, groups)
        num_groups = num_groups_of(pl_module)
        sums = torch.stack([_classwise_sums(p, target, groups, num_groups, self.n_bins) for p in (before, after)])
        self._test_sums = sums if self._test_sums is None else self._test_sums + sums

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.calibrator is None:
            rank_zero_warn(
                "GroupCalibrationCallback has no calibrator (fit first, or test from a checkpoint that holds one): "
                "calibration/test_ece_* are not logged",
                category=UserWarning,
            )
            return
        num_groups = num_groups_of(pl_module)
        sums = self._test_sums
        if sums is None:  # this rank saw no test batch; it still takes part in the reduction
            k = getattr(pl_module, "num_classes", None) or 1
            sums = torch.zeros(2, num_groups, k, self.n_bins, 3, dtype=torch.float64, device=pl_module.device)
        sums = reduce_sum(trainer, sums)
        before, after = (_classwise_error(s) for s in sums)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=sums.device)
        metrics = _ece_metrics(
            "calibration/test_ece_",
            group_names(pl_module, num_groups),
            torch.where(before.valid, before.value, nan),
            torch.where(after.valid, after.value, nan),
        )
        pl_module.log_dict({k: v.float() for k, v in metrics.items()}, sync_dist=True)  # equal on all ranks

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync_with_checkpoint(trainer, pl_module, "predict")


def _weights_key(pl_module: pl.LightningModule) -> list[float]:
    """A fingerprint of the module's weights: each parameter's float64 sum and sum of squares
    (equal on every rank; a restored or loaded set of weights differs)."""
    with torch.no_grad():
        key: list[float] = []
        for p in pl_module.parameters():
            d = p.detach().double()
            key += [float(d.sum()), float(d.square().sum())]
    return key


def _ece_metrics(prefix: str, names: list[str], before: Tensor, after: Tensor) -> dict[str, Tensor]:
    """``{prefix}before/<g>``, ``{prefix}after/<g>`` and the maxima over groups with samples."""
    metrics = {}
    for stage, per_group in (("before", before), ("after", after)):
        for g, name in enumerate(names):
            metrics[f"{prefix}{stage}/{name}"] = per_group[g]
        summary = calibration_error_summary(_as_rate(per_group))
        metrics[f"{prefix}{stage}_max"] = summary["max"]
    return metrics


def _classwise_sums(probs: Tensor, target: Tensor, groups: Tensor, num_groups: int, n_bins: int) -> Tensor:
    """``(G, K, n_bins, 3)`` one-vs-rest calibration sums of ``(N, K)`` probabilities; ``K = 1``
    (the positive class) for ``(N,)`` probabilities."""
    if probs.ndim == 1:
        return calibration_sums(probs, target, groups, num_groups, n_bins=n_bins).unsqueeze(1)
    return multiclass_calibration_sums(probs, target, groups, num_groups, probs.shape[1], n_bins=n_bins)[0]


def _classwise_error(sums: Tensor) -> Rate:
    """Per-group ECE from :func:`_classwise_sums`: the mean over classes of the one-vs-rest ECE."""
    per_class = calibration_error_from_sums(sums)
    return Rate(per_class.value.mean(-1), per_class.valid.all(-1))


def _as_rate(per_group: Tensor) -> Rate:
    valid = ~torch.isnan(per_group)
    return Rate(torch.where(valid, per_group, torch.zeros_like(per_group)), valid)


__all__ = ["GroupCalibrationCallback", "WHEN"]
