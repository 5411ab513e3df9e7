"""
The observer seam: `ObservedRegistry` reports every completed operation, with
who did it, to its observers; an observer that fails or never finishes
changes nothing a client sees.  Every test talks HTTP to a registry
listening on 127.0.0.1 in this process (the observers are Python objects).
"""

from __future__ import annotations

import base64
import json

import attr
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from api_helpers import (
    OCI_MANIFEST,
    image_manifest,
    mount,
    push_blob,
    push_image,
    sha256_digest,
    url,
    with_query,
)
from oci_registry.api.app import RegistryAPI
from oci_registry.auth.basic import BasicAuthorizer
from oci_registry.auth.config import AuthConfig
from oci_registry.auth.state import AuthState, PasswordLogin
from oci_registry.config import Config
from oci_registry.identity import Caller
from oci_registry.interfaces import IRegistry
from oci_registry.observe import (
    BLOB,
    DELETE,
    MANIFEST,
    MOUNT,
    PULL,
    PUSH,
    TAG,
    IRegistryObserver,
    LogObserver,
    ObservedRegistry,
    RegistryEvent,
)
from oci_registry.reference import Digest, Name, Tag
from oci_registry.registry import Registry
from oci_registry.service import registry_resource
from oci_registry.storage.filesystem import FilesystemDriver

pytestmark = pytest.mark.ociregistry_only


@implementer(IRegistryObserver)
class Recorder:
    def __init__(self):
        self.events: list[RegistryEvent] = []

    def observe(self, event):
        self.events.append(event)

    def take(self) -> list[tuple]:
        """(action, kind, repository) of every event since the last call, and forget them."""
        taken, self.events = self.events, []
        return [(e.action, e.target.kind, str(e.target.repository)) for e in taken]


@attr.s(auto_attribs=True)
class Served:
    url: str
    registry: ObservedRegistry


@pytest.fixture
def served(tmp_path):
    """A registry with a `Recorder`, behind HTTP Basic auth: alice may push and delete everything."""
    (tmp_path / "htpasswd").write_text("alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n")  # password "pass"
    auth = AuthConfig.parse({"htpasswd": str(tmp_path / "htpasswd"), "admins": ["alice"]})
    state = AuthState(auth)
    registry = ObservedRegistry(Registry(FilesystemDriver(str(tmp_path / "data"))), [Recorder()])
    api = RegistryAPI(registry, authorizer=BasicAuthorizer(state, PasswordLogin(state)))
    port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
    yield Served(f"http://127.0.0.1:{port.getHost().port}", registry)
    pytest_twisted.blockon(port.stopListening())


ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pass").decode(), "User-Agent": "tests/1.0"}


def recorder(served) -> Recorder:
    return served.registry.observers[0]


@pytest.fixture
def as_alice(monkeypatch):
    """Every `fetch` of api_helpers sends alice's credentials (the helpers take no headers)."""
    import api_helpers

    original = api_helpers.fetch

    async def with_credentials(method, target, body=None, headers=None, **kw):
        return await original(method, target, body, {**ALICE, **(headers or {})}, **kw)

    monkeypatch.setattr(api_helpers, "fetch", with_credentials)
    return with_credentials


def test_the_observed_registry_and_the_log_observer_provide_their_interfaces(tmp_path):
    registry = ObservedRegistry(Registry(FilesystemDriver(str(tmp_path))), [LogObserver()])
    assert verifyObject(IRegistry, registry)
    assert verifyObject(IRegistryObserver, LogObserver())
    assert verifyObject(IRegistryObserver, Recorder())


