"""Benchmark ReductionsWrapper against fairlearn's ExponentiatedGradient called directly.

Adult (official train/test split), sensitive feature ``sex``, base estimator
``HistGradientBoostingClassifier(random_state=0)``, constraint
``DemographicParity(difference_bound=0.01)``. Both are fitted with the same arguments, in
alternating order, ``--repeats`` times each; the script reports the median fit times and their
ratio (target: wrapper <= 1.05x direct), checks that the predictions are identical (randomized
``predict`` with the same seed, and the probability mass function), and prints test accuracy and
demographic-parity difference (fairlearn's ``demographic_parity_difference``).

The base estimator runs single-threaded by default (``--threads 1``): on a shared machine,
OpenMP threads that busy-wait for a busy core made one fit several times slower and the timings
meaningless; one thread gives stable, comparable times.

Usage:
    python scripts/bench_reductions.py [--repeats 3] [--max-iter 50] [--threads 1] [--source auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from fairlearn.metrics import demographic_parity_difference
from fairlearn.reductions import DemographicParity, ExponentiatedGradient
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fair_lightning.reductions import ReductionsWrapper  # noqa: E402

RAW_DIR = Path("/work/shared/data/adult")
NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
CATEGORICAL = [
    "workclass",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
]
RAW_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]
SEED = 0
BOUND = 0.01


# ----------------------------------------------------------------------------------- data
def load_adult_bundled() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test frames (features, ``sex``, ``label``) from ``fair_lightning.data``."""
    from fair_lightning.data import load_adult

    data = load_adult()
    frames = []
    for which in ("train", "test"):
        part = data.subset(which)
        frame = part.frame[NUMERIC + CATEGORICAL].copy()
        frame["label"] = part.y.to_numpy()
        frames.append(frame)
    return frames[0], frames[1]


def load_adult_raw(raw_dir: Path = RAW_DIR) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same frames read from the UCI files: '?' rows dropped, label '>50K' / '>50K.'."""
    frames = []
    for name, skip in (("adult.data", 0), ("adult.test", 1)):
        raw = pd.read_csv(
            raw_dir / name,
            header=None,
            names=RAW_COLUMNS,
            skiprows=skip,
            skipinitialspace=True,
            na_values="?",
        ).dropna()
        frame = raw[NUMERIC + CATEGORICAL].copy()
        frame["label"] = raw["income"].str.rstrip(".").eq(">50K").astype(np.int64).to_numpy()
        frames.append(frame.reset_index(drop=True))
    return frames[0], frames[1]


def load_adult_split(source: str):
    """One-hot features, labels and ``sex`` for train and test; ``source`` picks the loader."""
    if source == "auto":
        try:
            from fair_lightning.data import load_adult  # noqa: F401
        except ImportError:
            source = "raw"
        else:
            source = "bundled"
    train, test = load_adult_bundled() if source == "bundled" else load_adult_raw()
    X_train = pd.get_dummies(train[NUMERIC + CATEGORICAL], columns=CATEGORICAL, dtype=np.float64)
    X_test = pd.get_dummies(test[NUMERIC + CATEGORICAL], columns=CATEGORICAL, dtype=np.float64)
    X_test = X_test.reindex(columns=X_train.columns, fill_value=0.0)  # train's columns only
    X_train = X_train.astype(np.float64)
    X_test = X_test.astype(np.float64)
    sex_train = train["sex"].astype(str).reset_index(drop=True)
    sex_test = test["sex"].astype(str).reset_index(drop=True)
    return source, (X_train, train["label"].to_numpy(), sex_train), (
        X_test,
        test["label"].to_numpy(),
        sex_test,
    )


# ---------------------------------------------------------------------------------- fits
def base_estimator() -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(random_state=SEED)


def fit_direct(X, y, sex, max_iter):
    model = ExponentiatedGradient(
        base_estimator(), DemographicParity(difference_bound=BOUND), max_iter=max_iter
    )
    return _timed(lambda: model.fit(X, y, sensitive_features=sex)), model


def fit_wrapper(X, y, sex, max_iter):
    model = ReductionsWrapper(
        base_estimator(), "demographic_parity", difference_bound=BOUND, max_iter=max_iter
    )
    return _timed(lambda: model.fit(X, y, sensitive_features=sex)), model


def _timed(fit) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fits of each kind (default 3)")
    parser.add_argument("--max-iter", type=int, default=50, help="ExponentiatedGradient max_iter")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads (default 1)")
    parser.add_argument("--source", choices=["auto", "bundled", "raw"], default="auto")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="fairlearn")
    with threadpool_limits(limits=args.threads):
        return run(args)


def run(args: argparse.Namespace) -> int:

    source, (X, y, sex), (X_test, y_test, sex_test) = load_adult_split(args.source)
    print(
        f"Adult ({source}): train {X.shape[0]} x {X.shape[1]}, test {X_test.shape[0]}; "
        f"sensitive: sex; base: HistGradientBoostingClassifier(random_state={SEED}); "
        f"DemographicParity(difference_bound={BOUND}); max_iter={args.max_iter}; "
        f"repeats={args.repeats} each, alternating order; threads={args.threads}"
    )

    times: dict[str, list[tuple[float, float]]] = {"direct": [], "wrapper": []}
    identical = []
    fits = {"direct": fit_direct, "wrapper": fit_wrapper}
    for repeat in range(args.repeats):
        order = ("direct", "wrapper") if repeat % 2 == 0 else ("wrapper", "direct")
        models = {}
        for kind in order:
            timing, models[kind] = fits[kind](X, y, sex, args.max_iter)
            times[kind].append(timing)
            print(f"  repeat {repeat} {kind:>7}: {timing[0]:6.1f} s wall, {timing[1]:6.1f} s CPU")
        direct, wrapper = models["direct"], models["wrapper"]
        same = np.array_equal(
            wrapper.predict(X_test, random_state=SEED), direct.predict(X_test, random_state=SEED)
        ) and np.array_equal(wrapper.predict_proba(X_test), direct._pmf_predict(X_test))
        identical.append(same)

    def median(kind: str, which: int) -> float:
        return statistics.median(t[which] for t in times[kind])

    print(
        f"median fit time: direct {median('direct', 0):.1f} s, wrapper {median('wrapper', 0):.1f} s"
        f" -> ratio {median('wrapper', 0) / median('direct', 0):.3f}x wall "
        f"(CPU: {median('direct', 1):.1f} s vs {median('wrapper', 1):.1f} s, "
        f"{median('wrapper', 1) / median('direct', 1):.3f}x); target <= 1.05x"
    )
    print(
        f"predictions identical (predict with random_state={SEED} and predict_proba vs "
        f"_pmf_predict), per repeat: {identical}"
    )
    print(
        f"ExponentiatedGradient: {wrapper.n_iter_} iterations, {len(wrapper.predictors_)} "
        f"predictors, {int((wrapper.weights_ > 0).sum())} with weight > 0"
    )

    baseline = base_estimator().fit(X, y)
    rows = [
        ("HistGradientBoosting, unconstrained", baseline.predict(X_test)),
        ("ExponentiatedGradient (direct)", direct.predict(X_test, random_state=SEED)),
        ("ReductionsWrapper", wrapper.predict(X_test, random_state=SEED)),
    ]
    print(f"{'test set':<38} {'accuracy':>8} {'DP difference':>14}")
    for name, y_pred in rows:
        accuracy = float(np.mean(y_pred == y_test))
        dp = demographic_parity_difference(y_test, y_pred, sensitive_features=sex_test)
        print(f"{name:<38} {accuracy:8.4f} {dp:14.4f}")
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(main())
