import pytest
import torch

from fair_lightning.constraints import (
    FairnessConstraint,
    LagrangeMultipliers,
    constraint_names,
    constraint_violations,
    parse_constraints,
)
from fair_lightning.functional import GroupSums, confusion_counts, group_sums
from fair_lightning.functional._rates import RATES


def _gap(definitions, tolerance=0.02):
    """Constraints in the gap-to-overall form (``bound="gap"``)."""
    if isinstance(definitions, (str, dict)):
        definitions = [definitions]
    out = []
    for d in definitions:
        d = {"definition": d} if isinstance(d, str) else dict(d)
        out.append({"tolerance": tolerance, "bound": "gap", **d})
    return parse_constraints(out, tolerance)


def _sums():
    preds = torch.tensor([1.0, 1, 0, 0, 1, 0, 0, 0, 1, 1])
    target = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    return group_sums(preds, target, groups, 3), preds, target, groups


def test_violations_match_a_hand_computation():
    sums, preds, target, groups = _sums()
    cons = _gap([{"definition": "demographic_parity", "tolerance": 0.05}, "equal_opportunity"], 0.0)
    values, valid = constraint_violations(sums, cons)
    names = constraint_names(cons, ["a", "b", "c"])
    assert len(names) == values.numel() == 6 + 6
    overall = preds.mean()
    for g in range(3):
        gap = preds[groups == g].mean() - overall
        assert values[names.index(f"demographic_parity/selection_rate/{'abc'[g]}/upper")].item() == pytest.approx(gap - 0.05)
        assert values[names.index(f"demographic_parity/selection_rate/{'abc'[g]}/lower")].item() == pytest.approx(-gap - 0.05)
        pos = target == 1
        tpr_gap = preds[pos & (groups == g)].mean() - preds[pos].mean()
        assert values[names.index(f"equal_opportunity/true_positive_rate/{'abc'[g]}/upper")].item() == pytest.approx(tpr_gap)
    assert valid.all()


def test_absent_group_gives_zero_violation():
    sums, *_ = _sums()
    stacked = sums.stack().clone()
    stacked[:, 2] = 0
    for cons in (_gap("equalized_odds"), parse_constraints("equalized_odds")):
        values, valid = constraint_violations(GroupSums.from_stacked(stacked), cons)
        names = constraint_names(cons, ["a", "b", "c"])
        assert len(names) == values.numel()
        for k, name in enumerate(names):
            if "/c/" in name or "/c-" in name or name.endswith("-c"):
                assert values[k] == 0 and not valid[k]
            else:
                assert valid[k]


def test_absent_group_gap_form():
    sums, *_ = _sums()
    stacked = sums.stack().clone()
    stacked[:, 2] = 0
    values, valid = constraint_violations(GroupSums.from_stacked(stacked), _gap("equalized_odds"))
    names = constraint_names(_gap("equalized_odds"), ["a", "b", "c"])
    for k, name in enumerate(names):
        if "/c/" in name:
            assert values[k] == 0 and not valid[k]


def test_default_ascent_equals_torch_sgd_and_projects():
    sums, *_ = _sums()
    cons = parse_constraints("demographic_parity", 0.0)
    ours = LagrangeMultipliers(cons, 3, dual_lr=0.3, ema_decay=0.0, multiplier_max=0.2)
    ref = LagrangeMultipliers(cons, 3, dual_lr=0.3, ema_decay=0.0, multiplier_max=0.2,
                              dual_optimizer=lambda p: torch.optim.SGD(p, lr=0.3))
    for _ in range(3):
        hard = ours.dual_step(sums)
        ref.dual_step(sums)
        torch.testing.assert_close(ours.multipliers, ref.multipliers)
    assert (ours.multipliers >= 0).all() and (ours.multipliers <= 0.2).all()
    assert ours.multipliers.max() == pytest.approx(0.2)  # the projection bit
    torch.testing.assert_close(hard, constraint_violations(sums, cons)[0].double())


