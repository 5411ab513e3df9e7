"""Many small blobs, each pushed monolithically, by 8 clients with one keep-alive connection each."""

from __future__ import annotations

import os
import threading
import time

from ..client import Connection, HTTPError, expect, location_target, with_query
from ..data import sha256
from .base import Bench, Metric, Step

REPOSITORY = "bench/small-blobs"

METRICS: list[Metric] = [
    ("small_blobs_post_per_s", "{n} x 4 KiB blobs, POST ?digest=, 8 clients", "blobs/s", "higher"),
    ("small_blobs_post_put_per_s", "{n} x 4 KiB blobs, POST+PUT, 8 clients", "blobs/s", "higher"),
]


def push_one(c: Connection, data: bytes, digest: str, single_post: bool) -> None:
    """One blob: in a single ``POST ?digest=``, or a POST then a ``PUT ?digest=`` with the body."""
    headers = [("Content-Type", "application/octet-stream")]
    if single_post:
        status, h, body = c.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/?digest={digest}", headers, body=data)
        expect(status, 201, "POST ?digest=", h, body)
        return
    status, h, body = c.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/")
    expect(status, 202, "POST upload", h, body)
    target = with_query(location_target(h), digest=digest)
    status, h, body = c.request("PUT", target, headers, body=data)
    expect(status, 201, "PUT ?digest=", h, body)


def push_all(bench: Bench, blobs, single_post: bool) -> float:
    """``blobs`` pushed by the clients together, within 300 s: blobs per second."""
    clients = bench.sizes.small_clients
    barrier = threading.Barrier(clients + 1, timeout=60)
    errors: list[str] = []
    deadline = [0.0]

    def client(index):
        try:
            with bench.conn(timeout=30) as c:
                c.connect()
                barrier.wait()
                for data, digest in blobs[index::clients]:
                    if time.monotonic() > deadline[0]:
                        raise HTTPError("time limit reached")
                    push_one(c, data, digest, single_post)
        except Exception as e:  # noqa: BLE001 - whatever stops a client thread is reported by the main thread
            errors.append(f"{type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + 300
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(max(1.0, deadline[0] - time.monotonic() + 5))
    elapsed = time.perf_counter() - t0
    if errors or any(t.is_alive() for t in threads):
        raise HTTPError(errors[0] if errors else "small blob pushes did not finish")
    return len(blobs) / elapsed


def run(bench: Bench) -> None:
    d = bench.data
    # Does this registry take a blob in a single POST ?digest= (the spec's
    # optional monolithic POST)?  Distribution 2.8 answers 202 and opens a
    # session instead.
    probe = os.urandom(bench.sizes.small_blob_size)
    with bench.conn() as c:
        status, _, _ = c.request(
            "POST",
            f"/v2/bench/probe/blobs/uploads/?digest={sha256(probe)}",
            [("Content-Type", "application/octet-stream")],
            body=probe,
        )
    if status == 201:
        bench.results["small_blobs_post_per_s"] = round(push_all(bench, d.small_blobs_post, True), 1)
    else:
        bench.notes["small_blobs_post_per_s"] = f"single POST ?digest= not supported (HTTP {status})"
    bench.results["small_blobs_post_put_per_s"] = round(push_all(bench, d.small_blobs_post_put, False), 1)


STEPS: list[Step] = [("small_blobs", run)]
