"""
One round of workloads against one running registry: the connection to it,
bounded repetitions, and the CPU, wall time and RSS each step costs.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..client import Connection
from ..common import log

if TYPE_CHECKING:
    from ..data import Data
    from ..registries import Registry
    from ..sizes import Sizes

# Repetitions of a workload stop early once they have taken this long (a
# slow storage, e.g. S3): the figure is then the median of fewer runs.
REPEAT_BUDGET_S = 120.0

# A step: its name (the CPU table's row; the notes key when it fails) and
# the function that runs it, which records figures in ``bench.results``.
Step = tuple[str, Callable[["Bench"], None]]
# A table row: key in ``results``, label (``{big}``, ``{chunk}``, ``{huge}``,
# ``{n}``, ``{image}`` are filled in from the sizes), unit, "higher" or "lower" is better.
Metric = tuple[str, str, str, str]

# Measured by every round, after its steps.
METRICS: list[Metric] = [("peak_rss_mib", "peak RSS (VmHWM, largest process)", "MiB", "lower")]


class Bench:
    """What the steps of one round share: the registry, the test data, the sizes, and what they measured."""

    def __init__(self, registry: Registry, data: Data, sizes: Sizes):
        self.r, self.data, self.sizes = registry, data, sizes
        self.results: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}
        self.cpu: dict[str, dict] = {}

    def conn(self, timeout: float = 120.0) -> Connection:
        return Connection("127.0.0.1", self.r.port, timeout=timeout)

    def repeat(self, key: str, count: int, function) -> list:
        """``function()`` ``count`` times, or fewer once REPEAT_BUDGET_S have passed."""
        figures, started = [], time.monotonic()
        for _ in range(count):
            figures.append(function())
            if len(figures) < count and time.monotonic() - started > REPEAT_BUDGET_S:
                note = f"stopped after {len(figures)} of {count} runs (time budget {REPEAT_BUDGET_S:.0f}s)"
                self.notes[f"{key} repetitions"] = note
                log(f"{self.r.label}: {key}: {note}")
                break
        return figures

    def run(self, steps: list[Step]) -> None:
        """Every step in turn (a failed one is noted and the next runs), then the peak RSS."""
        for name, step in steps:
            if not self.r.alive():
                self.notes[name] = "registry not running"
                log(f"{self.r.label}: skipping {name}: the registry is not running")
                continue
            log(f"{self.r.label}: {name}")
            self.cpu[name] = self.measure(name, step)
        peak, each = self.r.peak_rss_mib()
        self.results["peak_rss_mib"] = round(peak, 1) if peak is not None else None
        self.notes["peak_rss_each_mib"] = ", ".join(f"{v:.1f}" for v in each)
        if self.r.s3:
            self.notes["seaweedfs_peak_rss_mib_since_start"] = str(self.r.s3.server.rss_mib())

    def measure(self, name: str, step: Callable[[Bench], None]) -> dict:
        """Run one step: its wall time, the CPU seconds of the registry, this script, its tools and SeaweedFS."""
        server_cpu = self.r.cpu_seconds()
        s3_cpu = self.r.s3.server.cpu_seconds() if self.r.s3 else 0.0
        client = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.monotonic()
        try:
            step(self)
        except Exception as e:  # noqa: BLE001 - a failed workload is reported in the notes, and the next one runs
            self.notes[name] = f"{type(e).__name__}: {e}"
            log(f"{self.r.label}: {name} failed: {e}")
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
        c2 = resource.getrusage(resource.RUSAGE_SELF)
        ch2 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = {
            "wall_s": round(time.monotonic() - wall, 3),
            "server_cpu_s": round(self.r.cpu_seconds() - server_cpu, 3),
            "bench_cpu_s": round(c2.ru_utime + c2.ru_stime - client.ru_utime - client.ru_stime, 3),
            "tools_cpu_s": round(ch2.ru_utime + ch2.ru_stime - children.ru_utime - children.ru_stime, 3),
        }
        if self.r.s3:
            cpu["s3_cpu_s"] = round(self.r.s3.server.cpu_seconds() - s3_cpu, 3)
        # The peak so far, after each workload: which one set the run's peak RSS.
        peak_so_far = self.r.peak_rss_mib()[0]
        if peak_so_far is not None:
            cpu["peak_rss_mib_so_far"] = round(peak_so_far, 1)
        return cpu