@pytest_twisted.ensureDeferred
async def test_every_completed_operation_is_reported_with_who_did_it(served, as_alice):
    events = recorder(served)
    push = await as_alice("POST", url(served, "/v2/app/blobs/uploads/"), b"")  # a session alone is no event
    assert push.status == 202 and events.take() == []

    image = await push_image(served, "app", "v1", layers=1)
    # config and layer: chunked uploads (POST then PUT ?digest=), then the manifest
    assert events.events[0].caller.actor == "alice"
    pushed = events.events[-1]
    assert events.take() == [("push", "blob", "app")] * 2 + [("push", "manifest", "app")]
    assert pushed.target.digest == Digest.parse(image.digest)
    assert pushed.target.media_type == OCI_MANIFEST
    assert pushed.target.size == len(image.manifest)
    assert pushed.target.tags == (Tag("v1"),)
    assert [str(d.digest) for d in pushed.target.references] == [
        sha256_digest(image.config),
        sha256_digest(image.layers[0]),
    ]
    caller = pushed.caller
    assert (caller.actor, caller.addr, caller.method, caller.useragent) == ("alice", "127.0.0.1", "PUT", "tests/1.0")
    assert caller.host == served.url.removeprefix("http://")

    layer = sha256_digest(image.layers[0])
    monolithic = b"pushed in one POST"
    reply = await as_alice(
        "POST", with_query(url(served, "/v2/app/blobs/uploads/"), digest=sha256_digest(monolithic)), monolithic
    )
    assert reply.status == 201
    [event] = events.events
    assert events.take() == [("push", "blob", "app")]
    assert (event.target.size, event.target.media_type) == (len(monolithic), "application/octet-stream")

    # Pulls: a GET is one; a HEAD is not; a failed GET reports nothing.
    assert (await as_alice("HEAD", url(served, "/v2/app/manifests/v1"))).status == 200
    assert (await as_alice("HEAD", url(served, f"/v2/app/blobs/{layer}"))).status == 200
    assert (await as_alice("GET", url(served, "/v2/app/manifests/nope"))).status == 404
    assert events.take() == []
    assert (await as_alice("GET", url(served, "/v2/app/manifests/v1"))).status == 200
    assert (await as_alice("GET", url(served, f"/v2/app/blobs/{layer}"))).status == 200
    pulled_manifest, pulled_blob = events.events
    assert events.take() == [("pull", "manifest", "app"), ("pull", "blob", "app")]
    assert pulled_manifest.target.tags == (Tag("v1"),) and pulled_manifest.target.digest == pushed.target.digest
    assert (pulled_blob.target.digest, pulled_blob.target.size) == (Digest.parse(layer), len(image.layers[0]))
    assert pulled_blob.caller.method == "GET"

    # A mount names where the blob came from; one that finds nothing to mount is an ordinary upload.
    assert (await mount(served, "other", layer, "app")).status == 201
    [mounted] = events.events
    assert events.take() == [("mount", "blob", "other")]
    assert mounted.target.from_repository == Name("app") and mounted.target.size == len(image.layers[0])
    assert (await mount(served, "other", sha256_digest(b"nowhere"), "app")).status == 202
    assert events.take() == []

    # Deletes: a tag, a manifest, a blob.
    assert (await as_alice("DELETE", url(served, "/v2/app/manifests/v1"))).status == 202
    assert (await as_alice("DELETE", url(served, f"/v2/app/manifests/{image.digest}"))).status == 202
    assert (await as_alice("DELETE", url(served, f"/v2/app/blobs/{layer}"))).status == 202
    untagged, deleted, unlinked = events.events
    assert events.take() == [("delete", "tag", "app"), ("delete", "manifest", "app"), ("delete", "blob", "app")]
    assert untagged.target.tags == (Tag("v1"),)
    assert deleted.target.digest == Digest.parse(image.digest)
    assert unlinked.target.digest == Digest.parse(layer)
    assert len({e.id for e in (untagged, deleted, unlinked)}) == 3


@pytest_twisted.ensureDeferred
async def test_deleting_a_manifest_reports_the_tags_it_removed(served, as_alice):
    """As Distribution does: the manifest's delete, then one tag delete per tag that pointed at it."""
    events = recorder(served)
    image = await push_image(served, "app", "v1", layers=1)
    manifest_url = url(served, "/v2/app/manifests/v2")
    assert (await as_alice("PUT", manifest_url, image.manifest, {"Content-Type": OCI_MANIFEST})).status == 201
    events.take()
    assert (await as_alice("DELETE", url(served, f"/v2/app/manifests/{image.digest}"))).status == 202
    deleted, *untagged = events.events
    assert events.take() == [("delete", "manifest", "app"), ("delete", "tag", "app"), ("delete", "tag", "app")]
    assert deleted.target.digest == Digest.parse(image.digest)
    assert sorted(e.target.tags for e in untagged) == [(Tag("v1"),), (Tag("v2"),)]
    assert {e.caller.request_id for e in (deleted, *untagged)} == {deleted.caller.request_id}
    assert deleted.caller.request_id is not None


