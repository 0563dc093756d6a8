import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError

from fair_lightning.calibration import AUDIT_COLUMNS, Fallback, GroupFairnessCalibrator, multicalibration_audit
from fair_lightning.functional import group_calibration_error
from fair_lightning.groups import GroupSpec

SPEC = GroupSpec({"sex": ["Female", "Male"], "race": ["A", "B", "C"]})


def _true_logits(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z = 1.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    return z, torch.bernoulli(torch.sigmoid(z), generator=gen)


def _distorted(n: int, seed: int, kind: str):
    """Three equal groups; group 0 is calibrated, groups 1 and 2 are distorted.

    ``kind="affine"``: probabilities with an affine distortion of the logit;
    ``kind="power"``: group 2 reports ``p ** 3`` instead; ``kind="scale"``: logits multiplied by a
    group-specific factor (for temperature scaling).
    """
    gen = torch.Generator().manual_seed(seed)
    z, y = _true_logits(n, gen)
    groups = torch.arange(n) % 3
    if kind == "scale":
        factor = torch.tensor([1.0, 3.0, 0.4], dtype=torch.float64)
        return factor[groups] * z, y, groups
    slope = torch.tensor([1.0, 2.5, 0.4], dtype=torch.float64)
    shift = torch.tensor([0.0, 1.0, -0.8], dtype=torch.float64)
    scores = torch.sigmoid(slope[groups] * z + shift[groups])
    if kind == "power":
        scores = torch.where(groups == 2, torch.sigmoid(z) ** 3, scores)
    return scores, y, groups


def _max_ece(probs, labels, groups, num_groups=3):
    return float(group_calibration_error(torch.as_tensor(probs), labels, groups, num_groups, n_bins=15)["max"])


# --- the calibrator fixes group-specific miscalibration on held-out data -------------------------
@pytest.mark.parametrize(
    ("method", "kind"), [("platt", "affine"), ("isotonic", "affine"), ("isotonic", "power"), ("temperature", "scale")]
)
def test_per_group_ece_drops_on_held_out_data(method, kind):
    fit_scores, fit_labels, fit_groups = _distorted(12_000, seed=0, kind=kind)
    scores, labels, groups = _distorted(60_000, seed=1, kind=kind)
    before = torch.sigmoid(scores) if method == "temperature" else scores
    assert _max_ece(before, labels, groups) >= 0.10

    calibrator = GroupFairnessCalibrator(method, num_groups=3).fit(fit_scores, fit_labels, fit_groups)
    calibrated = calibrator.transform(scores, groups)

    assert _max_ece(calibrated, labels, groups) <= 0.03
    assert calibrator.fallback_ == {}
    assert (calibrator.calibration_error_["after"] < calibrator.calibration_error_["before"][1:].max()).all()
    if method == "temperature":
        torch.testing.assert_close(calibrator.temperature_, torch.tensor([1.0, 3.0, 0.4], dtype=torch.float64), rtol=0.1, atol=0)


def test_platt_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    scores, labels, groups = _distorted(3_000, seed=2, kind="affine")
    calibrator = GroupFairnessCalibrator("platt", num_groups=3, min_group_size=10).fit(scores, labels, groups)
    logit = torch.logit(scores.clamp(1e-7, 1 - 1e-7)).numpy()
    for g in range(3):
        mask = (groups == g).numpy()
        ref = LogisticRegression(C=1e8, tol=1e-12, max_iter=10_000).fit(logit[mask, None], labels.numpy()[mask])
        assert abs(float(calibrator.coef_[g]) - ref.coef_[0, 0]) < 1e-3
        assert abs(float(calibrator.intercept_[g]) - ref.intercept_[0]) < 1e-3
        mine = calibrator.transform(scores[mask], groups[mask]).numpy()
        np.testing.assert_allclose(mine, ref.predict_proba(logit[mask, None])[:, 1], atol=1e-4)


def test_isotonic_is_monotone_per_group():
    scores, labels, groups = _distorted(6_000, seed=3, kind="power")
    calibrator = GroupFairnessCalibrator("isotonic", num_groups=3).fit(scores, labels, groups)
    grid = torch.linspace(0, 1, 2_001, dtype=torch.float64)
    for g in range(3):
        out = calibrator.transform(grid, torch.full_like(grid, g, dtype=torch.long))
        assert (out.diff() >= 0).all()
        assert out.min() >= 0 and out.max() <= 1
        x, y = calibrator.breakpoints(g)
        np.testing.assert_allclose(calibrator.transform(x, torch.full_like(x, g, dtype=torch.long)), y, atol=1e-12)


def test_numpy_in_numpy_out_and_tensor_dtype_kept():
    scores, labels, groups = _distorted(3_000, seed=4, kind="affine")
    calibrator = GroupFairnessCalibrator("platt").fit(scores.numpy(), labels.numpy(), groups.numpy())
    assert calibrator.num_groups_ == 3  # inferred from the group ids
    out = calibrator.transform(scores.numpy(), groups.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (3_000,)
    out32 = calibrator.transform(scores.float()[:, None], groups)
    assert isinstance(out32, torch.Tensor) and out32.dtype == torch.float32 and out32.shape == (3_000, 1)
    np.testing.assert_allclose(out32[:, 0].numpy(), out, atol=1e-4)  # float32 input


# --- small and unseen groups ---------------------------------------------------------------------
def _spec_data(seed: int, sizes: dict[tuple[int, int], int]):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.cat([torch.tensor([list(k)] * n, dtype=torch.long) for k, n in sizes.items() if n])
    z, y = _true_logits(len(codes), gen)
    scores = torch.sigmoid(torch.where(codes[:, 0] == 0, 2.0 * z + 0.5, z))
    return scores, y, codes


def test_small_intersection_falls_back_to_its_largest_marginal_parent():
    # (Female, C) has 20 samples; its parents: sex=Female (1620) and race=C (420) -> sex=Female
    sizes = {(0, 0): 800, (0, 1): 800, (0, 2): 20, (1, 0): 600, (1, 1): 600, (1, 2): 400}
    scores, labels, codes = _spec_data(5, sizes)
    calibrator = GroupFairnessCalibrator("platt", group_spec=SPEC, min_group_size=50).fit(scores, labels, codes)

    fallback = calibrator.fallback_["sex=Female&race=C"]
    assert isinstance(fallback, Fallback)
    assert (fallback.map, fallback.source, fallback.count) == ("parent", "sex=Female", 20)
    assert "min_group_size=50" in fallback.reason and "sex=Female" in fallback.reason
    assert set(calibrator.fallback_) == {"sex=Female&race=C"}
    report = calibrator.report().set_index("group")
    assert report.loc["sex=Female&race=C", "map"] == "parent"
    assert report.loc["sex=Male&race=C", "map"] == "own" and report.loc["sex=Male&race=C", "count"] == 400

    # the borrowed map is the fit on the parent's data
    female = codes[:, 0] == 0
    one_group = torch.zeros(int(female.sum()), dtype=torch.long)
    parent = GroupFairnessCalibrator("platt", num_groups=1).fit(scores[female], labels[female], one_group)
    g = SPEC.names.index("sex=Female&race=C")
    torch.testing.assert_close(calibrator.coef_[g], parent.coef_[0])
    torch.testing.assert_close(calibrator.intercept_[g], parent.intercept_[0])


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_small_group_without_parents_uses_global_map(method):
    scores, labels, groups = _distorted(3_000, seed=6, kind="affine")
    groups = groups.clone()
    groups[:20] = 3  # a group of 20 samples; no spec, so its parent is global
    calibrator = GroupFairnessCalibrator(method, num_groups=4).fit(scores, labels, groups)
    assert calibrator.fallback_["group_3"][:3] == ("global", "global", 20)
    probe = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(calibrator.transform(probe, torch.full((50,), 3)), calibrator.transform(probe))


def test_unseen_group_warns_and_uses_global_map():
    scores, labels, groups = _distorted(3_000, seed=7, kind="affine")
    calibrator = GroupFairnessCalibrator("temperature", num_groups=5).fit(torch.logit(scores), labels, groups)
    assert calibrator.fallback_["group_4"].map == "global" and calibrator.fallback_["group_4"].count == 0
    logits = torch.linspace(-4, 4, 20, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"not seen.*group_4"):
        out = calibrator.transform(logits, torch.full((20,), 4))
    torch.testing.assert_close(out, calibrator.transform(logits))


def test_shrinkage_towards_parent():
    scores, labels, groups = _distorted(3_000, seed=8, kind="affine")
    plain = GroupFairnessCalibrator("platt", num_groups=3).fit(scores, labels, groups)
    shrunk = GroupFairnessCalibrator("platt", num_groups=3, shrinkage=500.0).fit(scores, labels, groups)
    w = 1_000 / (1_000 + 500.0)
    global_coef = plain.maps_["coef"][-1]
    torch.testing.assert_close(shrunk.coef_, w * plain.coef_ + (1 - w) * global_coef)
    assert (shrunk.report()["own_weight"] - w).abs().max() < 1e-12


# --- state ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["platt", "isotonic", "temperature"])
def test_state_dict_round_trip_with_weights_only(method, tmp_path):
    sizes = {(0, 0): 500, (0, 1): 400, (0, 2): 20, (1, 0): 300, (1, 1): 300, (1, 2): 0}
    scores, labels, codes = _spec_data(9, sizes)
    if method == "temperature":
        scores = torch.logit(scores)
    calibrator = GroupFairnessCalibrator(method, group_spec=SPEC, temperature_bias=True).fit(scores, labels, codes)
    torch.save(calibrator.state_dict(), tmp_path / "calibrator.pt")

    restored = GroupFairnessCalibrator.from_state_dict(torch.load(tmp_path / "calibrator.pt", weights_only=True))

    ids = torch.arange(6).repeat(50)
    probe = torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe = torch.logit(probe) if method == "temperature" else probe
    with pytest.warns(UserWarning, match="not seen"):
        expected = calibrator.transform(probe, ids)
    with pytest.warns(UserWarning, match="not seen"):
        assert torch.equal(restored.transform(probe, ids), expected)
    assert restored.method == method and restored.group_spec_ == SPEC
    assert restored.fallback_ == calibrator.fallback_
    pd.testing.assert_frame_equal(restored.report(), calibrator.report())


# --- bad input -----------------------------------------------------------------------------------
@pytest.fixture
def data():
    return _distorted(600, seed=10, kind="affine")


def test_unknown_method_lists_valid_ones(data):
    with pytest.raises(ValueError, match=r"`method` must be one of \['platt', 'isotonic', 'temperature', 'vector'\], got 'beta'"):
        GroupFairnessCalibrator("beta").fit(*data)


def test_transform_before_fit(data):
    with pytest.raises(NotFittedError, match="not fitted"):
        GroupFairnessCalibrator().transform(data[0], data[2])
    assert issubclass(NotFittedError, ValueError)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_scores_outside_unit_interval(method, data):
    scores, labels, groups = data
    with pytest.raises(ValueError, match=r"`scores` must be probabilities in \[0, 1\].*got values in \[.*1\.5"):
        GroupFairnessCalibrator(method).fit(scores + 0.5, labels, groups)
    calibrator = GroupFairnessCalibrator(method).fit(scores, labels, groups)
    with pytest.raises(ValueError, match="`scores` must be probabilities"):
        calibrator.transform(scores - 1, groups)


def test_nan_and_inf(data):
    scores, labels, groups = data
    bad = scores.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="`scores` contains NaN"):
        GroupFairnessCalibrator("platt").fit(bad, labels, groups)
    bad_labels = labels.clone()
    bad_labels[0] = float("nan")
    with pytest.raises(ValueError, match="`labels` contains NaN"):
        GroupFairnessCalibrator("platt").fit(scores, bad_labels, groups)
    logits = torch.logit(scores)
    logits[0] = float("inf")
    with pytest.raises(ValueError, match="`scores` must be finite"):
        GroupFairnessCalibrator("temperature").fit(logits, labels, groups)


def test_mismatched_lengths(data):
    scores, labels, groups = data
    with pytest.raises(ValueError, match=r"`labels` must have the same length .*\(600\), got 599"):
        GroupFairnessCalibrator().fit(scores, labels[:-1], groups)
    with pytest.raises(ValueError, match=r"`groups` must have the same length .*\(600\), got 599"):
        GroupFairnessCalibrator().fit(scores, labels, groups[:-1])
    with pytest.raises(ValueError, match="`labels` must contain only 0 and 1"):
        GroupFairnessCalibrator().fit(scores, labels * 2, groups)


def test_groups_out_of_range(data):
    scores, labels, groups = data
    with pytest.raises(ValueError, match=r"`groups` must be < num_groups=2, got maximum 2"):
        GroupFairnessCalibrator(num_groups=2).fit(scores, labels, groups)
    with pytest.raises(ValueError, match="`groups` must be non-negative"):
        GroupFairnessCalibrator().fit(scores, labels, groups - 1)
    calibrator = GroupFairnessCalibrator().fit(scores, labels, groups)
    with pytest.raises(ValueError, match=r"`groups` must be < num_groups=3, got maximum 7"):
        calibrator.transform(scores[:1], torch.tensor([7]))
    with pytest.raises(ValueError, match=r"`groups` given as \(N, 2\) attribute codes.*race"):
        GroupFairnessCalibrator(group_spec=SPEC).fit(scores, labels, torch.stack((groups % 2, groups + 1), 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_group_size": 0}, "`min_group_size` must be an int >= 1, got 0"),
        ({"shrinkage": -1.0}, "`shrinkage` must be a finite number >= 0, got -1.0"),
        ({"num_groups": 4, "group_spec": SPEC}, r"`num_groups` \(4\) does not match `group_spec`"),
        ({"group_spec": "sex"}, "`group_spec` must be a GroupSpec or a mapping"),
    ],
)
def test_bad_hyperparameters(kwargs, message, data):
    with pytest.raises(ValueError, match=message):
        GroupFairnessCalibrator(**kwargs).fit(*data)


def test_codes_and_ids_agree():
    sizes = {(0, 0): 200, (0, 1): 200, (0, 2): 100, (1, 0): 200, (1, 1): 100, (1, 2): 100}
    scores, labels, codes = _spec_data(11, sizes)
    ids = SPEC.encode(codes)
    by_codes = GroupFairnessCalibrator("isotonic", group_spec=SPEC).fit(scores, labels, codes)
    by_ids = GroupFairnessCalibrator("isotonic", group_spec=SPEC).fit(scores, labels, ids)
    assert torch.equal(by_codes.transform(scores, codes), by_ids.transform(scores, ids))


# --- multicalibration audit ----------------------------------------------------------------------
AUDIT_SIZES = {(0, 0): 4_000, (0, 1): 3_000, (0, 2): 15, (1, 0): 4_000, (1, 1): 3_000, (1, 2): 2_000}


def _as_frame(codes: torch.Tensor) -> pd.DataFrame:
    return pd.DataFrame({attr: [levels[c] for c in codes[:, j]] for j, (attr, levels) in enumerate(SPEC.attributes.items())})


@pytest.fixture(scope="module")
def audit_data():
    gen = torch.Generator().manual_seed(12)
    codes = torch.cat([torch.tensor([list(k)] * n, dtype=torch.long) for k, n in AUDIT_SIZES.items()])
    z, labels = _true_logits(len(codes), gen)
    probs = torch.sigmoid(z)
    planted = (codes[:, 0] == 0) & (codes[:, 1] == 1)  # sex=Female & race=B: scores too low
    probs = torch.where(planted, torch.sigmoid(z - 0.8), probs)
    return probs, labels, codes


def test_audit_table(audit_data):
    probs, labels, codes = audit_data
    table = multicalibration_audit(probs, labels, codes, SPEC, max_order=2, n_bins=10, min_size=30)

    assert list(table.columns) == list(AUDIT_COLUMNS)
    assert len(table) == 1 + (2 + 3) + 6
    assert table["order"].tolist() == [0] + [1] * 5 + [2] * 6
    rows = table.set_index("subgroup")
    assert rows.loc["all", "count"] == len(probs)
    frame = _as_frame(codes)
    for (sex, race), n in frame.value_counts().items():
        assert rows.loc[f"sex={sex}&race={race}", "count"] == n
    for sex, n in frame["sex"].value_counts().items():
        assert rows.loc[f"sex={sex}", "count"] == n

    # ECE, mean score and mean label of a subgroup agree with the functional core on its rows
    mask = (codes[:, 0] == 1) & (codes[:, 1] == 0)
    ece = group_calibration_error(probs[mask], labels[mask], torch.zeros(int(mask.sum()), dtype=torch.long), 1, n_bins=10)["max"]
    assert rows.loc["sex=Male&race=A", "ece"] == pytest.approx(float(ece), abs=1e-12)
    assert rows.loc["sex=Male&race=A", "mean_label"] == pytest.approx(float(labels[mask].mean()), abs=1e-12)
    assert rows.loc["sex=Male&race=A", "gap"] == pytest.approx(float((labels[mask] - probs[mask]).mean()), abs=1e-12)

    planted = rows.loc["sex=Female&race=B"]
    assert planted["p_value"] < 1e-6 and planted["flagged"] and planted["gap"] > 0.08
    assert planted["parent"] in {"sex=Female", "race=B"}
    calibrated = rows.loc["sex=Male&race=A"]
    assert calibrated["p_value"] > 0.05 and not calibrated["flagged"]

    small = rows.loc["sex=Female&race=C"]
    assert small["too_small"] and small["count"] == 15 and math.isnan(small["p_value"]) and not small["flagged"]
    assert rows["too_small"].sum() == 1
    assert math.isnan(rows.loc["all", "p_value"]) and pd.isna(rows.loc["all", "parent"])
    assert rows.loc["race=A", "parent"] == "all"


def test_audit_from_dataframe_matches_codes(audit_data):
    probs, labels, codes = audit_data
    frame = _as_frame(codes).assign(other=0)
    from_codes = multicalibration_audit(probs, labels, codes, SPEC)
    from_frame = multicalibration_audit(probs.numpy(), labels.numpy(), frame, SPEC)
    pd.testing.assert_frame_equal(from_frame, from_codes)
    by_names = multicalibration_audit(probs, labels, frame, ["sex", "race"], max_order=1)
    assert len(by_names) == 1 + 2 + 3 and by_names["order"].max() == 1
    assert set(by_names["subgroup"]) == {"all", "sex=Female", "sex=Male", "race=A", "race=B", "race=C"}


def test_audit_bad_input(audit_data):
    probs, labels, codes = audit_data
    with pytest.raises(ValueError, match=r"`probs` must be probabilities in \[0, 1\]"):
        multicalibration_audit(probs * 2, labels, codes, SPEC)
    with pytest.raises(ValueError, match=r"`sensitive` must have the same length as `probs`"):
        multicalibration_audit(probs, labels, codes[:-1], SPEC)
    with pytest.raises(ValueError, match="`labels` must have the same length"):
        multicalibration_audit(probs, labels[:-1], codes, SPEC)
    with pytest.raises(ValueError, match="`max_order` must be an int >= 0, got -1"):
        multicalibration_audit(probs, labels, codes, SPEC, max_order=-1)
    with pytest.raises(ValueError, match="`sensitive` does not match `group_spec`"):
        multicalibration_audit(probs, labels, codes + 1, SPEC)
