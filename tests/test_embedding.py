"""The registry served from inside another Twisted application, as docs/examples/embed.py does."""

import hashlib
import importlib.util
import json
import os

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.server import Site

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "embed.py")


def load_example():
    spec = importlib.util.spec_from_file_location("embed_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["RegistrySite", "plain Site"])
def served(request, tmp_path):
    site = load_example().make_site(str(tmp_path / "data"))
    if request.param == "plain Site":
        site = Site(site.resource)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_application_and_registry_side_by_side(served):
    page = await treq.get(served + "/")
    assert await page.content() == b"my application\n"

    r = await treq.get(served + "/v2/")
    assert r.code == 200
    assert r.headers.getRawHeaders("Docker-Distribution-Api-Version") == ["registry/2.0"]

    blob = os.urandom(300000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    r = await treq.post(served + f"/v2/embedded/app/blobs/uploads/?digest={digest}", data=blob)
    assert r.code == 201, await r.text()
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    r = await treq.post(served + f"/v2/embedded/app/blobs/uploads/?digest={config_digest}", data=config)
    assert r.code == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": len(blob)}],
        }
    ).encode()
    r = await treq.put(
        served + "/v2/embedded/app/manifests/v1",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.code == 201, await r.text()

    r = await treq.get(served + "/v2/embedded/app/manifests/v1")
    assert await r.content() == manifest
    r = await treq.get(served + f"/v2/embedded/app/blobs/{digest}")
    assert await r.content() == blob
    r = await treq.get(served + "/v2/_catalog")
    assert json.loads(await r.content()) == {"repositories": ["embedded/app"]}


# ----------------------------------------- the same registry as the daemon's

LIMITS = "max_uploads_per_client: 2\nupload_expiry: 1s\n"


@pytest.fixture(params=["registry_resource", "twistd"])
def limited(request, tmp_path):
    """A registry with two open uploads per client and a one-second upload expiry: embedded, or the daemon."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(LIMITS)
    if request.param == "twistd":
        from registry_process import RegistryProcess

        process = RegistryProcess(str(tmp_path / "data"), config=str(config_path)).start()
        yield process.url
        process.stop()
        return
    from oci_registry.config import Config
    from oci_registry.service import RegistrySite, registry_resource

    config = Config.load(str(config_path), data_dir=str(tmp_path / "data"))
    port = reactor.listenTCP(0, RegistrySite(registry_resource(config=config, reactor=reactor)), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_an_embedded_registry_has_the_daemons_upload_limits(limited):
    """``registry_resource(config=...)`` caps open uploads per client and expires them as ``twistd`` does."""
    from twisted.internet.task import deferLater

    async def start_upload():
        r = await treq.post(limited + "/v2/limits/app/blobs/uploads/")
        await r.content()
        return r

    for _ in range(2):
        assert (await start_upload()).code == 202
    refused = await start_upload()
    assert refused.code == 429
    assert refused.headers.getRawHeaders("Retry-After") == ["60"]
    # Sessions idle past upload_expiry no longer count against the cap.
    await deferLater(reactor, 1.2, lambda: None)
    assert (await start_upload()).code == 202