def test_damping_adds_a_proportional_term():
    sums, *_ = _sums()
    cons = parse_constraints("demographic_parity", 0.0)
    plain = LagrangeMultipliers(cons, 3, dual_lr=0.1, ema_decay=0.0)
    damped = LagrangeMultipliers(cons, 3, dual_lr=0.1, ema_decay=0.0, dual_damping=2.0)
    for _ in range(2):
        hard = plain.dual_step(sums)
        damped.dual_step(sums)
    torch.testing.assert_close(damped.integral, plain.multipliers)
    torch.testing.assert_close(damped.multipliers, (plain.multipliers + 2.0 * hard.float()).clamp(0, 100.0))
    # once the violation flips sign the proportional term pulls the multiplier down at once
    flipped = GroupSums(sums.count, sums.label, sums.count - sums.pred, sums.label - sums.pred_label)
    hard = damped.dual_step(flipped)
    torch.testing.assert_close(damped.multipliers, (damped.integral + 2.0 * hard.float()).clamp(0, 100.0))
    assert (damped.multipliers < damped.integral).any()


def test_running_sums_are_an_ema():
    sums, *_ = _sums()
    mult = LagrangeMultipliers(parse_constraints("demographic_parity"), 3, ema_decay=0.75)
    mult.dual_step(sums)
    torch.testing.assert_close(mult.running_sums, sums.stack().double())
    doubled = GroupSums.from_stacked(sums.stack() * 2)
    mult.dual_step(doubled)
    torch.testing.assert_close(mult.running_sums, (0.75 * sums.stack() + 0.25 * 2 * sums.stack()).double())
    assert int(mult.num_updates) == 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: FairnessConstraint("parity"), "`constraints` must be one of"),
        (lambda: FairnessConstraint("demographic_parity", -0.1), "`tolerance` must be a number in \\[0, 1\\)"),
        (lambda: parse_constraints([]), "at least one constraint"),
        (lambda: parse_constraints(3), "`constraints` must be a name"),
        (lambda: LagrangeMultipliers(parse_constraints("demographic_parity"), 2, dual_damping=-1), "`dual_damping` must be a finite number >= 0"),
        (lambda: LagrangeMultipliers(parse_constraints("demographic_parity"), 2, multiplier_max=0), "`multiplier_max` must be a finite number > 0"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "definitions",
    [
        ["demographic_parity"],
        ["equalized_odds", "equal_opportunity"],
        [{"definition": "demographic_parity", "bound": "gap"}, {"definition": "equalized_odds", "bound": "gap"}],
        [{"definition": "accuracy_parity"}, {"definition": "demographic_parity", "partition": (0, 1, 1, 0)}],
    ],
)
@pytest.mark.parametrize("min_count", [1, 15])
def test_linear_lagrangian_term_equals_explicit_sum(definitions, min_count):
    gen = torch.Generator().manual_seed(0)
    n, G = 300, 4
    logits = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (n,), generator=gen)
    groups = torch.randint(0, G, (n,), generator=gen)
    groups[groups == 3] = 2  # group 3 absent
    groups[:10] = 3  # ... but for 10 samples: below min_count=15
    cons = parse_constraints(definitions, 0.02)
    mult = LagrangeMultipliers(cons, G, min_count=min_count)
    mult.multipliers.copy_(torch.rand(mult.multipliers.shape, generator=gen) * 3)
    p = torch.sigmoid(logits)
    explicit = (mult.multipliers.double() * mult.soft_violations(group_sums(p, target, groups, G))).sum()
    (g_explicit,) = torch.autograd.grad(explicit, logits)
    linear = mult.lagrangian_term(torch.sigmoid(logits), target, groups)
    (g_linear,) = torch.autograd.grad(linear, logits)
    torch.testing.assert_close(linear, explicit)
    torch.testing.assert_close(g_linear, g_explicit)


def _plain_rate(sums, rate, members):
    """num / den of a rate over the groups in ``members``, from the rate table's own coefficients."""
    spec = RATES[rate]
    stacked = sums.stack()[:, members].sum(1)
    num = float(sum(c * v for c, v in zip(spec.numerator, stacked)))
    den = float(sum(c * v for c, v in zip(spec.denominator, stacked)))
    return num, den


def _reference_violations(stacked, constraints, min_count):
    """Plain loop: every inequality's left-hand side from per-group rates, 0 where undefined."""
    sums = GroupSums.from_stacked(stacked.double())
    G = sums.count.numel()
    values, valid = [], []
    for c in constraints:
        part = list(range(G)) if c.partition is None else list(c.partition)
        P = max(part) + 1
        for rate in c.rates:
            per = [_plain_rate(sums, rate, [g for g in range(G) if part[g] == p]) for p in range(P)]
            num_all, den_all = _plain_rate(sums, rate, list(range(G)))
            overall = num_all / den_all if den_all > 0 else 0.0
            ok = [den > 0 and den >= min_count for _, den in per]
            r = [num / den if den > 0 else 0.0 for num, den in per]
            for g, h, side in c.inequalities(G):
                good = ok[g] and (h is None or ok[h])
                if h is None:
                    lhs = (r[g] - overall) * (1 if side == "upper" else -1)
                else:
                    lhs = r[g] - r[h]
                values.append(lhs - c.tolerance if good else 0.0)
                valid.append(good)
    return torch.tensor(values, dtype=torch.float64), torch.tensor(valid)


