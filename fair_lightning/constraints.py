"""Rate constraints and their Lagrange multipliers (the proxy-Lagrangian of Cotter et al. 2019).

A constraint says that, for every group ``g``, ``|rate(g) - rate(all)| <= tolerance`` for the
rate(s) of a fairness definition (selection rate for demographic parity, TPR for equal
opportunity, TPR and FPR for equalized odds). Each group and side (``upper``: ``gap - tol <= 0``,
``lower``: ``-gap - tol <= 0``) is one inequality with its own multiplier.

The two players of the proxy-Lagrangian see different violations:

* the model (primal, descent) minimizes ``task + sum(lambda * soft_violation)``, with the
  violations computed from *soft* (sigmoid) group sums of the batch, so that they are
  differentiable;
* the multipliers (dual, projected ascent) move along the *hard* violations, computed from
  thresholded predictions accumulated in running group sums (an exponential moving average over
  batches, all-reduced across DDP ranks first, so that every rank holds the same sums and the same
  multipliers). Ascent on the hard violation is what makes the constraint hold for the deployed,
  thresholded classifier.

Plain gradient ascent integrates the violation, so the multipliers lag behind and the two players
oscillate around the constraint (the classic behaviour of gradient descent-ascent). With
``dual_damping = kappa > 0`` the multipliers the model sees get a proportional term,
``lambda = clip(integral + kappa * violation, 0, max)``: a PI controller on the violation
(Stooke et al. 2020; Sohrabi et al. 2024, "nuPI"), which reacts as soon as a violation changes
sign and damps the oscillation. ``kappa = 0`` is plain projected ascent.

Both violations come from :func:`fair_lightning.losses.rate_gaps` on
:class:`~fair_lightning.functional.GroupSums`: the same core as the losses and metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fair_lightning.functional import GroupSums, ema_update
from fair_lightning.losses import CONDITIONS, check_definition, rate_gaps

_RATE_NAMES = {None: "selection_rate", 1: "true_positive_rate", 0: "false_positive_rate"}


@dataclass(frozen=True)
class FairnessConstraint:
    """``|rate(g) - rate(all)| <= tolerance`` for every group, for one fairness definition.

    Args:
        definition: ``"demographic_parity"``, ``"equal_opportunity"`` or ``"equalized_odds"``.
        tolerance: allowed gap, ``>= 0``.
    """

    definition: str
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        check_definition(self.definition, "constraints")
        if not self.tolerance >= 0:
            raise ValueError(f"`tolerance` must be >= 0, got {self.tolerance}")

    @property
    def conditions(self) -> tuple[int | None, ...]:
        return CONDITIONS[self.definition]


def parse_constraints(constraints: Any, tolerance: float = 0.01) -> tuple[FairnessConstraint, ...]:
    """Accept a name, a ``FairnessConstraint``, a mapping ``{definition, tolerance}`` or a list of them."""
    if isinstance(constraints, (str, FairnessConstraint, Mapping)):
        constraints = [constraints]
    if not isinstance(constraints, Iterable):
        raise ValueError(f"`constraints` must be a name, a FairnessConstraint or a list of them, got {constraints!r}")
    out = []
    for c in constraints:
        if isinstance(c, FairnessConstraint):
            out.append(c)
        elif isinstance(c, str):
            out.append(FairnessConstraint(c, tolerance))
        elif isinstance(c, Mapping):
            out.append(FairnessConstraint(c["definition"], c.get("tolerance", tolerance)))
        else:
            raise ValueError(f"`constraints` entries must be names, mappings or FairnessConstraint, got {c!r}")
    if not out:
        raise ValueError("`constraints` must name at least one constraint, got an empty list")
    return tuple(out)


def constraint_names(constraints: Sequence[FairnessConstraint], group_names: Sequence[str]) -> list[str]:
    """Stable names of the inequalities, ``"{definition}/{rate}/{group}/{upper|lower}"``, in multiplier order."""
    return [
        f"{c.definition}/{_RATE_NAMES[cond]}/{group}/{side}"
        for c in constraints
        for cond in c.conditions
        for group in group_names
        for side in ("upper", "lower")
    ]


def constraint_violations(
    sums: GroupSums, constraints: Sequence[FairnessConstraint], min_count: float = 1
) -> tuple[Tensor, Tensor]:
    """Violations ``(K,)`` (``<= 0`` means satisfied) and the mask of those that are defined.

    Order matches :func:`constraint_names`. Undefined ones (a group absent, or below ``min_count``)
    are 0: they neither push the model nor move a multiplier.
    """
    values, valids = [], []
    for c in constraints:
        gaps = rate_gaps(sums, c.conditions, min_count)
        # (C, G, 2): upper side gap - tol, lower side -gap - tol; 0 where undefined
        v = (gaps.gap[..., None] * _SIDES.to(gaps.gap) - c.tolerance) * gaps.valid[..., None]
        values.append(v.reshape(-1))
        valids.append(gaps.valid[..., None].expand_as(v).reshape(-1))
    if len(values) == 1:
        return values[0], valids[0]
    return torch.cat(values), torch.cat(valids)


_SIDES = torch.tensor([1.0, -1.0])


class LagrangeMultipliers(nn.Module):
    """Multipliers of a set of rate constraints, with the running hard group sums behind their update.

    State (all in ``state_dict``): ``multipliers`` ``(K,)``, ``running_sums`` ``(4, G)`` and
    ``num_updates``. The dual optimizer's state is exposed through :meth:`dual_state_dict`.

    Args:
        constraints: the constraints (see :func:`parse_constraints`).
        num_groups: number of groups.
        dual_lr: learning rate of the ascent.
        multiplier_max: upper bound of each multiplier (projection onto ``[0, multiplier_max]``).
        ema_decay: decay of the running group sums, in ``[0, 1)``; 0 uses the batch alone.
        min_count: groups with fewer (running) samples are not constrained.
        dual_optimizer: ``params -> optimizer`` (e.g. SGD with momentum) for the ascent; default
            plain SGD with ``dual_lr``, done in place.
        dual_damping: proportional gain ``kappa >= 0`` of the PI update (0: plain ascent).
    """

    def __init__(
        self,
        constraints: Sequence[FairnessConstraint],
        num_groups: int,
        *,
        dual_lr: float = 0.05,
        multiplier_max: float = 100.0,
        ema_decay: float = 0.9,
        min_count: float = 1,
        dual_optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer] | None = None,
        dual_damping: float = 0.0,
    ) -> None:
        super().__init__()
        if not dual_lr > 0:
            raise ValueError(f"`dual_lr` must be > 0, got {dual_lr}")
        if not multiplier_max > 0:
            raise ValueError(f"`multiplier_max` must be > 0, got {multiplier_max}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay}")
        if not dual_damping >= 0:
            raise ValueError(f"`dual_damping` must be >= 0, got {dual_damping}")
        self.dual_damping = dual_damping
        self.constraints = tuple(constraints)
        self.num_groups = num_groups
        self.multiplier_max, self.ema_decay, self.min_count = multiplier_max, ema_decay, min_count
        size = sum(2 * len(c.conditions) * num_groups for c in self.constraints)
        # buffers, not Parameters: DDP must not all-reduce (or expect) a gradient for them; every
        # rank computes the same ascent step from the same all-reduced sums.
        # `integral` is what the dual optimizer ascends; `multipliers` is what the model sees
        # (equal to it without damping)
        self.register_buffer("integral", torch.zeros(size))
        self.register_buffer("multipliers", torch.zeros(size))
        self.register_buffer("running_sums", torch.zeros(4, num_groups, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.dual_lr = dual_lr
        # default: plain projected SGD ascent, done in place (a torch.optim.SGD without momentum
        # does the same arithmetic with several times the per-step overhead, on every step)
        self.dual_optimizer = dual_optimizer([self.integral]) if dual_optimizer is not None else None

    def soft_violations(self, soft_sums: GroupSums) -> Tensor:
        """Differentiable violations of the batch (for the primal step)."""
        return constraint_violations(soft_sums, self.constraints, self.min_count)[0]

    def lagrangian_term(self, soft_sums: GroupSums) -> tuple[Tensor, Tensor]:
        """``sum(lambda * soft_violation)`` (multipliers held fixed) and the soft violations."""
        soft = self.soft_violations(soft_sums)
        return (self.multipliers.detach().to(soft.dtype) * soft).sum(), soft

    @torch.no_grad()
    def dual_step(self, batch_hard_sums: GroupSums) -> Tensor:
        """Update the running sums with a batch (already all-reduced) and take one ascent step.

        Returns the hard violations the step used.
        """
        stacked = batch_hard_sums.stack().to(self.running_sums)
        decay = self.ema_decay if int(self.num_updates) > 0 else 0.0
        self.running_sums.copy_(ema_update(self.running_sums, stacked, decay))
        self.num_updates += 1
        hard, _ = constraint_violations(GroupSums.from_stacked(self.running_sums), self.constraints, self.min_count)
        if self.dual_optimizer is None:
            self.integral.add_(hard.to(self.integral.dtype), alpha=self.dual_lr)
        else:  # ascent on the violation = descent on its negative
            self.integral.grad = -hard.to(self.integral.dtype)
            self.dual_optimizer.step()
            self.integral.grad = None
        self.integral.clamp_(0.0, self.multiplier_max)
        if self.dual_damping:
            torch.add(self.integral, hard.to(self.integral.dtype), alpha=self.dual_damping, out=self.multipliers)
            self.multipliers.clamp_(0.0, self.multiplier_max)
        else:
            self.multipliers.copy_(self.integral)
        return hard

    def hard_violations(self) -> Tensor:
        """Hard violations of the current running sums."""
        return constraint_violations(GroupSums.from_stacked(self.running_sums), self.constraints, self.min_count)[0]

    def dual_state_dict(self) -> dict:
        """State of a custom dual optimizer (plain SGD has none)."""
        return self.dual_optimizer.state_dict() if self.dual_optimizer is not None else {}

    def load_dual_state_dict(self, state: dict) -> None:
        if self.dual_optimizer is not None and state:
            self.dual_optimizer.load_state_dict(state)


__all__ = [
    "FairnessConstraint",
    "LagrangeMultipliers",
    "constraint_names",
    "constraint_violations",
    "parse_constraints",
]
