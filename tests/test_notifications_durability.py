"""
Notifications are never lost: an endpoint that is down, a registry killed
with events not yet delivered, several processes sharing one outbox, dead
letters sent again.  Real processes throughout: registries, a receiver on
127.0.0.1, ``ociregistry events``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from image_builder import http_request, push_blob_http, random_bytes
from notification_helpers import endpoint, ociregistry, pending_events, wait_until
from receiver_process import ReceiverProcess
from registry_process import RegistryProcess, registry_environment
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only


@pytest.fixture
def receiver(tmp_path):
    process = ReceiverProcess(str(tmp_path / "receiver"))  # not started: the endpoint is down
    yield process
    process.cleanup()


def push_blobs(registry, name: str, count: int, seed: str) -> list[str]:
    return [push_blob_http(registry.url, name, random_bytes(64, f"{seed}/{i}")) for i in range(count)]


def pushed_digests(receiver: ReceiverProcess, repository: str) -> list[str]:
    return [
        e["target"]["digest"]
        for e in receiver.events()
        if e["action"] == "push" and e["target"]["repository"] == repository
    ]


def events_command(config: str, data_dir: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oci_registry.cli", "events", "--config", config, "--data-dir", data_dir, *args],
        capture_output=True,
        text=True,
        env=registry_environment(),
        timeout=60,
    )


def test_an_endpoint_down_during_50_pushes_gets_all_50_in_order(tmp_path, receiver):
    data = str(tmp_path / "data")
    registry = ociregistry(tmp_path, data, [endpoint(receiver)]).start()
    try:
        digests = push_blobs(registry, "outage/app", 50, "outage")
        assert wait_until(lambda: pending_events(data) == 50, timeout=20), pending_events(data)
        # The outbox, as an operator sees it while the endpoint is down.
        shown = events_command(registry.config, data, "--json")
        assert shown.returncode == 0, shown.stderr
        [report] = json.loads(shown.stdout)
        assert (report["endpoint"], report["pending"], report["dead"]) == ("test", 50, 0)
        assert report["oldest_age"] >= 0 and report["delivered_by"].endswith(f"pid {registry.process.pid}")
        table = events_command(registry.config, data)
        assert table.returncode == 0 and table.stdout.splitlines()[1].split()[:2] == ["test", "50"]

        receiver.start()
        received = receiver.wait_for(50, timeout=60)
        assert len(received) == 50
        assert pushed_digests(receiver, "outage/app") == digests  # every one, once, in the order pushed
        assert wait_until(lambda: pending_events(data) == 0, timeout=20)
    finally:
        registry.stop()
    assert "notifications to test failing" in registry.log()
    assert "notifications to test: delivering again" in registry.log()


@pytest.mark.parametrize(
    "options, content_type, most",
    [
        ({}, "application/vnd.docker.distribution.events.v2+json", 2),
        ({"format": "cloudevents", "batch": 50}, "application/cloudevents-batch+json; charset=utf-8", 2),
        ({"batch": 5}, "application/vnd.docker.distribution.events.v2+json", 8),  # 4 requests in flight at once
    ],
    ids=["distribution", "cloudevents-batched", "several-requests"],
)
def test_events_of_many_repositories_that_wait_go_together(tmp_path, receiver, options, content_type, most):
    """
    40 pushes into 8 repositories while the endpoint is down reach it in
    one or two requests (not one per repository), or in full requests of
    ``batch``, and each repository's in the order pushed.
    """
    data = str(tmp_path / "data")
    registry = ociregistry(tmp_path, data, [endpoint(receiver, **options)]).start()
    repositories = [f"many/app{i}" for i in range(8)]
    digests: dict[str, list[str]] = {name: [] for name in repositories}
    try:
        for round_ in range(5):
            for name in repositories:
                digests[name] += push_blobs(registry, name, 1, f"many/{name}/{round_}")
        created = len(repositories) if options.get("format") == "cloudevents" else 0
        expected = 40 + created
        assert wait_until(lambda: pending_events(data) == expected, timeout=20), pending_events(data)
        receiver.start()
        assert len(receiver.wait_for(expected, timeout=60)) == expected
        assert wait_until(lambda: pending_events(data) == 0, timeout=20)
    finally:
        registry.stop()
    requests = receiver.accepted()
    assert 1 <= len(requests) <= most, [len(json.loads(r["body"])) for r in requests]
    assert {r["headers"]["content-type"] for r in requests} == {content_type}
    events = receiver.events()
    assert len({e["id"] for e in events}) == len(events) == expected
    for name in repositories:
        if options.get("format") == "cloudevents":
            mine = [e for e in events if e["data"]["repository"] == name]
            assert mine[0]["type"] == "ociregistry.repository.created"
            assert [e["data"]["digest"] for e in mine[1:]] == digests[name]
        else:
            assert pushed_digests(receiver, name) == digests[name]  # each repository's, in the order pushed


def test_a_busy_endpoint_gets_few_full_requests_and_an_idle_one_its_event_at_once(tmp_path, receiver):
    """
    An event that comes alone is sent at once; those recorded while a
    request started within the last ``batch_window`` wait for it to pass
    and go together (one request per record window, as before, would be
    dozens here), in requests of at most ``batch``: every one, once, each
    repository's in the order pushed.
    """
    window, batch = 5.0, 50
    data = str(tmp_path / "data")
    receiver.start()
    registry = ociregistry(tmp_path, data, [endpoint(receiver, batch=batch, batch_window=f"{window:g}s")]).start()
    repositories = [f"busy/app{i}" for i in range(3)]
    digests: dict[str, list[str]] = {name: [] for name in repositories}
    try:
        digests[repositories[0]] += push_blobs(registry, repositories[0], 1, "busy/alone")
        pushed = time.time()
        receiver.wait_for(1, timeout=30)
        [alone] = receiver.accepted()
        assert alone["t"] - pushed < window  # not held back: no request had started within the window

        started = time.monotonic()
        for i in range(120):
            name = repositories[i % 3]
            digests[name] += push_blobs(registry, name, 1, f"busy/{i}")
        pushing = time.monotonic() - started
        assert len(receiver.wait_for(121, timeout=60)) == 121
        assert wait_until(lambda: pending_events(data) == 0, timeout=20)
    finally:
        registry.stop()
    sizes = [len(json.loads(r["body"])["events"]) for r in receiver.accepted()]
    print(f"pushing {pushing:.1f}s; requests of {sizes} events")
    assert sizes[0] == 1 and sum(sizes) == 121 and max(sizes) <= batch, sizes
    # Full requests (at most 120 // batch) go at once, the others at most once per window.
    assert len(sizes) <= 1 + 120 // batch + math.ceil(pushing / window) + 1, (sizes, pushing)
    events = receiver.events()
    assert len({e["id"] for e in events}) == len(events) == 121
    for name in repositories:
        assert pushed_digests(receiver, name) == digests[name]


def test_a_registry_killed_with_undelivered_events_sends_them_after_a_restart(tmp_path, receiver):
    data = str(tmp_path / "data")
    registry = ociregistry(tmp_path, data, [endpoint(receiver)], lease="2s").start()
    try:
        digests = push_blobs(registry, "killed/app", 10, "killed")
        assert wait_until(lambda: pending_events(data) == 10, timeout=20)
        registry.kill()
        receiver.start()
        registry.start()
        assert len(receiver.wait_for(10, timeout=60)) == 10
        assert pushed_digests(receiver, "killed/app") == digests
        # And what it records after the restart still goes out.
        later = push_blobs(registry, "killed/app", 2, "after")
        assert len(receiver.wait_for(12, timeout=30)) == 12
        assert pushed_digests(receiver, "killed/app") == digests + later
    finally:
        registry.stop()


def test_several_workers_deliver_each_event_once(tmp_path, receiver):
    """Every worker records what it served; one of them at a time delivers."""
    data = str(tmp_path / "data")
    receiver.start()
    registry = ociregistry(tmp_path, data, [endpoint(receiver)])
    registry.extra_args += ["--workers", "3"]
    registry.own_process_group = True
    registry.start()
    try:
        assert wait_until(lambda: registry.log().count("worker ") >= 2, timeout=30)
        digests = set()
        for i in range(5):
            digests.update(push_blobs(registry, f"workers/app{i}", 6, f"workers{i}"))
        events = receiver.wait_for(30, timeout=60)
    finally:
        registry.stop()
    assert sorted(e["target"]["digest"] for e in events) == sorted(digests)  # each exactly once
    assert len({e["source"]["instanceID"] for e in events}) >= 2  # recorded by several workers


def test_dead_letters_are_logged_counted_and_sent_again(tmp_path, receiver):
    data = str(tmp_path / "data")
    receiver.start(status=500)
    registry = ociregistry(tmp_path, data, [endpoint(receiver, max_attempts=2)]).start()
    try:
        [digest] = push_blobs(registry, "dead/app", 1, "dead")
        assert wait_until(lambda: "gave up on 1 event(s)" in registry.log(), timeout=30), registry.log_tail()
        assert len(receiver.records()) == 2 and receiver.accepted() == []
        assert pending_events(data) == 0
        [report] = json.loads(events_command(registry.config, data, "--json").stdout)
        assert (report["pending"], report["dead"]) == (0, 1)

        receiver.stop()
        receiver.start(status=200)
        resent = events_command(registry.config, data, "resend")
        assert resent.returncode == 0, resent.stderr
        assert "test: 1 dead letter(s) put back in the queue" in resent.stdout
        [event] = receiver.wait_for(1, timeout=30)
        assert event["target"]["digest"] == digest
        [report] = json.loads(events_command(registry.config, data, "--json").stdout)
        assert report["dead"] == 0
    finally:
        registry.stop()
    assert "answered 500" in registry.log()


def test_pull_events_are_off_by_default_and_batched_when_on(tmp_path):
    pulls = ReceiverProcess(str(tmp_path / "pulls")).start()
    default = ReceiverProcess(str(tmp_path / "default")).start()
    endpoints = [endpoint(pulls, name="pulls", actions=["pull"]), endpoint(default, name="default")]
    registry = ociregistry(tmp_path, str(tmp_path / "data"), endpoints, pull_window="0.5s").start()
    try:
        digests = push_blobs(registry, "pulled/app", 5, "pulled")
        for digest in digests:
            assert http_request("GET", f"{registry.url}/v2/pulled/app/blobs/{digest}").status == 200
            assert http_request("HEAD", f"{registry.url}/v2/pulled/app/blobs/{digest}").status == 200
        events = pulls.wait_for(5, timeout=30)
        assert len(default.wait_for(5, timeout=30)) == 5
    finally:
        registry.stop()
        pulls.cleanup()
        default.cleanup()
    assert sorted(e["target"]["digest"] for e in events) == sorted(digests)  # GETs; a HEAD is no pull
    assert {(e["action"], e["request"]["method"]) for e in events} == {("pull", "GET")}
    assert len(pulls.accepted()) < len(events)  # several to a request
    assert {e["action"] for e in default.events()} == {"push"}


def test_filters(tmp_path):
    manifests = ReceiverProcess(str(tmp_path / "manifests")).start()
    team = ReceiverProcess(str(tmp_path / "team")).start()
    endpoints = [
        endpoint(manifests, name="manifests", media_types=["application/vnd.oci.image.*"], actions=["push"]),
        endpoint(team, name="team", repositories=["team/**"], ignore={"repositories": ["team/private/**"]}),
    ]
    registry = ociregistry(tmp_path, str(tmp_path / "data"), endpoints).start()
    try:
        for name in ("team/app", "team/private/x", "other/app"):
            push_blobs(registry, name, 1, name)
        config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        digest = push_blob_http(registry.url, "other/app", config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest,
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        put = http_request(
            "PUT",
            f"{registry.url}/v2/other/app/manifests/v1",
            manifest,
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert put.status == 201
        [pushed] = manifests.wait_for(1, timeout=30)
        team_events = team.wait_for(1, timeout=30)
    finally:
        registry.stop()
        manifests.cleanup()
        team.cleanup()
    assert (pushed["target"]["repository"], pushed["target"]["tag"]) == ("other/app", "v1")
    assert len(manifests.events()) == 1
    assert (
        [e["target"]["repository"] for e in team_events]
        == ["team/app"]
        == [e["target"]["repository"] for e in team.events()]
    )


def test_a_configuration_that_cannot_work_stops_start_up_with_one_line(tmp_path):
    from notification_helpers import config_file

    config = config_file(tmp_path, [{"name": "x", "url": "ftp://example.com/"}])
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "ociregistry"]
        + ["--config", config, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=registry_environment(),
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ociregistry: notifications: endpoints[0]: url 'ftp://example.com/' must be an http(s) URL"
    ]


def test_stopping_records_what_waits(tmp_path, receiver):
    """A registry stopped (SIGTERM) right after a push has the event in its outbox: sent after the restart."""
    data = str(tmp_path / "data")
    registry = ociregistry(tmp_path, data, [endpoint(receiver)]).start()
    try:
        digests = push_blobs(registry, "stopped/app", 3, "stopped")
        registry.stop(signal.SIGTERM)
        assert pending_events(data) == 3
        receiver.start()
        registry.start()
        receiver.wait_for(3, timeout=30)
        assert pushed_digests(receiver, "stopped/app") == digests
    finally:
        registry.stop()
    assert os.path.isdir(data)


def test_two_replicas_on_one_bucket_deliver_every_event(s3_server, tmp_path):  # noqa: F811
    """
    Two registry processes on one SeaweedFS bucket, pushed to in turn: one
    delivers, every event arrives once.  Then the one delivering is killed
    with events it recorded still undelivered: the other takes over, and
    every event arrives; duplicates are counted (and expected to be none or
    a few).
    """
    receiver = ReceiverProcess(str(tmp_path / "receiver")).start()
    config = s3_server.config_file(
        str(tmp_path), s3_server.settings(), notifications={"lease": "3s", "endpoints": [endpoint(receiver)]}
    )
    replicas = [RegistryProcess(str(tmp_path / name), config=config).start() for name in ("a", "b")]
    try:
        first = [push_blob_http(replicas[i % 2].url, "replicas/app", random_bytes(64, f"r{i}")) for i in range(30)]
        assert wait_until(lambda: set(first) <= set(pushed_digests(receiver, "replicas/app")), timeout=60)
        assert sorted(pushed_digests(receiver, "replicas/app")) == sorted(first)  # once each
        [leader] = [r for r in replicas if "this process delivers them" in r.log()]
        [survivor] = [r for r in replicas if r is not leader]

        receiver.stop()
        held = push_blobs(leader, "replicas/held", 10, "held")

        def recorded():
            shown = events_command(config, str(tmp_path / "a"), "--json")
            return shown.returncode == 0 and json.loads(shown.stdout)[0]["pending"] == 10

        assert wait_until(recorded, timeout=30, step=0.5)
        leader.kill()
        after = push_blobs(survivor, "replicas/after", 10, "after")
        receiver.start()
        wanted = set(first) | set(held) | set(after)
        assert wait_until(lambda: wanted <= {e["target"]["digest"] for e in receiver.events()}, timeout=90)
        assert "this process delivers them" in survivor.log()
    finally:
        for replica in replicas:
            replica.stop()
        receiver.cleanup()
    digests = [e["target"]["digest"] for e in receiver.events()]
    duplicates = len(digests) - len(set(digests))
    print(f"replicas: {len(digests)} events received for {len(wanted)} pushes, {duplicates} duplicate(s)")
    assert set(digests) == wanted and duplicates <= 2
    # Each process's events arrive in the order it recorded them.
    assert pushed_digests(receiver, "replicas/held") == held
    assert pushed_digests(receiver, "replicas/after") == after
