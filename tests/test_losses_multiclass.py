"""K-class fairness losses and the Penalty method on (N, K) logits, against plain loops."""

import math

import pytest
import torch

from fair_lightning.losses import (
    AccuracyParityLoss,
    DemographicParityLoss,
    EqualizedOddsLoss,
    EqualOpportunityLoss,
    FairnessRegularizer,
    MutualInformationLoss,
)
from fair_lightning.methods import ERM, Penalty, make_method

G, K, N = 3, 4, 240


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(5)
    groups = torch.arange(N).remainder(G)[torch.randperm(N, generator=gen)]
    logits = torch.randn(N, K, generator=gen, dtype=torch.float64)
    logits[:, 1] += 0.8 * groups  # class 1 is favoured in higher groups: gaps are not small
    target = torch.randint(0, K, (N,), generator=gen)
    return logits, target, groups


# --- plain reference: python loops over classes and groups, no shared code --------------------


def _softmax_rows(logits, temperature):
    out = []
    for row in logits.tolist():
        e = [math.exp(v / temperature) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def _mean(values):
    return sum(values) / len(values)


def _ref_loss(logits, target, groups, conditions, *, temperature=1.0, penalty="abs", weighting="uniform",
              min_count=1, pairwise=False, reduction="mean"):
    """conditions: per class c, which samples the rate averages over: None (all), 1 (y == c), 0 (y != c);
    "acc": the groups' mean probability of the true class (no class dimension)."""
    p = _softmax_rows(logits, temperature)
    y, g = target.tolist(), groups.tolist()
    n = len(y)
    sizes = [sum(1 for gg in g if gg == h) for h in range(G)]
    if weighting == "uniform":
        w = [1.0] * G
    elif weighting == "proportional":
        w = [float(s) for s in sizes]
    else:
        w = [math.sqrt(s) for s in sizes]
    terms = []
    problems = []  # (score per sample, mask per sample)
    for cond in conditions:
        if cond == "acc":
            problems.append(([p[i][y[i]] for i in range(n)], [True] * N))
            continue
        for c in range(K):
            sel = [cond is None or (y[i] == c) == (cond == 1) for i in range(n)]
            problems.append(([p[i][c] for i in range(n)], sel))
    for score, sel in problems:
        overall = _mean([score[i] for i in range(n) if sel[i]])
        rates = {}
        for h in range(G):
            members = [score[i] for i in range(n) if sel[i] and g[i] == h]
            if len(members) >= max(min_count, 1):
                rates[h] = _mean(members)
        pairs = (
            [(a, b, rates[a] - rates[b], w[a] * w[b]) for a in rates for b in rates if a < b]
            if pairwise else [(a, None, r - overall, w[a]) for a, r in rates.items()]
        )
        for _, _, d, weight in pairs:
            terms.append((weight, abs(d) if penalty == "abs" else d * d))
    if reduction == "max":
        return max(v for _, v in terms)
    return sum(a * b for a, b in terms) / sum(a for a, _ in terms)


@pytest.mark.parametrize(
    ("cls", "conditions"),
    [(DemographicParityLoss, [None]), (EqualOpportunityLoss, [1]), (EqualizedOddsLoss, [1, 0]), (AccuracyParityLoss, ["acc"])],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"penalty": "squared", "temperature": 2.0},
        {"pairwise": True},
        {"weighting": "proportional"},
        {"weighting": "sqrt", "reduction": "max"},
    ],
)
def test_multiclass_losses_match_reference(batch, cls, conditions, options):
    logits, target, groups = batch
    loss = cls(G, num_classes=K, **options)
    value = loss(logits, target, groups)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(_ref_loss(logits, target, groups, conditions, **options), rel=1e-9, abs=1e-12)


def test_min_count_masks_small_groups_per_class(batch):
    logits, target, groups = batch
    # group 2 keeps only 6 samples: below min_count=10 it is masked for every class
    keep = (groups != 2) | (torch.arange(N) < 15)
    logits, target, groups = logits[keep], target[keep], groups[keep]
    assert int((groups == 2).sum()) < 10
    value = DemographicParityLoss(G, num_classes=K, min_count=10)(logits, target, groups)
    ref = _ref_loss(logits, target, groups, [None], min_count=10)
    unmasked = _ref_loss(logits, target, groups, [None], min_count=1)
    assert float(value) == pytest.approx(ref, rel=1e-9)
    assert ref != pytest.approx(unmasked, rel=1e-3)


def test_multiclass_mutual_information_matches_definition(batch):
    logits, target, groups = batch
    p = torch.softmax(logits, 1)
    n_g = torch.stack([(groups == g).sum() for g in range(G)]).double()
    r_g = torch.stack([p[groups == g].mean(0) for g in range(G)])  # (G, K)
    r = p.mean(0)
    ref = sum(float(n_g[g] / N * (r_g[g] * torch.log(r_g[g] / r)).sum()) for g in range(G))
    value = MutualInformationLoss(G, num_classes=K)(logits, target, groups)
    assert float(value) == pytest.approx(ref, rel=1e-9)
    parity = torch.zeros(N, K, dtype=torch.float64)
    assert float(MutualInformationLoss(G, num_classes=K)(parity, target, groups)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "loss",
    [
        DemographicParityLoss(G, num_classes=K, penalty="squared"),
        EqualizedOddsLoss(G, num_classes=K, pairwise=True, penalty="squared"),
        AccuracyParityLoss(G, num_classes=K, weighting="sqrt", penalty="squared"),
        MutualInformationLoss(G, num_classes=K),
    ],
)
def test_multiclass_gradcheck(batch, loss):
    logits, target, groups = batch
    x = logits[:40].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, target[:40], groups[:40]), (x,), eps=1e-6, atol=1e-6)


