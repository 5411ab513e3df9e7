"""
Listing: the catalog and a tag list, paged with ``n=100``, over a store
populated through the API (``--suite listing``; not part of the standard
comparison).  ``listing_repositories`` repositories (default 1,000) each get
the small image, mounted from a seed repository, under 3 tags, by 8 clients;
one more repository gets ``listing_tags`` tags (default 2,000).  Then, each
request ``listing_reps`` times on one keep-alive connection and the median
reported: the catalog's first page, a page from the middle (``last`` =
the middle repository), a tag list page from the middle, and a walk of the
whole catalog through its ``Link`` headers.  The registry's access log is
off, as for every workload.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.parse

from ..client import Connection, HTTPError, expect, location_target, with_query
from ..data import OCI_MANIFEST
from .base import Bench, Metric, Step

SEED = "bench/listing-seed"
TAGGED = "bench/listing-tags"
CLIENTS = 8
PAGE = 100

METRICS: list[Metric] = [
    ("catalog_first_page_ms", "catalog first page (n=100), {listing_repositories} repos x 3 tags", "ms", "lower"),
    ("catalog_middle_page_ms", "catalog middle page (n=100, last=the middle repo)", "ms", "lower"),
    ("catalog_walk_ms", "catalog: every page through Link (n=100)", "ms", "lower"),
    ("tags_middle_page_ms", "tags list middle page (n=100), {listing_tags} tags", "ms", "lower"),
]


def repository(i: int) -> str:
    return f"bench/listing/repo{i:05d}"


def push_seed(bench: Bench) -> None:
    push_seed_into(bench, SEED)


def push_seed_into(bench: Bench, seed: str) -> None:
    """The small image into ``seed``, tagged latest: the repository the others mount its blobs from."""
    d = bench.data
    with bench.conn() as c:
        for blob, digest in ((d.small_config, d.small_config_digest), (d.small_layer, d.small_layer_digest)):
            status, h, body = c.request("POST", f"/v2/{seed}/blobs/uploads/")
            expect(status, 202, "POST upload", h, body)
            target = with_query(location_target(h), digest=digest)
            status, h, body = c.request("PUT", target, [("Content-Type", "application/octet-stream")], body=blob)
            expect(status, 201, "PUT blob", h, body)
        put_manifest(c, seed, "latest", d.small_manifest)


def put_manifest(c: Connection, name: str, tag: str, manifest: bytes) -> None:
    status, h, body = c.request("PUT", f"/v2/{name}/manifests/{tag}", [("Content-Type", OCI_MANIFEST)], body=manifest)
    expect(status, 201, "PUT manifest", h, body)


def fill(
    bench: Bench, one, count: int, what: str, start: int = 0, budget: float = 600.0, clients: int = CLIENTS
) -> None:
    """``one(connection, i)`` for ``start <= i < count``, by ``clients`` clients, within ``budget`` seconds."""
    errors: list[str] = []
    deadline = time.monotonic() + budget

    def client(index: int) -> None:
        try:
            with bench.conn(timeout=60) as c:
                for i in range(start + index, count, clients):
                    if errors:
                        return
                    if time.monotonic() > deadline:
                        raise HTTPError(f"{what}: time limit of {budget:.0f}s reached at {i}")
                    one(c, i)
        except Exception as e:  # noqa: BLE001 - whatever stops a client thread is reported by the main thread
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 10))
    if errors or any(t.is_alive() for t in threads):
        raise HTTPError(errors[0] if errors else f"{what} did not finish")


def populate(bench: Bench) -> None:
    d = bench.data
    push_seed(bench)

    def one_repository(c: Connection, i: int) -> None:
        name = repository(i)
        for digest in (d.small_config_digest, d.small_layer_digest):
            status, h, body = c.request("POST", f"/v2/{name}/blobs/uploads/?mount={digest}&from={SEED}")
            expect(status, 201, "mount", h, body)
        for tag in ("v1", "v2", "latest"):
            put_manifest(c, name, tag, d.small_manifest)

    def one_tag(c: Connection, i: int) -> None:
        put_manifest(c, TAGGED, f"build-{i:06d}", d.small_manifest)

    fill(bench, one_repository, bench.sizes.listing_repositories, "populating repositories")
    for digest in (d.small_config_digest, d.small_layer_digest):
        with bench.conn() as c:
            status, h, body = c.request("POST", f"/v2/{TAGGED}/blobs/uploads/?mount={digest}&from={SEED}")
            expect(status, 201, "mount", h, body)
    fill(bench, one_tag, bench.sizes.listing_tags, "populating tags")


def timed_gets(bench: Bench, target: str, check) -> float:
    """Milliseconds for a GET of ``target``: the median of ``listing_reps``, after one to warm up."""
    return timed_gets_n(bench, target, check, bench.sizes.listing_reps)


def timed_gets_n(bench: Bench, target: str, check, reps: int, headers=()) -> float:
    """Milliseconds for a GET of ``target``: the median of ``reps``, after one to warm up (and ``check``ed)."""
    figures = []
    with bench.conn() as c:
        for i in range(reps + 1):
            t0 = time.perf_counter()
            status, h, body = c.request("GET", target, headers)
            elapsed = time.perf_counter() - t0
            expect(status, 200, f"GET {target}", h, body)
            if i == 0:
                check(h, body)
            else:
                figures.append(elapsed * 1000)
    return statistics.median(figures)


def page_check(key: str, expected: list[str], ours_prefix=("bench/listing/", "build-")):
    """
    The page holds ``expected`` (of the names the workload pushed: the
    reference sorts "/" before "-", so the seed repositories fall elsewhere
    in its pages), and a Link when the page is full.
    """

    def check(headers, body) -> None:
        got = json.loads(body)[key]
        ours = [g for g in got if g.startswith(ours_prefix)]
        if ours != expected[: len(ours)] or len(ours) < min(len(expected), PAGE - 2):
            raise HTTPError(f"{key}: got {got[:3]}... ({len(got)}), wanted {expected[:3]}... ({len(expected)})")
        if len(got) == PAGE and "link" not in headers:
            raise HTTPError(f"{key}: a full page without a Link header")

    return check


def walk(c: Connection, target: str, limit: int) -> int:
    """Entries of every page from ``target`` on, following the Link headers."""
    seen = 0
    for _ in range(limit):
        status, h, body = c.request("GET", target)
        expect(status, 200, f"GET {target}", h, body)
        seen += len(json.loads(body)["repositories"])
        link = h.get("link")
        if not link:
            return seen
        parsed = urllib.parse.urlsplit(link.split(";")[0].strip().strip("<>"))
        target = parsed.path + "?" + parsed.query
    raise HTTPError("the catalog's Link headers do not end")


def measure(bench: Bench) -> None:
    s = bench.sizes
    names = [repository(i) for i in range(s.listing_repositories)]
    middle = names[len(names) // 2]
    # The repositories sort after bench/listing-seed and bench/listing-tags ("-" < "/").
    first = timed_gets(bench, f"/v2/_catalog?n={PAGE}", page_check("repositories", names))
    bench.results["catalog_first_page_ms"] = round(first, 2)
    after = [n for n in names if n > middle][:PAGE]
    bench.results["catalog_middle_page_ms"] = round(
        timed_gets(bench, f"/v2/_catalog?n={PAGE}&last={middle}", page_check("repositories", after)), 2
    )
    figures = []
    with bench.conn() as c:
        for _ in range(max(1, s.listing_reps // 10)):
            t0 = time.perf_counter()
            seen = walk(c, f"/v2/_catalog?n={PAGE}", s.listing_repositories)
            figures.append((time.perf_counter() - t0) * 1000)
            if seen < s.listing_repositories:
                raise HTTPError(f"the catalog walk saw {seen} repositories, fewer than {s.listing_repositories}")
    bench.results["catalog_walk_ms"] = round(statistics.median(figures), 1)
    tags = sorted(f"build-{i:06d}" for i in range(s.listing_tags))
    last_tag = tags[len(tags) // 2]
    target = f"/v2/{TAGGED}/tags/list?n={PAGE}&last={last_tag}"
    with bench.conn() as c:
        status, h, body = c.request("GET", target)
        expect(status, 200, f"GET {target}", h, body)
    if len(json.loads(body)["tags"]) > PAGE:
        # Distribution 2.8 (Debian's) answers every tag, in directory order, whatever n and last say.
        bench.notes["tags_middle_page_ms"] = "n and last ignored: every tag in each answer"
        check = lambda h, b: None  # noqa: E731 - nothing to check in a list it did not page
    else:
        check = page_check("tags", [t for t in tags if t > last_tag][:PAGE])
    bench.results["tags_middle_page_ms"] = round(timed_gets(bench, target, check), 2)


STEPS: list[Step] = [("listing_populate", populate), ("listing_measure", measure)]
