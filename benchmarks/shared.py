"""
The process launcher the benchmark shares with the tests:
``tests/registry_process.py`` (standard library only), imported from there
so that ociregistry and the reference start the same way in both.
"""

from __future__ import annotations

import os
import sys

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)

from registry_process import (
    RegistryProcess,
    descendants,
    free_port,
    proc_cpu_seconds,
    proc_status_kib,
    registry_environment,
)

__all__ = [
    "RegistryProcess",
    "descendants",
    "free_port",
    "proc_cpu_seconds",
    "proc_status_kib",
    "registry_environment",
]
