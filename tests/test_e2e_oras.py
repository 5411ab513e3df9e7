"""
End-to-end tests with the ``oras`` Python client (oras-py) against a registry process.

Artifacts (plain files, a directory, a config with its own media type,
annotations, an ``artifactType``, a ``subject``) are pushed with
``OrasClient`` and pulled back with it; what the registry stores is also
checked over plain HTTP.  Each test uses its own repositories.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest

oras_provider = pytest.importorskip("oras.provider")
import oras.client  # noqa: E402
import oras.oci  # noqa: E402

from image_builder import (  # noqa: E402
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    OCILayout,
    http_request,
    push_image_http,
    random_bytes,
    sha256_digest,
)

TITLE = "org.opencontainers.image.title"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


class Client(oras.client.OrasClient):
    """
    OrasClient without its retry decorator: oras-py retries a request that
    raises or answers 500 five times, sleeping 3 s up to 83 s in between,
    which would turn one registry error into minutes; here it fails at once.
    """

    do_request = oras_provider.Registry.do_request.__wrapped__


@pytest.fixture
def client(registry):
    return Client(hostname=registry.host, insecure=True)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """oras-py refuses to push files outside the working directory: work in a fresh one."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def get_manifest(registry, name, reference, accept=MEDIA_TYPE_OCI_MANIFEST):
    response = http_request("GET", f"{registry.url}/v2/{name}/manifests/{reference}", headers={"Accept": accept})
    assert response.status == 200, (response.status, response.body)
    assert response.headers["docker-content-digest"] == sha256_digest(response.body)
    return response


def write_files(directory, files: dict[str, bytes]):
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(directory) -> dict[str, bytes]:
    tree = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, directory)] = f.read()
    return tree


def test_push_and_pull_files(registry, client, workdir, tmp_path):
    files = {
        "hello.txt": b"hello from oras\n",
        "data.bin": random_bytes(300 << 10, "oras-data"),
    }
    write_files(workdir, files)
    (workdir / "config.json").write_text('{"kind": "example"}')
    target = f"{registry.host}/e2e/oras-files:v1"

    response = client.push(
        target,
        files=["hello.txt:text/plain", "data.bin:application/vnd.example.data.v1"],
        manifest_config="config.json:application/vnd.example.config.v1+json",
        manifest_annotations={"org.opencontainers.image.description": "two files", "org.example.key": "value"},
        quiet=True,
    )
    assert response.status_code == 201
    pushed_digest = response.headers["Docker-Content-Digest"]

    outdir = tmp_path / "pulled"
    pulled = client.pull(target, outdir=str(outdir))
    assert sorted(os.path.relpath(path, outdir) for path in pulled) == ["data.bin", "hello.txt"]
    assert read_tree(outdir) == files

    # The manifest as stored: what oras put in it, under the digest the push reported.
    served = get_manifest(registry, "e2e/oras-files", "v1")
    assert served.headers["content-type"] == MEDIA_TYPE_OCI_MANIFEST
    assert served.headers["docker-content-digest"] == pushed_digest
    manifest = served.json()
    assert manifest["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
    assert manifest["annotations"] == {"org.opencontainers.image.description": "two files", "org.example.key": "value"}
    assert manifest["config"]["mediaType"] == "application/vnd.example.config.v1+json"
    assert manifest["config"]["digest"] == sha256_digest(b'{"kind": "example"}')
    layers = [
        (layer["mediaType"], layer["annotations"][TITLE], layer["digest"], layer["size"])
        for layer in manifest["layers"]
    ]
    assert layers == [
        ("text/plain", "hello.txt", sha256_digest(files["hello.txt"]), len(files["hello.txt"])),
        ("application/vnd.example.data.v1", "data.bin", sha256_digest(files["data.bin"]), len(files["data.bin"])),
    ]
    assert client.get_manifest(target) == manifest
    assert client.get_manifest(f"{registry.host}/e2e/oras-files@{pushed_digest}") == manifest
    config = http_request("GET", f"{registry.url}/v2/e2e/oras-files/blobs/{manifest['config']['digest']}")
    assert config.body == b'{"kind": "example"}'

    assert client.get_tags(f"{registry.host}/e2e/oras-files") == ["v1"]


def test_push_and_pull_directory(registry, client, workdir, tmp_path):
    """A directory is pushed as one tar+gzip layer and unpacked again on pull."""
    files = {
        "site/index.html": b"<h1>hi</h1>\n",
        "site/css/style.css": b"h1 { color: red }\n",
        "site/img/blob.bin": random_bytes(64 << 10, "oras-dir"),
    }
    write_files(workdir, files)
    target = f"{registry.host}/e2e/oras-dir:v1"

    client.push(target, files=["site"], quiet=True)

    outdir = tmp_path / "pulled"
    client.pull(target, outdir=str(outdir))
    assert read_tree(outdir) == files
    manifest = get_manifest(registry, "e2e/oras-dir", "v1").json()
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer["annotations"][TITLE] == "site"
    # oras' empty config: "{}" under the "unknown" config media type.
    assert manifest["config"] == {
        "mediaType": "application/vnd.unknown.config.v1+json",
        "size": 2,
        "digest": sha256_digest(b"{}"),
    }


def test_tags_of_the_same_artifact(registry, client, workdir):
    (workdir / "file.txt").write_bytes(b"same content\n")
    digests = set()
    for tag in ["v1", "v2", "latest"]:
        response = client.push(f"{registry.host}/e2e/oras-tags:{tag}", files=["file.txt"], quiet=True)
        digests.add(response.headers["Docker-Content-Digest"])
    # The same files give the same manifest, and the blobs already there are not uploaded again.
    assert len(digests) == 1
    assert sorted(client.get_tags(f"{registry.host}/e2e/oras-tags")) == ["latest", "v1", "v2"]
    assert client.delete_tag(f"{registry.host}/e2e/oras-tags", "v2")
    # Deleting by tag resolves the tag to a digest and deletes the manifest: every tag on it goes.
    assert (
        http_request(
            "GET", f"{registry.url}/v2/e2e/oras-tags/manifests/v1", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST}
        ).status
        == 404
    )