@pytest.mark.parametrize(
    ("definitions", "num_groups", "min_count"),
    [
        (["demographic_parity"], 2, 1),
        (["equalized_odds"], 3, 1),
        ([{"definition": "equalized_odds", "tolerance": 0.0}, {"definition": "demographic_parity", "tolerance": 0.05}], 5, 12),
        (["equal_opportunity", "demographic_parity"], 6, 0),
        ([{"definition": "equalized_odds", "bound": "gap"}, {"definition": "accuracy_parity", "bound": "gap"}], 4, 12),
        ([{"definition": "demographic_parity", "partition": (0, 0, 1, 1, 1), "tolerance": 0.01}, "equal_opportunity"], 5, 3),
        ([{"definition": "accuracy_parity", "bound": "gap", "partition": (1, 0, 1, 0)}, "demographic_parity"], 4, 1),
    ],
)
def test_dual_step_matches_constraint_violations(definitions, num_groups, min_count):
    """The dual step's few-call arithmetic (and constraint_violations) equals a plain per-group
    loop on the running sums, for confusion-count and GroupSums input, with several constraints,
    absent and small groups."""
    gen = torch.Generator().manual_seed(num_groups)
    cons = parse_constraints(definitions, 0.02)
    by_confusion = LagrangeMultipliers(cons, num_groups, ema_decay=0.8, min_count=min_count, dual_lr=0.5)
    by_sums = LagrangeMultipliers(cons, num_groups, ema_decay=0.8, min_count=min_count, dual_lr=0.5)
    masked_small = False
    for step in range(4):
        n = 200
        target = torch.randint(0, 2, (n,), generator=gen)
        absent = int(num_groups > 2)  # the last group is absent
        groups = torch.randint(0, num_groups - absent, (n,), generator=gen)
        hard = torch.rand(n, generator=gen) < 0.2 + 0.4 * groups / num_groups + 0.05 * step
        if num_groups > 2:  # group G - 2 is small: 8 or 20 samples, around min_count
            groups[groups == num_groups - 2] = 0
            groups[: 8 if step % 2 else 20] = num_groups - 2
        counts = confusion_counts(hard, target, groups, num_groups)
        hard_c = by_confusion.dual_step(counts)
        hard_s = by_sums.dual_step(group_sums(hard.double(), target, groups, num_groups))
        expected, valid = _reference_violations(by_sums.running_sums, cons, min_count)
        values, mask = constraint_violations(by_sums.running_sums, cons, min_count)
        torch.testing.assert_close(values, expected)
        assert torch.equal(mask, valid)
        torch.testing.assert_close(hard_c, expected)
        torch.testing.assert_close(hard_s, expected)
        assert (expected[~valid] == 0).all()
        small = [k for k, name in enumerate(constraint_names(cons, [f"g{i}" for i in range(num_groups)]))
                 if f"g{num_groups - 2}" in name.split("/")[-1] or f"g{num_groups - 2}/" in name]
        masked_small |= bool(min_count > 1 and small and not valid[small].all())
        torch.testing.assert_close(by_confusion.running_sums, by_sums.running_sums)
        torch.testing.assert_close(by_confusion.multipliers, by_sums.multipliers)
    assert (by_sums.multipliers > 0).any()
    if all(c.partition is None for c in cons):
        assert masked_small == (min_count > 1)


def test_lagrangian_term_from_confusion_counts_equals_default():
    gen = torch.Generator().manual_seed(3)
    n, G = 128, 3
    logits = torch.randn(n, generator=gen)
    target = torch.randint(0, 2, (n,), generator=gen).float()
    groups = torch.randint(0, G, (n,), generator=gen)
    mult = LagrangeMultipliers(parse_constraints(["equalized_odds", "demographic_parity"], 0.01), G)
    mult.multipliers.copy_(torch.rand(mult.multipliers.shape, generator=gen))
    p = torch.sigmoid(logits)
    counts = confusion_counts(logits > 0, target, groups, G)
    torch.testing.assert_close(mult.lagrangian_term(p, target, groups, counts=counts), mult.lagrangian_term(p, target, groups))


