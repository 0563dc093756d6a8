import pytest
import torch

from fair_lightning.functional import (
    GroupSums,
    calibration_sums,
    confusion_counts,
    group_sums,
    grouped_sum,
    hard_predictions,
    label_cells,
    masked_divide,
    soft_predictions,
)


def _loop_reference(preds, target, groups, num_groups):
    out = torch.zeros(4, num_groups, dtype=torch.float64)
    for i in range(len(preds)):
        g = int(groups[i])
        out[:, g] += torch.tensor([1.0, float(target[i]), float(preds[i]), float(preds[i] * target[i])], dtype=torch.float64)
    return out


def test_group_sums_matches_loop():
    gen = torch.Generator().manual_seed(0)
    preds = torch.rand(500, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (500,), generator=gen)
    groups = torch.randint(0, 7, (500,), generator=gen)
    sums = group_sums(preds, target, groups, 9)  # two empty groups
    torch.testing.assert_close(sums.stack(), _loop_reference(preds, target, groups, 9))
    assert sums.count[7:].sum() == 0


@pytest.mark.parametrize("pred_dtype", [torch.bool, torch.long, torch.float32])
def test_confusion_counts_give_the_hard_group_sums(pred_dtype):
    gen = torch.Generator().manual_seed(1)
    hard = torch.rand(700, generator=gen) > 0.4
    target = torch.randint(0, 2, (700,), generator=gen).float()
    groups = torch.randint(0, 5, (700,), generator=gen)
    counts = confusion_counts(hard.to(pred_dtype), target, groups, 6)  # group 5 empty
    assert counts.shape == (6, 2, 2) and counts.dtype == torch.float64
    for g in range(6):
        for y in range(2):
            for h in range(2):
                assert counts[g, y, h] == ((groups == g) & (target == y) & (hard == h)).sum()
    torch.testing.assert_close(GroupSums.from_confusion(counts).stack(), _loop_reference(hard, target, groups, 6))
    # precomputed cells give the same counts; leading dimensions are kept by from_confusion
    cells = label_cells(target, groups)
    assert torch.equal(cells, 2 * groups + target.long())
    assert torch.equal(confusion_counts(hard, None, None, 6, cells=cells), counts)
    batched = GroupSums.from_confusion(torch.stack((counts, 2 * counts)))
    torch.testing.assert_close(batched.stack()[:, 1], 2 * GroupSums.from_confusion(counts).stack())


def test_weighted_group_sums():
    preds = torch.tensor([0.2, 0.9, 0.6], dtype=torch.float64)
    target = torch.tensor([0, 1, 1])
    groups = torch.tensor([0, 0, 1])
    weight = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    sums = group_sums(preds, target, groups, 2, weight=weight)
    torch.testing.assert_close(sums.count, torch.tensor([3.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(sums.pred, torch.tensor([0.4 + 0.9, 1.8], dtype=torch.float64))
    torch.testing.assert_close(sums.pred_label, torch.tensor([0.9, 1.8], dtype=torch.float64))


def test_absent_group_is_masked_without_nan_and_with_zero_gradient():
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 0, 1, 0, 1, 1])
    groups = torch.tensor([0, 0, 0, 2, 2, 2])
    sums = group_sums(soft_predictions(logits), target, groups, 3)
    for rate in (sums.selection_rate(), sums.true_positive_rate(), sums.false_positive_rate(), sums.accuracy()):
        assert torch.isfinite(rate.value).all()
        assert not bool(rate.valid[1])
    rate = sums.selection_rate()
    rate.value[1].backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_rates_from_sums():
    preds = torch.tensor([1.0, 0, 1, 1, 0, 0])
    target = torch.tensor([1, 1, 0, 1, 0, 0])
    groups = torch.zeros(6, dtype=torch.long)
    s = group_sums(preds, target, groups, 1)
    assert s.selection_rate().value.item() == pytest.approx(0.5)
    assert s.true_positive_rate().value.item() == pytest.approx(2 / 3)
    assert s.false_positive_rate().value.item() == pytest.approx(1 / 3)
    assert s.false_negative_rate().value.item() == pytest.approx(1 / 3)
    assert s.true_negative_rate().value.item() == pytest.approx(2 / 3)
    assert s.accuracy().value.item() == pytest.approx(4 / 6)
    assert s.rate("true_positive_rate").value.item() == pytest.approx(2 / 3)
    assert s.rate("false_positive_rate").value.item() == pytest.approx(1 / 3)
    assert s.base_rate().value.item() == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="unknown rate 'recall'"):
        s.rate("recall")


