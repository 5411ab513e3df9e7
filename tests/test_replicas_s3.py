"""
Several registry processes on one S3 bucket (SeaweedFS) serve one registry:
any request may land on any replica.  Each process gets a data directory of
its own, so nothing can pass between them through a local file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from image_builder import (
    MEDIA_TYPE_OCI_MANIFEST,
    OCILayout,
    append_through_both_at_once,
    finish_racing_an_append,
    http_request,
    pull_racing_a_delete,
    push_blob_http,
    push_image_http,
    push_same_blob_and_tag_through_both,
    sha256_digest,
)
from oci_registry.storage.settings import MIN_PART_SIZE
from registry_process import RegistryProcess, registry_environment
from s3_server import s3_server  # noqa: F401  (the session fixture)
from test_e2e_skopeo import SKOPEO, assert_same_layouts, copy_args, skopeo, skopeo_env  # noqa: F401

pytestmark = pytest.mark.ociregistry_only

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3_settings(s3_server):  # noqa: F811
    # The smallest part S3 allows, so that a few MiB already take several parts.
    return s3_server.settings(part_size=MIN_PART_SIZE)


@pytest.fixture(scope="module")
def s3_config(s3_server, s3_settings, tmp_path_factory):  # noqa: F811
    """A registry config file storing in the module's bucket prefix."""
    return s3_server.config_file(str(tmp_path_factory.mktemp("config")), s3_settings)


@pytest.fixture(scope="module")
def replicas(s3_config, tmp_path_factory):
    config = s3_config
    started = []
    try:
        for name in ("a", "b"):
            started.append(RegistryProcess(str(tmp_path_factory.mktemp(name)), config=config).start())
        yield tuple(started)
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="module")
def redirecting(s3_server, s3_settings, tmp_path_factory):  # noqa: F811
    """A third replica on the same bucket that sends blob GETs to presigned URLs."""
    settings = s3_server.settings(prefix=s3_settings.prefix, part_size=MIN_PART_SIZE, redirect=True)
    config = s3_server.config_file(str(tmp_path_factory.mktemp("config")), settings)
    process = RegistryProcess(str(tmp_path_factory.mktemp("c")), config=config).start()
    yield process
    process.stop()


def absolute(registry, location: str) -> str:
    return location if location.startswith("http") else registry.url + location


def with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={urllib.parse.quote(digest)}"


def test_chunked_upload_alternating_between_replicas(replicas, s3_server, s3_settings):  # noqa: F811
    a, b = replicas
    chunks = [b"\x01" * (6 * MiB + 3), b"\x02" * (2 * MiB), b"\x03" * (5 * MiB + 11)]
    last = b"the end"
    data = b"".join(chunks) + last
    digest = sha256_digest(data)

    started = http_request("POST", f"{a.url}/v2/replicas/chunked/blobs/uploads/", b"")
    assert started.status == 202, started.body
    # Chunks smaller than a part cost an extra rewrite of the upload state: clients are told.
    assert started.headers["oci-chunk-min-length"] == str(MIN_PART_SIZE)
    path = started.headers["location"]
    offset = 0
    for registry, chunk in zip((b, a, b), chunks, strict=True):
        response = http_request(
            "PATCH",
            absolute(registry, path),
            chunk,
            {"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
        )
        assert response.status == 202, (registry.url, response.status, response.body)
        offset += len(chunk)
        assert response.headers["range"] == f"0-{offset - 1}"
        path = response.headers["location"]
    # Either replica reports where the upload is.
    status = http_request("GET", absolute(a, path))
    assert status.status == 204 and status.headers["range"] == f"0-{offset - 1}"

    finished = http_request(
        "PUT",
        with_digest(absolute(a, path), digest),
        last,
        {"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(last) - 1}"},
    )
    assert finished.status == 201, finished.body
    assert finished.headers["docker-content-digest"] == digest

    pulled = http_request("GET", f"{b.url}/v2/replicas/chunked/blobs/{digest}")
    assert pulled.status == 200
    assert hashlib.sha256(pulled.body).hexdigest() == digest.split(":")[1] and len(pulled.body) == len(data)
    head = http_request("HEAD", f"{a.url}/v2/replicas/chunked/blobs/{digest}")
    assert head.status == 200 and int(head.headers["content-length"]) == len(data)
    # The finished upload left no multipart upload behind, and nothing went to a local disk.
    assert s3_server.multipart_uploads(s3_settings.prefix) == []
    for registry in replicas:
        assert os.listdir(registry.data_dir) == []
        assert f"storing data in s3://{s3_settings.bucket}/{s3_settings.prefix}" in registry.log()


def test_wrong_digest_publishes_nothing(replicas, s3_server, s3_settings):  # noqa: F811
    a, b = replicas
    data = b"\x07" * (5 * MiB + 1)
    started = http_request("POST", f"{b.url}/v2/replicas/wrong/blobs/uploads/", b"")
    patched = http_request(
        "PATCH", absolute(b, started.headers["location"]), data, {"Content-Type": "application/octet-stream"}
    )
    assert patched.status == 202
    wrong = sha256_digest(b"something else")
    finished = http_request("PUT", with_digest(absolute(a, patched.headers["location"]), wrong), b"")
    assert finished.status == 400 and b"DIGEST_INVALID" in finished.body
    for registry in replicas:
        assert http_request("HEAD", f"{registry.url}/v2/replicas/wrong/blobs/{sha256_digest(data)}").status == 404
    assert s3_server.multipart_uploads(s3_settings.prefix) == []


def test_one_upload_appended_through_both_at_once_never_publishes_wrong_bytes(replicas):
    """
    B's bytes are what S3 keeps (B's upload state is written last), A hashed
    its own: finishing on A re-hashes from storage and refuses A's digest.
    """
    append_through_both_at_once(*replicas, "replicas/race")


def test_an_upload_finished_while_another_replica_appends_to_it(replicas):
    """
    S3 objects are replaced whole: A publishes the bytes it verified, and
    what B stores afterwards lands at the finished upload's path, not in the blob.
    """
    mine, finished, served = finish_racing_an_append(*replicas, "replicas/finish-race")
    assert finished.status == 201, (finished.status, finished.body)
    assert served.status == 200 and served.body == mine


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")
def test_skopeo_push_through_one_pull_through_the_other(replicas, skopeo, tmp_path):  # noqa: F811
    a, b = replicas
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=6 * MiB, seed="s3-replicas")
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{a.host}/replicas/app:v1"))

    pulled = OCILayout(tmp_path / "pulled")
    skopeo(*copy_args("--preserve-digests", f"docker://{b.host}/replicas/app:v1", pulled.reference("v1")))
    assert pulled.resolve("v1")["digest"] == image.manifest_digest
    assert pulled.read_blob(image.manifest_digest) == image.manifest_bytes
    assert_same_layouts(source.path, pulled.path)


