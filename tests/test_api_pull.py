"""
Pulling: the API version check, blobs (GET, HEAD, ranges) and manifests (by
tag and by digest, every supported media type), after the OCI conformance
suite's ``01_pull_test.go``.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from api_helpers import (
    API_VERSION,
    API_VERSION_HEADER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    REFERENCE,
    assert_api_version,
    assert_digest_header,
    assert_error,
    fetch,
    get,
    get_manifest,
    head,
    push_blob,
    push_image,
    push_index,
    sha256_digest,
    unique_name,
    unique_tag,
    url,
)

BLOB = b"0123456789abcdefghijklmnopqrstuvwxyz"  # 36 bytes
MISSING = "sha256:" + "0" * 64


# --------------------------------------------------------------------- /v2/


@pytest_twisted.ensureDeferred
async def test_base_endpoint(registry):
    reply = await get(registry, "/v2/")
    assert reply.status == 200, reply
    assert reply.header(API_VERSION_HEADER) == API_VERSION, reply


@pytest_twisted.ensureDeferred
async def test_base_endpoint_head(registry):
    reply = await head(registry, "/v2/")
    assert reply.status == 200, reply
    assert_api_version(reply)
    assert reply.body == b""


# -------------------------------------------------------------------- blobs


@pytest_twisted.ensureDeferred
async def test_get_blob(registry):
    name = unique_name()
    digest = await push_blob(registry, name, BLOB)
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == BLOB
    assert reply.header("Content-Length") == str(len(BLOB)), reply
    assert_digest_header(reply, digest)
    assert_api_version(reply)


@pytest_twisted.ensureDeferred
async def test_head_blob(registry):
    name = unique_name()
    digest = await push_blob(registry, name, BLOB)
    reply = await head(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert reply.header("Content-Length") == str(len(BLOB)), reply
    assert_digest_header(reply, digest)
    assert_api_version(reply)


@pytest_twisted.ensureDeferred
async def test_get_empty_blob(registry):
    name = unique_name()
    digest = await push_blob(registry, name, b"")
    assert digest == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert reply.header("Content-Length") == "0", reply
    assert_digest_header(reply, digest)


@pytest_twisted.ensureDeferred
async def test_get_large_blob(registry):
    name = unique_name()
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, not a multiple of any buffer size
    digest = await push_blob(registry, name, data)
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply.status
    assert reply.header("Content-Length") == str(len(data))
    assert sha256_digest(reply.body) == digest


@pytest_twisted.ensureDeferred
async def test_get_unknown_blob(registry):
    name = unique_name()
    await push_blob(registry, name, BLOB)  # the repository exists, the blob does not
    reply = await get(registry, f"/v2/{name}/blobs/{MISSING}")
    assert_error(reply, 404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_head_unknown_blob(registry):
    name = unique_name()
    await push_blob(registry, name, BLOB)
    reply = await head(registry, f"/v2/{name}/blobs/{MISSING}")
    assert_error(reply, 404)


@pytest_twisted.ensureDeferred
async def test_get_blob_in_unknown_repository(registry):
    reply = await get(registry, f"/v2/{unique_name()}/blobs/{MISSING}")
    assert_error(reply, 404, "BLOB_UNKNOWN", "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_blob_is_not_visible_in_other_repositories(registry):
    """A blob pushed to one repository is not served by another (no mount was asked for)."""
    name, other = unique_name(), unique_name()
    data = b"private to one repository " + unique_tag().encode()
    digest = await push_blob(registry, name, data)
    await push_blob(registry, other, b"something else " + unique_tag().encode())
    reply = await get(registry, f"/v2/{other}/blobs/{digest}")
    assert_error(reply, 404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_get_blob_with_nested_repository_name(registry):
    name = f"{unique_name('org')}/team/{unique_name('app')}"
    digest = await push_blob(registry, name, BLOB)
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == BLOB


# ------------------------------------------------------------------- ranges


async def _ranged(registry, range_header: str, **kw):
    name = unique_name()
    digest = await push_blob(registry, name, BLOB)
    reply = await fetch("GET", url(registry, f"/v2/{name}/blobs/{digest}"), headers={"Range": range_header}, **kw)
    return digest, reply


@pytest_twisted.ensureDeferred
async def test_range_first_bytes(registry):
    digest, reply = await _ranged(registry, "bytes=0-9")
    assert reply.status == 206, reply
    assert reply.body == BLOB[:10]
    assert reply.header("Content-Range") == f"bytes 0-9/{len(BLOB)}", reply
    assert reply.header("Content-Length") == "10", reply
    assert_digest_header(reply, digest)
    assert_api_version(reply)


@pytest_twisted.ensureDeferred
async def test_range_middle_bytes(registry):
    _, reply = await _ranged(registry, "bytes=10-19")
    assert reply.status == 206, reply
    assert reply.body == BLOB[10:20]
    assert reply.header("Content-Range") == f"bytes 10-19/{len(BLOB)}", reply


@pytest_twisted.ensureDeferred
async def test_range_single_byte(registry):
    _, reply = await _ranged(registry, "bytes=35-35")
    assert reply.status == 206, reply
    assert reply.body == BLOB[35:]
    assert reply.header("Content-Range") == f"bytes 35-35/{len(BLOB)}", reply


@pytest_twisted.ensureDeferred
async def test_range_open_ended(registry):
    _, reply = await _ranged(registry, "bytes=30-")
    assert reply.status == 206, reply
    assert reply.body == BLOB[30:]
    assert reply.header("Content-Range") == f"bytes 30-35/{len(BLOB)}", reply
    assert reply.header("Content-Length") == "6", reply


@pytest_twisted.ensureDeferred
async def test_range_suffix(registry):
    _, reply = await _ranged(registry, "bytes=-5")
    assert reply.status == 206, reply
    assert reply.body == BLOB[-5:]
    assert reply.header("Content-Range") == f"bytes 31-35/{len(BLOB)}", reply
    assert reply.header("Content-Length") == "5", reply


@pytest_twisted.ensureDeferred
async def test_range_suffix_longer_than_blob(registry):
    """RFC 9110: a suffix longer than the representation selects all of it."""
    _, reply = await _ranged(registry, "bytes=-1000")
    assert reply.status == 206, reply
    assert reply.body == BLOB
    assert reply.header("Content-Range") == f"bytes 0-35/{len(BLOB)}", reply


@pytest_twisted.ensureDeferred
async def test_range_end_past_the_blob_is_truncated(registry):
    _, reply = await _ranged(registry, "bytes=20-1000")
    assert reply.status == 206, reply
    assert reply.body == BLOB[20:]
    assert reply.header("Content-Range") == f"bytes 20-35/{len(BLOB)}", reply


@pytest_twisted.ensureDeferred
async def test_range_not_satisfiable(registry):
    # The reference registry's 416 declares the blob's length but sends a
    # shorter body, so its body cannot be read there.
    _, reply = await _ranged(registry, "bytes=100-200", broken_body_ok=REFERENCE)
    assert reply.status == 416, reply
    assert reply.header("Content-Range") == f"bytes */{len(BLOB)}", reply
    assert_api_version(reply)


@pytest_twisted.ensureDeferred
async def test_range_starting_at_the_size_is_not_satisfiable(registry):
    _, reply = await _ranged(registry, f"bytes={len(BLOB)}-", broken_body_ok=REFERENCE)
    assert reply.status == 416, reply
    assert reply.header("Content-Range") == f"bytes */{len(BLOB)}", reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_range_not_satisfiable_has_a_readable_error_body(registry):
    _, reply = await _ranged(registry, "bytes=100-200")
    assert reply.status == 416, reply
    assert reply.header("Content-Range") == f"bytes */{len(BLOB)}", reply
    assert reply.body is not None
    assert reply.header("Content-Length") in (None, str(len(reply.body))), reply


# ---------------------------------------------------------------- manifests


@pytest_twisted.ensureDeferred
async def test_get_manifest_by_tag(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    reply = await get_manifest(registry, name, tag)
    assert reply.status == 200, reply
    assert reply.body == image.manifest
    assert reply.header("Content-Type") == OCI_MANIFEST, reply
    assert reply.header("Content-Length") == str(len(image.manifest)), reply
    assert_digest_header(reply, image.digest)
    assert_api_version(reply)


@pytest_twisted.ensureDeferred
async def test_get_manifest_by_digest(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    reply = await get_manifest(registry, name, image.digest)
    assert reply.status == 200, reply
    assert reply.body == image.manifest
    assert reply.header("Content-Type") == OCI_MANIFEST, reply
    assert_digest_header(reply, image.digest)


@pytest_twisted.ensureDeferred
async def test_head_manifest_by_tag(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    reply = await get_manifest(registry, name, tag, method="HEAD")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert reply.header("Content-Type") == OCI_MANIFEST, reply
    assert reply.header("Content-Length") == str(len(image.manifest)), reply
    assert_digest_header(reply, image.digest)
    assert_api_version(reply)


@pytest_twisted.ensureDeferred
async def test_head_manifest_by_digest(registry):
    name = unique_name()
    image = await push_image(registry, name)  # pushed by digest, no tag
    reply = await get_manifest(registry, name, image.digest, method="HEAD")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert reply.header("Content-Type") == OCI_MANIFEST, reply
    assert reply.header("Content-Length") == str(len(image.manifest)), reply
    assert_digest_header(reply, image.digest)


@pytest_twisted.ensureDeferred
async def test_get_manifest_pulls_its_blobs(registry):
    """What a client does: the manifest, then every blob it names, each matching its descriptor."""
    name, tag = unique_name(), unique_tag()
    await push_image(registry, name, tag, layers=3)
    manifest = (await get_manifest(registry, name, tag)).json()
    for desc in [manifest["config"], *manifest["layers"]]:
        reply = await get(registry, f"/v2/{name}/blobs/{desc['digest']}")
        assert reply.status == 200, reply
        assert len(reply.body) == desc["size"]
        assert sha256_digest(reply.body) == desc["digest"]
    assert json.loads((await get(registry, f"/v2/{name}/blobs/{manifest['config']['digest']}")).body)["os"] == "linux"


@pytest_twisted.ensureDeferred
async def test_get_oci_index(registry):
    name, tag = unique_name(), unique_tag()
    images = [await push_image(registry, name) for _ in range(2)]
    body, digest, _ = await push_index(registry, name, tag, images)
    for reference in (tag, digest):
        reply = await get_manifest(registry, name, reference)
        assert reply.status == 200, reply
        assert reply.body == body
        assert reply.header("Content-Type") == OCI_INDEX, reply
        assert_digest_header(reply, digest)
        reply = await get_manifest(registry, name, reference, method="HEAD")
        assert reply.status == 200, reply
        assert reply.header("Content-Type") == OCI_INDEX, reply
        assert reply.header("Content-Length") == str(len(body)), reply
        assert_digest_header(reply, digest)
    # and the images it lists
    for image in images:
        reply = await get_manifest(registry, name, image.digest)
        assert reply.status == 200, reply
        assert reply.body == image.manifest


@pytest_twisted.ensureDeferred
async def test_get_docker_schema2_manifest(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag, docker=True)
    for reference in (tag, image.digest):
        reply = await get_manifest(registry, name, reference)
        assert reply.status == 200, reply
        assert reply.body == image.manifest
        assert reply.header("Content-Type") == DOCKER_MANIFEST, reply
        assert_digest_header(reply, image.digest)


@pytest_twisted.ensureDeferred
async def test_get_docker_manifest_list(registry):
    name, tag = unique_name(), unique_tag()
    images = [await push_image(registry, name, docker=True) for _ in range(2)]
    body, digest, _ = await push_index(registry, name, tag, images, docker=True)
    for reference in (tag, digest):
        reply = await get_manifest(registry, name, reference, accept=f"{DOCKER_LIST}, {DOCKER_MANIFEST}")
        assert reply.status == 200, reply
        assert reply.body == body
        assert reply.header("Content-Type") == DOCKER_LIST, reply
        assert_digest_header(reply, digest)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_get_manifest_without_accept_header(registry):
    """
    The reference answers 404 MANIFEST_UNKNOWN ("accept header does not
    support OCI manifests") to this; the spec has no content negotiation, so
    ociregistry serves the manifest as stored.
    """
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    reply = await get_manifest(registry, name, tag, accept=None)
    assert reply.status == 200, reply
    assert reply.body == image.manifest
    assert reply.header("Content-Type") == OCI_MANIFEST, reply


@pytest_twisted.ensureDeferred
async def test_get_manifest_with_several_accept_lines(registry):
    """
    Clients may send each accepted type on an ``Accept`` line of its own;
    the lines together are the list (RFC 9110).  Here the image manifest's
    type is only on the first line and the index's only on the second.
    """
    name = unique_name()
    image = await push_image(registry, name, "image")
    index, index_digest, _ = await push_index(registry, name, "index", [image])
    accept = [f"{OCI_MANIFEST}, {DOCKER_MANIFEST}", f"{OCI_INDEX}, {DOCKER_LIST}"]
    for tag, body, digest, media_type in (
        ("image", image.manifest, image.digest, OCI_MANIFEST),
        ("index", index, index_digest, OCI_INDEX),
    ):
        for method in ("GET", "HEAD"):
            reply = await get_manifest(registry, name, tag, method=method, accept=accept)
            assert reply.status == 200, reply
            assert reply.header("Content-Type") == media_type, reply
            assert_digest_header(reply, digest)
            assert reply.body == (body if method == "GET" else b""), reply


@pytest_twisted.ensureDeferred
async def test_get_unknown_tag(registry):
    name = unique_name()
    await push_image(registry, name, unique_tag())
    reply = await get_manifest(registry, name, "no-such-tag")
    assert_error(reply, 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_head_unknown_tag(registry):
    name = unique_name()
    await push_image(registry, name, unique_tag())
    reply = await get_manifest(registry, name, "no-such-tag", method="HEAD")
    assert_error(reply, 404)


@pytest_twisted.ensureDeferred
async def test_get_unknown_manifest_digest(registry):
    name = unique_name()
    await push_image(registry, name, unique_tag())
    reply = await get_manifest(registry, name, MISSING)
    assert_error(reply, 404, "MANIFEST_UNKNOWN")
    reply = await get_manifest(registry, name, MISSING, method="HEAD")
    assert_error(reply, 404)


@pytest_twisted.ensureDeferred
async def test_get_manifest_in_unknown_repository(registry):
    reply = await get_manifest(registry, unique_name(), "latest")
    assert_error(reply, 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_manifest_is_not_visible_in_other_repositories(registry):
    name, other = unique_name(), unique_name()
    image = await push_image(registry, name, "v1")
    await push_image(registry, other, "v2")
    reply = await get_manifest(registry, other, image.digest)
    assert_error(reply, 404, "MANIFEST_UNKNOWN")
    reply = await get_manifest(registry, other, "v1")
    assert_error(reply, 404, "MANIFEST_UNKNOWN")
