"""What the report says about where it ran: the machine, the tools, the code under test."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_python() -> str:
    """This interpreter if it can run ociregistry (import twisted), else the checkout's ``.venv/bin/python``."""
    try:
        import twisted  # noqa: F401

        return sys.executable
    except ImportError:
        candidate = os.path.join(REPOSITORY_ROOT, ".venv", "bin", "python")
        return candidate if os.path.exists(candidate) else sys.executable


def tool_version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=20)
        return (result.stdout or result.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return f"unavailable ({e})"


def checkout_state() -> str:
    """The commit of the code under test, and whether oci_registry/ differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], check=False, cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=20
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "oci_registry", "twisted")
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    return (commit or "unknown") + (" with uncommitted changes in oci_registry/" if dirty else "")


def describe(args, sizes, python: str) -> dict:
    """The report's ``meta`` at the start of a run."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "nproc": tool_version(["nproc"]),
        "machine": platform.platform(),
        "python": tool_version([python, "--version"]),
        "ociregistry": checkout_state(),
        "reference": tool_version(["docker-registry", "--version"]),
        "wrk": tool_version(["wrk", "-v"]),
        "skopeo": tool_version(["skopeo", "--version"]),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "rounds": args.rounds,
        "access_log": args.access_log,
        "reference_cache": args.reference_cache,
        "sizes": sizes.to_dict(),
    }
