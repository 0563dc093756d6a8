"""The life cycle of a job's record (``metrics.json``): written when the job starts, completed when it ends.

A job's ``metrics.json`` passes through these ``status`` values:

* ``"running"``: written when the job starts, with ``pid``, ``host`` and ``started``;
* ``"ok"``: the job finished; the record holds its metrics;
* ``"failed"``: the job raised an ``Exception``; ``error`` and ``traceback`` say which;
* ``"killed"``: the job ended by a signal or a ``SystemExit`` (Lightning's ``SIGTERMException``
  on preemption, the out-of-memory killer's ``SIGKILL`` seen by the launcher); ``error`` says how.

A ``"running"`` record whose process is gone (same host, dead ``pid``) is a job killed before it
could say so (``SIGKILL`` under a launcher that does not record it): :func:`effective_status`
reports it as ``"killed"``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
RUNNING, OK, FAILED, KILLED = "running", "ok", "failed", "killed"
STATUSES = (RUNNING, OK, FAILED, KILLED)


def write_record(record: Mapping[str, Any], output_dir: str | os.PathLike) -> Path:
    """Write ``record`` as ``output_dir/metrics.json`` atomically (a reader never sees half a file)."""
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{METRICS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_record(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The record in ``output_dir/metrics.json``, or ``None`` if there is none or it is unreadable."""
    try:
        record = json.loads((Path(output_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def process_identity() -> dict[str, Any]:
    """``pid`` and ``host`` of this process (how :func:`effective_status` tells a live job)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie counts as dead)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    except (OverflowError, ValueError, TypeError):
        return False
    try:  # a zombie (finished, not yet reaped by its parent) is not running
        with open(f"/proc/{int(pid)}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def effective_status(record: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(status, reason)`` of a record, telling a dead ``"running"`` job as ``"killed"``.

    A ``"running"`` record on this host whose ``pid`` no longer exists was killed before it could
    complete its record; on another host it is reported as running (it cannot be checked here).
    """
    status = record.get("status", "unknown")
    if status != RUNNING:
        return str(status), None
    pid, host = record.get("pid"), record.get("host")
    if host not in (None, socket.gethostname()):
        return RUNNING, f"still running on host {host!r} (pid {pid}; cannot be checked from here)"
    if isinstance(pid, int) and not isinstance(pid, bool) and pid_alive(pid):
        return RUNNING, f"still running (pid {pid}, started {record.get('started')})"
    return KILLED, (
        f"killed: the record says running since {record.get('started')} but its process (pid {pid}) is gone "
        "(a signal such as SIGKILL from the out-of-memory killer, or a lost node)"
    )


def signal_description(exitcode: int | None) -> str:
    """``"SIGKILL"`` for exit code -9 (a process killed by a signal), else ``"exit code N"``."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


__all__ = [
    "FAILED",
    "KILLED",
    "METRICS_FILE",
    "OK",
    "RUNNING",
    "STATUSES",
    "effective_status",
    "pid_alive",
    "process_identity",
    "read_record",
    "signal_description",
    "write_record",
]
