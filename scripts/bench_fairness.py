#!/usr/bin/env python3
"""Fairness/accuracy trade-offs on Adult: FairLightningModule's modes against fairret, a raw penalty and fairlearn.

    python scripts/bench_fairness.py [--epochs 10] [--seeds 0 [1 ...]] [--timing-repeats 3]
                                     [--timing-epochs 5] [--threads 1] [--out PATH] [--quick]

Data: bundled Adult, sensitive attribute ``sex`` (2 groups), the official test split, the
validation split carved from the training rows by ``TabularDataModule`` (seed = the run's seed);
features standardized / one-hot encoded on the training split, with ``sex`` among them when
``INCLUDE_SENSITIVE`` is true (see below). Every method trains on the same training tensors and is
scored on the same test tensors.

Model everywhere: the same MLP ``Linear(d,128)-ReLU-Linear(128,128)-ReLU-Linear(128,1)``, Adam
lr 1e-3, batch 256, ``--epochs`` epochs, initialised from the same seed (``pl.seed_everything``).

* ours: ``FairLightningModule(mlp, **CONFIGS[name])`` through ``Trainer.fit`` with the
  ``TabularDataModule`` (logger, checkpointing, progress bar and model summary off; no validation
  loop, as nothing here selects on it): ``erm``, ``penalty`` and ``adversarial`` eta sweeps, and
  ``lagrangian`` with a demographic-parity and an equalized-odds constraint;
* peers, a raw PyTorch loop over the data module's training tensors (one random permutation per
  epoch split into the same ``ceil(N / 256)`` near-equal batches as the data module):
  fairret's ``NormLoss(PositiveRate())`` (sensitive features as a one-hot ``(N, 2)`` float tensor,
  logits ``(N, 1)``) and a squared mean-gap penalty ``(mean(p[g=0]) - mean(p[g=1]))**2`` on sigmoid
  outputs, each over a strength sweep: ``loss = BCE + strength * penalty``;
* fairlearn on the same features as numpy arrays: ``ExponentiatedGradient(LogisticRegression(
  max_iter=1000), DemographicParity(difference_bound=0.01))`` (randomized ``predict`` with
  ``random_state=seed``) and ``ThresholdOptimizer(estimator=LogisticRegression(max_iter=1000),
  constraints="demographic_parity", predict_method="predict_proba")`` (``predict`` with
  ``random_state=seed``; float64 features, see ``as_numpy``).

Reported: test accuracy (threshold 0.5), demographic-parity difference and equalized-odds
difference (worst case of the TPR and FPR differences) -- fairlearn's definitions, computed with
``fair_lightning.functional`` -- each the median over ``--seeds``.

Step overhead: each of our modes (one configuration each) is trained ``--timing-epochs`` epochs
without validation, ``--timing-repeats`` times, interleaved (each repeat runs every mode once, the
order rotated per repeat). A run's time is the median of its epochs after the first (warm-up),
each timed from ``on_train_epoch_start`` to ``on_train_epoch_end`` by a callback (Trainer
construction and fit start-up excluded). Ratios pair each run with the ``erm`` run of the same
repeat, then take the median over repeats (robust to load drifting on a shared machine).

``--threads`` (default 1) sets ``torch.set_num_threads`` and, through threadpoolctl, the BLAS/OpenMP
pools scikit-learn uses: the same compute for every method and stable timings on a shared machine.

Checks (PASS/FAIL, with the numbers): (a) lagrangian-DP: test DP <= 0.03 at accuracy >= 0.83;
(b) lagrangian-EO: test EO <= 0.04 at accuracy >= 0.835; (c) penalty and adversarial: at the
largest eta DP <= half of erm's, and DP falls along the sweep (Spearman(eta, DP) < 0, or DP at the
largest eta < DP at the smallest); (d) epoch time lagrangian/erm <= 1.2 (both constraints).

``--out PATH`` writes the table and the checks as markdown (the command, date and versions in a
fenced block first) for docs/BENCHMARKS.md. ``--quick``: a smoke run (1 epoch, the first and last
point of each sweep, 1 timing repeat of 2 epochs, ExponentiatedGradient max_iter 10).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402

from fair_lightning.data import TabularDataModule  # noqa: E402
from fair_lightning.functional import (  # noqa: E402
    demographic_parity_difference,
    equalized_odds_difference,
    format_predictions,
)
from fair_lightning.module import FairLightningModule  # noqa: E402
from fair_lightning.pareto import hypervolume, pareto_front  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import EpochTimer  # noqa: E402  (the same epoch timing as the data benchmark)

#: Placeholder for ``lr_scheduler``: replaced, once ``--epochs`` is known, by
#: ``lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)``.
COSINE_OVER_EPOCHS = "cosine-annealing over --epochs"

#: FairLightningModule keyword arguments of every configuration of ours (``model``, ``num_groups``
#: and ``group_names`` are added from the data). A tuple ``eta`` is a sweep: one run per value
#: (``--penalty-etas`` / ``--adversarial-etas`` replace it). ``lr`` defaults to 1e-3 (Adam).
CONFIGS: dict[str, dict] = {
    "erm": {"mode": "erm"},
    "penalty": {"mode": "penalty", "fairness": "demographic_parity", "eta": (0.25, 0.5, 1, 2, 4, 8, 16, 64)},
    "adversarial": {
        "mode": "adversarial",
        "fairness": "demographic_parity",
        "adversary_input": "logit",
        "eta": (0.1, 0.3, 1, 3),
    },
    "lagrangian-dp": {
        "mode": "lagrangian",
        "constraints": "demographic_parity",
        "tolerance": 0.01,
        "dual_lr": 0.05,
        "ema_decay": 0.98,
        "lr_scheduler": COSINE_OVER_EPOCHS,
    },
    # equalized odds couples TPR and FPR constraints that pull a group's scores in opposite
    # directions: plain ascent oscillates (EO swung to 0.3 after 12 epochs); the PI damping
    # term (dual_damping) settles it
    "lagrangian-eo": {
        "mode": "lagrangian",
        "constraints": "equalized_odds",
        "tolerance": 0.01,
        "dual_lr": 0.1,
        "ema_decay": 0.98,
        "dual_damping": 20.0,
        "lr_scheduler": COSINE_OVER_EPOCHS,
    },
}

#: TabularDataModule(include_sensitive=...): ``sex`` as a feature lets every model (ours, the
#: peers, fairlearn's estimators) learn group-aware decisions.
INCLUDE_SENSITIVE = True

#: Strength sweeps of the raw-PyTorch peers (``--fairret-strengths`` / ``--gap-strengths``).
PEER_SWEEPS: dict[str, tuple[float, ...]] = {"fairret": (0.1, 0.3, 1, 3), "gap": (1, 10, 100)}
#: Tolerances of the Lagrangian (DP) sweep: with erm and the penalty sweep, the main job's
#: (``python -m fair_lightning.main``) sweeps, whose frontier check (e) compares with the peers.
TOLERANCE_SWEEP: tuple[float, ...] = (0.0025, 0.005, 0.06)

DATASET, SENSITIVE, BATCH_SIZE, LR, HIDDEN = "adult", "sex", 256, 1e-3, 128
DP_BOUND = 0.01  # fairlearn's DemographicParity(difference_bound=...)
#: the configurations timed for the step overhead (sweeps at TIMING_ETA: eta does not change the work)
TIMED = ("erm", "penalty", "adversarial", "lagrangian-dp", "lagrangian-eo")
TIMING_ETA = 1.0


# ------------------------------------------------------------------------------------ models
def make_mlp(num_features: int, hidden: int = HIDDEN) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


def module_kwargs(name: str, epochs: int, eta: float | None = None, tolerance: float | None = None) -> dict:
    """``CONFIGS[name]`` with the sweep value and the LR-schedule placeholder filled in."""
    kwargs = dict(CONFIGS[name])
    if tolerance is not None:
        kwargs["tolerance"] = tolerance
    if isinstance(kwargs.get("eta"), (tuple, list)):
        kwargs["eta"] = TIMING_ETA if eta is None else eta
    elif eta is not None:
        kwargs["eta"] = eta
    if kwargs.get("lr_scheduler") == COSINE_OVER_EPOCHS:
        kwargs["lr_scheduler"] = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    return kwargs


def describe_config(name: str) -> str:
    parts = []
    for key, value in CONFIGS[name].items():
        if key == "lr_scheduler" and value == COSINE_OVER_EPOCHS:
            value = "lambda opt: CosineAnnealingLR(opt, T_max=epochs)"
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)


def fit_ours(
    dm: TabularDataModule, name: str, epochs: int, seed: int, eta: float | None = None, tolerance: float | None = None
):
    """Train one configuration of ours; returns the module and its epoch times."""
    pl.seed_everything(seed, verbose=False)
    module = FairLightningModule(
        make_mlp(dm.num_features), num_groups=dm.num_groups, group_names=dm.group_names,
        **module_kwargs(name, epochs, eta, tolerance),
    )
    timer = EpochTimer()
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return module.eval(), timer.seconds


# ------------------------------------------------------------------------------------- peers
def fairret_penalty(num_groups: int) -> Callable:
    from fairret.loss import NormLoss
    from fairret.statistic import PositiveRate

    loss = NormLoss(PositiveRate())

    def penalty(logits: torch.Tensor, target: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        # fairret: predictions (N, 1) (logits by default), sensitive features (N, S) one-hot floats
        return loss(logits.unsqueeze(-1), sens)

    return penalty


def mean_gap_penalty(logits: torch.Tensor, target: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    in0, in1 = sens[:, 0] > 0, sens[:, 1] > 0
    if not (in0.any() and in1.any()):
        return logits.new_zeros(())
    return (p[in0].mean() - p[in1].mean()) ** 2


def fit_raw(tensors, num_groups: int, penalty: Callable | None, strength: float, epochs: int, seed: int) -> nn.Module:
    """A raw PyTorch loop: BCE (+ strength * penalty), Adam, the data module's batch count per epoch."""
    x, y, g = tensors
    sens = nn.functional.one_hot(g, num_groups).float()
    pl.seed_everything(seed, verbose=False)
    model = make_mlp(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(x.shape[0] / BATCH_SIZE)
    for _ in range(epochs):
        for idx in torch.tensor_split(torch.randperm(x.shape[0], generator=gen), n_batches):
            xb, yb, sb = x.index_select(0, idx), y.index_select(0, idx), sens.index_select(0, idx)
            logits = model(xb).squeeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yb)
            if penalty is not None:
                loss = loss + strength * penalty(logits, yb, sb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def as_numpy(x: torch.Tensor) -> np.ndarray:
    # float64: with float32 features, ThresholdOptimizer.predict (fairlearn 0.15, pandas 3) fails
    # writing float64 probabilities into a float32 Series
    return x.numpy().astype(np.float64)


def fit_exponentiated_gradient(train, test, seed: int, max_iter: int) -> np.ndarray:
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    (x, y, g), (xt, _, _) = train, test
    eg = ExponentiatedGradient(
        LogisticRegression(max_iter=1000), DemographicParity(difference_bound=DP_BOUND), max_iter=max_iter
    )
    eg.fit(as_numpy(x), y.numpy().astype(np.int64), sensitive_features=g.numpy())
    return eg.predict(as_numpy(xt), random_state=seed)


def fit_threshold_optimizer(train, test, seed: int) -> np.ndarray:
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.linear_model import LogisticRegression

    (x, y, g), (xt, _, gt) = train, test
    to = ThresholdOptimizer(
        estimator=LogisticRegression(max_iter=1000), constraints="demographic_parity", predict_method="predict_proba"
    )
    to.fit(as_numpy(x), y.numpy().astype(np.int64), sensitive_features=g.numpy())
    return to.predict(as_numpy(xt), sensitive_features=gt.numpy(), random_state=seed)


# ---------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score(preds: torch.Tensor, test, num_groups: int, from_logits: bool) -> dict[str, float]:
    """Test accuracy, DP difference and EO difference of logits (``from_logits``) or 0/1 labels."""
    _, y, g = test
    preds = preds.reshape(-1)
    hard = format_predictions(preds, from_logits=from_logits)
    return {
        "acc": float((hard == y).float().mean()),
        "dp": float(demographic_parity_difference(preds, g, num_groups, from_logits=from_logits)),
        "eo": float(equalized_odds_difference(preds, y, g, num_groups, from_logits=from_logits)),
    }


@torch.no_grad()
def score_model(model: nn.Module, test, num_groups: int) -> dict[str, float]:
    return score(model(test[0]), test, num_groups, from_logits=True)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# ------------------------------------------------------------------------------------- main
def fmt_eta(value: float) -> str:
    return f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="metrics are medians over these seeds")
    parser.add_argument("--penalty-etas", type=float, nargs="+", default=None)
    parser.add_argument("--adversarial-etas", type=float, nargs="+", default=None)
    parser.add_argument("--fairret-strengths", type=float, nargs="+", default=None)
    parser.add_argument("--gap-strengths", type=float, nargs="+", default=None)
    parser.add_argument("--timing-repeats", type=int, default=3, help="interleaved repeats of the overhead runs")
    parser.add_argument("--timing-epochs", type=int, default=5, help="epochs per timing run (the first is warm-up)")
    parser.add_argument("--eg-max-iter", type=int, default=50, help="ExponentiatedGradient max_iter (its default)")
    parser.add_argument("--no-fairlearn", action="store_true", help="skip ExponentiatedGradient and ThresholdOptimizer")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads and threadpoolctl limit, the same for all"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 2 points per sweep, 1 timing repeat")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python scripts/bench_fairness.py", *([shlex.join(given)] if given else [])])

    sweeps = {
        "penalty": tuple(args.penalty_etas or CONFIGS["penalty"]["eta"]),
        "adversarial": tuple(args.adversarial_etas or CONFIGS["adversarial"]["eta"]),
        "fairret": tuple(args.fairret_strengths or PEER_SWEEPS["fairret"]),
        "gap": tuple(args.gap_strengths or PEER_SWEEPS["gap"]),
    }
    if args.quick:
        args.epochs, args.timing_repeats, args.timing_epochs = 1, 1, 2
        args.eg_max_iter = min(args.eg_max_iter, 10)
        sweeps = {k: (v[0], v[-1]) if len(v) > 1 else v for k, v in sweeps.items()}
    if min(args.epochs, args.timing_repeats, args.eg_max_iter, args.threads) < 1 or args.timing_epochs < 2:
        parser.error("--epochs, --timing-repeats, --eg-max-iter, --threads must be >= 1 and --timing-epochs >= 2")
    seeds = list(dict.fromkeys(args.seeds))

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    wall_start = time.perf_counter()
    # results[(method, setting)] = list of per-seed dicts (acc, dp, eo, fit seconds)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}

    def record(method: str, setting: str, metrics: dict[str, float], seconds: float) -> None:
        results.setdefault((method, setting), []).append({**metrics, "s": seconds})

    with threadpool_limits(limits=args.threads):
        dms = {}
        for seed in seeds:
            dm = TabularDataModule(
                DATASET, sensitive=SENSITIVE, include_sensitive=INCLUDE_SENSITIVE, batch_size=BATCH_SIZE, seed=seed
            )
            dm.setup("fit")
            dms[seed] = dm
            train, test, G = dm.train_tensors, dm.test_tensors, dm.num_groups

            # ours
            runs: list[tuple[str, str, str, float | None]] = [("ours: erm", "-", "erm", None)]
            runs += [("ours: penalty (DP)", f"eta={fmt_eta(e)}", "penalty", e) for e in sweeps["penalty"]]
            runs += [
                ("ours: adversarial (DP, logit)", f"eta={fmt_eta(e)}", "adversarial", e) for e in sweeps["adversarial"]
            ]
            runs += [
                ("ours: lagrangian (DP)", f"tol={CONFIGS['lagrangian-dp'].get('tolerance')}", "lagrangian-dp", None),
                ("ours: lagrangian (EO)", f"tol={CONFIGS['lagrangian-eo'].get('tolerance')}", "lagrangian-eo", None),
            ]
            for method, setting, name, eta in runs:
                start = time.perf_counter()
                module, _ = fit_ours(dm, name, args.epochs, seed, eta)
                record(method, setting, score_model(module, test, G), time.perf_counter() - start)
            for tolerance in () if args.quick else TOLERANCE_SWEEP:
                start = time.perf_counter()
                module, _ = fit_ours(dm, "lagrangian-dp", args.epochs, seed, tolerance=tolerance)
                record("ours: lagrangian (DP)", f"tol={tolerance}", score_model(module, test, G), time.perf_counter() - start)

            # raw-PyTorch peers
            peers = [("fairret: NormLoss(PositiveRate())", fairret_penalty(G), "fairret"),
                     ("raw: squared mean gap", mean_gap_penalty, "gap")]
            for method, penalty, key in peers:
                for strength in sweeps[key]:
                    start = time.perf_counter()
                    model = fit_raw(train, G, penalty, strength, args.epochs, seed)
                    seconds = time.perf_counter() - start
                    record(method, f"strength={fmt_eta(strength)}", score_model(model, test, G), seconds)

            # fairlearn
            if not args.no_fairlearn:
                start = time.perf_counter()
                preds = fit_exponentiated_gradient(train, test, seed, args.eg_max_iter)
                record(
                    "fairlearn: ExponentiatedGradient(LR)", f"DP bound={DP_BOUND}",
                    score(torch.as_tensor(preds, dtype=torch.long), test, G, from_logits=False),
                    time.perf_counter() - start,
                )
                start = time.perf_counter()
                preds = fit_threshold_optimizer(train, test, seed)
                record(
                    "fairlearn: ThresholdOptimizer(LR)", "demographic_parity",
                    score(torch.as_tensor(preds, dtype=torch.long), test, G, from_logits=False),
                    time.perf_counter() - start,
                )

        # step overhead: interleaved repeats, order rotated per repeat
        dm = dms[seeds[0]]
        order = list(TIMED)
        epoch_times: dict[str, list[float]] = {mode: [] for mode in order}
        for repeat in range(args.timing_repeats):
            rotated = order[repeat % len(order):] + order[: repeat % len(order)]
            for mode in rotated:
                _, seconds = fit_ours(dm, mode, args.timing_epochs, seeds[0])
                epoch_times[mode].append(statistics.median(seconds[1:]))
        ratios = {
            mode: statistics.median(t / e for t, e in zip(epoch_times[mode], epoch_times["erm"])) for mode in order
        }
    total_seconds = time.perf_counter() - wall_start

    # ------------------------------------------------------------------ report
    dm = dms[seeds[0]]
    x = dm.train_tensors[0]
    n_test = len(dm.test_tensors[1])
    versions = (
        f"torch {torch.__version__}, lightning {pl.__version__}, fair_lightning {version('fair-lightning')}, "
        f"fairret {version('fairret')}, fairlearn {version('fairlearn')}, scikit-learn {version('scikit-learn')}, "
        f"numpy {np.__version__}; python {platform.python_version()}; {args.threads} thread(s) "
        "(torch.set_num_threads + threadpoolctl)"
    )
    median = {key: {m: statistics.median(r[m] for r in rows) for m in ("acc", "dp", "eo", "s")}
              for key, rows in results.items()}
    header_lines = [
        f"Adult (bundled), sensitive '{SENSITIVE}' ({dm.num_groups} groups: {', '.join(dm.group_names)}); "
        f"official test split ({n_test} rows); train {x.shape[0]} rows x {x.shape[1]} features "
        f"(validation carved from train by TabularDataModule, seed = run seed).",
        f"INCLUDE_SENSITIVE = {INCLUDE_SENSITIVE}: '{SENSITIVE}' is "
        + ("among the features, so every model can learn group-aware decisions." if INCLUDE_SENSITIVE
           else "not among the features (fairness through unawareness)."),
        f"MLP {x.shape[1]}-{HIDDEN}-{HIDDEN}-1 (ReLU), Adam lr {LR:g}, batch {BATCH_SIZE}, {args.epochs} epoch(s) "
        f"for ours and the raw-PyTorch peers; seeds {seeds} (table: median over seeds).",
        versions + ".",
        "Metrics on the test split, fairlearn definitions via fair_lightning.functional: accuracy at 0.5, "
        "DP diff = max-min selection rate, EO diff = max(TPR diff, FPR diff).",
    ]
    config_lines = [f"  CONFIGS[{name!r}]: {describe_config(name)}" for name in CONFIGS]
    config_lines.append(
        f"  sweeps: penalty eta {list(sweeps['penalty'])}, adversarial eta {list(sweeps['adversarial'])}, "
        f"fairret strength {list(sweeps['fairret'])}, mean-gap strength {list(sweeps['gap'])}"
    )
    if not args.no_fairlearn:
        config_lines.append(f"  fairlearn: ExponentiatedGradient(LogisticRegression(max_iter=1000), "
                            f"DemographicParity(difference_bound={DP_BOUND}), max_iter={args.eg_max_iter}); "
                            "ThresholdOptimizer(estimator=LogisticRegression(max_iter=1000), "
                            "constraints='demographic_parity', predict_method='predict_proba'); "
                            "predict(random_state=seed)")

    mwidth = max(len(m) for m, _ in results)
    swidth = max(len("setting"), *(len(s) for _, s in results))
    table = [
        f"  {'method':<{mwidth}}  {'setting':<{swidth}}  {'test acc':>8}  {'DP diff':>7}  {'EO diff':>7}  {'fit s':>6}"
    ]
    md_table = ["| method | setting | test acc | DP diff | EO diff | fit s |", "|---|---|---:|---:|---:|---:|"]
    for (method, setting), m in median.items():
        table.append(
            f"  {method:<{mwidth}}  {setting:<{swidth}}  {m['acc']:8.4f}  {m['dp']:7.4f}  {m['eo']:7.4f}  {m['s']:6.1f}"
        )
        md_table.append(f"| {method} | {setting} | {m['acc']:.4f} | {m['dp']:.4f} | {m['eo']:.4f} | {m['s']:.1f} |")

    timing_lines = [
        f"Step overhead: {args.timing_repeats} interleaved repeat(s) of {args.timing_epochs} epochs each "
        "(no validation), "
        "a run's time = median epoch after the first, on_train_epoch_start -> on_train_epoch_end; "
        "ratio = median over repeats of run / erm run of the same repeat"
        + f"; penalty and adversarial at eta={TIMING_ETA:g}:"
    ]
    for mode in order:
        runs_ms = ", ".join(f"{1000 * t:.0f}" for t in epoch_times[mode])
        timing_lines.append(
            f"  {mode:<14} {1000 * statistics.median(epoch_times[mode]):7.1f} ms/epoch   "
            f"{mode}/erm = {ratios[mode]:.2f}x   runs: [{runs_ms}] ms"
        )

    # ------------------------------------------------------------------ checks
    def get(method: str, setting: str) -> dict[str, float]:
        return median[(method, setting)]

    checks: list[tuple[bool, str]] = []
    erm = get("ours: erm", "-")
    lag_dp = get("ours: lagrangian (DP)", f"tol={CONFIGS['lagrangian-dp'].get('tolerance')}")
    lag_eo = get("ours: lagrangian (EO)", f"tol={CONFIGS['lagrangian-eo'].get('tolerance')}")
    checks.append((
        lag_dp["dp"] <= 0.03 and lag_dp["acc"] >= 0.83,
        f"(a) lagrangian-DP: test DP {lag_dp['dp']:.4f} <= 0.03 at accuracy {lag_dp['acc']:.4f} >= 0.83",
    ))
    checks.append((
        lag_eo["eo"] <= 0.04 and lag_eo["acc"] >= 0.835,
        f"(b) lagrangian-EO: test EO {lag_eo['eo']:.4f} <= 0.04 at accuracy {lag_eo['acc']:.4f} >= 0.835",
    ))
    for label, method, key in (("penalty", "ours: penalty (DP)", "penalty"),
                               ("adversarial", "ours: adversarial (DP, logit)", "adversarial")):
        etas = list(sweeps[key])
        dps = [get(method, f"eta={fmt_eta(e)}")["dp"] for e in etas]
        top = dps[etas.index(max(etas))]
        low = dps[etas.index(min(etas))]
        rho = spearman(etas, dps)
        halved = top <= erm["dp"] / 2
        downward = (rho < 0) or (top < low)  # NaN rho compares False
        checks.append((
            halved and downward,
            f"(c) {label}: DP at eta={fmt_eta(max(etas))} {top:.4f} <= erm DP/2 {erm['dp'] / 2:.4f} "
            f"[{'ok' if halved else 'no'}]; "
            f"downward trend: Spearman(eta, DP) = {rho:.2f} < 0 or DP(eta={fmt_eta(max(etas))}) {top:.4f} < "
            f"DP(eta={fmt_eta(min(etas))}) {low:.4f} [{'ok' if downward else 'no'}]; DP along the sweep "
            f"[{', '.join(f'{d:.3f}' for d in dps)}]",
        ))
    checks.append((
        ratios["lagrangian-dp"] <= 1.2 and ratios["lagrangian-eo"] <= 1.2,
        f"(d) overhead: lagrangian-DP/erm = {ratios['lagrangian-dp']:.2f}x, lagrangian-EO/erm = "
        f"{ratios['lagrangian-eo']:.2f}x, both <= 1.2",
    ))
    # ------------------------------------------------------------------ frontiers (issue: sweep vs peers)
    # (test accuracy up, DP difference down), reference (0, 1): the worst value of each
    families = {
        "ours: the main job's sweeps (erm, penalty, Lagrangian DP)": [("ours: erm", "-")]
        + [("ours: penalty (DP)", f"eta={fmt_eta(e)}") for e in sweeps["penalty"]]
        + [key for key in median if key[0] == "ours: lagrangian (DP)"],
        "ours: every mode": [key for key in median if key[0].startswith("ours:")],
        "fairret: NormLoss(PositiveRate())": [key for key in median if key[0].startswith("fairret")],
        "raw: squared mean gap": [key for key in median if key[0].startswith("raw:")],
        "fairlearn (EG + ThresholdOptimizer)": [key for key in median if key[0].startswith("fairlearn")],
    }
    points = {name: np.array([[median[k]["acc"], median[k]["dp"]] for k in keys]) for name, keys in families.items()}
    frontier_lines = ["Frontiers (test accuracy up, DP difference down), hypervolume w.r.t. reference (acc 0, DP 1):"]
    for name, pts in points.items():
        if len(pts):
            front = pts[pareto_front(pts, maximize=(True, False))]
            frontier_lines.append(
                f"  {name:<58} hypervolume {hypervolume(pts, (0.0, 1.0), maximize=(True, False)):.4f}   "
                f"front: {', '.join(f'({a:.4f}, {d:.4f})' for a, d in front[np.argsort(-front[:, 0])])}"
            )
    ours_front = points["ours: the main job's sweeps (erm, penalty, Lagrangian DP)"]
    ours_front = ours_front[pareto_front(ours_front, maximize=(True, False))]
    peer_keys = [k for k in median if not k[0].startswith("ours:")]
    beaten = []
    for key in peer_keys:
        acc, dp = median[key]["acc"], median[key]["dp"]
        covered = bool(((ours_front[:, 1] <= dp) & (ours_front[:, 0] >= acc - 0.002)).any())
        beaten.append((covered, f"{key[0]} {key[1]} ({acc:.4f}, {dp:.4f})"))
    checks.append((
        all(ok for ok, _ in beaten),
        "(e) every peer point is dominated, or matched within 0.002 accuracy, by a point of the "
        "frontier of the main job's sweeps: " + "; ".join(f"{'ok' if ok else 'NOT'} {text}" for ok, text in beaten),
    ))
    check_lines = [f"  {'PASS' if ok else 'FAIL'} {text}" for ok, text in checks]

    print(*header_lines, sep="\n")
    print("Configurations (exact FairLightningModule kwargs, plus model, num_groups, group_names):")
    print(*config_lines, sep="\n")
    print(f"Results (median over {len(seeds)} seed(s); fit s = training wall time of one run):")
    print(*table, sep="\n")
    print(*timing_lines, sep="\n")
    print(*frontier_lines, sep="\n")
    print("Checks:")
    print(*check_lines, sep="\n")
    print(f"total wall time: {total_seconds:.0f} s" + (" (--quick: smoke run, not a result)" if args.quick else ""))

    if args.out is not None:
        date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        lines = [
            "```",
            f"$ {command}",
            f"date: {date}; total wall time {total_seconds:.0f} s",
            versions,
            "```",
            "",
            *[f"- {line}" for line in header_lines if line != versions + "."],
            "",
            "Configurations:",
            "",
            *[f"- `{line.strip()}`" for line in config_lines],
            "",
            *md_table,
            "",
            *[line.strip() if i == 0 else f"- {line.strip()}" for i, line in enumerate(timing_lines)],
            "",
            *[line.strip() if i == 0 else f"- {line.strip()}" for i, line in enumerate(frontier_lines)],
            "",
            "Checks:",
            "",
            *[f"- {line.strip()}" for line in check_lines],
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))
        print(f"markdown written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
