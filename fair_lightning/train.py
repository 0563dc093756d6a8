"""The Hydra application: one fairness experiment per job, results in ``metrics.json``.

Command line (``python -m fair_lightning.train`` or the console script ``fair-lightning-train``)::

    python -m fair_lightning.train experiment=adult_sex fairness=penalty_dp fairness.eta=4
    python -m fair_lightning.train -m experiment=adult_sex fairness=penalty_dp \\
        fairness.eta=0,0.5,1,2,4,8,16,32 hydra/launcher=parallel

The configs are shipped inside the package (``fair_lightning/conf``, groups ``data``, ``model``,
``fairness``, ``trainer``, ``logger``, ``callbacks``, ``experiment``, ``hydra``); the repository's
top-level ``conf/README.md`` documents them, the sweeps and the launchers.

A job (:func:`run`):

1. seeds everything (``seed``);
2. instantiates the data module (``data``) and calls ``setup("fit")``;
3. builds the model (``model``) with ``in_features=datamodule.num_features`` (and
   ``out_features=num_classes`` for a K-class data set) and the
   :class:`~fair_lightning.module.FairLightningModule` from ``module`` merged with ``fairness``
   (the method's ``mode`` and arguments), with ``num_groups`` and ``group_names`` of the data;
   the ``task`` group (``task=binary``, ``multiclass``, ``regression``) sets ``module.task`` and
   that task's default data, and a ``fairness`` option or data set that does not fit the task
   stops the job with a message naming both (:func:`check_task`);
4. builds loggers, callbacks and the ``Trainer``, fits, tests;
5. returns a flat record: validation and test accuracy, AUROC, demographic-parity difference and
   ratio, equalized-odds difference (``val_accuracy``, ``test_dp_difference``, ...), per-group
   selection rates, TPR, FPR, accuracy and calibration error (``test_selection_rate_by_group``:
   ``{group: value}``), the method (``mode``, ``fairness``, ``eta``, ``tolerance``), timings
   (``setup_seconds``, ``fit_seconds``, ``test_seconds``) and every logged value (``metrics``).

:func:`main` (the Hydra entry point) runs :func:`run_job`, which writes that record as
``metrics.json`` into ``HydraConfig.get().runtime.output_dir`` with ``status: "ok"``, or
``status: "failed"`` with the error and a traceback summary: a failed job of a sweep never
raises into the launcher, so the other jobs' results survive, and
:func:`fair_lightning.pareto.load_sweep` reports and skips it. The job returns ``objective``
(one float or a tuple of finite floats; ``None`` when it failed) for sweepers that optimize, such
as Optuna's. The record is written when the job starts (``status: "running"``, ``pid``) and
completed when it ends (``ok``, ``failed``, or ``killed`` on a ``SystemExit`` such as Lightning's
``SIGTERMException``); see :mod:`fair_lightning._records`.

Configuration errors stop early with a readable message: a misspelt override
(``fairness.etaa=1``) is refused by Hydra before any job starts (``Key 'etaa' is not in
struct``); an unknown data set (``data=nope`` lists the ``data`` options, ``data.dataset=nope``
gives the data module's ``ValueError`` with the valid names) ends a single run with that one line
and exit status 1, not a traceback.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from fair_lightning import _records

log = logging.getLogger(__name__)

#: Name of the file every job writes into its output directory.
METRICS_FILE = "metrics.json"
#: Version of the layout of ``metrics.json``.
METRICS_VERSION = 1
#: Scalar metrics copied from ``<stage>/<name>`` to ``<stage>_<name>`` (stage ``val`` and ``test``).
SCALAR_METRICS = (
    "accuracy",
    "auroc",
    "loss",
    "dp_difference",
    "dp_ratio",
    "eo_difference",
    "eopp_difference",
    "calibration_error_max",
    "dp_difference_ci_low",
    "dp_difference_ci_high",
    "eo_difference_ci_low",
    "eo_difference_ci_high",
    "mse",
    "mae",
    "mse_difference",
    "cdf_gap",
)
#: Per-group metrics copied from ``<stage>/<name>/<group>`` to ``<stage>_<name>: {group: value}``.
GROUP_METRICS = (
    "selection_rate",
    "true_positive_rate",
    "false_positive_rate",
    "accuracy",
    "calibration_error",
    "count",
    "mean_prediction",
    "mean_squared_error",
)
#: Record keys that ``objective`` may name.
OBJECTIVE_KEYS = tuple(f"{stage}_{name}" for stage in ("val", "test") for name in SCALAR_METRICS) + (
    "fit_seconds",
    "total_seconds",
)
#: Lightning warnings that say nothing in this application (in-memory batches need no workers).
_QUIET_WARNINGS = (".*does not have many workers.*", ".*The number of training batches.*", ".*LeafSpec.*")


@contextlib.contextmanager
def _quiet(*patterns: str) -> Iterator[None]:
    """Silence :data:`_QUIET_WARNINGS` (and ``patterns``) inside the block."""
    with warnings.catch_warnings():
        for pattern in (*_QUIET_WARNINGS, *patterns):
            warnings.filterwarnings("ignore", message=pattern)
        yield


class Components(NamedTuple):
    """What :func:`build` makes from a config."""

    datamodule: Any
    model: Any
    module: Any
    trainer: Any


# ---------------------------------------------------------------------------------- tasks
#: the fairness methods (``mode``) each task takes; penalty's loss must fit the task as well
TASK_MODES = {
    "binary": ("erm", "penalty", "lagrangian", "adversarial"),
    "multiclass": ("erm", "penalty", "lagrangian", "adversarial"),
    "regression": ("erm", "penalty", "bounded_group_loss"),
}


def _config_task(cfg: DictConfig) -> str | None:
    task = module_arguments(cfg).get("task")
    return None if task is None else str(task)


def check_task(cfg: DictConfig, datamodule: Any = None) -> None:
    """Refuse a ``fairness`` option (or a data set) that does not fit ``task``, naming both.

    Raises:
        ValueError: for instance ``task=regression`` with ``fairness=lagrangian_dp``, or
            ``task=binary`` with a regression data set.
    """
    from fair_lightning.losses import REGRESSION_LOSSES

    task = _config_task(cfg)
    fairness = _container(cfg.get("fairness")) or {}
    mode = fairness.get("mode", "erm")
    if task is not None and isinstance(mode, str) and mode in sum(TASK_MODES.values(), ()):
        definition = fairness.get("fairness", "demographic_parity") if mode == "penalty" else None
        regression_loss = isinstance(definition, str) and definition in REGRESSION_LOSSES
        fits = mode in TASK_MODES.get(task, ()) and (mode != "penalty" or regression_loss == (task == "regression"))
        if not fits:
            chosen = f"mode={mode!r}" + (f", fairness={definition!r}" if definition is not None else "")
            options = "erm, penalty_regression_dp, bounded_group_loss" if task == "regression" else (
                "erm, penalty_dp, penalty_eo, mutual_information, lagrangian_dp, lagrangian_eo, adversarial"
            )
            raise ValueError(f"the fairness config ({chosen}) does not fit task={task}; task={task} takes fairness={options}")
    data_task = getattr(datamodule, "task", None) if datamodule is not None else None
    if data_task is not None and data_task != (task or data_task):
        name = datamodule.hparams.get("dataset")
        raise ValueError(f"data set {name!r} is a {data_task} data set, but task={task}; pass task={data_task}")


# ---------------------------------------------------------------------------------- building
def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def module_arguments(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.module`` merged with ``cfg.fairness`` (the fairness group's keys win), resolved."""
    merged = dict(_container(cfg.module) or {})
    merged.update(_container(cfg.get("fairness")) or {})
    return merged


