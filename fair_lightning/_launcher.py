"""A local parallel launcher whose sweep survives the death of a job's process.

Hydra's joblib launcher runs jobs in a loky pool: when one worker dies (``SIGKILL`` from the
out-of-memory killer, a segfault), loky raises ``TerminatedWorkerError`` and the whole sweep
aborts, losing the jobs still queued or running. This pool keeps ``n_jobs`` worker processes
(``spawn``ed, each reused for many jobs, as loky does); when one dies, its job is recorded as
``killed`` (``metrics.json``: ``status``, the signal), a fresh worker takes its place and the
sweep goes on. Each job runs exactly as under Hydra's own launchers (``hydra.core.utils.run_job``
with the sweep config of that job), so ``HydraConfig``, ``hydra.job.num`` and the job's output
directory are the usual ones.

The Hydra plugin is :class:`hydra_plugins.fair_lightning_launcher.ResilientLauncher`, config
``hydra/launcher=parallel`` (``n_jobs: 2``).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fair_lightning import _records

log = logging.getLogger(__name__)

try:  # the task function may live in __main__ (python -m fair_lightning.train): pickle it by value
    import cloudpickle as _pickler
except ImportError:  # pragma: no cover
    _pickler = pickle  # type: ignore[assignment]


def _dumps(obj: Any) -> bytes:
    return _pickler.dumps(obj)


# ------------------------------------------------------------------------------------- worker side
def _execute(idx: int, overrides: Sequence[str], shared: tuple[Any, ...], conn: Any) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import OmegaConf, open_dict

    hydra_context, config, task_function, singleton_state = shared
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    output_dir = str(Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))) / str(sweep_config.hydra.sweep.subdir))
    conn.send(("started", idx, output_dir, os.getpid()))
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _worker_main(conn: Any, shared_bytes: bytes, threads: int | None) -> None:
    """Run the jobs the parent sends until it sends ``None``; each result goes back pickled."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
        try:
            import torch

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        except (ImportError, ValueError):  # pragma: no cover
            pass
    shared = pickle.loads(shared_bytes)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        _, idx, overrides = message
        try:
            ret = _execute(idx, overrides, shared, conn)
        except BaseException as exc:  # SystemExit (SIGTERM in Lightning), KeyboardInterrupt: report and end
            conn.send(("exit", idx, type(exc).__name__ + (f" ({exc})" if str(exc) else "")))
            raise
        try:
            payload = _dumps(ret)
        except Exception as exc:  # an unpicklable return value or exception
            ret.return_value = RuntimeError(f"job {idx}: its result cannot be sent back ({exc}): {ret._return_value!r}")
            payload = _dumps(ret)
        conn.send(("done", idx, payload))


# ------------------------------------------------------------------------------------- parent side
@dataclass
class _Worker:
    process: Any
    conn: Any
    job: int | None = None
    output_dir: str | None = None
    exit_message: str | None = None


def _killed_return(overrides: Sequence[str], output_dir: str | None) -> Any:
    """A ``JobReturn`` for a job whose process died: completed, with no return value.

    ``None`` rather than a failure: Hydra's sweepers re-raise a failed job's exception and would
    end the sweep; Optuna's marks a trial without a number as failed and goes on.
    """
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(overrides=list(overrides), working_dir=output_dir)
    ret.status = JobStatus.COMPLETED
    ret.return_value = None
    return ret


def record_killed(output_dir: str | None, how: str) -> None:
    """Complete a job's record as ``killed`` unless it already says how it ended."""
    if output_dir is None:
        return
    record = _records.read_record(output_dir) or {}
    if record.get("status") in (_records.OK, _records.FAILED, _records.KILLED):
        return
    record.update(
        status=_records.KILLED,
        error=how,
        ended=datetime.now().isoformat(timespec="seconds"),
        output_dir=output_dir,
    )
    _records.write_record(record, output_dir)


def launch(
    *,
    hydra_context: Any,
    task_function: Any,
    config: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    n_jobs: int,
    threads_per_job: int | None = None,
) -> list[Any]:
    """Run the jobs on ``n_jobs`` worker processes; a job whose worker dies is recorded as killed.

    Returns:
        One ``JobReturn`` per job, in order.
    """
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides

    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"`hydra.launcher.n_jobs` must be a positive int (or -1: one per core), got {n_jobs!r}")
    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs == -1 else n_jobs
    n_jobs = max(1, min(n_jobs, len(job_overrides)))
    if threads_per_job is None:
        threads_per_job = max(1, cores // n_jobs)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Resilient launcher: {len(job_overrides)} jobs on {n_jobs} worker processes, sweep output dir: {sweep_dir}")
    for i, overrides in enumerate(job_overrides):
        log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")

    ctx = multiprocessing.get_context("spawn")
    shared = _dumps((hydra_context, config, task_function, Singleton.get_state()))
    pending = deque(range(len(job_overrides)))
    results: list[Any] = [None] * len(job_overrides)
    workers: list[_Worker] = []

    def spawn() -> _Worker:
        parent_conn, child_conn = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child_conn, shared, threads_per_job), name="fair-lightning-job")
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def handle(worker: _Worker, message: tuple[Any, ...]) -> None:
        kind, idx = message[0], message[1] - initial_job_idx
        if kind == "started":
            worker.output_dir = message[2]
        elif kind == "done":
            results[idx] = pickle.loads(message[2])
            worker.job, worker.output_dir = None, None
        elif kind == "exit":
            worker.exit_message = message[2]

    try:
        while pending or any(w.job is not None for w in workers):
            for worker in [w for w in workers if w.job is None and not w.process.is_alive()]:
                worker.process.join()  # an idle worker killed from outside: replace it
                workers.remove(worker)
            while len(workers) < n_jobs and len(workers) < len(pending) + sum(w.job is not None for w in workers):
                workers.append(spawn())
            for worker in workers:
                if worker.job is None and pending:
                    worker.job = pending.popleft()
                    worker.conn.send(("job", initial_job_idx + worker.job, list(job_overrides[worker.job])))
            busy = [w for w in workers if w.job is not None]
            ready = multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                try:
                    while worker.conn.poll():
                        handle(worker, worker.conn.recv())
                except (EOFError, OSError):
                    pass
                if worker.job is not None and not worker.process.is_alive():
                    worker.process.join()
                    idx = worker.job
                    exitcode = _records.signal_description(worker.process.exitcode)
                    how = (
                        f"the job's process stopped on {worker.exit_message} ({exitcode})"
                        if worker.exit_message
                        else f"the job's process was killed by {exitcode}"
                    )
                    log.error(f"job #{initial_job_idx + idx} ({' '.join(job_overrides[idx])}): {how}; the sweep goes on")
                    record_killed(worker.output_dir, how)
                    results[idx] = _killed_return(job_overrides[idx], worker.output_dir)
                    worker.conn.close()
                    workers.remove(worker)
    finally:
        for worker in workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join()
    return results


__all__ = ["launch", "record_killed"]
