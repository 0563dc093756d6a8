"""Rate constraints and their Lagrange multipliers (the proxy-Lagrangian of Cotter et al. 2019).

A constraint bounds the disparity of the rate(s) of a fairness definition (selection rate for
demographic parity, TPR for equal opportunity, TPR and FPR for equalized odds, accuracy for
accuracy parity; the one rate table, :mod:`fair_lightning.functional._rates`), in one of two
forms:

* ``bound="difference"`` (the default, what a reader of "tolerance 0.02" expects):
  ``max_g rate(g) - min_g rate(g) <= tolerance``, as one inequality
  ``rate(g) - rate(h) - tolerance <= 0`` per ordered pair of groups (``G * (G - 1)``);
* ``bound="gap"``: ``|rate(g) - rate(all)| <= tolerance`` for every group, two inequalities per
  group (``upper``: ``gap - tol <= 0``, ``lower``: ``-gap - tol <= 0``); the max - min
  difference may then reach ``2 * tolerance``.

A constraint may also be stated over a coarser partition of the groups (``partition``: the
coarse group of each group, ``-1`` to leave a group out), so that several constraints cover an
attribute's marginal groups and their intersections at once, each with its own tolerance
(:func:`hierarchical_constraints`). The overall rate of a constraint is its member groups' total.
Each inequality has its own multiplier.

K classes: the one-vs-rest sums of class ``c`` are a binary :class:`~fair_lightning.functional.GroupSums`
over the groups, so the sums of all classes are binary sums over ``K * G`` *fine* groups
(``c * G + g``, label ``[y == c]``, prediction the softmax probability of ``c`` or ``[argmax == c]``).
:func:`class_constraints` turns each constraint into one per class whose partition covers only
that class's fine groups; everything below (violations, the dual step, the linear primal term)
then works unchanged.

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
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fair_lightning.functional import GroupSums, label_cells
from fair_lightning.functional._checks import FLOAT32_MAX
from fair_lightning.functional._rates import DEFINITIONS, check_definition, rate_coefficients

BOUNDS = ("difference", "gap")
_CONSTRAINT_KEYS = ("definition", "tolerance", "bound", "partition", "partition_names", "name")


@dataclass(frozen=True)
class FairnessConstraint:
    """A bound on the disparity of one fairness definition's rates across groups.

    Args:
        definition: ``"demographic_parity"``, ``"equal_opportunity"``, ``"equalized_odds"`` or
            ``"accuracy_parity"``.
        tolerance: allowed disparity, in ``[0, 1)`` (a rate difference of 1 or more is vacuous).
        bound: ``"difference"`` (``max - min <= tolerance``, the default) or ``"gap"``
            (``|rate(g) - rate(all)| <= tolerance`` for every group).
        partition: optional coarse group of each group (length ``num_groups``): the constraint
            then holds between the coarse groups (e.g. an attribute's marginal groups when the
            groups are intersections); ``-1`` leaves a group out of the constraint (its rate and
            its overall rate). ``None``: the groups themselves.
        partition_names: names of the coarse groups (default ``part_0``, ...).
        name: a prefix for the logged names of the inequalities (default: the definition).
    """

    definition: str
    tolerance: float = 0.02
    bound: str = "difference"
    partition: tuple[int, ...] | None = None
    partition_names: tuple[str, ...] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        check_definition(self.definition, "constraints")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ValueError(
                f"`tolerance` must be a number in [0, 1) (a rate difference of 1 or more bounds nothing), got {tol!r}"
            )
        if self.bound not in BOUNDS:
            raise ValueError(f"`bound` must be one of {list(BOUNDS)}, got {self.bound!r}")
        if self.partition is not None:
            part = tuple(int(p) for p in self.partition)
            if not part or min(part) < -1 or max(part) < 0:
                raise ValueError(
                    "`partition` must be coarse group ids >= 0 (or -1 to leave a group out), one per group, with at "
                    f"least one member, got {self.partition!r}"
                )
            object.__setattr__(self, "partition", part)
            n = max(part) + 1
            if self.partition_names is not None and len(self.partition_names) != n:
                raise ValueError(f"`partition_names` must have {n} entries (one per coarse group), got {len(self.partition_names)}")
        if self.partition_names is not None:
            object.__setattr__(self, "partition_names", tuple(str(n) for n in self.partition_names))

    @property
    def rates(self) -> tuple[str, ...]:
        """The constrained rates (names of the rate table)."""
        return DEFINITIONS[self.definition]

    @property
    def label(self) -> str:
        """The prefix of the inequalities' logged names."""
        return self.name or self.definition

    def num_parts(self, num_groups: int) -> int:
        """Number of groups the constraint compares (coarse groups with a partition)."""
        return num_groups if self.partition is None else max(self.partition) + 1

    def part_names(self, group_names: Sequence[str]) -> list[str]:
        """Names of the compared groups."""
        if self.partition is None:
            return list(group_names)
        if self.partition_names is not None:
            return list(self.partition_names)
        return [f"part_{k}" for k in range(max(self.partition) + 1)]

    def matrix(self, num_groups: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``(num_parts, num_groups)`` 0/1 matrix summing groups into the compared groups."""
        if self.partition is None:
            return torch.eye(num_groups, dtype=dtype)
        if len(self.partition) != num_groups:
            raise ValueError(
                f"`partition` of constraint {self.label!r} must have one entry per group ({num_groups}), "
                f"got {len(self.partition)}"
            )
        out = torch.zeros(max(self.partition) + 1, num_groups, dtype=dtype)
        members = [g for g, p in enumerate(self.partition) if p >= 0]
        out[[self.partition[g] for g in members], members] = 1.0
        return out

    def inequalities(self, num_groups: int) -> list[tuple[int, int | None, str]]:
        """``(g, h, side)`` per inequality of one rate: ``rate(g) - rate(h) <= tol`` (``h`` None: the
        overall rate, with ``side`` ``"upper"`` or ``"lower"``)."""
        n = self.num_parts(num_groups)
        if self.bound == "gap":
            return [(g, None, side) for g in range(n) for side in ("upper", "lower")]
        return [(g, h, "pair") for g in range(n) for h in range(n) if g != h]


def parse_constraints(constraints: Any, tolerance: float = 0.02) -> tuple[FairnessConstraint, ...]:
    """Accept a name, a ``FairnessConstraint``, a mapping of its arguments, or a list of them.

    A mapping takes the keys of :class:`FairnessConstraint` (``definition``, ``tolerance``,
    ``bound``, ``partition``, ``partition_names``, ``name``); an unknown key is an error, never
    dropped.
    """
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
            unknown = sorted(set(c) - set(_CONSTRAINT_KEYS))
            if unknown:
                raise ValueError(
                    f"`constraints` mapping has unknown key(s) {unknown}; expected keys {list(_CONSTRAINT_KEYS)}, got {dict(c)!r}"
                )
            if "definition" not in c:
                raise ValueError(f"`constraints` mapping needs a 'definition' key, got {dict(c)!r}")
            kwargs = {k: v for k, v in c.items()}
            kwargs.setdefault("tolerance", tolerance)
            for key in ("partition", "partition_names"):
                if kwargs.get(key) is not None:
                    kwargs[key] = tuple(kwargs[key])
            out.append(FairnessConstraint(**kwargs))
        else:
            raise ValueError(f"`constraints` entries must be names, mappings or FairnessConstraint, got {c!r}")
    if not out:
        raise ValueError("`constraints` must name at least one constraint, got an empty list")
    return tuple(out)


def hierarchical_constraints(
    spec: Any, tolerances: Mapping[str, float], definition: str = "demographic_parity", bound: str = "difference"
) -> tuple[FairnessConstraint, ...]:
    """Constraints over the marginal groups of each attribute and over their intersections.

    Args:
        spec: a :class:`~fair_lightning.groups.GroupSpec` whose groups are the intersections.
        tolerances: ``{attribute: tolerance}`` for marginal constraints and, under the key
            ``"intersection"``, the (usually looser) tolerance between the intersections.
        definition: the fairness definition of every constraint.
        bound: ``"difference"`` or ``"gap"``.

    Example: ``hierarchical_constraints(spec, {"sex": 0.02, "race": 0.05, "intersection": 0.1})``.
    """
    unknown = sorted(set(tolerances) - {*spec.attribute_names, "intersection"})
    if unknown:
        raise ValueError(
            f"`tolerances` keys must be attributes of the GroupSpec {list(spec.attribute_names)} or 'intersection', got {unknown}"
        )
    ids = torch.arange(spec.num_groups)
    out = []
    for attribute in spec.attribute_names:
        if attribute in tolerances:
            partition = tuple(spec.marginal(ids, attribute).tolist())
            names = [f"{attribute}={level}" for level in spec.attributes[attribute]]
            out.append(FairnessConstraint(definition, tolerances[attribute], bound, partition, tuple(names), f"{definition}[{attribute}]"))
    if "intersection" in tolerances:
        out.append(FairnessConstraint(definition, tolerances["intersection"], bound, None, None, f"{definition}[intersection]"))
    if not out:
        raise ValueError("`tolerances` must name at least one attribute or 'intersection'")
    return tuple(out)


def class_constraints(
    constraints: Sequence[FairnessConstraint],
    num_groups: int,
    num_classes: int,
    group_names: Sequence[str],
    class_names: Sequence[str],
) -> tuple[FairnessConstraint, ...]:
    """One constraint per class and given constraint, over ``num_classes * num_groups`` fine groups.

    Fine group ``c * G + g`` is group ``g`` of class ``c``'s one-vs-rest problem. The constraint for
    class ``c`` keeps the given one's partition on class ``c``'s fine groups and leaves every other
    fine group out (``-1``); its name is ``"{label}[{class}]"`` (e.g.
    ``demographic_parity[class_3]/selection_rate/group_0-group_1``).
    """
    out = []
    for con in constraints:
        base = list(range(num_groups)) if con.partition is None else list(con.partition)
        if len(base) != num_groups:
            raise ValueError(
                f"`partition` of constraint {con.label!r} must have one entry per group ({num_groups}), got {len(base)}"
            )
        names = tuple(con.part_names(group_names))
        for c, cname in enumerate(class_names):
            partition = [-1] * (num_classes * num_groups)
            partition[c * num_groups : (c + 1) * num_groups] = base
            out.append(FairnessConstraint(con.definition, con.tolerance, con.bound, tuple(partition), names, f"{con.label}[{cname}]"))
    return tuple(out)


def constraint_names(constraints: Sequence[FairnessConstraint], group_names: Sequence[str]) -> list[str]:
    """Stable names of the inequalities, in multiplier order: ``"{definition}/{rate}/{g}-{h}"``
    (``bound="difference"``: ``rate(g) - rate(h) <= tol``) or ``"{definition}/{rate}/{g}/{upper|lower}"``
    (``bound="gap"``)."""
    names = []
    for c in constraints:
        parts = c.part_names(group_names)
        for rate in c.rates:
            for g, h, side in c.inequalities(len(group_names)):
                tail = f"{parts[g]}/{side}" if h is None else f"{parts[g]}-{parts[h]}"
                names.append(f"{c.label}/{rate}/{tail}")
    return names


def constraint_table(constraints: Sequence[FairnessConstraint], group_names: Sequence[str]) -> list[tuple]:
    """One row ``(name, definition, rate, group, other, side, tolerance)`` per inequality, in multiplier order."""
    names = iter(constraint_names(constraints, group_names))
    rows = []
    for c in constraints:
        parts = c.part_names(group_names)
        for rate in c.rates:
            for g, h, side in c.inequalities(len(group_names)):
                rows.append((next(names), c.definition, rate, parts[g], "all" if h is None else parts[h], side, c.tolerance))
    return rows


def constraint_violations(
    sums: GroupSums | Tensor, constraints: Sequence[FairnessConstraint], min_count: float = 1
) -> tuple[Tensor, Tensor]:
    """Violations ``(K,)`` (``<= 0`` means satisfied) and the mask of those that are defined.

    ``sums`` is a :class:`GroupSums` or its stacked ``(4, G)`` form (hard or soft; differentiable
    in soft sums). Order matches :func:`constraint_names`. Undefined ones (a compared group
    absent, or with fewer than ``min_count`` samples behind the rate) are 0: they neither push
    the model nor move a multiplier. The overall rate counts every member group of the
    constraint (every group without a partition), masked or not.
    """
    stacked = sums if isinstance(sums, Tensor) else sums.stack()
    plan = _step_plan(tuple(constraints), stacked.shape[-1], min_count, stacked.dtype, stacked.device)
    return _violations(plan, stacked.reshape(-1))


def pi_multipliers(integral: Tensor, step: Tensor, out: Tensor, damping: float, multiplier_max: float, valid: Tensor) -> None:
    """The multipliers the model sees, written into ``out``: the PI controller's
    ``integral + damping * step`` projected onto ``[0, multiplier_max]`` (the integral itself when
    ``damping`` is 0), zero where ``valid`` is false."""
    if damping:
        torch.add(integral, step, alpha=damping, out=out).clamp_(0.0, multiplier_max)
    else:
        out.copy_(integral)
    out.mul_(valid)


def _violations(plan: _StepPlan, flat_sums: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`constraint_violations` of flattened ``(4 * G,)`` stacked sums, in a few tensor calls."""
    num, den = torch.mv(plan.rates, flat_sums).view(2, -1)
    rates = num / den.clamp_min(torch.finfo(den.dtype).tiny)  # empty groups: 0 / tiny = 0
    ok = (den >= plan.unit_min_count).to(den.dtype)
    valid = torch.mv(plan.pair, ok) > 1.5  # both compared groups have enough samples
    return torch.addmv(plan.neg_tolerance, plan.gaps, rates).mul_(valid), valid


class _StepPlan(NamedTuple):
    """Constant matrices that turn the violations of a set of constraints, and the per-step
    work of :class:`LagrangeMultipliers`, into a few tensor calls (tested against plain per-group
    rates and the explicit soft sums).

    A *unit* is one rate of one constraint over one compared group, or over everyone (the
    overall rate): ``U = sum over constraint rates of (parts + 1)``. ``K`` inequalities.
    """

    confusion_to_sums: Tensor  # (4G, 4G): flattened confusion counts [g, y, yhat] -> stacked sums (4, G)
    rates: Tensor  # (2U, 4G): stacked sums -> [numerators, denominators] of every unit
    gaps: Tensor  # (K, U): unit rates -> the left-hand side of each inequality
    neg_tolerance: Tensor  # (K,)
    tolerance: Tensor  # (K,)
    pair: Tensor  # (K, U): 1 at the units of the inequality's two compared groups (2 at its one
    # group for the gap form): ``pair @ ok > 1.5`` iff both have enough samples
    unit_min_count: Tensor  # (U,): min_count for group units, -1 for overall units (always valid)
    cell_denominators: Tensor  # (U, 2G): a batch's (group, label) counts -> each unit's denominator
    cell_slopes: Tensor  # (U, 2G): d numerator(unit) / d p of one sample of each (group, label) cell
    cell_constants: Tensor | None  # (U, 2G): the numerators' parts that do not depend on p
    confusion_to_cells: Tensor  # (2G, 4G): confusion counts -> (group, label) counts
    gaps_t: Tensor  # (U, K): gaps transposed, contiguous
    cell_slopes_t: Tensor  # (2G, U)


@functools.lru_cache(maxsize=64)
def _step_plan(
    constraints: tuple[FairnessConstraint, ...], num_groups: int, min_count: float, dtype: torch.dtype, device
) -> _StepPlan:
    """The matrices of a set of constraints (cached: built once per constraints, groups, dtype
    and device; never inference tensors, so that a plan first built under ``torch.inference_mode``
    still serves training)."""
    with torch.inference_mode(False):
        return _build_step_plan(constraints, num_groups, min_count, dtype, device)


def _build_step_plan(
    constraints: tuple[FairnessConstraint, ...], num_groups: int, min_count: float, dtype: torch.dtype, device
) -> _StepPlan:
    G = num_groups
    gap_rows, tol, first, second = [], [], [], []
    unit_min, units = [], 0
    unit_parts = []  # per unit: (rate name, (G,) 0/1 membership of the groups)
    for c in constraints:
        member = c.matrix(G, dtype)  # (P, G)
        P = member.shape[0]
        ineq = c.inequalities(G)
        for rate in c.rates:
            base = units
            for p in range(P):
                unit_parts.append((rate, member[p]))
                unit_min.append(float(min_count) if min_count > 0 else torch.finfo(dtype).tiny)
            unit_parts.append((rate, member.sum(0).clamp_max(1.0)))  # overall: the members' total
            unit_min.append(-1.0)
            units += P + 1
            for g, h, side in ineq:
                row = {}
                if h is None:
                    sign = 1.0 if side == "upper" else -1.0
                    row = {base + g: sign, base + P: -sign}
                    first.append(base + g)
                    second.append(base + g)
                else:
                    row = {base + g: 1.0, base + h: -1.0}
                    first.append(base + g)
                    second.append(base + h)
                gap_rows.append(row)
                tol.append(c.tolerance)
    U, K = units, len(gap_rows)
    gaps = torch.zeros(K, U, dtype=dtype)
    for k, row in enumerate(gap_rows):
        for u, v in row.items():
            gaps[k, u] = v
    first_m = torch.zeros(K, U, dtype=dtype)
    first_m[torch.arange(K), first] = 1.0
    second_m = torch.zeros(K, U, dtype=dtype)
    second_m[torch.arange(K), second] = 1.0
    # unit rows over the stacked sums (4, G) flattened field-major: coefficient (field) x membership (group)
    coef = rate_coefficients(tuple(r for r, _ in unit_parts), dtype=dtype)  # (2, U, 4)
    membership = torch.stack([m for _, m in unit_parts])  # (U, G)
    rates = torch.einsum("auf,ug->aufg", coef, membership).reshape(2 * U, 4 * G)
    # per (group, label) cell: label 0 has count 1, label 1 has count 1 and label 1
    cell_fields = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=dtype)  # [y] -> [count, label] contribution
    den_by_label = coef[1][:, :2] @ cell_fields.T  # (U, 2): denominator per sample of label y
    slope_by_label = coef[0][:, 2:] @ cell_fields.T  # (U, 2): d numerator / d p: pred + y * pred_label
    const_by_label = coef[0][:, :2] @ cell_fields.T  # (U, 2): numerator part independent of p
    cell = lambda by_label: torch.einsum("uy,ug->ugy", by_label, membership).reshape(U, 2 * G)  # noqa: E731
    eye = torch.eye(4 * G, dtype=dtype).view(4 * G, G, 2, 2)
    confusion_to_sums = GroupSums.from_confusion(eye).stack().permute(0, 2, 1).reshape(4 * G, 4 * G)
    confusion_to_cells = eye.sum(-1).reshape(4 * G, 2 * G).T.contiguous()  # (2G, 4G)
    tolerance = torch.tensor(tol, dtype=dtype)
    plan = _StepPlan(
        confusion_to_sums, rates, gaps, -tolerance, tolerance, first_m + second_m,
        torch.tensor(unit_min, dtype=dtype), cell(den_by_label), cell(slope_by_label),
        cell(const_by_label) if bool(const_by_label.any()) else None, confusion_to_cells,
        gaps.T.contiguous(), cell(slope_by_label).T.contiguous(),
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
        min_count: an inequality whose groups have fewer samples behind the rate in the running
            sums is not constrained: its multiplier is held at 0 for the model (never constrained on
            noise) and does not move. In a batch, any group with a sample takes part.
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
        multiplier_max: float = 10.0,
        ema_decay: float = 0.9,
        min_count: float = 1,
        dual_optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer] | None = None,
        dual_damping: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < dual_lr <= FLOAT32_MAX:
            raise ValueError(f"`dual_lr` must be a finite number > 0 and <= {FLOAT32_MAX:.4g} (float32), got {dual_lr}")
        if not 0 < multiplier_max <= FLOAT32_MAX:
            raise ValueError(f"`multiplier_max` must be a finite number > 0 and <= {FLOAT32_MAX:.4g} (float32), got {multiplier_max}")
        if not 0 <= min_count < math.inf:
            raise ValueError(f"`min_count` must be a finite number >= 0, got {min_count}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay}")
        if not 0 <= dual_damping <= FLOAT32_MAX:
            raise ValueError(f"`dual_damping` must be a finite number >= 0 and <= {FLOAT32_MAX:.4g} (float32), got {dual_damping}")
        self.dual_damping = dual_damping
        self.constraints = tuple(constraints)
        self.num_groups = num_groups
        self.multiplier_max, self.ema_decay, self.min_count = multiplier_max, ema_decay, min_count
        for c in self.constraints:
            if c.partition is not None:
                c.matrix(num_groups)  # checks the partition's length
        size = sum(len(c.rates) * len(c.inequalities(num_groups)) for c in self.constraints)
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
        """Differentiable violations of the batch, from soft group sums (every group with a sample
        takes part; ``min_count`` acts on the running sums, through the multipliers)."""
        return constraint_violations(soft_sums, self.constraints, 0)[0]

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
        if cells is None:
            cells = label_cells(target, groups)
        # no autograd context: every input below (counts, multipliers, labels) carries no gradient;
        # few tensor calls on purpose, this runs on every training step
        # in the predictions' precision (float32 at least)
        dtype = soft_preds.dtype if soft_preds.dtype in (torch.float32, torch.float64) else torch.float32
        lam = self.multipliers if self.multipliers.dtype == dtype else self.multipliers.to(dtype)
        plan = self._plan(dtype, lam.device, soft=True)
        if counts is None:
            cell_counts = torch.bincount(cells, minlength=2 * self.num_groups).to(dtype)
        else:
            cell_counts = torch.mv(plan.confusion_to_cells, counts.reshape(-1).to(dtype))
        den = torch.mv(plan.cell_denominators, cell_counts)  # (U,) denominators of the batch's unit rates
        ok = (den >= plan.unit_min_count).to(dtype)
        lam = lam * (torch.mv(plan.pair, ok) > 1.5)  # undefined inequalities neither push the model nor count
        # d(sum_k lam_k v_k)/d rate(unit), divided by the unit's denominator: d/d numerator
        share = torch.mv(plan.gaps_t, lam).div_(den.clamp_min(torch.finfo(dtype).tiny))
        # one weight per (group, label) cell: how much a sample's p moves the term
        weights = torch.mv(plan.cell_slopes_t, share).index_select(0, cells)
        const = torch.dot(lam, plan.tolerance)
        if plan.cell_constants is not None:  # rates whose numerators have p-free parts (accuracy)
            const = const - torch.dot(share, torch.mv(plan.cell_constants, cell_counts))
        if soft_preds.dtype != weights.dtype:
            weights, const = weights.to(soft_preds.dtype), const.to(soft_preds.dtype)
        return torch.dot(weights, soft_preds) - const

    def _plan(self, dtype: torch.dtype, device: torch.device, soft: bool = False) -> _StepPlan:
        return _step_plan(self.constraints, self.num_groups, 0 if soft else self.min_count, dtype, device)

    def dual_step(self, batch_hard: GroupSums | Tensor, ascend: bool = True) -> Tensor:
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
        hard, valid = _violations(plan, running.view(-1))
        integral, step = self.integral, hard.to(self.integral.dtype)
        if not ascend:  # warm-up: the running sums follow the model, the multipliers stay at 0
            return hard
        if self.dual_optimizer is None:
            integral.add_(step, alpha=self.dual_lr)
        else:  # ascent on the violation = descent on its negative
            integral.grad = -step
            self.dual_optimizer.step()
            integral.grad = None
        integral.clamp_(0.0, self.multiplier_max)
        # an inequality undefined on the running sums (too few samples) does not push the model
        pi_multipliers(integral, step, self.multipliers, self.dual_damping, self.multiplier_max, valid)
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
    "BOUNDS",
    "class_constraints",
    "constraint_names",
    "constraint_table",
    "constraint_violations",
    "hierarchical_constraints",
    "parse_constraints",
]