def test_binary_loss_unchanged_by_num_classes_none():
    gen = torch.Generator().manual_seed(0)
    logits, groups = torch.randn(50, generator=gen, dtype=torch.float64), torch.randint(0, 2, (50,), generator=gen)
    loss = DemographicParityLoss(2)
    assert loss.num_classes is None
    p = torch.sigmoid(logits)
    ref = torch.stack([(p[groups == g].mean() - p.mean()).abs() for g in range(2)]).mean()
    assert float(loss(logits, None, groups)) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: DemographicParityLoss(2, num_classes=3)(torch.randn(8), None, torch.zeros(8, dtype=torch.long)), r"`logits` must have shape \(N, num_classes=3\)"),
        (lambda: DemographicParityLoss(2, num_classes=3)(torch.randn(8, 4), None, torch.zeros(8, dtype=torch.long)), r"`logits` must have shape \(N, num_classes=3\)"),
        (lambda: DemographicParityLoss(2)(torch.randn(8, 3), None, torch.zeros(8, dtype=torch.long)), r"num_classes=3"),
        (lambda: EqualizedOddsLoss(2, num_classes=3)(torch.randn(8, 3), torch.full((8,), 3), torch.zeros(8, dtype=torch.long)), r"`target` must be class indices < num_classes=3"),
        (lambda: EqualizedOddsLoss(2, num_classes=3)(torch.randn(8, 3), torch.eye(3)[torch.zeros(8, dtype=torch.long)], torch.zeros(8, dtype=torch.long)), r"one-hot"),
        (lambda: EqualizedOddsLoss(2, num_classes=3)(torch.randn(8, 3), torch.rand(8), torch.zeros(8, dtype=torch.long)), r"regression target"),
        (lambda: DemographicParityLoss(2, num_classes=1), r"`num_classes` must be an int >= 2"),
        (lambda: Penalty(2, num_classes=3, fairness=DemographicParityLoss(2)), r"num_classes=None, but the method has num_classes=3"),
    ],
)
def test_multiclass_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_penalty_method_on_k_logits(batch):
    logits, target, groups = batch
    method = Penalty(G, num_classes=K, fairness="equalized_odds", eta=2.5, temperature=1.5)
    method.train()
    x = logits.clone().requires_grad_(True)
    term = method(x, target, groups)
    ref = EqualizedOddsLoss(G, num_classes=K, temperature=1.5)(logits, target, groups)
    assert float(term) == pytest.approx(2.5 * float(ref), rel=1e-9)
    term.backward()
    assert x.grad.abs().sum() > 0
    assert int(method.num_steps) == 1
    with pytest.raises(ValueError, match=r"`target` must be class indices"):
        method(logits, target + K, groups)


def test_regularizer_uses_cross_entropy_for_k_classes(batch):
    logits, target, groups = batch
    out = FairnessRegularizer(None, DemographicParityLoss(G, num_classes=K), eta=0.5)(logits, target, groups)
    assert float(out.task) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)), rel=1e-12)


def test_binary_only_methods_refuse_num_classes():
    assert make_method("erm", {"num_groups": 2, "num_classes": 3}).num_classes == 3
    assert make_method("penalty", {"num_groups": 2, "num_classes": 3}).loss.num_classes == 3
    with pytest.raises(ValueError, match="num_classes=4, but the module has num_classes=3"):
        make_method(Penalty(2, num_classes=4), {"num_groups": 2, "num_classes": 3})
    assert isinstance(make_method(ERM(2), {"num_groups": 2}), ERM)


@pytest.mark.parametrize("fairness", ["demographic_parity", "equalized_odds"])
def test_adversary_on_softmax_outputs(batch, fairness):
    from fair_lightning.methods import Adversarial

    logits, target, groups = batch
    torch.manual_seed(0)
    method = Adversarial(G, num_classes=K, fairness=fairness, eta=0.7).double()
    seen = {}

    def remember(module, inputs, output):
        seen.setdefault("x", inputs[0])

    method.adversary.register_forward_hook(remember)
    x = logits.clone().requires_grad_(True)
    loss = method(x, target, groups)
    features = seen["x"]
    width = K + (K if fairness == "equalized_odds" else 0)
    assert features.shape == (N, width)
    torch.testing.assert_close(features[:, :K], torch.softmax(logits, 1))
    if fairness == "equalized_odds":
        torch.testing.assert_close(features[:, K:], torch.nn.functional.one_hot(target, K).double())
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(method.adversary(features), groups))
    # gradient reversal: the model's gradient is -eta times the adversary loss's gradient
    (grad,) = torch.autograd.grad(loss, x)
    z = logits.clone().requires_grad_(True)
    f = torch.softmax(z, 1)
    if fairness == "equalized_odds":
        f = torch.cat((f, torch.nn.functional.one_hot(target, K).double()), 1)
    (plain,) = torch.autograd.grad(torch.nn.functional.cross_entropy(method.adversary(f), groups), z)
    torch.testing.assert_close(grad, -0.7 * plain)
