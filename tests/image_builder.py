"""
Build OCI image layouts in pure Python, for the end-to-end tests.

Everything is deterministic: the same arguments always give the same bytes
(and so the same digests), and different seeds, layer numbers or platforms
give different content.  Nothing here needs a container engine or a network.

    layout = OCILayout(path)
    image = layout.add_image("v1", layers=3, layer_size=4 << 20, seed="app")
    index = layout.add_index("multi", platforms=[("linux", "amd64"), ("linux", "arm64", "v8")])

``image.manifest_digest``, ``image.layer_digests``, ``index.index_digest`` and
``index.images[...]`` give the digests a test compares against what comes
back from a registry; ``layout_blobs(path)`` reads every blob of a layout
(for example one a client pulled into) so two layouts can be compared.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# A fixed time for tar entries, the config and its history.
EPOCH = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    """An OCI descriptor for ``data``; ``extra`` adds e.g. platform or annotations."""
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def dump_json(document: dict) -> bytes:
    """
    The serialisation used for manifests, indexes and configs: indented, keys
    in insertion order and a trailing newline, deliberately not the compact
    form a registry or client would produce if it re-encoded the document, so
    that any re-encoding shows up as a changed digest.
    """
    return (json.dumps(document, indent=3) + "\n").encode()


def random_bytes(size: int, seed: str) -> bytes:
    """``size`` pseudo-random (incompressible) bytes, always the same for a seed."""
    return random.Random(seed).randbytes(size)


def make_tar(files: dict[str, bytes]) -> bytes:
    """A reproducible uncompressed tar of ``files`` (path -> content), with their parent directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({os.path.dirname(path) for path in files} - {""})
        all_directories = set()
        for directory in directories:
            parts = directory.split("/")
            for i in range(1, len(parts) + 1):
                all_directories.add("/".join(parts[:i]))
        for directory in sorted(all_directories):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = EPOCH
            tar.addfile(info)
        for path in sorted(files):
            data = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = EPOCH
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Reproducible gzip: no file name, a zero mtime, a fixed level."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


@dataclass
class Layer:
    digest: str  # of the gzip-compressed tar, as in the manifest
    diff_id: str  # of the uncompressed tar, as in the config's rootfs.diff_ids
    size: int
    files: dict[str, bytes]


@dataclass
class BuiltImage:
    """An image written into a layout: its manifest, config and layers."""

    manifest_digest: str
    manifest_bytes: bytes
    config_digest: str
    config_bytes: bytes
    layers: list[Layer]
    platform: dict

    @property
    def manifest_size(self) -> int:
        return len(self.manifest_bytes)

    @property
    def manifest(self) -> dict:
        return json.loads(self.manifest_bytes)

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def blob_digests(self) -> list[str]:
        """The config and layers (not the manifest)."""
        return [self.config_digest, *self.layer_digests]

    @property
    def all_digests(self) -> list[str]:
        """The manifest, config and layers."""
        return [self.manifest_digest, *self.blob_digests]

    def descriptor(self, **extra) -> dict:
        return {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": self.manifest_digest,
            "size": self.manifest_size,
            **extra,
        }


@dataclass
class BuiltIndex:
    """A multi-platform image index written into a layout."""

    index_digest: str
    index_bytes: bytes
    images: list[BuiltImage] = field(default_factory=list)

    @property
    def index_size(self) -> int:
        return len(self.index_bytes)

    @property
    def index(self) -> dict:
        return json.loads(self.index_bytes)

    @property
    def all_digests(self) -> list[str]:
        digests = [self.index_digest]
        for image in self.images:
            digests += image.all_digests
        return digests

    def image_for(self, architecture: str) -> BuiltImage:
        for image in self.images:
            if image.platform["architecture"] == architecture:
                return image
        raise KeyError(architecture)


