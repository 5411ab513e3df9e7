"""
``ociregistry`` command: maintenance tasks run beside (or instead of) the daemon.

    ociregistry gc [--dry-run] [--grace 24h] [--upload-expiry 24h]
                   [--delete-untagged] [--keep-tags K [--tag-pattern GLOB]]
    ociregistry du
    ociregistry events [list]             the notifications' outbox: events waiting per endpoint, the oldest's age
    ociregistry events resend [--endpoint NAME]   put dead letters back in the queue

Each reads the same configuration as the daemon (``--config FILE`` and/or
``--data-dir DIR``) and works on the same storage while it serves.

Exit status: 0 done; 2 the configuration cannot work (including a data
directory or bucket that cannot be used); 1 the storage failed (unreachable,
failing): nothing was removed after that point, and the next run carries on.
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from . import __version__, startup
from .config import Config, ConfigError
from .gc import GCAborted, GCOptions, collect, usage
from .startup import CONFIG_STATUS, FAILED_STATUS
from .storage.interfaces import IClosableDriver, StorageUnavailable
from .units import parse_duration


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(size)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ociregistry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"ociregistry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--config", "-c", help="YAML configuration file (as for twistd -n ociregistry)")
        p.add_argument("--data-dir", "-d", help="data directory of the filesystem storage")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    gc = sub.add_parser("gc", help="remove unreferenced blobs and expired uploads")
    common(gc)
    gc.add_argument("--dry-run", "-n", action="store_true", help="list what would be removed; change nothing")
    gc.add_argument("--grace", type=_duration, default=None, help="never remove blobs newer than this (default 24h)")
    gc.add_argument(
        "--upload-expiry", type=_duration, default=None, help="remove uploads idle longer than this (default 24h)"
    )
    gc.add_argument(
        "--delete-untagged",
        action="store_true",
        help="also delete manifests no tag reaches (directly, as an index child or as a referrer)",
    )
    gc.add_argument("--keep-tags", type=int, default=None, help="keep only the newest K tags matching --tag-pattern")
    gc.add_argument("--tag-pattern", default="*", help="glob the retention applies to (default: every tag)")

    du = sub.add_parser("du", help="space used per repository, unique and shared")
    common(du)

    events = sub.add_parser("events", help="the notifications' outbox; re-send dead letters")
    common(events)
    events.add_argument(
        "action",
        nargs="?",
        choices=("list", "resend"),
        default="list",
        help="list: events waiting per endpoint (the default); resend: put dead letters back in the queue",
    )
    events.add_argument("--endpoint", "-e", help="only this endpoint (resend: the default is every one)")
    return parser


def _duration(text: str) -> float:
    """A duration option, refused (status 2) by the parser itself, before any storage is reached."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _config(args) -> Config:
    return Config.load(args.config, data_dir=args.data_dir)


async def _run(reactor, args) -> int:
    from .compose import build_storage

    config = _config(args)
    storage = build_storage(config, reactor)
    try:
        await storage.check()
        if args.command == "gc":
            options = GCOptions(
                dry_run=args.dry_run,
                grace=args.grace if args.grace is not None else config.gc_grace,
                upload_expiry=args.upload_expiry if args.upload_expiry is not None else config.upload_expiry,
                delete_untagged=args.delete_untagged,
                keep_tags=args.keep_tags,
                tag_pattern=args.tag_pattern,
            )
            if options.grace < config.gc_grace and not options.dry_run:
                print(
                    f"ociregistry gc: warning: --grace {options.grace:g} s is shorter than the registry's gc_grace "
                    f"({config.gc_grace:.0f} s): a push relying on a blob older than {options.grace:.0f} s "
                    "while this runs is not protected; use it only while nothing is pushed",
                    file=sys.stderr,
                )
            report = await collect(storage, options, reactor=reactor)
            if args.json:
                print(json.dumps(report.to_json(), indent=2))
            else:
                verb = "would remove" if options.dry_run else "removed"
                for repo, tag in report.tags_removed:
                    print(f"{verb} tag {repo}:{tag}")
                for repo, digest in report.manifests_removed:
                    print(f"{verb} manifest {repo}@{digest}")
                for repo, upload_id, size in report.uploads_removed:
                    print(f"{verb} upload {repo} {upload_id} ({_human(size)})")
                for digest, size in report.blobs_removed:
                    print(f"{verb} blob {digest} ({_human(size)})")
                print(
                    f"{verb} {len(report.blobs_removed)} blobs, {len(report.uploads_removed)} uploads: "
                    f"{_human(report.bytes_freed)} {'would be ' if options.dry_run else ''}freed; "
                    f"{report.blobs_kept} blobs kept"
                )
        elif args.command == "events":
            await _events(storage, config, args)
        else:
            rows = await usage(storage)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'REPOSITORY':40} {'TOTAL':>12} {'UNIQUE':>12} {'SHARED':>12} {'BLOBS':>6}")
                for row in rows:
                    print(
                        f"{row['repository']:40} {_human(row['total']):>12} {_human(row['unique']):>12} "
                        f"{_human(row['shared']):>12} {row['blobs']:>6}"
                    )
        return 0
    except StorageUnavailable as e:
        startup.report(f"storage unavailable: {e.cause}")
        raise SystemExit(CONFIG_STATUS if e.misconfigured else FAILED_STATUS) from None
    finally:
        if IClosableDriver.providedBy(storage):
            storage.close()


async def _events(storage, config: Config, args) -> None:
    from .notifications.admin import human_age, outbox_reports, resend_dead_letters

    reports = await outbox_reports(storage, config.notifications)
    if args.endpoint is not None:
        reports = [r for r in reports if r.endpoint == args.endpoint]
        if not reports:
            raise ConfigError(f"no endpoint named {args.endpoint!r} is configured or has an outbox")
    if args.action == "resend":
        moved = {r.endpoint: await resend_dead_letters(storage, r.endpoint) for r in reports if r.dead_batches}
        if args.json:
            print(json.dumps({"resent": moved}, indent=2))
        else:
            for endpoint, count in moved.items():
                print(f"{endpoint}: {count} dead letter(s) put back in the queue")
            print(f"{sum(moved.values())} event(s) to be sent again")
        return
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
        return
    if not reports:
        print("no notification endpoints configured, and no outbox in storage")
        return
    print(f"{'ENDPOINT':24} {'PENDING':>8} {'OLDEST':>8} {'DEAD':>6}  DELIVERED BY")
    for r in reports:
        name = r.endpoint if r.configured else f"{r.endpoint} (not configured)"
        print(f"{name:24} {r.pending:>8} {human_age(r.oldest_age):>8} {r.dead:>6}  {r.delivered_by or '-'}")


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    try:
        _config(args)
    except (ConfigError, ValueError) as e:
        startup.report(str(e))
        sys.exit(CONFIG_STATUS)

    async def run(reactor):
        try:
            return await _run(reactor, args)
        except ConfigError as e:  # found on the way (an endpoint that does not exist)
            print(f"ociregistry {args.command}: {e}", file=sys.stderr)
            raise SystemExit(CONFIG_STATUS) from None
        except GCAborted as e:
            stopped = "stopped before deleting anything: " if args.command == "gc" else ""
            print(f"ociregistry {args.command}: {stopped}{e}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 one line, not a traceback: the storage failed (unreachable, refused...)
            print(f"ociregistry {args.command}: failed: {e}", file=sys.stderr)
        raise SystemExit(1)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
