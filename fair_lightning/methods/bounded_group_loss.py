"""``BoundedGroupLossConstraint``: every group's mean loss at most ``bound``, by Lagrange multipliers.

The regression counterpart of :class:`~fair_lightning.methods.Lagrangian`, with fairlearn's
``BoundedGroupLoss(loss, upper_bound=bound)`` semantics (Agarwal et al. 2019): the constraint of
group ``g`` is ``L_g <= bound``, its violation ``L_g - bound``, where ``L_g`` is the group's mean
per-sample loss (squared error by default). One multiplier per group:

* the model descends ``task + sum_g lambda_g * (L_g(batch) - bound)`` (the batch's group losses,
  differentiable; the multipliers held fixed);
* after its optimizer step, each multiplier takes a projected ascent step on the violation of
  running group-loss sums (an exponential moving average over steps, all-reduced across DDP ranks
  first), ``lambda_g <- clip(lambda_g + dual_lr / steps_per_epoch * (L_g(running) - bound), 0,
  multiplier_max)``. A group with fewer than ``min_count`` samples in the running sums is not
  constrained (its multiplier is held at 0).

Unlike the penalty :class:`~fair_lightning.losses.BoundedGroupLoss` (``relu(L_g - bound)`` at a
fixed strength), the multipliers grow only as long as a group's loss stays above the bound, and
the model is not pushed once every group is under it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fair_lightning.constraints import pi_multipliers
from fair_lightning.functional._core import grouped_sum
from fair_lightning.methods._base import FLOAT32_MAX, FairnessMethod, all_reduce_sum, check_number, register_method
from fair_lightning.methods._dual import DualClock

def squared_error(preds: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``(preds - target) ** 2``."""
    return F.mse_loss(preds, target, reduction="none")