@pytest_twisted.ensureDeferred
async def test_an_anonymous_caller_is_reported_as_such(tmp_path):
    events = Recorder()
    api = RegistryAPI(ObservedRegistry(Registry(FilesystemDriver(str(tmp_path))), [events]))
    port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
    try:
        registry = Served(f"http://127.0.0.1:{port.getHost().port}", None)
        await push_blob(registry, "open", b"anyone may push here")
        [event] = events.events
        assert event.caller.principal.anonymous and event.caller.actor is None
        assert event.caller.addr == "127.0.0.1"
    finally:
        await port.stopListening()


def envelope(event: RegistryEvent, base_url: str) -> dict:
    """A CNCF Distribution notification built from an event alone, as a webhook sender would."""
    target, caller = event.target, event.caller
    return {
        "id": event.id,
        "action": event.action,
        "target": {
            "mediaType": target.media_type,
            "digest": str(target.digest),
            "size": target.size,
            "repository": str(target.repository),
            "fromRepository": str(target.from_repository) if target.from_repository else None,
            "url": f"{base_url}/v2/{target.repository}/manifests/{target.digest}",
            "tag": str(target.tags[0]) if target.tags else None,
            "references": [d.to_json() for d in target.references],
        },
        "request": {
            "id": caller.request_id,
            "addr": caller.addr,
            "host": caller.host,
            "method": caller.method,
            "useragent": caller.useragent,
        },
        "actor": {"name": caller.actor},
    }


@pytest_twisted.ensureDeferred
async def test_an_event_holds_what_a_distribution_notification_says(served, as_alice):
    image = await push_image(served, "team/app", "v2")
    body = envelope(recorder(served).events[-1], served.url)
    assert body["action"] == "push"
    assert body["target"]["mediaType"] == OCI_MANIFEST
    assert body["target"]["digest"] == image.digest and body["target"]["size"] == len(image.manifest)
    assert body["target"]["repository"] == "team/app" and body["target"]["tag"] == "v2"
    assert [r["digest"] for r in body["target"]["references"]] == [sha256_digest(image.config)] + [
        sha256_digest(layer) for layer in image.layers
    ]
    assert body["request"]["addr"] == "127.0.0.1" and body["request"]["method"] == "PUT"
    assert body["request"]["useragent"] == "tests/1.0" and body["request"]["host"]
    assert body["actor"] == {"name": "alice"}
    json.dumps(body)  # serialisable as it is


@implementer(IRegistryObserver)
class Raising:
    def observe(self, event):
        raise RuntimeError("the observer is broken")


@implementer(IRegistryObserver)
class FailingLater:
    def observe(self, event):
        return fail(RuntimeError("the delivery failed"))


@implementer(IRegistryObserver)
class NeverDone:
    """An observer whose work never finishes (an unreachable webhook, say)."""

    def __init__(self):
        self.pending: list[Deferred] = []

    def observe(self, event):
        waiting: Deferred = Deferred()
        self.pending.append(waiting)
        return waiting


@implementer(IRegistryObserver)
class Coroutine:
    def __init__(self):
        self.seen = []

    async def observe(self, event):
        self.seen.append(event.action)
        raise RuntimeError("the coroutine observer is broken")


@pytest_twisted.ensureDeferred
async def test_a_failing_or_unfinished_observer_never_fails_the_request(served, as_alice):
    never, coroutine = NeverDone(), Coroutine()
    for observer in (Raising(), FailingLater(), never, coroutine):
        served.registry.add_observer(observer)
    with capturedLogs() as logged:
        image = await push_image(served, "app", "v1")  # answered 201 (push_image checks), though none finished
        reply = await as_alice("GET", url(served, "/v2/app/manifests/v1"))
    assert reply.status == 200 and reply.body == image.manifest
    # The observers after the broken ones saw every event.
    assert recorder(served).take() == [("push", "blob", "app")] * 2 + [
        ("push", "manifest", "app"),
        ("pull", "manifest", "app"),
    ]
    assert len(never.pending) == 4 and not any(d.called for d in never.pending)
    assert coroutine.seen == ["push", "push", "push", "pull"]
    failures = [e for e in logged if "log_failure" in e]
    messages = {str(e["log_failure"].value) for e in failures}
    assert messages == {"the observer is broken", "the delivery failed", "the coroutine observer is broken"}
    assert len(failures) == 3 * 4
    assert "failed on push manifest app" in " ".join(formatEvent(e) for e in failures)


