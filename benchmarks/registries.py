"""
The registries under test: ociregistry (one column per worker count) and
the reference, each in a process group of its own on a fresh data
directory (or an S3 bucket of its own), sampled through /proc for their
RSS and CPU.  Started by the tests' launcher (``tests/registry_process.py``),
with what a benchmark adds: S3 settings, worker counts, access logs off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING, NoReturn

from .columns import run_label
from .common import Unavailable, log
from .shared import RegistryProcess, descendants, free_port, registry_environment

if TYPE_CHECKING:
    from .s3 import S3Place


class Registry(RegistryProcess):
    """
    One registry process (and its workers) on a fresh data directory under
    ``root``, or storing in S3 at ``s3`` (a bucket and a prefix of its own).
    """

    own_process_group = True
    probe_timeout = 2.0
    stop_timeout = 15.0

    def __init__(
        self,
        kind: str,
        root: str,
        workers: int = 1,
        python: str = sys.executable,
        access_log: bool = False,
        reference_cache: bool = False,
        s3: S3Place | None = None,
        notify_url: str | None = None,
        metrics: bool = False,
    ):
        directory = tempfile.mkdtemp(prefix=f"{kind}-w{workers}{'-s3' if s3 else ''}-", dir=root)
        self.workers, self.access_log, self.reference_cache, self.s3 = workers, access_log, reference_cache, s3
        self.metrics_port = free_port() if metrics else None
        super().__init__(
            os.path.join(directory, "data"), kind, self.ociregistry_args(), python=python, directory=directory
        )
        self.reference_log = "{level: error}" if access_log else "{level: error, accesslog: {disabled: true}}"
        self.label = run_label(
            kind, workers, "s3" if s3 else "filesystem", notify=notify_url is not None, metrics=metrics
        )
        if notify_url is not None:
            # One endpoint, in Distribution's format, with what a user would configure.
            self.config = os.path.join(directory, "notifications.yaml")
            endpoint = {"name": "bench", "url": notify_url, "secret": "benchmark", "timeout": "5s"}
            with open(self.config, "w") as f:
                json.dump({"notifications": {"endpoints": [endpoint]}}, f)
        self._bucket_deleted = False

    def ociregistry_args(self) -> list[str]:
        """After ``--data-dir``: access log, workers and S3 options (the S3 keys go in the environment)."""
        args = [] if self.access_log else ["--no-access-log"]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        if self.metrics_port is not None:
            args += ["--metrics", f"tcp:{self.metrics_port}:interface=127.0.0.1"]
        if self.s3 is not None:
            server = self.s3.server
            args += ["--s3-bucket", self.s3.bucket, "--s3-endpoint", server.endpoint]
            args += ["--s3-region", server.REGION, "--s3-prefix", self.s3.prefix]
        return args

    def reference_storage(self) -> str:
        cache = "cache: {blobdescriptor: inmemory}, " if self.reference_cache else ""
        if self.s3 is None:
            return f"{{{cache}filesystem: {{rootdirectory: {self.data_dir}}}, delete: {{enabled: true}}}}"
        # Distribution 2.8's s3 driver (aws-sdk-go) addresses the bucket
        # path-style when regionendpoint is set (it has no forcepathstyle
        # option).  Its blob GETs answer 307 to a presigned S3 URL unless
        # redirect is disabled; ociregistry streams blobs itself unless
        # told --s3-redirect, so both serve the bytes here.
        server = self.s3.server
        s3 = {
            "accesskey": server.ACCESS_KEY,
            "secretkey": server.SECRET_KEY,
            "region": server.REGION,
            "regionendpoint": server.endpoint,
            "bucket": self.s3.bucket,
            "secure": False,
            "v4auth": True,
            "rootdirectory": "/" + self.s3.prefix,
        }
        return f"{{{cache}s3: {json.dumps(s3)}, delete: {{enabled: true}}, redirect: {{disable: true}}}}"

    def environment(self) -> dict:
        # No S3 settings or AWS credentials from the caller's environment: a
        # filesystem run must not store in S3, and Distribution's AWS SDK
        # panics at start-up when AWS_CA_BUNDLE is set.
        env = registry_environment(
            {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OCIREGISTRY_S3_"))}
        )
        if self.s3 is not None and self.kind == "ociregistry":
            env["OCIREGISTRY_S3_ACCESS_KEY"] = self.s3.server.ACCESS_KEY
            env["OCIREGISTRY_S3_SECRET_KEY"] = self.s3.server.SECRET_KEY
        return env

    def unavailable(self, reason: str) -> NoReturn:
        raise Unavailable(reason)

    def exited_at_start(self) -> NoReturn:
        text = self.log_tail()
        self.process = None
        if self.workers > 1 and ("workers" in text.lower() or "usage" in text.lower()):
            raise Unavailable(f"ociregistry rejected --workers {self.workers}: {text.strip()[-300:]}")
        raise Unavailable(f"{self.label} exited at start-up: {text.strip()[-500:]}")

    def did_not_answer(self, timeout: float) -> NoReturn:
        raise Unavailable(f"{self.label} did not answer within {timeout}s: {self.log_tail()[-500:]}")

    def start(self, timeout: float = 30.0) -> Registry:
        """Start it, and with workers wait (within the same ``timeout``) until they all listen."""
        deadline = time.monotonic() + timeout
        super().start(timeout)
        if self.kind == "ociregistry" and self.workers > 1:
            self._wait_for_workers(deadline)
        return self

    def _wait_for_workers(self, deadline: float) -> None:
        # Worker 0 answers first; the others log "worker N serving" once they listen.
        wanted = self.workers - 1
        while time.monotonic() < deadline:
            serving = len(re.findall(r"worker \d+ serving", self.log_tail()))
            if serving >= wanted:
                return
            time.sleep(0.1)
        processes = len(descendants(self.process.pid)) - 1
        if processes < wanted:
            self.stop()
            raise Unavailable(f"only {processes} of {wanted} extra worker processes started")
        log(f"warning: could not confirm that {wanted} workers listen; {processes} worker processes run")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.s3 is not None and not self._bucket_deleted:
            self._bucket_deleted = True
            self.s3.server.delete_bucket(self.s3.bucket)