class OCILayout:
    """An OCI image layout directory (created if missing) that images are added to."""

    def __init__(self, path: str):
        self.path = str(path)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)
        layout_file = os.path.join(self.path, "oci-layout")
        if not os.path.exists(layout_file):
            with open(layout_file, "w") as f:
                json.dump({"imageLayoutVersion": OCI_LAYOUT_VERSION}, f)
        if not os.path.exists(self._index_path):
            self._write_index({"schemaVersion": 2, "manifests": []})

    # -- blobs and index.json ------------------------------------------------

    @property
    def _index_path(self) -> str:
        return os.path.join(self.path, "index.json")

    def blob_path(self, digest: str) -> str:
        algorithm, hex_ = digest.split(":", 1)
        return os.path.join(self.path, "blobs", algorithm, hex_)

    def write_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        return digest

    def read_blob(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def read_index(self) -> dict:
        with open(self._index_path) as f:
            return json.load(f)

    def _write_index(self, index: dict) -> None:
        with open(self._index_path, "w") as f:
            json.dump(index, f, indent=2)

    def tag(self, name: str, desc: dict) -> None:
        """Point ``name`` (the ref.name annotation in index.json) at ``desc``, replacing an older one."""
        index = self.read_index()
        manifests = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != name]
        annotations = dict(desc.get("annotations") or {})
        annotations[REF_NAME] = name
        manifests.append({**desc, "annotations": annotations})
        index["manifests"] = manifests
        self._write_index(index)

    def resolve(self, name: str) -> dict:
        """The index.json descriptor tagged ``name``."""
        for desc in self.read_index()["manifests"]:
            if (desc.get("annotations") or {}).get(REF_NAME) == name:
                return desc
        raise KeyError(name)

    def reference(self, name: str) -> str:
        """The skopeo/containers-image reference ``oci:PATH:name``."""
        return f"oci:{self.path}:{name}"

    # -- images --------------------------------------------------------------

    def add_layer(self, files: dict[str, bytes]) -> Layer:
        tar = make_tar(files)
        compressed = gzip_bytes(tar)
        return Layer(self.write_blob(compressed), sha256_digest(tar), len(compressed), files)

    def add_image(
        self,
        tag: str | None = None,
        layers: int = 3,
        layer_size: int = 1024,
        seed: str = "image",
        os_name: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
        annotations: dict | None = None,
        labels: dict | None = None,
    ) -> BuiltImage:
        """
        Write an image of ``layers`` gzip layers and tag it ``tag`` (if given).

        Layer ``i`` holds ``layer<i>/hello.txt`` (a line naming the seed,
        platform and layer) and ``layer<i>/data.bin``, ``layer_size`` seeded
        pseudo-random bytes; the first layer also has an ``etc/os-release``.
        """
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant
        platform_name = "/".join(filter(None, [os_name, architecture, variant]))
        built_layers = []
        for i in range(layers):
            files = {
                f"layer{i}/hello.txt": f"layer {i} of image {seed!r} for {platform_name}\n".encode(),
                f"layer{i}/data.bin": random_bytes(layer_size, f"{seed}/{platform_name}/{i}"),
            }
            if i == 0:
                files["etc/os-release"] = f'NAME="image_builder"\nID={seed}\n'.encode()
            built_layers.append(self.add_layer(files))

        config = {
            "created": CREATED,
            "architecture": architecture,
            "os": os_name,
            **({"variant": variant} if variant else {}),
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"SEED={seed}"],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
                "Labels": {"org.example.seed": seed, **(labels or {})},
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built_layers]},
            "history": [
                {"created": CREATED, "created_by": f"image_builder: layer {i} of {seed}"} for i in range(layers)
            ],
        }
        config_bytes = dump_json(config)
        config_digest = self.write_blob(config_bytes)

        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [
                {"mediaType": MEDIA_TYPE_OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                for layer in built_layers
            ],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest_bytes = dump_json(manifest)
        manifest_digest = self.write_blob(manifest_bytes)

        image = BuiltImage(manifest_digest, manifest_bytes, config_digest, config_bytes, built_layers, platform)
        if tag is not None:
            self.tag(tag, image.descriptor())
        return image

    def add_index(
        self,
        tag: str | None = None,
        platforms=(("linux", "amd64"), ("linux", "arm64", "v8")),
        layers: int = 2,
        layer_size: int = 1024,
        seed: str = "multi",
        annotations: dict | None = None,
    ) -> BuiltIndex:
        """
        Write one image per platform (each its own config and layers) and an
        OCI image index over them, tagged ``tag`` (if given).  A platform is
        ``(os, architecture)`` or ``(os, architecture, variant)``.
        """
        images = []
        for platform in platforms:
            os_name, architecture, *rest = platform
            images.append(
                self.add_image(
                    None,
                    layers=layers,
                    layer_size=layer_size,
                    seed=seed,
                    os_name=os_name,
                    architecture=architecture,
                    variant=rest[0] if rest else None,
                )
            )
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [image.descriptor(platform=image.platform) for image in images],
        }
        if annotations:
            index["annotations"] = dict(annotations)
        index_bytes = dump_json(index)
        index_digest = self.write_blob(index_bytes)
        built = BuiltIndex(index_digest, index_bytes, images)
        if tag is not None:
            self.tag(tag, {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": index_digest, "size": len(index_bytes)})
        return built


def layout_blobs(path: str) -> dict[str, bytes]:
    """Every blob in the layout at ``path``, digest -> bytes (checking each matches its name)."""
    blobs = {}
    blobs_dir = os.path.join(str(path), "blobs")
    for algorithm in sorted(os.listdir(blobs_dir)):
        for hex_ in sorted(os.listdir(os.path.join(blobs_dir, algorithm))):
            with open(os.path.join(blobs_dir, algorithm, hex_), "rb") as f:
                data = f.read()
            digest = f"{algorithm}:{hex_}"
            actual = f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()
            if actual != digest:
                raise AssertionError(f"blob {digest} in {path} has content {actual}")
            blobs[digest] = data
    return blobs


def read_tar_gz(data: bytes) -> dict[str, bytes]:
    """The regular files in a gzip-compressed tar, path -> content."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name] = tar.extractfile(member).read()
    return files


# -- plain HTTP, for checks the tests make against a registry ----------------


@dataclass
class HTTPResponse:
    status: int
    headers: dict  # lower-cased names
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_request(
    method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30
) -> HTTPResponse:
    """One request with urllib; error statuses are returned, not raised, and redirects are not followed."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return HTTPResponse(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return HTTPResponse(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def push_blob_http(base_url: str, name: str, data: bytes) -> str:
    """Upload ``data`` to repository ``name`` (POST, then PUT with the whole body); return its digest."""
    import urllib.parse

    digest = sha256_digest(data)
    started = http_request("POST", f"{base_url}/v2/{name}/blobs/uploads/", b"")
    assert started.status == 202, (started.status, started.body)
    location = urllib.parse.urljoin(base_url + "/", started.headers["location"])
    separator = "&" if "?" in location else "?"
    finished = http_request(
        "PUT",
        f"{location}{separator}digest={urllib.parse.quote(digest)}",
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert finished.status == 201, (finished.status, finished.body)
    return digest


def _slow_patch(registry, path: str, body: bytes, content_range: str | None = None):
    """A socket with a PATCH's headers and the first 10 bytes of its body sent; the caller sends the rest."""
    import socket

    slow = socket.create_connection(("127.0.0.1", registry.port), timeout=30)
    extra = f"Content-Range: {content_range}\r\n" if content_range else ""
    slow.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: {registry.host}\r\nContent-Type: application/octet-stream\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    return slow


def _finish_slow_patch(slow, body: bytes) -> None:
    with slow:
        slow.sendall(body[10:])
        answer = slow.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202"), answer


def append_through_both_at_once(a, b, name: str, size: int = 1000) -> None:
    """
    A client breaking the protocol: the first chunk of one upload sent through
    two registry processes ``a`` and ``b`` at once, with different bytes.
    B's PATCH starts first (its offset checked) but ends last.  Finishing the
    upload on A with the digest of A's bytes is refused (what is stored is
    not those bytes alone), and no blob appears under that digest.
    """
    import time
    import urllib.parse

    mine, theirs = b"\x0a" * size, b"\x0b" * size
    started = http_request("POST", f"{a.url}/v2/{name}/blobs/uploads/", b"")
    assert started.status == 202, (started.status, started.body)
    path = started.headers["location"]
    slow = _slow_patch(b, path, theirs, f"0-{size - 1}")
    time.sleep(0.5)  # B has checked the offset and is receiving the body
    patched = http_request(
        "PATCH",
        urllib.parse.urljoin(a.url, path),
        mine,
        {"Content-Type": "application/octet-stream", "Content-Range": f"0-{size - 1}"},
    )
    assert patched.status == 202, (patched.status, patched.body)
    _finish_slow_patch(slow, theirs)
    digest = urllib.parse.quote(sha256_digest(mine))
    finished = http_request("PUT", urllib.parse.urljoin(a.url, path) + f"?digest={digest}", b"")
    assert finished.status == 400 and b"DIGEST_INVALID" in finished.body, (finished.status, finished.body)
    for registry in (a, b):
        assert http_request("GET", f"{registry.url}/v2/{name}/blobs/{sha256_digest(mine)}").status == 404


def finish_racing_an_append(a, b, name: str, size: int = 1000) -> tuple[bytes, HTTPResponse, HTTPResponse]:
    """
    A client breaking the protocol: an upload is finished through ``a`` while
    more bytes for it are still arriving through ``b``.  Returns the bytes
    the finishing PUT's digest is of, its answer, and what is then served
    under that digest (which must be those bytes, or nothing).
    """
    import time
    import urllib.parse

    mine, more = b"\x0c" * size, b"\x0d" * size
    started = http_request("POST", f"{a.url}/v2/{name}/blobs/uploads/", b"")
    path = started.headers["location"]
    patched = http_request(
        "PATCH",
        urllib.parse.urljoin(a.url, path),
        mine,
        {"Content-Type": "application/octet-stream", "Content-Range": f"0-{size - 1}"},
    )
    assert patched.status == 202, (patched.status, patched.body)
    path = patched.headers["location"]
    slow = _slow_patch(b, path, more)
    time.sleep(0.5)  # B is appending
    digest = urllib.parse.quote(sha256_digest(mine))
    finished = http_request("PUT", urllib.parse.urljoin(a.url, path) + f"?digest={digest}", b"")
    try:
        _finish_slow_patch(slow, more)
    except AssertionError:
        pass  # B may refuse the rest: the upload is gone
    served = http_request("GET", f"{a.url}/v2/{name}/blobs/{sha256_digest(mine)}")
    return mine, finished, served


def push_same_blob_and_tag_through_both(a, b, name: str, layout_path, blob_size: int) -> None:
    """
    Two clients push through ``a`` and ``b`` at once: the same blob, then
    each its own image under the same tag.  Both pushes succeed, and both
    processes serve one blob and the tag on one of the two manifests.
    """
    import threading

    layout = OCILayout(layout_path)
    images = [layout.add_image(layers=2, layer_size=64 << 10, seed=f"{name}-{i}") for i in range(2)]
    shared = b"\x05" * blob_size
    errors = []

    def push(registry, image):
        try:
            push_blob_http(registry.url, name, shared)
            push_image_http(registry.url, name, layout, image, tag="race")
        except BaseException as e:  # noqa: BLE001 reported below, by the main thread
            errors.append(e)

    threads = [threading.Thread(target=push, args=(r, i)) for r, i in zip((a, b), images, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    tagged = {
        http_request("HEAD", f"{r.url}/v2/{name}/manifests/race", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST}).headers[
            "docker-content-digest"
        ]
        for r in (a, b)
    }
    assert len(tagged) == 1 and tagged <= {i.manifest_digest for i in images}
    for registry in (a, b):
        blob = http_request("GET", f"{registry.url}/v2/{name}/blobs/{sha256_digest(shared)}")
        assert blob.status == 200 and blob.body == shared


def pull_racing_a_delete(a, b, name: str, collect, size: int = 16 << 20) -> None:
    """
    A layer is being pulled through ``a`` when its manifest and the layer are
    deleted through ``b`` and ``collect()`` collects garbage (and returns the
    digests whose data it removed, the layer's among them): the pull that had started gets every byte right, then the
    layer is unknown to both, and it can be pushed again.
    """
    import socket

    layer = random_bytes(size, name)
    config = dump_json({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    for blob in (config, layer):
        push_blob_http(a.url, name, blob)
    manifest = dump_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": descriptor(MEDIA_TYPE_OCI_CONFIG, config),
            "layers": [descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, layer)],
        }
    )
    push_manifest_http(a.url, name, "doomed", manifest, MEDIA_TYPE_OCI_MANIFEST)
    digest = sha256_digest(layer)

    with socket.create_connection(("127.0.0.1", a.port), timeout=30) as pull:
        pull.sendall(f"GET /v2/{name}/blobs/{digest} HTTP/1.1\r\nHost: {a.host}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received) < (1 << 20):
            piece = pull.recv(1 << 16)
            assert piece, received[:200]
            received += piece
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        for path in (f"manifests/{sha256_digest(manifest)}", f"blobs/{digest}"):
            deleted = http_request("DELETE", f"{b.url}/v2/{name}/{path}")
            assert deleted.status == 202, (path, deleted.status, deleted.body)
        assert digest in collect()
        while True:
            piece = pull.recv(1 << 20)
            if not piece:
                break
            body += piece
    assert len(body) == size and sha256_digest(body) == digest

    for registry in (a, b):
        assert http_request("HEAD", f"{registry.url}/v2/{name}/blobs/{digest}").status == 404
        assert http_request("GET", f"{registry.url}/v2/{name}/manifests/doomed").status == 404
    push_blob_http(b.url, name, layer)
    assert http_request("GET", f"{a.url}/v2/{name}/blobs/{digest}").body == layer


def push_manifest_http(base_url: str, name: str, reference: str, data: bytes, media_type: str) -> HTTPResponse:
    response = http_request("PUT", f"{base_url}/v2/{name}/manifests/{reference}", data, {"Content-Type": media_type})
    assert response.status == 201, (response.status, response.body)
    return response


def push_image_http(base_url: str, name: str, layout: OCILayout, image: BuiltImage, tag: str | None = None) -> str:
    """Push ``image`` from ``layout`` with plain HTTP, tagged ``tag`` (else by digest); return its digest."""
    for digest in image.blob_digests:
        push_blob_http(base_url, name, layout.read_blob(digest))
    response = push_manifest_http(
        base_url, name, tag or image.manifest_digest, image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST
    )
    assert response.headers.get("docker-content-digest") == image.manifest_digest
    return image.manifest_digest
