"""``FairLightningModule``: fair-by-design training with manual optimization.

Four modes share one training step:

* ``"erm"``: task loss only (the baseline).
* ``"penalty"``: ``task + eta * fairness_loss`` with a loss of :mod:`fair_lightning.losses`.
* ``"lagrangian"``: ``task + sum(lambda * soft_violation)`` for the primal step, then projected
  ascent of the multipliers on the *hard* violation of running, DDP-synced group sums
  (:mod:`fair_lightning.constraints`).
* ``"adversarial"``: an adversary predicts the group from the logit (or a representation, and
  the label for equalized odds) through a :class:`~fair_lightning.adversarial.GradientReversalLayer`
  of strength ``eta``.

Use it by wrapping a model, ``FairLightningModule(model, num_groups=2, mode="lagrangian")``, or
by subclassing and overriding the hooks :meth:`unpack_batch`, :meth:`forward`,
:meth:`forward_with_representation` and :meth:`task_loss`.

``trainer.global_step`` counts the steps of the optimizers Lightning manages: the model's (and
the adversary's in ``"adversarial"`` mode, which therefore advances it twice per batch). The
multipliers' ascent is not a Lightning optimizer and does not count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from fair_lightning.adversarial import GradientReversalLayer, make_adversary
from fair_lightning.constraints import RATE_NAMES, LagrangeMultipliers, constraint_names, parse_constraints
from fair_lightning.functional import confusion_counts, group_sums, label_cells
from fair_lightning.functional._checks import check_binary_target, check_groups, check_num_groups
from fair_lightning.losses import (
    CONDITIONS,
    FairnessLoss,
    _check_logits,
    binary_cross_entropy_with_logits,
    make_fairness_loss,
)
from fair_lightning.metrics import fairness_metrics
from fair_lightning.schedules import EtaSchedule

if TYPE_CHECKING:
    import pandas as pd

MODES = ("erm", "penalty", "lagrangian", "adversarial")
ADVERSARY_INPUTS = ("logit", "representation")
OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class FairLightningModule(pl.LightningModule):
    """A LightningModule that trains a binary classifier fair by design.

    Args:
        model: any ``nn.Module`` mapping the features to one logit per sample (``(N,)`` or
            ``(N, 1)``). Optional when subclassing and overriding :meth:`forward`.
        num_groups: number of (possibly intersectional) groups; ids in ``[0, num_groups)``.
        mode: one of ``"erm"``, ``"penalty"``, ``"lagrangian"``, ``"adversarial"``.
        fairness: for ``"penalty"``: a loss name (``"demographic_parity"``, ``"equalized_odds"``,
            ``"equal_opportunity"``, ``"mutual_information"``) or a ``FairnessLoss``; for
            ``"adversarial"``: the definition the adversary targets (equalized odds and equal
            opportunity give it the label as extra input).
        eta: fairness strength (penalty weight, or gradient-reversal strength), ``>= 0``.
        eta_schedule: ``"constant"``, ``"linear"`` (warm-up from 0) or ``"step"``.
        eta_warmup_steps: length of the warm-up in primal steps.
        constraints: for ``"lagrangian"``: a definition name, a mapping ``{definition, tolerance}``,
            a :class:`~fair_lightning.constraints.FairnessConstraint`, or a list of them.
        tolerance: default tolerance of the constraints, ``>= 0``.
        dual_lr: learning rate of the multipliers' ascent (much smaller steps than the model's
            are rarely needed: the hard violations are already averages).
        multiplier_max: multipliers are projected onto ``[0, multiplier_max]``.
        ema_decay: decay of the running group sums behind the hard violations.
        dual_optimizer: ``params -> optimizer`` for the multipliers; default SGD(``dual_lr``).
        dual_damping: proportional gain of a PI update of the multipliers (0: plain projected
            ascent); damps the oscillation of the constrained rates, see
            :mod:`fair_lightning.constraints`.
        temperature: temperature of the smooth indicator in losses and soft violations.
        penalty, reduction, pairwise, weighting, min_count: passed to the fairness loss;
            ``min_count`` also masks small groups in the constraints.
        lr, weight_decay: of the default Adam optimizer.
        optimizer: ``params -> optimizer`` for the model (overrides ``lr``/``weight_decay``).
        lr_scheduler: ``optimizer -> scheduler``, stepped every epoch (or every step with
            ``lr_scheduler_interval="step"``).
        gradient_clip_val, gradient_clip_algorithm: clipping of the model's gradients (with manual
            optimization, ``Trainer(gradient_clip_val=...)`` is refused by Lightning).
        adversary: the adversary module (group logits out); default a small MLP.
        adversary_input: ``"logit"`` or ``"representation"`` (see :meth:`forward_with_representation`).
        adversary_lr: learning rate of the adversary's Adam.
        adversary_hidden: hidden width of the default adversary.
        group_names: names of the groups in logged keys (default ``group_0``, ...).
        threshold: probability threshold of the hard predictions (metrics and dual step).
        grad_ratio_every_n_steps: how often to log the ratio of the fairness term's gradient norm
            to the task term's (costs one extra backward pass on those steps, two under DDP; 0 disables).
        validate_args: check batches (shapes, binary targets, group ids) on every step.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        num_groups: int,
        mode: str = "erm",
        fairness: str | FairnessLoss = "demographic_parity",
        eta: float = 1.0,
        eta_schedule: str = "constant",
        eta_warmup_steps: int = 0,
        constraints: Any = "demographic_parity",
        tolerance: float = 0.01,
        dual_lr: float = 0.05,
        multiplier_max: float = 100.0,
        ema_decay: float = 0.9,
        dual_optimizer: OptimizerFactory | None = None,
        dual_damping: float = 0.0,
        temperature: float = 1.0,
        penalty: str = "abs",
        reduction: str = "mean",
        pairwise: bool = False,
        weighting: str = "uniform",
        min_count: float = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_interval: str = "epoch",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        adversary: nn.Module | None = None,
        adversary_input: str = "logit",
        adversary_lr: float = 1e-3,
        adversary_hidden: int = 32,
        group_names: Sequence[str] | None = None,
        threshold: float = 0.5,
        grad_ratio_every_n_steps: int = 50,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "adversary", "optimizer", "lr_scheduler", "dual_optimizer", "fairness"])
        self.automatic_optimization = False
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}")
        self.num_groups = check_num_groups(num_groups)
        if not tolerance >= 0:
            raise ValueError(f"`tolerance` must be >= 0, got {tolerance}")
        if not 0 < threshold < 1:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}")
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`lr_scheduler_interval` must be 'epoch' or 'step', got {lr_scheduler_interval!r}")
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"`gradient_clip_val` must be > 0 or None, got {gradient_clip_val}")
        if adversary_input not in ADVERSARY_INPUTS:
            raise ValueError(f"`adversary_input` must be one of {list(ADVERSARY_INPUTS)}, got {adversary_input!r}")
        self.mode = mode
        self.model = model
        self.eta_schedule = EtaSchedule(eta, eta_schedule, eta_warmup_steps)
        self.threshold = threshold
        self._logit_threshold = math.log(threshold / (1 - threshold))
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.grad_ratio_every_n_steps = grad_ratio_every_n_steps
        self.validate_args = validate_args
        self.group_names = list(group_names) if group_names is not None else [f"group_{g}" for g in range(num_groups)]
        if len(self.group_names) != num_groups:
            raise ValueError(f"`group_names` must have num_groups={num_groups} entries, got {len(self.group_names)}")
        # primal steps taken: the position of the eta schedule (a buffer, so it is checkpointed)
        self.register_buffer("fair_step", torch.zeros((), dtype=torch.long))

        loss_kwargs = dict(
            temperature=temperature, penalty=penalty, reduction=reduction, pairwise=pairwise,
            weighting=weighting, min_count=min_count,
        )
        self.fairness_loss: FairnessLoss | None = None
        self.multipliers: LagrangeMultipliers | None = None
        self.adversary: nn.Module | None = None
        self.constraint_names: list[str] = []
        self.needs_target_in_penalty = False
        if mode == "penalty":
            if isinstance(fairness, nn.Module):
                self.fairness_loss = fairness
            else:
                if fairness == "mutual_information":
                    loss_kwargs = {"temperature": temperature, "min_count": min_count}
                # the module checks each batch itself (`validate_args`); the loss need not again
                self.fairness_loss = make_fairness_loss(fairness, num_groups, validate_args=False, **loss_kwargs)
        elif mode == "lagrangian":
            parsed = parse_constraints(constraints, tolerance)
            self.temperature = temperature
            self.multipliers = LagrangeMultipliers(
                parsed, num_groups, dual_lr=dual_lr, multiplier_max=multiplier_max,
                ema_decay=ema_decay, min_count=min_count, dual_optimizer=dual_optimizer,
                dual_damping=dual_damping,
            )
            self.constraint_names = constraint_names(parsed, self.group_names)
        elif mode == "adversarial":
            if not isinstance(fairness, str) or fairness not in CONDITIONS:
                raise ValueError(f"`fairness` for mode='adversarial' must be one of {list(CONDITIONS)}, got {fairness!r}")
            self.adversary_uses_label = fairness != "demographic_parity"
            self.adversary_input = adversary_input
            self.reversal = GradientReversalLayer(eta)
            if adversary is None:
                in_features = 1 if adversary_input == "logit" else self._representation_features()
                adversary = make_adversary(in_features + int(self.adversary_uses_label), num_groups, adversary_hidden)
            self.adversary = adversary
            self.adversary_lr = adversary_lr

        self.val_metrics = fairness_metrics(num_groups, group_names=self.group_names, from_logits=True, threshold=threshold, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.val_accuracy, self.test_accuracy = BinaryAccuracy(threshold=threshold), BinaryAccuracy(threshold=threshold)
        self.val_auroc, self.test_auroc = BinaryAUROC(), BinaryAUROC()
        #: the latest per-step diagnostics (violations, multipliers, grad-norm ratio, eta), also
        #: written to the loggers every ``log_every_n_steps``
        self.last_detail_metrics: dict[str, float] = {}
        #: optional object with ``transform(probs, groups)`` applied by ``predict_step``
        #: (set by :class:`~fair_lightning.callbacks.GroupCalibrationCallback`).
        self.prediction_calibrator: Any = None

    # ------------------------------------------------------------------ hooks for users
    def unpack_batch(self, batch: Any) -> tuple[Any, Tensor | None, Tensor | None]:
        """Split a batch into ``(x, target, groups)``.

        The default accepts a tuple/list ``(x, target, groups)`` (``(x,)`` or ``(x, target)`` for
        prediction) or a mapping with keys ``"x"``, ``"target"``, ``"groups"``. Override for other
        layouts.
        """
        if isinstance(batch, dict):
            return batch["x"], batch.get("target"), batch.get("groups")
        if isinstance(batch, (tuple, list)):
            if len(batch) == 3:
                return batch[0], batch[1], batch[2]
            if len(batch) in (1, 2):
                return batch[0], (batch[1] if len(batch) == 2 else None), None
        if isinstance(batch, Tensor):
            return batch, None, None
        raise ValueError(
            "`batch` must be (x, target, groups), a dict with keys 'x', 'target', 'groups', or x alone; "
            f"got {type(batch).__name__}{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}. "
            "Override `unpack_batch` for other layouts."
        )

    def forward(self, x: Any) -> Tensor:
        """The model's logits."""
        if self.model is None:
            raise NotImplementedError("pass `model=` or override `forward` in a subclass")
        return self.model(x)

    def forward_with_representation(self, x: Any) -> tuple[Tensor, Tensor]:
        """Logits and the representation an adversary may see.

        The default, for an ``nn.Sequential`` model, is the input of its last layer; override for
        other architectures.
        """
        if isinstance(self.model, nn.Sequential) and len(self.model) > 1:
            rep = self.model[:-1](x)
            return self.model[-1](rep), rep
        raise NotImplementedError(
            "adversary_input='representation' needs an nn.Sequential model or an override of "
            "`forward_with_representation` returning (logits, representation)"
        )

    def task_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The task loss; binary cross-entropy on logits by default."""
        return binary_cross_entropy_with_logits(logits, target)

    def primal_parameters(self) -> Iterable[Tensor]:
        """Parameters of the model's optimizer: all but the multipliers' and the adversary's."""
        skip = set()
        for part in (self.multipliers, self.adversary):
            if part is not None:
                skip.update(id(p) for p in part.parameters())
        return [p for p in self.parameters() if id(p) not in skip and p.requires_grad]

    def constraint_state(self) -> pd.DataFrame:
        """The Lagrangian state by constraint, as a ``pandas.DataFrame``.

        One row per inequality (index: the logged names, ``"{definition}/{rate}/{group}/{side}"``)
        with its ``definition``, ``rate``, ``group``, ``side``, ``tolerance``, ``multiplier``
        and ``violation_hard`` (of the running sums; ``<= 0`` is satisfied). Only in
        ``mode="lagrangian"``.
        """
        import pandas as pd

        if self.multipliers is None:
            raise ValueError(f"`constraint_state` needs mode='lagrangian', this module has mode={self.mode!r}")
        mult = self.multipliers
        rows = [  # the order of constraint_names (and of the multipliers)
            (c.definition, RATE_NAMES[cond], group, side, c.tolerance)
            for c in mult.constraints
            for cond in c.conditions
            for group in self.group_names
            for side in ("upper", "lower")
        ]
        columns = ["definition", "rate", "group", "side", "tolerance"]
        frame = pd.DataFrame(rows, columns=columns, index=pd.Index(self.constraint_names, name="constraint"))
        frame["multiplier"] = mult.multipliers.detach().double().cpu().numpy()
        frame["violation_hard"] = mult.hard_violations().detach().double().cpu().numpy()
        return frame

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        params = self.primal_parameters()
        if self.optimizer_factory is not None:
            opt = self.optimizer_factory(params)
        else:
            opt = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        optimizers = [opt]
        if self.adversary is not None:
            optimizers.append(torch.optim.Adam(self.adversary.parameters(), lr=self.adversary_lr))
        if self.lr_scheduler_factory is None:
            return optimizers if len(optimizers) > 1 else opt
        return optimizers, [self.lr_scheduler_factory(opt)]

    # ------------------------------------------------------------------ helpers
    @property
    def eta(self) -> float:
        """``eta`` at the current position of the schedule."""
        return self.eta_schedule(int(self.fair_step))

    def _representation_features(self) -> int:
        if isinstance(self.model, nn.Sequential):
            last = self.model[-1]
            if isinstance(last, nn.Linear):
                return last.in_features
        raise ValueError(
            "adversary_input='representation' with the default adversary needs an nn.Sequential model ending in "
            "nn.Linear (to size the adversary); pass `adversary=` yourself"
        )

    def _check_batch(self, logits: Tensor, target: Tensor | None, groups: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        logits = _check_logits(logits)
        if target is None or groups is None:
            raise ValueError("training and evaluation batches must provide `target` and `groups`; see `unpack_batch`")
        if self.validate_args:
            target = check_binary_target(target, logits.numel())
            groups = check_groups(groups, logits.numel(), self.num_groups)
        return logits, target.reshape(-1), groups.reshape(-1).long()

    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor, reduce_op="sum")

    def _detail_step(self) -> bool:
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 50
        return int(self.fair_step) % max(every, 1) == 0

    def _grad_ratio_start(self, task: Tensor, fairness_term: Tensor) -> list[tuple[Tensor, Tensor]] | None:
        """``||grad fairness_term|| / ||grad task||`` over the model's parameters, part one.

        On one device the task term's gradient is the one extra backward: the fairness term's is
        the total gradient (after :meth:`manual_backward`) minus it, see :meth:`_grad_ratio_end`.
        Under DDP the total gradient is averaged over ranks, and with a gradient scaler (fp16
        mixed precision) it is scaled, so there both terms' local gradients are taken here and the
        ratio logged at once (two extra backwards).
        """
        params = self.primal_parameters()
        task_grads = torch.autograd.grad(task, params, retain_graph=True, allow_unused=True)
        trainer = self._trainer
        if trainer is None or (trainer.world_size == 1 and getattr(trainer.precision_plugin, "scaler", None) is None):
            return [(p, g) for p, g in zip(params, task_grads) if g is not None]
        fair_grads = torch.autograd.grad(fairness_term, params, retain_graph=True, allow_unused=True)
        self._log_grad_ratio([g for g in fair_grads if g is not None], [g for g in task_grads if g is not None])
        return None

    def _grad_ratio_end(self, task_grads: list[tuple[Tensor, Tensor]]) -> None:
        """Part two on one device: the fairness gradient is ``p.grad - task_grad``."""
        fair = [p.grad - g if p.grad is not None else -g for p, g in task_grads]
        self._log_grad_ratio(fair, [g for _, g in task_grads])

    def _log_grad_ratio(self, fair: list[Tensor], task: list[Tensor]) -> None:
        def norm(grads: list[Tensor]) -> Tensor:
            return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.zeros(())

        self._log_detail({"train/grad_norm_ratio": norm(fair) / norm(task).clamp_min(1e-12)})

    @staticmethod
    def _check_finite(name: str, value: Tensor, step: int) -> None:
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"the {name} is {value.item()} at step {step}; training stopped. Check the inputs, lower the "
                "learning rate, or clip gradients (`gradient_clip_val`)."
            )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, target, groups = self.unpack_batch(batch)
        needs_rep = self.mode == "adversarial" and self.adversary_input == "representation"
        if needs_rep:
            logits, rep = self.forward_with_representation(x)
        else:
            logits = self(x)
        logits, target, groups = self._check_batch(logits, target, groups)
        step = int(self.fair_step)
        eta = self.eta_schedule(step)
        detail = self._detail_step()

        task = self.task_loss(logits, target)
        self._check_finite("task loss", task, step)
        fairness_term = None
        hard_violations = None
        if self.mode == "penalty":
            fair = self.fairness_loss(logits, target, groups)
            self._check_finite("fairness loss", fair, step)
            fairness_term = eta * fair
            self._log_train_term("train/fairness_loss", fair, detail)
        elif self.mode == "lagrangian":
            soft = torch.sigmoid(logits if self.temperature == 1 else logits / self.temperature)
            cells = label_cells(target, groups)
            confusion = confusion_counts(logits.detach() > self._logit_threshold, None, None, self.num_groups, cells=cells)
            # finite by construction: logits are checked for NaN, multipliers are clamped
            fairness_term = self.multipliers.lagrangian_term(soft, target, groups, cells=cells, counts=confusion)
        elif self.mode == "adversarial":
            self.reversal.strength = eta
            adv_in = (logits.reshape(-1, 1) if not needs_rep else rep.reshape(rep.shape[0], -1))
            adv_in = self.reversal(adv_in)
            if self.adversary_uses_label:
                adv_in = torch.cat((adv_in, target.reshape(-1, 1).to(adv_in.dtype)), 1)
            adversary_loss = nn.functional.cross_entropy(self.adversary(adv_in), groups)
            self._check_finite("adversary loss", adversary_loss, step)
            fairness_term = adversary_loss  # the reversal layer turns it into -eta * grad for the model
            self._log_train_term("train/adversary_loss", adversary_loss, detail)

        total = task if fairness_term is None else task + fairness_term
        task_grads = None
        if fairness_term is not None and self.grad_ratio_every_n_steps and step % self.grad_ratio_every_n_steps == 0:
            task_grads = self._grad_ratio_start(task, fairness_term)

        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(total)
        if task_grads is not None:
            self._grad_ratio_end(task_grads)
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizers[0], gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm=self.gradient_clip_algorithm)
        for opt in optimizers:
            opt.step()

        if self.mode == "lagrangian":
            # every tensor here is detached or a buffer: no autograd context needed on the hot path
            hard_violations = self.multipliers.dual_step(self._reduce_sum(confusion))
            if detail:
                soft_sums = group_sums(soft.detach(), target, groups, self.num_groups, validate_args=False)
                soft_violations = self.multipliers.soft_violations(soft_sums)
                self._log_constraints(soft_violations, hard_violations, (task + fairness_term).detach())

        self.fair_step.add_(1)
        if self.lr_scheduler_factory is not None and self.lr_scheduler_interval == "step":
            self.lr_schedulers().step()
        self.log("train/task_loss", task.detach(), on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=True)
        if self.mode != "erm" and detail:
            self._log_detail({"train/eta": torch.tensor(eta)})
        return total.detach()

    def _log_train_term(self, name: str, value: Tensor, detail: bool) -> None:
        """Log a fairness term on logging steps, and its epoch mean at the end of the epoch.

        ``self.log`` costs about a millisecond on CPU, more than the fairness term itself; the
        epoch mean comes from a running sum instead of Lightning's per-step accumulation.
        """
        value = value.detach()
        if detail:
            self.log(name, value, on_step=True, on_epoch=False)
        running = self._epoch_terms.get(name)
        if running is None:
            self._epoch_terms[name] = torch.stack((value.double(), value.new_ones((), dtype=torch.float64)))
        else:
            running[0] += value
            running[1] += 1

    def on_train_epoch_start(self) -> None:
        self._epoch_terms: dict[str, Tensor] = {}

    def _log_constraints(self, soft: Tensor, hard: Tensor, lagrangian: Tensor) -> None:
        lam = self.multipliers.multipliers
        names = [
            *(f"fairness/violation_soft/{name}" for name in self.constraint_names),
            *(f"fairness/violation_hard/{name}" for name in self.constraint_names),
            *(f"fairness/multiplier/{name}" for name in self.constraint_names),
            "fairness/violation_hard_max", "fairness/multiplier_max", "train/lagrangian",
        ]
        parts = (soft, hard, lam, hard.max(), lam.max(), lagrangian)
        values = torch.cat([p.detach().double().reshape(-1) for p in parts])  # one conversion to floats
        self._log_detail(dict(zip(names, values.tolist())))

    def _log_detail(self, values: dict[str, Tensor | float]) -> None:
        """Write per-step diagnostics straight to the loggers, on logging steps only.

        Like Lightning's ``LearningRateMonitor``: the values are identical on every rank (the
        multipliers and running sums are synced), so rank zero writes them, at the step Lightning
        uses for ``self.log``. Going through ``self.log`` would cost about a millisecond per
        scalar per step. The latest values stay in :attr:`last_detail_metrics`.
        """
        metrics = {k: float(v) for k, v in values.items()}
        self.last_detail_metrics.update(metrics)
        trainer = self._trainer
        if trainer is None or not trainer.loggers or not trainer.is_global_zero or trainer.sanity_checking:
            return
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_epoch_end(self) -> None:
        for name, (total, count) in getattr(self, "_epoch_terms", {}).items():
            self.log(f"{name}_epoch", (total / count).float(), on_step=False, on_epoch=True, sync_dist=True)
        self._epoch_terms = {}
        if self.lr_scheduler_factory is not None and self.lr_scheduler_interval == "epoch":
            self.lr_schedulers().step()
        if self.multipliers is not None:
            hard = self.multipliers.hard_violations()
            self.log("fairness/violation_hard_max_epoch", hard.max(), on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, target, groups = self.unpack_batch(batch)
        logits, target, groups = self._check_batch(self(x), target, groups)
        loss = self.task_loss(logits, target)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, target, groups)
        probs = torch.sigmoid(logits)
        (self.val_accuracy if stage == "val" else self.test_accuracy).update(probs, target)
        (self.val_auroc if stage == "val" else self.test_auroc).update(probs, target)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val")
        # callbacks (calibration, dashboard) reuse these instead of a second forward pass
        return {"loss": loss, "logits": logits.detach(), "target": target, "groups": groups}

    def _eval_epoch_end(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        accuracy = self.val_accuracy if stage == "val" else self.test_accuracy
        auroc = self.val_auroc if stage == "val" else self.test_auroc
        values = {k: v.float() for k, v in metrics.compute().items()}
        values[f"{stage}/accuracy"] = accuracy.compute()
        values[f"{stage}/auroc"] = auroc.compute()
        self.log_dict(values)
        for m in (metrics, accuracy, auroc):
            m.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Probabilities of the positive class (calibrated per group when a calibrator is set)."""
        x, _, groups = self.unpack_batch(batch)
        logits = _check_logits(self(x))
        probs = torch.sigmoid(logits)
        calibrator = self.prediction_calibrator
        if calibrator is not None:
            if groups is None:
                raise ValueError("a group calibrator is set, so prediction batches must provide `groups`")
            # temperature scaling works on logits (exact beyond float32's saturated sigmoid)
            scores = logits if getattr(calibrator, "method", None) == "temperature" else probs
            probs = calibrator.transform(scores, groups)
        return probs

    # ------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.multipliers is not None:
            checkpoint["fair_lightning"] = {"dual_optimizer": self.multipliers.dual_state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("fair_lightning", {})
        if self.multipliers is not None and "dual_optimizer" in state:
            self.multipliers.load_dual_state_dict(state["dual_optimizer"])


__all__ = ["ADVERSARY_INPUTS", "FairLightningModule", "MODES"]
