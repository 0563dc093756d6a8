"""K-class Lagrangian: per-(class, group) constraints as binary constraints over K * G fine groups,
checked against plain loops (dual step on argmax counts; linear primal term, value and gradient)."""

import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.constraints import (
    FairnessConstraint,
    LagrangeMultipliers,
    class_constraints,
    constraint_violations,
    parse_constraints,
)
from fair_lightning.functional import GroupSums, group_sums
from fair_lightning.functional._rates import RATES
from fair_lightning.methods import Lagrangian
from fair_lightning.module import FairLightningModule

G, K = 3, 4

# per rate: which samples of class c's one-vs-rest problem the rate averages over
_CONDITION = {"selection_rate": None, "true_positive_rate": 1, "false_positive_rate": 0}


def _batch(n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, G, (n,), generator=gen)
    logits = torch.randn(n, K, generator=gen, dtype=torch.float64)
    logits[:, 2] += 0.7 * groups
    target = torch.randint(0, K, (n,), generator=gen)
    return logits, target, groups


# --- partition with excluded (-1) groups ----------------------------------------------------


def _plain_violations(stacked, constraints, min_count, overall_all=False):
    sums = GroupSums.from_stacked(stacked.double())
    n_groups = sums.count.numel()

    def rate(name, members):
        spec, s = RATES[name], sums.stack()[:, members].sum(1)
        return float(sum(c * v for c, v in zip(spec.numerator, s))), float(sum(c * v for c, v in zip(spec.denominator, s)))

    values = []
    for c in constraints:
        part = list(range(n_groups)) if c.partition is None else list(c.partition)
        P = max(part) + 1
        members = [g for g in range(n_groups) if part[g] >= 0]
        for name in c.rates:
            per = [rate(name, [g for g in range(n_groups) if part[g] == p]) for p in range(P)]
            num_all, den_all = rate(name, list(range(n_groups)) if overall_all else members)  # the members' total
            overall = num_all / den_all if den_all > 0 else 0.0
            ok = [den > 0 and den >= min_count for _, den in per]
            r = [num / den if den > 0 else 0.0 for num, den in per]
            for g, h, side in c.inequalities(n_groups):
                good = ok[g] and (h is None or ok[h])
                lhs = (r[g] - overall) * (1 if side == "upper" else -1) if h is None else r[g] - r[h]
                values.append(lhs - c.tolerance if good else 0.0)
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("bound", ["difference", "gap"])
def test_excluded_groups_leave_rates_and_overall(bound):
    gen = torch.Generator().manual_seed(1)
    n, n_groups = 300, 5
    target = torch.randint(0, 2, (n,), generator=gen)
    groups = torch.randint(0, n_groups, (n,), generator=gen)
    hard = (torch.rand(n, generator=gen) < 0.2 + 0.15 * groups).double()
    stacked = group_sums(hard, target, groups, n_groups).stack()
    cons = parse_constraints(
        [{"definition": "equalized_odds", "partition": (0, -1, 1, 1, -1), "bound": bound},
         {"definition": "demographic_parity", "partition": (-1, 0, 0, 1, 2), "bound": bound}], 0.01)
    expected = _plain_violations(stacked, cons, 1)
    torch.testing.assert_close(constraint_violations(stacked, cons, 1)[0], expected)
    mult = LagrangeMultipliers(cons, n_groups, ema_decay=0.0)
    torch.testing.assert_close(mult.dual_step(stacked), expected)
    # the overall rate of a gap constraint is its members' total, not every group's
    if bound == "gap":
        assert not torch.allclose(expected, _plain_violations(stacked, cons, 1, overall_all=True))


def test_partition_checks():
    with pytest.raises(ValueError, match=r"`partition` must be coarse group ids >= 0 \(or -1"):
        FairnessConstraint("demographic_parity", partition=(-1, -1))
    with pytest.raises(ValueError, match=r"`partition` must be coarse group ids"):
        FairnessConstraint("demographic_parity", partition=(0, -2))


def test_class_constraints_layout():
    cons = class_constraints(parse_constraints(["demographic_parity"], 0.05), 2, 3, ["a", "b"], ["x", "y", "z"])
    assert [c.label for c in cons] == ["demographic_parity[x]", "demographic_parity[y]", "demographic_parity[z]"]
    assert cons[1].partition == (-1, -1, 0, 1, -1, -1)
    assert cons[1].partition_names == ("a", "b")


# --- the K-class Lagrangian against plain loops ----------------------------------------------


def _plain_class_rates(probs, target, groups, rate, c):
    """Per group: (rate value, denominator) of class c's one-vs-rest problem; ``probs`` (N, K)."""
    cond = _CONDITION[rate]
    out = []
    for g in range(G):
        idx = [i for i in range(len(target)) if int(groups[i]) == g
               and (cond is None or (int(target[i]) == c) == (cond == 1))]
        den = len(idx)
        num = sum(probs[i, c] for i in idx) if idx else probs.new_zeros(())
        out.append((num / den if den else probs.new_zeros(()), den))
    return out


