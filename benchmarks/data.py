"""
The test data the workloads send, generated once per run: a big random
blob, a small image, small random blobs and an OCI layout for skopeo.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time

from .common import MiB, log
from .sizes import Sizes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_TYPES = (
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT_MANIFESTS = ", ".join(MANIFEST_TYPES)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Data:
    """Everything the workloads send, generated once per run in ``root``."""

    def __init__(self, root: str, sizes: Sizes):
        self.root = root
        self.sizes = sizes

    def build(self) -> None:
        s = self.sizes
        started = time.monotonic()
        self._build_big_blob()
        self._build_small_image()
        # Distinct 4 KiB blobs for the two upload flows.
        self.small_blobs_post = random_blobs(s.small_blobs, s.small_blob_size)
        self.small_blobs_post_put = random_blobs(s.small_blobs, s.small_blob_size)
        # An OCI layout with one 3-layer image per skopeo repetition (distinct
        # layers, so skopeo's blob-info cache cannot turn a push into a mount).
        self.layout = os.path.join(self.root, "layout")
        self.layout_tags = [f"image{i}" for i in range(s.skopeo_reps)]
        build_oci_layout(self.layout, self.layout_tags, s.layers, s.layer_size)
        self.policy = os.path.join(self.root, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        log(f"test data ready in {time.monotonic() - started:.1f}s")

    def _build_big_blob(self) -> None:
        """The big blob's file and digest, and the digest of the huge blob (the big one repeated)."""
        s = self.sizes
        self.big_path = os.path.join(self.root, "big.bin")
        hasher = hashlib.sha256()
        with open(self.big_path, "wb") as f:
            for _ in range(s.big_blob // MiB):
                block = os.urandom(MiB)
                hasher.update(block)
                f.write(block)
        self.big_digest = "sha256:" + hasher.hexdigest()
        huge = hashlib.sha256()
        with open(self.big_path, "rb") as f:
            for _ in range(s.huge_repeats):
                f.seek(0)
                while block := f.read(4 * MiB):
                    huge.update(block)
        self.huge_digest = "sha256:" + huge.hexdigest()

    def _build_small_image(self) -> None:
        """A small image: config + one small layer + manifest."""
        self.small_layer = os.urandom(4096)
        self.small_layer_digest = sha256(self.small_layer)
        self.small_config = image_config([self.small_layer_digest])
        self.small_config_digest = sha256(self.small_config)
        layer = {"mediaType": OCI_LAYER_GZIP, "digest": self.small_layer_digest, "size": len(self.small_layer)}
        self.small_manifest = image_manifest(self.small_config_digest, len(self.small_config), [layer])


def random_blobs(count: int, size: int) -> list[tuple[bytes, str]]:
    out = []
    for _ in range(count):
        data = os.urandom(size)
        out.append((data, sha256(data)))
    return out


def image_config(diff_ids: list[str]) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()


def image_manifest(config_digest: str, config_size: int, layers: list[dict]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers,
        }
    ).encode()


def build_oci_layout(path: str, tags: list[str], layers: int, layer_size: int) -> None:
    """An OCI image layout whose images have ``layers`` gzip layers of random (incompressible) files."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        with open(os.path.join(blobs, digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
        return digest, len(data)

    manifests = []
    for tag in tags:
        descriptors, diff_ids = [], []
        for i in range(layers):
            tar_bytes = random_tar(f"data/{tag}-layer{i}.bin", layer_size)
            diff_ids.append(sha256(tar_bytes))
            digest, size = put(gzip_stored(tar_bytes))
            descriptors.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
        config_digest, config_size = put(image_config(diff_ids))
        digest, size = put(image_manifest(config_digest, config_size, descriptors))
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(path, "index.json"), "w") as f:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        json.dump(index, f)


def random_tar(name: str, size: int) -> bytes:
    """A tar archive holding one file of ``size`` random bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return raw.getvalue()


def gzip_stored(data: bytes) -> bytes:
    # Random data does not compress: gzip level 0 (stored blocks) gives
    # the same size a real gzip would, without spending time on it.
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=0, mtime=0) as g:
        g.write(data)
    return gz.getvalue()