def empty_config_descriptor(client, container) -> dict:
    """Upload the empty JSON blob ``{}`` and return its descriptor (the OCI 1.1 "empty" config)."""
    path = os.path.abspath("empty.json")
    with open(path, "wb") as f:
        f.write(b"{}")
    descriptor = {"mediaType": EMPTY_MEDIA_TYPE, "digest": sha256_digest(b"{}"), "size": 2}
    client._check_200_response(client.upload_blob(path, container, descriptor))
    return descriptor


def push_artifact_manifest(client, target, files: dict[str, bytes], artifact_type, subject=None, annotations=None):
    """An OCI 1.1 artifact: ``artifactType``, the empty config, one layer per file; return the push response."""
    container = client.get_container(target)
    layers = []
    for name, data in files.items():
        with open(name, "wb") as f:
            f.write(data)
        layer = oras.oci.NewLayer(name, media_type="application/octet-stream")
        layer["annotations"] = {TITLE: name}
        client._check_200_response(client.upload_blob(name, container, layer))
        layers.append(layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty_config_descriptor(client, container),
        "layers": layers,
    }
    if subject is not None:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = annotations
    response = client.upload_manifest(manifest, container)
    assert response.status_code == 201, (response.status_code, response.text)
    return response


def test_artifact_type(registry, client, workdir, tmp_path):
    files = {"sbom.spdx.json": json.dumps({"spdxVersion": "SPDX-2.3", "name": "example"}).encode()}
    target = f"{registry.host}/e2e/oras-artifact-type:v1"
    response = push_artifact_manifest(client, target, files, "application/spdx+json")

    served = get_manifest(registry, "e2e/oras-artifact-type", "v1")
    assert served.headers["docker-content-digest"] == response.headers["Docker-Content-Digest"]
    manifest = served.json()
    assert manifest["artifactType"] == "application/spdx+json"
    assert manifest["config"]["mediaType"] == EMPTY_MEDIA_TYPE

    outdir = tmp_path / "pulled"
    client.pull(target, outdir=str(outdir))
    assert read_tree(outdir) == files


def push_subject_image(registry, tmp_path, name):
    layout = OCILayout(tmp_path / "subject-image")
    image = layout.add_image("v1", layers=2, layer_size=4096, seed=name)
    push_image_http(registry.url, name, layout, image, tag="v1")
    return image


def subject_of(image) -> oras.oci.Subject:
    return oras.oci.Subject(mediaType=MEDIA_TYPE_OCI_MANIFEST, digest=image.manifest_digest, size=image.manifest_size)


