#!/usr/bin/env python
"""Turn a fair-lightning sweep directory into frontier.csv, frontier.png, a hypervolume and a TensorBoard entry.

    python scripts/pareto.py outputs/sweeps/2026-01-01_12-00-00 --threshold 0.05
    python scripts/pareto.py SWEEP_DIR --x test_dp_ratio --threshold 0.8 --baseline erm=0.31,0.851

The logic lives in :func:`fair_lightning.pareto.main` (also ``python -m fair_lightning.pareto``),
so the installed package has it too; ``--help`` lists the options.
"""

import sys

from fair_lightning.pareto import main

if __name__ == "__main__":
    sys.exit(main())
