"""
Hostile input: random names, tags, digests, headers and bodies at every
endpoint of a real registry.  Every answer is a success or a spec error
(JSON, never a 500), and nothing is written outside the data directory.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only

# The suite replays the same 150 examples per test; OCIREGISTRY_FUZZ_EXAMPLES=N
# runs N fresh random ones instead (a longer hunt, by hand or on a schedule).
_EXAMPLES = os.environ.get("OCIREGISTRY_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXAMPLES or 150),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=_EXAMPLES is None,
)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    registry = RegistryProcess(str(root / "data")).start()
    # Something to find: a repository with a blob, a manifest and a tag.
    blob = b"fuzz layer"
    config = b"{}"
    for data in (blob, config):
        send(registry, "POST", f"/v2/fuzz/app/blobs/uploads/?digest=sha256:{hashlib.sha256(data).hexdigest()}", data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}",
                    "size": len(blob),
                }
            ],
        }
    ).encode()
    status, _, _ = send(
        registry,
        "PUT",
        "/v2/fuzz/app/manifests/v1",
        manifest,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201
    registry.blob_digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    registry.root = str(root)
    yield registry
    registry.stop()
    # Nothing escaped the data directory.
    assert sorted(os.listdir(root)) == ["data"]
    assert "Traceback" not in registry.log(), registry.log()[-3000:]


def send(registry, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            c.putheader(key, value)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def check(method, status, headers, body):
    assert status < 500 or status == 507, (status, body[:500])
    assert headers.get("docker-distribution-api-version") == "registry/2.0"
    if status >= 400 and method != "HEAD":
        errors = json.loads(body)["errors"]
        assert errors and all(isinstance(e["code"], str) and e["code"] for e in errors)


# Path segments: mostly plausible, sometimes nasty.
segment = st.one_of(
    st.sampled_from(["fuzz", "app", "a", "..", ".", "_uploads", "", "%2e%2e", "%2F", "A", "a-b", "a__b", "x" * 300]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/?#"), max_size=20),
    st.text(max_size=8).map(lambda t: urllib.parse.quote(t, safe="")),
)
name = st.lists(segment, min_size=1, max_size=4).map("/".join)
digest = st.one_of(
    st.just("sha256:" + "0" * 64),
    st.builds(
        lambda a, h: f"{a}:{h}",
        st.sampled_from(["sha256", "sha512", "md5", "SHA256", ""]),
        st.text(alphabet="0123456789abcdefABCDEF", max_size=130),
    ),
    segment,
)
reference = st.one_of(st.sampled_from(["v1", "latest", "-bad", "a" * 200]), digest, segment)
header_value = st.one_of(
    st.sampled_from(
        [
            "bytes=0-1",
            "bytes=5-2",
            "bytes=-0",
            "bytes=99999999999999999999-",
            "0-10",
            "bytes=0-0,2-3",
            "application/vnd.oci.image.manifest.v1+json",
            "*/*",
            "-1",
            "0-",
            "1-0",
            "bytes */*",
            "",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
headers = st.dictionaries(
    st.sampled_from(["Range", "Content-Range", "Accept", "Content-Type", "If-None-Match"]), header_value, max_size=3
)
body = st.one_of(st.none(), st.binary(max_size=2000), st.sampled_from([b"{}", b"[]", b'{"schemaVersion":2}', b"\xff"]))
query = st.dictionaries(
    st.sampled_from(["digest", "mount", "from", "n", "last", "artifactType"]),
    st.one_of(digest, segment, st.sampled_from(["-1", "0", "10", "99999999999999999999"])),
    max_size=3,
)


def path_for(kind: str, n: str, ref: str, q: dict) -> str:
    qs = ("?" + urllib.parse.urlencode(q)) if q else ""
    return {
        "blob": f"/v2/{n}/blobs/{ref}",
        "manifest": f"/v2/{n}/manifests/{ref}",
        "upload": f"/v2/{n}/blobs/uploads/{ref}",
        "uploads": f"/v2/{n}/blobs/uploads/",
        "tags": f"/v2/{n}/tags/list",
        "referrers": f"/v2/{n}/referrers/{ref}",
        "catalog": "/v2/_catalog",
        "raw": f"/{n}/{ref}",
    }[kind] + qs


@FUZZ
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]),
    kind=st.sampled_from(["blob", "manifest", "upload", "uploads", "tags", "referrers", "catalog", "raw"]),
    n=name,
    ref=reference,
    q=query,
    h=headers,
    data=body,
)
def test_random_requests(target, method, kind, n, ref, q, h, data):
    path = path_for(kind, n, ref, q)
    if any(c in path for c in " \r\n"):
        path = urllib.parse.quote(path, safe="/?=&%:")
    check(method, *send(target, method, path, data, h))


@FUZZ
@given(h=headers)
def test_ranges_on_a_real_blob(target, h):
    status, headers_, body = send(target, "GET", f"/v2/fuzz/app/blobs/{target.blob_digest}", None, h)
    check("GET", status, headers_, body)
    assert status in (200, 206, 304, 416)
    if status == 206:
        assert body and len(body) == int(headers_["content-length"])
        assert b"fuzz layer".find(body) >= 0


manifest_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "schemaVersion",
                    "mediaType",
                    "config",
                    "layers",
                    "manifests",
                    "subject",
                    "digest",
                    "size",
                    "annotations",
                    "artifactType",
                    "blobs",
                    "urls",
                ]
            ),
            children,
            max_size=6,
        ),
    ),
    max_leaves=20,
)


@FUZZ
@given(doc=manifest_like, content_type=header_value, tag=st.sampled_from(["fz", "v1", "sha256:" + "1" * 64]))
def test_random_manifests(target, doc, content_type, tag):
    data = json.dumps(doc).encode()
    status, headers_, body = send(target, "PUT", f"/v2/fuzz/app/manifests/{tag}", data, {"Content-Type": content_type})
    check("PUT", status, headers_, body)
    assert status in (201, 400, 404, 413)
    # The existing image is untouched.
    status, _, _ = send(target, "GET", "/v2/fuzz/app/manifests/v1")
    assert status == 200 or tag == "v1"


@FUZZ
@given(
    chunks=st.lists(st.tuples(st.binary(min_size=0, max_size=300), header_value), min_size=1, max_size=4),
    final=st.one_of(st.none(), st.binary(max_size=100)),
)
def test_random_chunked_uploads(target, chunks, final):
    status, headers_, body = send(target, "POST", "/v2/fuzz/up/blobs/uploads/")
    assert status == 202
    location = headers_["location"]
    for data, content_range in chunks:
        status, h, body = send(target, "PATCH", location, data, {"Content-Range": content_range})
        check("PATCH", status, h, body)
        assert status in (202, 400, 416)
    status, h, body = send(target, "PUT", location + "?digest=sha256:" + "2" * 64, final)
    check("PUT", status, h, body)
    assert status == 400  # the digest cannot match
