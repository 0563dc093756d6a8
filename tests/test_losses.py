import math

import pytest
import torch

from fair_lightning.losses import (
    BoundedGroupLoss,
    AccuracyParityLoss,
    DemographicParityLoss,
    EqualizedOddsLoss,
    EqualOpportunityLoss,
    FairnessRegularizer,
    MutualInformationLoss,
    make_fairness_loss,
)

G = 4


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(300, generator=gen, dtype=torch.float64) + 0.3 * torch.arange(300).remainder(G)
    target = torch.randint(0, 2, (300,), generator=gen)
    groups = torch.arange(300).remainder(G)[torch.randperm(300, generator=gen)]
    return logits, target, groups


# --- plain reference implementations: python loops over groups, no shared code ----------------


def _ref_rate(p, mask):
    return sum(p[i] for i in range(len(p)) if mask[i]) / sum(1 for m in mask if m)


def _ref_gap_loss(logits, target, groups, conditions, temperature=1.0, penalty="abs", weights=None, pairwise=False):
    p = [1 / (1 + math.exp(-float(x) / temperature)) for x in logits]
    terms = []
    for cond in conditions:
        sel = [cond in (None, "acc") or int(t) == cond for t in target]
        q = p if cond != "acc" else [pi if int(t) == 1 else 1 - pi for pi, t in zip(p, target)]  # soft correctness
        overall = _ref_rate(q, sel)
        rates = {}
        for g in range(G):
            mask = [s and int(gg) == g for s, gg in zip(sel, groups)]
            if any(mask):
                rates[g] = _ref_rate(q, mask)
        w = weights or [1.0] * G
        if pairwise:
            for g in range(G):
                for h in range(g + 1, G):
                    if g in rates and h in rates:
                        d = rates[g] - rates[h]
                        terms.append((w[g] * w[h], abs(d) if penalty == "abs" else d * d))
        else:
            for g, r in rates.items():
                d = r - overall
                terms.append((w[g], abs(d) if penalty == "abs" else d * d))
    return sum(a * b for a, b in terms) / sum(a for a, _ in terms)


@pytest.mark.parametrize(
    ("cls", "conditions"),
    [(DemographicParityLoss, [None]), (EqualOpportunityLoss, [1]), (EqualizedOddsLoss, [1, 0]), (AccuracyParityLoss, ["acc"])],
)
@pytest.mark.parametrize("penalty", ["abs", "squared"])
@pytest.mark.parametrize("pairwise", [False, True])
def test_gap_losses_match_reference(batch, cls, conditions, penalty, pairwise):
    logits, target, groups = batch
    loss = cls(G, penalty=penalty, pairwise=pairwise, temperature=0.7)(logits, target, groups)
    expected = _ref_gap_loss(logits, target, groups, conditions, 0.7, penalty, pairwise=pairwise)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_fixed_group_weights_match_reference(batch):
    logits, target, groups = batch
    w = [1.0, 0.5, 2.0, 0.0]
    loss = DemographicParityLoss(G, group_weights=w)(logits, target, groups)
    assert loss.item() == pytest.approx(_ref_gap_loss(logits, target, groups, [None], weights=w), rel=1e-9)


def test_max_reduction_is_worst_group(batch):
    logits, target, groups = batch
    p = torch.sigmoid(logits)
    gaps = [abs(p[groups == g].mean() - p.mean()).item() for g in range(G)]
    assert DemographicParityLoss(G, reduction="max")(logits, None, groups).item() == pytest.approx(max(gaps))


def test_mutual_information_matches_definition(batch):
    logits, target, groups = batch
    p = torch.sigmoid(logits)
    # I(Yhat; S) from the joint distribution P(yhat=1, s=g) = mean over samples of p * [s=g]
    n = len(p)
    mi = 0.0
    for g in range(G):
        ps = (groups == g).double().mean().item()
        for yhat in (0, 1):
            q = p if yhat else 1 - p
            joint = q[groups == g].sum().item() / n
            marg = q.mean().item()
            mi += joint * math.log(joint / (ps * marg))
    assert MutualInformationLoss(G)(logits, None, groups).item() == pytest.approx(mi, rel=1e-6)


