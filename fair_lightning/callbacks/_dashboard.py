"""``FairnessDashboard``: per-group figures and the HParams table in TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from fair_lightning.callbacks._outputs import evaluation_outputs, group_names, num_groups_of, reduce_sum
from fair_lightning.functional import (
    GroupSums,
    calibration_error_from_sums,
    calibration_sums,
    group_sums,
    hard_predictions,
    multiclass_group_sums,
)
from fair_lightning.functional._calibration import check_n_bins
from fair_lightning.functional._regression import (
    RegressionSums,
    check_bin_edges,
    prediction_histogram,
    regression_group_sums,
)

#: HParams metric -> the ``trainer.callback_metrics`` key it copies (logged by ``FairLightningModule``).
DEFAULT_HP_METRICS: dict[str, str] = {
    "hp/accuracy": "val/accuracy",
    "hp/dp_difference": "val/dp_difference",
    "hp/eo_difference": "val/eo_difference",
    "hp/ece_max": "val/calibration_error_max",
    "hp/test_accuracy": "test/accuracy",
    "hp/test_dp_difference": "test/dp_difference",
    "hp/test_eo_difference": "test/eo_difference",
    "hp/test_ece_max": "test/calibration_error_max",
}
#: Image tags, formatted with the stage (``"val"`` or ``"test"``).
RATES_TAG = "figures/{stage}/group_rates"
RELIABILITY_TAG = "figures/{stage}/reliability"
CDF_TAG = "figures/{stage}/prediction_cdf"


#: Hyper-parameters each mode uses, most telling first (the HParams table shows these and no others).
#: Context a module passes to every method: not a method's own setting.
_CONTEXT = ("num_groups", "group_names", "threshold", "num_classes", "class_names")


def method_hparams(mode: object) -> tuple[str, ...] | None:
    """A registered method's own settings (its constructor's arguments), ``None`` for an unknown mode."""
    from fair_lightning.methods import METHODS

    cls = METHODS.get(mode) if isinstance(mode, str) else None
    return None if cls is None else tuple(a for a in cls.argument_names() if a not in _CONTEXT)


#: Hyper-parameters of every run: the optimizer, the decision threshold, then the data.
COMMON_HPARAMS = ("lr", "weight_decay", "threshold", "gradient_clip_val")
DATA_HPARAMS = ("dataset", "sensitive", "batch_size", "seed")


def swept_keys() -> list[str]:
    """The settings a Hydra sweep varies in this job (``fairness.eta=4`` -> ``eta``); ``[]`` outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return []
        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # pragma: no cover - Hydra missing or not configured
        return []
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "/" not in key and not key.startswith(("hydra.", "callbacks.", "logger.", "trainer.")) and key != "resume":
            keys.append(key.rsplit(".", 1)[-1])
    return keys


def run_hparams(
    module: Mapping[str, Any], datamodule: Mapping[str, Any], swept: Sequence[str] = (), *, num_classes: int | None = None
) -> dict[str, Any]:
    """The HParams of a run: swept settings first, then ``mode`` and its own settings, then the rest it uses.

    A mode's settings are its method class's own arguments (:func:`method_hparams`: a Lagrangian
    run shows ``tolerance`` and ``dual_lr``, not ``eta``); then :data:`COMMON_HPARAMS` and :data:`DATA_HPARAMS`. ``None``
    values are left out. A module whose ``mode`` is not in the table shows all its
    hyper-parameters (after the swept ones). A K-class module (``num_classes``, the module's
    own, inferred when not given to it) shows ``num_classes`` after the mode's settings and no
    ``threshold`` (K classes predict the argmax).
    """
    both = {**datamodule, **module}
    if num_classes is not None:
        both["num_classes"] = int(num_classes)
    mode = module.get("mode")
    own = method_hparams(mode)
    if own is not None:
        common = COMMON_HPARAMS if num_classes is None else ("num_classes", *(k for k in COMMON_HPARAMS if k != "threshold"))
        order = ["mode", *own, *common, *DATA_HPARAMS]
        used = set(order)
    else:
        order = list(both)
        used = set(both)
    first = [k for k in swept if k in used]
    params: dict[str, Any] = {}
    for key in [*first, *order]:
        value = both.get(key)
        if key in both and key not in params and value is not None:
            params[key] = list(value) if isinstance(value, tuple) else value
    return params


