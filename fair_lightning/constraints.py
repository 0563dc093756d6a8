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

Both violations come from :func:`fair_lightning.losses.gaps_from_ratios` on
:class:`~fair_lightning.functional.GroupSums`: the same core as the losses and metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fair_lightning.functional import GroupSums
from fair_lightning.losses import CONDITIONS, _coefficients, check_definition, gaps_from_ratios

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
        f"{c.definition}/{_RATE_NAMES[cond]}/{group}/{side}"
        for c in constraints
        for cond in c.conditions
        for group in group_names
        for side in ("upper", "lower")
    ]


def constraint_violations(
    sums: GroupSums | Tensor, constraints: Sequence[FairnessConstraint], min_count: float = 1
) -> tuple[Tensor, Tensor]:
    """Violations ``(K,)`` (``<= 0`` means satisfied) and the mask of those that are defined.

    ``sums`` is a :class:`GroupSums` or its stacked ``(4, G)`` form. Order matches
    :func:`constraint_names`. Undefined ones (a group absent, or below ``min_count``) are 0:
    they neither push the model nor move a multiplier.
    """
    stacked = sums if isinstance(sums, Tensor) else sums.stack()
    values, valids = [], []
    for v, valid in _violation_blocks(stacked, constraints, min_count):
        values.append(v.reshape(-1))
        valids.append(valid.expand_as(v).reshape(-1))
    if len(values) == 1:
        return values[0], valids[0]
    return torch.cat(values), torch.cat(valids)


def _violation_blocks(stacked: Tensor, constraints: Sequence[FairnessConstraint], min_count: float):
    """Per constraint: violations ``(C, G, 2)`` (upper ``gap - tol``, lower ``-gap - tol``; 0 where
    undefined) and the validity mask ``(C, G, 1)``."""
    for c in constraints:
        num, den = _coefficients(c.conditions, stacked) @ stacked
        gaps = gaps_from_ratios(num, den, min_count)
        valid = gaps.valid[..., None]
        yield (gaps.gap[..., None] * _SIDES.to(gaps.gap) - c.tolerance) * valid, valid


def _violation_values(stacked: Tensor, constraints: Sequence[FairnessConstraint], min_count: float) -> Tensor:
    """The values of :func:`constraint_violations` alone (the dual step's hot path)."""
    values = [v.reshape(-1) for v, _ in _violation_blocks(stacked, constraints, min_count)]
    return values[0] if len(values) == 1 else torch.cat(values)


_SIDES = torch.tensor([1.0, -1.0])
# denominators of the selection rate (count), TPR (label) and FPR (count - label) over [count, label]
_DENOMINATORS = {None: (1.0, 0.0), 1: (0.0, 1.0), 0: (1.0, -1.0)}


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
        self._primal_cache: dict = {}
        self.dual_lr = dual_lr
        # default: plain projected SGD ascent, done in place (a torch.optim.SGD without momentum
        # does the same arithmetic with several times the per-step overhead, on every step)
        self.dual_optimizer = dual_optimizer([self.integral]) if dual_optimizer is not None else None

    def soft_violations(self, soft_sums: GroupSums) -> Tensor:
        """Differentiable violations of the batch, from soft group sums."""
        return constraint_violations(soft_sums, self.constraints, self.min_count)[0]

    def lagrangian_term(self, soft_preds: Tensor, target: Tensor, groups: Tensor, counts: Tensor) -> Tensor:
        """``sum(lambda * soft_violation)`` of the batch, with the multipliers held fixed.

        Every constrained rate is linear-fractional in the soft predictions ``p``: its numerator
        is a sum of ``p`` over a (group, label) cell and its denominator a count. With the
        multipliers fixed the whole term is therefore linear in ``p``,
        ``sum_k lambda_k v_k = w @ p - const``, and the per-sample weights ``w`` follow from the
        multipliers and the batch counts alone. Computing ``w`` without autograd gives exactly
        the value and gradient of the explicit sum (tested against :meth:`soft_violations`),
        with a two-node backward instead of one through every group statistic.

        Args:
            soft_preds: ``(N,)`` soft predictions (sigmoid of the logits), differentiable.
            target: ``(N,)`` binary labels.
            groups: ``(N,)`` group ids.
            counts: ``(2, G)`` batch ``[count, label]`` per group.
        """
        # no autograd context: every input below (counts, multipliers, labels) carries no gradient;
        # few tensor calls on purpose, this runs on every training step
        den_coef, tolerance, sides = self._primal_constants(counts)
        den = den_coef @ counts.to(den_coef.dtype)  # (C, G) denominators of the constrained rates
        valid = den >= (self.min_count if self.min_count > 0 else torch.finfo(den.dtype).tiny)
        lam = self.multipliers.to(den.dtype).view(den.shape[0], den.shape[1], 2)
        lam_net = (lam @ sides) * valid  # upper side minus lower side, (C, G)
        tiny = torch.finfo(den.dtype).tiny
        alpha = lam_net / den.clamp_min(tiny)  # d/dp of the group rate's share
        beta = lam_net.sum(1, keepdim=True) / den.sum(1, keepdim=True).clamp_min(tiny)  # the overall rate's
        # sample i counts in rate c's denominator with weight a_c + b_c * y_i (rows of den_coef), so
        # its weight is P[g_i] + y_i * Q[g_i] with [P, Q] = (alpha - beta)^T @ den_coef: (G, 2)
        table = ((alpha - beta).T @ den_coef).index_select(0, groups)  # (N, 2)
        weights = torch.addcmul(table[:, 0], target.to(table.dtype), table[:, 1])
        const = (lam.sum(-1) * valid).mul_(tolerance).sum()
        return torch.dot(weights.to(soft_preds.dtype), soft_preds) - const.to(soft_preds.dtype)

    def _primal_constants(self, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rows over ``[count, label]`` giving each constrained rate's denominator, its tolerance,
        and the signs of the two sides."""
        key = (counts.dtype, counts.device)
        cached = self._primal_cache.get(key)
        if cached is None:
            rows, tols = [], []
            for c in self.constraints:
                for cond in c.conditions:
                    rows.append(_DENOMINATORS[cond])
                    tols.append(c.tolerance)
            dtype = counts.dtype if counts.is_floating_point() else torch.float32
            cached = (
                torch.tensor(rows, dtype=dtype, device=counts.device),
                torch.tensor(tols, dtype=dtype, device=counts.device)[:, None],
                torch.tensor([1.0, -1.0], dtype=dtype, device=counts.device),
            )
            self._primal_cache[key] = cached
        return cached

    @torch.no_grad()
    def dual_step(self, batch_hard_sums: GroupSums | Tensor) -> Tensor:
        """Update the running sums with a batch (already all-reduced; ``GroupSums`` or stacked
        ``(4, G)``) and take one ascent step.

        Returns the hard violations the step used.
        """
        stacked = (batch_hard_sums if isinstance(batch_hard_sums, Tensor) else batch_hard_sums.stack()).to(self.running_sums)
        if int(self.num_updates) > 0 and self.ema_decay > 0:
            self.running_sums.mul_(self.ema_decay).add_(stacked, alpha=1.0 - self.ema_decay)
        else:
            self.running_sums.copy_(stacked)
        self.num_updates += 1
        hard = _violation_values(self.running_sums, self.constraints, self.min_count)
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
    "constraint_names",
    "constraint_violations",
    "parse_constraints",
]
