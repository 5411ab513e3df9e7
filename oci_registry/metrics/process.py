"""
One set of metrics over every worker: prometheus_client's multiprocess
mode.  Worker 0 makes a private directory at start-up (empty: nothing of
an earlier run is counted), names it in ``PROMETHEUS_MULTIPROC_DIR`` for
itself and the workers it starts, and removes it when it stops.  Each
process writes its values to files of its own there; a scrape adds up
every file, including those of workers that ended, so a counter never goes
backwards when a worker is restarted.  A gauge of a process that ended is
dropped (`process_ended`: ``livesum``/``livemax`` gauges).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.application.service import Service

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

_metrics = None  # this process's `Metrics`, made once


def make_directory() -> str:
    """A new, empty directory for this registry's metric files, named in the environment (worker 0)."""
    directory = tempfile.mkdtemp(prefix="ociregistry-metrics-")
    os.environ[DIRECTORY_VARIABLE] = directory
    _multiprocess_values()
    return directory


def directory() -> str | None:
    return os.environ.get(DIRECTORY_VARIABLE) or None


def _multiprocess_values() -> None:
    # prometheus_client picks the kind of value store when first imported; it may have been already.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def process_metrics(repository_label: bool = False):
    """This process's `Metrics` (made on first use, in the directory of the environment)."""
    global _metrics
    if _metrics is None:
        if directory() is None:
            make_directory()
        _multiprocess_values()
        from .families import Metrics

        _metrics = Metrics(repository_label=repository_label)
    return _metrics


def process_ended(pid: int) -> None:
    """Forget the gauges of worker process ``pid``, which ended (its counters stay counted)."""
    path = directory()
    if path is not None and pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every process's metrics, and its content type."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=directory())
    # Names and labels in the classic character set: the 0.0.4 text format, which every Prometheus reads.
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


class DirectoryCleanup(Service):
    """Removes the metrics directory when worker 0 stops (after the workers have)."""

    def __init__(self, path: str):
        self.path = path

    def stopService(self):
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)