def _instantiate_named(node: Any, what: str, **kwargs: Any) -> list[Any]:
    """Instantiate every entry of a ``{name: config}`` mapping that has a ``_target_`` (``null`` skips one)."""
    if node is None:
        return []
    if not isinstance(node, DictConfig):
        raise ValueError(f"`{what}` must be a mapping of names to configs with a `_target_`, got {node!r}")
    out = []
    for name, sub in node.items():
        if sub is None:
            continue
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            raise ValueError(f"`{what}.{name}` must be a config with a `_target_` (or null to disable it), got {sub!r}")
        out.append(hydra.utils.instantiate(sub, **kwargs))
    return out


def build(cfg: DictConfig, output_dir: str | os.PathLike) -> Components:
    """Build the data module (set up), the model, the ``FairLightningModule`` and the ``Trainer``.

    Args:
        cfg: a composed ``train`` config.
        output_dir: the job's directory (loggers' ``save_dir``, the trainer's ``default_root_dir``).

    Returns:
        The :class:`Components`.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from fair_lightning._fit_summary import FitSummary

    check_task(cfg)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")  # plain containers: checkpoints load with weights_only
    datamodule.setup("fit")
    check_task(cfg, datamodule)
    model, module = build_module(cfg, datamodule)
    loggers = _instantiate_named(cfg.get("logger"), "logger", save_dir=str(output_dir))
    callbacks = _instantiate_named(cfg.get("callbacks"), "callbacks")
    callbacks += selection_callbacks(cfg, module)
    # last: what the fit did, as seen where it ran (under ddp_spawn, in the workers)
    callbacks.append(FitSummary(Path(output_dir) / ".fit_summary.json"))
    trainer = hydra.utils.instantiate(cfg.trainer, _partial_=True, _convert_="all")(
        default_root_dir=str(output_dir),
        logger=loggers if loggers else False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
    )
    return Components(datamodule, model, module, trainer)


def build_module(cfg: DictConfig, datamodule: Any) -> tuple[Any, Any]:
    """The model and the ``FairLightningModule`` of ``cfg`` for a set-up data module (untrained)."""
    # K classes: the model's output width and the module's num_classes come from the data set
    num_classes = getattr(datamodule, "num_classes", None)
    classes = {} if num_classes is None else {"out_features": num_classes}
    model = hydra.utils.instantiate(cfg.model, in_features=datamodule.num_features, **classes)
    module_cfg = OmegaConf.create(module_arguments(cfg))
    module = hydra.utils.instantiate(module_cfg, _partial_=True)(
        model=model, num_groups=datamodule.num_groups, group_names=list(datamodule.group_names),
        **({} if num_classes is None else {"num_classes": num_classes}),
    )
    return model, module


def selection_callbacks(cfg: DictConfig, module: Any) -> list:
    """``ConstrainedModelSelection`` for a constrained method (``selection.enabled``): the best epoch
    that meets the method's constraints on validation (hierarchical ones over their partitions
    too), judged after group thresholds (``selection.thresholds``; one constraint over the module's
    own groups only)."""
    from fair_lightning.callbacks import ConstrainedModelSelection

    options = cfg.get("selection") or {}
    multiclass = getattr(module, "num_classes", None) is not None
    # K classes: the user's constraints (selection judges each class's one-vs-rest rates itself)
    constraints = getattr(module.method, "user_constraints" if multiclass else "constraints", None)
    if not options.get("enabled", True):
        return []
    stated = options.get("constraints")
    if stated is not None and getattr(module, "task", None) == "regression":
        raise ValueError(
            "`selection.constraints` states a classifier's constraints; a regression job (task=regression) is selected "
            f"on its method's bound (fairness=bounded_group_loss), got {stated!r}"
        )
    if stated is not None:
        # any method judged against the stated constraints (an ERM run then returns the
        # unconstrained model with group thresholds: the post-processing route)
        stated = dict(stated) if isinstance(stated, Mapping) else stated
        if not isinstance(stated, Mapping) or not stated:
            raise ValueError(
                "`selection.constraints` must be a mapping {definition: tolerance}, e.g. "
                f"'selection.constraints={{demographic_parity: 0.02}}', got {stated!r}"
            )
        from fair_lightning.constraints import FairnessConstraint

        constraints = []
        for definition, tolerance in stated.items():
            try:
                constraints.append(FairnessConstraint(definition, tolerance))
            except ValueError as err:
                raise ValueError(f"`selection.constraints` {{{definition}: {tolerance}}}: {err}") from None
    if getattr(module, "task", None) == "regression":
        # the bounded group loss on squared errors: each group's validation MSE <= bound
        method = module.method
        if getattr(method, "bound", None) is None or getattr(method, "loss_name", None) != "squared_error":
            return []
        return [ConstrainedModelSelection([("bounded_group_loss", method.bound)], min_count=options.get("min_count", 10))]
    if not constraints:
        return []
    judged = [c for c in constraints if c.definition != "accuracy_parity"]
    if not judged:
        return []
    # group thresholds are binary only
    thresholds = bool(options.get("thresholds", True)) and len(judged) == 1 and judged[0].partition is None and not multiclass
    return [
        ConstrainedModelSelection(
            judged, thresholds=thresholds, min_count=options.get("min_count", 10), margin=options.get("margin", 0.0),
            cv_folds=options.get("cv_folds", 5),
        )
    ]


# ---------------------------------------------------------------------------------- validation
#: ``Trainer`` options that must be integers (or null) and numbers (or null), checked before building.
TRAINER_INTEGERS = (
    "max_epochs", "min_epochs", "max_steps", "min_steps", "log_every_n_steps", "num_sanity_val_steps",
    "check_val_every_n_epoch", "accumulate_grad_batches",
)  # fmt: skip
TRAINER_NUMBERS = (
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches", "val_check_interval",
    "gradient_clip_val",
)  # fmt: skip
_NOT_ARGUMENTS = ("_target_", "_convert_", "_partial_", "_recursive_", "_args_")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _numeric_kind(annotation: Any) -> str | None:
    """``"int"``, ``"number"`` or ``None`` from a parameter's annotation (as written, e.g. ``"float | None"``)."""
    import re

    if annotation is inspect.Parameter.empty:
        return None
    words = set(re.findall(r"[A-Za-z_]+", annotation if isinstance(annotation, str) else repr(annotation)))
    if words & {"str", "Any", "object", "Callable", "Mapping", "Sequence", "list", "dict", "tuple"}:
        return None
    if "float" in words:
        return "number"
    return "int" if "int" in words else None


