"""``python -m benchmarks``: the same as ``benchmarks/bench.py``."""

import sys

from .cli import run

sys.exit(run())