def test_lagrangian_term_gradcheck_and_float64_precision():
    gen = torch.Generator().manual_seed(5)
    n, G = 40, 3
    logits = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (n,), generator=gen)
    groups = torch.randint(0, G, (n,), generator=gen)
    mult = LagrangeMultipliers(parse_constraints(["equalized_odds", "demographic_parity"], 0.03), G)
    mult.multipliers.copy_(torch.rand(mult.multipliers.shape, generator=gen) * 2)
    torch.autograd.gradcheck(lambda z: mult.lagrangian_term(torch.sigmoid(z), target, groups), (logits,))
    # float64 predictions get a float64 term equal to the explicit sum to float64 precision
    p = torch.sigmoid(logits)
    explicit = (mult.multipliers.double() * mult.soft_violations(group_sums(p, target, groups, G))).sum()
    term = mult.lagrangian_term(p, target, groups)
    assert term.dtype == torch.float64
    torch.testing.assert_close(term, explicit, rtol=1e-12, atol=1e-12)


def test_difference_bound_is_max_minus_min():
    """``bound="difference"``: every pairwise violation <= 0 iff max - min <= tolerance."""
    sums, preds, _, groups = _sums()
    rates = [float(preds[groups == g].mean()) for g in range(3)]
    spread = max(rates) - min(rates)
    for tol, holds in ((spread - 0.01, False), (spread + 0.01, True)):
        values, valid = constraint_violations(sums, parse_constraints("demographic_parity", tol))
        assert valid.all() and values.numel() == 6
        assert bool((values <= 1e-12).all()) == holds
        assert values.max().item() == pytest.approx(spread - tol)


def test_hierarchical_constraints_cover_marginals_and_intersections():
    from fair_lightning.constraints import hierarchical_constraints
    from fair_lightning.groups import GroupSpec

    spec = GroupSpec({"sex": ["F", "M"], "race": ["B", "O", "W"]})
    cons = hierarchical_constraints(spec, {"sex": 0.02, "race": 0.05, "intersection": 0.1})
    assert [c.tolerance for c in cons] == [0.02, 0.05, 0.1]
    names = constraint_names(cons, spec.names)
    assert "demographic_parity[sex]/selection_rate/sex=F-sex=M" in names
    assert "demographic_parity[race]/selection_rate/race=B-race=W" in names
    assert len(names) == 2 + 6 + 30
    gen = torch.Generator().manual_seed(1)
    n = 600
    groups = torch.randint(0, 6, (n,), generator=gen)
    preds = (torch.rand(n, generator=gen) < 0.2 + 0.1 * groups).double()
    target = torch.randint(0, 2, (n,), generator=gen)
    values, _ = constraint_violations(group_sums(preds, target, groups, 6), cons)
    sex = spec.marginal(groups, "sex")
    gap = preds[sex == 0].mean() - preds[sex == 1].mean()
    assert values[names.index("demographic_parity[sex]/selection_rate/sex=F-sex=M")].item() == pytest.approx(gap - 0.02)
    with pytest.raises(ValueError, match="`tolerances` keys"):
        hierarchical_constraints(spec, {"gender": 0.02})


@pytest.mark.parametrize(
    ("constraints", "match"),
    [
        ({"definition": "demographic_parity", "tol": 0.05}, r"unknown key\(s\) \['tol'\]"),
        ({"tolerance": 0.05}, "needs a 'definition' key"),
        ("demographic_parity", None),
    ],
)
def test_constraint_mappings_are_checked(constraints, match):
    if match is None:
        assert parse_constraints(constraints, 0.03)[0].tolerance == 0.03
    else:
        with pytest.raises(ValueError, match=match):
            parse_constraints(constraints)


@pytest.mark.parametrize("tolerance", [1.5, 1.0, float("inf"), float("nan"), -0.1, "0.1", True])
def test_tolerance_must_be_a_rate_difference(tolerance):
    with pytest.raises(ValueError, match="`tolerance` must be a number in \\[0, 1\\)"):
        FairnessConstraint("demographic_parity", tolerance)


def test_partition_length_is_checked():
    with pytest.raises(ValueError, match="one entry per group"):
        LagrangeMultipliers(parse_constraints({"definition": "demographic_parity", "partition": (0, 1)}), 3)
