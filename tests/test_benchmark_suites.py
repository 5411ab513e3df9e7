"""
The benchmark's scale, mixed and cold-pull suites run to the end at small
sizes and report their figures (the figures themselves are in
docs/benchmarks.md; speed is never asserted here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ociregistry_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--tmpdir", str(tmp_path), "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_scale_reports_each_figure_at_each_size_and_its_growth(tmp_path):
    report = bench(tmp_path, "--suite", "scale", "--sizes", "30,120", "--no-reference")
    results = report["runs"]["ociregistry w1"]["results"]
    for figure in ("catalog_first", "catalog_middle", "tags_first", "tags_middle", "manifest_get"):
        assert results[f"scale_{figure}_ms_30"] > 0
        assert results[f"scale_{figure}_ms_120"] > 0
        assert results[f"scale_{figure}_growth_30_120"] == pytest.approx(
            results[f"scale_{figure}_ms_120"] / results[f"scale_{figure}_ms_30"], rel=0.05, abs=0.02
        )
    notes = report["runs"]["ociregistry w1"]["notes"]
    assert notes["populate 120"].startswith("90 repositories in ")
    assert not [k for k in notes if k.startswith("scale_")], notes


def test_mixed_reports_latency_and_throughput_at_each_concurrency(tmp_path):
    report = bench(tmp_path, "--suite", "mixed", "--duration", "0.2", "--no-reference")
    run = report["runs"]["ociregistry w1"]
    for name in ("push_1mb", "push_streamed_1mb", "pull_1mb", "push_mix", "pull_mix", "mix_75_25"):
        for c in (1, 10, 100):
            assert 0 < run["results"][f"mixed_{name}_c{c}_p50_ms"] <= run["results"][f"mixed_{name}_c{c}_p99_ms"]
            assert run["results"][f"mixed_{name}_c{c}_MBps"] > 0
    assert not [k for k in run["notes"] if k.endswith("_errors")], run["notes"]


def test_cold_pull_through_two_workers_fetches_each_blob_once_and_counts_the_reference(tmp_path):
    report = bench(tmp_path, "--suite", "coldpull")
    ours = report["runs"]["ociregistry w1"]["results"]
    assert ours["coldpull_upstream_blob_gets"] == 4  # config and 3 layers
    assert ours["coldpull_upstream_gets_per_blob_max"] == 1
    reference = report["runs"]["reference"]
    assert reference["results"].get("coldpull_upstream_blob_gets", 0) >= 4 or "unavailable" in reference
