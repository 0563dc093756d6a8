"""The examples/ scripts run end to end with small settings."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_fair_quick(tmp_path, capsys):
    digits = _load("digits_fair")
    data = digits.make_data(0)
    x, y, groups = data["train"]
    assert x.shape[1:] == (1, 8, 8) and int(y.max()) == 9
    assert bool(((x[:, 0, 0, 0] == 1) == (groups == 1)).all())  # the group is the marker pixel
    share_zero = float(groups[y == 0].float().mean())
    share_other = float(groups[y != 0].float().mean())
    assert share_zero > share_other + 0.3  # the marker correlates with the class
    out = tmp_path / "rows.json"
    rows = digits.main(["--quick", "--json", str(out)])
    assert [r["method"] for r in rows] == ["erm", "penalty", "lagrangian"]
    for r in rows:
        assert 0.0 <= r["test_dp_difference"] <= 1.0
        assert r["test_accuracy"] > 0.3  # 3 epochs learn well above chance (0.1)
    assert out.exists()
    assert "lagrangian" in capsys.readouterr().out


def test_digits_select_uses_validation_only(monkeypatch, capsys):
    """--select picks each method's setting from validation numbers: the most accurate value that
    meets the target, never a collapsed one, and never looks at test numbers."""
    digits = _load("digits_fair")
    val = {  # (method, setting) -> (validation DP, validation accuracy)
        ("erm", None): (0.16, 0.98),
        ("penalty", 20.0): (0.15, 0.96), ("penalty", 30.0): (0.07, 0.93), ("penalty", 40.0): (0.06, 0.90),
        ("penalty", 50.0): (0.0, 0.11),  # collapsed to one class: inadmissible
        ("lagrangian", 1.0): (0.10, 0.90), ("lagrangian", 2.0): (0.09, 0.92), ("lagrangian", 4.0): (0.12, 0.91),
    }

    def fake_run(method, seed, args):
        setting = {"erm": None, "penalty": args.eta, "lagrangian": args.memory}[method]
        dp, accuracy = val[(method, setting)]
        return {"method": method, "seed": seed, "val_dp_difference": dp, "val_accuracy": accuracy,
                "test_dp_difference": float("nan"), "test_accuracy": float("nan")}

    monkeypatch.setattr(digits, "run", fake_run)
    (chosen,) = digits.main(["--select", "--seeds", "0", "1"])
    # penalty: 30 and 40 meet 0.5 x 0.16 = 0.08; 30 is more accurate. Lagrangian: none meets: the lowest DP
    assert chosen == {"eta": 30.0, "memory": 2.0}
    out = capsys.readouterr().out
    assert "target DP <= 0.5 x 0.160 = 0.080" in out and "nan" not in out
