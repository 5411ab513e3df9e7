"""
The workloads, in families: one module each, declaring

- ``STEPS``: ``(name, function)`` pairs, run in order on every registry;
  ``function(bench)`` gets a :class:`~benchmarks.workloads.base.Bench` (the
  registry, the test data, the sizes, bounded repetitions) and records its
  figures in ``bench.results`` (and remarks in ``bench.notes``); a step that
  raises is noted and the next one runs. The name is the CPU table's row.
- ``METRICS``: the table's rows for those figures, in order (key, label,
  unit, "higher" or "lower" is better).

``STANDARD`` is the comparison ``bench.py`` runs and docs/benchmarks.md
describes.  A new family (a scale run that populates N repositories and
times catalog pages and GC, a mixed workload) is a new module here; a
family that is not part of this comparison goes in a suite of its own
beside ``STANDARD``, so that the figures in the docs keep their meaning.
"""

from __future__ import annotations

from . import base, coldpull, huge_push, listing, mixed, pull, push, request_rates, scale, skopeo, small_blobs

STANDARD = (push, pull, request_rates, small_blobs, skopeo, huge_push)
# The figures a notification endpoint must not slow (docs/benchmarks.md, "With notifications").
PUSHES = (small_blobs, skopeo)
# The request rates, what metrics must not slow (docs/benchmarks.md, "With metrics").
RATES = (request_rates,)
SUITES = {
    "standard": STANDARD,
    "listing": (listing,),
    "pushes": PUSHES,
    "rates": RATES,
    "scale": (scale,),
    "mixed": (mixed,),
    "coldpull": (coldpull,),
}  # --suite


def steps(families=STANDARD) -> list[base.Step]:
    return [step for family in families for step in family.STEPS]


def metrics(families=STANDARD, sizes=None) -> list[base.Metric]:
    """
    The table's rows: the families' in order (``METRICS``, or for a family
    whose rows depend on the sizes, ``metrics_for(sizes)``), then what every
    round measures (peak RSS).
    """
    rows = []
    for family in families:
        rows += family.metrics_for(sizes) if hasattr(family, "metrics_for") else family.METRICS
    return rows + base.METRICS