def absolute_error(preds: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``|preds - target|``."""
    return F.l1_loss(preds, target, reduction="none")


#: per-sample losses known by name: ``(preds, target) -> (N,)``
GROUP_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
}


@register_method("bounded_group_loss")
class BoundedGroupLossConstraint(DualClock, FairnessMethod):
    """Each group's mean loss ``<= bound`` for a regression model, with one multiplier per group.

    Args:
        num_groups: number of groups.
        bound: the largest acceptable mean loss of a group (fairlearn's ``upper_bound``), ``>= 0``.
        loss: the per-sample loss: ``"squared_error"`` (default), ``"absolute_error"``, or a
            callable ``(preds, target) -> (N,)`` (differentiable in ``preds``).
        dual_lr: how far a multiplier ascends per *epoch* per unit of violation (each step moves
            ``dual_lr / steps_per_epoch``), as in :class:`~fair_lightning.methods.Lagrangian`.
        memory: memory of the running group-loss sums, in epochs (an exponential moving average
            over steps with ``1 / (memory * steps_per_epoch)`` weight on the newest batch; at
            least the batch itself).
        multiplier_max: multipliers are projected onto ``[0, multiplier_max]``.
        dual_damping: proportional gain of the PI update, as in
            :class:`~fair_lightning.methods.Lagrangian`: the model sees ``integral + dual_damping *
            violation`` (clipped to ``[0, multiplier_max]``), so a multiplier falls as soon as its
            group is under the bound instead of after the integral has unwound (0: plain projected
            ascent, which oscillates: on the synthetic benchmark one seed in three ended 30 epochs
            at the unconstrained group losses).
        dual_warmup: share of the training steps before the multipliers start to move (the running
            sums are kept from the start). Default 0: on the synthetic group-shift benchmark a
            warm-up of 0.2 left the multipliers to start late and overshoot (group losses 0.80 /
            1.21 after 8 epochs, 1.76 / 0.64 after 30, against 1.00 / 0.98 and 0.80 / 1.18 without
            one). Needs ``total_steps`` (``FairLightningModule`` sets it).
        total_steps: optimizer steps of the whole training (``trainer.estimated_stepping_batches``).
        steps_per_epoch: optimizer steps per epoch; ``FairLightningModule`` sets it from the
            trainer. In your own LightningModule pass ``trainer.num_training_batches`` (or leave
            ``None``: 100 steps is assumed, with a warning).
        min_count: a group with fewer samples in the running sums is not constrained.
        group_names: names of the groups (in logged keys).

    Example (the drop-in path, in any LightningModule with automatic optimization)::

        self.fairness = BoundedGroupLossConstraint(2, bound=0.5, steps_per_epoch=100)  # __init__
        loss = F.mse_loss(preds, y) + self.fairness(preds, y, groups)                   # training_step
    """

    term_name = "train/fairness_loss"
    requires_target = True

    def __init__(
        self,
        num_groups: int,
        *,
        bound: float,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "squared_error",
        dual_lr: float = 2.0,
        memory: float = 0.25,
        multiplier_max: float = 10.0,
        dual_damping: float = 2.0,
        dual_warmup: float = 0.0,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        min_count: float = 10,
        group_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(num_groups, group_names=group_names)
        self.task = "regression"
        self.bound = check_number(bound, "bound", low=0)
        if isinstance(loss, str):
            if loss not in GROUP_LOSSES:
                raise ValueError(f"`loss` must be one of {list(GROUP_LOSSES)} or a callable, got {loss!r}")
            self.loss_name, self.loss_fn = loss, GROUP_LOSSES[loss]
        elif callable(loss):
            self.loss_name, self.loss_fn = getattr(loss, "__name__", type(loss).__name__), loss
        else:
            raise ValueError(f"`loss` must be one of {list(GROUP_LOSSES)} or a callable, got {loss!r}")
        self.multiplier_max = check_number(multiplier_max, "multiplier_max", low=0, low_open=True, high=FLOAT32_MAX)
        self.min_count = check_number(min_count, "min_count", low=0)
        G = self.num_groups
        # buffers: in checkpoints, identical on every rank (computed from all-reduced sums)
        self.dual_damping = check_number(dual_damping, "dual_damping", low=0)
        self.register_buffer("multipliers", torch.zeros(G))  # what the model sees
        self.register_buffer("integral", torch.zeros(G))  # the accumulated ascent
        self.register_buffer("running_sums", torch.zeros(2, G, dtype=torch.float64))  # [count, loss sum]
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # the batch's sums waiting for the dual step after the model's optimizer step
        self.register_buffer("pending_sums", torch.zeros(2, G, dtype=torch.float64))
        self.register_buffer("has_pending", torch.zeros((), dtype=torch.bool))
        self._pending = False
        # optimizer steps per epoch (the per-step dual rate, the running sums' memory) and the warm-up
        self._init_clock(dual_lr, memory, dual_warmup, steps_per_epoch, total_steps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._pending = bool(self.has_pending)
        self._reload_clock()

    # ------------------------------------------------------------------ the three jobs
    def per_sample_loss(self, preds: Tensor, target: Tensor) -> Tensor:
        """The ``(N,)`` per-sample losses of ``loss``."""
        target = target.reshape(-1).to(preds.dtype)
        out = self.loss_fn(preds.reshape(-1), target)
        if not isinstance(out, Tensor) or out.shape != target.shape:
            raise ValueError(
                f"`loss` must return one loss per sample, shape ({target.numel()},), got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        return out

    def group_loss_sums(self, preds: Tensor, target: Tensor, groups: Tensor) -> Tensor:
        """``(2, G)`` per-group ``[count, loss sum]`` of a batch (differentiable in ``preds``)."""
        losses = self.per_sample_loss(preds, target)
        return grouped_sum(torch.stack((torch.ones_like(losses), losses), 1), groups.reshape(-1).long(), self.num_groups).T

    def compute_term(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None) -> Tensor:
        if target is None:
            raise ValueError(f"`target` is required by {type(self).__name__}, got None")
        if self.training:
            self._ensure_clock()
        sums = self.group_loss_sums(logits, target, groups)
        count, total = sums[0], sums[1]
        present = count > 0
        group_loss = total / count.clamp_min(1)
        violation = torch.where(present, group_loss - self.bound, torch.zeros_like(group_loss))
        lam = self.multipliers.to(violation.dtype)
        term = torch.dot(lam, violation)
        if self.training:
            self.pending_sums.copy_(all_reduce_sum(sums.detach().to(torch.float64)))
            self.has_pending.fill_(True)
            self._pending = True
        self._last = {"train/fairness_loss": term.detach(), "_group_loss": group_loss.detach()}
        return term

    def after_optimizer_step(self) -> None:
        """The multipliers' ascent on the running sums updated with the last training batch, if pending."""
        if not self._pending:
            return
        self._pending = False
        self.has_pending.fill_(False)
        running = self.running_sums
        if self._ema_decay > 0 and int(self.num_updates) > 0:
            running.lerp_(self.pending_sums, 1.0 - self._ema_decay)
        else:
            running.copy_(self.pending_sums)
        self.num_updates.add_(1)
        if not (self._warm_done or self._ascending(int(self.num_updates) - 1)):
            return  # warm-up: the running sums follow the model, the multipliers stay at 0
        violation, valid = self._violations()
        step, keep = violation.to(self.integral.dtype), valid.to(self.integral.dtype)
        self.integral.add_(step, alpha=self._step_lr).clamp_(0.0, self.multiplier_max).mul_(keep)
        lam = self.multipliers
        pi_multipliers(self.integral, step, lam, self.dual_damping, self.multiplier_max, keep)
        if not math.isfinite(float(lam.sum())):
            raise FloatingPointError(f"the multipliers are not finite after the dual step ({lam.tolist()}); check `dual_lr`")

    def _violations(self) -> tuple[Tensor, Tensor]:
        count, total = self.running_sums
        valid = (count >= max(self.min_count, 1e-12)) & (count > 0)
        loss = total / count.clamp_min(1e-12)
        return torch.where(valid, loss - self.bound, torch.zeros_like(loss)), valid

    # ------------------------------------------------------------------ state and diagnostics
    def group_losses(self) -> Tensor:
        """Each group's mean loss in the running sums (NaN for a group without samples)."""
        count, total = self.running_sums
        return torch.where(count > 0, total / count.clamp_min(1e-12), torch.full_like(total, float("nan")))

    def hard_violations(self) -> Tensor:
        """``L_g - bound`` of the running sums per group (``<= 0``: satisfied; 0 for an unconstrained group)."""
        return self._violations()[0]

    @property
    def constraint_names(self) -> list[str]:
        """One inequality per group (``loss(group) <= bound``), named by its group in logged keys."""
        return list(self.group_names)

    def diagnostics(self) -> dict[str, Tensor | float]:
        out: dict[str, Tensor | float] = {}
        if "train/fairness_loss" in self._last:
            out["train/fairness_loss"] = float(self._last["train/fairness_loss"])
        violation = self.hard_violations()
        parts = [("fairness/violation_hard/", violation), ("fairness/multiplier/", self.multipliers)]
        if "_group_loss" in self._last:
            parts.insert(0, ("fairness/group_loss/", self._last["_group_loss"]))
        values = torch.cat([p.detach().double().reshape(-1) for _, p in parts]).tolist()
        for i, (prefix, _) in enumerate(parts):
            for g, name in enumerate(self.group_names):
                out[prefix + name] = values[i * self.num_groups + g]
        out["fairness/violation_hard_max"] = float(violation.max())
        out["fairness/multiplier_max"] = float(self.multipliers.max())
        return out

    def state_table(self):
        """One row per group (index: the group names) with its ``bound``, ``count`` and
        ``group_loss`` (running sums), ``violation`` (``group_loss - bound``; ``<= 0`` is
        satisfied), ``multiplier`` and ``active`` (enough samples to be constrained)."""
        import pandas as pd

        violation, valid = self._violations()
        frame = pd.DataFrame(
            {
                "bound": self.bound,
                "count": self.running_sums[0].detach().cpu().numpy(),
                "group_loss": self.group_losses().detach().cpu().numpy(),
                "violation": violation.detach().double().cpu().numpy(),
                "multiplier": self.multipliers.detach().double().cpu().numpy(),
                "active": valid.cpu().numpy(),
            },
            index=pd.Index(self.group_names, name="group"),
        )
        return frame


__all__ = ["BoundedGroupLossConstraint", "GROUP_LOSSES"]