def test_rate_table_coefficients_match_the_definitions():
    """Each rate of the one table, from its coefficients, equals its plain definition on random
    hard and soft predictions (numerator and denominator as sums over samples)."""
    from fair_lightning.functional import group_sums
    from fair_lightning.functional._rates import DEFINITIONS, RATES

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (500,), generator=gen).double()
    g = torch.randint(0, 3, (500,), generator=gen)
    plain = {
        "selection_rate": (lambda p: p, lambda: torch.ones_like(y)),
        "true_positive_rate": (lambda p: p * y, lambda: y),
        "false_positive_rate": (lambda p: p * (1 - y), lambda: 1 - y),
        "false_negative_rate": (lambda p: (1 - p) * y, lambda: y),
        "true_negative_rate": (lambda p: (1 - p) * (1 - y), lambda: 1 - y),
        "accuracy": (lambda p: p * y + (1 - p) * (1 - y), lambda: torch.ones_like(y)),
        "base_rate": (lambda p: y, lambda: torch.ones_like(y)),
    }
    assert set(plain) == set(RATES) and all(set(r) <= set(RATES) for r in DEFINITIONS.values())
    for p in (torch.rand(500, generator=gen, dtype=torch.float64), (torch.rand(500, generator=gen) < 0.4).double()):
        sums = group_sums(p, y, g, 3)
        for name, (num, den) in plain.items():
            expected = torch.stack([num(p)[g == k].sum() / den()[g == k].sum() for k in range(3)])
            torch.testing.assert_close(sums.rate(name).value, expected, msg=name)


def test_stack_roundtrip_and_total():
    s = GroupSums(*torch.arange(12.0).reshape(4, 3))
    assert torch.equal(GroupSums.from_stacked(s.stack()).stack(), s.stack())
    torch.testing.assert_close(s.total().stack()[:, 0], s.stack().sum(1))


def test_grouped_sum_matrix_and_gradcheck():
    values = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    groups = torch.randint(0, 4, (20,))
    torch.autograd.gradcheck(lambda v: grouped_sum(v, groups, 4), (values,))


def test_soft_predictions_temperature():
    logits = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(soft_predictions(logits, 1.0), torch.sigmoid(logits))
    sharp = soft_predictions(logits, 0.01)
    assert torch.allclose(sharp, hard_predictions(logits, 0.0) + (logits == 0) * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        soft_predictions(logits, 0.0)


def test_masked_divide():
    rate = masked_divide(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert rate.value.tolist() == [0.0, 0.5] and rate.valid.tolist() == [False, True]


def test_calibration_sums_bins():
    probs = torch.tensor([0.0, 0.05, 0.5, 0.99, 1.0])
    target = torch.tensor([0, 0, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 1])
    sums = calibration_sums(probs, target, groups, 2, n_bins=10)
    assert sums.shape == (2, 10, 3)
    assert sums[0, 0, 0] == 2 and sums[1, 5, 0] == 1 and sums[1, 9, 0] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preds": torch.rand(4), "target": torch.ones(3, dtype=torch.long)}, "`target` must have the same length"),
        ({"groups": torch.tensor([0.0, 1.0, 0.0, 1.0])}, "`groups` must be an integer tensor"),
        ({"groups": torch.tensor([0, -1, 0, 1])}, "`groups` must be non-negative.*-1"),
        ({"groups": torch.tensor([0, 5, 0, 1])}, "num_groups=2, got maximum 5"),
        ({"target": torch.tensor([0, 2, 1, 1])}, "`target` must contain only 0 and 1.*2"),
        ({"preds": torch.tensor([0.1, float("nan"), 0.3, 0.4])}, "`preds` contains NaN"),
        ({"preds": torch.rand(4, 2)}, r"`preds` must have shape \(N,\)"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"preds": torch.rand(4), "target": torch.tensor([0, 1, 1, 0]), "groups": torch.tensor([0, 1, 0, 1])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        group_sums(args["preds"], args["target"], args["groups"], 2)
