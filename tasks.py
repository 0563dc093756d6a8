#!/usr/bin/env python3
"""Set up and run fair-lightning from a fresh clone with nothing but Python >= 3.10 and pip.

    python3 tasks.py main      # set up .venv if needed, then run the main job
    python3 tasks.py test      # set up .venv if needed, then run the test suite
    python3 tasks.py bench     # set up .venv if needed, then run the benchmarks

The virtual environment lives in ``.venv`` and is rebuilt only when ``pyproject.toml`` or
``requirements.txt`` change. torch is installed first, from the exact pin in
``requirements.txt``: a bare ``torch`` requirement on a machine without torch makes pip fetch a
multi-GB CUDA build. Set ``FAIR_LIGHTNING_TORCH_INDEX`` to an index URL (for example PyTorch's CPU
wheel index) to take torch from there instead. Extra arguments after the command are passed on
(to pytest for ``test``, to the main job for ``main``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".fair_lightning_installed"


def _run(*cmd: str | os.PathLike) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "requirements.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _torch_pin() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip().startswith("torch=="):
            return line.strip()
    raise SystemExit("requirements.txt has no `torch==` pin")


def setup() -> None:
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check"]
    torch_index = os.environ.get("FAIR_LIGHTNING_TORCH_INDEX")
    _run(*pip, _torch_pin(), *(["--index-url", torch_index] if torch_index else []))
    _run(*pip, "-r", "requirements.txt", "-e", ".[dev,bench]")
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"setup", "main", "test", "bench"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    setup()
    if command == "setup":
        return 0
    if command == "test":
        return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)
    if command == "bench":
        return subprocess.call([str(PYTHON), "scripts/bench.py", *rest], cwd=ROOT)
    return subprocess.call([str(PYTHON), "-m", "fair_lightning.main", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
