"""
Manifests and indexes: media types, parsing, validation, and the
descriptors a manifest references (for existence checks and referrers).
"""

from __future__ import annotations

import json
from typing import Any

import attr

from .errors import DigestInvalid, ManifestInvalid
from .reference import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = IMAGE_TYPES + INDEX_TYPES + (OCI_ARTIFACT,)

#: Layers that live elsewhere (``urls``) and are never pushed to a registry.
FOREIGN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict | None = None
    urls: tuple = ()

    @classmethod
    def parse(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise ManifestInvalid(f"{where} is not a descriptor object")
        media_type = value.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestInvalid(f"{where}.mediaType is missing")
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestInvalid(f"{where}.size must be a non-negative integer")
        raw = value.get("digest")
        try:
            digest = Digest.parse(raw)
        except DigestInvalid:
            raise ManifestInvalid(f"{where}.digest {raw!r} is not a valid digest") from None
        artifact_type = value.get("artifactType")
        annotations = value.get("annotations")
        if annotations is not None and not _is_string_map(annotations):
            raise ManifestInvalid(f"{where}.annotations must map strings to strings")
        urls = value.get("urls") or ()
        if not isinstance(urls, list | tuple):
            raise ManifestInvalid(f"{where}.urls must be a list")
        return cls(media_type, digest, size, artifact_type, annotations, tuple(urls))

    @property
    def is_foreign(self) -> bool:
        return self.media_type in FOREIGN_LAYER_TYPES or bool(self.urls)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Manifest:
    """A parsed manifest or index, with what the registry must check of it."""

    media_type: str
    blobs: tuple  # descriptors of blobs the repository must hold
    manifests: tuple  # descriptors of child manifests (indexes)
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict | None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def referrer_descriptor(self, digest: Digest, size: int) -> Descriptor:
        """How this manifest appears in its subject's referrers list."""
        artifact_type = self.artifact_type
        if artifact_type is None and self.media_type in IMAGE_TYPES and self.blobs:
            artifact_type = self.blobs[0].media_type  # the config's media type
        return Descriptor(self.media_type, digest, size, artifact_type, self.annotations or None)


def _is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _base_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse(data: bytes, content_type: str | None) -> Manifest:
    """
    Parse and validate manifest bytes pushed with ``content_type``.

    The media type is the ``mediaType`` field when present (it must then
    agree with a manifest ``Content-Type``); otherwise the Content-Type, or
    failing that, the shape of the document.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestInvalid(f"manifest is not valid JSON: {e}") from None
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")

    header_type = _base_type(content_type)
    field_type = doc.get("mediaType")
    if field_type is not None and not isinstance(field_type, str):
        raise ManifestInvalid("mediaType must be a string")
    if header_type in DOCKER_SCHEMA1 or field_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ManifestInvalid("Docker schema 1 manifests are not supported")
    if field_type and header_type in MANIFEST_TYPES and field_type != header_type:
        raise ManifestInvalid(f"mediaType {field_type!r} does not match Content-Type {header_type!r}")

    media_type = field_type or (header_type if header_type in MANIFEST_TYPES else None)
    if media_type is None:
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "config" in doc:
            media_type = OCI_MANIFEST
        elif "blobs" in doc:
            media_type = OCI_ARTIFACT
        else:
            raise ManifestInvalid("cannot tell the manifest's media type")
    if media_type not in MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")

    if media_type != OCI_ARTIFACT and doc.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")

    subject = None
    if doc.get("subject") is not None:
        subject = Descriptor.parse(doc["subject"], "subject")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    annotations = doc.get("annotations")
    if annotations is not None and not _is_string_map(annotations):
        raise ManifestInvalid("annotations must map strings to strings")

    blobs: list[Descriptor] = []
    children: list[Descriptor] = []
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestInvalid("an index needs a manifests list")
        children = [Descriptor.parse(m, f"manifests[{i}]") for i, m in enumerate(entries)]
    elif media_type == OCI_ARTIFACT:
        entries = doc.get("blobs", [])
        if not isinstance(entries, list):
            raise ManifestInvalid("blobs must be a list")
        blobs = [Descriptor.parse(b, f"blobs[{i}]") for i, b in enumerate(entries)]
    else:
        blobs.append(Descriptor.parse(doc.get("config"), "config"))
        entries = doc.get("layers", [])
        if not isinstance(entries, list):
            raise ManifestInvalid("layers must be a list")
        blobs += [Descriptor.parse(layer, f"layers[{i}]") for i, layer in enumerate(entries)]

    return Manifest(media_type, tuple(blobs), tuple(children), subject, artifact_type, annotations)
