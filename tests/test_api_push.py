"""
Pushing: upload sessions (monolithic, POST-then-PUT, chunked, streamed),
cross-repository mounts, and manifests of every supported media type, after
the OCI conformance suite's ``02_push_test.go``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest
import pytest_twisted
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from api_helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_api_version,
    assert_digest_header,
    assert_error,
    assert_manifest_body,
    descriptor,
    encode,
    fetch,
    get,
    get_manifest,
    image_config,
    image_manifest,
    mount,
    parse_range,
    push_blob,
    push_blobs,
    push_image,
    push_index,
    put_manifest,
    resolve,
    sha256_digest,
    start_upload,
    unique_name,
    unique_tag,
    url,
    with_query,
)

OCTETS = {"Content-Type": "application/octet-stream"}
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def blob_data(label: str, size: int = 0) -> bytes:
    """Unique content for a test (a blob shared by two tests would hide a missing upload)."""
    seed = f"{label} {unique_tag()}\n".encode()
    return (seed * (size // len(seed) + 1))[:size] if size else seed


async def assert_blob(registry, name: str, digest: str, data: bytes) -> None:
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data
    assert_digest_header(reply, digest)


async def assert_no_blob(registry, name: str, digest: str) -> None:
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert_error(reply, 404, "BLOB_UNKNOWN")


async def open_session(registry, name: str) -> str:
    """Start an upload; the absolute URL of the session."""
    return resolve(registry, (await start_upload(registry, name)).header("Location"))


async def patch(session: str, chunk: bytes, start: int | None = None):
    headers = dict(OCTETS, **{"Content-Length": str(len(chunk))})
    if start is not None:
        headers["Content-Range"] = f"{start}-{start + len(chunk) - 1}"
    return await fetch("PATCH", session, chunk, headers)


async def patch_rest_and_finish(registry, name: str, session: str, data: bytes, start: int) -> None:
    """PATCH ``data[start:]`` at ``start``, then close the upload with the digest of ``data``: the blob is ``data``."""
    reply = await patch(session, data[start:], start=start)
    assert reply.status == 202, reply
    assert parse_range(reply.header("Range")) == (0, len(data) - 1), reply
    session = resolve(registry, reply.header("Location"))
    reply = await fetch("PUT", with_query(session, digest=sha256_digest(data)), b"")
    assert reply.status == 201, reply
    await assert_blob(registry, name, sha256_digest(data), data)


class _Unmeasurable:
    """A file Twisted cannot seek in, so it cannot tell the length of the body read from it."""

    def __init__(self, data: bytes):
        self._file = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


def chunked(data: bytes, piece: int = 4096) -> FileBodyProducer:
    """
    A request body of unknown length for `fetch`: Twisted's client sends it
    with ``Transfer-Encoding: chunked`` and no ``Content-Length``, in HTTP
    chunks of ``piece`` bytes, as docker and containerd stream layers.
    """
    producer = FileBodyProducer(_Unmeasurable(data), readSize=piece)
    assert producer.length is UNKNOWN_LENGTH
    return producer


# ------------------------------------------------------------ upload sessions


@pytest_twisted.ensureDeferred
async def test_post_opens_an_upload_session(registry):
    name = unique_name()
    reply = await fetch("POST", url(registry, f"/v2/{name}/blobs/uploads/"), b"")
    assert reply.status == 202, reply
    assert_api_version(reply)
    location = reply.header("Location")
    assert location, reply
    assert resolve(registry, location).startswith(url(registry, f"/v2/{name}/blobs/uploads/")), reply
    assert reply.header("Docker-Upload-UUID"), reply
    start, _ = parse_range(reply.header("Range"))
    assert start == 0
    # Optional (storage that prefers large chunks says how large).
    minimum = reply.header("OCI-Chunk-Min-Length")
    assert minimum is None or int(minimum) > 0, reply


@pytest_twisted.ensureDeferred
async def test_each_post_opens_a_new_session(registry):
    name = unique_name()
    first = await start_upload(registry, name)
    second = await start_upload(registry, name)
    assert first.header("Docker-Upload-UUID") != second.header("Docker-Upload-UUID")
    assert first.header("Location") != second.header("Location")


@pytest_twisted.ensureDeferred
async def test_upload_status_of_a_new_session(registry):
    name = unique_name()
    session = await open_session(registry, name)
    reply = await fetch("GET", session)
    assert reply.status == 204, reply
    assert reply.body == b""
    assert reply.header("Range"), reply
    assert parse_range(reply.header("Range"))[0] == 0
    assert reply.header("Docker-Upload-UUID"), reply
    assert_api_version(reply)


# --------------------------------------------------------- monolithic uploads


@pytest_twisted.ensureDeferred
async def test_monolithic_post_with_digest(registry):
    """
    POST ``?digest=`` with the whole blob.  A registry MAY answer 202 and a
    session (the reference does: it ignores the body), in which case the
    client PUTs the blob to it, as the conformance suite does.
    """
    name, data = unique_name(), blob_data("monolithic post")
    digest = sha256_digest(data)
    reply = await fetch("POST", with_query(url(registry, f"/v2/{name}/blobs/uploads/"), digest=digest), data, OCTETS)
    assert reply.status in (201, 202), reply
    assert reply.header("Location"), reply
    if reply.status == 202:
        reply = await fetch("PUT", with_query(resolve(registry, reply.header("Location")), digest=digest), data, OCTETS)
        assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    located = await fetch("GET", resolve(registry, reply.header("Location")))
    assert located.status == 200, located
    assert located.body == data
    await assert_blob(registry, name, digest, data)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_monolithic_post_with_digest_creates_the_blob_at_once(registry):
    name, data = unique_name(), blob_data("single post")
    digest = sha256_digest(data)
    reply = await fetch("POST", with_query(url(registry, f"/v2/{name}/blobs/uploads/"), digest=digest), data, OCTETS)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    assert resolve(registry, reply.header("Location")) == url(registry, f"/v2/{name}/blobs/{digest}"), reply
    await assert_blob(registry, name, digest, data)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_monolithic_post_with_wrong_digest(registry):
    name, data = unique_name(), blob_data("single post, wrong digest")
    wrong = sha256_digest(b"something else")
    reply = await fetch("POST", with_query(url(registry, f"/v2/{name}/blobs/uploads/"), digest=wrong), data, OCTETS)
    assert_error(reply, 400, "DIGEST_INVALID")
    await assert_no_blob(registry, name, wrong)
    await assert_no_blob(registry, name, sha256_digest(data))


@pytest_twisted.ensureDeferred
async def test_post_then_put_with_body(registry):
    name, data = unique_name(), blob_data("post then put")
    digest = sha256_digest(data)
    session = await open_session(registry, name)
    reply = await fetch("PUT", with_query(session, digest=digest), data, OCTETS)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    assert_api_version(reply)
    location = resolve(registry, reply.header("Location"))
    located = await fetch("GET", location)
    assert located.status == 200, located
    assert located.body == data
    await assert_blob(registry, name, digest, data)


@pytest_twisted.ensureDeferred
async def test_upload_empty_blob(registry):
    name = unique_name()
    session = await open_session(registry, name)
    digest = sha256_digest(b"")
    reply = await fetch("PUT", with_query(session, digest=digest), b"", OCTETS)
    assert reply.status == 201, reply
    await assert_blob(registry, name, digest, b"")


@pytest_twisted.ensureDeferred
async def test_upload_same_blob_twice(registry):
    name, data = unique_name(), blob_data("twice")
    assert await push_blob(registry, name, data) == await push_blob(registry, name, data)
    await assert_blob(registry, name, sha256_digest(data), data)


@pytest_twisted.ensureDeferred
async def test_put_with_wrong_digest(registry):
    name, data = unique_name(), blob_data("wrong digest")
    wrong = sha256_digest(b"not the data")
    session = await open_session(registry, name)
    reply = await fetch("PUT", with_query(session, digest=wrong), data, OCTETS)
    assert_error(reply, 400, "DIGEST_INVALID")
    await assert_no_blob(registry, name, wrong)
    await assert_no_blob(registry, name, sha256_digest(data))


@pytest_twisted.ensureDeferred
async def test_session_is_finished_after_put(registry):
    name, data = unique_name(), blob_data("finished")
    session = await open_session(registry, name)
    reply = await fetch("PUT", with_query(session, digest=sha256_digest(data)), data, OCTETS)
    assert reply.status == 201, reply
    reply = await fetch("GET", session)
    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")


# ------------------------------------------------------------ chunked uploads


@pytest_twisted.ensureDeferred
async def test_chunked_upload(registry):
    name = unique_name()
    data = blob_data("chunked", 25)
    digest = sha256_digest(data)
    session = await open_session(registry, name)

    reply = await patch(session, data[:10], start=0)
    assert reply.status == 202, reply
    assert parse_range(reply.header("Range")) == (0, 9), reply
    assert reply.header("Docker-Upload-UUID"), reply
    assert_api_version(reply)
    session = resolve(registry, reply.header("Location"))

    reply = await patch(session, data[10:20], start=10)
    assert reply.status == 202, reply
    assert parse_range(reply.header("Range")) == (0, 19), reply
    session = resolve(registry, reply.header("Location"))

    status = await fetch("GET", session)
    assert status.status == 204, status
    assert parse_range(status.header("Range")) == (0, 19), status
    session = resolve(registry, status.header("Location") or session)

    # the last chunk travels with the closing PUT
    reply = await fetch(
        "PUT",
        with_query(session, digest=digest),
        data[20:],
        dict(OCTETS, **{"Content-Range": "20-24", "Content-Length": "5"}),
    )
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    located = await fetch("GET", resolve(registry, reply.header("Location")))
    assert located.body == data
    await assert_blob(registry, name, digest, data)


@pytest_twisted.ensureDeferred
async def test_chunked_upload_closed_by_empty_put(registry):
    name = unique_name()
    data = blob_data("chunked, empty put", 3000)
    digest = sha256_digest(data)
    session = await open_session(registry, name)
    for start in range(0, len(data), 1024):
        reply = await patch(session, data[start : start + 1024], start=start)
        assert reply.status == 202, reply
        assert parse_range(reply.header("Range")) == (0, min(start + 1024, len(data)) - 1), reply
        session = resolve(registry, reply.header("Location"))
    reply = await fetch("PUT", with_query(session, digest=digest), b"")
    assert reply.status == 201, reply
    await assert_blob(registry, name, digest, data)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_chunk_out_of_order(registry):
    """
    A chunk that does not start where the upload ends: 416 (the reference
    2.8 ignores Content-Range and appends it).  The session keeps what it had
    and goes on accepting the right chunk.
    """
    name = unique_name()
    data = blob_data("out of order", 30)
    session = await open_session(registry, name)
    reply = await patch(session, data[:10], start=0)
    assert reply.status == 202, reply
    session = resolve(registry, reply.header("Location"))

    reply = await patch(session, data[20:], start=20)  # skips 10-19
    assert_error(reply, 416)
    reply = await patch(session, data[:10], start=0)  # repeats 0-9
    assert_error(reply, 416)

    status = await fetch("GET", session)
    assert status.status == 204, status
    assert parse_range(status.header("Range")) == (0, 9), status

    await patch_rest_and_finish(registry, name, session, data, 10)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_chunk_content_range_must_match_its_length(registry):
    name = unique_name()
    session = await open_session(registry, name)
    reply = await fetch(
        "PATCH", session, b"0123456789", dict(OCTETS, **{"Content-Range": "0-19", "Content-Length": "10"})
    )
    assert reply.status in (400, 416), reply
    assert_error(reply, reply.status)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_first_chunk_must_start_at_zero(registry):
    """
    The first PATCH of a fresh session claims to start at 10: 416 (the
    reference 2.8 ignores Content-Range and appends it).  Nothing was
    written, so a chunk from 0 is still accepted.
    """
    name = unique_name()
    data = blob_data("skips ahead", 20)
    session = await open_session(registry, name)
    reply = await patch(session, data[10:], start=10)
    assert_error(reply, 416)

    await patch_rest_and_finish(registry, name, session, data, 0)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_closing_put_out_of_order(registry):
    """
    The closing PUT carries a last chunk whose Content-Range does not
    continue the upload: 416, and no blob (the reference 2.8 ignores
    Content-Range).  The session is not finished by it: the missing chunk
    and then the same PUT complete the upload.
    """
    name = unique_name()
    data = blob_data("closing put out of order", 30)
    digest = sha256_digest(data)
    session = await open_session(registry, name)
    reply = await patch(session, data[:10], start=0)
    assert reply.status == 202, reply
    session = resolve(registry, reply.header("Location"))

    last = dict(OCTETS, **{"Content-Range": "20-29", "Content-Length": "10"})
    reply = await fetch("PUT", with_query(session, digest=digest), data[20:], last)  # skips 10-19
    assert_error(reply, 416)
    await assert_no_blob(registry, name, digest)

    status = await fetch("GET", session)
    assert status.status == 204, status
    assert parse_range(status.header("Range")) == (0, 9), status

    reply = await patch(session, data[10:20], start=10)
    assert reply.status == 202, reply
    session = resolve(registry, reply.header("Location"))
    reply = await fetch("PUT", with_query(session, digest=digest), data[20:], last)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    await assert_blob(registry, name, digest, data)


@pytest.mark.parametrize("how", ["chunked", "streamed"])
@pytest_twisted.ensureDeferred
async def test_wrong_digest_after_patches(registry, how):
    """
    Every byte arrived (in Content-Range chunks, or streamed with a last part
    in the PUT), but the closing PUT names another digest: refused, and no
    blob under either digest.
    """
    name = unique_name()
    data = blob_data(f"{how}, wrong digest", 40)
    wrong = sha256_digest(b"not the upload")
    session = await open_session(registry, name)
    if how == "chunked":
        for start in (0, 20):
            reply = await patch(session, data[start : start + 20], start=start)
            assert reply.status == 202, reply
            session = resolve(registry, reply.header("Location"))
        reply = await fetch("PUT", with_query(session, digest=wrong), b"")
    else:
        reply = await fetch("PATCH", session, data[:30], OCTETS)
        assert reply.status == 202, reply
        session = resolve(registry, reply.header("Location"))
        reply = await fetch("PUT", with_query(session, digest=wrong), data[30:], OCTETS)
    assert_error(reply, 400, "DIGEST_INVALID")
    await assert_no_blob(registry, name, wrong)
    await assert_no_blob(registry, name, sha256_digest(data))


@pytest_twisted.ensureDeferred
async def test_streamed_upload(registry):
    """PATCH without Content-Range appends whatever arrives (the "streamed" upload)."""
    name = unique_name()
    data = blob_data("streamed", 51)
    digest = sha256_digest(data)
    session = await open_session(registry, name)
    reply = await fetch("PATCH", session, data[:20], OCTETS)
    assert reply.status == 202, reply
    assert parse_range(reply.header("Range")) == (0, 19), reply
    session = resolve(registry, reply.header("Location"))
    reply = await fetch("PATCH", session, data[20:], OCTETS)
    assert reply.status == 202, reply
    assert parse_range(reply.header("Range")) == (0, 50), reply
    session = resolve(registry, reply.header("Location"))
    reply = await fetch("PUT", with_query(session, digest=digest), b"")
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    await assert_blob(registry, name, digest, data)


@pytest_twisted.ensureDeferred
async def test_streamed_upload_of_a_large_blob(registry):
    name = unique_name()
    data = hashlib.sha256(b"seed").digest() * (3 * 32768 + 5)  # ~3 MiB
    digest = sha256_digest(data)
    session = await open_session(registry, name)
    chunk = 1 << 20
    for start in range(0, len(data), chunk):
        reply = await fetch("PATCH", session, data[start : start + chunk], OCTETS)
        assert reply.status == 202, reply
        session = resolve(registry, reply.header("Location"))
    assert parse_range(reply.header("Range")) == (0, len(data) - 1)
    reply = await fetch("PUT", with_query(session, digest=digest), b"")
    assert reply.status == 201, reply
    got = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert got.status == 200
    assert sha256_digest(got.body) == digest


@pytest_twisted.ensureDeferred
async def test_streamed_upload_with_chunked_transfer_encoding(registry):
    """
    How docker and containerd stream a layer: PATCH without Content-Range and
    without Content-Length, the body in HTTP chunks (``Transfer-Encoding:
    chunked``); the registry learns the length only at the end of the body.
    """
    name = unique_name()
    data = blob_data("transfer-encoding chunked", 100_000)
    digest = sha256_digest(data)
    session = await open_session(registry, name)
    reply = await fetch("PATCH", session, chunked(data), OCTETS)
    assert reply.status == 202, reply
    assert parse_range(reply.header("Range")) == (0, len(data) - 1), reply
    session = resolve(registry, reply.header("Location"))
    reply = await fetch("PUT", with_query(session, digest=digest), b"")
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    await assert_blob(registry, name, digest, data)


# ------------------------------------------------------- cancelling sessions


@pytest_twisted.ensureDeferred
async def test_delete_upload(registry):
    name = unique_name()
    session = await open_session(registry, name)
    reply = await patch(session, b"some bytes", start=0)
    assert reply.status == 202, reply
    session = resolve(registry, reply.header("Location"))

    reply = await fetch("DELETE", session)
    assert reply.status == 204, reply
    assert_api_version(reply)

    reply = await fetch("GET", session)
    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")
    reply = await patch(session, b"more", start=10)
    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")
    reply = await fetch("PUT", with_query(session, digest=sha256_digest(b"some bytes")), b"")
    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")
    reply = await fetch("DELETE", session)
    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_unknown_upload_session(registry):
    """The reference says BLOB_UPLOAD_INVALID for a session id it never issued; the spec says UNKNOWN."""
    name = unique_name()
    await push_blob(registry, name, blob_data("make the repository"))
    session = url(registry, f"/v2/{name}/blobs/uploads/0b8c1d2e3f4a4b5c8d9e0f1a2b3c4d5e")
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        target = with_query(session, digest=sha256_digest(b"x")) if method == "PUT" else session
        reply = await fetch(method, target, b"x" if method in ("PATCH", "PUT") else None, OCTETS)
        assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_unknown_upload_session_is_blob_upload_unknown(registry):
    name = unique_name()
    await push_blob(registry, name, blob_data("make the repository"))
    for upload in ("0b8c1d2e3f4a4b5c8d9e0f1a2b3c4d5e", "not-a-session", "0b8c1d2e-3f4a-4b5c-8d9e-0f1a2b3c4d5e"):
        session = url(registry, f"/v2/{name}/blobs/uploads/{upload}")
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            target = with_query(session, digest=sha256_digest(b"x")) if method == "PUT" else session
            reply = await fetch(method, target, b"x" if method in ("PATCH", "PUT") else None, OCTETS)
            assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_upload_session_belongs_to_its_repository(registry):
    name, other = unique_name(), unique_name()
    session = (await start_upload(registry, name)).header("Docker-Upload-UUID")
    await push_blob(registry, other, blob_data("make the other repository"))
    reply = await fetch("GET", url(registry, f"/v2/{other}/blobs/uploads/{session}"))
    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")


# ------------------------------------------------------------------- mounts


@pytest_twisted.ensureDeferred
async def test_cross_repository_mount(registry):
    source, target = unique_name(), unique_name()
    data = blob_data("mounted")
    digest = await push_blob(registry, source, data)
    reply = await mount(registry, target, digest, source)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    assert_api_version(reply)
    location = resolve(registry, reply.header("Location"))
    assert location == url(registry, f"/v2/{target}/blobs/{digest}"), reply
    located = await fetch("GET", location)
    assert located.status == 200, located
    assert located.body == data
    await assert_blob(registry, target, digest, data)
    await assert_blob(registry, source, digest, data)


@pytest_twisted.ensureDeferred
async def test_mount_from_repository_without_the_blob(registry):
    """The blob is not in ``from``: the registry opens an ordinary session instead (202)."""
    source, target = unique_name(), unique_name()
    data = blob_data("not in the source")
    await push_blob(registry, source, blob_data("something else in the source"))
    await push_blob(registry, unique_name(), data)  # the blob exists, but elsewhere
    digest = sha256_digest(data)
    reply = await mount(registry, target, digest, source)
    assert reply.status == 202, reply
    assert reply.header("Docker-Upload-UUID"), reply
    await assert_no_blob(registry, target, digest)
    # the session is a real one
    reply = await fetch("PUT", with_query(resolve(registry, reply.header("Location")), digest=digest), data, OCTETS)
    assert reply.status == 201, reply
    await assert_blob(registry, target, digest, data)


@pytest_twisted.ensureDeferred
async def test_mount_from_unknown_repository(registry):
    target = unique_name()
    digest = sha256_digest(blob_data("nowhere"))
    reply = await mount(registry, target, digest, unique_name())
    assert reply.status == 202, reply
    assert reply.header("Location"), reply
    await assert_no_blob(registry, target, digest)


@pytest_twisted.ensureDeferred
async def test_mount_without_from(registry):
    """Without ``from`` a registry MAY find the blob itself (201) or open a session (202)."""
    source, target = unique_name(), unique_name()
    data = blob_data("mount without from")
    digest = await push_blob(registry, source, data)
    reply = await mount(registry, target, digest)
    assert reply.status in (201, 202), reply
    if reply.status == 201:
        await assert_blob(registry, target, digest, data)
    else:
        await assert_no_blob(registry, target, digest)


@pytest_twisted.ensureDeferred
async def test_mount_of_unknown_blob(registry):
    source, target = unique_name(), unique_name()
    await push_blob(registry, source, blob_data("source"))
    digest = sha256_digest(blob_data("never pushed"))
    reply = await mount(registry, target, digest, source)
    assert reply.status == 202, reply
    await assert_no_blob(registry, target, digest)


# ---------------------------------------------------------------- manifests


async def _blobs_for_manifest(registry, name):
    config, layer = image_config(unique_tag()), blob_data("layer", 100)
    await push_blobs(registry, name, config, layer)
    return config, layer


@pytest_twisted.ensureDeferred
async def test_put_manifest_by_tag(registry):
    name, tag = unique_name(), unique_tag()
    config, layer = await _blobs_for_manifest(registry, name)
    manifest = image_manifest(config, [layer])
    digest = sha256_digest(manifest)
    reply = await put_manifest(registry, name, tag, manifest)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    assert_api_version(reply)
    location = reply.header("Location")
    assert location, reply
    located = await fetch("GET", resolve(registry, location), headers={"Accept": OCI_MANIFEST})
    assert located.status == 200, located
    assert located.body == manifest
    await assert_manifest_body(registry, name, (tag, digest), manifest)


@pytest_twisted.ensureDeferred
async def test_put_manifest_by_digest(registry):
    name = unique_name()
    config, layer = await _blobs_for_manifest(registry, name)
    manifest = image_manifest(config, [layer], annotations={"org.example.by": "digest"})
    digest = sha256_digest(manifest)
    reply = await put_manifest(registry, name, digest, manifest)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    assert resolve(registry, reply.header("Location")) == url(registry, f"/v2/{name}/manifests/{digest}"), reply
    reply = await get_manifest(registry, name, digest)
    assert reply.status == 200, reply
    assert reply.body == manifest
    assert reply.header("Content-Type") == OCI_MANIFEST


@pytest_twisted.ensureDeferred
async def test_put_manifest_location_is_by_digest(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    assert resolve(registry, image.reply.header("Location")) == url(registry, f"/v2/{name}/manifests/{image.digest}")


@pytest_twisted.ensureDeferred
async def test_put_manifest_keeps_exact_bytes(registry):
    """Odd but valid JSON (key order, spacing, unicode escapes) must come back byte for byte."""
    name = unique_name()
    config, layer = await _blobs_for_manifest(registry, name)
    # % keeps the document's own braces readable
    body = (
        '{ "layers" : [ {"size":%d, "digest":"%s", "mediaType":"%s"} ],\n'  # noqa: UP031
        '\t"annotations": {"caf\\u00e9": "\u00e9t\u00e9"}, "schemaVersion" : 2,'
        ' "config": {"mediaType":"%s","size":%d,"digest":"%s"},'
        ' "mediaType": "%s"   }'
        % (len(layer), sha256_digest(layer), OCI_LAYER, OCI_CONFIG, len(config), sha256_digest(config), OCI_MANIFEST)
    ).encode()
    reply = await put_manifest(registry, name, "odd", body)
    assert reply.status == 201, reply
    assert_digest_header(reply, sha256_digest(body))
    reply = await get_manifest(registry, name, "odd")
    assert reply.body == body


@pytest_twisted.ensureDeferred
async def test_put_manifest_under_several_tags(registry):
    name = unique_name()
    image = await push_image(registry, name, "one")
    for tag in ("two", "three"):
        reply = await put_manifest(registry, name, tag, image.manifest)
        assert reply.status == 201, reply
        assert_digest_header(reply, image.digest)
    for tag in ("one", "two", "three"):
        reply = await get_manifest(registry, name, tag)
        assert reply.body == image.manifest
        assert_digest_header(reply, image.digest)


@pytest_twisted.ensureDeferred
async def test_put_manifest_moves_a_tag(registry):
    name = unique_name()
    first = await push_image(registry, name, "moving")
    second = await push_image(registry, name, "moving")
    assert first.digest != second.digest
    reply = await get_manifest(registry, name, "moving")
    assert reply.body == second.manifest
    assert_digest_header(reply, second.digest)
    # the old manifest is still there by digest
    reply = await get_manifest(registry, name, first.digest)
    assert reply.status == 200, reply
    assert reply.body == first.manifest


@pytest_twisted.ensureDeferred
async def test_put_same_manifest_twice(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    reply = await put_manifest(registry, name, tag, image.manifest)
    assert reply.status == 201, reply
    assert_digest_header(reply, image.digest)


@pytest_twisted.ensureDeferred
async def test_put_manifest_with_tag_allowed_characters(registry):
    name = unique_name()
    image = await push_image(registry, name, "v1")
    for tag in ("_underscore", "A.B-c_D", "9", "x" * 128):
        reply = await put_manifest(registry, name, tag, image.manifest)
        assert reply.status == 201, (tag, reply)
        reply = await get_manifest(registry, name, tag)
        assert reply.status == 200, (tag, reply)
        assert reply.body == image.manifest


@pytest_twisted.ensureDeferred
async def test_put_manifest_with_several_layers(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag, layers=5)
    reply = await get_manifest(registry, name, tag)
    assert reply.body == image.manifest
    assert len(json.loads(reply.body)["layers"]) == 5


@pytest_twisted.ensureDeferred
async def test_put_manifest_without_layers(registry):
    name = unique_name()
    config = image_config(unique_tag())
    await push_blob(registry, name, config)
    manifest = image_manifest(config, [])
    reply = await put_manifest(registry, name, "no-layers", manifest)
    assert reply.status == 201, reply
    reply = await get_manifest(registry, name, "no-layers")
    assert reply.body == manifest


@pytest_twisted.ensureDeferred
async def test_put_manifest_with_chunked_transfer_encoding(registry):
    """A manifest body without Content-Length, in HTTP chunks: stored as sent."""
    name, tag = unique_name(), unique_tag()
    config, layer = await _blobs_for_manifest(registry, name)
    manifest = image_manifest(config, [layer], annotations={"org.example.sent": "chunked"})
    digest = sha256_digest(manifest)
    reply = await put_manifest(registry, name, tag, chunked(manifest, piece=100))
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    await assert_manifest_body(registry, name, (tag, digest), manifest)


@pytest_twisted.ensureDeferred
async def test_put_manifest_without_media_type_field(registry):
    """
    ``mediaType`` is optional in an OCI image manifest (image-spec 1.0
    manifests have none); the Content-Type says what it is, and GET
    answers with that type.
    """
    name = unique_name()
    config = image_config(unique_tag())
    await push_blob(registry, name, config)
    manifest = encode({"schemaVersion": 2, "config": descriptor(OCI_CONFIG, config), "layers": []})
    reply = await put_manifest(registry, name, "untyped", manifest, OCI_MANIFEST)
    assert reply.status == 201, reply
    assert_digest_header(reply, sha256_digest(manifest))
    for method in ("GET", "HEAD"):
        reply = await get_manifest(registry, name, "untyped", method=method)
        assert reply.status == 200, reply
        assert reply.header("Content-Type") == OCI_MANIFEST, reply
        assert_digest_header(reply, sha256_digest(manifest))
    assert (await get_manifest(registry, name, "untyped")).body == manifest


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_put_manifest_with_non_distributable_layer(registry):
    """
    A non-distributable layer is fetched from its ``urls``, never pushed:
    the registry must not require the blob (it does require the others).
    The reference 2.8 refuses any manifest with ``urls`` (500, with a
    MANIFEST_BLOB_UNKNOWN among its errors) unless its configuration has
    ``validation.manifests.urls.allow``.
    """
    name = unique_name()
    config, layer = await _blobs_for_manifest(registry, name)
    foreign = blob_data("foreign layer, never pushed", 500)
    manifest = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [
                descriptor(
                    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
                    foreign,
                    urls=[f"https://layers.example.com/{sha256_digest(foreign)}"],
                ),
                descriptor(OCI_LAYER, layer),
            ],
        }
    )
    reply = await put_manifest(registry, name, "foreign", manifest)
    assert reply.status == 201, reply
    assert_digest_header(reply, sha256_digest(manifest))
    reply = await get_manifest(registry, name, "foreign")
    assert reply.status == 200, reply
    assert reply.body == manifest
    await assert_no_blob(registry, name, sha256_digest(foreign))


def embedded(media_type: str, content: bytes, **extra) -> dict:
    """A descriptor that also carries its content, base64 in ``data`` (image-spec 1.1)."""
    return {**descriptor(media_type, content), "data": base64.b64encode(content).decode(), **extra}


@pytest_twisted.ensureDeferred
async def test_put_manifests_with_data_and_unknown_fields(registry):
    """
    Descriptors may embed their content (``data``) and, like the documents
    around them, carry fields the image-spec does not define (which
    implementations MUST ignore, not refuse): a manifest and an index with
    both are stored byte for byte.
    """
    name = unique_name()
    config, layer = await _blobs_for_manifest(registry, name)
    manifest = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": embedded(OCI_CONFIG, config, **{"org.example.future": {"nested": [1, 2.5, None]}}),
            "layers": [embedded(OCI_LAYER, layer, unknownField=True)],
            "org.example.extension": "manifest",
        }
    )
    digest = sha256_digest(manifest)
    reply = await put_manifest(registry, name, "with-data", manifest)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    index = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                embedded(OCI_MANIFEST, manifest, platform={"architecture": "amd64", "os": "linux"}, unknownField="kept")
            ],
            "org.example.extension": {"index": True},
        }
    )
    reply = await put_manifest(registry, name, "index-with-data", index, OCI_INDEX)
    assert reply.status == 201, reply
    assert_digest_header(reply, sha256_digest(index))
    for reference, body in (
        ("with-data", manifest),
        (digest, manifest),
        ("index-with-data", index),
        (sha256_digest(index), index),
    ):
        reply = await get_manifest(registry, name, reference)
        assert reply.status == 200, reply
        assert reply.body == body


@pytest_twisted.ensureDeferred
async def test_put_artifact_manifest_with_empty_config(registry):
    """An OCI 1.1 artifact: the empty config ``{}``, an ``artifactType`` and arbitrary layer types."""
    name = unique_name()
    payload = blob_data("artifact payload")
    await push_blobs(registry, name, b"{}", payload)
    manifest = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.thing",
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [descriptor("application/vnd.example.thing.layer", payload)],
            "annotations": {"org.opencontainers.image.title": "thing"},
        }
    )
    reply = await put_manifest(registry, name, "artifact", manifest)
    assert reply.status == 201, reply
    assert_digest_header(reply, sha256_digest(manifest))
    reply = await get_manifest(registry, name, "artifact")
    assert reply.status == 200, reply
    assert reply.body == manifest
    assert reply.header("Content-Type") == OCI_MANIFEST


@pytest_twisted.ensureDeferred
async def test_put_oci_index(registry):
    name, tag = unique_name(), unique_tag()
    images = [await push_image(registry, name) for _ in range(3)]
    body, digest, reply = await push_index(registry, name, tag, images)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    assert resolve(registry, reply.header("Location")) == url(registry, f"/v2/{name}/manifests/{digest}"), reply
    reply = await get_manifest(registry, name, tag)
    assert reply.body == body
    assert reply.header("Content-Type") == OCI_INDEX


@pytest_twisted.ensureDeferred
async def test_put_oci_index_by_digest(registry):
    name = unique_name()
    images = [await push_image(registry, name) for _ in range(2)]
    body, digest, reply = await push_index(registry, name, None, images, annotations={"by": "digest"})
    assert reply.status == 201, reply
    reply = await get_manifest(registry, name, digest)
    assert reply.body == body


@pytest_twisted.ensureDeferred
async def test_put_index_of_indexes(registry):
    name = unique_name()
    images = [await push_image(registry, name) for _ in range(2)]
    inner, inner_digest, _ = await push_index(registry, name, None, images)
    outer = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_INDEX, "digest": inner_digest, "size": len(inner)}],
        }
    )
    reply = await put_manifest(registry, name, "nested", outer, OCI_INDEX)
    assert reply.status == 201, reply
    reply = await get_manifest(registry, name, "nested")
    assert reply.body == outer


@pytest_twisted.ensureDeferred
async def test_put_empty_oci_index(registry):
    """An index listing no manifests at all is valid (``manifests`` is required, not non-empty)."""
    name = unique_name()
    index = encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    digest = sha256_digest(index)
    reply = await put_manifest(registry, name, "empty", index, OCI_INDEX)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    for reference in ("empty", digest):
        reply = await get_manifest(registry, name, reference)
        assert reply.status == 200, reply
        assert reply.body == index
        assert reply.header("Content-Type") == OCI_INDEX, reply
        assert reply.json()["manifests"] == []


@pytest_twisted.ensureDeferred
async def test_put_docker_schema2_manifest(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag, docker=True)
    assert image.reply.status == 201
    assert_digest_header(image.reply, image.digest)
    reply = await get_manifest(registry, name, tag)
    assert reply.body == image.manifest
    assert reply.header("Content-Type") == DOCKER_MANIFEST


@pytest_twisted.ensureDeferred
async def test_put_docker_manifest_list(registry):
    name, tag = unique_name(), unique_tag()
    images = [await push_image(registry, name, docker=True) for _ in range(2)]
    body, digest, reply = await push_index(registry, name, tag, images, docker=True)
    assert reply.status == 201, reply
    assert_digest_header(reply, digest)
    reply = await get_manifest(registry, name, tag)
    assert reply.body == body
    assert reply.header("Content-Type") == DOCKER_LIST


@pytest_twisted.ensureDeferred
async def test_put_manifest_with_missing_layer(registry):
    name = unique_name()
    config, _ = await _blobs_for_manifest(registry, name)
    manifest = image_manifest(config, [blob_data("never pushed")])
    reply = await put_manifest(registry, name, "missing-layer", manifest)
    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(await get_manifest(registry, name, "missing-layer"), 404, "MANIFEST_UNKNOWN")
    assert_error(await get_manifest(registry, name, sha256_digest(manifest)), 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_put_manifest_with_missing_config(registry):
    name = unique_name()
    _, layer = await _blobs_for_manifest(registry, name)
    manifest = image_manifest(image_config("never pushed " + unique_tag()), [layer])
    reply = await put_manifest(registry, name, "missing-config", manifest)
    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(await get_manifest(registry, name, "missing-config"), 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_put_manifest_with_blob_of_another_repository(registry):
    """Blobs are per repository: one pushed elsewhere does not count (mount it first)."""
    name, other = unique_name(), unique_name()
    config, layer = await _blobs_for_manifest(registry, other)
    reply = await put_manifest(registry, name, "elsewhere", image_manifest(config, [layer]))
    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_put_index_with_missing_manifest(registry):
    name = unique_name()
    image = await push_image(registry, name)
    missing = image_manifest(image_config("missing " + unique_tag()), [])
    index = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)},
                descriptor(OCI_MANIFEST, missing),
            ],
        }
    )
    reply = await put_manifest(registry, name, "sparse", index, OCI_INDEX)
    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_put_manifest_invalid_json(registry):
    name = unique_name()
    await _blobs_for_manifest(registry, name)
    for body in (b"{not json", b"", b"\xff\xfe\x00", b'{"schemaVersion": 2, "mediaType": '):
        reply = await put_manifest(registry, name, "broken", body)
        assert_error(reply, 400, "MANIFEST_INVALID")
    assert_error(await get_manifest(registry, name, "broken"), 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_put_manifest_digest_mismatch(registry):
    name = unique_name()
    config, layer = await _blobs_for_manifest(registry, name)
    manifest = image_manifest(config, [layer])
    other = image_manifest(config, [layer], annotations={"a": "b"})
    reply = await put_manifest(registry, name, sha256_digest(other), manifest)
    assert_error(reply, 400, "DIGEST_INVALID")
    assert_error(await get_manifest(registry, name, sha256_digest(other)), 404, "MANIFEST_UNKNOWN")
    assert_error(await get_manifest(registry, name, sha256_digest(manifest)), 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_pushed_image_is_complete(registry):
    """An end-to-end push as a client does it, then a pull of everything by what the manifest says."""
    name, tag = unique_name(), "latest"
    image = await push_image(registry, name, tag, layers=2)
    manifest = (await get_manifest(registry, name, tag)).json()
    assert manifest["config"]["digest"] == sha256_digest(image.config)
    for desc, data in zip(manifest["layers"], image.layers, strict=True):
        await assert_blob(registry, name, desc["digest"], data)
