import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, selection_rate

from fair_lightning.functional import (
    GroupSums,
    bootstrap_group_sums,
    bootstrap_interval,
    constraint_holds,
    group_rate_intervals,
    hard_group_sums,
    max_min_difference_interval,
    newcombe_interval,
    wilson_interval,
)

SIMS = 2000


def _binomial(n, p, gen, size=SIMS):
    return torch.binomial(torch.full((size,), float(n), dtype=torch.float64), torch.full((size,), p, dtype=torch.float64), generator=gen)


@pytest.mark.parametrize("n, p", [(200, 0.3), (60, 0.1), (1000, 0.5)])
def test_wilson_covers_at_its_nominal_level(n, p):
    gen = torch.Generator().manual_seed(0)
    _, low, high = wilson_interval(_binomial(n, p, gen), torch.tensor(float(n)))
    coverage = float(((low <= p) & (p <= high)).double().mean())
    assert 0.93 <= coverage <= 0.97, coverage


def test_wilson_matches_statsmodels_formula_and_edge_cases():
    est, low, high = wilson_interval(torch.tensor([0.0, 5.0, 10.0, 0.0]), torch.tensor([10.0, 10.0, 10.0, 0.0]))
    # reference values: statsmodels proportion_confint(method="wilson")
    assert low.tolist()[:3] == pytest.approx([0.0, 0.236593, 0.722467], abs=1e-5)
    assert high.tolist()[:3] == pytest.approx([0.277533, 0.763407, 1.0], abs=1e-5)
    assert (low[3], high[3], est[3]) == (0.0, 1.0, 0.0)  # no data: anything is possible


def test_newcombe_covers_the_difference_at_its_nominal_level():
    gen = torch.Generator().manual_seed(1)
    n1, p1, n2, p2 = 150, 0.3, 250, 0.4
    _, low, high = newcombe_interval(_binomial(n1, p1, gen), torch.tensor(n1), _binomial(n2, p2, gen), torch.tensor(n2))
    coverage = float(((low <= p1 - p2) & (p1 - p2 <= high)).double().mean())
    assert 0.93 <= coverage <= 0.97, coverage
    # Newcombe's worked example (1998, table II, 56/70 vs 48/80): 0.0524 to 0.3339
    _, lo, hi = newcombe_interval(torch.tensor(56.0), torch.tensor(70.0), torch.tensor(48.0), torch.tensor(80.0))
    assert (float(lo), float(hi)) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_max_min_difference_intervals_cover_the_true_difference():
    gen = torch.Generator().manual_seed(2)
    rates, sizes = [0.2, 0.35, 0.5], [120, 300, 200]
    truth = max(rates) - min(rates)
    num = torch.stack([_binomial(n, p, gen) for n, p in zip(sizes, rates)], 1)
    den = torch.tensor(sizes, dtype=torch.float64)
    covered = {"pair": 0, "conservative": 0}
    for i in range(SIMS):
        for method in covered:
            interval, _ = max_min_difference_interval(num[i], den, method=method)
            covered[method] += bool(interval.low <= truth <= interval.high)
    pair, conservative = covered["pair"] / SIMS, covered["conservative"] / SIMS
    assert 0.93 <= pair <= 0.97, pair
    assert conservative >= 0.95, conservative


def test_max_min_pair_is_the_groups_setting_the_estimate():
    interval, pair = max_min_difference_interval(torch.tensor([10.0, 40.0, 25.0, 0.0]), torch.tensor([100.0, 100.0, 100.0, 0.0]))
    assert pair == (1, 0)
    assert float(interval.estimate) == pytest.approx(0.3)
    assert 0 < float(interval.low) < 0.3 < float(interval.high)
    single, pair = max_min_difference_interval(torch.tensor([3.0, 0.0]), torch.tensor([10.0, 0.0]))
    assert pair == (-1, -1) and float(single.high) == 0.0


