"""The constraint benchmark's reference for check (a): what sampling noise alone leaves."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_constraints.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_constraints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _normal_two_sided(z):
    return math.erf(z / math.sqrt(2))


def test_ideal_hold_two_large_groups_matches_normal_theory(bench):
    # two large equal groups at rate 0.5, tolerance 0: test noise only, the difference is within
    # 2 of its standard errors with probability P(|Z| <= 2); validation noise of the same size
    # doubles the variance: P(|Z| <= 2 / sqrt(2))
    val = [[5_000, 5_000], [5_000, 5_000]]
    test = [[5_000, 5_000], [5_000, 5_000]]
    test_only = bench.ideal_hold_probability(val, test, "demographic_parity", 0.0, [0.5], val_scale=math.inf)
    both = bench.ideal_hold_probability(val, test, "demographic_parity", 0.0, [0.5])
    assert test_only == pytest.approx(_normal_two_sided(2.0), abs=0.006)
    assert both == pytest.approx(_normal_two_sided(2.0 / math.sqrt(2.0)), abs=0.008)
    # a validation split four times as large halves the validation noise's standard deviation
    larger = bench.ideal_hold_probability(val, test, "demographic_parity", 0.0, [0.5], val_scale=4.0)
    assert larger == pytest.approx(_normal_two_sided(2.0 / math.sqrt(1.25)), abs=0.008)


def test_ideal_hold_counts_the_definition_rows_and_judged_groups(bench):
    # equalized odds judges TPR on the positives and FPR on the negatives: with many negatives
    # and few positives the TPR's noise dominates, so holding is less likely than for DP
    val = [[20_000, 200], [20_000, 200]]
    test = [[20_000, 200], [20_000, 200]]
    dp = bench.ideal_hold_probability(val, test, "demographic_parity", 0.02, [0.3])
    eo = bench.ideal_hold_probability(val, test, "equalized_odds", 0.02, [0.6, 0.2])
    assert dp > 0.95 and eo < dp
    # a group below the minimum count in the test split is not judged: with one judged group left
    # there is no difference, and (a) holds
    tiny = [[5, 3], [4_000, 4_000]]
    assert bench.ideal_hold_probability(tiny, tiny, "demographic_parity", 0.0, [0.5]) == 1.0
    # a wide tolerance holds whatever the noise
    assert bench.ideal_hold_probability(val, test, "demographic_parity", 1.0, [0.5]) == 1.0
