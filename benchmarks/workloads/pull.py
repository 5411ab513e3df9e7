"""The big blob (pushed by the push family) pulled by 1 and by 4 concurrent clients."""

from __future__ import annotations

import statistics
import threading
import time

from ..client import HTTPError, expect
from ..common import MB
from .base import Bench, Metric, Step

METRICS: list[Metric] = [
    ("pull_c1_MBps", "pull {big}, 1 client", "MB/s", "higher"),
    ("pull_c4_MBps", "pull {big}, 4 clients (aggregate)", "MB/s", "higher"),
]


def pull_once(bench: Bench, clients: int) -> float:
    d = bench.data
    target = f"/v2/bench/big/blobs/{d.big_digest}"
    barrier = threading.Barrier(clients + 1, timeout=60)
    errors: list[str] = []
    done = [0] * clients

    def client(index):
        try:
            with bench.conn() as c:
                c.connect()
                barrier.wait()
                status, h, count = c.request("GET", target, discard=True)
                expect(status, 200, "GET blob", h)
                if count != bench.sizes.big_blob:
                    raise HTTPError(f"got {count} bytes of {bench.sizes.big_blob}")
                done[index] = count
        except Exception as e:  # noqa: BLE001 - whatever stops a client thread is reported by the main thread
            errors.append(f"{type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(300)
    elapsed = time.perf_counter() - t0
    if errors or any(t.is_alive() for t in threads):
        raise HTTPError(errors[0] if errors else "a pull did not finish within 300s")
    return sum(done) / MB / elapsed


def run(bench: Bench) -> None:
    for clients in (1, 4):
        key = f"pull_c{clients}_MBps"
        figures = bench.repeat(key, bench.sizes.pull_reps, lambda clients=clients: pull_once(bench, clients))
        bench.results[key] = round(statistics.median(figures), 1)
        bench.notes[key] = "runs: " + ", ".join(f"{v:.1f}" for v in figures)


STEPS: list[Step] = [("pull", run)]
