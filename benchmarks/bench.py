#!/usr/bin/env python3
"""
Benchmark ociregistry against the reference registry (CNCF Distribution):
``python benchmarks/bench.py --help``, the same as ``python -m benchmarks``
from the checkout's root.  The code is in the ``benchmarks`` package beside
this file (see its ``__init__``); docs/benchmarks.md describes what it measures.
"""

import os
import sys

# Run as a script, this file's directory comes first on sys.path, where the
# package's own modules would be importable as top-level ones: put the
# checkout's root there instead, so that ``benchmarks`` is the package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.cli import run  # noqa: E402 (needs the sys.path set above)

if __name__ == "__main__":
    sys.exit(run())
