"""What every part of the benchmark uses: units, the log line, the error for what cannot be measured."""

from __future__ import annotations

import sys
import time

MiB = 1 << 20
MB = 1_000_000


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A workload or a registry configuration that cannot be measured here."""
