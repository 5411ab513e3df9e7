"""
Cold pull through the pull-through cache (``--suite coldpull``; not part of
the standard comparison).  An upstream registry (ociregistry, one process,
its access log on: the count) gets one image of ``coldpull_layers`` random
layers of ``coldpull_layer_size``.  In front of it, the cache under test: in
the ociregistry run, ociregistry with ``--workers 2`` (or the run's worker
count, if larger) and ``--proxy up=<upstream>``; in the reference run,
Distribution in proxy mode (``proxy: {remoteurl: <upstream>}``, one
process: it has no workers).  Then ``coldpull_clients`` clients at once,
each on its own connection, pull the image through it (manifest by tag,
config, layers in order; every byte counted).  The figures: the time from
the start until the last client has its last byte, and the upstream's blob
GETs: in all, and of the blob fetched most often (the aim: exactly one per
blob).  Filesystem only; the test of replicas on S3 is
tests/test_proxy_claims.py.
"""

from __future__ import annotations

import os
import re
import threading
import time

from ..client import HTTPError, expect, location_target, with_query
from ..common import log
from ..data import ACCEPT_MANIFESTS, OCI_LAYER_GZIP, OCI_MANIFEST, image_config, image_manifest, sha256
from ..registries import Registry
from .base import Bench, Metric, Step

REPO = "team/app"

METRICS: list[Metric] = [
    ("coldpull_wall_s", "cold pull through the cache, {coldpull} at once: time to the last byte", "s", "lower"),
    ("coldpull_upstream_blob_gets", "  upstream blob GETs, in all ({coldpull_blobs} blobs)", "GETs", "lower"),
    ("coldpull_upstream_gets_per_blob_max", "  upstream GETs of the blob fetched most often", "GETs", "lower"),
    ("coldpull_upstream_manifest_gets", "  upstream manifest GETs", "GETs", "lower"),
]

_BLOB_GET = re.compile(r'"GET /v2/(\S+)/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d{3})')
_MANIFEST_GET = re.compile(r'"GET /v2/(\S+)/manifests/(\S+) HTTP/[\d.]+" (\d{3})')


def push(upstream: Registry, blobs: list[bytes], manifest: bytes) -> None:
    from ..client import Connection

    with Connection("127.0.0.1", upstream.port, timeout=120) as c:
        for blob in blobs:
            status, h, body = c.request("POST", f"/v2/{REPO}/blobs/uploads/")
            expect(status, 202, "POST upload", h, body)
            target = with_query(location_target(h), digest=sha256(blob))
            status, h, body = c.request("PUT", target, [("Content-Type", "application/octet-stream")], body=blob)
            expect(status, 201, "PUT blob", h, body)
        status, h, body = c.request("PUT", f"/v2/{REPO}/manifests/v1", [("Content-Type", OCI_MANIFEST)], body=manifest)
        expect(status, 201, "PUT manifest", h, body)


def cold_pull(bench: Bench) -> None:
    s = bench.sizes
    if bench.r.s3 is not None:
        bench.notes["coldpull"] = "filesystem only (replicas on S3: tests/test_proxy_claims.py)"
        return
    layers = [os.urandom(s.coldpull_layer_size) for _ in range(s.coldpull_layers)]
    config = image_config([sha256(layer) for layer in layers])
    descriptors = [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(x), "size": len(x)} for x in layers]
    manifest = image_manifest(sha256(config), len(config), descriptors)
    root = os.path.dirname(bench.r.dir)
    upstream = Registry("ociregistry", root, 1, python=bench.r.python, access_log=True)
    cache = None
    try:
        upstream.start()
        push(upstream, [config, *layers], manifest)
        if bench.r.kind == "reference":
            cache = Registry("reference", root, 1)
            cache.reference_config = f"proxy: {{remoteurl: '{upstream.url}'}}\n"
            prefix = REPO
        else:
            cache = Registry("ociregistry", root, max(2, bench.r.workers), python=bench.r.python)
            cache.extra_args += ["--proxy", f"up={upstream.url}"]
            prefix = f"up/{REPO}"
        cache.start()
        before = len(upstream.log())
        wall, errors = pull_all(cache.port, prefix, s.coldpull_clients, [config, *layers])
        time.sleep(0.5)  # the upstream writes a line when a response ends
        text = upstream.log()[before:]
    finally:
        for process in (cache, upstream):
            if process is not None:
                process.cleanup()
    if errors:
        raise HTTPError(f"{len(errors)} clients failed: {errors[0]}")
    gets: dict[str, int] = {}
    for _repo, digest, _status in _BLOB_GET.findall(text):
        gets[digest] = gets.get(digest, 0) + 1
    r = bench.results
    r["coldpull_wall_s"] = round(wall, 3)
    r["coldpull_upstream_blob_gets"] = sum(gets.values())
    r["coldpull_upstream_gets_per_blob_max"] = max(gets.values(), default=0)
    r["coldpull_upstream_manifest_gets"] = len(_MANIFEST_GET.findall(text))
    bench.notes["coldpull upstream GETs by blob"] = ", ".join(f"{d[7:19]}: {n}" for d, n in gets.items())
    log(f"{bench.r.label}: cold pull in {wall:.2f}s, upstream blob GETs {dict(gets)}")


def pull_all(port: int, repo: str, clients: int, blobs: list[bytes]) -> tuple[float, list[str]]:
    """``clients`` pulls of ``repo``:v1 at once: the time to the last byte and the errors."""
    from ..client import Connection

    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        try:
            with Connection("127.0.0.1", port, timeout=120) as c:
                c.connect()
                start.wait()
                status, h, body = c.request("GET", f"/v2/{repo}/manifests/v1", [("Accept", ACCEPT_MANIFESTS)])
                expect(status, 200, "GET manifest", h, body)
                for blob in blobs:
                    status, h, count = c.request("GET", f"/v2/{repo}/blobs/{sha256(blob)}", discard=True)
                    expect(status, 200, "GET blob", h)
                    if count != len(blob):
                        raise HTTPError(f"GET blob: {count} bytes, wanted {len(blob)}")
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait(60)
    t0 = time.monotonic()
    for t in threads:
        t.join(max(1.0, t0 + 300 - time.monotonic()))
    if any(t.is_alive() for t in threads):
        errors.append("clients still running after 300 s")
    return time.monotonic() - t0, errors


STEPS: list[Step] = [("coldpull", cold_pull)]
