"""
The notification parts on their own: the configuration, the stored event,
the formats and the signature, the outbox's names, the lease over a real
filesystem storage, and the notifier's counters with a real receiver.
"""

from __future__ import annotations

import json
import os
import time

import attr
import pytest
import pytest_twisted
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from oci_registry.config import Config, ConfigError
from oci_registry.identity import Caller, Principal
from oci_registry.manifest import Descriptor
from oci_registry.notifications import formats
from oci_registry.notifications.config import Filter, NotificationsConfig
from oci_registry.notifications.delivery import LATENCY_BUCKETS
from oci_registry.notifications.notice import Notice, Source, decode_batch, encode_batch, notices_of
from oci_registry.notifications.notifier import INotificationStatus, Notifier
from oci_registry.notifications.outbox import BatchName, Lease, Outbox
from oci_registry.observe import BLOB, DELETE, MANIFEST, PUSH, TAG, IRegistryObserver, RegistryEvent, Target
from oci_registry.reference import Digest, Name, Tag
from oci_registry.storage.filesystem import FilesystemDriver
from receiver_process import ReceiverProcess

DIGEST = Digest.of(b"a manifest")
LAYER = Digest.of(b"a layer")


def caller(**extra) -> Caller:
    values = {"addr": "192.0.2.1", "host": "registry.example:5000", "method": "PUT", "useragent": "skopeo/1.9"}
    return Caller(principal=Principal(name="alice"), request_id="0" * 32, **{**values, **extra})


def manifest_push(tags: tuple = ("v1",), timestamp: float = 1733100000.25) -> RegistryEvent:
    tags = tuple(Tag(t) for t in tags)
    references = (Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", LAYER, 7),)
    target = Target(MANIFEST, Name("team/app"), DIGEST, "application/vnd.oci.image.manifest.v1+json", 42, tags)
    target = attr.evolve(target, references=references)
    return RegistryEvent(PUSH, target, caller(), timestamp)


SOURCE = Source("registry-host:5000", "11111111-2222-3333-4444-555555555555")


# ----------------------------------------------------------------- config


def test_an_endpoint_needs_only_a_name_and_a_url():
    settings = NotificationsConfig.parse({"endpoints": [{"name": "ci", "url": "https://ci.example/hook"}]})
    [ci] = settings.endpoints
    assert (ci.format, ci.timeout, ci.backoff_initial, ci.backoff_max) == ("distribution", 5.0, 1.0, 300.0)
    assert ci.filter.actions == ("push", "mount", "delete")  # no pulls unless asked for
    assert (ci.max_attempts, ci.max_age, ci.secret, ci.include_references) == (0, 3 * 86400.0, None, False)
    assert (ci.batch, ci.batch_window) == (50, 0.5)


def test_the_configuration_survives_the_trip_to_a_worker():
    """Workers get the config as JSON (``Config.to_dict``): it must parse back to the same thing."""
    section = {
        "registry_url": "https://registry.example/",
        "lease": "20s",
        "endpoints": [
            {
                "name": "ci",
                "url": "https://ci.example/hook",
                "format": "cloudevents",
                "headers": {"Authorization": "Bearer x", "X-Many": ["a", "b"]},
                "secret": "s",
                "timeout": "2s",
                "backoff": {"initial": "2s", "max": "1m"},
                "actions": ["push", "pull"],
                "repositories": ["team/**"],
                "media_types": ["application/vnd.oci.*"],
                "ignore": {"repositories": ["team/tmp/**"], "actions": ["pull"], "media_types": ["x"]},
                "include_references": True,
                "max_attempts": 3,
                "max_age": "1h",
                "concurrency": 2,
                "batch_window": "250ms",
                "pull_batch": 10,
            }
        ],
    }
    config = Config.from_dict({"notifications": section})
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.notifications == config.notifications
    [ci] = config.notifications.endpoints
    assert ci.headers == (("Authorization", "Bearer x"), ("X-Many", "a"), ("X-Many", "b"))
    assert config.notifications.registry_url == "https://registry.example"
    assert "secret" not in repr(ci)  # never in a log line


@pytest.mark.parametrize(
    "section, message",
    [
        ({"endpoint": []}, "unknown keys endpoint"),
        ({"endpoints": [{"url": "http://x/"}]}, "endpoints[0]: name is required"),
        ({"endpoints": [{"name": "../x", "url": "http://x/"}]}, "name '../x' must be"),
        ({"endpoints": [{"name": "a", "url": "http://u:p@x/"}]}, "must not hold credentials"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "format": "xml"}]}, "format must be one of"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "timeout": 0}]}, "every request needs a deadline"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "actions": ["tag"]}]}, "tag not one of"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "headers": {"Host": "y"}}]}, "Host is set by the registry"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "headers": {"A": "b\r\nc"}}]}, "on one line"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "backoff": {"initial": "5s", "max": "1s"}}]}, "not be less"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "concurrency": 0}]}, "at least 1"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "batch_window": "11s"}]}, "batch_window must be at most 10s"),
        ({"endpoints": [{"name": "a", "url": "http://x/", "batch_window": "-1s"}]}, "batch_window: not a duration"),
        ({"endpoints": [{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}]}, "two endpoints"),
        ({"lease": "0.5s"}, "lease must be at least 1s"),
    ],
)
def test_a_configuration_mistake_names_the_key(section, message):
    with pytest.raises(ConfigError) as error:
        Config.from_dict({"notifications": section})
    assert str(error.value).startswith("notifications: ") and message in str(error.value)


