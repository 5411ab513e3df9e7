"""
End-to-end tests with the real ``podman`` client (no daemon; Debian's
``podman``) against a registry process: pull an image pushed with skopeo,
push it under another name, pull that back, and check what the registry holds.

podman keeps its images in a store of the test's own (``--root``,
``--runroot``, the ``vfs`` driver, which needs no kernel overlay support),
with an empty registries.conf and auth file, so nothing of the machine's
container configuration takes part.  Unlike skopeo's ``oci:`` copies, a pull
unpacks every layer and checks it against the config's ``diff_ids``, and a
push recompresses the layers from that store: so these tests check the
registry as a container engine uses it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from image_builder import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_MANIFEST,
    OCILayout,
    http_request,
    read_tar_gz,
    sha256_digest,
)
from test_e2e_skopeo import command_runner, copy_args, get_manifest, skopeo, skopeo_env  # noqa: F401 (fixtures)

PODMAN = shutil.which("podman")

pytestmark = pytest.mark.skipif(PODMAN is None, reason="podman is not installed (apt-get install podman)")


@pytest.fixture(scope="module")
def podman(skopeo_env, tmp_path_factory):  # noqa: F811
    """Run ``podman ARGS`` on a store of this module's own; fails the test on a non-zero exit unless ``check=False``."""
    store = tmp_path_factory.mktemp("podman")
    options = [
        "--root",
        str(store / "root"),
        "--runroot",
        str(store / "run"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
    ]
    env = dict(skopeo_env, XDG_CONFIG_HOME=str(store / "config"), XDG_RUNTIME_DIR=str(store / "run"))
    return command_runner([PODMAN, *options], env)


def layer_files(registry, name: str, manifest: dict) -> list[dict[str, bytes]]:
    """The files in each layer of ``manifest`` as the registry serves them."""
    files = []
    for layer in manifest["layers"]:
        response = get_blob(registry, name, layer["digest"])
        assert sha256_digest(response) == layer["digest"]
        files.append(read_tar_gz(response))
    return files


def get_blob(registry, name: str, digest: str) -> bytes:
    response = http_request("GET", f"{registry.url}/v2/{name}/blobs/{digest}")
    assert response.status == 200, (digest, response.status)
    return response.body


def test_pull_push_and_pull_back(registry, skopeo, podman, tmp_path):  # noqa: F811
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=256 << 10, seed="podman")
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/podman:v1"))

    # Pull: every layer unpacked and verified against the config's diff_ids.
    podman("pull", "--tls-verify=false", f"{registry.host}/e2e/podman:v1")
    inspected = json.loads(podman("image", "inspect", f"{registry.host}/e2e/podman:v1").stdout)[0]
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["RootFS"]["Layers"] == image.diff_ids
    assert inspected["Config"]["Labels"]["org.example.seed"] == "podman"

    # Push under another name, in both manifest formats podman writes.
    for tag, push_format, media_type in (
        ("docker", "v2s2", MEDIA_TYPE_DOCKER_MANIFEST),
        ("oci", "oci", MEDIA_TYPE_OCI_MANIFEST),
    ):
        target = f"{registry.host}/e2e/podman-pushed:{tag}"
        podman("tag", f"{registry.host}/e2e/podman:v1", target)
        podman("push", "--tls-verify=false", "--format", push_format, target)

        response = get_manifest(registry, "e2e/podman-pushed", tag)
        assert response.status == 200, response.body
        assert response.headers["content-type"] == media_type
        manifest = response.json()
        assert manifest["mediaType"] == media_type
        # podman recompresses the layers, so their digests may differ; what is in them may not.
        assert layer_files(registry, "e2e/podman-pushed", manifest) == [layer.files for layer in image.layers]
        config = json.loads(get_blob(registry, "e2e/podman-pushed", manifest["config"]["digest"]))
        assert config["rootfs"]["diff_ids"] == image.diff_ids

        # And pulled back by digest into a store that has never seen it.
        digest = response.headers["docker-content-digest"]
        podman("rmi", "--all", "--force")
        podman("pull", "--tls-verify=false", f"{registry.host}/e2e/podman-pushed@{digest}")
        inspected = json.loads(podman("image", "inspect", f"{registry.host}/e2e/podman-pushed@{digest}").stdout)[0]
        assert inspected["Digest"] == digest
        assert inspected["RootFS"]["Layers"] == image.diff_ids
        podman("pull", "--tls-verify=false", f"{registry.host}/e2e/podman:v1")


def test_pull_of_a_missing_tag_fails_clearly(registry, podman):
    result = podman("pull", "--tls-verify=false", f"{registry.host}/e2e/podman-missing:nope", check=False)
    assert result.returncode != 0
    assert b"manifest unknown" in result.stderr.lower(), result.stderr
