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

Both violations are :func:`constraint_violations` of
:class:`~fair_lightning.functional.GroupSums` (the same core as the losses and metrics; hard
sums from :func:`~fair_lightning.functional.confusion_counts`), with each rate's numerator and
denominator taken from the losses' rate coefficients. Because every step runs them, the
arithmetic is laid out once per set of constraints as a few constant matrices (a private
``_StepPlan``), so that a step costs a handful of tensor calls whatever the number of
constraints and groups; the primal term uses the same plan (:meth:`LagrangeMultipliers.lagrangian_term`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fair_lightning.functional import GroupSums, label_cells
from fair_lightning.losses import _RATE_COEFFICIENTS, CONDITIONS, check_definition

#: the name of each constrained rate in logged keys, by label condition
RATE_NAMES = {None: "selection_rate", 1: "true_positive_rate", 0: "false_positive_rate"}


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
        """The label conditions of the constrained rates (``None``: selection rate, 1: TPR, 0: FPR)."""
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
        f"{c.definition}/{RATE_NAMES[cond]}/{group}/{side}"
        for c in constraints
        for cond in c.conditions
        for group in group_names
        for side in ("upper", "lower")
    ]


def constraint_violations(
    sums: GroupSums | Tensor, constraints: Sequence[FairnessConstraint], min_count: float = 1
) -> tuple[Tensor, Tensor]:
    """Violations ``(K,)`` (``<= 0`` means satisfied) and the mask of those that are defined.

    ``sums`` is a :class:`GroupSums` or its stacked ``(4, G)`` form (hard or soft; differentiable
    in soft sums). Order matches :func:`constraint_names`. Undefined ones (a group absent, or
    with fewer than ``min_count`` samples behind the rate) are 0: they neither push the model nor
    move a multiplier. The overall rate counts every group, masked or not.
    """
    stacked = sums if isinstance(sums, Tensor) else sums.stack()
    plan = _step_plan(tuple(constraints), stacked.shape[-1], min_count, stacked.dtype, stacked.device)
    return _violations(plan, stacked.reshape(-1))


