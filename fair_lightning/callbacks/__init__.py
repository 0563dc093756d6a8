"""Lightning callbacks of fair-lightning.

* :class:`GroupCalibrationCallback`: fits a
  :class:`~fair_lightning.calibration.GroupFairnessCalibrator` on the validation outputs (all
  ranks' under DDP), logs per-group ECE before/after (``calibration/...``, on the test data too),
  keeps the calibrator in checkpoints and makes ``trainer.predict`` return calibrated
  probabilities.
* :class:`GroupThresholdCallback`: fits per-group decision thresholds
  (:class:`~fair_lightning.postprocessing.GroupThresholds`) on the validation outputs at the end
  of fit, keeps them in checkpoints and sets ``pl_module.prediction_thresholds``.
* :class:`ConstrainedModelSelection`: records the objective and every constraint's hard
  violation on validation after each epoch, keeps weight snapshots and restores the best
  feasible one (else the least violating) at the end of fit; optional randomized mixture.
* :class:`FairnessDashboard`: per-group rate bars and reliability diagrams in TensorBoard, and
  the HParams table (``hp/...``) that lets the runs of a sweep be compared;
  :func:`classwise_reliability_figure` draws the per-class diagrams of K-class probabilities;
  for a regression module, :func:`regression_statistics_figure` (group means and MSE) and
  :func:`prediction_cdf_figure` (each group's prediction CDF, the largest gap marked).

The per-group scalars, constraint violations, Lagrange multipliers and the fairness/task
gradient-norm ratio are logged by :class:`~fair_lightning.module.FairLightningModule` itself and
reach every logger; the dashboard does not log them twice.

There is no ``eta`` warm-up callback: the schedule is part of the module
(``FairLightningModule(eta_schedule="linear" | "step", eta_warmup_steps=...)``, see
:mod:`fair_lightning.schedules`) and is checkpointed with it.

Both callbacks read each evaluation batch's logits from the step's output when it is a mapping
with ``"logits"``; otherwise they run one forward pass without gradients on the batch.
"""

from fair_lightning.callbacks._calibration import WHEN, GroupCalibrationCallback
from fair_lightning.callbacks._selection import ConstrainedModelSelection, choose_run, rank_key
from fair_lightning.callbacks._thresholds import GroupThresholdCallback
from fair_lightning.callbacks._dashboard import (
    DEFAULT_HP_METRICS,
    FairnessDashboard,
    classwise_reliability_figure,
    group_rates_figure,
    prediction_cdf_figure,
    regression_statistics_figure,
    reliability_figure,
)

__all__ = [
    "ConstrainedModelSelection",
    "choose_run",
    "rank_key",
    "DEFAULT_HP_METRICS",
    "WHEN",
    "FairnessDashboard",
    "classwise_reliability_figure",
    "GroupCalibrationCallback",
    "GroupThresholdCallback",
    "group_rates_figure",
    "prediction_cdf_figure",
    "regression_statistics_figure",
    "reliability_figure",
]
