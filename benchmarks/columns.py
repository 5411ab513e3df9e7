"""
The table's columns: one per registry run ("ociregistry w1", "reference",
the same with " s3"; with ``--notifications`` also "ociregistry w1 notify",
the same registry with one notification endpoint configured; with
``--metrics`` "ociregistry w1 metrics", the same registry with its
Prometheus metrics on).
"""

from __future__ import annotations

NOTIFY = " notify"
METRICS = " metrics"


def run_label(kind: str, workers: int, storage: str = "filesystem", notify: bool = False, metrics: bool = False) -> str:
    """
    A run's column: "ociregistry w1", "reference", " notify" with an
    endpoint, " metrics" with metrics on, and " s3" last on S3.
    """
    label = "reference" if kind == "reference" else f"ociregistry w{workers}"
    return label + (NOTIFY if notify else "") + (METRICS if metrics else "") + (" s3" if storage == "s3" else "")


def is_reference(label: str) -> bool:
    return label.split(" ")[0] == "reference"


def baseline_of(label: str) -> str:
    """
    The column a run's ratios are against: the reference on the same
    storage; for a run with notifications or metrics, the same registry without.
    """
    if NOTIFY in label:
        return label.replace(NOTIFY, "")
    if METRICS in label:
        return label.replace(METRICS, "")
    return "reference s3" if label.endswith(" s3") else "reference"