def _check_arguments(node: Mapping[str, Any], where: Mapping[str, str], target: Any) -> None:
    """Check the values of ``node`` against the annotations of ``target``'s constructor."""
    try:
        cls = hydra.utils.get_class(target) if isinstance(target, str) else target
        parameters = dict(inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters)
    except Exception:  # an unknown target fails later, with Hydra's own message
        return
    mode = node.get("mode")
    if isinstance(mode, str):  # the method's own arguments (FairLightningModule passes them on)
        from fair_lightning.methods import METHODS

        method = METHODS.get(mode)
        if method is not None:
            parameters.update(
                (k, v) for k, v in inspect.signature(method.__init__).parameters.items() if k not in parameters
            )
    for key, value in node.items():
        if key in _NOT_ARGUMENTS:
            continue
        name = where.get(key, key)
        if isinstance(value, Mapping) and "_target_" in value:
            _check_arguments(value, {k: f"{name}.{k}" for k in value}, value["_target_"])
            continue
        if value is None or key not in parameters:
            continue
        kind = _numeric_kind(parameters[key].annotation)
        if kind == "int" and not _is_int(value):
            raise ValueError(f"`{name}` must be an integer, got {_got(value)}")
        if kind == "number" and (not _is_number(value) or math.isnan(value)):
            raise ValueError(f"`{name}` must be a number, got {_got(value)}")


def validate_config(cfg: DictConfig) -> None:
    """Refuse a config whose numbers are not numbers, naming the option (before anything is built).

    Checks ``seed`` (an integer), ``num_threads`` (null or an integer >= 1), the ``Trainer``'s
    counts (:data:`TRAINER_INTEGERS`: integers) and fractions (:data:`TRAINER_NUMBERS`: numbers),
    and every ``module``/``fairness`` argument whose constructor annotation is ``int`` or
    ``float`` (so ``fairness.eta=abc`` or ``fairness.eta=nan`` is refused as ``fairness.eta``).

    Raises:
        ValueError: naming the option, the expected form and the value received.
    """
    seed = cfg.get("seed")
    if not _is_int(seed):
        raise ValueError(f"`seed` must be an integer, got {_got(seed)}")
    threads = cfg.get("num_threads")
    if threads is not None and not (_is_int(threads) and threads >= 1):
        raise ValueError(f"`num_threads` must be null or an integer >= 1, got {_got(threads)}")
    trainer = cfg.get("trainer") or {}
    for key in TRAINER_INTEGERS:
        value = trainer.get(key)
        if value is not None and not _is_int(value):
            raise ValueError(f"`trainer.{key}` must be an integer, got {_got(value)}")
    for key in TRAINER_NUMBERS:
        value = trainer.get(key)
        if value is not None and (not _is_number(value) or math.isnan(value)):
            raise ValueError(f"`trainer.{key}` must be a number, got {_got(value)}")
    crossfit_folds(cfg)
    fairness = _container(cfg.get("fairness")) or {}
    arguments = module_arguments(cfg)
    where = {key: (f"fairness.{key}" if key in fairness else f"module.{key}") for key in arguments}
    _check_arguments(arguments, where, arguments.get("_target_"))
    check_task(cfg)