def test_filters_match_actions_repositories_and_media_types():
    f = Filter(
        actions=("push", "delete"),
        repositories=("team/**", "solo"),
        media_types=("application/vnd.oci.image.*",),
        ignore_repositories=("team/tmp/**",),
        ignore_media_types=("application/vnd.oci.image.index.v1+json",),
    )
    manifest = "application/vnd.oci.image.manifest.v1+json"
    assert f.matches("push", "team/app", manifest) and f.matches("push", "solo", manifest)
    assert not f.matches("pull", "team/app", manifest)
    assert not f.matches("push", "other", manifest) and not f.matches("push", "team", manifest)
    assert not f.matches("push", "team/tmp/x", manifest)
    assert not f.matches("push", "team/app", "application/octet-stream")
    assert not f.matches("push", "team/app", "application/vnd.oci.image.index.v1+json")
    assert f.matches("delete", "team/app", None)  # a delete has no media type


# ------------------------------------------------------------------ events


def test_a_notice_is_stored_and_read_back_unchanged():
    [notice] = notices_of(manifest_push(), SOURCE, scheme="https")
    assert Notice.from_json(notice.to_json()) == notice
    assert decode_batch(encode_batch([notice, notice])) == [notice, notice]
    assert notice.url == f"https://registry.example:5000/v2/team/app/manifests/{DIGEST}"
    with pytest.raises(ValueError):
        decode_batch(b'{"id": 1}\n')
    with pytest.raises(ValueError):
        decode_batch(b"not json\n")


def test_a_push_with_several_tags_is_one_event_per_tag():
    notices = notices_of(manifest_push(("a", "b")), SOURCE)
    assert [n.tag for n in notices] == ["a", "b"] and len({n.id for n in notices}) == 2
    assert len({dict(n.request)["id"] for n in notices}) == 1


