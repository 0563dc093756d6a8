import importlib
import subprocess
import sys

import fair_lightning


def test_top_level_names_resolve_lazily():
    code = "import sys, fair_lightning; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"  # importing the package does not import Lightning
    for name in fair_lightning.__all__:
        assert getattr(fair_lightning, name) is not None
    assert fair_lightning.FairLightningModule is importlib.import_module("fair_lightning.module").FairLightningModule


def test_unknown_attribute_raises():
    try:
        fair_lightning.NoSuchThing  # noqa: B018
    except AttributeError as err:
        assert "NoSuchThing" in str(err)
    else:
        raise AssertionError("expected AttributeError")
