"""What the callbacks share: a batch's logits, labels and groups, and gathering across ranks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override


def spawned(trainer: pl.Trainer) -> bool:
    """The trainer runs in worker processes it started (``ddp_spawn``, ``ddp_fork``): what they
    set on modules and callbacks does not reach the process that called it, except
    ``state_dict()`` (after ``fit``) and ``callback_metrics``."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def warn_if_left_in_worker(trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> None:
    """Warn (rank zero) when ``what``, set on a module that is not a ``FairLightningModule``, stays
    in a worker process (:func:`spawned`). A ``FairLightningModule`` carries its thresholds and
    calibrator in ``state_dict()``."""
    from fair_lightning.module import FairLightningModule

    if spawned(trainer) and not isinstance(pl_module, FairLightningModule):
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"{what} on {type(pl_module).__name__} in the worker processes of strategy={type(trainer.strategy).__name__}"
            f"({trainer.strategy.launcher._start_method!r}): only the weights (state_dict) come back to the process "
            "that called fit, so it will not have them; use strategy='ddp' (the script itself runs on every rank) or a "
            "FairLightningModule, whose state_dict carries them",
            category=UserWarning,
        )


def evaluation_outputs(
    pl_module: pl.LightningModule, outputs: Any, batch: Any, *, num_classes: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits, target, groups)`` of an evaluation batch, each flattened to ``(N,)`` (K-class
    logits stay ``(N, K)``; with ``num_classes`` given, the logits are reshaped to ``(N, num_classes)``).

    When the step returned a mapping with ``"logits"`` (and, optionally, ``"target"`` and
    ``"groups"``), those are used: no extra computation. Otherwise the batch is split with
    ``pl_module.unpack_batch`` and the logits come from one forward pass without gradients (the
    model is already in evaluation mode).

    Raises:
        TypeError: the module has no ``unpack_batch`` (use a ``FairLightningModule``, or return
            ``{"logits", "target", "groups"}`` from the evaluation step).
        ValueError: the batch carries no labels or no groups.
    """
    logits = target = groups = None
    if isinstance(outputs, Mapping) and outputs.get("logits") is not None:
        logits, target, groups = outputs["logits"], outputs.get("target"), outputs.get("groups")
    if target is None or groups is None or logits is None:
        unpack = getattr(pl_module, "unpack_batch", None)
        if unpack is None:
            raise TypeError(
                f"{type(pl_module).__name__} has no `unpack_batch`: use a FairLightningModule, or return "
                "{'logits': ..., 'target': ..., 'groups': ...} from the evaluation step"
            )
        x, batch_target, batch_groups = unpack(batch)
        target = batch_target if target is None else target
        groups = batch_groups if groups is None else groups
        if logits is None:
            with torch.no_grad():
                logits = pl_module.forward(x)
    if target is None or groups is None:
        raise ValueError("evaluation batches must provide `target` and `groups` (see `FairLightningModule.unpack_batch`)")
    logits = logits.detach()
    if num_classes is not None:
        logits = logits.reshape(-1, num_classes)
    elif not (logits.ndim == 2 and logits.shape[1] > 1):
        logits = logits.reshape(-1)
    return logits, target.detach().reshape(-1), groups.detach().reshape(-1).long()


def gather_rows(trainer: pl.Trainer, rows: Tensor) -> Tensor:
    """Concatenate ``(N_r, ...)`` tensors of different lengths from every rank, in rank order.

    Sizes are gathered first, then each rank's rows padded to the largest and gathered in one
    call: two collectives, whatever the number of ranks. Every rank gets the same result.
    """
    if trainer.world_size == 1:
        return rows
    strategy = trainer.strategy
    size = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)
    sizes = strategy.all_gather(size).reshape(-1).tolist()
    if max(sizes) == 0:
        return rows
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = strategy.all_gather(padded)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


class ValidationRows:
    """``(score, target, group)`` rows of a validation run's batches, gathered across ranks on demand
    (what the calibration, threshold and selection callbacks fit on).

    Args:
        multiclass: also accept ``(N, K)`` K-class scores, stored as ``K`` columns: rows are then
            ``(scores..., target, group)`` (see :meth:`split`). Without it, K-class scores raise a
            ``ValueError`` (the threshold and selection callbacks take one score per sample).
    """

    def __init__(self, multiclass: bool = False) -> None:
        self.multiclass = multiclass
        self._rows: list[Tensor] = []

    def clear(self) -> None:
        self._rows = []

    def add(self, scores: Tensor, target: Tensor, groups: Tensor) -> None:
        """Keep one batch: scores ``(N,)`` (or ``(N, K)`` with ``multiclass``), target and groups
        flattened to ``(N,)``, stored as float64 columns."""
        scores = scores.detach()
        if scores.ndim == 2 and scores.shape[1] > 1:
            if not self.multiclass:
                raise ValueError(
                    f"`scores` of shape {tuple(scores.shape)} are K-class scores; this callback takes one score per "
                    "sample (a binary classifier)"
                )
        else:
            scores = scores.reshape(-1, 1)
        columns = (target.detach().reshape(-1, 1), groups.detach().reshape(-1, 1))
        self._rows.append(torch.cat([c.double() for c in (scores, *columns)], 1))

    def gather(self, trainer: pl.Trainer, device: torch.device, num_scores: int = 1) -> Tensor:
        """Every rank's rows, ``(N, S + 2)`` float64 in rank order (the same on every rank; ``S = 1``
        score column, or ``K``); empties the buffer. ``num_scores``: ``S`` of a rank without rows."""
        rows = torch.cat(self._rows) if self._rows else torch.zeros(0, num_scores + 2, dtype=torch.float64)
        self._rows = []
        return gather_rows(trainer, rows.to(device))

    @staticmethod
    def split(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(scores, target, groups)`` of gathered rows: scores ``(N,)`` or ``(N, K)``, groups long."""
        scores = rows[:, :-2]
        return scores[:, 0] if scores.shape[1] == 1 else scores, rows[:, -2], rows[:, -1].long()


class CollectsValidationRows(Callback):
    """Base of the callbacks that fit on a validation run's rows (calibration, thresholds, selection).

    It clears :attr:`_rows` (a :class:`ValidationRows`, set by the subclass) when a validation
    run starts and adds each batch of the first validation dataloader, as
    :meth:`_batch_rows` gives it, while :meth:`_collecting` says so (by default: outside the
    sanity check).
    """

    _rows: ValidationRows

    def _collecting(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking

    def _batch_rows(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(scores, target, groups)`` of one validation batch."""
        raise NotImplementedError

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._collecting(trainer):
            self._rows.clear()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx == 0 and self._collecting(trainer):
            self._rows.add(*self._batch_rows(pl_module, outputs, batch))


def reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks (a no-op on one process)."""
    if trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def group_names(pl_module: pl.LightningModule, num_groups: int) -> list[str]:
    """The module's group names (the ones in its ``val/...`` keys), else ``group_<g>``."""
    names = getattr(pl_module, "group_names", None)
    if names is not None and len(names) == num_groups:
        return [str(n) for n in names]
    return [f"group_{g}" for g in range(num_groups)]


def num_groups_of(pl_module: pl.LightningModule) -> int:
    """``pl_module.num_groups``; a ``TypeError`` naming the callback's requirement if missing."""
    num_groups = getattr(pl_module, "num_groups", None)
    if not isinstance(num_groups, int):
        raise TypeError(f"{type(pl_module).__name__} must have an int `num_groups` (as FairLightningModule does)")
    return num_groups