def test_the_distribution_event_of_each_kind():
    [pushed] = notices_of(manifest_push(), SOURCE, registry_url="https://r.example")
    event = formats.distribution_event(pushed)
    assert event == {
        "id": pushed.id,
        "timestamp": "2024-12-02T00:40:00.25Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 42,
            "digest": str(DIGEST),
            "length": 42,
            "repository": "team/app",
            "url": f"https://r.example/v2/team/app/manifests/{DIGEST}",
            "tag": "v1",
        },
        "request": {
            "id": "00000000-0000-0000-0000-000000000000",
            "addr": "192.0.2.1",
            "host": "registry.example:5000",
            "method": "PUT",
            "useragent": "skopeo/1.9",
        },
        "actor": {"name": "alice"},
        "source": {"addr": "registry-host:5000", "instanceID": SOURCE.instance},
    }
    assert formats.distribution_event(pushed, references=True)["target"]["references"] == [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 7, "digest": str(LAYER)}
    ]
    untag = RegistryEvent(DELETE, Target(TAG, Name("team/app"), tags=(Tag("v1"),)), Caller(), 1.0)
    [untagged] = notices_of(untag, SOURCE)
    event = formats.distribution_event(untagged)
    assert event["target"] == {"repository": "team/app", "tag": "v1"} and event["actor"] == {}
    assert set(event["request"]) == {"id", "method", "useragent"}  # Distribution's are never omitted
    unlink = RegistryEvent(DELETE, Target(BLOB, Name("team/app"), LAYER), caller(method="DELETE"), 1.0)
    [unlinked] = notices_of(unlink, SOURCE)
    assert formats.distribution_event(unlinked)["target"] == {"digest": str(LAYER), "repository": "team/app"}


def test_times_are_written_as_go_writes_them():
    assert formats.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert formats.rfc3339(1.5) == "1970-01-01T00:00:01.5Z"
    assert formats.rfc3339(1.000001) == "1970-01-01T00:00:01.000001Z"


def test_cloudevents_types_and_batches():
    [pushed] = notices_of(manifest_push(), SOURCE)
    untag = RegistryEvent(DELETE, Target(TAG, Name("team/app"), tags=(Tag("v1"),)), Caller(), 1.0)
    [untagged] = notices_of(untag, SOURCE)
    assert formats.cloudevent_type(pushed) == "ociregistry.manifest.pushed"
    assert formats.cloudevent_type(untagged) == "ociregistry.tag.deleted"
    event = formats.cloudevent(pushed)
    assert event["subject"] == "team/app:v1" and event["source"] == "//registry-host:5000"
    assert formats.cloudevent(pushed, source="https://r.example")["source"] == "https://r.example"
    content_type, body = formats.encode("cloudevents", [pushed])
    assert content_type == formats.CLOUDEVENT_MEDIA_TYPE and json.loads(body)["id"] == pushed.id
    content_type, body = formats.encode("cloudevents", [pushed, untagged])
    assert content_type == formats.CLOUDEVENT_BATCH_MEDIA_TYPE and len(json.loads(body)) == 2


def test_a_signature_is_over_the_time_and_the_exact_body():
    header = formats.signature("secret", b"{}", 1000)
    assert header.startswith("t=1000,sha256=")
    assert formats.verify("secret", b"{}", header, now=1000)
    assert not formats.verify("secret", b"{} ", header, now=1000)
    assert not formats.verify("other", b"{}", header, now=1000)
    assert not formats.verify("secret", b"{}", header, now=1000 + 301)  # too old: a replay
    assert not formats.verify("secret", b"{}", None, now=1000)
    assert not formats.verify("secret", b"{}", "sha256=00", now=1000)


# ------------------------------------------------------------------ outbox


def test_batch_names_sort_by_time_and_say_their_count():
    name = BatchName(1733100000123456789, "abc123", 7, 12)
    assert str(name) == "01733100000123456789-abc123-00000007-12"
    assert BatchName.parse(str(name)) == name and name.count == 12
    assert BatchName.parse(".tmp-x") is None and BatchName.parse("01-a-1-1") is None
    assert sorted([BatchName(2, "a", 1, 1), BatchName(1, "z", 9, 1)])[0].stamp == 1


@pytest.fixture
def storage(tmp_path):
    driver = FilesystemDriver(str(tmp_path / "data"))
    yield driver
    driver.close()


@pytest_twisted.ensureDeferred
async def test_one_process_at_a_time_holds_a_lease(storage):
    now = [1000.0]

    def clock():
        return now[0]

    a = Lease(storage, "ci", "a", 15, reactor, clock)
    b = Lease(storage, "ci", "b", 15, reactor, clock)
    assert await a.hold() and not await b.hold()
    now[0] += 10
    assert await a.hold() and not await b.hold()  # renewed
    now[0] += 16  # a stopped renewing: its lease lapsed
    assert await b.hold() and b.generation == 2
    assert not await a.hold() and a.generation is None  # a sees it was taken over
    await b.release()  # b stops: a takes over at once, with the next generation
    assert await a.hold() and a.generation == 3
    assert await storage.list("notifications/endpoints/ci/lease") == ["000000000003"]


