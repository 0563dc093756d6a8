"""Run ``demo.ipynb`` with nbclient, in this interpreter: for ``tests/test_notebook.py`` and to refresh
the outputs stored in the repository.

    python -m tests._notebook      # execute demo.ipynb as it is (QUICK = True) and save it with outputs

The kernel is always a temporary ``python3`` kernelspec whose ``argv[0]`` is ``sys.executable``,
so the notebook runs with the interpreter running this code (the project's ``.venv``), whatever
kernels the machine has installed.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "demo.ipynb"
KERNEL_NAME = "python3"
#: papermill's conventions: the cell holding the defaults, and the cell that overrides them.
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def read(path: str | Path = NOTEBOOK) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parameters_index(nb: nbformat.NotebookNode) -> int:
    """Index of the one code cell tagged ``parameters``."""
    found = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and PARAMETERS_TAG in tags(cell)]
    if len(found) != 1:
        raise ValueError(f"the notebook must have exactly one code cell tagged {PARAMETERS_TAG!r}, found {len(found)}")
    return found[0]


def inject_parameters(nb: nbformat.NotebookNode, **params: Any) -> nbformat.NotebookNode:
    """A copy of ``nb`` with a cell tagged ``injected-parameters`` after the ``parameters`` cell
    (replacing an earlier injected one), as papermill does: ``QUICK=True`` -> ``QUICK = True``."""
    nb = copy.deepcopy(nb)
    nb.cells = [cell for cell in nb.cells if INJECTED_TAG not in tags(cell)]
    source = "# Injected parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(parameters_index(nb) + 1, cell)
    return nb


def kernel_manager_class(kernel_dir: str | Path) -> type[AsyncKernelManager]:
    """A kernel manager class whose only kernelspec, ``python3``, is written under ``kernel_dir`` and
    runs ``sys.executable`` (nbclient creates, owns and shuts down the manager)."""
    spec_dir = Path(kernel_dir) / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

    class ThisPythonKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault(
                "kernel_spec_manager", KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
            )
            super().__init__(**kwargs)

    return ThisPythonKernelManager


def execute(
    nb: nbformat.NotebookNode, workdir: str | Path, *, timeout: int = 600, record_timing: bool = False
) -> nbformat.NotebookNode:
    """Execute ``nb`` in place (cells in order, stopping at the first error) with ``workdir`` as the
    kernel's working directory; returns it. Raises ``nbclient.exceptions.CellExecutionError``."""
    workdir = Path(workdir)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=kernel_manager_class(workdir / ".kernels"),
        timeout=timeout,
        record_timing=record_timing,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def main() -> int:
    """Execute ``demo.ipynb`` as it is (its ``parameters`` cell must say ``QUICK = True``) and save it."""
    nb = read(NOTEBOOK)
    source = nb.cells[parameters_index(nb)].source
    if "QUICK = True" not in source:
        print(f"{NOTEBOOK.name}: the parameters cell must set `QUICK = True` before saving outputs; it is:\n{source}")
        return 1
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        execute(nb, workdir)
    nbformat.write(nb, str(NOTEBOOK))
    print(f"executed and saved {NOTEBOOK} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