def test_tag_pushed_on_one_is_served_by_the_other_at_once(replicas, tmp_path):
    a, b = replicas
    layout = OCILayout(tmp_path / "layout")
    first = layout.add_image(layers=1, layer_size=1000, seed="tag-1")
    second = layout.add_image(layers=1, layer_size=1000, seed="tag-2")

    push_image_http(a.url, "replicas/tags", layout, first, tag="latest")
    served = http_request(
        "GET", f"{b.url}/v2/replicas/tags/manifests/latest", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST}
    )
    assert served.status == 200 and served.body == first.manifest_bytes

    push_image_http(b.url, "replicas/tags", layout, second, tag="latest")
    served = http_request(
        "GET", f"{a.url}/v2/replicas/tags/manifests/latest", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST}
    )
    assert served.headers["docker-content-digest"] == second.manifest_digest
    listed = http_request("GET", f"{a.url}/v2/replicas/tags/tags/list")
    assert json.loads(listed.body)["tags"] == ["latest"]


def test_same_blob_and_tag_pushed_through_both_at_once(replicas, tmp_path):
    """Racing replicas end in a consistent state: one blob, and the tag on one of the manifests."""
    push_same_blob_and_tag_through_both(*replicas, "replicas/race", tmp_path / "layout", 6 * MiB)


def test_blob_get_redirects_to_a_presigned_url(replicas, redirecting, s3_server):  # noqa: F811
    a, _ = replicas
    data = b"\x09" * (300 << 10)
    digest = push_blob_http(a.url, "replicas/redirect", data)

    response = http_request("GET", f"{redirecting.url}/v2/replicas/redirect/blobs/{digest}")
    assert response.status == 307
    location = response.headers["location"]
    assert location.startswith(s3_server.endpoint) and "X-Amz-Signature=" in location
    with urllib.request.urlopen(location, timeout=10) as fetched:  # a plain GET, no credentials
        assert fetched.read() == data
    # HEAD is answered by the registry itself; unknown blobs are still 404.
    head = http_request("HEAD", f"{redirecting.url}/v2/replicas/redirect/blobs/{digest}")
    assert head.status == 200 and int(head.headers["content-length"]) == len(data)
    missing = http_request("GET", f"{redirecting.url}/v2/replicas/redirect/blobs/{sha256_digest(b'nothing')}")
    assert missing.status == 404


def test_pull_racing_a_delete_and_garbage_collection(replicas, s3_config):
    """A pull through A outlives the layer's deletion through B and a collection of the bucket."""

    def collect():
        result = subprocess.run(
            [sys.executable, "-m", "oci_registry.cli", "gc", "--config", s3_config, "--grace", "0s", "--json"],
            env=registry_environment(),
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return {blob["digest"] for blob in json.loads(result.stdout)["blobs_removed"]}

    pull_racing_a_delete(*replicas, "replicas/deleted", collect)


def test_garbage_collection_on_the_bucket(replicas, s3_config, tmp_path):
    """``ociregistry gc`` works on the bucket while the replicas serve (run last: it sweeps the prefix)."""
    a, b = replicas
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image(layers=2, layer_size=1000, seed="gc")
    push_image_http(a.url, "replicas/gc", layout, image, tag="kept")
    orphan = push_blob_http(b.url, "replicas/gc", b"\x0b" * 1000)

    result = subprocess.run(
        [sys.executable, "-m", "oci_registry.cli", "gc", "--config", s3_config, "--grace", "0s", "--json"],
        env=registry_environment(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    removed = {blob["digest"] for blob in json.loads(result.stdout)["blobs_removed"]}
    assert orphan in removed and not removed & set(image.blob_digests)
    assert http_request("HEAD", f"{a.url}/v2/replicas/gc/blobs/{orphan}").status == 404
    served = http_request("GET", f"{b.url}/v2/replicas/gc/manifests/kept", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST})
    assert served.status == 200 and served.body == image.manifest_bytes
    for digest in image.blob_digests:
        assert http_request("GET", f"{b.url}/v2/replicas/gc/blobs/{digest}").body == layout.read_blob(digest)