@pytest_twisted.ensureDeferred
async def test_dead_letters_go_back_in_the_queue_as_new_batches(storage):
    [notice] = notices_of(manifest_push(), SOURCE)
    outbox = Outbox(storage, "ci", "w")
    buried = await outbox.bury([notice])
    assert await outbox.dead() == [buried] and await outbox.pending() == []
    resent = await outbox.resend(buried)
    assert await outbox.dead() == [] and await outbox.pending() == [resent]
    assert resent.stamp >= buried.stamp and await outbox.read(resent) == [notice]


# ---------------------------------------------------------------- notifier


def notifier_for(storage, receiver_url: str, **endpoint) -> Notifier:
    settings = NotificationsConfig.parse(
        {"endpoints": [{"name": "ci", "url": receiver_url, "backoff": {"initial": "0.1s", "max": "0.2s"}, **endpoint}]}
    )
    return Notifier(settings, storage, reactor, SOURCE)


def test_the_notifier_provides_its_interfaces(storage):
    notifier = notifier_for(storage, "http://127.0.0.1:1/")
    assert verifyObject(IRegistryObserver, notifier)
    assert verifyObject(INotificationStatus, notifier)
    assert verifyObject(IService, notifier)


async def _until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await deferLater(reactor, 0.05, lambda: None)
    return predicate()


@pytest_twisted.ensureDeferred
async def test_the_counters_say_what_was_delivered_and_what_failed(storage, tmp_path):
    receiver = ReceiverProcess(str(tmp_path / "receiver"))  # down at first
    notifier = notifier_for(storage, receiver.url)
    notifier.startService()
    try:
        notifier.observe(manifest_push(timestamp=time.time()))
        assert await _until(lambda: notifier.status()["ci"].failed >= 2)
        status = notifier.status()["ci"]
        assert status.leader and status.pending == 1 and status.delivered == 0
        assert status.oldest_age is not None and "refused" in status.last_error.lower()
        receiver.start()
        assert await _until(lambda: notifier.status()["ci"].delivered == 1)
        status = notifier.status()["ci"]
        assert status.pending == 0 and status.latency_count == 1 and status.latency_sum > 0
        assert [b for b, _ in status.latency_buckets] == list(LATENCY_BUCKETS)
        assert status.latency_buckets[-1][1] == 1 and status.dead_lettered == status.lost == 0
    finally:
        await notifier.stopService()
        receiver.cleanup()
    assert len(receiver.events()) == 1


@pytest_twisted.ensureDeferred
async def test_a_damaged_batch_is_set_aside_and_the_others_delivered(storage, tmp_path):
    receiver = ReceiverProcess(str(tmp_path / "receiver")).start()
    outbox = Outbox(storage, "ci", "earlier")
    damaged = await outbox.append(notices_of(manifest_push(), SOURCE))
    path = os.path.join(storage.root, "notifications", "endpoints", "ci", "pending", str(damaged))
    with open(path, "wb") as f:
        f.write(b"\x00 half a line")
    notifier = notifier_for(storage, receiver.url)
    notifier.startService()
    try:
        notifier.observe(manifest_push())
        assert await _until(lambda: len(receiver.events()) == 1)
        assert await outbox.dead() == [damaged] and await outbox.pending() == []
    finally:
        await notifier.stopService()
        receiver.cleanup()


def test_events_beyond_what_memory_may_hold_are_counted_as_lost(storage):
    """Not started (as while the storage cannot take writes), the notifier holds at most max_buffered events."""
    settings = NotificationsConfig.parse(
        {"max_buffered": 3, "endpoints": [{"name": "ci", "url": "http://127.0.0.1:1/"}]}
    )
    notifier = Notifier(settings, storage, reactor, SOURCE)
    for _ in range(5):
        notifier.observe(manifest_push())
    assert notifier.status()["ci"].lost == 2