def test_mutual_information_zero_at_parity():
    logits = torch.tensor([0.3, -1.0, 0.3, -1.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    assert MutualInformationLoss(2)(logits, None, groups).item() == pytest.approx(0.0, abs=1e-12)


def test_bounded_group_loss_matches_reference():
    gen = torch.Generator().manual_seed(0)
    preds, target = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    groups = torch.randint(0, 3, (100,), generator=gen)
    bound = 1.5
    excess = [max(((preds[groups == g] - target[groups == g]) ** 2).mean().item() - bound, 0) for g in range(3)]
    loss = BoundedGroupLoss(3, bound=bound)(preds, target, groups)
    assert loss.item() == pytest.approx(sum(excess) / 3, rel=1e-5)
    assert BoundedGroupLoss(3, bound=100.0)(preds, target, groups).item() == 0.0


@pytest.mark.parametrize(
    "loss",
    [
        DemographicParityLoss(G, penalty="squared"),
        DemographicParityLoss(G, pairwise=True, weighting="sqrt"),
        EqualizedOddsLoss(G, temperature=0.5),
        EqualOpportunityLoss(G, weighting="proportional"),
        AccuracyParityLoss(G, pairwise=True),
        MutualInformationLoss(G),
    ],
    ids=lambda l: type(l).__name__,
)
def test_gradcheck(batch, loss):
    logits, target, groups = batch
    x = logits[:60].clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda z: loss(z, target[:60], groups[:60]), (x,))


def test_bounded_group_loss_gradcheck():
    preds = torch.randn(40, dtype=torch.float64, requires_grad=True)
    target = torch.randn(40, dtype=torch.float64)
    groups = torch.arange(40).remainder(3)
    torch.autograd.gradcheck(lambda z: BoundedGroupLoss(3, bound=0.2)(z, target, groups), (preds,))


@pytest.mark.parametrize("cls", [DemographicParityLoss, EqualizedOddsLoss, EqualOpportunityLoss, MutualInformationLoss])
def test_single_group_and_missing_groups_give_finite_zero_loss(cls):
    logits = torch.randn(10, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1] * 5)
    groups = torch.full((10,), 2)  # one group present out of four
    loss = cls(G)(logits, target, groups)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_min_count_masks_tiny_groups(batch):
    logits, target, groups = batch
    groups = groups.clone()
    groups[:3] = 3
    groups[3:][groups[3:] == 3] = 0  # group 3 has exactly 3 samples
    with_tiny = DemographicParityLoss(G)(logits, None, groups)
    without = DemographicParityLoss(G, min_count=5)(logits, None, groups)
    p = torch.sigmoid(logits)
    ref = sum(abs(p[groups == g].mean() - p.mean()).item() for g in range(3)) / 3
    assert without.item() == pytest.approx(ref, rel=1e-9)
    assert with_tiny.item() != pytest.approx(without.item())


def test_regularizer_returns_parts(batch):
    logits, target, groups = batch
    reg = FairnessRegularizer(None, DemographicParityLoss(G), eta=2.5)
    out = reg(logits, target, groups)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.double())
    assert out.task.item() == pytest.approx(bce.item())
    assert out.total.item() == pytest.approx(bce.item() + 2.5 * out.fairness.item())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: DemographicParityLoss(G, penalty="cubic"), "`penalty` must be one of"),
        (lambda: DemographicParityLoss(G, temperature=0), "`temperature` must be > 0"),
        (lambda: DemographicParityLoss(G, group_weights=[1, 2]), "`group_weights` must be 4"),
        (lambda: FairnessRegularizer(None, DemographicParityLoss(G), eta=-1), "`eta` must be >= 0, got -1"),
        (lambda: make_fairness_loss("parity", G), "`fairness` must be one of .*demographic_parity"),
        (lambda: EqualizedOddsLoss(G)(torch.randn(4, 2), torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)), r"`logits` must have shape \(N,\) or \(N, 1\)"),
        (lambda: EqualizedOddsLoss(G)(torch.randn(4), torch.tensor([0, 1, 2, 1]), torch.zeros(4, dtype=torch.long)), "`target` must contain only 0 and 1"),
        (lambda: EqualizedOddsLoss(G)(torch.randn(4), None, torch.zeros(4, dtype=torch.long)), "`target` is required"),
        (lambda: DemographicParityLoss(G)(torch.tensor([0.0, float("nan")]), None, torch.zeros(2, dtype=torch.long)), "`logits` contains NaN"),
        (lambda: DemographicParityLoss(G)(torch.randn(3), None, torch.tensor([0, 1, 9])), "num_groups=4, got maximum 9"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
