"""Distribution-spec 1.1+ behaviours the newest conformance suite checks."""

import os

import pytest
import pytest_twisted

from api_helpers import (
    OCI_MANIFEST,
    assert_error,
    fetch,
    get,
    image_config,
    image_manifest,
    mount,
    push_blob,
    push_blobs,
    sha256_digest,
    unique_name,
    url,
)

pytestmark = pytest.mark.ociregistry_only


@pytest_twisted.ensureDeferred
async def test_put_by_digest_with_tag_parameters(registry):
    name = unique_name()
    config = image_config("tags")
    layer = b"tagged layer"
    await push_blobs(registry, name, config, layer)
    manifest = image_manifest(config, [layer])
    digest = sha256_digest(manifest)
    reply = await fetch(
        "PUT", url(registry, f"/v2/{name}/manifests/{digest}?tag=a&tag=b"), manifest, {"Content-Type": OCI_MANIFEST}
    )
    assert reply.status == 201, reply
    assert sorted(reply.header_values("OCI-Tag")) == ["a", "b"]
    assert sorted((await get(registry, f"/v2/{name}/tags/list")).json()["tags"]) == ["a", "b"]
    for tag in ("a", "b"):
        assert (await get(registry, f"/v2/{name}/manifests/{tag}")).body == manifest
    reply = await fetch(
        "PUT", url(registry, f"/v2/{name}/manifests/{digest}?tag=-bad"), manifest, {"Content-Type": OCI_MANIFEST}
    )
    assert_error(reply, 400, "TAG_INVALID")


@pytest_twisted.ensureDeferred
async def test_mount_without_from_finds_the_blob(registry):
    source, target = unique_name(), unique_name()
    blob = os.urandom(1000)
    digest = await push_blob(registry, source, blob)
    reply = await mount(registry, target, digest)
    assert reply.status == 201, reply
    assert (await get(registry, f"/v2/{target}/blobs/{digest}")).body == blob
    # A blob no repository has: a new upload session instead.
    reply = await mount(registry, target, sha256_digest(b"nowhere"))
    assert reply.status == 202, reply


@pytest_twisted.ensureDeferred
async def test_inverted_range_is_not_satisfiable(registry):
    name = unique_name()
    digest = await push_blob(registry, name, b"0123456789")
    reply = await fetch("GET", url(registry, f"/v2/{name}/blobs/{digest}"), None, {"Range": "bytes=5-0"})
    assert reply.status == 416, reply
    assert reply.header("Content-Range") == "bytes */10"


@pytest_twisted.ensureDeferred
async def test_empty_artifact_type_filter_filters_nothing(registry):
    name = unique_name()
    reply = await get(registry, f"/v2/{name}/referrers/{sha256_digest(b'x')}?artifactType=")
    assert reply.status == 200 and reply.header("OCI-Filters-Applied") is None
