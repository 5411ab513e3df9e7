"""
`IRegistry`, the seam between the HTTP API and the registry: every
implementation provides all of it, every wrapper implements each method
itself (a method added to the interface and forgotten in a wrapper fails
here), and the pull-through cache refuses every operation that is not a
pull under its prefixes, as a client sees it over HTTP.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.server import Site
from zope.interface.exceptions import BrokenImplementation
from zope.interface.verify import verifyObject

from api_helpers import fetch, sha256_digest
from oci_registry.api.app import RegistryAPI
from oci_registry.errors import Unsupported
from oci_registry.interfaces import IRegistry, access_of, operations
from oci_registry.observe import ObservedRegistry
from oci_registry.proxy import ProxyRegistry
from oci_registry.proxy.config import UpstreamConfig
from oci_registry.reference import Digest, Name, Tag
from oci_registry.registry import Registry
from oci_registry.storage.filesystem import FilesystemDriver

pytestmark = pytest.mark.ociregistry_only

# Nothing listens there: a refused operation must never get as far as the upstream.
UPSTREAM = "cache=http://127.0.0.1:9"
PROXIED = Name("cache/team/app")


@pytest.fixture
def local(tmp_path):
    return Registry(FilesystemDriver(str(tmp_path / "data")))


@pytest.fixture
def proxy(local):
    return ProxyRegistry.from_config(local, [UpstreamConfig.parse(UPSTREAM)], reactor)


def test_every_registry_provides_the_interface(local, proxy):
    assert verifyObject(IRegistry, local)
    assert verifyObject(IRegistry, proxy)
    assert verifyObject(IRegistry, ObservedRegistry(local))
    assert verifyObject(IRegistry, ObservedRegistry(proxy))


@pytest.mark.parametrize("wrapper", [ProxyRegistry, ObservedRegistry])
def test_a_wrapper_implements_every_operation_itself(wrapper):
    """No forwarding by ``__getattr__`` or inheritance: each operation is decided in the wrapper's own class."""
    assert not hasattr(wrapper, "__getattr__")
    missing = [name for name in IRegistry.names(all=True) if name not in wrapper.__dict__]
    assert not missing, f"{wrapper.__name__} does not implement {missing}"


def test_an_operation_added_to_the_interface_and_not_to_a_wrapper_fails_verification(local, proxy):
    class IGrown(IRegistry):
        def rename_repository(name, new_name, caller=None):
            """An operation some future version adds."""

    for registry in (proxy, ObservedRegistry(local)):
        with pytest.raises(BrokenImplementation):
            verifyObject(IGrown, registry, tentative=True)


def test_every_operation_says_what_access_it_needs():
    """A new operation must be classified: the read-only cache refuses all but pulls."""
    names = operations(IRegistry)
    assert {access_of(IRegistry, name) for name in names} == {"pull", "push", "delete"}
    assert "put_manifest" in operations(IRegistry, "push") and "delete_blob" in operations(IRegistry, "delete")
    assert set(operations(IRegistry, "pull")) == {
        "stat_blob",
        "open_blob",
        "blob_redirect",
        "get_manifest",
        "list_tags",
        "catalog",
        "referrers",
    }


def _arguments(name: str) -> list:
    """Plausible arguments for an operation: a refusal must not depend on them being wrong."""
    info = IRegistry[name].getSignatureInfo()
    values = {
        "name": PROXIED,
        "digest": Digest.of(b"some blob"),
        "source": Name("local/app"),
        "upload_id": "0" * 32,
        "body": None,
        "reference": Tag("v1"),
        "data": b"{}",
        "content_type": None,
    }
    return [values[argument] for argument in info["required"]]


class _Bytes:
    """A request body already in memory (`oci_registry.registry.Body`)."""

    def __init__(self, data: bytes):
        self.data = data

    async def deliver(self, writer) -> int:
        await writer.write(self.data)
        return len(self.data)


@pytest_twisted.ensureDeferred
async def test_the_pull_through_cache_refuses_every_write_under_its_prefix(local, proxy):
    writes = [name for name in operations(IRegistry) if access_of(IRegistry, name) != "pull"]
    assert len(writes) == 11
    # The blob the mounts name is stored, so only the refusal can stop them.
    await local.put_blob(Name("local/app"), Digest.of(b"some blob"), _Bytes(b"some blob"))
    for name in writes:
        with pytest.raises(Unsupported) as refused:
            await getattr(proxy, name)(*_arguments(name))
        assert refused.value.status == 405 and refused.value.code == "UNSUPPORTED", name
        assert refused.value.message == "the repository is a read-only pull-through cache"
    assert (await local.catalog()).entries == ["local/app"]  # nothing was written for the proxied name


@pytest.fixture
def served(proxy):
    port = reactor.listenTCP(0, Site(RegistryAPI(ObservedRegistry(proxy)).resource()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_a_client_sees_every_write_under_the_prefix_refused(served):
    blob = b"a layer"
    digest = sha256_digest(blob)
    base = f"{served}/v2/{PROXIED}"
    session = f"{base}/blobs/uploads/{'0' * 32}"
    requests = [
        ("POST", f"{base}/blobs/uploads/", b""),  # start_upload
        ("POST", f"{base}/blobs/uploads/?digest={digest}", blob),  # put_blob
        ("POST", f"{base}/blobs/uploads/?mount={digest}", b""),  # adopt_blob, then start_upload
        ("POST", f"{base}/blobs/uploads/?mount={digest}&from=local/app", b""),  # mount_blob
        ("GET", session, None),  # upload_status
        ("PATCH", session, blob),  # append_upload
        ("PUT", f"{session}?digest={digest}", blob),  # append_upload, finish_upload
        ("DELETE", session, None),  # cancel_upload
        ("PUT", f"{base}/manifests/v1", b"{}"),  # put_manifest
        ("DELETE", f"{base}/manifests/v1", None),  # delete_manifest
        ("DELETE", f"{base}/blobs/{digest}", None),  # delete_blob
    ]
    for method, target, body in requests:
        reply = await fetch(method, target, body)
        assert reply.status == 405, (method, target, reply)
        [error] = reply.json()["errors"]
        assert error["code"] == "UNSUPPORTED", (method, target, error)
        assert error["message"] == "the repository is a read-only pull-through cache"
