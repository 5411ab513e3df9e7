"""
Garbage collection at scale: populate a store of N blobs and M manifests,
then time a dry run and a full collection (each in a process of its own:
its peak RSS, and on S3 the requests it made, by method), and the manifest
GET latency of a serving registry while its scheduled collection goes
through the same store.  With the reference registry installed
(``docker-registry``), the same shape of data in its layout on the
filesystem, and its ``garbage-collect`` (dry run and full) timed beside.

    .venv/bin/python -m benchmarks.gc_scale [--blobs 100000] [--manifests 10000]
        [--repositories 1000] [--s3] [--no-reference] [--json out.json]

Unlike ``benchmarks/bench.py`` this imports ociregistry (run it with the
checkout's interpreter): the store is written straight through the layout
(files on the filesystem, the S3 driver's ``write_bytes`` on SeaweedFS),
not pushed over HTTP, so that 100,000 blobs take a minute, not an hour.
Of the blobs, M are the manifests, a tenth is garbage (linked from a
repository, referenced by no manifest), the rest are the manifests'
configs and layers, shared by nothing.  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

from .common import log
from .s3 import S3Server
from .shared import RegistryProcess, find_weed

MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
SAMPLE_PERIOD = 0.01  # seconds between two manifest GETs during the collection


# ------------------------------------------------------------------ the data


class Shape:
    """What to store: which blobs, which manifests, where."""

    def __init__(self, blobs: int, manifests: int, repositories: int, seed: str = "gc-scale"):
        self.blobs, self.manifests, self.repositories = blobs, manifests, repositories
        self.garbage = blobs // 10
        self.per_manifest = max(2, (blobs - manifests - self.garbage) // manifests)  # a config and layers
        self.seed = seed

    def blob(self, i: int) -> bytes:
        return b"%s blob %d" % (self.seed.encode(), i)

    def repository(self, m: int) -> str:
        return f"scale/r{m % self.repositories:05d}"

    def images(self):
        """``(repository, tag, manifest bytes, [(digest hex, bytes)] of its config and layers)`` for each manifest."""
        for m in range(self.manifests):
            blobs = [self.blob(m * self.per_manifest + j) for j in range(self.per_manifest)]
            hexes = [hashlib.sha256(b).hexdigest() for b in blobs]
            doc = {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{hexes[0]}", "size": len(blobs[0])},
                "layers": [
                    {"mediaType": LAYER_TYPE, "digest": f"sha256:{h}", "size": len(b)}
                    for h, b in zip(hexes[1:], blobs[1:], strict=True)
                ],
            }
            yield self.repository(m), f"t{m}", json.dumps(doc).encode(), list(zip(hexes, blobs, strict=True))

    def garbage_blobs(self):
        """``(repository, digest hex, bytes)`` of each unreferenced blob."""
        base = self.manifests * self.per_manifest
        for g in range(self.garbage):
            data = self.blob(base + g)
            yield self.repository(g), hashlib.sha256(data).hexdigest(), data


def _files(shape: Shape, reference: bool, garbage_only: bool = False):
    """``(path, bytes)`` of every file of the store, in ociregistry's layout or (``reference``) Distribution's."""

    def blob(hex_: str, data: bytes):
        return f"blobs/sha256/{hex_[:2]}/{hex_}/data", data

    def link(repo: str, hex_: str):
        return f"repositories/{repo}/_layers/sha256/{hex_}/link", f"sha256:{hex_}".encode()

    if not garbage_only:
        for repo, tag, manifest, blobs in shape.images():
            for hex_, data in blobs:
                yield blob(hex_, data)
                yield link(repo, hex_)
            hex_ = hashlib.sha256(manifest).hexdigest()
            digest = f"sha256:{hex_}".encode()
            yield blob(hex_, manifest)
            revision = f"repositories/{repo}/_manifests/revisions/sha256/{hex_}/link"
            # ociregistry's revision link holds the media type, Distribution's the digest.
            yield revision, digest if reference else MEDIA_TYPE.encode()
            yield f"repositories/{repo}/_manifests/tags/{tag}/current/link", digest
            if reference:
                yield f"repositories/{repo}/_manifests/tags/{tag}/index/sha256/{hex_}/link", digest
    for repo, hex_, data in shape.garbage_blobs():
        yield blob(hex_, data)
        yield link(repo, hex_)


def populate_filesystem(root: str, shape: Shape, reference: bool = False, garbage_only: bool = False) -> int:
    """Write the store's files under ``root`` (not fsynced: a benchmark's data); how many."""
    count = 0
    made: set[str] = set()
    old = time.time() - 7 * 24 * 3600
    for path, data in _files(shape, reference, garbage_only):
        full = os.path.join(root, path)
        folder = os.path.dirname(full)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(full, "wb") as f:
            f.write(data)
        os.utime(full, (old, old))
        count += 1
    return count


def populate_s3(settings, shape: Shape, garbage_only: bool = False, at_once: int = 32) -> int:
    """Write the store's files through the S3 driver, ``at_once`` at a time; how many."""
    from twisted.internet import defer

    from oci_registry.storage.s3 import S3Driver

    def main(reactor):
        driver = S3Driver(settings, reactor)
        files = iter(_files(shape, False, garbage_only))

        async def worker():
            for path, data in files:
                await driver.write_bytes(path, data)

        async def run():
            try:
                await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(at_once)])
            finally:
                await driver.close()

        return defer.Deferred.fromCoroutine(run())

    _react_in_child(main)
    return sum(1 for _ in _files(shape, False, garbage_only))