class FairnessDashboard(Callback):
    """Per-group figures and the HParams table of a sweep, in TensorBoard.

    What it writes (through the first ``TensorBoardLogger`` in ``trainer.loggers``):

    * every validation epoch, and after testing: a bar chart of the selection rate, TPR and FPR
      of every group (``figures/<stage>/group_rates``) and a per-group reliability diagram with
      each group's ECE (``figures/<stage>/reliability``), from per-group sums of the
      statistics core (summed over the ranks under DDP, drawn on global rank zero). For a
      K-class module (``pl_module.num_classes``, e.g. ``FairLightningModule(num_classes=K)``),
      the rate figure has the classes on the x axis and one bar per group, in two panels: the
      selection rate ``P(yhat = c | g)`` (demographic parity, per class) and the TPR
      ``P(yhat = c | y = c, g)`` (the class's recall; equal opportunity, per class); the
      reliability diagram is the top-label one (confidence of the argmax against its accuracy).
      For a regression module (``pl_module.task == "regression"``), the group figure shows each
      group's mean prediction beside its mean target and its mean squared error
      (``figures/<stage>/group_rates``), and the second figure each group's empirical CDF of the
      predictions with the largest gap between them marked (``figures/<stage>/prediction_cdf``;
      on the bin edges of the module's ``val/cdf_gap``, ``bin_edges`` or the first batch's range);
    * the HParams table: when a fit (or a validation or test run) is set up, the settings of the
      run (:func:`run_hparams`: the swept ones first, then the mode and its own settings, then
      the optimizer's and the data's; nothing the mode does not use) with the metric names of ``hp_metrics`` (once per logger,
      before Lightning's own declaration, which TensorBoard would otherwise keep); at the end of
      every validation and test run, each ``hp/...`` metric copied from
      ``trainer.callback_metrics``. Placeholders are NaN (not yet measured), not 0.
      ``TensorBoardLogger(..., default_hp_metric=False)`` avoids Lightning's extra ``hp_metric``
      scalar (-1).

    What it does not write, because ``FairLightningModule`` logs it already (and every logger
    receives it): per-group scalars ``val/selection_rate/<g>``, ``val/true_positive_rate/<g>``,
    ..., ``val/dp_difference``, ``val/eo_difference``, ``val/calibration_error/<g>``; in
    ``"lagrangian"`` mode ``fairness/violation_soft/<c>``, ``fairness/violation_hard/<c>``,
    ``fairness/multiplier/<c>`` (and their ``_max``), ``train/lagrangian``; the gradient-norm
    ratio of the fairness term to the task term ``train/grad_norm_ratio``
    (``grad_ratio_every_n_steps``); ``train/eta``. Per-step values are written every
    ``Trainer(log_every_n_steps=...)`` steps. ``GroupCalibrationCallback`` adds
    ``calibration/...``.

    Without a ``TensorBoardLogger`` the callback does nothing and warns once. Nothing happens
    during the sanity check.

    Args:
        n_bins: equal-width probability bins of the reliability diagram.
        bin_edges: regression only: the prediction values at which the groups' CDFs are drawn
            (sorted, finite); default the module's ``cdf_gap`` metric's edges (``FairLightningModule``
            sets them from the training targets), else 100 edges over the first validation
            batch's predictions.
        figures: draw the figures (``False``: HParams only, and no extra work per batch).
        hp_metrics: HParams metric name -> ``callback_metrics`` key; ``None`` or ``{}``
            disables the HParams part. Add e.g. ``"hp/test_ece_after_max":
            "calibration/test_ece_after_max"`` with a ``GroupCalibrationCallback``.

    Raises:
        ValueError: ``n_bins`` not a positive int, or ``hp_metrics`` not a mapping of strings.

    Example:
        >>> logger = TensorBoardLogger("runs", default_hp_metric=False)
        >>> trainer = pl.Trainer(logger=logger, callbacks=[FairnessDashboard()])  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        n_bins: int = 15,
        figures: bool = True,
        hp_metrics: Mapping[str, str] | None = DEFAULT_HP_METRICS,
        bin_edges: Sequence[float] | Tensor | None = None,
    ) -> None:
        self.n_bins = check_n_bins(n_bins)
        self.bin_edges = None if bin_edges is None else check_bin_edges(bin_edges)
        self._edges: Tensor | None = None  # the edges in use (regression)
        self._regression = False
        hp_metrics = {} if hp_metrics is None else hp_metrics
        if not isinstance(hp_metrics, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in hp_metrics.items()
        ):
            raise ValueError(f"`hp_metrics` must be a mapping of metric names to callback_metrics keys, got {hp_metrics!r}")
        self.figures = bool(figures)
        self.hp_metrics = dict(hp_metrics)
        self._logger: TensorBoardLogger | None = None
        self._warned = False
        self._hparams_logged: set[int] = set()
        self._sums: tuple[Tensor, Tensor] | None = None
        self._num_classes: int | None = None

    # --- set-up -------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if self._logger is None:
            if not self._warned:
                rank_zero_warn(
                    "FairnessDashboard found no TensorBoardLogger in `trainer.loggers`; it does nothing. "
                    "Pass `Trainer(logger=TensorBoardLogger(...))` to get its figures and HParams.",
                    category=UserWarning,
                )
                self._warned = True
            return
        self._num_classes = _num_classes_of(pl_module)
        self._regression = getattr(pl_module, "task", None) == "regression"
        # regression: the given edges, else read at the first batch (the module sets its own in its `setup`)
        self._edges = self.bin_edges
        if self.figures:
            num_groups_of(pl_module)
        if stage != "predict":
            # before Lightning's own `log_hyperparams` of this run: TensorBoard keeps the first HParams declaration
            self._log_hparams(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._sums = None

    def _log_hparams(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger
        if logger is None or not self.hp_metrics or id(logger) in self._hparams_logged:
            return
        self._hparams_logged.add(id(logger))
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        datamodule = {**dm.hparams_initial, **dm.hparams} if dm is not None else {}
        params = run_hparams(dict(pl_module.hparams_initial), datamodule, swept_keys(), num_classes=self._num_classes)
        logger.log_hyperparams(params, {name: math.nan for name in self.hp_metrics})

    def _log_hp_metrics(self, trainer: pl.Trainer) -> None:
        if self._logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        available = trainer.callback_metrics
        values = {name: float(available[key]) for name, key in self.hp_metrics.items() if key in available}
        if values:
            self._logger.log_metrics(values, step=trainer.global_step)

    # --- accumulation and figures --------------------------------------------------------------
    def _active(self, trainer: pl.Trainer) -> bool:
        return self._logger is not None and self.figures and not trainer.sanity_checking

    def _reset(self, trainer: pl.Trainer) -> None:
        if self._active(trainer):
            self._sums = None

    def _accumulate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, dataloader_idx: int
    ) -> None:
        if not self._active(trainer) or dataloader_idx != 0:
            return
        k = self._num_classes
        logits, target, groups = evaluation_outputs(pl_module, outputs, batch, num_classes=k)
        num_groups = num_groups_of(pl_module)
        if self._regression:  # (5, G) group sums; (G, E + 1) histogram of the predictions
            preds = logits.reshape(-1).double()
            edges = self._regression_edges(pl_module, preds)
            rates = regression_group_sums(preds, target.double(), groups, num_groups, validate_args=False).stack()
            bins = prediction_histogram(preds, groups, num_groups, edges)
        elif k is None:
            probs = torch.sigmoid(logits.double())
            hard = hard_predictions(probs, getattr(pl_module, "threshold", 0.5))
            rates = group_sums(hard, target, groups, num_groups).stack()
            bins = calibration_sums(probs, target, groups, num_groups, n_bins=self.n_bins)
        else:  # (4, K, G) one-vs-rest sums of the argmax; top-label calibration sums
            probs = torch.softmax(logits.double(), 1)
            rates = multiclass_group_sums(probs, target, groups, num_groups, k).stack()
            confidence, predicted = probs.max(1)
            correct = (predicted == target.long()).double()
            bins = calibration_sums(confidence, correct, groups, num_groups, n_bins=self.n_bins)
        self._sums = (rates, bins) if self._sums is None else (self._sums[0] + rates, self._sums[1] + bins)

    def _regression_edges(self, pl_module: pl.LightningModule, preds: Tensor) -> Tensor:
        """The CDF edges: given, else the module's ``cdf_gap`` edges, else 100 over this batch's range
        (then kept for the rest of the run, so that every batch and rank bins alike)."""
        if self._edges is None:
            metrics = getattr(pl_module, "val_metrics", None)
            metric = metrics["cdf_gap"] if metrics is not None and "cdf_gap" in metrics else None
            if metric is not None and hasattr(metric, "bin_edges"):
                self._edges = metric.bin_edges.detach().double().cpu()
            else:
                low, high = (float(preds.min()), float(preds.max())) if preds.numel() else (0.0, 1.0)
                pad = 0.05 * (high - low) if high > low else 1.0
                self._edges = torch.linspace(low - pad, high + pad, 100, dtype=torch.float64)
        return self._edges.to(preds.device)

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active(trainer):
            return
        num_groups = num_groups_of(pl_module)
        if self._sums is None:  # no batch on this rank: it still takes part in the reduction
            device = pl_module.device
            classes = () if self._num_classes is None else (self._num_classes,)
            if self._regression:
                edges = self._regression_edges(pl_module, torch.zeros(0, dtype=torch.float64))
                self._sums = (
                    torch.zeros(5, num_groups, dtype=torch.float64, device=device),
                    torch.zeros(num_groups, edges.numel() + 1, dtype=torch.float64, device=device),
                )
            else:
                self._sums = (
                    torch.zeros(4, *classes, num_groups, dtype=torch.float64, device=device),
                    torch.zeros(num_groups, self.n_bins, 3, dtype=torch.float64, device=device),
                )
        rates, bins = (reduce_sum(trainer, s).cpu() for s in self._sums)
        self._sums = None
        if not trainer.is_global_zero:
            return
        names = group_names(pl_module, num_groups)
        threshold = getattr(pl_module, "threshold", 0.5)
        step = trainer.global_step
        experiment = self._logger.experiment
        title = f"{stage}, step {step}"
        if self._regression:
            stats = regression_statistics_figure(RegressionSums.from_stacked(rates), names, title=title)
            experiment.add_image(RATES_TAG.format(stage=stage), render(stats), step, dataformats="HWC")
            cdf = prediction_cdf_figure(bins, self._edges, names, title=title)
            experiment.add_image(CDF_TAG.format(stage=stage), render(cdf), step, dataformats="HWC")
            return
        if self._num_classes is None:
            rates_figure = group_rates_figure(GroupSums.from_stacked(rates), names, title=f"{title}, threshold {threshold:g}")
            reliability_title = title
        else:
            classes = _class_names_of(pl_module, self._num_classes)
            rates_figure = group_rates_figure(GroupSums.from_stacked(rates), names, title=f"{title}, argmax", class_names=classes)
            reliability_title = f"{title}, top label"
        experiment.add_image(RATES_TAG.format(stage=stage), render(rates_figure), step, dataformats="HWC")
        reliability = reliability_figure(bins, names, title=reliability_title)
        experiment.add_image(RELIABILITY_TAG.format(stage=stage), render(reliability), step, dataformats="HWC")

    # --- hooks --------------------------------------------------------------------------------
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset(trainer)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._accumulate(trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module, "val")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_hp_metrics(trainer)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset(trainer)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._accumulate(trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_hp_metrics(trainer)


def _num_classes_of(pl_module: pl.LightningModule) -> int | None:
    """``pl_module.num_classes`` when it is a K-class module (an int >= 2), else ``None`` (binary)."""
    k = getattr(pl_module, "num_classes", None)
    return int(k) if isinstance(k, int) and not isinstance(k, bool) and k >= 2 else None


def _class_names_of(pl_module: pl.LightningModule, num_classes: int) -> list[str]:
    """The module's class names (the ones in its ``val/...`` keys), else ``class_<c>``."""
    names = getattr(pl_module, "class_names", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class_{c}" for c in range(num_classes)]


# --- figures (matplotlib's object API on the Agg canvas: no pyplot, no global backend) -----------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def render(figure) -> np.ndarray:
    """Draw a matplotlib ``Figure`` on an Agg canvas; ``(H, W, 3)`` uint8 pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _nan_where_undefined(rate) -> np.ndarray:
    return torch.where(rate.valid, rate.value, torch.full_like(rate.value, math.nan)).double().numpy()


def group_rates_figure(sums: GroupSums, names: Sequence[str], *, title: str = "", class_names: Sequence[str] | None = None):
    """Bars of the selection rate, TPR and FPR of every group (undefined rates are left out).

    Args:
        sums: per-group sums of hard predictions (``fair_lightning.functional.group_sums``); with
            ``class_names``, K-class one-vs-rest sums with ``(K, G)`` fields
            (``fair_lightning.functional.multiclass_group_sums``).
        names: group names.
        title: figure title.
        class_names: the K class names: then two panels, the selection rate and the TPR (recall)
            of each class, the classes on the x axis and one bar per group; each panel's title
            gives the largest gap between groups and its class.

    Returns:
        A matplotlib ``Figure``.
    """
    if class_names is not None:
        return _class_rates_figure(sums, names, class_names, title=title)
    rates = {
        "selection rate": sums.selection_rate(),
        "TPR": sums.true_positive_rate(),
        "FPR": sums.false_positive_rate(),
    }
    num_groups = len(names)
    figure = _figure(max(4.0, 0.9 * num_groups + 2.0), 3.4)
    ax = figure.add_subplot()
    x = np.arange(num_groups)
    width = 0.8 / len(rates)
    for k, (label, rate) in enumerate(rates.items()):
        ax.bar(x + (k - (len(rates) - 1) / 2) * width, _nan_where_undefined(rate), width, label=label)
    ax.set_xticks(x, list(names), rotation=30 if num_groups > 3 else 0, ha="right" if num_groups > 3 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.legend(fontsize="small", ncols=len(rates))
    ax.set_title(f"Per-group rates ({title})" if title else "Per-group rates", fontsize="medium")
    return figure


def _class_rates_figure(sums: GroupSums, names: Sequence[str], class_names: Sequence[str], *, title: str = ""):
    """:func:`group_rates_figure` for K classes: per class (x axis) one bar per group, two panels."""
    num_classes, num_groups = len(class_names), len(names)
    if tuple(sums.count.shape) != (num_classes, num_groups):
        raise ValueError(
            f"K-class sums must have ({num_classes}, {num_groups}) fields (classes, groups), got {tuple(sums.count.shape)}"
        )
    panels = {
        "selection rate P(ŷ=c | g)": _nan_where_undefined(sums.selection_rate()),
        "TPR (recall) P(ŷ=c | y=c, g)": _nan_where_undefined(sums.true_positive_rate()),
    }
    figure = _figure(max(6.0, 0.12 * num_classes * num_groups + 0.35 * num_classes + 2.5), 5.6)
    axes = figure.subplots(2, 1, sharex=True)
    x = np.arange(num_classes)
    width = 0.8 / num_groups
    colors = [f"C{g % 10}" for g in range(num_groups)]
    for ax, (label, rate) in zip(axes, panels.items()):
        for g, name in enumerate(names):
            ax.bar(x + (g - (num_groups - 1) / 2) * width, rate[:, g], width, label=name, color=colors[g])
        # per class, the largest minus the smallest defined group rate (NaN with fewer than two)
        gap = np.array([np.ptp(r[~np.isnan(r)]) if (~np.isnan(r)).sum() >= 2 else np.nan for r in rate])
        worst = "" if np.isnan(gap).all() else f"; largest gap {np.nanmax(gap):.3f} ({class_names[int(np.nanargmax(gap))]})"
        ax.set_title(f"{label}{worst}", fontsize="small", loc="left")
        top = 0.0 if np.isnan(rate).all() else float(np.nanmax(rate))
        ax.set_ylim(0, min(1.0, 1.15 * top) if top > 0 else 1.0)
        ax.set_ylabel("rate")
        ax.grid(axis="y", linewidth=0.5, alpha=0.5)
    rotate = num_classes > 12 or max(len(c) for c in class_names) > 6
    axes[1].set_xticks(x, list(class_names), rotation=30 if rotate else 0, ha="right" if rotate else "center")
    axes[1].set_xlabel("class")
    figure.suptitle(f"Per-class rates by group ({title})" if title else "Per-class rates by group", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()  # outside the panels: no bar hidden under it
    figure.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=min(num_groups, 6), frameon=False)
    return figure


def regression_statistics_figure(sums: RegressionSums, names: Sequence[str], *, title: str = ""):
    """Per group: mean prediction beside mean target (left), mean squared error (right)."""
    count = sums.count.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        pred, target, mse = (np.where(count > 0, f.numpy() / count, np.nan) for f in (sums.pred, sums.target, sums.squared_error))
    figure = _figure(max(6.0, 1.1 * len(names) + 3.0), 3.4)
    left, right = figure.subplots(1, 2)
    x = np.arange(len(names))
    left.bar(x - 0.2, pred, 0.4, label="mean prediction")
    left.bar(x + 0.2, target, 0.4, label="mean target", alpha=0.6)
    gap = np.nanmax(pred) - np.nanmin(pred) if np.isfinite(pred).sum() > 1 else 0.0
    left.set_title(f"means by group (prediction gap {gap:.3f})", fontsize="small")
    left.legend(fontsize="x-small")
    right.bar(x, mse, 0.6, color="tab:red")
    right.set_title(f"mean squared error by group (max {np.nanmax(mse):.3f})" if np.isfinite(mse).any() else
                    "mean squared error by group", fontsize="small")
    for ax in (left, right):
        ax.set_xticks(x, [f"{n}\n(n={int(c)})" for n, c in zip(names, count)], fontsize="x-small")
    figure.suptitle(f"Regression by group ({title})" if title else "Regression by group", fontsize="medium")
    return figure


def prediction_cdf_figure(histogram: Tensor, edges: Tensor, names: Sequence[str], *, title: str = ""):
    """Each group's empirical CDF of the predictions at ``edges`` (from :func:`prediction_histogram`
    counts), with the largest gap between two groups marked (the Kolmogorov-Smirnov distance the
    module logs as ``cdf_gap``, on these edges)."""
    counts = histogram.numpy()
    total = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.where(total > 0, counts.cumsum(1)[:, :-1] / total, np.nan)  # (G, E) at the edges
    x = edges.numpy()
    figure = _figure(6.4, 3.6)
    ax = figure.subplots()
    for g, name in enumerate(names):
        if total[g, 0] > 0:
            ax.step(x, cdf[g], where="post", label=f"{name} (n={int(total[g, 0])})")
    present = total[:, 0] > 0
    if present.sum() > 1:
        spread = np.nanmax(cdf[present], 0) - np.nanmin(cdf[present], 0)
        i = int(np.nanargmax(spread))
        ax.vlines(x[i], np.nanmin(cdf[present][:, i]), np.nanmax(cdf[present][:, i]), colors="black", linestyles="dashed", linewidth=1.5)
        ax.set_title(f"largest CDF gap {spread[i]:.3f} at {x[i]:.3g}", fontsize="small")
    ax.set_xlabel("prediction", fontsize="small")
    ax.set_ylabel("share of the group at or below", fontsize="small")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="x-small", loc="lower right")
    figure.suptitle(f"Prediction CDF by group ({title})" if title else "Prediction CDF by group", fontsize="medium")
    return figure


def reliability_figure(sums: Tensor, names: Sequence[str], *, title: str = "", ax=None):
    """Per-group reliability diagram: mean probability vs. frequency of positives in each bin.

    Args:
        sums: ``(G, n_bins, 3)`` calibration sums (``fair_lightning.functional.calibration_sums``).
        names: group names.
        title: figure title.
        ax: a matplotlib ``Axes`` to draw on (for side-by-side panels); default a new figure.

    Returns:
        The matplotlib ``Figure`` (``ax``'s when given); the legend gives each group's ECE.
    """
    count, conf, label = sums.double().unbind(-1)
    ece = calibration_error_from_sums(sums)
    if ax is None:
        figure = _figure(4.6, 4.0)
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect")
    for g, name in enumerate(names):
        seen = count[g] > 0
        if not bool(seen.any()):
            continue
        mean_prob = (conf[g][seen] / count[g][seen]).numpy()
        frequency = (label[g][seen] / count[g][seen]).numpy()
        ax.plot(mean_prob, frequency, marker="o", markersize=3, label=f"{name} (ECE {float(ece.value[g]):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction of positives")
    ax.legend(fontsize="small")
    ax.set_title(f"Reliability ({title})" if title else "Reliability", fontsize="medium")
    return figure


def classwise_reliability_figure(
    sums: Tensor,
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    *,
    title: str = "",
    ncols: int | None = None,
):
    """Per-class (one-vs-rest) reliability diagrams of K-class probabilities, one curve per group.

    A grid of small panels with shared axes, one per class (titled with the class name), each
    drawn by :func:`reliability_figure`; each group's ECE for that class is written in the
    panel's corner in the group's colour, and the legend (groups) is drawn once.

    Args:
        sums: ``(G, K, n_bins, 3)`` classwise calibration sums (the first of
            :func:`fair_lightning.functional.multiclass_calibration_sums`).
        names: group names.
        class_names: class names (default ``class_0``, ...).
        title: figure title.
        ncols: panels per row (default: one row up to 4 classes, else ``ceil(sqrt(K))``, at
            most 5).

    Returns:
        A matplotlib ``Figure``.
    """
    if sums.ndim != 4 or sums.shape[-1] != 3:
        raise ValueError(f"`sums` must be (G, K, n_bins, 3) classwise calibration sums, got shape {tuple(sums.shape)}")
    num_classes = sums.shape[1]
    class_names = [f"class_{k}" for k in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"`class_names` must have {num_classes} names (one per class), got {len(class_names)}")
    ncols = ncols or (num_classes if num_classes <= 4 else min(5, math.ceil(math.sqrt(num_classes))))
    nrows = math.ceil(num_classes / ncols)
    figure = _figure(2.3 * ncols + 0.6, 2.3 * nrows + 1.3)
    axes = figure.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    ece = calibration_error_from_sums(sums)  # (G, K)
    for k, ax in enumerate(axes[:num_classes]):
        reliability_figure(sums[:, k], names, ax=ax)
        ax.get_legend().remove()
        ax.set(xlabel="mean probability", ylabel="fraction of the class")
        ax.set_title(class_names[k], fontsize="medium")
        curves = ax.get_lines()[1:]  # after the diagonal: the groups with samples, in order
        seen = [g for g in range(len(names)) if bool(sums[g, k, :, 0].sum() > 0)]
        for row, (g, line) in enumerate(zip(seen, curves)):
            ax.text(0.97, 0.04 + 0.11 * (len(seen) - 1 - row), f"{float(ece.value[g, k]):.3f}", color=line.get_color(),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small",
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    for ax in axes[num_classes:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:num_classes]):
        ax.label_outer()
        if i + ncols >= num_classes:  # no panel below: keep the x tick labels and label
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("mean probability", visible=True)
    handles = axes[0].get_lines()
    labels = ["perfect"] + [names[g] for g in range(len(names)) if bool(sums[g, 0, :, 0].sum() > 0)]
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), max(2, ncols)), fontsize="small",
                  title="group (ECE per class in each panel's corner)", title_fontsize="small")
    figure.suptitle(f"Per-class reliability ({title})" if title else "Per-class reliability", fontsize="medium")
    return figure


__all__ = [
    "COMMON_HPARAMS",
    "DATA_HPARAMS",
    "DEFAULT_HP_METRICS",
    "method_hparams",
    "FairnessDashboard",
    "classwise_reliability_figure",
    "group_rates_figure",
    "reliability_figure",
    "run_hparams",
    "swept_keys",
]
