"""Group-wise post-hoc calibration and the multicalibration audit.

* :class:`GroupFairnessCalibrator`: one calibration map per group (``"platt"``, ``"isotonic"``,
  ``"temperature"``; for K-class logits ``"temperature"`` and ``"vector"`` scaling) with hierarchical fallback for small groups (group -> its largest marginal
  parent -> global) and optional shrinkage towards the parent; state as plain tensors.
* :func:`multicalibration_audit`: a table of every subgroup up to a given intersection order,
  with ECE, calibration gap and a test of the gap against the subgroup's parents.

Per-group and per-bin statistics come from :mod:`fair_lightning.functional`.
"""

from fair_lightning.calibration._audit import AUDIT_COLUMNS, multicalibration_audit
from fair_lightning.calibration._calibrator import METHODS, MULTICLASS_METHODS, Fallback, GroupFairnessCalibrator

__all__ = [
    "AUDIT_COLUMNS",
    "METHODS",
    "MULTICLASS_METHODS",
    "Fallback",
    "GroupFairnessCalibrator",
    "multicalibration_audit",
]