def _react_in_child(main) -> None:
    """``task.react(main)`` in a forked child, so that this process can start a reactor again later."""
    pid = os.fork()
    if pid == 0:
        from twisted.internet import task

        try:
            task.react(main)
        except SystemExit as e:
            os._exit(e.code or 0)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"populating failed (status {status})")


# ------------------------------------------------------------------ a run


def _child(spec: dict) -> None:
    """In a process of its own: one collection, printed as JSON."""
    from twisted.internet import defer, task

    from oci_registry.gc import GCOptions, collect
    from oci_registry.storage.filesystem import FilesystemDriver
    from oci_registry.storage.s3 import S3Driver
    from oci_registry.storage.settings import S3Settings

    result: dict = {}

    def main(reactor):
        counts: dict[str, int] = {}
        if spec.get("s3"):
            driver = S3Driver(S3Settings.from_dict(spec["s3"]), reactor)
            send = driver.client._send

            def counted(method, key, query, *args, **kwargs):
                name = method + ("?" + ",".join(k for k, _ in query) if query else "")
                counts[name] = counts.get(name, 0) + 1
                return send(method, key, query, *args, **kwargs)

            driver.client._send = counted
        else:
            driver = FilesystemDriver(spec["root"], reactor)

        async def run():
            started = time.monotonic()
            report = await collect(driver, GCOptions(dry_run=spec["dry_run"], grace=0.0), reactor=reactor)
            result.update(
                seconds=round(time.monotonic() - started, 2),
                blobs_removed=len(report.blobs_removed),
                blobs_kept=report.blobs_kept,
                requests=dict(sorted(counts.items())),
            )
            print(json.dumps(result), flush=True)
            close = driver.close()
            if close is not None:
                await close

        return defer.Deferred.fromCoroutine(run())

    task.react(main)


def _run_child(spec: dict) -> dict:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gc_scale", "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = status
    if status != 0:
        raise RuntimeError(f"the collection failed (status {status})")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    return result


