"""
Scheduled garbage collection runs inside a serving process: it must not
stall the reactor.  A registry with ``gc_interval`` set collects over a
store of 20,000 blobs (written straight to disk: it is only the
collection's input) while a client GETs a manifest at a steady pace; each
request's latency counts from when it was due, so a stalled reactor shows
in every request it delays.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time

import pytest

from image_builder import MEDIA_TYPE_OCI_MANIFEST
from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only

BLOBS = 20_000
OLD = 500  # unreferenced and old: the first run deletes them
LAYERS_PER_MANIFEST = 100
PERIOD = 0.01  # seconds between two requests' due times
MAX_SAMPLES = 4000  # 40 s at most
P99_LIMIT = 0.020
SERIES = []


def _write(path: str, data: bytes, mtime: float | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _blob(root: str, data: bytes, mtime: float | None = None) -> str:
    hex_ = hashlib.sha256(data).hexdigest()
    _write(os.path.join(root, "blobs", "sha256", hex_[:2], hex_, "data"), data, mtime)
    return f"sha256:{hex_}"


def build_store(root: str) -> tuple[str, bytes]:
    """
    20,000 blobs in 10 repositories: half referenced by 100 manifests, the
    rest unreferenced, young but for OLD of them (collected).  Returns a
    tagged manifest to GET and its bytes.
    """
    old = time.time() - 3 * 24 * 3600
    digests = []
    for i in range(BLOBS):
        digest = _blob(root, b"blob %d" % i, mtime=old if i >= BLOBS - OLD else None)
        digests.append(digest)
        repo = f"lat/app{i % 10}"
        alg, hex_ = digest.split(":")
        _write(os.path.join(root, "repositories", repo, "_layers", alg, hex_, "link"), digest.encode(), old)
    config = b"{}"
    config_digest = _blob(root, config)
    first = None
    for m in range(BLOBS // 2 // LAYERS_PER_MANIFEST):
        layers = digests[m * LAYERS_PER_MANIFEST : (m + 1) * LAYERS_PER_MANIFEST]
        doc = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 8} for d in layers],
        }
        data = json.dumps(doc).encode()
        digest = _blob(root, data)
        repo = f"lat/app{m % 10}"
        hex_ = digest.split(":")[1]
        manifests = os.path.join(root, "repositories", repo, "_manifests")
        _write(os.path.join(manifests, "revisions", "sha256", hex_, "link"), MEDIA_TYPE_OCI_MANIFEST.encode())
        _write(os.path.join(manifests, "tags", f"t{m}", "current", "link"), digest.encode())
        if first is None:
            first = (f"/v2/{repo}/manifests/t{m}", data)
    return first


def completed_runs(log: str) -> int:
    return len(re.findall(r"garbage collection: \d+ blobs", log))


def sample_during_runs(registry, path: str, manifest: bytes, runs: int) -> list[float]:
    """
    Latencies of manifest GETs due every PERIOD seconds, counted from when
    each was due, until ``runs`` more collections have completed (at most
    MAX_SAMPLES requests).
    """
    target = completed_runs(registry.log()) + runs
    connection = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=10)
    latencies = []
    start = time.monotonic()
    try:
        while len(latencies) < MAX_SAMPLES:
            due = start + len(latencies) * PERIOD
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            connection.request("GET", path, headers={"Accept": MEDIA_TYPE_OCI_MANIFEST})
            response = connection.getresponse()
            body = response.read()
            latencies.append(time.monotonic() - due)
            assert response.status == 200 and body == manifest
            if len(latencies) % 50 == 0 and completed_runs(registry.log()) >= target:
                return latencies
    finally:
        connection.close()
    raise AssertionError(f"fewer than {runs} collections completed in {len(latencies)} requests")


def p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(len(latencies) * 0.99)]


def test_scheduled_gc_keeps_manifest_gets_fast(tmp_path):
    data_dir = str(tmp_path / "data")
    path, manifest = build_store(data_dir)
    config = str(tmp_path / "config.yaml")
    with open(config, "w") as f:
        json.dump({"gc_interval": "1s", "access_log": False}, f)
    registry = RegistryProcess(data_dir, config=config).start(timeout=60)
    try:
        deadline = time.monotonic() + 90
        while completed_runs(registry.log()) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        log = registry.log()
        assert completed_runs(log) > 0, log[-3000:]
        # The first run collected the old blobs: the store was real work.
        assert re.findall(r"garbage collection: (\d+) blobs", log)[0] == str(OLD), log[-2000:]
        # Other tests share the machine: a window spoilt by them is measured
        # again (three at most).  A reactor stalled by the collection spoils
        # every window.
        measured = []
        for _ in range(3):
            latencies = sample_during_runs(registry, path, manifest, runs=2)
            assert len(latencies) >= 100
            measured.append((p99(latencies), max(latencies), len(latencies)))
            if measured[-1][0] < P99_LIMIT:
                break
    finally:
        registry.stop()
    best = min(measured)
    assert best[0] < P99_LIMIT, "p99, max, requests per window: " + "; ".join(
        f"{p * 1000:.1f} ms, {m * 1000:.0f} ms, {n}" for p, m, n in measured
    )
