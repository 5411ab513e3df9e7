"""
A huge blob pushed in one PATCH, and manifest GET latency (sampled at a
steady rate) with the registry idle and while that push runs.
"""

from __future__ import annotations

import os
import threading
import time

from ..client import CLIENT_ERRORS, expect, location_target, with_query
from ..common import MB
from ..data import ACCEPT_MANIFESTS
from ..load import percentile
from .base import Bench, Metric, Step
from .request_rates import REPOSITORY, require_small_image

METRICS: list[Metric] = [
    ("push_huge_MBps", "push {huge} in one PATCH", "MB/s", "higher"),
    ("manifest_get_idle_p99_ms", "manifest GET p99, idle (50/s)", "ms", "lower"),
    ("manifest_get_during_push_p99_ms", "manifest GET p99 during {huge} push", "ms", "lower"),
    ("manifest_get_during_push_max_ms", "manifest GET max during {huge} push", "ms", "lower"),
]


def sample_manifest_gets(bench: Bench, stop: threading.Event, seconds: float, out: list, errors: list) -> None:
    """Manifest GETs at ``sample_rate`` per second for ``seconds`` (or until ``stop``): their latencies in ms."""
    rate = bench.sizes.sample_rate
    interval = 1.0 / rate
    target = f"/v2/{REPOSITORY}/manifests/latest"
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    for _ in range(int(seconds * rate) + 1):
        if stop.is_set() or time.monotonic() > end:
            return
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        next_at += interval
        t0 = time.perf_counter()
        try:
            with bench.conn(timeout=30) as c:  # a fresh connection: any worker may get it
                status, _, _ = c.request("GET", target, [("Accept", ACCEPT_MANIFESTS)])
            if status != 200:
                errors.append(f"HTTP {status}")
                continue
        except CLIENT_ERRORS as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        out.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > next_at + 1:  # far behind: do not burst to catch up
            next_at = time.monotonic()


def push_huge(bench: Bench, while_pushing) -> float:
    """The huge blob in one PATCH (the big file sent ``huge_repeats`` times), calling ``while_pushing()`` first."""
    s, d = bench.sizes, bench.data
    size = s.huge_blob
    with bench.conn(timeout=300) as c, open(d.big_path, "rb") as f:
        status, h, body = c.request("POST", "/v2/bench/huge/blobs/uploads/")
        expect(status, 202, "POST upload", h, body)
        target = location_target(h)
        while_pushing()
        t0 = time.perf_counter()
        status, h, body = c.request(
            "PATCH",
            target,
            [("Content-Type", "application/octet-stream"), ("Content-Range", f"0-{size - 1}")],
            file_parts=[(f, 0, s.big_blob)] * s.huge_repeats,
        )
        expect(status, 202, "PATCH 1 GiB", h, body)
        status, h, body = c.request("PUT", with_query(location_target(h), digest=d.huge_digest))
        expect(status, 201, "PUT finish", h, body)
        return time.perf_counter() - t0


def run(bench: Bench) -> None:
    require_small_image(bench)
    # Latency with the registry idle, for comparison.
    idle, idle_errors = [], []
    sample_manifest_gets(bench, threading.Event(), bench.sizes.idle_sample_seconds, idle, idle_errors)
    if idle:
        bench.results["manifest_get_idle_p99_ms"] = round(percentile(idle, 99), 2)

    os.sync()
    stop = threading.Event()
    samples, errors = [], []
    sampler = threading.Thread(target=sample_manifest_gets, args=(bench, stop, 600.0, samples, errors), daemon=True)
    try:
        elapsed = push_huge(bench, sampler.start)
    finally:
        stop.set()
        if sampler.ident is not None:
            sampler.join(60)
    bench.results["push_huge_MBps"] = round(bench.sizes.huge_blob / MB / elapsed, 1)
    if samples:
        bench.results["manifest_get_during_push_p99_ms"] = round(percentile(samples, 99), 2)
        bench.results["manifest_get_during_push_max_ms"] = round(max(samples), 2)
    bench.notes["manifest_get_during_push_p99_ms"] = f"{len(samples)} GETs in {elapsed:.1f}s" + (
        f", {len(errors)} failed: {errors[0]}" if errors else ""
    )


STEPS: list[Step] = [("huge_push", run)]
