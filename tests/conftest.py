"""Test isolation shared by the whole suite."""

from __future__ import annotations

import os

import pytest
import torch.distributed


@pytest.fixture(autouse=True)
def _restore_environment():
    """Undo what a test leaves in ``os.environ`` and close a leaked process group.

    Lightning's ``ddp_spawn`` launcher writes ``MASTER_PORT`` (a free port it found) into the
    parent's environment; left there, the next DDP test reuses that port and can fail with
    "address already in use" while the old sockets linger. Lightning's own test suite restores
    the environment the same way.
    """
    saved = os.environ.copy()
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
