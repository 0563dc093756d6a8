"""What a ``fit`` did, as seen where it ran, for a job's record (``metrics.json``).

Under a spawning strategy (``ddp_spawn``) the workers train, and the process that called ``fit``
gets back only the weights (``state_dict``) and ``callback_metrics``: its trainer still says epoch
0, step 0, and its ``ConstrainedModelSelection`` never saw a validation run. :class:`FitSummary`
(the last callback of a job's trainer) takes the summary at the end of fit in the process that
trained: in-process as an attribute, and, on rank zero of spawned workers, also as a JSON file
that :func:`fit_summary` reads back in the calling process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from fair_lightning.callbacks._outputs import spawned


def summarize_fit(trainer: pl.Trainer) -> dict[str, Any]:
    """``epochs``, ``global_step``, ``restored`` (a selection callback restored an earlier epoch)
    and, with a ``ConstrainedModelSelection``, ``certified`` and ``selection`` (see
    :func:`fair_lightning.train.selection_summary`), from the trainer that ran the fit."""
    from fair_lightning.train import selection_summary

    restored = any(getattr(cb, "restore", False) and getattr(cb, "best_index", None) is not None for cb in trainer.callbacks)
    return {
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "restored": bool(restored),
        **selection_summary(trainer),
    }


class FitSummary(Callback):
    """Takes :func:`summarize_fit` at the end of fit (put it after the selection callbacks).

    Args:
        path: where rank zero of spawned workers writes the summary for the calling process
            (a hidden file in the job's directory; removed when read).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.summary: dict[str, Any] | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.summary = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.summary = summarize_fit(trainer)
        if spawned(trainer) and trainer.global_rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(self.summary, default=str))
            os.replace(partial, self.path)

    def reset(self) -> None:
        """Forget the last fit's summary (call before a new ``fit`` in the calling process)."""
        self.summary = None
        self.path.unlink(missing_ok=True)

    def read(self) -> dict[str, Any] | None:
        """The summary of the last fit: this process's own, or the one spawned workers wrote."""
        if self.summary is not None:
            return self.summary
        if self.path.exists():
            self.summary = json.loads(self.path.read_text())
            self.path.unlink()
        return self.summary


def fit_summary(trainer: pl.Trainer) -> dict[str, Any]:
    """The summary of ``trainer``'s last fit: its :class:`FitSummary`'s (which knows what spawned
    workers did), or, without one, what this process's trainer and callbacks hold."""
    for cb in trainer.callbacks:
        if isinstance(cb, FitSummary):
            summary = cb.read()
            if summary is not None:
                return summary
    return summarize_fit(trainer)


__all__ = ["FitSummary", "fit_summary", "summarize_fit"]