def test_push_artifact_with_subject(registry, client, workdir, tmp_path):
    """A manifest with a ``subject`` is stored and served as pushed, and the subject is untouched."""
    image = push_subject_image(registry, tmp_path, "e2e/oras-subject")
    (workdir / "signature.sig").write_bytes(b"not really a signature\n")
    response = client.push(
        f"{registry.host}/e2e/oras-subject:sig",
        files=["signature.sig:application/vnd.example.signature.v1"],
        manifest_config="/dev/null:application/vnd.example.signature.config.v1+json",
        subject=subject_of(image),
        quiet=True,
    )
    assert response.status_code == 201
    digest = response.headers["Docker-Content-Digest"]

    manifest = get_manifest(registry, "e2e/oras-subject", digest).json()
    assert manifest["subject"] == {
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": image.manifest_size,
    }
    assert get_manifest(registry, "e2e/oras-subject", "v1").body == image.manifest_bytes

    outdir = tmp_path / "pulled"
    client.pull(f"{registry.host}/e2e/oras-subject:sig", outdir=str(outdir))
    assert read_tree(outdir) == {"signature.sig": b"not really a signature\n"}


@pytest.mark.ociregistry_only
def test_referrers(registry, client, workdir, tmp_path):
    """GET /v2/<name>/referrers/<digest> lists the manifests whose subject is <digest>, filterable by artifactType."""
    name = "e2e/oras-referrers"
    image = push_subject_image(registry, tmp_path, name)
    subject = subject_of(image)

    # One referrer pushed by oras push (no artifactType: its config media type stands in for it)...
    (workdir / "signature.sig").write_bytes(b"signature\n")
    signed = client.push(
        f"{registry.host}/{name}:sig",
        files=["signature.sig"],
        manifest_config="/dev/null:application/vnd.example.signature.v1+json",
        manifest_annotations={"org.example.signed-by": "tests"},
        subject=subject,
        quiet=True,
    )
    assert signed.status_code == 201
    assert signed.headers.get("OCI-Subject") == image.manifest_digest
    signature_digest = signed.headers["Docker-Content-Digest"]

    # ...and one OCI 1.1 artifact with an artifactType, pushed by digest only.
    sbom = push_artifact_manifest(
        client,
        f"{registry.host}/{name}:sbom",
        {"sbom.json": b'{"sbom": true}'},
        "application/spdx+json",
        subject={"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": image.manifest_digest, "size": image.manifest_size},
        annotations={"org.example.kind": "sbom"},
    )
    assert sbom.headers.get("OCI-Subject") == image.manifest_digest
    sbom_digest = sbom.headers["Docker-Content-Digest"]

    response = http_request("GET", f"{registry.url}/v2/{name}/referrers/{image.manifest_digest}")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == MEDIA_TYPE_OCI_INDEX
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == MEDIA_TYPE_OCI_INDEX
    by_digest = {descriptor["digest"]: descriptor for descriptor in index["manifests"]}
    assert sorted(by_digest) == sorted([signature_digest, sbom_digest])

    signature_bytes = get_manifest(registry, name, signature_digest).body
    assert by_digest[signature_digest] == {
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "digest": signature_digest,
        "size": len(signature_bytes),
        "artifactType": "application/vnd.example.signature.v1+json",
        "annotations": {"org.example.signed-by": "tests"},
    }
    sbom_bytes = get_manifest(registry, name, sbom_digest).body
    assert by_digest[sbom_digest] == {
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "digest": sbom_digest,
        "size": len(sbom_bytes),
        "artifactType": "application/spdx+json",
        "annotations": {"org.example.kind": "sbom"},
    }

    spdx = quote("application/spdx+json", safe="")
    filtered = http_request("GET", f"{registry.url}/v2/{name}/referrers/{image.manifest_digest}?artifactType={spdx}")
    assert filtered.status == 200
    assert filtered.headers.get("oci-filters-applied") == "artifactType"
    assert [descriptor["digest"] for descriptor in filtered.json()["manifests"]] == [sbom_digest]

    # A digest nothing refers to: an empty index, not an error.
    nothing = http_request("GET", f"{registry.url}/v2/{name}/referrers/{image.config_digest}")
    assert nothing.status == 200
    assert nothing.json()["manifests"] == []
