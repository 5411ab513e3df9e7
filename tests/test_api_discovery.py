"""
Discovery: tag listing and the catalog (with ``n``/``last`` pagination and
``Link`` headers) and the referrers API, after the OCI conformance suite's
``03_discovery_test.go``.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from api_helpers import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    assert_api_version,
    assert_error,
    descriptor,
    encode,
    fetch,
    get,
    image_manifest,
    next_link,
    parse_link,
    push_blobs,
    push_image,
    put_manifest,
    query_of,
    resolve,
    sha256_digest,
    unique_name,
    unique_tag,
    url,
)

TAGS = ["1.0", "1.0.1", "2.0", "Alpha", "_private", "latest", "v1", "v10", "v2", "zeta"]


async def tagged_repository(registry, tags=TAGS) -> str:
    """A repository with one image under every tag in ``tags`` (pushed in an unsorted order)."""
    name = unique_name()
    image = await push_image(registry, name, tags[-1])
    for tag in reversed(tags[:-1]):
        reply = await put_manifest(registry, name, tag, image.manifest)
        assert reply.status == 201, reply
    return name


async def list_tags(registry, name: str, query: str = ""):
    reply = await get(registry, f"/v2/{name}/tags/list{query}")
    assert reply.status == 200, reply
    assert_api_version(reply)
    document = reply.json()
    assert document["name"] == name, reply
    assert isinstance(document["tags"], list), reply
    return reply, document["tags"]


# ---------------------------------------------------------------- tags/list


@pytest_twisted.ensureDeferred
async def test_tags_list(registry):
    name = await tagged_repository(registry)
    reply, tags = await list_tags(registry, name)
    assert sorted(tags) == sorted(TAGS)
    assert len(tags) == len(set(tags))
    assert (reply.header("Content-Type") or "").startswith("application/json"), reply
    assert reply.header("Link") is None, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_is_sorted(registry):
    """Lexical (byte) order, as the spec asks; the reference lists in directory order."""
    name = await tagged_repository(registry)
    _, tags = await list_tags(registry, name)
    assert tags == sorted(TAGS)


@pytest_twisted.ensureDeferred
async def test_tags_list_of_a_repository_with_only_untagged_manifests(registry):
    name = unique_name()
    await push_image(registry, name)  # by digest
    reply = await get(registry, f"/v2/{name}/tags/list")
    # The reference answers 404 NAME_UNKNOWN (it has no tags yet); 200 with no tags is as good.
    if reply.status == 200:
        assert reply.json()["tags"] in ([], None), reply
    else:
        assert_error(reply, 404, "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_tags_list_of_unknown_repository(registry):
    reply = await get(registry, f"/v2/{unique_name()}/tags/list")
    assert_error(reply, 404, "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_tags_list_follows_new_tags(registry):
    name = unique_name()
    image = await push_image(registry, name, "first")
    _, tags = await list_tags(registry, name)
    assert tags == ["first"]
    await put_manifest(registry, name, "second", image.manifest)
    _, tags = await list_tags(registry, name)
    assert sorted(tags) == ["first", "second"]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_n(registry):
    name = await tagged_repository(registry)
    reply, tags = await list_tags(registry, name, "?n=3")
    assert tags == sorted(TAGS)[:3]
    target, rel = parse_link(reply.header("Link"))
    assert rel == "next"
    following = resolve(registry, target)
    assert following.startswith(url(registry, f"/v2/{name}/tags/list?")), reply
    assert query_of(following) == {"n": "3", "last": tags[-1]}, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_last(registry):
    name = await tagged_repository(registry)
    ordered = sorted(TAGS)
    _, tags = await list_tags(registry, name, f"?last={ordered[3]}")
    assert tags == ordered[4:]
    _, tags = await list_tags(registry, name, "?last=m")  # need not be a tag
    assert tags == [t for t in ordered if t > "m"]
    _, tags = await list_tags(registry, name, f"?last={ordered[-1]}")
    assert tags == []


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_n_and_last(registry):
    name = await tagged_repository(registry)
    ordered = sorted(TAGS)
    reply, tags = await list_tags(registry, name, f"?n=2&last={ordered[1]}")
    assert tags == ordered[2:4]
    assert reply.header("Link") is not None, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_pages_through_link_headers(registry):
    name = await tagged_repository(registry)
    seen, pages = [], 0
    target = url(registry, f"/v2/{name}/tags/list?n=3")
    while target is not None:
        reply = await fetch("GET", target)
        assert reply.status == 200, reply
        page = reply.json()["tags"]
        assert 0 < len(page) <= 3, reply
        seen += page
        pages += 1
        target = next_link(registry, reply)
        assert pages <= len(TAGS), "the Link headers never end"
    assert seen == sorted(TAGS)
    assert pages == 4


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_n_covering_everything_has_no_link(registry):
    name = await tagged_repository(registry)
    for n in (len(TAGS), len(TAGS) + 1, 1000):
        reply, tags = await list_tags(registry, name, f"?n={n}")
        assert tags == sorted(TAGS)
        assert reply.header("Link") is None, reply


@pytest_twisted.ensureDeferred
async def test_tags_list_after_deleting_a_manifest(registry):
    name = unique_name()
    kept = await push_image(registry, name, "kept")
    gone = await push_image(registry, name, "gone")
    await put_manifest(registry, name, "gone-too", gone.manifest)
    reply = await fetch("DELETE", url(registry, f"/v2/{name}/manifests/{gone.digest}"))
    assert reply.status == 202, reply
    _, tags = await list_tags(registry, name)
    assert tags == ["kept"]
    assert kept.digest


# ----------------------------------------------------------------- _catalog


async def catalog(registry, query: str = ""):
    reply = await get(registry, f"/v2/_catalog{query}")
    assert reply.status == 200, reply
    assert_api_version(reply)
    repositories = reply.json()["repositories"]
    assert isinstance(repositories, list), reply
    return reply, repositories


async def catalog_repositories(registry, count: int = 4) -> list[str]:
    prefix = unique_name("catalog")
    names = [f"{prefix}-{i}" for i in range(count)] + [f"{prefix}-0/nested"]
    for name in names:
        await push_image(registry, name, "latest")
    return sorted(names)


@pytest_twisted.ensureDeferred
async def test_catalog(registry):
    names = await catalog_repositories(registry)
    _, repositories = await catalog(registry)
    assert set(names) <= set(repositories)
    assert repositories == sorted(repositories)
    assert len(repositories) == len(set(repositories))


@pytest_twisted.ensureDeferred
async def test_catalog_n(registry):
    await catalog_repositories(registry)
    _, everything = await catalog(registry)
    reply, first = await catalog(registry, "?n=2")
    assert first == everything[:2]
    target, rel = parse_link(reply.header("Link"))
    assert rel == "next"
    following = resolve(registry, target)
    assert following.startswith(url(registry, "/v2/_catalog?")), reply
    assert query_of(following) == {"n": "2", "last": first[-1]}, reply


@pytest_twisted.ensureDeferred
async def test_catalog_last(registry):
    names = await catalog_repositories(registry)
    _, everything = await catalog(registry)
    _, rest = await catalog(registry, f"?n=1000&last={names[1]}")
    assert rest == [r for r in everything if r > names[1]]
    assert names[2:] == [r for r in rest if r in names]


@pytest_twisted.ensureDeferred
async def test_catalog_pages_through_link_headers(registry):
    names = await catalog_repositories(registry)
    _, everything = await catalog(registry)
    seen, pages = [], 0
    target = url(registry, "/v2/_catalog?n=2")
    while target is not None:
        reply = await fetch("GET", target)
        assert reply.status == 200, reply
        page = reply.json()["repositories"]
        assert 0 < len(page) <= 2, reply
        seen += page
        pages += 1
        target = next_link(registry, reply)
        assert pages <= len(everything) + 1, "the Link headers never end"
    assert seen == everything
    assert set(names) <= set(seen)


@pytest_twisted.ensureDeferred
async def test_catalog_n_covering_everything_has_no_link(registry):
    await catalog_repositories(registry)
    _, everything = await catalog(registry)
    reply, repositories = await catalog(registry, f"?n={len(everything)}")
    assert repositories == everything
    assert reply.header("Link") is None, reply


# ---------------------------------------------------------------- referrers


async def push_subject(registry, name: str):
    return await push_image(registry, name, "subject")


async def push_artifact(
    registry,
    name: str,
    subject,
    *,
    artifact_type: str | None = "application/vnd.example.sbom",
    config_media_type: str | None = None,
    annotations: dict | None = None,
    tag: str | None = None,
):
    """
    An artifact manifest (the OCI 1.1 way: an image manifest with the empty
    config, ``artifactType`` and ``subject``) referring to ``subject``.
    Returns (manifest bytes, digest, PUT reply).
    """
    payload = f"artifact payload {unique_tag()}".encode()
    config = EMPTY_JSON if config_media_type is None else encode({"kind": config_media_type})
    await push_blobs(registry, name, config, payload)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_media_type or OCI_EMPTY, config),
        "layers": [descriptor("application/vnd.example.data", payload)],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.manifest)},
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations is not None:
        document["annotations"] = annotations
    body = encode(document)
    digest = sha256_digest(body)
    reply = await put_manifest(registry, name, tag or digest, body)
    assert reply.status == 201, reply
    return body, digest, reply


async def referrers(registry, name: str, digest: str, query: str = ""):
    reply = await get(registry, f"/v2/{name}/referrers/{digest}{query}")
    assert reply.status == 200, reply
    assert_api_version(reply)
    assert reply.header("Content-Type") == OCI_INDEX, reply
    index = reply.json()
    assert index["schemaVersion"] == 2, reply
    assert index["mediaType"] == OCI_INDEX, reply
    assert isinstance(index["manifests"], list), reply
    return reply, index["manifests"]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_push_with_subject_answers_oci_subject(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    _, _, reply = await push_artifact(registry, name, subject)
    assert reply.header("OCI-Subject") == subject.digest, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_push_without_subject_has_no_oci_subject(registry):
    image = await push_image(registry, unique_name(), "plain")
    assert image.reply.header("OCI-Subject") is None, image.reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    annotations = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "org.example.kind": "sbom"}
    body, digest, _ = await push_artifact(registry, name, subject, annotations=annotations)
    _, manifests = await referrers(registry, name, subject.digest)
    assert manifests == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(body),
            "artifactType": "application/vnd.example.sbom",
            "annotations": annotations,
        }
    ]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_lists_every_referrer(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    pushed = {}
    for artifact_type in (
        "application/vnd.example.sbom",
        "application/vnd.example.signature",
        "application/vnd.example.sbom",
    ):
        body, digest, _ = await push_artifact(registry, name, subject, artifact_type=artifact_type)
        pushed[digest] = (artifact_type, len(body))
    _, manifests = await referrers(registry, name, subject.digest)
    assert {m["digest"]: (m["artifactType"], m["size"]) for m in manifests} == pushed
    assert len(manifests) == 3


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_artifact_type_filter(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    _, sbom, _ = await push_artifact(registry, name, subject, artifact_type="application/vnd.example.sbom")
    _, signature, _ = await push_artifact(registry, name, subject, artifact_type="application/vnd.example.signature")

    reply, manifests = await referrers(registry, name, subject.digest, "?artifactType=application/vnd.example.sbom")
    assert [m["digest"] for m in manifests] == [sbom]
    assert reply.header("OCI-Filters-Applied") == "artifactType", reply

    reply, manifests = await referrers(
        registry, name, subject.digest, "?artifactType=application%2Fvnd.example.signature"
    )
    assert [m["digest"] for m in manifests] == [signature]
    assert reply.header("OCI-Filters-Applied") == "artifactType", reply

    reply, manifests = await referrers(registry, name, subject.digest, "?artifactType=application/vnd.example.none")
    assert manifests == []

    reply, manifests = await referrers(registry, name, subject.digest)
    assert {m["digest"] for m in manifests} == {sbom, signature}
    assert reply.header("OCI-Filters-Applied") is None, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_of_a_manifest_without_referrers(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    _, manifests = await referrers(registry, name, subject.digest)
    assert manifests == []


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_of_an_unknown_digest(registry):
    """A registry supporting referrers MUST NOT answer 404 to a known repository."""
    name = unique_name()
    await push_subject(registry, name)
    _, manifests = await referrers(registry, name, sha256_digest(b"never pushed"))
    assert manifests == []


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_in_an_unknown_repository(registry):
    """
    Nor to a repository that does not exist yet: a client asks for referrers
    before it pushes anything, and an empty index (not 404) means "none".
    """
    _, manifests = await referrers(registry, unique_name(), sha256_digest(b"never pushed"))
    assert manifests == []


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_artifact_type_from_config(registry):
    """Without ``artifactType``, a referrer's artifactType is its config's mediaType."""
    name = unique_name()
    subject = await push_subject(registry, name)
    _, digest, _ = await push_artifact(
        registry, name, subject, artifact_type=None, config_media_type="application/vnd.example.config.v1+json"
    )
    _, manifests = await referrers(registry, name, subject.digest)
    assert [(m["digest"], m["artifactType"]) for m in manifests] == [(digest, "application/vnd.example.config.v1+json")]
    # "+" must travel as %2B: in a query string a bare "+" means a space.
    reply, manifests = await referrers(
        registry, name, subject.digest, "?artifactType=application/vnd.example.config.v1%2Bjson"
    )
    assert [m["digest"] for m in manifests] == [digest]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_without_annotations_have_none(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    await push_artifact(registry, name, subject)
    _, manifests = await referrers(registry, name, subject.digest)
    assert manifests[0].get("annotations") in (None, {})


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_include_an_index_with_subject(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    member = await push_image(registry, name)
    index = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": member.digest, "size": len(member.manifest)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.manifest)},
            "annotations": {"bundle": "yes"},
        }
    )
    reply = await put_manifest(registry, name, sha256_digest(index), index, OCI_INDEX)
    assert reply.status == 201, reply
    assert reply.header("OCI-Subject") == subject.digest, reply
    _, manifests = await referrers(registry, name, subject.digest)
    assert manifests == [
        {
            "mediaType": OCI_INDEX,
            "digest": sha256_digest(index),
            "size": len(index),
            "artifactType": "application/vnd.example.bundle",
            "annotations": {"bundle": "yes"},
        }
    ]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_pushed_before_their_subject(registry):
    """The spec lets a referrer arrive before its subject (and still answers OCI-Subject)."""
    name = unique_name()
    config = f'{{"later": "{unique_tag()}"}}'.encode()
    await push_blobs(registry, name, config)
    future = image_manifest(config, [])
    subject = Image(name, "", future, sha256_digest(future), config, [], OCI_MANIFEST, None)
    _, digest, reply = await push_artifact(registry, name, subject)
    assert reply.header("OCI-Subject") == subject.digest, reply
    _, manifests = await referrers(registry, name, subject.digest)
    assert [m["digest"] for m in manifests] == [digest]
    reply = await put_manifest(registry, name, "now", future)
    assert reply.status == 201, reply
    _, manifests = await referrers(registry, name, subject.digest)
    assert [m["digest"] for m in manifests] == [digest]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_forget_a_deleted_referrer(registry):
    name = unique_name()
    subject = await push_subject(registry, name)
    _, kept, _ = await push_artifact(registry, name, subject, artifact_type="application/vnd.example.kept")
    _, gone, _ = await push_artifact(registry, name, subject, artifact_type="application/vnd.example.gone")
    reply = await fetch("DELETE", url(registry, f"/v2/{name}/manifests/{gone}"))
    assert reply.status == 202, reply
    _, manifests = await referrers(registry, name, subject.digest)
    assert [m["digest"] for m in manifests] == [kept]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_are_per_repository(registry):
    name, other = unique_name(), unique_name()
    subject = await push_subject(registry, name)
    await push_artifact(registry, name, subject)
    await push_image(registry, other, "x")
    _, manifests = await referrers(registry, other, subject.digest)
    assert manifests == []


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_with_invalid_digest(registry):
    name = unique_name()
    await push_subject(registry, name)
    reply = await get(registry, f"/v2/{name}/referrers/sha256:nothex")
    assert_error(reply, 400, "DIGEST_INVALID")


# ------------------------------------------------- paging over tricky names


async def nested_repositories(registry) -> list[str]:
    """Names where the tree's order and the names' order differ: "p-b" < "p.c" < "p/a" < "p0" < "p_u"."""
    p = unique_name("nest")
    names = [p, f"{p}-b", f"{p}-b/x", f"{p}.c", f"{p}/0", f"{p}/a", f"{p}/a-z", f"{p}/a/b/c", f"{p}0", f"{p}_u"]
    for name in names:
        await push_image(registry, name, "latest")
    return sorted(names)


async def pages(registry, target: str, key: str, bound: int) -> tuple[list, int]:
    """Every entry, following the Link headers from ``target``."""
    seen, count = [], 0
    while target is not None:
        reply = await fetch("GET", target)
        assert reply.status == 200, reply
        seen += reply.json()[key]
        count += 1
        target = next_link(registry, reply)
        assert count <= bound, "the Link headers never end"
    return seen, count


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_catalog_pages_over_nested_names_in_byte_order(registry):
    """Byte order of whole names ('/' sorts after '-' and '.'), as for tags; the reference sorts '/' first."""
    names = await nested_repositories(registry)
    _, everything = await catalog(registry)
    assert everything == sorted(everything)
    assert [r for r in everything if r in names] == names
    for n in (1, 2, 3, 7):
        seen, count = await pages(registry, url(registry, f"/v2/_catalog?n={n}"), "repositories", len(everything) + 1)
        assert seen == everything, n
        assert count == -(-len(everything) // n), n
    for last in names + [names[0] + "-", names[0] + "/", names[0] + "/a/b", names[0] + "/a/b/c/d", names[0] + "~"]:
        _, page = await catalog(registry, f"?n=3&last={last}")
        assert page == [r for r in everything if r > last][:3], last


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_catalog_last_beyond_the_end(registry):
    await catalog_repositories(registry)
    for query in ("?last=zzzz", "?n=5&last=zzzz", "?n=5&last=~"):
        reply, repositories = await catalog(registry, query)
        assert repositories == [], query
        assert reply.header("Link") is None, reply


@pytest_twisted.ensureDeferred
async def test_catalog_n_zero_is_an_empty_page_without_link(registry):
    await catalog_repositories(registry)
    reply, repositories = await catalog(registry, "?n=0")
    assert repositories == []
    assert reply.header("Link") is None, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_catalog_n_huge_lists_everything(registry):
    await catalog_repositories(registry)
    _, everything = await catalog(registry)
    for n in ("1000000", "99999999999999999999999999"):
        reply, repositories = await catalog(registry, f"?n={n}")
        assert repositories == everything
        assert reply.header("Link") is None, reply


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_catalog_leaves_out_deleted_repositories(registry):
    """A repository whose manifests and blobs were all deleted is gone from every page, and paging steps over it."""
    prefix = unique_name("deleted")
    names = [f"{prefix}-{i}" for i in range(5)]
    images = {name: await push_image(registry, name, "latest") for name in names}
    gone = names[1:4]
    for name in gone:
        image = images[name]
        reply = await fetch("DELETE", url(registry, f"/v2/{name}/manifests/{image.digest}"))
        assert reply.status == 202, reply
        for blob in (image.config, *image.layers):
            digest = sha256_digest(blob)
            reply = await fetch("DELETE", url(registry, f"/v2/{name}/blobs/{digest}"))
            assert reply.status in (202, 404), reply  # 404: an empty layer shared with the config
    _, everything = await catalog(registry)
    assert not set(gone) & set(everything)
    assert {names[0], names[4]} <= set(everything)
    seen, _ = await pages(registry, url(registry, "/v2/_catalog?n=1"), "repositories", len(everything) + 1)
    assert seen == everything
    _, page = await catalog(registry, f"?n=1&last={names[0]}")
    assert page == [names[4]]


TRICKY_TAGS = ["V1", "_x", "v1", "v1-rc", "v1-rc-2", "v1-rc.3", "v1.0", "v1.0-alpine", "v10", "v1_0"]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_pages_over_names_that_prefix_each_other(registry):
    name = await tagged_repository(registry, TRICKY_TAGS)
    ordered = sorted(TRICKY_TAGS)
    for n in (1, 2, 3):
        seen, count = await pages(registry, url(registry, f"/v2/{name}/tags/list?n={n}"), "tags", len(ordered) + 1)
        assert seen == ordered, n
        assert count == -(-len(ordered) // n), n
    for last in ordered + ["v1-", "v1-rc-", "v1/", "v0", "zz"]:
        _, tags = await list_tags(registry, name, f"?n=2&last={last}")
        assert tags == [t for t in ordered if t > last][:2], last


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_pages_leave_out_deleted_tags(registry):
    name = await tagged_repository(registry, TRICKY_TAGS)
    for tag in ("v1-rc", "v1.0"):
        reply = await fetch("DELETE", url(registry, f"/v2/{name}/manifests/{tag}"))
        assert reply.status == 202, reply
    ordered = [t for t in sorted(TRICKY_TAGS) if t not in ("v1-rc", "v1.0")]
    seen, _ = await pages(registry, url(registry, f"/v2/{name}/tags/list?n=2"), "tags", len(ordered) + 1)
    assert seen == ordered
    _, tags = await list_tags(registry, name, "?n=2&last=v1")
    assert tags == ["v1-rc-2", "v1-rc.3"]


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_tags_list_of_unknown_repository_with_paging(registry):
    for query in ("?n=0", "?n=5&last=a"):
        reply = await get(registry, f"/v2/{unique_name()}/tags/list{query}")
        assert_error(reply, 404, "NAME_UNKNOWN")


@pytest.mark.ociregistry_only
@pytest_twisted.ensureDeferred
async def test_referrers_pages_through_link_headers(registry):
    """Referrers come in digest order, a page at a time when asked (``n``), the filter kept in the Link."""
    name = unique_name()
    subject = await push_subject(registry, name)
    digests = []
    for i in range(5):
        kind = "application/vnd.example.sbom" if i % 2 else "application/vnd.example.sig"
        digests.append((await push_artifact(registry, name, subject, artifact_type=kind))[1])
    _, manifests = await referrers(registry, name, subject.digest)
    assert [m["digest"] for m in manifests] == sorted(digests)

    seen, count = [], 0
    target = url(registry, f"/v2/{name}/referrers/{subject.digest}?n=2")
    while target is not None:
        reply = await fetch("GET", target)
        assert reply.status == 200, reply
        page = reply.json()["manifests"]
        assert 0 < len(page) <= 2, reply
        seen += [m["digest"] for m in page]
        count += 1
        target = next_link(registry, reply)
        assert count <= 5, "the Link headers never end"
    assert seen == sorted(digests)
    assert count == 3

    target = url(registry, f"/v2/{name}/referrers/{subject.digest}?n=1&artifactType=application/vnd.example.sbom")
    seen = []
    for _ in range(10):
        reply = await fetch("GET", target)
        assert reply.header("OCI-Filters-Applied") == "artifactType", reply
        seen += [m["digest"] for m in reply.json()["manifests"]]
        target = next_link(registry, reply)
        if target is None:
            break
        assert query_of(target)["artifactType"] == "application/vnd.example.sbom"
    assert seen == sorted(digests[1::2])