def test_the_log_observer_says_who_pushed_what():
    with capturedLogs() as logged:
        events = []
        observer = LogObserver(Logger(observer=events.append))
        caller = Caller(addr="192.0.2.7")
        from oci_registry.observe import Target

        digest = Digest.parse(sha256_digest(b"m"))
        observer.observe(
            RegistryEvent(PUSH, Target(MANIFEST, Name("team/app"), digest, OCI_MANIFEST, 1, (Tag("v1"),)), caller, 0.0)
        )
        observer.observe(RegistryEvent(PUSH, Target(MANIFEST, Name("team/app"), digest, OCI_MANIFEST, 1), caller, 0.0))
        for action, kind in ((PULL, MANIFEST), (PUSH, BLOB), (MOUNT, BLOB), (DELETE, TAG)):
            observer.observe(RegistryEvent(action, Target(kind, Name("team/app"), digest), caller, 0.0))
    assert [formatEvent(e) for e in events] == [
        f"pushed team/app:v1 as {digest}",
        f"pushed team/app:{digest} as {digest}",
    ]
    assert events[0]["addr"] == "192.0.2.7" and events[0]["actor"] is None
    assert not logged


@pytest_twisted.ensureDeferred
async def test_the_daemons_registry_logs_each_manifest_push(tmp_path):
    port = reactor.listenTCP(0, Site(registry_resource(config=Config(data_dir=str(tmp_path)))), interface="127.0.0.1")
    try:
        registry = Served(f"http://127.0.0.1:{port.getHost().port}", None)
        with capturedLogs() as logged:
            image = await push_image(registry, "logged/app", "v3")
        lines = [formatEvent(e) for e in logged]
        assert f"pushed logged/app:v3 as {image.digest}" in lines
        [event] = [e for e in logged if formatEvent(e).startswith("pushed ")]
        assert event["addr"] == "127.0.0.1"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_manifest_pushed_by_digest_with_tags_reports_every_tag(served, as_alice):
    from api_helpers import image_config

    config, layer = image_config("tags"), b"a layer"
    await push_blob(served, "app", config)
    await push_blob(served, "app", layer)
    manifest = image_manifest(config, [layer])
    digest = sha256_digest(manifest)
    target = url(served, f"/v2/app/manifests/{digest}") + "?tag=a&tag=b"
    reply = await as_alice("PUT", target, manifest, {"Content-Type": OCI_MANIFEST})
    assert reply.status == 201, reply
    pushed = recorder(served).events[-1]
    assert (pushed.action, pushed.target.tags) == (PUSH, (Tag("a"), Tag("b")))


@implementer(IRegistryObserver)
class PushesOnly(Recorder):
    actions = frozenset({PUSH})


@pytest_twisted.ensureDeferred
async def test_an_event_no_observer_wants_is_never_built(tmp_path):
    """Observers that declare ``actions`` get only those; with none wanting pulls, a GET builds no event."""
    stamps = []

    def clock():
        stamps.append(1)  # the clock stamps every event built
        return 0.0

    pushes = PushesOnly()
    registry = ObservedRegistry(Registry(FilesystemDriver(str(tmp_path))), [pushes], clock=clock)
    port = reactor.listenTCP(0, Site(RegistryAPI(registry).resource()), interface="127.0.0.1")
    served = Served(f"http://127.0.0.1:{port.getHost().port}", registry)
    try:
        image = await push_image(served, "app", "v1", layers=1)
        assert pushes.take() == [("push", "blob", "app")] * 2 + [("push", "manifest", "app")]
        built = len(stamps)
        layer = sha256_digest(image.layers[0])
        for _ in range(3):
            assert (await fetch_status(served, "/v2/app/manifests/v1")) == 200
            assert (await fetch_status(served, f"/v2/app/blobs/{layer}")) == 200
        assert pushes.take() == [] and len(stamps) == built

        everything = Recorder()  # no ``actions``: every event, pulls included
        registry.add_observer(everything)
        assert (await fetch_status(served, "/v2/app/manifests/v1")) == 200
        assert everything.take() == [("pull", "manifest", "app")] and pushes.take() == []
    finally:
        await port.stopListening()


async def fetch_status(served, path: str) -> int:
    import api_helpers

    return (await api_helpers.fetch("GET", url(served, path))).status
