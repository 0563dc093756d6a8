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
