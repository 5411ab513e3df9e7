"""
Content management: deleting manifests (by digest, and by tag) and blobs,
after the OCI conformance suite's ``04_management_test.go``.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from api_helpers import (
    assert_api_version,
    assert_error,
    assert_manifest_body,
    fetch,
    get,
    get_manifest,
    mount,
    push_blob,
    push_image,
    push_index,
    put_manifest,
    sha256_digest,
    unique_name,
    unique_tag,
    url,
)


async def delete(registry, path: str):
    return await fetch("DELETE", url(registry, path))


async def tags_of(registry, name: str) -> list[str]:
    reply = await get(registry, f"/v2/{name}/tags/list")
    if reply.status == 404:
        return []
    assert reply.status == 200, reply
    return sorted(reply.json()["tags"] or [])


# ---------------------------------------------------------------- manifests


@pytest_twisted.ensureDeferred
async def test_delete_manifest_by_digest(registry):
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag)
    reply = await delete(registry, f"/v2/{name}/manifests/{image.digest}")
    assert reply.status == 202, reply
    assert_api_version(reply)
    assert_error(await get_manifest(registry, name, image.digest), 404, "MANIFEST_UNKNOWN")
    assert_error(await get_manifest(registry, name, image.digest, method="HEAD"), 404)


@pytest_twisted.ensureDeferred
async def test_delete_manifest_by_digest_removes_its_tags(registry):
    name = unique_name()
    image = await push_image(registry, name, "a")
    await put_manifest(registry, name, "b", image.manifest)
    other = await push_image(registry, name, "c")
    reply = await delete(registry, f"/v2/{name}/manifests/{image.digest}")
    assert reply.status == 202, reply
    for tag in ("a", "b"):
        assert_error(await get_manifest(registry, name, tag), 404, "MANIFEST_UNKNOWN")
    assert await tags_of(registry, name) == ["c"]
    reply = await get_manifest(registry, name, "c")
    assert reply.status == 200, reply
    assert reply.body == other.manifest


@pytest_twisted.ensureDeferred
async def test_delete_manifest_twice(registry):
    name = unique_name()
    image = await push_image(registry, name, "v1")
    assert (await delete(registry, f"/v2/{name}/manifests/{image.digest}")).status == 202
    reply = await delete(registry, f"/v2/{name}/manifests/{image.digest}")
    assert_error(reply, 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_unknown_manifest(registry):
    name = unique_name()
    await push_image(registry, name, "v1")
    reply = await delete(registry, f"/v2/{name}/manifests/{sha256_digest(b'never pushed')}")
    assert_error(reply, 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_manifest_in_unknown_repository(registry):
    reply = await delete(registry, f"/v2/{unique_name()}/manifests/{sha256_digest(b'never pushed')}")
    assert_error(reply, 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_manifest_keeps_its_blobs(registry):
    """Deleting a manifest does not delete the blobs it referenced (that is garbage collection's job)."""
    name = unique_name()
    image = await push_image(registry, name, "v1")
    assert (await delete(registry, f"/v2/{name}/manifests/{image.digest}")).status == 202
    for data in (image.config, *image.layers):
        reply = await get(registry, f"/v2/{name}/blobs/{sha256_digest(data)}")
        assert reply.status == 200, reply
        assert reply.body == data


@pytest_twisted.ensureDeferred
async def test_delete_manifest_then_push_it_again(registry):
    name = unique_name()
    image = await push_image(registry, name, "again")
    assert (await delete(registry, f"/v2/{name}/manifests/{image.digest}")).status == 202
    reply = await put_manifest(registry, name, "again", image.manifest)
    assert reply.status == 201, reply
    reply = await get_manifest(registry, name, "again")
    assert reply.status == 200, reply
    assert reply.body == image.manifest


@pytest_twisted.ensureDeferred
async def test_delete_manifest_in_one_repository_only(registry):
    name, other = unique_name(), unique_name()
    seed = "shared " + unique_tag()
    image = await push_image(registry, name, "v1", seed=seed)
    twin = await push_image(registry, other, "v1", seed=seed)
    assert twin.digest == image.digest
    assert (await delete(registry, f"/v2/{name}/manifests/{image.digest}")).status == 202
    reply = await get_manifest(registry, other, "v1")
    assert reply.status == 200, reply
    assert reply.body == image.manifest


@pytest_twisted.ensureDeferred
async def test_delete_index_by_digest(registry):
    name = unique_name()
    images = [await push_image(registry, name) for _ in range(2)]
    _, digest, _ = await push_index(registry, name, "multi", images)
    reply = await delete(registry, f"/v2/{name}/manifests/{digest}")
    assert reply.status == 202, reply
    assert_error(await get_manifest(registry, name, "multi"), 404, "MANIFEST_UNKNOWN")
    for image in images:  # its members stay
        assert (await get_manifest(registry, name, image.digest)).status == 200


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_delete_manifest_by_tag(registry):
    """
    DELETE by tag removes the tag only (spec 1.1); the manifest and its
    other tags stay.  The reference 2.8 answers 400 DIGEST_INVALID instead.
    """
    name = unique_name()
    image = await push_image(registry, name, "doomed")
    await put_manifest(registry, name, "kept", image.manifest)
    reply = await delete(registry, f"/v2/{name}/manifests/doomed")
    assert reply.status == 202, reply
    assert_api_version(reply)
    assert_error(await get_manifest(registry, name, "doomed"), 404, "MANIFEST_UNKNOWN")
    assert await tags_of(registry, name) == ["kept"]
    await assert_manifest_body(registry, name, ("kept", image.digest), image.manifest)


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_delete_unknown_tag(registry):
    name = unique_name()
    await push_image(registry, name, "v1")
    reply = await delete(registry, f"/v2/{name}/manifests/no-such-tag")
    assert_error(reply, 404, "MANIFEST_UNKNOWN")


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_delete_last_tag_keeps_manifest(registry):
    name = unique_name()
    image = await push_image(registry, name, "only")
    assert (await delete(registry, f"/v2/{name}/manifests/only")).status == 202
    assert await tags_of(registry, name) == []
    reply = await get_manifest(registry, name, image.digest)
    assert reply.status == 200, reply


# -------------------------------------------------------------------- blobs


@pytest_twisted.ensureDeferred
async def test_delete_blob(registry):
    name = unique_name()
    data = f"to be deleted {unique_tag()}".encode()
    digest = await push_blob(registry, name, data)
    reply = await delete(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 202, reply
    assert_api_version(reply)
    assert_error(await get(registry, f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(await fetch("HEAD", url(registry, f"/v2/{name}/blobs/{digest}")), 404)


@pytest_twisted.ensureDeferred
async def test_delete_blob_twice(registry):
    name = unique_name()
    digest = await push_blob(registry, name, f"twice {unique_tag()}".encode())
    assert (await delete(registry, f"/v2/{name}/blobs/{digest}")).status == 202
    reply = await delete(registry, f"/v2/{name}/blobs/{digest}")
    assert_error(reply, 404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_unknown_blob(registry):
    name = unique_name()
    await push_blob(registry, name, f"something {unique_tag()}".encode())
    reply = await delete(registry, f"/v2/{name}/blobs/{sha256_digest(b'never pushed')}")
    assert_error(reply, 404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_blob_in_one_repository_only(registry):
    name, other = unique_name(), unique_name()
    data = f"in two repositories {unique_tag()}".encode()
    digest = await push_blob(registry, name, data)
    reply = await mount(registry, other, digest, name)
    assert reply.status == 201, reply
    assert (await delete(registry, f"/v2/{name}/blobs/{digest}")).status == 202
    assert_error(await get(registry, f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    reply = await get(registry, f"/v2/{other}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data


@pytest_twisted.ensureDeferred
async def test_delete_blob_then_push_it_again(registry):
    name = unique_name()
    data = f"comes back {unique_tag()}".encode()
    digest = await push_blob(registry, name, data)
    assert (await delete(registry, f"/v2/{name}/blobs/{digest}")).status == 202
    assert await push_blob(registry, name, data) == digest
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data


@pytest_twisted.ensureDeferred
async def test_delete_image_like_the_conformance_suite(registry):
    """04_management: delete the manifest, then its config and layer blobs."""
    name = unique_name()
    image = await push_image(registry, name, unique_tag(), layers=2)
    assert (await delete(registry, f"/v2/{name}/manifests/{image.digest}")).status == 202
    for data in (image.config, *image.layers):
        digest = sha256_digest(data)
        assert (await delete(registry, f"/v2/{name}/blobs/{digest}")).status == 202
        assert_error(await get(registry, f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(await get_manifest(registry, name, image.digest), 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_manifest_after_its_blobs(registry):
    """
    The other order: the blobs go first.  A manifest whose blobs are gone
    can still be deleted (202), and is gone afterwards.
    """
    name, tag = unique_name(), unique_tag()
    image = await push_image(registry, name, tag, layers=2)
    for data in (image.config, *image.layers):
        digest = sha256_digest(data)
        assert (await delete(registry, f"/v2/{name}/blobs/{digest}")).status == 202
        assert_error(await get(registry, f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    reply = await delete(registry, f"/v2/{name}/manifests/{image.digest}")
    assert reply.status == 202, reply
    assert_api_version(reply)
    assert_error(await get_manifest(registry, name, image.digest), 404, "MANIFEST_UNKNOWN")
    assert_error(await get_manifest(registry, name, tag), 404, "MANIFEST_UNKNOWN")
