"""
Errors: invalid names, tags and digests, oversized manifests, unknown routes
and methods; the shape of every error body, the API version header on every
answer, and no request ever getting a 500.

Where the reference registry (CNCF Distribution 2.8) differs from what the
spec asks and ociregistry does, the stricter assertion is a separate test,
or a separate parameter, marked ``ociregistry_only``; the shared tests check
what both must agree on (the request is refused, and not with a 5xx).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from api_helpers import (
    API_VERSION,
    API_VERSION_HEADER,
    DOCKER_MANIFEST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_digest_header,
    assert_error,
    assert_error_shape,
    encode,
    fetch,
    get,
    get_manifest,
    image_manifest,
    mount,
    push_blob,
    push_image,
    put_manifest,
    resolve,
    sha256_digest,
    sha512_digest,
    start_upload,
    unique_name,
    url,
    with_query,
)

ociregistry_only = pytest.mark.ociregistry_only
ZERO = "sha256:" + "0" * 64


@pytest_twisted.async_fixture(scope="module")
async def image(registry):
    """One image (tag ``v1``) in a repository of its own, for the tests that only read."""
    return await push_image(registry, unique_name("errors"), "v1", layers=1)


def refused(reply) -> None:
    """Both registries agree: not accepted, and not a server error."""
    assert not 200 <= reply.status < 300, reply
    assert reply.status < 500, reply


# ------------------------------------------------------------ invalid names

# (id, name): each violates the spec's name grammar
# ``[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`` or its length.
INVALID_NAMES = [
    pytest.param("Upper", id="uppercase"),
    pytest.param("ok/Upper", id="uppercase-second-component"),
    # The reference accepts an uppercase first component when another follows.
    pytest.param("Upper/ok", id="uppercase-first-component", marks=ociregistry_only),
    pytest.param("a/../b", id="dot-dot-component"),
    pytest.param("..", id="dot-dot"),
    pytest.param("a/./b", id="dot-component"),
    pytest.param("a//b", id="empty-component"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("/a", id="leading-slash"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("a-", id="trailing-dash"),
    pytest.param("a...b", id="three-dots"),
    pytest.param("a___b", id="three-underscores"),
    pytest.param("a%20b", id="space"),
    # The reference answers these two with 500 UNKNOWN.
    pytest.param("a" * 256, id="256-chars", marks=ociregistry_only),
    pytest.param("ab/" * 85 + "a", id="256-chars-nested", marks=ociregistry_only),
]

# (method, path under /v2/<name>, body)
NAMED_ENDPOINTS = [
    ("GET", "/tags/list", None),
    ("GET", "/manifests/latest", None),
    ("HEAD", "/manifests/latest", None),
    ("PUT", "/manifests/latest", b"{}"),
    ("DELETE", f"/manifests/{ZERO}", None),
    ("GET", f"/blobs/{ZERO}", None),
    ("HEAD", f"/blobs/{ZERO}", None),
    ("DELETE", f"/blobs/{ZERO}", None),
    ("POST", "/blobs/uploads/", b""),
]


@pytest.mark.parametrize("name", INVALID_NAMES)
@pytest_twisted.ensureDeferred
async def test_invalid_name_is_refused(registry, name):
    """
    Both registries refuse an invalid name (the reference with a 404 from
    its router, or a 301 to a cleaned path for ``..``, ``.`` and ``//``).
    """
    for method, path, body in NAMED_ENDPOINTS:
        headers = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
        reply = await fetch(method, url(registry, f"/v2/{name}{path}"), body, headers)
        refused(reply)
        assert reply.header(API_VERSION_HEADER) == API_VERSION, reply


@ociregistry_only
@pytest.mark.parametrize("name", INVALID_NAMES)
@pytest_twisted.ensureDeferred
async def test_invalid_name_is_name_invalid(registry, name):
    for method, path, body in NAMED_ENDPOINTS + [("GET", f"/referrers/{ZERO}", None)]:
        headers = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
        reply = await fetch(method, url(registry, f"/v2/{name}{path}"), body, headers)
        assert_error(reply, 400, "NAME_INVALID")


@pytest_twisted.ensureDeferred
async def test_invalid_name_in_mount_source(registry):
    """A registry may refuse the bad ``from`` or fall back to an ordinary session."""
    reply = await mount(registry, unique_name(), ZERO, "Not/Valid")
    assert reply.status in (202, 400), reply
    if reply.status == 400:
        assert_error(reply, 400, "NAME_INVALID")


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "a0",
        "0",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a---b",
        "a.b/c_d/e--f",
        "a" * 255,
        "ab/" * 84 + "abc",
    ],
)
@pytest_twisted.ensureDeferred
async def test_valid_names(registry, name):
    """Unusual names that are valid: an upload opens and a blob can be pushed."""
    data = f"valid name {name[:20]}".encode()
    digest = await push_blob(registry, name, data)
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data


# ------------------------------------------------------------- invalid tags

INVALID_TAGS = [
    pytest.param("-dash", id="leading-dash"),
    pytest.param(".dot", id="leading-dot"),
    pytest.param("a" * 129, id="129-chars"),
    pytest.param("plus+sign", id="plus"),
    pytest.param("bang!", id="bang"),
    pytest.param("sp%20ace", id="space"),
    pytest.param("t%C3%A9", id="non-ascii"),
]


@pytest.mark.parametrize("tag", INVALID_TAGS)
@pytest_twisted.ensureDeferred
async def test_invalid_tag_is_refused(registry, image, tag):
    reply = await put_manifest(registry, image.name, tag, image.manifest)
    refused(reply)
    reply = await get_manifest(registry, image.name, tag)
    refused(reply)
    tags = (await get(registry, f"/v2/{image.name}/tags/list")).json()["tags"]
    assert tag not in tags and "v1" in tags


@ociregistry_only
@pytest.mark.parametrize("tag", INVALID_TAGS)
@pytest_twisted.ensureDeferred
async def test_invalid_tag_is_tag_invalid(registry, image, tag):
    """Pushing to an invalid tag is TAG_INVALID; looking one up finds nothing (404), as the
    OCI conformance suite requires of GET and HEAD."""
    reply = await put_manifest(registry, image.name, tag, image.manifest)
    assert_error(reply, 400, "TAG_INVALID")
    for method in ("GET", "HEAD", "DELETE"):
        reply = await get_manifest(registry, image.name, tag, method=method)
        assert_error(reply, 404, "MANIFEST_UNKNOWN")


# ---------------------------------------------------------- invalid digests

MALFORMED_DIGESTS = [
    pytest.param("sha256:abc", id="short"),
    pytest.param("sha256:" + "a" * 63, id="63-hex"),
    pytest.param("sha256:" + "a" * 65, id="65-hex"),
    pytest.param("sha256:" + "G" * 64, id="not-hex"),
    pytest.param("sha256:" + "A" * 64, id="uppercase-hex"),
    pytest.param("sha512:" + "a" * 64, id="sha512-too-short"),
    pytest.param("md5:" + "a" * 32, id="unsupported-md5"),
    pytest.param("foo:bar", id="unknown-algorithm"),
    # The reference's router answers 404 (text/plain) to an uppercase algorithm.
    pytest.param("SHA256:" + "a" * 64, id="uppercase-algorithm", marks=ociregistry_only),
]


@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_blob_digest(registry, image, digest):
    for method in ("GET", "HEAD", "DELETE"):
        reply = await fetch(method, url(registry, f"/v2/{image.name}/blobs/{digest}"))
        assert_error(reply, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_digest_finishing_an_upload(registry, image, digest):
    session = resolve(registry, (await start_upload(registry, image.name)).header("Location"))
    reply = await fetch(
        "PUT", with_query(session, digest=digest), b"some data", {"Content-Type": "application/octet-stream"}
    )
    assert_error(reply, 400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_upload_without_digest(registry, image):
    session = resolve(registry, (await start_upload(registry, image.name)).header("Location"))
    reply = await fetch("PUT", session, b"some data", {"Content-Type": "application/octet-stream"})
    assert_error(reply, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_manifest_digest_delete(registry, image, digest):
    reply = await fetch("DELETE", url(registry, f"/v2/{image.name}/manifests/{digest}"))
    assert_error(reply, 400, "DIGEST_INVALID")


@ociregistry_only
@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_manifest_digest(registry, image, digest):
    """The reference answers GET and PUT of these with 500."""
    for method in ("GET", "HEAD"):
        reply = await fetch(
            method, url(registry, f"/v2/{image.name}/manifests/{digest}"), headers={"Accept": MANIFEST_ACCEPT}
        )
        assert_error(reply, 400, "DIGEST_INVALID")
    reply = await put_manifest(registry, image.name, digest, image.manifest)
    assert_error(reply, 400, "DIGEST_INVALID")
    reply = await get(registry, f"/v2/{image.name}/referrers/{digest}")
    assert_error(reply, 400, "DIGEST_INVALID")


@ociregistry_only
@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_digest_in_monolithic_post(registry, image, digest):
    """The reference ignores ``?digest=`` on POST (it opens a session)."""
    reply = await fetch(
        "POST",
        with_query(url(registry, f"/v2/{image.name}/blobs/uploads/"), digest=digest),
        b"some data",
        {"Content-Type": "application/octet-stream"},
    )
    assert_error(reply, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_digest_in_mount(registry, image, digest):
    reply = await mount(registry, unique_name(), digest, image.name)
    assert reply.status in (202, 400), reply
    if reply.status == 400:
        assert_error(reply, 400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_sha512_blob_upload(registry):
    name = unique_name()
    data = b"a blob addressed by sha512 " + unique_name().encode()
    digest = sha512_digest(data)
    session = resolve(registry, (await start_upload(registry, name)).header("Location"))
    reply = await fetch("PUT", with_query(session, digest=digest), data, {"Content-Type": "application/octet-stream"})
    assert reply.status == 201, reply
    # The reference stores it under its sha256 (Location and Docker-Content-Digest
    # name that); either way the blob is served by the digest the client used.
    located = await fetch("GET", resolve(registry, reply.header("Location")))
    assert located.status == 200, located
    assert located.body == data
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data
    reply = await fetch("HEAD", url(registry, f"/v2/{name}/blobs/{digest}"))
    assert reply.status == 200, reply
    assert reply.header("Content-Length") == str(len(data))


@pytest_twisted.ensureDeferred
async def test_sha512_blob_chunked_upload(registry):
    name = unique_name()
    data = b"chunked sha512 " * 100
    digest = sha512_digest(data)
    session = resolve(registry, (await start_upload(registry, name)).header("Location"))
    reply = await fetch(
        "PATCH",
        session,
        data[:700],
        {"Content-Type": "application/octet-stream", "Content-Range": "0-699", "Content-Length": "700"},
    )
    assert reply.status == 202, reply
    reply = await fetch(
        "PUT",
        with_query(resolve(registry, reply.header("Location")), digest=digest),
        data[700:],
        {"Content-Type": "application/octet-stream"},
    )
    assert reply.status == 201, reply
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data


@pytest_twisted.ensureDeferred
async def test_sha512_upload_with_wrong_digest(registry):
    name = unique_name()
    session = resolve(registry, (await start_upload(registry, name)).header("Location"))
    reply = await fetch(
        "PUT",
        with_query(session, digest=sha512_digest(b"other")),
        b"data",
        {"Content-Type": "application/octet-stream"},
    )
    assert_error(reply, 400, "DIGEST_INVALID")


@ociregistry_only
@pytest_twisted.ensureDeferred
async def test_sha512_monolithic_post(registry):
    name = unique_name()
    data = b"monolithic sha512 " + unique_name().encode()
    digest = sha512_digest(data)
    reply = await fetch(
        "POST",
        with_query(url(registry, f"/v2/{name}/blobs/uploads/"), digest=digest),
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert reply.status == 201, reply
    reply = await get(registry, f"/v2/{name}/blobs/{digest}")
    assert reply.status == 200, reply
    assert reply.body == data


@ociregistry_only
@pytest_twisted.ensureDeferred
async def test_sha512_manifest_and_index(registry):
    """
    A manifest and an index PUT by their sha512 digest are served by that
    digest, which every answer names in Docker-Content-Digest (not a sha256
    the registry computed instead).  The reference 2.8 digests manifests
    with sha256 only and answers 400 DIGEST_INVALID to the PUT.
    """
    name = unique_name()
    member = await push_image(registry, name)
    manifest = image_manifest(member.config, member.layers, annotations={"org.example.digest": "sha512"})
    index = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": member.digest, "size": len(member.manifest)}],
        }
    )
    for body, media_type in ((manifest, OCI_MANIFEST), (index, OCI_INDEX)):
        digest = sha512_digest(body)
        reply = await put_manifest(registry, name, digest, body, media_type)
        assert reply.status == 201, reply
        assert_digest_header(reply, digest)
        for method in ("GET", "HEAD"):
            reply = await get_manifest(registry, name, digest, method=method)
            assert reply.status == 200, reply
            assert reply.header("Content-Type") == media_type, reply
            assert reply.header("Content-Length") == str(len(body)), reply
            assert_digest_header(reply, digest)
        assert (await get_manifest(registry, name, digest)).body == body


# ---------------------------------------------------------------- manifests


@pytest_twisted.ensureDeferred
async def test_manifest_content_type_must_match_its_media_type(registry, image):
    for content_type in (OCI_INDEX, DOCKER_MANIFEST):
        reply = await put_manifest(registry, image.name, "mismatch", image.manifest, content_type)
        assert_error(reply, 400, "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_manifest_not_an_object(registry, image):
    for body in (b"[]", b'"a string"', b"2"):
        reply = await put_manifest(registry, image.name, "not-an-object", body)
        assert_error(reply, 400, "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_manifest_with_wrongly_typed_fields(registry, image):
    for body in (
        b'{"schemaVersion": "2", "mediaType": "%s"}' % OCI_MANIFEST.encode(),
        b'{"schemaVersion": 2, "mediaType": "%s", "config": {}, "layers": {}}' % OCI_MANIFEST.encode(),
    ):
        reply = await put_manifest(registry, image.name, "wrong-types", body)
        assert_error(reply, 400, "MANIFEST_INVALID")


@ociregistry_only
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"null", id="null"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}', id="schema1"),
        pytest.param(b'{"schemaVersion": 2, "mediaType": "%s"}' % OCI_MANIFEST.encode(), id="no-config"),
        pytest.param(
            b'{"schemaVersion": 2, "mediaType": "%s", "config": {"mediaType": "x", "digest": "sha256:zz",'
            b' "size": -1}, "layers": []}' % OCI_MANIFEST.encode(),
            id="bad-descriptor",
        ),
        pytest.param(
            b'{"schemaVersion": 2, "mediaType": "%s", "manifests": "no"}' % OCI_INDEX.encode(), id="bad-index"
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_manifest_documents(registry, image, body):
    """The reference answers each of these with 500 (or 400 with odd codes)."""
    content_type = OCI_INDEX if b"manifests" in body else OCI_MANIFEST
    reply = await put_manifest(registry, image.name, "invalid", body, content_type)
    assert_error(reply, 400, "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_manifest_of_almost_4_mib_is_accepted(registry):
    """The spec: registries SHOULD accept manifests of at least 4 MiB."""
    image = await push_image(registry, unique_name(), "small")
    body = image_manifest(image.config, image.layers, annotations={"pad": "x" * (4 * 1024 * 1024 - 4096)})
    assert len(body) < 4 * 1024 * 1024
    reply = await put_manifest(registry, image.name, "big", body)
    assert reply.status == 201, reply
    reply = await get_manifest(registry, image.name, "big")
    assert reply.status == 200, reply.status
    assert reply.body == body


@pytest_twisted.ensureDeferred
async def test_manifest_over_4_mib_is_refused(registry, image):
    """The reference answers 400 MANIFEST_INVALID ("http: request body too large")."""
    body = image_manifest(image.config, image.layers, annotations={"pad": "x" * (4 * 1024 * 1024)})
    reply = await put_manifest(registry, image.name, "too-big", body)
    assert reply.status in (400, 413), reply
    assert_error_shape(reply)
    reply = await get_manifest(registry, image.name, "too-big")
    assert_error(reply, 404, "MANIFEST_UNKNOWN")


@ociregistry_only
@pytest_twisted.ensureDeferred
async def test_manifest_over_4_mib_is_413(registry, image):
    body = image_manifest(image.config, image.layers, annotations={"pad": "x" * (4 * 1024 * 1024)})
    reply = await put_manifest(registry, image.name, "too-big", body)
    assert_error(reply, 413)


@ociregistry_only
@pytest_twisted.ensureDeferred
async def test_manifest_over_4_mib_is_413_by_digest(registry, image):
    body = image_manifest(image.config, image.layers, annotations={"pad": "y" * (5 * 1024 * 1024)})
    reply = await put_manifest(registry, image.name, sha256_digest(body), body)
    assert_error(reply, 413)


# ---------------------------------------------------- unknown routes, methods

UNKNOWN_ROUTES = [
    "/nonsense",
    "/v3/",
    "/v2/name/nonsense",
    "/v2/name/blobs",
    "/v2/name/manifests/",
    "/v2/name/tags",
    "/v2/name/blobs/uploads/id/extra",
]


@pytest.mark.parametrize("path", UNKNOWN_ROUTES)
@pytest_twisted.ensureDeferred
async def test_unknown_route_is_404(registry, path):
    reply = await fetch("GET", url(registry, path))
    assert reply.status == 404, reply
    assert reply.header(API_VERSION_HEADER) == API_VERSION, reply


@ociregistry_only
@pytest.mark.parametrize("path", UNKNOWN_ROUTES)
@pytest_twisted.ensureDeferred
async def test_unknown_route_has_json_error(registry, path):
    """The reference answers these with a text/plain "404 page not found"."""
    reply = await fetch("GET", url(registry, path))
    assert_error(reply, 404)


WRONG_METHODS = [
    ("PATCH", "/v2/{name}/manifests/v1"),
    ("POST", "/v2/{name}/manifests/v1"),
    ("DELETE", "/v2/{name}/tags/list"),
    ("PUT", "/v2/{name}/tags/list"),
    ("PUT", "/v2/{name}/blobs/" + ZERO),
    ("POST", "/v2/_catalog"),
]


@pytest.mark.parametrize("method,path", WRONG_METHODS)
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405(registry, image, method, path):
    reply = await fetch(method, url(registry, path.format(name=image.name)), b"x" if method != "DELETE" else None)
    assert reply.status == 405, reply
    assert reply.header(API_VERSION_HEADER) == API_VERSION, reply


@ociregistry_only
@pytest.mark.parametrize("method,path", WRONG_METHODS)
@pytest_twisted.ensureDeferred
async def test_wrong_method_has_json_error(registry, image, method, path):
    reply = await fetch(method, url(registry, path.format(name=image.name)), b"x" if method != "DELETE" else None)
    assert_error(reply, 405, "UNSUPPORTED")


# ------------------------------------------------- every answer, every error


def error_requests(image):
    """Requests that fail with an error of the registry's own (not of its router), in both registries."""
    name = image.name
    return [
        ("GET", f"/v2/{name}/blobs/{ZERO}", None, {}, 404),
        ("DELETE", f"/v2/{name}/blobs/{ZERO}", None, {}, 404),
        ("GET", f"/v2/{name}/blobs/sha256:abc", None, {}, 400),
        ("GET", f"/v2/{name}/manifests/missing", None, {"Accept": MANIFEST_ACCEPT}, 404),
        ("GET", f"/v2/{name}/manifests/{ZERO}", None, {"Accept": MANIFEST_ACCEPT}, 404),
        ("DELETE", f"/v2/{name}/manifests/{ZERO}", None, {}, 404),
        ("PUT", f"/v2/{name}/manifests/bad", b"{nope", {"Content-Type": OCI_MANIFEST}, 400),
        ("PUT", f"/v2/{name}/manifests/{ZERO}", image.manifest, {"Content-Type": OCI_MANIFEST}, 400),
        (
            "PUT",
            f"/v2/{name}/manifests/missing-blob",
            image_manifest(image.config, [b"missing"]),
            {"Content-Type": OCI_MANIFEST},
            400,
        ),
        ("GET", f"/v2/{unique_name()}/tags/list", None, {}, 404),
        ("GET", f"/v2/{name}/blobs/uploads/00000000000000000000000000000000", None, {}, 404),
    ]


@pytest_twisted.ensureDeferred
async def test_error_bodies_have_the_spec_shape(registry, image):
    for method, path, body, headers, status in error_requests(image):
        reply = await fetch(method, url(registry, path), body, headers)
        assert reply.status == status, reply
        error = assert_error_shape(reply)
        assert error["message"], reply


@pytest_twisted.ensureDeferred
async def test_api_version_header_on_every_answer(registry, image):
    session = (await start_upload(registry, image.name)).header("Location")
    requests = [(m, p, b, h) for m, p, b, h, _ in error_requests(image)] + [
        ("GET", "/v2/", None, {}),
        ("HEAD", "/v2/", None, {}),
        ("GET", f"/v2/{image.name}/manifests/v1", None, {"Accept": MANIFEST_ACCEPT}),
        ("HEAD", f"/v2/{image.name}/manifests/v1", None, {"Accept": MANIFEST_ACCEPT}),
        ("GET", f"/v2/{image.name}/blobs/{sha256_digest(image.config)}", None, {}),
        ("HEAD", f"/v2/{image.name}/blobs/{sha256_digest(image.config)}", None, {}),
        ("GET", f"/v2/{image.name}/blobs/{sha256_digest(image.config)}", None, {"Range": "bytes=0-0"}),
        ("GET", f"/v2/{image.name}/tags/list", None, {}),
        ("GET", "/v2/_catalog", None, {}),
        ("POST", f"/v2/{image.name}/blobs/uploads/", b"", {}),
        ("GET", resolve(registry, session), None, {}),
        ("DELETE", resolve(registry, session), None, {}),
        ("GET", "/nonsense", None, {}),
        ("PATCH", f"/v2/{image.name}/manifests/v1", b"x", {}),
    ]
    for method, path, body, headers in requests:
        target = url(registry, path) if path.startswith("/") else path
        reply = await fetch(method, target, body, headers)
        assert reply.header(API_VERSION_HEADER) == API_VERSION, reply


# (method, path template, body, headers): odd requests, none of which may get a 5xx
ODD_REQUESTS = [
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "bytes=abc"}, id="range-garbage"),
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "items=0-1"}, id="range-unit"),
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "bytes=5-2"}, id="range-reversed"),
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "bytes="}, id="range-empty"),
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "bytes=-0"}, id="range-suffix-zero"),
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "bytes=0-1,4-5"}, id="range-multiple"),
    pytest.param("GET", "/v2/{name}/blobs/{config}", None, {"Range": "bytes=99999999999999999999-"}, id="range-huge"),
    pytest.param("GET", "/v2/{name}/tags/list?n=abc", None, {}, id="tags-n-garbage"),
    pytest.param("GET", "/v2/{name}/tags/list?n=-1", None, {}, id="tags-n-negative"),
    pytest.param("GET", "/v2/{name}/tags/list?last=%ff%fe", None, {}, id="tags-last-binary"),
    pytest.param("GET", "/v2/_catalog?n=abc", None, {}, id="catalog-n-garbage"),
    pytest.param("GET", "/v2/_catalog?n=-1", None, {}, id="catalog-n-negative"),
    pytest.param("GET", "/v2/_catalog?n=99999999999999999999999", None, {}, id="catalog-n-huge"),
    pytest.param("GET", "/v2/_catalog?last=%ff", None, {}, id="catalog-last-binary"),
    pytest.param("PUT", "/v2/{name}/manifests/odd", b"[]", {"Content-Type": OCI_MANIFEST}, id="manifest-array"),
    pytest.param(
        "PUT", "/v2/{name}/manifests/odd", b"\x00\x01\x02", {"Content-Type": OCI_MANIFEST}, id="manifest-binary"
    ),
    pytest.param(
        "PUT",
        "/v2/{name}/manifests/odd",
        b'{"a": ' * 10000,
        {"Content-Type": OCI_MANIFEST},
        id="manifest-deeply-nested",
    ),
    pytest.param(
        "PUT",
        "/v2/{name}/manifests/odd",
        b"{}",
        {"Content-Type": "application/x-nonsense"},
        id="manifest-unknown-content-type",
    ),
    pytest.param(
        "PUT",
        "/v2/{name}/manifests/odd",
        b"null",
        {"Content-Type": OCI_MANIFEST},
        id="manifest-null",
        marks=ociregistry_only,
    ),
    pytest.param(
        "PUT",
        "/v2/{name}/manifests/odd",
        b"{}",
        {"Content-Type": OCI_MANIFEST},
        id="manifest-empty-object",
        marks=ociregistry_only,
    ),
    pytest.param(
        "PUT",
        "/v2/{name}/manifests/odd",
        b'{"schemaVersion": 1}',
        {"Content-Type": OCI_MANIFEST},
        id="manifest-schema1",
        marks=ociregistry_only,
    ),
    pytest.param(
        "GET",
        "/v2/{name}/manifests/sha256:abc",
        None,
        {"Accept": MANIFEST_ACCEPT},
        id="manifest-bad-digest",
        marks=ociregistry_only,
    ),
    pytest.param("GET", "/v2/" + "a" * 300 + "/tags/list", None, {}, id="name-300-chars", marks=ociregistry_only),
    pytest.param("GET", "/v2/" + "a/" * 300 + "b/tags/list", None, {}, id="name-deep", marks=ociregistry_only),
    pytest.param("GET", "/v2/{name}/manifests/" + "a" * 5000, None, {}, id="tag-5000-chars"),
    pytest.param("GET", "/v2/%00/tags/list", None, {}, id="name-nul"),
    pytest.param("GET", "/v2/{name}/manifests/v%00", None, {}, id="tag-nul"),
    pytest.param("GET", "/v2/{name}/blobs/uploads/..%2F..%2Fetc", None, {}, id="upload-traversal"),
    pytest.param("GET", "/v2/{name}/blobs/uploads/%2e%2e", None, {}, id="upload-dot-dot"),
    pytest.param("POST", "/v2/{name}/blobs/uploads/?digest=", b"x", {}, id="post-empty-digest"),
    pytest.param("POST", "/v2/{name}/blobs/uploads/?mount=&from=", b"", {}, id="mount-empty"),
    pytest.param("POST", "/v2/{name}/blobs/uploads/?mount={config}&from=..", b"", {}, id="mount-from-dot-dot"),
]