def _plain_violations_k(probs, target, groups, definitions, tolerance, min_count):
    values, valid = [], []
    for definition in definitions:
        for c in range(K):
            for rate in {"demographic_parity": ["selection_rate"], "equalized_odds": ["true_positive_rate", "false_positive_rate"],
                         "equal_opportunity": ["true_positive_rate"]}[definition]:
                per = _plain_class_rates(probs, target, groups, rate, c)
                for g, h in itertools.permutations(range(G), 2):
                    ok = per[g][1] >= max(min_count, 1e-300) and per[h][1] >= max(min_count, 1e-300)
                    values.append((per[g][0] - per[h][0] - tolerance) * ok)
                    valid.append(ok)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]), torch.tensor(valid)


@pytest.mark.parametrize(("definitions", "min_count"), [(["demographic_parity"], 1), (["equalized_odds", "demographic_parity"], 30)])
def test_k_class_dual_step_matches_plain_loop(definitions, min_count):
    logits, target, groups = _batch()
    method = Lagrangian(G, num_classes=K, constraints=definitions, tolerance=0.03, min_count=min_count,
                        steps_per_epoch=1, dual_lr=0.5, dual_damping=1.0, multiplier_max=10.0)
    assert method.multipliers.ema_decay == 0.0  # running sums = the batch
    method.train()
    method(logits, target, groups)
    method.after_optimizer_step()
    hard = torch.nn.functional.one_hot(logits.argmax(1), K).double()  # hard one-vs-rest predictions
    expected, valid = _plain_violations_k(hard, target, groups, definitions, 0.03, min_count)
    torch.testing.assert_close(method.hard_violations(), expected)
    integral = (0.5 * expected).clamp(0, 10)
    torch.testing.assert_close(method.multipliers.multipliers, ((integral + expected).clamp(0, 10) * valid).float())
    if min_count > 1:
        assert not valid.all()  # some (class, group) cells of the TPR are too thin
    assert (method.multipliers.multipliers > 0).any()
    names = method.constraint_names
    assert len(names) == len(expected)
    assert names[0] == f"{definitions[0]}[class_0]/{'selection_rate' if definitions[0] == 'demographic_parity' else 'true_positive_rate'}/group_0-group_1"
    table = method.state_table()
    assert list(table.index) == names


@pytest.mark.parametrize("definitions", [["demographic_parity"], ["equalized_odds", "equal_opportunity"]])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_k_class_linear_term_equals_explicit_sum(definitions, temperature):
    logits, target, groups = _batch(n=120, seed=2)
    target[groups == 1] = 0  # class 1..3 have no positives in group 1: those TPRs are undefined
    method = Lagrangian(G, num_classes=K, constraints=definitions, tolerance=0.02, temperature=temperature)
    gen = torch.Generator().manual_seed(0)
    method.multipliers.multipliers.copy_(torch.rand(method.multipliers.multipliers.shape, generator=gen) * 3)
    method.eval()
    x = logits.clone().requires_grad_(True)
    term = method(x, target, groups)
    (grad,) = torch.autograd.grad(term, x)
    z = logits.clone().requires_grad_(True)
    probs = torch.softmax(z / temperature, 1)
    values, _ = _plain_violations_k(probs, target, groups, definitions, 0.02, 0)
    explicit = (method.multipliers.multipliers.double() * values).sum()
    (grad_explicit,) = torch.autograd.grad(explicit, z)
    torch.testing.assert_close(term, explicit)
    torch.testing.assert_close(grad, grad_explicit)
    torch.autograd.gradcheck(lambda y: method(y, target[:40], groups[:40]), (logits[:40].clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_k_class_lagrangian_refusals():
    with pytest.raises(ValueError, match="accuracy_parity is binary only"):
        Lagrangian(G, num_classes=K, constraints="accuracy_parity")
    with pytest.raises(ValueError, match=r"`class_names` needs `num_classes`"):
        Lagrangian(G, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"`target` must be class indices < num_classes=4"):
        Lagrangian(G, num_classes=K)(torch.randn(5, K), torch.tensor([0, 1, 2, 4, 0]), torch.zeros(5, dtype=torch.long))


def test_k_class_lagrangian_in_the_module_lowers_dp():
    gen = torch.Generator().manual_seed(0)
    n = 1600
    g = (torch.rand(n, generator=gen) < 0.5).long()
    x = torch.randn(n, 4, generator=gen)
    x[:, 3] += 2.0 * g
    y = (torch.stack((x[:, 0], x[:, 1], x[:, 2] + 2.0 * g), 1) + 0.3 * torch.randn(n, 3, generator=gen)).argmax(1)
    train = DataLoader(TensorDataset(x[:1200], y[:1200], g[:1200]), batch_size=100, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[1200:], y[1200:], g[1200:]), batch_size=400)
    results = {}
    for mode, kwargs in (("erm", {}), ("lagrangian", {"tolerance": 0.05})):
        pl.seed_everything(0, verbose=False)
        net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        module = FairLightningModule(net, num_groups=2, mode=mode, lr=2e-2, class_names=["a", "b", "c"], **kwargs)
        trainer = pl.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(module, train, val)
        results[mode] = (float(trainer.callback_metrics["val/dp_difference"]), float(trainer.callback_metrics["val/accuracy"]))
    assert "demographic_parity[c]/selection_rate/group_1-group_0" in module.constraint_names
    assert results["erm"][0] > 0.2
    assert results["lagrangian"][0] < 0.5 * results["erm"][0]
    assert results["lagrangian"][1] > 0.5
