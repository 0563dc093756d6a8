#!/usr/bin/env python3
"""Build the data files shipped in ``fair_lightning/data/_bundled/`` from the publishers' raw files.

    python scripts/make_bundled_data.py                       # raw files from ../shared/data
    python scripts/make_bundled_data.py --raw /path/to/data   # folders adult/, compas/, german/
    python scripts/make_bundled_data.py --download            # fetch from UCI / ProPublica first
    python scripts/make_bundled_data.py --check               # rebuild in memory, compare, write nothing

This script is the provenance of the bundled files: it checks the raw files' SHA-256 against the
ones the bundled copy was built from, runs the package's own preprocessing
(``fair_lightning.data.prepare_adult`` / ``prepare_compas`` / ``prepare_german``, the functions
``load_*(source="download")`` also runs), checks the row counts, and writes gzip'd CSV with a fixed
gzip timestamp, so running it twice gives the same bytes. See ``_bundled/PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fair_lightning.data._datasets import BUNDLED, _sha256, fetch, write_bundled  # noqa: E402

BUNDLED_DIR = ROOT / "fair_lightning" / "data" / "_bundled"
DEFAULT_RAW = ROOT.parent / "shared" / "data"
#: Rows each prepared data set must have (and, for Adult, per official split).
EXPECTED_ROWS = {
    "adult": {"train": 30_162, "test": 15_060},
    "compas": 6_172,
    "german": 1_000,
    "census_kdd": {"train": 199_523, "test": 99_762},  # before the bundled sample (``info.bundle``)
}


def build(name: str, raw_root: Path | None, download: bool) -> bytes:
    info = BUNDLED[name]
    raw_dir = fetch(name) if download else raw_root / (info.raw_folder or name)
    for filename, expected in info.sha256.items():
        actual = _sha256(raw_dir / filename)
        if actual != expected:
            raise SystemExit(f"{raw_dir / filename}: SHA-256 {actual} differs from the expected {expected}")
    frame = info.prepare(raw_dir)
    expected_rows = EXPECTED_ROWS[name]
    if isinstance(expected_rows, dict):
        counts = frame["split"].value_counts().to_dict()
        if counts != expected_rows:
            raise SystemExit(f"{name}: split sizes {counts}, expected {expected_rows}")
    elif len(frame) != expected_rows:
        raise SystemExit(f"{name}: {len(frame)} rows, expected {expected_rows}")
    if info.bundle is not None:  # e.g. Census-KDD: a seeded sample keeps the package small
        frame = info.bundle(frame)
    buffer = io.BytesIO()
    write_bundled(frame, buffer)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="folder with adult/, compas/, german/, census-kdd/")
    parser.add_argument("--download", action="store_true", help="download the raw files instead of --raw")
    parser.add_argument("--check", action="store_true", help="compare with the bundled files, write nothing")
    args = parser.parse_args(argv)

    status = 0
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    for name, info in BUNDLED.items():
        data = build(name, args.raw, args.download)
        path = BUNDLED_DIR / info.bundled_file
        rows = gzip.decompress(data).count(b"\n") - 1
        if args.check:
            same = path.exists() and path.read_bytes() == data
            status |= not same
            print(f"{path.relative_to(ROOT)}: {'up to date' if same else 'DIFFERS'} ({rows} rows)")
        else:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT)}: {rows} rows, {len(data) / 1024:.0f} KiB")
    return status


if __name__ == "__main__":
    sys.exit(main())