@pytest.mark.parametrize("method,path,body,headers", ODD_REQUESTS)
@pytest_twisted.ensureDeferred
async def test_odd_requests_never_get_a_server_error(registry, image, method, path, body, headers):
    target = url(registry, path.format(name=image.name, config=sha256_digest(image.config)))
    reply = await fetch(method, target, body, headers, broken_body_ok=True)
    assert reply.status < 500, reply
    assert reply.header(API_VERSION_HEADER) == API_VERSION, reply
    is_json = (reply.header("Content-Type") or "").startswith("application/json")
    if reply.status >= 400 and reply.status != 416 and is_json:
        assert_error_shape(reply)


@pytest.mark.parametrize(
    "content_range", ["garbage", "bytes=0-2", "5-7", "0-1", "2-0", "-1-2", "0-99999999999999999999"]
)
@pytest_twisted.ensureDeferred
async def test_odd_content_range_never_gets_a_server_error(registry, image, content_range):
    session = resolve(registry, (await start_upload(registry, image.name)).header("Location"))
    reply = await fetch(
        "PATCH", session, b"abc", {"Content-Type": "application/octet-stream", "Content-Range": content_range}
    )
    assert reply.status < 500, reply
    if reply.status >= 400:
        assert reply.status in (400, 416), reply
        assert_error_shape(reply)


@ociregistry_only
@pytest.mark.parametrize("content_range", ["garbage", "5-7", "0-1", "2-0", "-1-2"])
@pytest_twisted.ensureDeferred
async def test_bad_content_range_is_refused(registry, image, content_range):
    """The reference ignores Content-Range and appends; ociregistry refuses what does not fit."""
    session = resolve(registry, (await start_upload(registry, image.name)).header("Location"))
    reply = await fetch(
        "PATCH", session, b"abc", {"Content-Type": "application/octet-stream", "Content-Range": content_range}
    )
    assert reply.status in (400, 416), reply
    assert_error_shape(reply)