def _violations(plan: _StepPlan, flat_sums: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`constraint_violations` of flattened ``(4 * G,)`` stacked sums, in five tensor calls."""
    num, den = torch.mv(plan.rates, flat_sums).view(2, -1)
    rates = num / den.clamp_min(torch.finfo(den.dtype).tiny)  # empty groups: 0 / tiny = 0
    valid = torch.mv(plan.denominators, flat_sums) >= plan.min_count
    return torch.addmv(plan.neg_tolerance, plan.gaps, rates).mul_(valid), valid


class _StepPlan(NamedTuple):
    """Constant matrices that turn the violations of a set of constraints, and the per-step
    work of :class:`LagrangeMultipliers`, into a few tensor calls (tested against plain per-group
    rates and the explicit soft sums).

    ``C`` rows are the constrained rates of all constraints, in multiplier order;
    ``K = 2 * C * G`` inequalities (upper and lower side of each rate and group).
    """

    confusion_to_sums: Tensor  # (4G, 4G): flattened confusion counts [g, y, yhat] -> stacked sums (4, G)
    rates: Tensor  # (2 * C * (G + 1), 4G): stacked sums -> [numerator, denominator] of each rate, per group + overall
    gaps: Tensor  # (K, C * (G + 1)): rates -> signed gaps, side by side
    neg_tolerance: Tensor  # (K,)
    denominators: Tensor  # (K, 4G): stacked sums -> the denominator of each inequality's group rate
    label_denominators: Tensor  # (C, 2): a group's [negatives, positives] -> denominator of each rate
    confusion_denominators: Tensor  # (C, 4): a group's confusion counts [y, yhat] -> denominator of each rate
    net_and_tolerance: Tensor  # (C, 2, 2): multipliers [upper, lower] -> [upper - lower, tol * (upper + lower)]
    min_count: float


@functools.lru_cache(maxsize=64)
def _step_plan(
    constraints: tuple[FairnessConstraint, ...], num_groups: int, min_count: float, dtype: torch.dtype, device
) -> _StepPlan:
    """The matrices of a set of constraints (cached: built once per constraints, groups, dtype
    and device)."""
    G = num_groups
    conditions = [cond for c in constraints for cond in c.conditions]
    tolerances = [c.tolerance for c in constraints for _ in c.conditions]
    C = len(conditions)
    coef = torch.tensor([[_RATE_COEFFICIENTS[cond][part] for cond in conditions] for part in (0, 1)], dtype=dtype)
    # stacked sums (4, G) -> per rate, group and "all" (index G): extend the groups by their total
    extend = torch.cat((torch.eye(G, dtype=dtype), torch.ones(G, 1, dtype=dtype)), 1)  # (G, G + 1)
    rates = torch.einsum("acf,hg->acgfh", coef, extend).reshape(2 * C * (G + 1), 4 * G)
    # gap of (rate c, group g) = rate[c, g] - rate[c, G]; the upper side is +gap, the lower -gap
    gaps = torch.zeros(C, G, 2, C, G + 1, dtype=dtype)
    valid = torch.zeros(C, G, 2, C, G + 1, dtype=dtype)
    for c in range(C):
        for g in range(G):
            for side, sign in enumerate((1.0, -1.0)):
                gaps[c, g, side, c, g], gaps[c, g, side, c, G] = sign, -sign
                valid[c, g, side, c, g] = 1.0
    eye = torch.eye(4 * G, dtype=dtype).view(4 * G, G, 2, 2)
    confusion_to_sums = GroupSums.from_confusion(eye).stack().permute(0, 2, 1).reshape(4 * G, 4 * G)
    # denominators over [count, label] -> over [negatives, positives]: count = neg + pos, label = pos
    den_rows = coef[1][:, :2]
    label_denominators = torch.stack((den_rows[:, 0], den_rows[:, 0] + den_rows[:, 1]), 1)
    net_and_tolerance = torch.tensor([[[1.0, t], [-1.0, t]] for t in tolerances], dtype=dtype)
    plan = _StepPlan(
        confusion_to_sums, rates, gaps.reshape(2 * C * G, -1),
        -torch.tensor(tolerances, dtype=dtype).repeat_interleave(2 * G),
        valid.reshape(2 * C * G, -1) @ rates[C * (G + 1):],
        label_denominators, label_denominators.repeat_interleave(2, 1), net_and_tolerance,
        min_count if min_count > 0 else torch.finfo(dtype).tiny,
    )
    return _StepPlan(*(t.to(device) if isinstance(t, Tensor) else t for t in plan))


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
        """Differentiable violations of the batch, from soft group sums."""
        return constraint_violations(soft_sums, self.constraints, self.min_count)[0]

    def lagrangian_term(
        self, soft_preds: Tensor, target: Tensor, groups: Tensor, *, cells: Tensor | None = None,
        counts: Tensor | None = None,
    ) -> Tensor:
        """``sum(lambda * soft_violation)`` of the batch, with the multipliers held fixed.

        Every constrained rate is linear-fractional in the soft predictions ``p``: its numerator
        is a sum of ``p`` over a (group, label) cell and its denominator a count. With the
        multipliers fixed the whole term is therefore linear in ``p``,
        ``sum_k lambda_k v_k = w @ p - const``, and the per-sample weights ``w`` follow from the
        multipliers and the batch's cell counts alone: one weight per (group, label) cell.
        Computing them without autograd gives exactly the value and gradient of the explicit sum
        (tested against :meth:`soft_violations`), with a two-node backward instead of one
        through every group statistic.

        Args:
            soft_preds: ``(N,)`` soft predictions (sigmoid of the logits), differentiable.
            target: ``(N,)`` binary labels.
            groups: ``(N,)`` group ids.
            cells: the batch's :func:`~fair_lightning.functional.label_cells`, if already computed.
            counts: the batch's :func:`~fair_lightning.functional.confusion_counts` ``(G, 2, 2)``
                (any predictions: only the label counts are used), if already computed.
        """
        G = self.num_groups
        if cells is None:
            cells = label_cells(target, groups)
        # no autograd context: every input below (counts, multipliers, labels) carries no gradient;
        # few tensor calls on purpose, this runs on every training step
        # in the predictions' precision (float32 at least)
        dtype = soft_preds.dtype if soft_preds.dtype in (torch.float32, torch.float64) else torch.float32
        lam = self.multipliers if self.multipliers.dtype == dtype else self.multipliers.to(dtype)
        plan = self._plan(dtype, lam.device)
        if counts is None:
            counts, rows = torch.bincount(cells, minlength=2 * G).view(G, 2), plan.label_denominators
        else:
            counts, rows = counts.view(G, 4), plan.confusion_denominators
        counts = counts if counts.dtype == dtype else counts.to(dtype)
        den = rows @ counts.T  # (C, G) denominators of the constrained rates
        lam = lam.view(den.shape[0], G, 2) @ plan.net_and_tolerance
        net, const = lam.mul_((den >= plan.min_count).unsqueeze(-1)).unbind(-1)  # upper - lower, tol * (upper + lower)
        tiny = torch.finfo(den.dtype).tiny
        alpha = net / den.clamp_min(tiny)  # d/dp of each group rate's share
        beta = net.sum(1, keepdim=True) / den.sum(1, keepdim=True).clamp_min(tiny)  # of the overall rate's
        # a sample of cell (g, y) is in rate c's denominators iff label_denominators[c, y] = 1
        weights = ((alpha - beta).T @ plan.label_denominators).view(-1).index_select(0, cells)
        const = const.sum()
        if soft_preds.dtype != weights.dtype:
            weights, const = weights.to(soft_preds.dtype), const.to(soft_preds.dtype)
        return torch.dot(weights, soft_preds) - const

    def _plan(self, dtype: torch.dtype, device: torch.device) -> _StepPlan:
        return _step_plan(self.constraints, self.num_groups, self.min_count, dtype, device)

    def dual_step(self, batch_hard: GroupSums | Tensor) -> Tensor:
        """Update the running sums with a batch of hard predictions (already all-reduced) and take
        one ascent step.

        Args:
            batch_hard: the batch's sums as ``GroupSums`` or stacked ``(4, G)``, or its
                :func:`~fair_lightning.functional.confusion_counts` ``(G, 2, 2)``.

        Returns the hard violations the step used.
        """
        # every tensor below is a buffer or detached: no autograd graph (and no no_grad context
        # to enter, on every step)
        running = self.running_sums
        plan = self._plan(running.dtype, running.device)
        batch = (batch_hard if isinstance(batch_hard, Tensor) else batch_hard.stack()).detach()
        batch = batch if batch.dtype == running.dtype else batch.to(running.dtype)
        flat = torch.mv(plan.confusion_to_sums, batch.reshape(-1)) if batch.dim() == 3 else batch.reshape(-1)
        if self.ema_decay > 0 and int(self.num_updates) > 0:
            running.view(-1).lerp_(flat, 1.0 - self.ema_decay)
        else:
            running.view(-1).copy_(flat)
        self.num_updates.add_(1)
        hard, _ = _violations(plan, running.view(-1))
        integral, step = self.integral, hard.to(self.integral.dtype)
        if self.dual_optimizer is None:
            integral.add_(step, alpha=self.dual_lr)
        else:  # ascent on the violation = descent on its negative
            integral.grad = -step
            self.dual_optimizer.step()
            integral.grad = None
        integral.clamp_(0.0, self.multiplier_max)
        if self.dual_damping:
            torch.add(integral, step, alpha=self.dual_damping, out=self.multipliers).clamp_(0.0, self.multiplier_max)
        else:
            self.multipliers.copy_(integral)
        return hard

    def hard_violations(self) -> Tensor:
        """Hard violations of the current running sums."""
        return constraint_violations(self.running_sums, self.constraints, self.min_count)[0]

    def dual_state_dict(self) -> dict:
        """State of a custom dual optimizer (plain SGD has none)."""
        return self.dual_optimizer.state_dict() if self.dual_optimizer is not None else {}

    def load_dual_state_dict(self, state: dict) -> None:
        """Restore a custom dual optimizer's state (no-op for the default plain SGD)."""
        if self.dual_optimizer is not None and state:
            self.dual_optimizer.load_state_dict(state)


__all__ = [
    "FairnessConstraint",
    "LagrangeMultipliers",
    "RATE_NAMES",
    "constraint_names",
    "constraint_violations",
    "parse_constraints",
]
