"""
Scale: what a page costs as the store grows (``--suite scale``; not part of
the standard comparison).  One registry run populates, through the API,
``scale_sizes`` repositories in turn (by default 1,000, then up to 10,000,
then up to 100,000; on S3 only the sizes up to ``scale_s3_max``), each with
the small image under one tag: its two blobs mounted from a seed repository
(so that the store holds one copy of each), then the manifest, by
``CLIENTS`` keep-alive connections, within ``POPULATE_BUDGET_S`` for each
size.  One more repository gets ``scale_tags`` tags first.  After each size
is reached, each request ``scale_reps`` times on one keep-alive connection,
the median reported: the catalog's first page and a page from the middle
(``n=100``, ``last`` = the middle repository), the tag list's first and
middle page, and a manifest GET by tag.  Then, for each figure, its growth:
the cost at the larger size divided by the cost at the smaller one.
"""

from __future__ import annotations

import time

from ..client import Connection, HTTPError, expect
from ..common import log
from ..data import ACCEPT_MANIFESTS
from .base import Bench, Metric, Step
from .listing import PAGE, fill, page_check, push_seed_into, put_manifest, timed_gets_n

SEED = "scale/seed"
TAGGED = "scale/tags"
CLIENTS = 16
POPULATE_BUDGET_S = 1800.0

# (key, label) of each figure measured at every size.
FIGURES = [
    ("catalog_first", "catalog first page (n=100)"),
    ("catalog_middle", "catalog middle page (n=100, last=the middle repo)"),
    ("tags_first", "tags list first page (n=100), {tags} tags"),
    ("tags_middle", "tags list middle page (n=100), {tags} tags"),
    ("manifest_get", "manifest GET by tag"),
]


def repository(i: int) -> str:
    return f"scale/r{i:06d}"


def sizes_for(bench: Bench) -> list[int]:
    """The sizes of this run: on S3 only those up to ``scale_s3_max``."""
    s = bench.sizes
    return [n for n in s.scale_sizes if bench.r.s3 is None or n <= s.scale_s3_max]


def key(figure: str, n: int) -> str:
    return f"scale_{figure}_ms_{n}"


def growth_key(figure: str, a: int, b: int) -> str:
    return f"scale_{figure}_growth_{a}_{b}"


def growth_pairs(sizes) -> list[tuple[int, int]]:
    """Each size against the one before, and the last against the first when there are more than two."""
    sizes = sorted(sizes)
    pairs = list(zip(sizes, sizes[1:], strict=False))
    if len(sizes) > 2:
        pairs.append((sizes[0], sizes[-1]))
    return pairs


def metrics_for(sizes) -> list[Metric]:
    """The rows: each figure at each size, then its growth between sizes."""
    tags = f"{sizes.scale_tags:,}"
    rows: list[Metric] = []
    for figure, label in FIGURES:
        for n in sizes.scale_sizes:
            rows.append((key(figure, n), f"{label.format(tags=tags)}, {n:,} repos", "ms", "lower"))
    for figure, label in FIGURES:
        for a, b in growth_pairs(sizes.scale_sizes):
            rows.append(
                (growth_key(figure, a, b), f"growth {b:,}/{a:,} repos: {label.format(tags=tags)}", "x", "lower")
            )
    return rows


def mount_both(bench: Bench, c: Connection, name: str) -> None:
    d = bench.data
    for digest in (d.small_config_digest, d.small_layer_digest):
        status, h, body = c.request("POST", f"/v2/{name}/blobs/uploads/?mount={digest}&from={SEED}")
        expect(status, 201, f"mount into {name}", h, body)


def populate_tags(bench: Bench) -> None:
    push_seed_into(bench, SEED)
    with bench.conn() as c:
        mount_both(bench, c, TAGGED)

    def one_tag(c: Connection, i: int) -> None:
        put_manifest(c, TAGGED, f"t{i:06d}", bench.data.small_manifest)

    fill(bench, one_tag, bench.sizes.scale_tags, "populating tags", budget=POPULATE_BUDGET_S, clients=CLIENTS)


def measure_size(bench: Bench, n: int) -> None:
    reps = bench.sizes.scale_reps
    names = [repository(i) for i in range(n)]
    middle = names[n // 2]
    r = bench.results
    r[key("catalog_first", n)] = round(
        timed_gets_n(bench, f"/v2/_catalog?n={PAGE}", page_check("repositories", names, "scale/r"), reps), 2
    )
    after = names[n // 2 + 1 : n // 2 + 1 + PAGE]
    r[key("catalog_middle", n)] = round(
        timed_gets_n(bench, f"/v2/_catalog?n={PAGE}&last={middle}", page_check("repositories", after, "scale/r"), reps),
        2,
    )
    tags = [f"t{i:06d}" for i in range(bench.sizes.scale_tags)]
    last_tag = tags[len(tags) // 2]
    for figure, target, expected in (
        ("tags_first", f"/v2/{TAGGED}/tags/list?n={PAGE}", tags[:PAGE]),
        ("tags_middle", f"/v2/{TAGGED}/tags/list?n={PAGE}&last={last_tag}", tags[len(tags) // 2 + 1 :][:PAGE]),
    ):
        paged = page_check("tags", expected, "t")

        def check(h, body, paged=paged, figure=figure):
            import json

            if len(json.loads(body)["tags"]) > PAGE:
                # Distribution 2.8 (Debian's) answers every tag, whatever n and last say.
                bench.notes[key(figure, n)] = "n and last ignored: every tag in each answer"
                return
            paged(h, body)

        r[key(figure, n)] = round(timed_gets_n(bench, target, check, reps), 2)
    r[key("manifest_get", n)] = round(
        timed_gets_n(
            bench,
            f"/v2/{middle}/manifests/latest",
            lambda h, body: None if body == bench.data.small_manifest else _wrong_manifest(),
            reps,
            headers=[("Accept", ACCEPT_MANIFESTS)],
        ),
        3,
    )


def _wrong_manifest():
    raise HTTPError("the manifest GET answered other bytes than were pushed")


def grow(bench: Bench) -> None:
    """Each size in turn: the repositories up to it, then the figures at it."""

    def one_repository(c: Connection, i: int) -> None:
        name = repository(i)
        mount_both(bench, c, name)
        put_manifest(c, name, "latest", bench.data.small_manifest)

    done = 0
    for n in sizes_for(bench):
        t0 = time.monotonic()
        fill(
            bench,
            one_repository,
            n,
            f"populating {n:,} repositories",
            start=done,
            budget=POPULATE_BUDGET_S,
            clients=CLIENTS,
        )
        elapsed = time.monotonic() - t0
        bench.notes[f"populate {n:,}"] = f"{n - done:,} repositories in {elapsed:.1f}s ({(n - done) / elapsed:.0f}/s)"
        log(f"{bench.r.label}: {bench.notes[f'populate {n:,}']}")
        done = n
        measure_size(bench, n)
        figures = ", ".join(f"{figure} {bench.results.get(key(figure, n))}" for figure, _ in FIGURES)
        log(f"{bench.r.label}: at {n:,} repositories (ms): {figures}")
    growths(bench)


def growths(bench: Bench) -> None:
    r = bench.results
    for figure, _ in FIGURES:
        for a, b in growth_pairs(sizes_for(bench)):
            small, large = r.get(key(figure, a)), r.get(key(figure, b))
            r[growth_key(figure, a, b)] = round(large / small, 2) if small and large is not None else None


STEPS: list[Step] = [("scale_tags", populate_tags), ("scale_grow", grow)]
