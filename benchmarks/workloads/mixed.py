"""
Mixed: the workloads of Zot's ``zb`` benchmark (``--suite mixed``; not part
of the standard comparison), each at concurrency 1, 10 and 100 for
``mixed_seconds`` (a client starts no operation after that; the
throughput's time runs until the last one ends): monolithic pushes of 1, 10
and 100 MB blobs (POST, then PUT with the body), each into a new
repository; a chunked streamed push of 10 MB (POST, one PATCH whose body is
sent in ``Transfer-Encoding: chunked``, 1 MiB a chunk, then PUT ?digest=);
pulls of an image (manifest, config, then its one layer of 1, 10 or 100
MB); the 20/70/10 mix of those sizes (20 % 1 MB, 70 % 10 MB, 10 % 100 MB)
for pushes and for pulls; and 75 % pulls / 25 % pushes of that mix.  Each
client has one keep-alive connection.  The figures: the p50 and p99 latency
of one operation and the throughput in MB/s.  The blobs are prefixes of the
run's random big blob, so that a push stores nothing new after the first:
what is measured is the transfer and its checks, not the disk's space.  A
push at a concurrency whose bytes in flight would exceed
``mixed_in_flight_max`` is n/a.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import threading
import time

from ..client import CLIENT_ERRORS, Connection, HTTPError, expect, location_target, with_query
from ..common import MB, MiB, log
from ..data import ACCEPT_MANIFESTS, OCI_LAYER_GZIP, OCI_MANIFEST, image_config, image_manifest, sha256
from .base import Bench, Metric, Step

MIX = ((0.2, MB), (0.7, 10 * MB), (0.1, 100 * MB))  # zb's mixed blob sizes
PULL_SHARE = 0.75
STREAM_PIECE = MiB


def mb(n: int) -> str:
    return f"{n // MB} MB"


def workloads(sizes) -> list[tuple[str, str]]:
    """(name, label) of each workload, for the blob sizes of this run."""
    out = [(f"push_{n // MB}mb", f"push {mb(n)} monolithic, new repo") for n in sizes.mixed_blob_sizes]
    streamed = 10 * MB if 10 * MB in sizes.mixed_blob_sizes else sizes.mixed_blob_sizes[-1]
    out.append((f"push_streamed_{streamed // MB}mb", f"push {mb(streamed)} chunked streamed"))
    out += [(f"pull_{n // MB}mb", f"pull manifest+config+{mb(n)} layer") for n in sizes.mixed_blob_sizes]
    out += [
        ("push_mix", "push 20/70/10 mix of 1/10/100 MB"),
        ("pull_mix", "pull 20/70/10 mix of 1/10/100 MB"),
        ("mix_75_25", "75 % pull / 25 % push, 20/70/10 mix"),
    ]
    return out


def key(name: str, c: int, figure: str) -> str:
    return f"mixed_{name}_c{c}_{figure}"


def metrics_for(sizes) -> list[Metric]:
    rows: list[Metric] = []
    for name, label in workloads(sizes):
        for c in sizes.mixed_concurrencies:
            rows.append((key(name, c, "p50_ms"), f"{label}, c={c}: p50", "ms", "lower"))
            rows.append((key(name, c, "p99_ms"), f"{label}, c={c}: p99", "ms", "lower"))
            rows.append((key(name, c, "MBps"), f"{label}, c={c}: throughput", "MB/s", "higher"))
    return rows


class Blobs:
    """The blobs (prefixes of the big blob file) and, for pulls, an image per size in ``mixed/pull-<MB>``."""

    def __init__(self, bench: Bench):
        self.path = bench.data.big_path
        self.sizes = list(bench.sizes.mixed_blob_sizes)
        self.digest = {}
        with open(self.path, "rb") as f:
            for n in self.sizes:
                f.seek(0)
                hasher = hashlib.sha256()
                left = n
                while left:
                    block = f.read(min(4 * MiB, left))
                    hasher.update(block)
                    left -= len(block)
                self.digest[n] = "sha256:" + hasher.hexdigest()
        self.config = image_config(["sha256:" + "0" * 64])
        self.config_digest = sha256(self.config)


def push_blob(c: Connection, f, blobs: Blobs, repo: str, size: int) -> int:
    status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect(status, 202, "POST upload", h, body)
    target = with_query(location_target(h), digest=blobs.digest[size])
    status, h, body = c.request(
        "PUT", target, [("Content-Type", "application/octet-stream")], file_parts=[(f, 0, size)]
    )
    expect(status, 201, "PUT monolithic", h, body)
    return size


def push_streamed(c: Connection, f, blobs: Blobs, repo: str, size: int) -> int:
    status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect(status, 202, "POST upload", h, body)
    status, h, body = c.request_chunked(
        "PATCH", location_target(h), [("Content-Type", "application/octet-stream")], f, 0, size, STREAM_PIECE
    )
    expect(status, 202, "PATCH streamed", h, body)
    status, h, body = c.request("PUT", with_query(location_target(h), digest=blobs.digest[size]))
    expect(status, 201, "PUT finish", h, body)
    return size


def pull_image(c: Connection, blobs: Blobs, size: int) -> int:
    repo = f"mixed/pull-{size // MB}"
    status, h, manifest = c.request("GET", f"/v2/{repo}/manifests/latest", [("Accept", ACCEPT_MANIFESTS)])
    expect(status, 200, "GET manifest", h, manifest)
    status, h, config = c.request("GET", f"/v2/{repo}/blobs/{blobs.config_digest}")
    expect(status, 200, "GET config", h, config)
    status, h, count = c.request("GET", f"/v2/{repo}/blobs/{blobs.digest[size]}", discard=True)
    expect(status, 200, "GET layer", h)
    if count != size:
        raise HTTPError(f"GET layer: {count} bytes, wanted {size}")
    return len(manifest) + len(config) + count


def push_images(bench: Bench) -> None:
    """The images the pulls get: one per blob size, its layer pushed once."""
    blobs = Blobs(bench)
    bench.mixed_blobs = blobs  # type: ignore[attr-defined]
    with bench.conn() as c, open(blobs.path, "rb") as f:
        for size in blobs.sizes:
            repo = f"mixed/pull-{size // MB}"
            push_blob(c, f, blobs, repo, size)
            status, h, body = c.request(
                "POST",
                with_query(f"/v2/{repo}/blobs/uploads/", digest=blobs.config_digest),
                [("Content-Type", "application/octet-stream")],
                body=blobs.config,
            )
            if status == 202:  # the reference opens a session instead of taking the single POST
                target = with_query(location_target(h), digest=blobs.config_digest)
                status, h, body = c.request(
                    "PUT", target, [("Content-Type", "application/octet-stream")], body=blobs.config
                )
            expect(status, 201, "push config", h, body)
            layer = {"mediaType": OCI_LAYER_GZIP, "digest": blobs.digest[size], "size": size}
            manifest = image_manifest(blobs.config_digest, len(blobs.config), [layer])
            status, h, body = c.request(
                "PUT", f"/v2/{repo}/manifests/latest", [("Content-Type", OCI_MANIFEST)], body=manifest
            )
            expect(status, 201, "PUT manifest", h, body)


def operation(name: str, blobs: Blobs):
    """``op(connection, file, rng, serial) -> bytes moved`` for the workload ``name``."""

    def mixed_size(rng: random.Random) -> int:
        x, acc = rng.random(), 0.0
        for share, size in MIX:
            acc += share
            if x < acc and size in blobs.digest:
                return size
        return blobs.sizes[-1]

    def repo(serial: str) -> str:
        return f"mixed/push-{serial}"

    if name.startswith("push_streamed_"):
        size = int(name.rsplit("_", 1)[1][:-2]) * MB
        return lambda c, f, rng, serial: push_streamed(c, f, blobs, repo(serial), size)
    if name.startswith("push_") and name != "push_mix":
        size = int(name.split("_")[1][:-2]) * MB
        return lambda c, f, rng, serial: push_blob(c, f, blobs, repo(serial), size)
    if name.startswith("pull_") and name != "pull_mix":
        size = int(name.split("_")[1][:-2]) * MB
        return lambda c, f, rng, serial: pull_image(c, blobs, size)
    if name == "push_mix":
        return lambda c, f, rng, serial: push_blob(c, f, blobs, repo(serial), mixed_size(rng))
    if name == "pull_mix":
        return lambda c, f, rng, serial: pull_image(c, blobs, mixed_size(rng))

    def mix(c, f, rng, serial):
        if rng.random() < PULL_SHARE:
            return pull_image(c, blobs, mixed_size(rng))
        return push_blob(c, f, blobs, repo(serial), mixed_size(rng))

    return mix


def largest_push(name: str, blobs: Blobs) -> int:
    """The bytes one client of ``name`` pushes at once at most (0: it only pulls)."""
    if name.startswith("pull_"):
        return 0
    if name in ("push_mix", "mix_75_25"):
        # the mix's expected bytes in flight, per client
        return int(sum(share * size for share, size in MIX if size in blobs.digest))
    return int(name.rsplit("_", 1)[1][:-2]) * MB


def run_one(bench: Bench, name: str, concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients doing ``name`` for ``seconds``: latencies, bytes, errors."""
    blobs: Blobs = bench.mixed_blobs  # type: ignore[attr-defined]
    op = operation(name, blobs)
    latencies: list[float] = []
    moved = [0]
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    tag = f"{name}-c{concurrency}-{time.monotonic_ns()}"

    def client(index: int) -> None:
        rng = random.Random(f"{tag}-{index}")
        mine, count = [], 0
        with bench.conn(timeout=120) as c, open(blobs.path, "rb") as f:
            start.wait()
            deadline = time.monotonic() + seconds
            serial = 0
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    count += op(c, f, rng, f"{tag}-{index}-{serial}")
                except CLIENT_ERRORS as e:
                    c.close()
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    if len(errors) > 100:
                        return
                    continue
                finally:
                    serial += 1
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            moved[0] += count

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(max(1.0, t0 + seconds + 300 - time.monotonic()))
    wall = time.monotonic() - t0
    if any(t.is_alive() for t in threads):
        errors.append("clients still running 300 s after the end")
    return {"latencies": sorted(latencies), "bytes": moved[0], "wall": wall, "errors": errors}


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(bench: Bench) -> None:
    s = bench.sizes
    blobs: Blobs = bench.mixed_blobs  # type: ignore[attr-defined]
    for name, _label in workloads(s):
        for c in s.mixed_concurrencies:
            if largest_push(name, blobs) * c > s.mixed_in_flight_max:
                bench.notes[key(name, c, "MBps")] = f"not run: more than {s.mixed_in_flight_max // MB} MB in flight"
                continue
            out = run_one(bench, name, c, s.mixed_seconds)
            lat = out["latencies"]
            if out["errors"]:
                bench.notes[key(name, c, "errors")] = f"{len(out['errors'])} failed: {out['errors'][0][:200]}"
            if not lat:
                continue
            r = bench.results
            r[key(name, c, "p50_ms")] = round(statistics.median(lat) * 1000, 2)
            r[key(name, c, "p99_ms")] = round(percentile(lat, 99) * 1000, 2)
            r[key(name, c, "MBps")] = round(out["bytes"] / MB / out["wall"], 1)
            bench.notes[key(name, c, "ops")] = f"{len(lat)} operations in {out['wall']:.1f}s"
            log(
                f"{bench.r.label}: {name} c={c}: {len(lat)} ops, p50 {r[key(name, c, 'p50_ms')]} ms, "
                f"{r[key(name, c, 'MBps')]} MB/s"
            )


STEPS: list[Step] = [("mixed_setup", push_images), ("mixed", run)]
