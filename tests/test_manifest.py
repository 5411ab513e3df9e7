"""Parsing and validating manifests and indexes."""

import json

import pytest

from oci_registry import manifest
from oci_registry.errors import ManifestInvalid
from oci_registry.reference import Digest

CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(b"{}")), "size": 2}
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": str(Digest.of(b"l")), "size": 1}


def doc(**fields):
    base = {"schemaVersion": 2, "mediaType": manifest.OCI_MANIFEST, "config": CONFIG, "layers": [LAYER]}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_image_manifest():
    m = manifest.parse(doc(), manifest.OCI_MANIFEST)
    assert m.media_type == manifest.OCI_MANIFEST
    assert [str(b.digest) for b in m.blobs] == [CONFIG["digest"], LAYER["digest"]]
    assert m.subject is None and not m.is_index


def test_media_type_from_content_type_when_field_absent():
    m = manifest.parse(doc(mediaType=None), manifest.DOCKER_MANIFEST)
    assert m.media_type == manifest.DOCKER_MANIFEST


def test_media_type_from_shape():
    assert manifest.parse(doc(mediaType=None), "application/json").media_type == manifest.OCI_MANIFEST
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert manifest.parse(index, None).media_type == manifest.OCI_INDEX


def test_mismatched_content_type():
    with pytest.raises(ManifestInvalid):
        manifest.parse(doc(), manifest.DOCKER_MANIFEST)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b"{}",
        doc(schemaVersion=1),
        doc(config={"digest": "x"}),
        doc(layers="nope"),
        doc(layers=[{**LAYER, "size": -1}]),
        doc(layers=[{**LAYER, "digest": "sha256:short"}]),
        doc(annotations={"a": 1}),
        doc(mediaType="application/unknown"),
        b"\xff\xfe",
    ],
)
def test_invalid(data):
    with pytest.raises(ManifestInvalid):
        manifest.parse(data, manifest.OCI_MANIFEST)


def test_index_children():
    child = {
        "mediaType": manifest.OCI_MANIFEST,
        "digest": str(Digest.of(b"c")),
        "size": 1,
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    data = json.dumps({"schemaVersion": 2, "mediaType": manifest.OCI_INDEX, "manifests": [child]}).encode()
    m = manifest.parse(data, manifest.OCI_INDEX)
    assert m.is_index and [str(c.digest) for c in m.manifests] == [child["digest"]]


def test_referrer_descriptor_artifact_type():
    subject = {"mediaType": manifest.OCI_MANIFEST, "digest": str(Digest.of(b"s")), "size": 1}
    m = manifest.parse(doc(subject=subject, annotations={"k": "v"}), manifest.OCI_MANIFEST)
    d = m.referrer_descriptor(Digest.of(b"me"), 10).to_json()
    assert d["artifactType"] == CONFIG["mediaType"]  # falls back to the config's media type
    assert d["annotations"] == {"k": "v"} and d["size"] == 10
    m = manifest.parse(doc(subject=subject, artifactType="application/x.sig"), manifest.OCI_MANIFEST)
    assert m.referrer_descriptor(Digest.of(b"me"), 10).artifact_type == "application/x.sig"


def test_foreign_layers_are_not_required():
    foreign = {
        **LAYER,
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "urls": ["https://example.invalid/layer"],
    }
    m = manifest.parse(doc(mediaType=None, layers=[foreign]), manifest.DOCKER_MANIFEST)
    assert m.blobs[1].is_foreign
