import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score
from torchmetrics.classification import BinaryCalibrationError

from fair_lightning import functional as F
from fair_lightning.metrics import (
    DemographicParityDifference,
    DemographicParityRatio,
    EqualizedOddsDifference,
    EqualOpportunityDifference,
    GroupCalibrationError,
    GroupRates,
    fairness_metrics,
)

NUM_GROUPS = 6
TOL = 1e-6


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 3000
    groups = rng.integers(0, NUM_GROUPS, n)
    target = rng.integers(0, 2, n)
    # group-dependent scores so that the disparities are far from zero
    probs = np.clip(rng.beta(2, 2, n) + 0.05 * groups - 0.1 + 0.2 * target, 0, 1)
    return torch.tensor(probs), torch.tensor(target), torch.tensor(groups)


def _batches(probs, target, groups, drop_groups_in_first=(0, 3)):
    """Split into uneven batches; the first batches lack some groups entirely."""
    mask = ~np.isin(groups.numpy(), drop_groups_in_first)
    first = np.flatnonzero(mask)[:400]
    rest = np.setdiff1d(np.arange(len(probs)), first)
    chunks = [first[:150], first[150:]] + np.array_split(rest, 7)
    for idx in chunks:
        idx = torch.as_tensor(idx)
        yield probs[idx], target[idx], groups[idx]


def _fairlearn_frame(probs, target, groups):
    y_pred = (probs.numpy() > 0.5).astype(int)
    return MetricFrame(
        metrics={
            "count": count,
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
            "false_negative_rate": false_negative_rate,
            "accuracy": accuracy_score,
        },
        y_true=target.numpy(),
        y_pred=y_pred,
        sensitive_features=pd.Series(groups.numpy(), name="group"),
    )


def test_group_rates_match_metricframe_over_batches_with_missing_groups(data):
    probs, target, groups = data
    metric = GroupRates(NUM_GROUPS)
    for batch in _batches(probs, target, groups):
        metric.update(*batch)
    result = metric.compute()
    frame = _fairlearn_frame(probs, target, groups).by_group
    for rate in frame.columns:
        for g in range(NUM_GROUPS):
            assert result[f"{rate}/group_{g}"].item() == pytest.approx(frame.loc[g, rate], abs=TOL), (rate, g)
    # the DataFrame view: MetricFrame.by_group's layout, the group names as index
    table = metric.to_frame()
    assert list(table.index) == [f"group_{g}" for g in range(NUM_GROUPS)] and table.index.name == "group"
    assert table["count"].dtype == np.int64
    np.testing.assert_allclose(table[list(frame.columns)].to_numpy(), frame.to_numpy(dtype=float), atol=TOL)


def test_group_rates_frame_has_nan_for_undefined_rates():
    metric = GroupRates(3, group_names=["a", "b", "c"])
    metric.update(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 0, 0]), torch.tensor([0, 0, 1]))
    table = metric.to_frame()
    assert table.loc["c", "count"] == 0 and table.loc["c"].drop("count").isna().all()
    assert np.isnan(table.loc["b", "true_positive_rate"]) and table.loc["b", "false_positive_rate"] == 1.0


def test_disparities_match_fairlearn(data):
    probs, target, groups = data
    y_pred = (probs.numpy() > 0.5).astype(int)
    sf = groups.numpy()
    metrics = {
        DemographicParityDifference(NUM_GROUPS): demographic_parity_difference(target.numpy(), y_pred, sensitive_features=sf),
        DemographicParityRatio(NUM_GROUPS): demographic_parity_ratio(target.numpy(), y_pred, sensitive_features=sf),
        EqualizedOddsDifference(NUM_GROUPS): equalized_odds_difference(target.numpy(), y_pred, sensitive_features=sf),
        EqualizedOddsDifference(NUM_GROUPS, agg="mean"): equalized_odds_difference(
            target.numpy(), y_pred, sensitive_features=sf, agg="mean"
        ),
        EqualOpportunityDifference(NUM_GROUPS): MetricFrame(
            metrics=true_positive_rate, y_true=target.numpy(), y_pred=y_pred, sensitive_features=sf
        ).difference(),
    }
    for metric, expected in metrics.items():
        for batch in _batches(probs, target, groups):
            metric.update(*batch)
        assert metric.compute().item() == pytest.approx(expected, abs=TOL), type(metric).__name__
        assert expected > 0.02  # the comparison is not trivially 0 == 0


def test_accumulation_equals_single_call(data):
    probs, target, groups = data
    one, many = fairness_metrics(NUM_GROUPS), fairness_metrics(NUM_GROUPS)
    one.update(probs, target, groups)
    for batch in _batches(probs, target, groups):
        many.update(*batch)
    a, b = one.compute(), many.compute()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True, atol=1e-12, rtol=0)


def test_functional_twins_equal_classes(data):
    probs, target, groups = data
    rates = F.group_rates(probs, target, groups, NUM_GROUPS)
    metric = GroupRates(NUM_GROUPS)
    metric.update(probs, target, groups)
    for key, value in metric.compute().items():
        rate, g = key.split("/group_")
        assert rates[rate][int(g)].item() == pytest.approx(value.item())
    assert F.demographic_parity_difference(probs, groups, NUM_GROUPS).item() == pytest.approx(
        DemographicParityDifference(NUM_GROUPS)(probs, None, groups).item()
    )
    assert F.equalized_odds_difference(probs, target, groups, NUM_GROUPS).item() == pytest.approx(
        EqualizedOddsDifference(NUM_GROUPS)(probs, target, groups).item()
    )


