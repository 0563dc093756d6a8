"""fair-lightning: fairness-aware training for PyTorch Lightning.

The main names are importable from the top level; each lives in (and is documented with) its
submodule. They are loaded on first use, so ``import fair_lightning`` stays cheap.

=============================  ==============================
name                           submodule
=============================  ==============================
``FairLightningModule``        :mod:`fair_lightning.module`
``TabularDataModule``          :mod:`fair_lightning.data`
``GroupSpec``                  :mod:`fair_lightning.groups`
``GroupFairnessCalibrator``    :mod:`fair_lightning.calibration`
``GroupCalibrationCallback``   :mod:`fair_lightning.callbacks`
``FairnessDashboard``          :mod:`fair_lightning.callbacks`
``GroupThresholdCallback``     :mod:`fair_lightning.callbacks`
``GroupThresholds``            :mod:`fair_lightning.postprocessing`
``ConstrainedModelSelection``  :mod:`fair_lightning.callbacks`
``ERM``, ``Penalty``,          :mod:`fair_lightning.methods`
``Lagrangian``, ``Adversarial``
``ReductionsWrapper``          :mod:`fair_lightning.reductions`
``FairNeuralClassifier``       :mod:`fair_lightning.estimators`
``cross_fit``, ``FoldMixture``
                               :mod:`fair_lightning.crossfit`
=============================  ==============================
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "FairLightningModule": "fair_lightning.module",
    "TabularDataModule": "fair_lightning.data",
    "GroupSpec": "fair_lightning.groups",
    "GroupFairnessCalibrator": "fair_lightning.calibration",
    "GroupCalibrationCallback": "fair_lightning.callbacks",
    "FairnessDashboard": "fair_lightning.callbacks",
    "GroupThresholdCallback": "fair_lightning.callbacks",
    "GroupThresholds": "fair_lightning.postprocessing",
    "ConstrainedModelSelection": "fair_lightning.callbacks",
    "ERM": "fair_lightning.methods",
    "Penalty": "fair_lightning.methods",
    "Lagrangian": "fair_lightning.methods",
    "Adversarial": "fair_lightning.methods",
    "ReductionsWrapper": "fair_lightning.reductions",
    "FairNeuralClassifier": "fair_lightning.estimators",
    "cross_fit": "fair_lightning.crossfit",
    "FoldMixture": "fair_lightning.crossfit",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fair_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
