"""One big blob pushed monolithically (POST, then PUT with the body) and in PATCH chunks."""

from __future__ import annotations

import os
import statistics
import time

from ..client import expect, location_target, with_query
from ..common import MB
from .base import Bench, Metric, Step

METRICS: list[Metric] = [
    ("push_monolithic_MBps", "push {big} monolithic (POST+PUT)", "MB/s", "higher"),
    ("push_chunked_MBps", "push {big} in {chunk} PATCH chunks", "MB/s", "higher"),
]


def push_monolithic(bench: Bench, repo: str) -> float:
    d = bench.data
    size = bench.sizes.big_blob
    with bench.conn() as c, open(d.big_path, "rb") as f:
        t0 = time.perf_counter()
        status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
        expect(status, 202, "POST upload", h, body)
        target = with_query(location_target(h), digest=d.big_digest)
        status, h, body = c.request(
            "PUT", target, [("Content-Type", "application/octet-stream")], file_parts=[(f, 0, size)]
        )
        expect(status, 201, "PUT monolithic", h, body)
        return size / MB / (time.perf_counter() - t0)


def push_chunked(bench: Bench, repo: str) -> float:
    d = bench.data
    size, chunk = bench.sizes.big_blob, bench.sizes.chunk
    with bench.conn() as c, open(d.big_path, "rb") as f:
        t0 = time.perf_counter()
        status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
        expect(status, 202, "POST upload", h, body)
        target = location_target(h)
        for start in range(0, size, chunk):
            count = min(chunk, size - start)
            status, h, body = c.request(
                "PATCH",
                target,
                [("Content-Type", "application/octet-stream"), ("Content-Range", f"{start}-{start + count - 1}")],
                file_parts=[(f, start, count)],
            )
            expect(status, 202, f"PATCH {start}", h, body)
            target = location_target(h)
        status, h, body = c.request("PUT", with_query(target, digest=d.big_digest))
        expect(status, 201, "PUT finish", h, body)
        return size / MB / (time.perf_counter() - t0)


def run(bench: Bench) -> None:
    for key, function in (("push_chunked_MBps", push_chunked), ("push_monolithic_MBps", push_monolithic)):

        def push(function=function):
            os.sync()  # start each push with no dirty pages from the one before
            return function(bench, "bench/big")

        figures = bench.repeat(key, bench.sizes.push_reps, push)
        bench.results[key] = round(statistics.median(figures), 1)
        bench.notes[key] = "runs: " + ", ".join(f"{v:.1f}" for v in figures)


STEPS: list[Step] = [("push", run)]