def _run_reference(root: str, dry_run: bool, directory: str) -> dict:
    config = os.path.join(directory, "reference-gc.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {root}}}}}\n")
    command = [shutil.which("docker-registry"), "garbage-collect", config] + (["--dry-run"] if dry_run else [])
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"docker-registry garbage-collect failed: {out[-500:]!r}")
    text = out.decode(errors="replace")
    deleted = text.count("blob eligible for deletion") if dry_run else text.count("Deleting blob")
    return {
        "seconds": round(time.monotonic() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "blobs_removed": deleted,
    }


class Probe:
    """One request sampled during a collection: ``path`` on ``host:port`` (the registry's port when None)."""

    def __init__(self, name: str, path, host: str = "127.0.0.1", port: int | None = None, headers=None):
        self.name, self.host, self.port = name, host, port
        self._path = path  # a string, or a function making one (a presigned URL, signed afresh)
        self.headers = headers or {}

    def path(self) -> str:
        return self._path() if callable(self._path) else self._path


def _sample(probe: Probe, port: int, start: float, stop: threading.Event, limit: int | None) -> dict:
    """
    GET ``probe`` every ``SAMPLE_PERIOD`` on one connection until ``stop``
    (or ``limit`` requests).  A request's latency counts from when it was
    due, so a slow answer also counts in the ones it delayed (no
    coordinated omission); ``service`` counts from when it was sent.
    """
    connection = http.client.HTTPConnection(probe.host, probe.port or port, timeout=30)
    latencies: list[float] = []
    services: list[float] = []
    path = probe.path()
    signed = time.monotonic()
    try:
        while not stop.is_set() and (limit is None or len(latencies) < limit):
            due = start + len(latencies) * SAMPLE_PERIOD
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if time.monotonic() - signed > 60:
                path, signed = probe.path(), time.monotonic()
            sent = time.monotonic()
            connection.request("GET", path, headers=probe.headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{probe.name}: GET {path}: {response.status}")
            done = time.monotonic()
            latencies.append(done - due)
            services.append(done - sent)
    finally:
        connection.close()
    return {**_percentiles(latencies), "service": _percentiles(services)}


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values) or [0.0]

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)

    return {"requests": len(values), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


def _latency_during_gc(
    data_dir: str, config: dict, directory: str, probe: str, gc: bool = True, others: tuple = ()
) -> dict:
    """
    Start a registry whose scheduled collection runs at once; sample
    ``probe`` (a manifest GET), and beside it each of ``others`` (`Probe`,
    each on a connection and a thread of its own, on the same schedule),
    until it logged its end (without ``gc``: a registry that collects
    nothing, for 1,000 requests).
    """
    path = os.path.join(directory, "serve.json")
    with open(path, "w") as f:
        json.dump({"access_log": False, "gc_interval": "24h" if gc else 0, "gc_grace": "0s", **config}, f)
    registry = RegistryProcess(data_dir, config=path, directory=tempfile.mkdtemp(dir=directory))
    registry.start(timeout=120)
    probes = [Probe("manifest", probe, headers={"Accept": MEDIA_TYPE}), *others]
    stop = threading.Event()
    limit = None if gc else 1000
    results: dict = {}
    finished = None
    try:
        start = time.monotonic() + 0.05
        with concurrent.futures.ThreadPoolExecutor(len(probes)) as pool:
            futures = {p.name: pool.submit(_sample, p, registry.port, start, stop, limit) for p in probes}
            deadline = start + 3600
            while time.monotonic() < deadline and not all(f.done() for f in futures.values()):
                if any(f.done() and f.exception() for f in futures.values()):
                    break
                if gc and "garbage collection:" in registry.log():
                    finished = time.monotonic() - start
                    break
                time.sleep(0.5)
            stop.set()
            results = {name: f.result() for name, f in futures.items()}
        line = next((ln for ln in registry.log().splitlines() if "garbage collection:" in ln), "")
    finally:
        stop.set()
        registry.stop()
    manifest = results.pop("manifest")
    return {
        **manifest,
        "gc_seconds_in_server": round(finished, 1) if finished else None,
        "gc_log": line.split("garbage collection:", 1)[-1].strip()[:200],
        **results,
    }


def _direct_probes(section: dict, key: str) -> tuple:
    """Beside a manifest GET on S3: ``GET /v2/`` on the registry, and a presigned GET of ``key`` straight to S3."""
    from oci_registry.storage import sigv4

    parts = urlsplit(section["endpoint"])
    host = parts.netloc
    credentials = sigv4.Credentials(section["access_key"], section["secret_key"])
    object_path = f"{parts.path.rstrip('/')}/{section['bucket']}/{key}"

    def presigned() -> str:
        query = sigv4.presign(credentials, section["region"], "GET", host, object_path, 600)
        return f"{sigv4.uri_encode(object_path)}?{query}"

    return (Probe("v2", "/v2/"), Probe("s3_direct", presigned, parts.hostname, parts.port or 80))


# ------------------------------------------------------------------ main


def measure_filesystem(shape: Shape, directory: str, reference: bool) -> dict:
    results: dict = {}
    root = os.path.join(directory, "ociregistry")
    started = time.monotonic()
    files = populate_filesystem(root, shape)
    results["populate"] = {"files": files, "seconds": round(time.monotonic() - started, 1)}
    log(f"filesystem: {files} files in {results['populate']['seconds']} s")
    results["dry_run"] = _run_child({"root": root, "dry_run": True})
    log(f"filesystem dry run: {results['dry_run']}")
    results["gc"] = _run_child({"root": root, "dry_run": False})
    log(f"filesystem gc: {results['gc']}")
    populate_filesystem(root, shape, garbage_only=True)
    repo, tag, _, _ = next(shape.images())
    probe = f"/v2/{repo}/manifests/{tag}"
    results["latency_without_gc"] = _latency_during_gc(root, {}, directory, probe, gc=False)
    results["latency"] = _latency_during_gc(root, {}, directory, probe)
    log(f"filesystem latency during gc: {results['latency']}")
    shutil.rmtree(root, ignore_errors=True)
    if reference and shutil.which("docker-registry"):
        ref_root = os.path.join(directory, "reference")
        populate_filesystem(os.path.join(ref_root, "docker", "registry", "v2"), shape, reference=True)
        results["reference_dry_run"] = _run_reference(ref_root, True, directory)
        log(f"reference dry run: {results['reference_dry_run']}")
        results["reference_gc"] = _run_reference(ref_root, False, directory)
        log(f"reference gc: {results['reference_gc']}")
        shutil.rmtree(ref_root, ignore_errors=True)
    return results


def measure_s3(shape: Shape, directory: str) -> dict:
    weed = find_weed(sys.executable)
    if weed is None:
        log("SeaweedFS (weed) not found: no S3 figures")
        return {}
    server = S3Server(weed, directory)
    server.start()
    results: dict = {}
    try:
        bucket = server.new_bucket()
        section = {
            "endpoint": server.endpoint,
            "bucket": bucket,
            "region": server.REGION,
            "access_key": server.ACCESS_KEY,
            "secret_key": server.SECRET_KEY,
            "prefix": "gc",
        }
        from oci_registry.storage.settings import S3Settings

        settings = S3Settings.from_dict(section)
        started = time.monotonic()
        files = populate_s3(settings, shape)
        results["populate"] = {"files": files, "seconds": round(time.monotonic() - started, 1)}
        log(f"s3: {files} objects in {results['populate']['seconds']} s")
        results["dry_run"] = _run_child({"s3": section, "dry_run": True})
        log(f"s3 dry run: {results['dry_run']}")
        results["gc"] = _run_child({"s3": section, "dry_run": False})
        log(f"s3 gc: {results['gc']}")
        populate_s3(settings, shape, garbage_only=True)
        repo, tag, _, _ = next(shape.images())
        probe, config = f"/v2/{repo}/manifests/{tag}", {"storage": {"s3": section}}
        unused = os.path.join(directory, "unused")
        others = _direct_probes(section, f"{section['prefix']}/repositories/{repo}/_manifests/tags/{tag}/current/link")
        results["latency_without_gc"] = _latency_during_gc(unused, config, directory, probe, False, others)
        log(f"s3 latency without gc: {results['latency_without_gc']}")
        results["latency"] = _latency_during_gc(unused, config, directory, probe, others=others)
        log(f"s3 latency during gc: {results['latency']}")
    finally:
        server.cleanup()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--repositories", type=int, default=1_000)
    parser.add_argument("--s3", action="store_true", help="also on SeaweedFS (weed), on 127.0.0.1")
    parser.add_argument("--no-filesystem", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    if not 1 <= args.manifests <= args.blobs // 2 or args.repositories < 1:
        parser.error("--manifests must be between 1 and half of --blobs, --repositories at least 1")
    shape = Shape(args.blobs, args.manifests, args.repositories)
    directory = tempfile.mkdtemp(prefix="gc-scale-", dir=args.tmpdir)
    results: dict = {
        "blobs": args.blobs,
        "manifests": args.manifests,
        "repositories": args.repositories,
        "garbage": shape.garbage,
        "cpus": os.cpu_count(),
    }
    try:
        if not args.no_filesystem:
            results["filesystem"] = measure_filesystem(shape, directory, not args.no_reference)
        if args.s3:
            results["s3"] = measure_s3(shape, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
