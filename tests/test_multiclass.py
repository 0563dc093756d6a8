"""Multiclass and regression group statistics: agreement with fairlearn, torchmetrics and scipy,
accumulation, DDP, and bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    mean_prediction,
    selection_rate,
    true_positive_rate,
)
from scipy.stats import ks_2samp
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from fair_lightning.functional import _multiclass as MF
from fair_lightning.functional import _regression as RF
from fair_lightning.metrics import DemographicParityDifference, GroupRates
from fair_lightning.metrics_multiclass import (
    MulticlassAccuracyDifference,
    MulticlassDemographicParityDifference,
    MulticlassDemographicParityRatio,
    MulticlassEqualizedOddsDifference,
    MulticlassEqualOpportunityDifference,
    MulticlassGroupCalibrationError,
    MulticlassGroupRates,
    multiclass_fairness_metrics,
)
from fair_lightning.metrics_regression import (
    GroupLossDifference,
    PredictionDistributionGap,
    RegressionDemographicParityDifference,
    RegressionGroupStatistics,
    regression_fairness_metrics,
)

G, K = 7, 5  # group 6 never occurs; class 4 never occurs as a label; class 3 is never predicted
TOL = 1e-6


def _make(seed=0, n=4000):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, G - 1, (n,), generator=gen)
    target = torch.randint(0, K - 1, (n,), generator=gen)
    logits = torch.randn(n, K, generator=gen, dtype=torch.float64)
    logits[torch.arange(n), target] += 1.0 + 0.15 * groups  # accuracy grows with the group
    logits[:, 0] += 0.1 * groups  # selection of class 0 grows with the group
    logits[:, 3] -= 100.0  # never the argmax
    return logits, target, groups


@pytest.fixture
def data():
    return _make()


def _batches(logits, target, groups):
    """Uneven batches; the first lack groups 0 and 3 and classes 1 and 2 entirely."""
    g, y = groups.numpy(), target.numpy()
    mask = ~np.isin(g, (0, 3)) & ~np.isin(y, (1, 2))
    first = np.flatnonzero(mask)[:300]
    rest = np.setdiff1d(np.arange(len(target)), first)
    for idx in [first[:100], first[100:]] + np.array_split(rest, 6):
        idx = torch.as_tensor(idx)
        yield logits[idx], target[idx], groups[idx]


def _frame(y_true, y_pred, groups):
    return MetricFrame(
        metrics={
            "count": count,
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
            "false_negative_rate": false_negative_rate,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=pd.Series(groups, name="group"),
    )


def test_group_rates_match_metricframe_one_vs_rest_over_batches(data):
    logits, target, groups = data
    metric = MulticlassGroupRates(G, K)
    for batch in _batches(*data):
        metric.update(*batch)
    result = metric.compute()
    y, yhat, g = target.numpy(), logits.argmax(1).numpy(), groups.numpy()
    present = sorted(set(g.tolist()))
    assert present == list(range(G - 1))
    checked = undefined = 0
    for c in range(K):
        frame = _frame((y == c).astype(int), (yhat == c).astype(int), g).by_group
        for gi in present:
            assert result[f"count/group_{gi}"].item() == frame.loc[gi, "count"]
            for rate in ("selection_rate", "true_positive_rate", "false_positive_rate", "false_negative_rate"):
                ours = result[f"{rate}/class_{c}/group_{gi}"].item()
                positives = int(((y == c) & (g == gi)).sum())
                if rate in ("true_positive_rate", "false_negative_rate") and positives == 0:
                    assert np.isnan(ours), (rate, c, gi)  # fairlearn says 0 here: undefined, not 0
                    undefined += 1
                else:
                    assert ours == pytest.approx(frame.loc[gi, rate], abs=TOL), (rate, c, gi)
                    checked += 1
        # the absent group: every rate undefined
        assert np.isnan(result[f"selection_rate/class_{c}/group_{G - 1}"].item())
    assert checked > 0 and undefined == 2 * (G - 1)  # class 4: no positives anywhere
    acc = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=yhat, sensitive_features=g).by_group
    for gi in present:
        assert result[f"accuracy/group_{gi}"].item() == pytest.approx(acc.loc[gi], abs=TOL)
    assert np.isnan(result[f"accuracy/group_{G - 1}"].item()) and result[f"count/group_{G - 1}"].item() == 0
    # class 3 is never predicted: its selection rate is 0 in every present group
    assert all(result[f"selection_rate/class_3/group_{gi}"].item() == 0 for gi in present)
    table = metric.to_frame()
    assert table.index.names == ["class", "group"] and table.shape == (K * G, 4)
    assert table.loc[("class_1", "group_2"), "true_positive_rate"] == result["true_positive_rate/class_1/group_2"].item()


def test_differences_match_fairlearn_per_class(data):
    logits, target, groups = data
    y, yhat, g = target.numpy(), logits.argmax(1).numpy(), groups.numpy()
    dp = MF.multiclass_demographic_parity_difference(logits, groups, G, K, average=None)
    dpr = MF.multiclass_demographic_parity_ratio(logits, groups, G, K, average=None)
    eo = MF.multiclass_equalized_odds_difference(logits, target, groups, G, K, average=None)
    eo_mean = MF.multiclass_equalized_odds_difference(logits, target, groups, G, K, average=None, agg="mean")
    eopp = MF.multiclass_equal_opportunity_difference(logits, target, groups, G, K, average=None)
    assert dp.shape == (K,)
    for c in range(K):
        yt, yp = (y == c).astype(int), (yhat == c).astype(int)
        assert dp[c].item() == pytest.approx(demographic_parity_difference(yt, yp, sensitive_features=g), abs=TOL)
        if yp.sum():
            assert dpr[c].item() == pytest.approx(demographic_parity_ratio(yt, yp, sensitive_features=g), abs=TOL)
        else:
            assert dpr[c].item() == 1.0  # never selected: parity (fairlearn divides 0 by 0)
        if yt.sum() == 0:  # no sample of the class: TPR undefined, so EO and EOpp too
            assert np.isnan(eo[c].item()) and np.isnan(eopp[c].item())
            continue
        assert eo[c].item() == pytest.approx(equalized_odds_difference(yt, yp, sensitive_features=g), abs=TOL)
        assert eo_mean[c].item() == pytest.approx(
            equalized_odds_difference(yt, yp, sensitive_features=g, agg="mean"), abs=TOL
        )
        assert eopp[c].item() == pytest.approx(equal_opportunity_difference(yt, yp, sensitive_features=g), abs=TOL)
    # reductions over classes skip the undefined class
    assert MF.multiclass_equalized_odds_difference(logits, target, groups, G, K).item() == pytest.approx(
        np.nanmax(eo.numpy()), abs=1e-12
    )
    assert MF.multiclass_equalized_odds_difference(logits, target, groups, G, K, average="mean").item() == pytest.approx(
        np.nanmean(eo.numpy()), abs=1e-12
    )
    assert MF.multiclass_demographic_parity_ratio(logits, groups, G, K).item() == pytest.approx(dpr.min().item())
    acc = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=yhat, sensitive_features=g).difference()
    assert MF.multiclass_accuracy_difference(logits, target, groups, G, K).item() == pytest.approx(acc, abs=TOL)
    assert dp.max().item() > 0.05 and np.nanmax(eo.numpy()) > 0.05  # the data is unfair: the checks bite


def test_classes_accumulated_equal_functional_twins(data):
    logits, target, groups = data
    metrics = multiclass_fairness_metrics(G, K, from_logits=True)
    for batch in _batches(*data):
        metrics.update(*batch)
    out = metrics.compute()
    twins = {
        "dp_difference": MF.multiclass_demographic_parity_difference(logits, groups, G, K),
        "dp_ratio": MF.multiclass_demographic_parity_ratio(logits, groups, G, K),
        "eo_difference": MF.multiclass_equalized_odds_difference(logits, target, groups, G, K),
        "eopp_difference": MF.multiclass_equal_opportunity_difference(logits, target, groups, G, K),
        "accuracy_difference": MF.multiclass_accuracy_difference(logits, target, groups, G, K),
    }
    for key, value in twins.items():
        torch.testing.assert_close(out[key], value, msg=key)
    rates = MF.multiclass_group_rates(logits, target, groups, G, K)
    torch.testing.assert_close(out["true_positive_rate/class_2/group_5"], rates["true_positive_rate"][2, 5])
    # integer labels give the same sums as scores, and the per-class table equals average=None
    single = MulticlassEqualizedOddsDifference(G, K, average=None)
    single.update(logits.argmax(1), target, groups)
    per_class = MF.multiclass_equalized_odds_difference(logits, target, groups, G, K, average=None)
    torch.testing.assert_close(single.compute(), per_class, equal_nan=True)


def test_stable_keys_with_names_and_dp_without_target():
    metric = MulticlassGroupRates(2, 3, class_names=["cat", "dog", "eel"], group_names=["a", "b"])
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    out = metric.compute()
    assert len(out) == 2 + 4 * 3 * 2 + 2
    assert out["selection_rate/dog/a"].item() == pytest.approx(2 / 3)
    assert np.isnan(out["selection_rate/dog/b"].item()) and np.isnan(out["accuracy/b"].item())
    assert out["accuracy/a"].item() == pytest.approx(2 / 3)
    dp = MulticlassDemographicParityDifference(2, 3)
    dp.update(torch.tensor([0, 1, 2, 2]), None, torch.tensor([0, 0, 1, 1]))
    assert dp.compute().item() == 1.0
    # tied scores resolve to the first class, as torch.argmax
    scores = torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]])
    tied = MF.multiclass_group_sums(scores, torch.tensor([0, 1]), torch.tensor([0, 0]), 1, 3)
    torch.testing.assert_close(tied.pred[:, 0], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    ratio = MulticlassDemographicParityRatio(2, 3, average=None)
    ratio.update(torch.tensor([0, 1, 2, 2]), None, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(ratio.compute(), torch.zeros(3, dtype=torch.float64))


def test_decision_rule_and_temperature(data):
    logits, target, groups = data

    def rule(probs):  # a user's rule: class 1 whenever it has at least 20%
        return torch.where(probs[:, 1] >= 0.2, torch.ones_like(probs[:, 1], dtype=torch.long), probs.argmax(1))

    labels = rule(torch.softmax(logits / 2.0, 1))
    assert not torch.equal(labels, logits.argmax(1))
    ruled = MF.multiclass_group_sums(logits, target, groups, G, K, from_logits=True, temperature=2.0, decision_rule=rule)
    direct = MF.multiclass_group_sums(labels, target, groups, G, K)
    torch.testing.assert_close(ruled.stack(), direct.stack())
    metric = MulticlassEqualOpportunityDifference(G, K, from_logits=True, temperature=2.0, decision_rule=rule)
    metric.update(logits, target, groups)
    torch.testing.assert_close(metric.compute(), MF.multiclass_definition_difference(direct, "equal_opportunity"))


def test_soft_sums_are_one_vs_rest_probability_sums_and_differentiable(data):
    logits, target, groups = data
    logits = logits.clone().requires_grad_(True)
    sums = MF.multiclass_group_sums(logits, target, groups, G, K, soft=True, from_logits=True, temperature=1.5)
    probs = torch.softmax(logits.detach() / 1.5, 1)
    member = torch.nn.functional.one_hot(groups, G).double()  # (N, G)
    onehot = torch.nn.functional.one_hot(target, K).double()  # (N, K)
    torch.testing.assert_close(sums.count, member.sum(0).expand(K, G))
    torch.testing.assert_close(sums.label, onehot.T @ member)
    torch.testing.assert_close(sums.pred.detach(), probs.T @ member)
    torch.testing.assert_close(sums.pred_label.detach(), (probs * onehot).T @ member)
    # the soft selection rate per class is differentiable
    rate = sums.selection_rate()
    rate.value[0, 1].backward()
    assert logits.grad is not None and logits.grad[groups == 1].abs().sum() > 0 and logits.grad[groups != 1].abs().sum() == 0
    # one-hot probabilities give the hard sums
    hard_probs = torch.nn.functional.one_hot(logits.detach().argmax(1), K).double()
    soft_of_hard = MF.multiclass_group_sums(hard_probs, target, groups, G, K, soft=True)
    torch.testing.assert_close(soft_of_hard.stack(), MF.multiclass_group_sums(logits.detach(), target, groups, G, K).stack())


def test_group_calibration_error_matches_torchmetrics_per_group(data):
    logits, target, groups = data
    probs = torch.softmax(logits, 1)
    metric = MulticlassGroupCalibrationError(G, K, n_bins=10, from_logits=True)
    for batch in _batches(*data):
        metric.update(*batch)
    out = metric.compute()
    per_group_top, per_group_cw = [], []
    for g in range(G - 1):
        m = groups == g
        top = MulticlassCalibrationError(num_classes=K, n_bins=10)(probs[m], target[m]).item()
        cw = np.mean([BinaryCalibrationError(n_bins=10)(probs[m, c], (target[m] == c).long()).item() for c in range(K)])
        assert out[f"top_label_calibration_error/group_{g}"].item() == pytest.approx(top, abs=1e-5)
        assert out[f"classwise_calibration_error/group_{g}"].item() == pytest.approx(cw, abs=1e-5)
        per_group_top.append(top)
        per_group_cw.append(cw)
    assert np.isnan(out[f"top_label_calibration_error/group_{G - 1}"].item())
    assert out["top_label_calibration_error_max"].item() == pytest.approx(max(per_group_top), abs=1e-5)
    assert out["classwise_calibration_error_disparity"].item() == pytest.approx(
        max(per_group_cw) - min(per_group_cw), abs=1e-5
    )


# --- bad input ----------------------------------------------------------------------------------
def test_binary_metric_rejects_k_class_logits_and_continuous_targets():
    logits = torch.randn(6, 4)
    target, groups = torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"`preds` must have shape \(N,\) or \(N, 1\), got tensor of shape \(6, 4\).*multiclass"):
        GroupRates(2, from_logits=True).update(logits, target, groups)
    with pytest.raises(ValueError, match=r"`preds` must have shape \(N,\) or \(N, 1\)"):
        DemographicParityDifference(2).update(torch.softmax(logits, 1), None, groups)
    with pytest.raises(ValueError, match="`target` must contain only 0 and 1"):
        GroupRates(2).update(torch.rand(6), torch.rand(6) * 3, groups)  # a regression target
    with pytest.raises(ValueError, match=r"`target` must have shape \(N,\) or \(N, 1\), got tensor of shape \(6, 2\)"):
        GroupRates(2).update(torch.rand(6), torch.nn.functional.one_hot(target, 2), groups)  # one-hot


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [
        (torch.randn(6, 4), torch.tensor([0, 1, 2, 4, 1, 0]), r"`target` must be class indices < num_classes=4, got max"),
        (torch.randn(6, 4), torch.tensor([0, 1, 2, -1, 1, 0]), r"`target` must be class indices >= 0"),
        (
            torch.randn(6, 4),
            torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1, 0]), 4),
            r"`target` must be class indices of shape \(N,\), got tensor of shape \(6, 4\).*argmax",
        ),
        (torch.randn(6, 4), torch.rand(6) * 3, r"`target` must be integer class indices in \[0, 4\), got continuous values"),
        (torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0]), r"`preds` must have shape \(N, num_classes=4\), got .*\(6, 2\)"),
        (torch.rand(6), torch.tensor([0, 1, 1, 0, 1, 0]), r"`preds` must be \(N, 4\) class scores or \(N,\) integer.*binary"),
        (torch.tensor([0, 1, 5, 0, 1, 0]), torch.tensor([0, 1, 1, 0, 1, 0]), r"`preds` labels must lie in \[0, num_classes=4"),
        (torch.full((6, 4), float("nan")), torch.tensor([0, 1, 1, 0, 1, 0]), "`preds` contains NaN"),
    ],
)
def test_multiclass_metric_rejects_bad_input(preds, target, match):
    with pytest.raises(ValueError, match=match):
        MulticlassGroupRates(2, 4).update(preds, target, torch.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match=match):
        MF.multiclass_group_sums(preds, target, torch.tensor([0, 1, 0, 1, 0, 1]), 2, 4)


def test_indices_where_probabilities_are_expected_and_other_bad_arguments():
    groups = torch.tensor([0, 1, 0, 1])
    target = torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"`preds` must be \(N, 3\) class probabilities or logits.*class indices"):
        MulticlassGroupCalibrationError(2, 3).update(torch.tensor([0, 1, 2, 1]), target, groups)
    with pytest.raises(ValueError, match=r"`preds` must be \(N, 3\) class probabilities or logits"):
        MF.multiclass_group_sums(torch.tensor([0, 1, 2, 1]), target, groups, 2, 3, soft=True)
    with pytest.raises(ValueError, match="`preds` rows must sum to 1"):
        MulticlassGroupCalibrationError(2, 3).update(torch.full((4, 3), 0.5), target, groups)
    with pytest.raises(ValueError, match="`preds` must be class probabilities in"):
        MF.multiclass_group_sums(torch.randn(4, 3) * 5, target, groups, 2, 3, soft=True)
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 2"):
        MulticlassGroupRates(2, 1)
    with pytest.raises(ValueError, match="`average` must be one of"):
        MulticlassEqualizedOddsDifference(2, 3, average="min")
    with pytest.raises(ValueError, match="`average` must be one of"):
        MulticlassDemographicParityRatio(2, 3, average="max")
    with pytest.raises(ValueError, match="`class_names` must have num_classes=3"):
        MulticlassGroupRates(2, 3, class_names=["a"])
    with pytest.raises(ValueError, match="`groups` must be < num_groups=2"):
        MulticlassAccuracyDifference(2, 3).update(torch.randn(4, 3), target, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="`decision_rule` must return"):
        MF.multiclass_group_sums(torch.randn(4, 3), target, groups, 2, 3, decision_rule=lambda p: p[:, 0])


def test_regression_metrics_reject_class_inputs():
    groups = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"`preds` must be one continuous value per sample"):
        RegressionGroupStatistics(2).update(torch.randn(4, 3), torch.randn(4), groups)
    with pytest.raises(ValueError, match="`target` must have the same length"):
        RegressionGroupStatistics(2).update(torch.randn(4), torch.randn(3), groups)
    with pytest.raises(ValueError, match="`bin_edges` must be strictly increasing"):
        PredictionDistributionGap(2, bin_edges=[0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="`loss` must be one of"):
        GroupLossDifference(2, loss="huber")


# --- regression -----------------------------------------------------------------------------------
def _regression_data(seed=0, n=3000):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 4, (n,), generator=gen)  # group 4 of 5 never occurs
    target = torch.randn(n, generator=gen, dtype=torch.float64) + 0.5 * groups
    preds = target + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64) * (1 + groups)
    return preds, target, groups


def test_regression_statistics_match_metricframe():
    preds, target, groups = _regression_data()
    metric = RegressionGroupStatistics(5)
    for idx in torch.arange(len(preds)).tensor_split(7):
        metric.update(preds[idx], target[idx], groups[idx])
    out = metric.compute()
    frame = MetricFrame(
        metrics={
            "mean_prediction": mean_prediction,
            "mean_target": lambda y_true, y_pred: float(np.mean(y_true)),
            "mean_squared_error": mean_squared_error,
            "mean_absolute_error": mean_absolute_error,
        },
        y_true=target.numpy(),
        y_pred=preds.numpy(),
        sensitive_features=groups.numpy(),
    )
    for stat in frame.by_group.columns:
        for g in range(4):
            assert out[f"{stat}/group_{g}"].item() == pytest.approx(frame.by_group.loc[g, stat], abs=TOL), (stat, g)
        assert np.isnan(out[f"{stat}/group_4"].item())
    dp = RegressionDemographicParityDifference(5)
    dp.update(preds, None, groups)
    assert dp.compute().item() == pytest.approx(frame.difference()["mean_prediction"], abs=TOL)
    assert RF.regression_demographic_parity_difference(preds, groups, 5).item() == pytest.approx(dp.compute().item())
    gap = GroupLossDifference(5)
    gap.update(preds, target, groups)
    assert gap.compute().item() == pytest.approx(frame.difference()["mean_squared_error"], abs=TOL)
    assert RF.group_loss_difference(preds, target, groups, 5, loss="absolute_error").item() == pytest.approx(
        frame.difference()["mean_absolute_error"], abs=TOL
    )


def test_prediction_cdf_gap_exact_and_from_histogram():
    preds, _, groups = _regression_data()
    rounded = torch.round(preds * 4) / 4  # ties and a finite set of values
    ks = max(
        ks_2samp(rounded[groups == a].numpy(), rounded[groups == b].numpy()).statistic
        for a in range(4)
        for b in range(a + 1, 4)
    )
    assert RF.prediction_cdf_gap(rounded, groups, 5, chunk_size=500).item() == pytest.approx(ks, abs=1e-12)
    # every value on an edge: the streaming histogram gives the exact gap
    metric = PredictionDistributionGap(5, bin_edges=torch.unique(rounded))
    for idx in torch.arange(len(preds)).tensor_split(5):
        metric.update(rounded[idx], None, groups[idx])
    assert metric.compute().item() == pytest.approx(ks, abs=1e-12)
    # coarse edges: a lower bound
    coarse = PredictionDistributionGap(5, value_range=(-3.0, 6.0), n_bins=6)
    coarse.update(preds, None, groups)
    exact = RF.prediction_cdf_gap(preds, groups, 5).item()
    assert 0 < coarse.compute().item() <= exact
    assert RF.prediction_cdf_gap(preds[groups == 1], groups[groups == 1], 5).item() == 0.0


# --- DDP ------------------------------------------------------------------------------------------
def _shared_inputs():
    logits, target, groups = _make(seed=3, n=1001)
    groups[(groups == 5) & (torch.arange(1001) % 2 == 0)] = 4  # rank 0 never sees group 5
    preds, reg_target, reg_groups = _regression_data(seed=3, n=1001)
    return logits, target, groups, preds, reg_target, reg_groups


def _all_metrics():
    return (
        multiclass_fairness_metrics(G, K, from_logits=True, n_bins=10),
        regression_fairness_metrics(5, value_range=(-3.0, 6.0), n_bins=50),
    )


def _ddp_metrics(rank, world_size, module):
    logits, target, groups, preds, reg_target, reg_groups = _shared_inputs()
    idx = torch.arange(rank, 1001, world_size)  # uneven shards
    multi, reg = _all_metrics()
    multi.update(logits[idx], target[idx], groups[idx])
    reg.update(preds[idx], reg_target[idx], reg_groups[idx])
    return {k: v.clone() for k, v in {**multi.compute(), **reg.compute()}.items()}


@pytest.mark.ddp
def test_metrics_under_ddp_equal_single_process(tmp_path):
    results = run_on_ranks(_ddp_metrics, tmp_path)
    logits, target, groups, preds, reg_target, reg_groups = _shared_inputs()
    multi, reg = _all_metrics()
    multi.update(logits, target, groups)
    reg.update(preds, reg_target, reg_groups)
    expected = {**multi.compute(), **reg.compute()}
    assert "selection_rate/class_0/group_5" in expected and "mean_prediction/group_3" in expected
    for result in results:
        assert result.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(result[key], expected[key], equal_nan=True, msg=key)


from tests._ddp import run_on_ranks  # noqa: E402
