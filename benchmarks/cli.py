"""
Benchmark ociregistry against the reference registry (CNCF Distribution).

    python benchmarks/bench.py [--quick] [--workers 1,2] [--s3] [--json out.json]
    python -m benchmarks ...        (the same, from the checkout's root)

Each registry is started in turn on a fresh temporary data directory and
gets the same workloads; the script prints one table (a column per
ociregistry worker count and one for the reference, with the ratio
ours/reference) and the same figures as JSON.  With ``--s3`` every registry
also runs storing in S3, on one SeaweedFS server (``weed``) started on
127.0.0.1 for the run: columns "ociregistry wN s3" and "reference s3", whose
ratios are against each other.  With ``--notifications`` every ociregistry
column runs again with one webhook endpoint configured (a receiver process
on 127.0.0.1 that counts what it gets): columns "ociregistry wN notify",
whose ratios are against the same registry without.  With ``--metrics`` every
ociregistry column runs again with its Prometheus metrics on (``--metrics``
on 127.0.0.1, scraped once at the end of each run): columns
"ociregistry wN metrics", whose ratios are against the same registry
without.  See docs/benchmarks.md.

The load generators are plain sockets (sendfile for large bodies, recv_into
for large responses), threads for concurrency, `wrk` for the manifest GET
rates, a one-thread epoll loop for the blob HEAD rates (Debian's wrk 4.1
hangs on HEAD responses that carry Content-Length) and `skopeo` for the
image copies, so that the client is not what is measured.
Only the standard library is needed here; ociregistry itself is started
with ``--python`` (by default this interpreter, or ``.venv/bin/python`` of
the checkout when this interpreter cannot import twisted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal

from .common import log
from .report import print_report
from .session import Session
from .workloads import SUITES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short runs, to check the script (< 1 minute)"
    )
    parser.add_argument(
        "--workers", default="1", help="comma-separated ociregistry worker counts, e.g. 1,2 (default 1)"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the results as JSON to PATH (default: print them after the table)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every registry this many times, alternating, and report the median of each figure",
    )
    parser.add_argument("--no-reference", action="store_true", help="do not run the reference registry")
    parser.add_argument(
        "--reference-only", action="store_true", help="only the reference registry (e.g. beside a run of ours)"
    )
    parser.add_argument(
        "--python", default=None, help="interpreter that runs ociregistry (default: see the module docstring)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="leave both registries' access logs on (off by default)"
    )
    parser.add_argument(
        "--reference-cache",
        action="store_true",
        help="give the reference its in-memory blob descriptor cache (as Debian's default config does)",
    )
    parser.add_argument(
        "--tmpdir", default=None, help="where to put test data and data directories (default: the system's)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="standard",
        help="the workloads: standard (the comparison in docs/benchmarks.md), listing (catalog and tag "
        "pages over 1,000 repositories), pushes (small blobs and skopeo only, for --notifications), rates "
        "(manifest GET and blob HEAD rates only, for --metrics), "
        "scale (catalog, tags and manifest GET as the store grows to --sizes repositories), "
        "mixed (zb-style pushes, pulls and mixes at concurrency 1, 10 and 100) or "
        "coldpull (8 clients pulling one image through the pull-through cache of 2 workers at once)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="--suite scale: comma-separated repository counts reached in turn "
        "(default 1000,10000,100000; with --quick 100,1000); on S3 those up to 10,000",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="--suite mixed: seconds of each workload at each concurrency (default 10; with --quick 1)",
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="also run every registry storing in S3: one SeaweedFS (weed) on 127.0.0.1, "
        "a column per registry with ' s3' after its name",
    )
    parser.add_argument(
        "--s3-only", action="store_true", help="with --s3: only the S3 columns (no run on the filesystem)"
    )
    parser.add_argument(
        "--notifications",
        action="store_true",
        help="also run every ociregistry column with one notification endpoint (a receiver on 127.0.0.1): "
        "a column with ' notify' in its name, its ratios against the same registry without",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also run every ociregistry column with its Prometheus metrics on: "
        "a column with ' metrics' in its name, its ratios against the same registry without",
    )
    return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, list[int]]:
    """The options, and the worker counts of ``--workers``."""
    options = build_parser()
    args = options.parse_args(argv)
    try:
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
        if not worker_counts or min(worker_counts) < 1:
            raise ValueError
    except ValueError:
        options.error("--workers takes a comma-separated list of whole numbers >= 1")
    if not 1 <= args.rounds <= 20:
        options.error("--rounds must be between 1 and 20")
    if args.sizes is not None:
        try:
            args.sizes = tuple(sorted({int(n) for n in args.sizes.split(",") if n.strip()}))
            if not args.sizes or not 1 <= min(args.sizes) <= max(args.sizes) <= 1_000_000:
                raise ValueError
        except ValueError:
            options.error("--sizes takes a comma-separated list of repository counts between 1 and 1000000")
    if args.reference_only and args.no_reference:
        options.error("--reference-only and --no-reference exclude each other")
    if args.s3_only and not args.s3:
        options.error("--s3-only needs --s3")
    if args.duration is not None and not 0.1 <= args.duration <= 600:
        options.error("--duration must be between 0.1 and 600 seconds")
    return args, worker_counts


def check_machine() -> None:
    """Warn about what will skew the figures or leave some of them n/a."""
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f}: other processes on this machine will skew the figures")
    for tool in ("wrk", "skopeo"):
        if shutil.which(tool) is None:
            log(f"warning: {tool} is not installed; its workloads will be n/a")


def on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args, worker_counts = parse_args(argv)
    check_machine()
    session = Session(args, worker_counts, SUITES[args.suite])
    signal.signal(signal.SIGTERM, on_signal)  # so that SIGTERM, like Ctrl-C, cleans up
    try:
        report = session.new_report()
        session.run(report)
    finally:
        session.cleanup()
    print_report(report, s3=args.s3, markdown=args.markdown, json_path=args.json)
    return 0


def run(argv=None) -> int:
    """The command's entry point: ``main``, and exit status 130 after Ctrl-C or SIGTERM."""
    try:
        return main(argv)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); registries stopped and temporary files removed")
        return 130