def test_logits_and_label_inputs(data):
    probs, target, groups = data
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    a = DemographicParityDifference(NUM_GROUPS)(probs, target, groups)
    b = DemographicParityDifference(NUM_GROUPS, from_logits=True)(logits, target, groups)
    c = DemographicParityDifference(NUM_GROUPS)((probs > 0.5).long(), target, groups)
    assert a.item() == pytest.approx(b.item()) == pytest.approx(c.item())
    with pytest.raises(ValueError, match="from_logits=True"):
        DemographicParityDifference(NUM_GROUPS)(logits * 5, target, groups)


def test_stable_keys_with_names_and_empty_group():
    names = ["sex=Female", "sex=Male", "sex=Other"]
    metric = GroupRates(3, group_names=names)
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]), torch.tensor([0, 1]))
    result = metric.compute()
    assert set(result) == {f"{r}/{n}" for r in F._fairness._group_rates_compute(metric.group_sums) for n in names}
    assert torch.isnan(result["selection_rate/sex=Other"])  # undefined, not a made-up 0
    assert result["count/sex=Other"] == 0


def test_group_calibration_error_matches_torchmetrics_per_group(data):
    probs, target, groups = data
    metric = GroupCalibrationError(NUM_GROUPS, n_bins=10)
    for batch in _batches(probs, target, groups):
        metric.update(*batch)
    result = metric.compute()
    per_group = []
    for g in range(NUM_GROUPS):
        m = groups == g
        ref = BinaryCalibrationError(n_bins=10, norm="l1")(probs[m].float(), target[m]).item()
        per_group.append(ref)
        assert result[f"calibration_error/group_{g}"].item() == pytest.approx(ref, abs=1e-5)
    assert result["calibration_error_max"].item() == pytest.approx(max(per_group), abs=1e-5)
    assert result["calibration_error_disparity"].item() == pytest.approx(max(per_group) - min(per_group), abs=1e-5)
    # memory constant in N: the only state is (G, bins, 3)
    assert [tuple(s.shape) for s in metric.metric_state.values()] == [(NUM_GROUPS, 10, 3)]


def test_group_calibration_error_max_norm():
    probs = torch.tensor([0.1, 0.15, 0.9, 0.95])
    target = torch.tensor([0, 1, 1, 1])
    result = GroupCalibrationError(1, n_bins=10, norm="max")(probs, target, torch.zeros(4, dtype=torch.long))
    # bin [0.1, 0.2): mean probability 0.125, mean label 0.5; bin [0.9, 1]: 0.925 vs 1
    assert result["calibration_error/group_0"].item() == pytest.approx(0.5 - 0.125)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: GroupRates(0), "`num_groups` must be a positive int, got 0"),
        (lambda: GroupRates(2, threshold=1.5), "`threshold`"),
        (lambda: GroupRates(2, group_names=["a"]), "`group_names` must have num_groups=2"),
        (lambda: EqualizedOddsDifference(2, agg="max"), "`agg` must be one of"),
        (lambda: GroupCalibrationError(2, n_bins=0), "`n_bins`"),
        (lambda: GroupCalibrationError(2, norm="l2"), "`norm` must be one of"),
    ],
)
def test_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_update_inputs():
    metric = GroupRates(2)
    with pytest.raises(ValueError, match="`groups` must be < num_groups=2, got maximum 2"):
        metric.update(torch.rand(3), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="`target` must contain only 0 and 1"):
        metric.update(torch.rand(3), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="`preds` contains NaN"):
        metric.update(torch.tensor([0.1, float("nan"), 0.2]), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="`groups` must have the same length"):
        metric.update(torch.rand(3), torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`groups` must be an integer tensor"):
        metric.update(torch.rand(3), torch.tensor([0, 1, 1]), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="`preds` must be probabilities in"):
        GroupCalibrationError(2).update(torch.tensor([0.1, 1.2]), torch.tensor([0, 1]), torch.tensor([0, 1]))


def _ddp_metrics(rank, world_size, module):
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(1001, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (1001,), generator=gen)
    groups = torch.randint(0, 5, (1001,), generator=gen)
    groups[(groups == 4) & (torch.arange(1001) % 2 == 0)] = 3  # rank 0 never sees group 4
    idx = torch.arange(rank, 1001, world_size)  # uneven shards
    metrics = fairness_metrics(5)
    metrics.update(probs[idx], target[idx], groups[idx])
    return {k: v.clone() for k, v in metrics.compute().items()}


@pytest.mark.ddp
def test_metrics_under_ddp_equal_single_process(tmp_path):
    results = run_on_ranks(_ddp_metrics, tmp_path)
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(1001, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (1001,), generator=gen)
    groups = torch.randint(0, 5, (1001,), generator=gen)
    groups[(groups == 4) & (torch.arange(1001) % 2 == 0)] = 3
    single = fairness_metrics(5)
    single.update(probs, target, groups)
    expected = single.compute()
    for result in results:
        assert result.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(result[key], expected[key], equal_nan=True)


from tests._ddp import run_on_ranks  # noqa: E402
