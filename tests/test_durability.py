"""
A 201 means the bytes are on disk: a pushed blob's data is fsynced before
it is renamed into ``blobs/`` (checked with strace on a real registry
process), and a blob (or manifest) whose stored bytes a crash damaged is
repaired by pushing it again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse

import pytest

from image_builder import MEDIA_TYPE_OCI_MANIFEST, http_request, push_blob_http, random_bytes, sha256_digest
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only

STRACE = shutil.which("strace")


def blob_file(data_dir: str, digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return os.path.join(data_dir, "blobs", "sha256", hex_[:2], hex_, "data")


def traced(pid: int, out: str):
    """strace attached to ``pid`` and its threads, printing the paths of descriptors (``-y``)."""
    process = subprocess.Popen(
        [STRACE, "-f", "-y", "-qq", "-o", out, "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-p", str(pid)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.path.exists(out):
        time.sleep(0.05)
    time.sleep(0.5)  # attaching to every thread takes a moment after the file appears
    return process


RENAME = re.compile(r'^(?:\[pid\s+)?(\d+)\]?\s*rename(?:at2?)?\((?:[^"]*)"([^"]+)",(?:[^"]*)"([^"]+)"')
FSYNC = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s*f(?:data)?sync\(\d+<([^>]+)>")


def fsyncs_before_renames(trace: str, pattern: str) -> list[tuple[str, bool]]:
    """For each rename to a path matching ``pattern``: (source, whether the same thread fsynced the source before)."""
    synced: set[tuple[str, str]] = set()
    found = []
    for line in trace.splitlines():
        if m := FSYNC.match(line):
            synced.add((m.group(1), m.group(2)))
        elif (m := RENAME.match(line)) and re.search(pattern, m.group(3)):
            found.append((m.group(2), (m.group(1), m.group(2)) in synced))
    return found


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_pushed_blob_data_is_fsynced_before_it_is_renamed_into_blobs(tmp_path):
    registry = RegistryProcess(str(tmp_path / "data")).start()
    out = str(tmp_path / "strace.out")
    tracer = traced(registry.process.pid, out)
    try:
        monolithic = random_bytes(300_000, "fsync-monolithic")
        digest = sha256_digest(monolithic)
        posted = http_request("POST", f"{registry.url}/v2/durable/blobs/uploads/?digest={digest}", monolithic)
        assert posted.status == 201, posted.body
        chunked = push_blob_http(registry.url, "durable", random_bytes(200_000, "fsync-chunked"))
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
        registry.stop()
    with open(out) as f:
        trace = f.read()
    published = fsyncs_before_renames(trace, r"/blobs/sha256/[0-9a-f]{2}/[0-9a-f]{64}/data$")
    assert len(published) == 2, trace[-3000:]
    for source, synced in published:
        assert "/_uploads/" in source and synced, (source, trace[-3000:])
    for d in (digest, chunked):
        assert os.path.getsize(blob_file(registry.data_dir, d)) in (300_000, 200_000)


def test_pushing_a_damaged_blob_or_manifest_again_repairs_it(tmp_path):
    """What a power cut leaves of bytes written before they were fsynced: an empty or torn file, or garbage."""
    registry = RegistryProcess(str(tmp_path / "data")).start()
    try:
        for damage in ("empty", "truncated", "same size"):
            data = random_bytes(100_000, f"repair-{damage}")
            digest = push_blob_http(registry.url, "repair/blob", data)
            path = blob_file(registry.data_dir, digest)
            with open(path, "r+b") as f:
                if damage == "same size":
                    f.write(b"\0" * 4096)
                else:
                    f.truncate(0 if damage == "empty" else 50_000)
            assert http_request("GET", f"{registry.url}/v2/repair/blob/blobs/{digest}").body != data
            # skopeo and docker HEAD first and skip what is there: a damaged blob is there.
            pushed = http_request("POST", f"{registry.url}/v2/repair/blob/blobs/uploads/?digest={digest}", data)
            assert pushed.status == 201, pushed.body
            assert http_request("GET", f"{registry.url}/v2/repair/blob/blobs/{digest}").body == data, damage

        config = b"{}"
        push_blob_http(registry.url, "repair/manifest", config)
        manifest = (
            b'{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
            b'"digest":"%s","size":2},"layers":[]}' % (MEDIA_TYPE_OCI_MANIFEST.encode(), sha256_digest(config).encode())
        )
        digest = sha256_digest(manifest)
        url = f"{registry.url}/v2/repair/manifest/manifests"
        headers = {"Content-Type": MEDIA_TYPE_OCI_MANIFEST}
        assert http_request("PUT", f"{url}/v1", manifest, headers).status == 201
        with open(blob_file(registry.data_dir, digest), "r+b") as f:
            f.truncate(10)
        assert http_request("PUT", f"{url}/v1", manifest, headers).status == 201
        got = http_request("GET", f"{url}/v1", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST})
        assert got.status == 200 and got.body == manifest
    finally:
        registry.stop()


def test_pushing_a_blob_of_the_wrong_size_on_s3_again_repairs_it(s3_server, tmp_path):  # noqa: F811
    """On S3 an object is whole or absent; an existing blob is copied over only when its size is wrong."""
    settings = s3_server.settings()
    config = s3_server.config_file(str(tmp_path), settings)
    registry = RegistryProcess(str(tmp_path / "data"), config=config).start()
    try:
        data = random_bytes(100_000, "repair-s3")
        digest = push_blob_http(registry.url, "repair/s3", data)
        hex_ = digest.split(":", 1)[1]
        key = f"{settings.prefix}/blobs/sha256/{hex_[:2]}/{hex_}/data"
        status, _ = s3_server.request("PUT", urllib.parse.quote(key), data[:1000])
        assert status == 200
        pushed = http_request("POST", f"{registry.url}/v2/repair/s3/blobs/uploads/?digest={digest}", data)
        assert pushed.status == 201, pushed.body
        assert http_request("GET", f"{registry.url}/v2/repair/s3/blobs/{digest}").body == data
    finally:
        registry.stop()