@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_filters_an_event_out_never_stores_it(storage):
    notifier = notifier_for(storage, "http://127.0.0.1:1/", repositories=["other/**"])
    notifier.startService()
    notifier.observe(manifest_push())
    await notifier.stopService()  # writes what waits
    assert await Outbox(storage, "ci", "w").pending() == []
    kept = notifier_for(storage, "http://127.0.0.1:1/", repositories=["team/**"])
    kept.startService()
    kept.observe(manifest_push())
    await kept.stopService()
    assert [b.count for b in await Outbox(storage, "ci", "w").pending()] == [1]


@pytest_twisted.ensureDeferred
async def test_a_busy_registry_writes_many_events_at_a_time(storage):
    """The first event is written at once; those observed within record_window after go in one more write."""
    settings = NotificationsConfig.parse(
        {"record_window": "300ms", "endpoints": [{"name": "ci", "url": "http://127.0.0.1:1/"}]}
    )
    assert settings.record_window == 0.3
    notifier = Notifier(settings, storage, reactor, SOURCE)
    notifier.startService()
    try:
        for _ in range(30):
            notifier.observe(manifest_push())
            await deferLater(reactor, 0.002, lambda: None)
        outbox = Outbox(storage, "ci", "w")
        batches = []
        for _ in range(200):  # until all 30 are in storage (at most 10 s)
            batches = await outbox.pending()
            if sum(b.count for b in batches) == 30:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert [b.count for b in batches][0] == 1 and sum(b.count for b in batches) == 30
        assert len(batches) <= 3  # not one write per event
    finally:
        await notifier.stopService()


def test_the_composition_root_wires_the_notifier_to_the_registry(tmp_path):
    from oci_registry.compose import build

    config = Config.from_dict(
        {"data_dir": str(tmp_path), "notifications": {"endpoints": [{"name": "ci", "url": "http://127.0.0.1:1/"}]}}
    )
    components = build(config, reactor)
    assert components.notification_service() is components.notifier
    assert components.notifier in components.registry.observers
    assert build(Config.from_dict({"data_dir": str(tmp_path)}), reactor).notification_service() is None


class _Hostile:
    """A TCP server on 127.0.0.1 that answers every connection with ``reply`` (bytes, or None: never)."""

    def __init__(self, reply: bytes | None, repeat: int = 1):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.reply, self.repeat = reply, repeat
        self.connections: list = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for _ in range(4):  # connections, at most
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            conn.settimeout(20)
            try:
                conn.recv(65536)
                if self.reply is not None:
                    for _ in range(self.repeat):
                        conn.sendall(self.reply)
            except OSError:
                continue  # the registry dropped the connection: what the test wants

    def close(self):
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize(
    "reply, repeat, reason",
    [
        (None, 1, "no answer within 0.5s"),
        (b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n", 1, "answered 302 Found"),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 2000,
            1,
            "headers are longer than",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_stalls_redirects_or_floods_is_a_failed_delivery(reply, repeat, reason):
    from oci_registry.notifications.config import EndpointConfig
    from oci_registry.notifications.sender import DeliveryFailed, Sender

    server = _Hostile(reply, repeat)
    sender = Sender(
        EndpointConfig.parse({"name": "x", "url": f"http://127.0.0.1:{server.port}/", "timeout": 0.5}), reactor
    )
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await sender.send(notices_of(manifest_push(), SOURCE))
        assert reason in str(failed.value)
    finally:
        await sender.close()
        server.close()


@pytest_twisted.ensureDeferred
async def test_an_endpoint_answering_200_with_an_endless_body_took_the_events():
    """The status is the answer: a body past 64 KiB is not read (the connection is dropped)."""
    from oci_registry.notifications.config import EndpointConfig
    from oci_registry.notifications.sender import Sender

    chunk = b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
    server = _Hostile(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4)  # and more: never ends
    sender = Sender(
        EndpointConfig.parse({"name": "x", "url": f"http://127.0.0.1:{server.port}/", "timeout": 0.5}), reactor
    )
    try:
        await sender.send(notices_of(manifest_push(), SOURCE))
    finally:
        await sender.close()
        server.close()
