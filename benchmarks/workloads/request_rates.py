"""
A small image pushed, then the rates of small requests on it: manifest GET
by tag (with wrk) and blob HEAD (with the epoll closed loop), at c=1/16/64.
"""

from __future__ import annotations

from ..client import HTTPError, expect, location_target, with_query
from ..common import Unavailable
from ..data import ACCEPT_MANIFESTS, OCI_MANIFEST
from ..load import closed_loop, run_wrk
from .base import Bench, Metric, Step

REPOSITORY = "bench/small"
CONCURRENCIES = (1, 16, 64)

METRICS: list[Metric] = [
    *[(f"manifest_get_c{c}_rps", f"manifest GET by tag (wrk), c={c}", "req/s", "higher") for c in CONCURRENCIES],
    *[(f"manifest_get_c{c}_p99_ms", f"manifest GET by tag (wrk), c={c}, p99", "ms", "lower") for c in CONCURRENCIES],
    *[(f"blob_head_c{c}_rps", f"blob HEAD (4 KiB blob), c={c}", "req/s", "higher") for c in CONCURRENCIES],
    *[(f"blob_head_c{c}_p99_ms", f"blob HEAD (4 KiB blob), c={c}, p99", "ms", "lower") for c in CONCURRENCIES],
]


def require_small_image(bench: Bench) -> None:
    """For the steps that read the small image (this family's and the huge push's)."""
    if "small_image" in bench.notes:
        raise Unavailable("the small image could not be pushed")


def push_small_image(bench: Bench) -> None:
    d = bench.data
    with bench.conn() as c:
        for blob, digest in ((d.small_config, d.small_config_digest), (d.small_layer, d.small_layer_digest)):
            status, h, body = c.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/")
            expect(status, 202, "POST upload", h, body)
            status, h, body = c.request(
                "PUT",
                with_query(location_target(h), digest=digest),
                [("Content-Type", "application/octet-stream")],
                body=blob,
            )
            expect(status, 201, "PUT blob", h, body)
        status, h, body = c.request(
            "PUT", f"/v2/{REPOSITORY}/manifests/latest", [("Content-Type", OCI_MANIFEST)], body=d.small_manifest
        )
        expect(status, 201, "PUT manifest", h, body)
        status, h, body = c.request("GET", f"/v2/{REPOSITORY}/manifests/latest", [("Accept", ACCEPT_MANIFESTS)])
        expect(status, 200, "GET manifest", h, body)
        if body != d.small_manifest:
            raise HTTPError("GET manifest returned other bytes than were pushed")
        status, h, _ = c.request("HEAD", f"/v2/{REPOSITORY}/blobs/{d.small_layer_digest}")
        expect(status, 200, "HEAD blob", h)
        if h.get("content-length") != str(len(d.small_layer)):
            raise HTTPError(f"HEAD blob Content-Length {h.get('content-length')}")


def measure_rates(bench: Bench) -> None:
    require_small_image(bench)
    port, seconds = bench.r.port, bench.sizes.wrk_seconds
    head_request = (
        f"HEAD /v2/{REPOSITORY}/blobs/{bench.data.small_layer_digest} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    ).encode()

    def manifest_get(connections):
        return run_wrk(
            f"http://127.0.0.1:{port}/v2/{REPOSITORY}/manifests/latest", connections, seconds, ACCEPT_MANIFESTS
        )

    def blob_head(connections):
        return closed_loop("127.0.0.1", port, head_request, connections, seconds, head=True)

    for name, function in (("manifest_get", manifest_get), ("blob_head", blob_head)):
        for connections in bench.sizes.concurrencies:
            key = f"{name}_c{connections}"
            try:
                figures = function(connections)
            except Exception as e:  # noqa: BLE001 - one concurrency that fails is noted, the others still run
                bench.notes[key] = f"{type(e).__name__}: {e}"
                continue
            record(bench, key, figures)


def record(bench: Bench, key: str, figures: dict) -> None:
    """A load run's rate and p99; a run with errors keeps its rate only if they were under 1%."""
    bad = figures["non_2xx"] + figures["socket_errors"]
    bench.results[f"{key}_rps"] = figures["rps"] if bad == 0 or figures["requests"] > 100 * bad else None
    bench.results[f"{key}_p99_ms"] = figures["p99_ms"]
    bench.notes[key] = f"{figures['requests']} requests"
    if bad:
        bench.notes[key] += f", {figures['non_2xx']} non-2xx, {figures['socket_errors']} socket errors"


STEPS: list[Step] = [("small_image", push_small_image), ("wrk", measure_rates)]
