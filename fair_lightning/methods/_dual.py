"""The dual player's clock, shared by the multiplier methods (``Lagrangian``, ``BoundedGroupLossConstraint``).

Their multipliers ascend ``dual_lr`` per *epoch* per unit of violation and their running sums
remember ``memory`` epochs, so both need the number of optimizer steps per epoch; the warm-up
(``dual_warmup``, a share of training during which the running sums follow the model but the
multipliers stay at 0) needs the total number of steps. ``FairLightningModule`` sets both from
the trainer at the start of fit; in a user's own LightningModule they are constructor arguments.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from fair_lightning.methods._base import FLOAT32_MAX, check_number

#: steps per epoch assumed (with a warning) when nobody set them before the first training step
DEFAULT_STEPS_PER_EPOCH = 100


class DualClock:
    """Mixin of a :class:`~fair_lightning.methods.FairnessMethod` with multipliers on an epoch clock.

    Call :meth:`_init_clock` in ``__init__`` (after ``nn.Module.__init__``); it registers the
    ``steps_per_epoch`` and ``warmup_steps`` buffers (in checkpoints). The per-step dual rate is
    ``self._step_lr`` and the running sums' decay ``self._ema_decay``; a subclass that keeps them
    elsewhere overrides :meth:`_clock_changed`.
    """

    def _init_clock(self, dual_lr: float, memory: float, dual_warmup: float, steps_per_epoch: int | None, total_steps: int | None) -> None:
        self.dual_lr = check_number(dual_lr, "dual_lr", low=0, low_open=True, high=FLOAT32_MAX)
        self.memory = check_number(memory, "memory", low=0, low_open=True)
        self.dual_warmup = check_number(dual_warmup, "dual_warmup", low=0, high=1)
        if self.dual_warmup >= 1:
            raise ValueError(f"`dual_warmup` must be a share of training in [0, 1), got {dual_warmup}")
        self.register_buffer("steps_per_epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("warmup_steps", torch.zeros((), dtype=torch.long))
        self._step_lr = 0.0
        self._ema_decay = 0.0
        self._clock_set = False  # Python mirrors of the buffers read on every step (no tensor reads)
        self._warm_done = False
        self._warned_steps = False
        if total_steps is not None:
            self.set_total_steps(total_steps)
        if steps_per_epoch is not None:
            self.set_steps_per_epoch(steps_per_epoch)

    def set_steps_per_epoch(self, steps: int) -> None:
        """Scale the dual step and the running sums' memory to ``steps`` optimizer steps per epoch."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps_per_epoch` must be an int >= 1, got {steps!r}")
        self.steps_per_epoch.fill_(steps)
        self._apply_clock()

    def set_total_steps(self, steps: int) -> None:
        """The length of training in optimizer steps (sets the dual warm-up)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`total_steps` must be an int >= 1, got {steps!r}")
        self.warmup_steps.fill_(int(self.dual_warmup * steps))

    def _apply_clock(self) -> None:
        steps = int(self.steps_per_epoch)
        self._clock_set = steps > 0
        self._step_lr = self.dual_lr / steps
        # newest batch's weight 1 / (memory * steps), at most 1 (a memory shorter than a step is the batch)
        self._ema_decay = max(0.0, 1.0 - 1.0 / (self.memory * steps))
        self._clock_changed()

    def _clock_changed(self) -> None:
        """Hook: the per-step rate or decay changed."""

    def _ensure_clock(self) -> None:
        """Before a training step: without a clock, assume :data:`DEFAULT_STEPS_PER_EPOCH` (warned once)."""
        if self._clock_set or int(self.steps_per_epoch) > 0:
            return
        if not self._warned_steps:
            rank_zero_warn(
                f"{type(self).__name__}: `steps_per_epoch` is not set; assuming {DEFAULT_STEPS_PER_EPOCH} optimizer "
                "steps per epoch for the dual learning rate and the running sums' memory. Pass "
                "`steps_per_epoch=trainer.num_training_batches`."
            )
            self._warned_steps = True
        self.set_steps_per_epoch(DEFAULT_STEPS_PER_EPOCH)

    def _ascending(self, num_updates: int) -> bool:
        """Whether the multipliers move at this dual step (the warm-up is over)."""
        if not self._warm_done:
            self._warm_done = num_updates >= int(self.warmup_steps)
        return self._warm_done

    def _reload_clock(self) -> None:
        """After ``load_state_dict``: the Python mirrors from the restored buffers."""
        self._warm_done = False  # re-read from the buffers at the next step
        if int(self.steps_per_epoch) > 0:
            self._apply_clock()