# ---------------------------------------------------------------------------------- metrics
def _float(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def summarize_metrics(metrics: Mapping[str, Any], group_names: Sequence[str]) -> dict[str, Any]:
    """Flat summary of logged metrics: ``val_accuracy``, ``test_dp_difference``, per-group dicts.

    Args:
        metrics: logged keys (``"val/accuracy"``, ``"test/selection_rate/sex=Female"``, ...) to
            numbers or 0-d tensors.
        group_names: the groups, in id order.

    Returns:
        ``{"<stage>_<name>": float | None}`` for :data:`SCALAR_METRICS` and
        ``{"<stage>_<name>_by_group": {group: float | None}}`` for :data:`GROUP_METRICS`, for the
        stages ``val`` and ``test`` (``None`` where a value was not logged or is not finite).
    """
    out: dict[str, Any] = {}
    for stage in ("val", "test"):
        for name in SCALAR_METRICS:
            out[f"{stage}_{name}"] = _float(metrics.get(f"{stage}/{name}"))
        for name in GROUP_METRICS:
            out[f"{stage}_{name}_by_group"] = {g: _float(metrics.get(f"{stage}/{name}/{g}")) for g in group_names}
    return out


def fit_and_test(trainer: Any, module: Any, datamodule: Any, ckpt_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``trainer.fit`` (resumed from ``ckpt_path`` if given) then ``trainer.test``; the summary of
    :func:`summarize_metrics` plus timings.

    The validation metrics are those of the last validation run of ``fit``, or, when a selection
    callback restored another epoch, of the restored model. The raw logged values are under
    ``"metrics"``.
    """
    from fair_lightning._fit_summary import FitSummary, fit_summary

    for cb in trainer.callbacks:
        if isinstance(cb, FitSummary):
            cb.reset()
    with _quiet():
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
        fit_seconds = time.perf_counter() - start
        # epochs, steps and the selection as the process that trained saw them (ddp_spawn: the
        # workers; this process's trainer and callbacks learn only the weights and metrics)
        summary = dict(fit_summary(trainer))
        raw = {k: _float(v) for k, v in trainer.callback_metrics.items()}
        if summary.pop("restored"):
            # a selection callback restored another epoch (and its thresholds): validate what is returned
            trainer.validate(module, datamodule=datamodule, verbose=False)
            raw.update({k: _float(v) for k, v in trainer.callback_metrics.items()})
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        test_seconds = time.perf_counter() - start
    raw.update({k: _float(v) for k, v in trainer.callback_metrics.items()})
    record = summarize_metrics(raw, list(datamodule.group_names))
    record.update(
        **summary,
        fit_seconds=fit_seconds,
        test_seconds=test_seconds,
        metrics=dict(sorted(raw.items())),
    )
    return record


def selection_summary(trainer: Any) -> dict[str, Any]:
    """What a ``ConstrainedModelSelection`` chose and why, for ``metrics.json``: ``selection``
    (epoch, reason, the verdict's warnings, each constraint's certification on validation) and
    ``certified``, the worst certification (``"holds"``, ``"uncertain"``, ``"violated"``); empty
    without such a callback."""
    from fair_lightning.callbacks import ConstrainedModelSelection

    for cb in trainer.callbacks:
        if isinstance(cb, ConstrainedModelSelection) and cb.best_index is not None:
            summary = cb.summary()
            return {
                "certified": cb.certification()["worst"],
                "selection": {**summary, "reason": cb.reason, "warnings": cb.verdict()},
            }
    return {}


def describe_method(fairness: Mapping[str, Any]) -> dict[str, Any]:
    """``mode``, the fairness definition, ``eta`` and ``tolerance`` of a ``fairness`` config.

    ``eta`` is reported for the modes that use it (``"penalty"``, ``"adversarial"``) and
    ``tolerance`` for ``"lagrangian"`` (for ``"bounded_group_loss"``: its ``bound``, with the
    loss as the definition); the other is ``None``.
    """
    mode = fairness.get("mode", "erm")
    definition: Any = None
    if mode == "lagrangian":
        definition = fairness.get("constraints", "demographic_parity")
    elif mode in ("penalty", "adversarial"):
        definition = fairness.get("fairness", "demographic_parity")
    elif mode == "bounded_group_loss":
        definition = fairness.get("loss", "squared_error")
    if definition is not None and not isinstance(definition, str):  # a list of constraints, a loss object
        definition = json.dumps(_container(definition), default=str)
    eta = fairness.get("eta", 1.0) if mode in ("penalty", "adversarial") else None
    tolerance = fairness.get("tolerance", 0.01) if mode == "lagrangian" else None
    if mode == "bounded_group_loss":
        tolerance = fairness.get("bound")
    return {"mode": mode, "fairness": definition, "eta": _float(eta), "tolerance": _float(tolerance)}


def _check_objective(objective: Any) -> None:
    names = [objective] if isinstance(objective, str) else list(objective or [])
    unknown = [n for n in names if n not in OBJECTIVE_KEYS]
    if unknown:
        raise ValueError(f"`objective` names unknown metrics {unknown}; valid: {list(OBJECTIVE_KEYS)}")


def objective_values(record: Mapping[str, Any], objective: Any) -> float | tuple[float, ...] | None:
    """The value(s) ``objective`` names in ``record``: a float for a name, a tuple for a list, NaN if missing."""
    if objective is None:
        return None

    def value(name: str) -> float:
        v = _float(record.get(name))
        return math.nan if v is None else v

    if isinstance(objective, str):
        return value(objective)
    return tuple(value(name) for name in objective)


# ---------------------------------------------------------------------------------- running
def run(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train and evaluate one model from a composed config, in process; errors propagate.

    Args:
        cfg: a ``train`` config, e.g. from ``hydra.compose("train", overrides=[...])``.
        output_dir: where loggers and checkpoints go; default ``outputs/runs/<timestamp>``.
            Nothing is written there by this function itself (see :func:`run_job`).

    Returns:
        The record (see the module docstring) with ``status: "ok"``.

    Example:
        >>> from hydra import compose, initialize_config_module
        >>> with initialize_config_module("fair_lightning.conf", version_base="1.3"):
        ...     cfg = compose("train", overrides=["data=biased_lending", "trainer=fast", "logger=none"])
        >>> run(cfg, "/tmp/job")["test_accuracy"]  # doctest: +SKIP
        0.71
    """
    import lightning.pytorch as pl
    import torch

    if output_dir is None:
        output_dir = Path("outputs", "runs", datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f"))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_objective(cfg.get("objective"))
    validate_config(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    folds = crossfit_folds(cfg)
    if folds:
        return run_crossfit(cfg, output_dir, folds)
    start = time.perf_counter()
    with _quiet():
        parts = build(cfg, output_dir)
    setup_seconds = time.perf_counter() - start
    dm = parts.datamodule
    log.info(
        "%s; %s: %s; fitting %d epochs",
        dm,
        type(parts.model).__name__,
        ", ".join(f"{k}={v}" for k, v in describe_method(module_arguments(cfg)).items() if v is not None),
        parts.trainer.max_epochs,
    )
    ckpt_path = last_checkpoint(output_dir)
    if ckpt_path is not None:
        log.info("resuming from %s (the job was interrupted: preempted, requeued or re-run)", ckpt_path)
    results = fit_and_test(parts.trainer, parts.module, dm, ckpt_path=ckpt_path)
    return {**_job_header(cfg, parts.module, dm, setup_seconds, None if ckpt_path is None else str(ckpt_path)), **results}


def _job_header(cfg: DictConfig, module: Any, dm: Any, setup_seconds: float, resumed_from: Any) -> dict[str, Any]:
    """The record's description of a finished job: status, data, groups, method, seed, threads."""
    import torch

    arguments = module_arguments(cfg)
    return {
        "status": "ok",
        "task": getattr(module, "task", None),
        "dataset": dm.hparams.get("dataset"),
        "sensitive": list(dm.sensitive_columns),
        "groups": list(dm.group_names),
        **describe_method(arguments),
        "seed": int(cfg.seed),
        "lr": _float(arguments.get("lr")),
        "torch_threads": torch.get_num_threads(),
        "setup_seconds": setup_seconds,
        "resumed_from": resumed_from,
    }


# ---------------------------------------------------------------------------------- cross-fitting
def crossfit_folds(cfg: DictConfig) -> int:
    """``crossfit.folds``: 0 (off) or ``K >= 2``.

    Raises:
        ValueError: anything else, naming the option.
    """
    node = cfg.get("crossfit") or {}
    folds = node.get("folds", 0) if isinstance(node, Mapping) else node
    if not _is_int(folds) or folds < 0 or folds == 1:
        raise ValueError(f"`crossfit.folds` must be 0 (off) or an integer >= 2 (the number of folds), got {_got(folds)}")
    data = cfg.get("data") or {}
    if folds and data.get("val_fraction") is not None:
        raise ValueError(
            f"`crossfit.folds={folds}` makes each fold the validation split once; `data.val_fraction="
            f"{data.get('val_fraction')}` sets another: drop it (data.val_fraction=null)"
        )
    return int(folds)


def crossfit_constraint(cfg: DictConfig, module: Any = None) -> tuple[str, float]:
    """The one constraint a cross-fit job fits its group thresholds for: ``selection.constraints``
    when stated, else the method's own (``fairness=lagrangian_dp``; ``module`` ``None`` judges
    stated ones only, before the module is built).

    Raises:
        ValueError: none or several constraints, a hierarchical or ``bound="gap"`` one, or a
            K-class or regression job (group thresholds are binary).
    """
    from fair_lightning.postprocessing import GroupThresholds

    how = "state it, e.g. 'selection.constraints={demographic_parity: 0.02}'"
    if module is not None and getattr(module, "task", "binary") == "regression":
        raise ValueError("`crossfit.folds` fits group thresholds, which are for binary classifiers; this job has task=regression")
    if module is not None and getattr(module, "num_classes", None) is not None:
        raise ValueError("`crossfit.folds` fits group thresholds, which are for binary classifiers; this job's data set has "
                         f"num_classes={module.num_classes}")
    stated = _container((cfg.get("selection") or {}).get("constraints"))
    if stated is not None:
        if not isinstance(stated, Mapping) or len(stated) != 1:
            raise ValueError(f"`crossfit.folds` fits group thresholds for one constraint; `selection.constraints` must "
                             f"then hold one {{definition: tolerance}}, got {stated!r}")
        ((definition, tolerance),) = stated.items()
    else:
        every = list(getattr(getattr(module, "method", None), "constraints", None) or ())
        constraints = [c for c in every if c.definition != "accuracy_parity"]
        if len(constraints) != 1:
            parity = " (group thresholds cannot hold accuracy parity)" if len(every) > len(constraints) else ""
            raise ValueError(f"`crossfit.folds` fits group thresholds for one constraint, and the method has "
                             f"{len(constraints)}{parity}: {how}")
        (constraint,) = constraints
        if constraint.partition is not None or constraint.bound != "difference":
            raise ValueError(f"`crossfit.folds` fits group thresholds on a max - min difference over the job's groups; "
                             f"the method's constraint is {constraint}: {how}")
        definition, tolerance = constraint.definition, constraint.tolerance
    try:
        GroupThresholds(definition, tolerance)
    except ValueError as err:
        raise ValueError(f"`crossfit.folds` cannot fit group thresholds for {{{definition}: {tolerance}}}: {err}") from None
    return str(definition), float(tolerance)


def fold_config(cfg: DictConfig, folds: int, k: int) -> DictConfig:
    """Fold ``k``'s job of a cross-fit job: ``data.cv_folds=folds, data.cv_fold=k``, no cross-fit."""
    fold = cfg.copy()
    with open_dict(fold):
        fold.data.cv_folds, fold.data.cv_fold = folds, k
        fold.crossfit.folds = 0
    return fold


def load_crossfit(job_dir: str | os.PathLike) -> tuple[Any, Any]:
    """The fold mixture a cross-fit job saved (``crossfit.pt``), rebuilt from the job's own config
    (``.hydra/config.yaml``), in evaluation mode, and the data module of its fold 0 (set up: the
    test split, the features and the groups every fold shares).

    Example:
        >>> mixture, data = load_crossfit("outputs/runs/2026-12-02_10-00-00")  # doctest: +SKIP
        >>> x, _, groups = data.test_tensors
        >>> decisions = mixture.predict(x, groups)

    Raises:
        FileNotFoundError: the directory lacks ``.hydra/config.yaml`` or ``crossfit.pt``.
        ValueError: the job was not a cross-fit job.
    """
    import torch

    from fair_lightning.crossfit import FoldMixture

    job_dir = Path(job_dir)
    config, weights = job_dir / ".hydra" / "config.yaml", job_dir / "crossfit.pt"
    for path in (config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"`job_dir` must be a cross-fit job's directory holding {path.relative_to(job_dir)}; "
                                    f"{path} does not exist")
    cfg = OmegaConf.load(config)
    folds = crossfit_folds(cfg)
    if not folds:
        raise ValueError(f"`job_dir` {job_dir} holds a job with crossfit.folds=0, not a cross-fit job")
    data = hydra.utils.instantiate(fold_config(cfg, folds, 0).data, _convert_="all")
    data.setup("fit")
    mixture = FoldMixture([build_module(cfg, data)[1] for _ in range(folds)])
    mixture.load_state_dict(torch.load(weights, weights_only=True))
    return mixture.eval(), data


def run_crossfit(cfg: DictConfig, output_dir: Path, folds: int) -> dict[str, Any]:
    """:func:`run` for a cross-fit job (``crossfit.folds=K``): :func:`fair_lightning.crossfit.cross_fit`
    over the configured data, model, method, trainer and callbacks, then the fold mixture tested.

    Fold ``k`` is built as a job of its own with ``data.cv_folds=K, data.cv_fold=k`` (seeded with
    ``seed``) in ``output_dir/fold_k``, and resumes from a ``last.ckpt`` there (``callbacks=checkpoint``).
    The record's ``val_*`` metrics are the mixture's decisions on the out-of-fold rows (every
    non-test row, each scored by the fold model that did not see it), its ``test_*`` metrics the
    mixture's on the test split; ``crossfit`` holds the cross-fit's report and each fold's
    selection; ``certified`` its verdict on the out-of-fold rows. The mixture is saved as
    ``output_dir/crossfit.pt`` (``FoldMixture.state_dict()``).
    """
    import lightning.pytorch as pl
    import torch

    from fair_lightning._fit_summary import fit_summary
    from fair_lightning.callbacks import GroupCalibrationCallback
    from fair_lightning.crossfit import cross_fit
    from fair_lightning.postprocessing import GroupThresholds

    log.info("cross-fitting: %d folds of the non-test rows, one model each, in %s/fold_*", folds, output_dir)
    job_start = time.perf_counter()
    built: dict[int, Components] = {}

    def parts(k: int) -> Components:
        if k not in built:
            pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
            with _quiet():
                built[k] = build(fold_config(cfg, folds, k), output_dir / f"fold_{k}")
            # the mixture thresholds the fold models' own probabilities: a fold calibrator would
            # be fitted and never used (and, fitted at train end, belong to the last epoch)
            callbacks = built[k].trainer.callbacks
            dropped = [cb for cb in callbacks if isinstance(cb, GroupCalibrationCallback)]
            for cb in dropped:
                callbacks.remove(cb)
            if dropped and k == 0:
                log.info("cross-fitting: the folds fit no group calibrator (the mixture's thresholds are fitted on "
                         "the fold models' own probabilities)")
        return built[k]

    options = cfg.get("selection") or {}
    if options.get("margin", 0.0) not in (0, 0.0, None):
        raise ValueError(f"`selection.margin={options.get('margin')}` is not applied by a cross-fit job, whose thresholds "
                         "aim at the tolerance on every out-of-fold row: set selection.margin=0 with crossfit.folds")
    min_count = options.get("min_count", 10)
    if not (_is_number(min_count) and 0 <= min_count < math.inf):
        raise ValueError(f"`selection.min_count` must be a number >= 0, got {_got(min_count)}")
    resumed: dict[int, Path | None] = {}  # each fold's last.ckpt, if it was interrupted before
    min_count = float(min_count)
    if options.get("constraints") is not None:  # stated ones are judged before anything is built
        crossfit_constraint(cfg, None)
    first = parts(0)
    definition, tolerance = crossfit_constraint(cfg, first.module)
    start = time.perf_counter()
    # a fold's own validation rows are too few to certify by design: the cross-fit certifies on
    # all of them (its verdict and warning below; each fold's reason is in the record)
    with _quiet(".*cannot be certified at.*"):
        mixture = cross_fit(
            lambda k: parts(k).module,
            lambda k: parts(k).datamodule,
            GroupThresholds(definition, tolerance, min_count=min_count),
            folds=folds,
            trainer_fn=lambda k: parts(k).trainer,
            ckpt_path_fn=lambda k: resumed.setdefault(k, last_checkpoint(output_dir / f"fold_{k}")),
        )
    fit_seconds = time.perf_counter() - start
    torch.save(mixture.state_dict(), output_dir / "crossfit.pt")
    report = mixture.report
    dm = first.datamodule
    raw = _crossfit_metrics(cfg, output_dir, mixture, dm)
    record = summarize_metrics(raw, list(dm.group_names))
    fold_fits = [fit_summary(parts(k).trainer) for k in range(folds)]  # as each fold's training process saw it
    fold_selections = [summary.get("selection") for summary in fold_fits]
    fold_ckpts = [None if resumed.get(k) is None else str(resumed[k]) for k in range(folds)]
    test_seconds = raw.pop("_test_seconds")
    # each fold's checkpoint it resumed from (None for a fold that started afresh), or None
    header = _job_header(cfg, first.module, dm, max(0.0, time.perf_counter() - job_start - fit_seconds - test_seconds),
                         fold_ckpts if any(fold_ckpts) else None)
    record.update(
        certified=report["verdict"],
        crossfit={
            **{key: value for key, value in report.items() if key not in ("scores", "labels", "groups")},
            "folds_selection": fold_selections,
            "epochs_per_fold": [summary["epochs"] for summary in fold_fits],
            "global_step_per_fold": [summary["global_step"] for summary in fold_fits],
            "saved": str(output_dir / "crossfit.pt"),
        },
        # the largest fold's count (each fold's is in crossfit.epochs_per_fold), and all folds' steps
        epochs=max(summary["epochs"] for summary in fold_fits),
        global_step=sum(summary["global_step"] for summary in fold_fits),
        fit_seconds=fit_seconds,
        test_seconds=test_seconds,
        metrics=dict(sorted(raw.items())),
    )
    return {**header, **record}


def _crossfit_metrics(cfg: DictConfig, output_dir: Path, mixture: Any, dm: Any) -> dict[str, Any]:
    """The logged values of the fold mixture: ``val/*`` of its decisions on the out-of-fold rows,
    ``test/*`` on the test split, through the same metrics as any job (a ``FairLightningModule``
    around the mixture, with its thresholds)."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fair_lightning.module import FairLightningModule

    arguments = {k: v for k, v in module_arguments(cfg).items() if k in ("threshold", "task")}

    def shell(model: torch.nn.Module) -> FairLightningModule:
        return FairLightningModule(model, num_groups=dm.num_groups, group_names=list(dm.group_names), mode="erm",
                                   grad_ratio_every_n_steps=0, **arguments)

    def trainer() -> pl.Trainer:
        # one process: two evaluation passes over tensors already in memory (the fold models
        # trained under the configured strategy; ddp_spawn would have to pickle the mixture)
        loggers = _instantiate_named(cfg.get("logger"), "logger", save_dir=str(output_dir))
        return hydra.utils.instantiate(cfg.trainer, _partial_=True, _convert_="all")(
            default_root_dir=str(output_dir), logger=loggers if loggers else False, callbacks=[],
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            devices=1, num_nodes=1, strategy="auto",
        )

    class _FirstColumn(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0]

    raw: dict[str, Any] = {}
    report = mixture.report
    # the out-of-fold rows: each row's decision as the thresholds make it on its out-of-fold score
    # (exact: no second sigmoid), fed to the metrics as +-30 logits
    decisions = mixture.thresholds.predict(report["scores"], report["groups"])
    logits = torch.where(decisions > 0.5, 30.0, -30.0).reshape(-1, 1)
    rows = DataLoader(TensorDataset(logits, report["labels"].float(), report["groups"]), batch_size=65536)
    with _quiet():
        validator = trainer()
        validator.validate(shell(_FirstColumn()), dataloaders=rows, verbose=False)
        raw.update({k: _float(v) for k, v in validator.callback_metrics.items()})
        from torchmetrics.functional.classification import binary_auroc

        # of the out-of-fold scores (each from the fold model that did not see the row), as in any job:
        # the AUROC of the scores and the task loss, not of the +-30 logits of the decisions
        raw["val/auroc"] = _float(binary_auroc(report["scores"], report["labels"].long()))
        raw["val/loss"] = _float(torch.nn.functional.binary_cross_entropy(
            report["scores"].clamp(1e-12, 1 - 1e-12), report["labels"].double()))
        tested = shell(mixture)
        tested.prediction_thresholds = mixture.thresholds
        start = time.perf_counter()
        tester = trainer()
        tester.test(tested, datamodule=dm, verbose=False)
        raw["_test_seconds"] = time.perf_counter() - start
        raw.update({k: _float(v) for k, v in tester.callback_metrics.items()})
    return raw


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        cause = exc.__cause__
        full_key = str(exc).rsplit("full_key:", 1)[-1].strip() if "full_key:" in str(exc) else "?"
        return f"{type(cause).__name__}: {cause} (while instantiating `{full_key}`)"
    return f"{type(exc).__name__}: {exc}"


def write_metrics(record: Mapping[str, Any], output_dir: str | os.PathLike) -> Path:
    """Write ``record`` as ``output_dir/metrics.json`` atomically (a reader never sees half a file)."""
    return _records.write_record(record, output_dir)


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``last.ckpt`` under a job's directory (``ModelCheckpoint(save_last=True)``), if any.

    A job finds one when it runs again in the same directory: requeued after preemption
    (``hydra/launcher=slurm``), or re-run with ``+resume=true`` after a ``SIGTERM``. ``fit``
    then resumes from it (weights, optimizers, multipliers, epoch) instead of starting over.
    """
    found = [p for p in Path(output_dir).rglob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_job(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    job_num: int | None = None,
) -> dict[str, Any]:
    """:func:`run`, never raising an ``Exception``: the record goes to ``output_dir/metrics.json``.

    Args:
        cfg: the job's config.
        output_dir: the job's output directory.
        overrides: the job's command-line overrides (recorded).
        job_num: the job's number in a sweep (recorded).

    Returns:
        The record: ``status`` ``"ok"``, or ``"failed"`` with ``error`` (one line) and
        ``traceback`` (a summary of the last frames).
    """
    start = time.perf_counter()
    header = {
        "version": METRICS_VERSION,
        "job": job_num,
        "overrides": list(overrides),
        "output_dir": str(output_dir),
        "started": datetime.now().isoformat(timespec="seconds"),
        **_records.process_identity(),
    }
    fairness = _container(cfg.get("fairness")) if isinstance(cfg, DictConfig) else None
    method = describe_method(fairness if isinstance(fairness, Mapping) else {})
    try:  # the swept settings, so that a failed or killed job still says which point it was
        method.update(lr=_float(module_arguments(cfg).get("lr")), seed=cfg.get("seed"))
    except Exception:  # a config too broken to read: run() reports it
        pass
    write_metrics({**header, "status": _records.RUNNING, **method}, output_dir)
    try:
        record = {**header, **run(cfg, output_dir), "error": None, "traceback": None}
    except Exception as exc:  # one failed job must not lose the sweep: record it, do not raise
        record = {
            **header,
            "status": _records.FAILED,
            "error": _error_message(exc),
            "traceback": "".join(traceback.format_exception(exc, limit=-8)),
            **method,
        }
    except BaseException as exc:  # SystemExit (Lightning's SIGTERMException on preemption), Ctrl-C
        record = {
            **header,
            "status": _records.KILLED,
            "error": type(exc).__name__ + (f": {exc}" if str(exc) else "")
            + " (the process was asked to stop, e.g. SIGTERM on preemption; re-run with +resume=true)",
            "traceback": "".join(traceback.format_exception(exc, limit=-8)),
            **method,
            "total_seconds": time.perf_counter() - start,
            "ended": datetime.now().isoformat(timespec="seconds"),
        }
        write_metrics(record, output_dir)
        raise
    record["total_seconds"] = time.perf_counter() - start
    record["ended"] = datetime.now().isoformat(timespec="seconds")
    write_metrics(record, output_dir)
    return record


def finished_record(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's ``metrics.json`` if it says ``status: "ok"`` (what ``+resume=true`` keeps), else ``None``."""
    record = _records.read_record(output_dir)
    return record if record is not None and record.get("status") == _records.OK else None


def _drop_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)


def _route_lightning_logs() -> None:
    """Let Hydra's logging (console and the job's ``<job name>.log``) be the only output of Lightning's.

    ``import lightning`` attaches its own console handler to the ``lightning`` logger, which prints
    every message a second time under Hydra; remove it, and drop Lightning's advertising tip.
    """
    import lightning  # noqa: F401 (attaches the handler)

    logger = logging.getLogger("lightning")
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_tip not in rank_zero.filters:
        rank_zero.addFilter(_drop_tip)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Hydra entry point (``python -m fair_lightning.train``, ``fair-lightning-train``).

    Writes ``metrics.json`` into the job's output directory and returns ``objective`` (finite
    floats). A failed job logs its error; in a single run it then exits with status 1, in a sweep
    it returns ``None`` (so does a job without a finite objective) so the other jobs go on and
    Optuna marks the trial failed. With ``+resume=true`` a job whose ``metrics.json`` says ``ok``
    is not run again (its recorded objective is returned).
    """
    _route_lightning_logs()
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    done = finished_record(output_dir) if cfg.get("resume") else None
    if done is not None:
        log.info("resume: job %s already finished (%s); not run again", hc.job.get("num"), output_dir / METRICS_FILE)
        return _returned_objective(done, cfg.get("objective"))
    record = run_job(cfg, output_dir, overrides=list(hc.overrides.task), job_num=hc.job.get("num"))
    path = output_dir / METRICS_FILE
    if record["status"] != "ok":
        log.error("job failed: %s\n(traceback summary in %s)", record["error"], path)
        if hc.mode == RunMode.RUN:
            raise SystemExit(1)
    elif record.get("test_mse") is not None:  # regression
        shown = (record.get(k) for k in ("test_mse", "test_dp_difference", "test_mse_difference"))
        log.info(
            "test MSE %.4f, group mean-prediction difference %.4f, group MSE difference %.4f (fit %.1f s); wrote %s",
            *(math.nan if v is None else v for v in shown),
            record["fit_seconds"],
            path,
        )
    else:
        shown = (record.get(k) for k in ("test_accuracy", "test_dp_difference", "test_eo_difference"))
        log.info(
            "test accuracy %.4f, DP difference %.4f, EO difference %.4f (fit %.1f s); wrote %s",
            *(math.nan if v is None else v for v in shown),
            record["fit_seconds"],
            path,
        )
    return _returned_objective(record if record["status"] == _records.OK else {}, cfg.get("objective"))


def _returned_objective(record: Mapping[str, Any], objective: Any) -> float | tuple[float, ...] | None:
    """``objective``'s values for the sweeper: finite floats, or ``None`` if any is missing or not finite.

    ``None`` rather than NaN: Optuna's sweeper marks a trial without a number as failed and goes on,
    while a NaN makes ``study.tell`` raise and ends the whole study.
    """
    values = objective_values(record, objective)
    if values is None:
        return None
    finite = all(math.isfinite(v) for v in (values if isinstance(values, tuple) else (values,)))
    if not finite:
        log.warning("no finite value of `objective` %s for this job; returning none to the sweeper", list(
            [objective] if isinstance(objective, str) else objective))
        return None
    return values


__all__ = [
    "Components",
    "GROUP_METRICS",
    "METRICS_FILE",
    "OBJECTIVE_KEYS",
    "SCALAR_METRICS",
    "TASK_MODES",
    "build",
    "check_task",
    "describe_method",
    "finished_record",
    "fit_and_test",
    "last_checkpoint",
    "main",
    "module_arguments",
    "objective_values",
    "run",
    "run_job",
    "summarize_metrics",
    "validate_config",
    "write_metrics",
]


if __name__ == "__main__":
    main()