def test_bootstrap_matches_fairlearn_metricframe_and_covers():
    gen = torch.Generator().manual_seed(3)
    n = 2000
    groups = torch.randint(0, 2, (n,), generator=gen)
    preds = (torch.rand(n, generator=gen) < 0.3 + 0.2 * groups).double()
    target = torch.randint(0, 2, (n,), generator=gen)
    ours = bootstrap_interval(preds, target, groups, 2, "selection_rate", n_boot=500, ci_quantiles=(0.025, 0.975), seed=0)
    frame = MetricFrame(
        metrics=selection_rate, y_true=target.numpy(), y_pred=preds.numpy(), sensitive_features=groups.numpy(),
        n_boot=500, ci_quantiles=[0.025, 0.975], random_state=0,
    )  # fmt: skip
    fl_low, fl_high = (frame.by_group_ci[i].to_numpy().ravel() for i in range(2))
    assert ours.estimate.numpy() == pytest.approx(frame.by_group.to_numpy().astype(float), abs=1e-12)
    # different random streams: the quantiles agree to Monte-Carlo error (sd of a 2.5% quantile ~ 0.003 here)
    assert ours.low.numpy() == pytest.approx(fl_low, abs=0.01)
    assert ours.high.numpy() == pytest.approx(fl_high, abs=0.01)
    again = bootstrap_interval(preds, target, groups, 2, "selection_rate", n_boot=500, seed=0)
    assert torch.equal(again.low, ours.low)  # seeded


def test_bootstrap_covers_at_its_nominal_level():
    p, n, sims = 0.3, 300, 1000
    gen = torch.Generator().manual_seed(4)
    hits = 0
    for i in range(sims):
        preds = (torch.rand(n, generator=gen) < p).double()
        interval = bootstrap_interval(preds, preds, torch.zeros(n, dtype=torch.long), 1, n_boot=200, seed=i, method="poisson")
        hits += bool(interval.low[0] <= p <= interval.high[0])
    assert 0.92 <= hits / sims <= 0.97, hits / sims


def test_bootstrap_group_sums_shapes_and_totals():
    preds = torch.tensor([1.0, 0.0, 1.0, 1.0])
    sums = bootstrap_group_sums(preds, torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), 2, n_boot=7, seed=1)
    assert sums.count.shape == (7, 2)
    assert torch.equal(sums.count.sum(1), torch.full((7,), 4.0, dtype=torch.float64))  # multinomial: N rows each


def test_constraint_verdicts():
    sums = hard_group_sums(torch.tensor([1.0] * 300 + [0.0] * 700 + [1.0] * 310 + [0.0] * 690), torch.zeros(2000), torch.tensor([0] * 1000 + [1] * 1000), 2)
    assert constraint_holds(sums, "demographic_parity", 0.06).status == "holds"
    assert constraint_holds(sums, "demographic_parity", 0.0).status == "uncertain"
    big = GroupSums(torch.tensor([500.0, 500.0]), torch.tensor([200.0, 250.0]), torch.tensor([100.0, 300.0]), torch.tensor([80.0, 200.0]))
    verdict = constraint_holds(big, "equalized_odds", 0.05)
    assert verdict.status == "violated" and verdict.interval.low > 0.05
    assert verdict.groups == (1, 0)
    intervals = group_rate_intervals(big, "true_positive_rate")
    assert intervals.estimate.tolist() == pytest.approx([0.4, 0.8])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: wilson_interval(torch.tensor(3.0), torch.tensor(2.0)), "0 <= num <= den"),
        (lambda: wilson_interval(torch.tensor(1.0), torch.tensor(2.0), confidence=95), "`confidence` must be a number in"),
        (lambda: max_min_difference_interval(torch.ones(2), torch.ones(2), method="bonf"), "`method` must be one of"),
        (lambda: constraint_holds(GroupSums(*torch.ones(4, 2)), "parity", 0.1), "`definition` must be one of"),
        (lambda: bootstrap_interval(torch.ones(3), torch.ones(3), torch.zeros(3, dtype=torch.long), 1, "x"), "`statistic` must be one of"),
        (lambda: bootstrap_group_sums(torch.ones(3), torch.ones(3), torch.zeros(3, dtype=torch.long), 1, n_boot=0), "`n_boot` must be an int >= 1"),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
