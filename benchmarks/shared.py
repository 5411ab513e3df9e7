"""
The process launchers the benchmark shares with the tests, imported from
tests/ (standard library only): ``registry_process.py`` for ociregistry and
the reference, ``seaweedfs_process.py`` for SeaweedFS, ``receiver_process.py``
for the webhook receiver of ``--notifications``, so that each starts the
same way in both.
"""

from __future__ import annotations

import os
import sys

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)

from receiver_process import ReceiverProcess  # noqa: E402
from registry_process import (  # noqa: E402 (from tests/, put on sys.path above)
    RegistryProcess,
    descendants,
    free_port,
    proc_cpu_seconds,
    proc_status_kib,
    registry_environment,
)
from seaweedfs_process import SeaweedFSProcess, find_weed  # noqa: E402

__all__ = [
    "ReceiverProcess",
    "RegistryProcess",
    "SeaweedFSProcess",
    "descendants",
    "find_weed",
    "free_port",
    "proc_cpu_seconds",
    "proc_status_kib",
    "registry_environment",
]
