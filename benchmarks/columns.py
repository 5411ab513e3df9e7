"""The table's columns: one per registry run ("ociregistry w1", "reference", the same with " s3")."""

from __future__ import annotations


def run_label(kind: str, workers: int, storage: str = "filesystem") -> str:
    """A run's column: "ociregistry w1", "reference", and " s3" after either on S3."""
    label = "reference" if kind == "reference" else f"ociregistry w{workers}"
    return label + (" s3" if storage == "s3" else "")


def is_reference(label: str) -> bool:
    return label.split(" ")[0] == "reference"


def baseline_of(label: str) -> str:
    """The reference column a run's ratios are against: the one on the same storage."""
    return "reference s3" if label.endswith(" s3") else "reference"
