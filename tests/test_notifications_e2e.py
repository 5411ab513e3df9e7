"""
Notifications end to end: a registry process, a receiver process on
127.0.0.1, and skopeo pushing, tagging, copying and deleting.  What the
receiver gets in the ``distribution`` format is compared field by field
with what the reference registry (CNCF Distribution, configured with a
notification endpoint) sends for the same operations; the ``cloudevents``
format and the signature are checked against their specifications.
"""

from __future__ import annotations

import collections
import json
import os
import time

import pytest

from image_builder import (
    MEDIA_TYPE_OCI_MANIFEST,
    OCILayout,
    http_request,
    push_blob_http,
    push_image_http,
    push_manifest_http,
)
from notification_helpers import RFC3339, UUID, comparable, endpoint, ociregistry, reference, wait_until
from receiver_process import ReceiverProcess, verify
from test_e2e_skopeo import SKOPEO, command_runner, copy_args

pytestmark = [
    pytest.mark.ociregistry_only,
    pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed"),
]


@pytest.fixture
def skopeo(tmp_path):
    """skopeo with a configuration, credentials, blob-info cache and temporary files of its own."""
    home = tmp_path / "skopeo-home"
    home.mkdir()
    (home / "registries.conf").write_text("")
    (home / "auth.json").write_text('{"auths": {}}')
    env = dict(os.environ, HOME=str(home), TMPDIR=str(home), XDG_DATA_HOME=str(home / "share"))
    env.update(CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"), REGISTRY_AUTH_FILE=str(home / "auth.json"))
    return command_runner([SKOPEO, "--insecure-policy"], env)


@pytest.fixture
def layout(tmp_path):
    source = OCILayout(tmp_path / "layout")
    image = source.add_image("v1", layers=2, layer_size=4096, seed="notifications")
    return source, image


@pytest.fixture
def receiver(tmp_path):
    process = ReceiverProcess(str(tmp_path / "receiver")).start()
    yield process
    process.cleanup()


def operations(registry, skopeo, layout) -> None:
    """
    The same operations on any registry: push an image, tag it, copy it to
    another repository (blobs mounted), delete the copy, delete a blob.
    """
    source, image = layout
    host = registry.host
    skopeo(*copy_args(source.reference("v1"), f"docker://{host}/notify/app:v1"))
    skopeo(*copy_args(f"docker://{host}/notify/app:v1", f"docker://{host}/notify/app:v2"))
    skopeo(*copy_args(f"docker://{host}/notify/app:v1", f"docker://{host}/notify/copy:v1"))
    skopeo("delete", "--tls-verify=false", f"docker://{host}/notify/copy:v1")
    deleted = http_request("DELETE", f"{registry.url}/v2/notify/app/blobs/{image.config_digest}")
    assert deleted.status == 202, deleted.body


def settled(receiver: ReceiverProcess, timeout: float = 30.0, quiet: float = 1.5) -> list[dict]:
    """The events once none has arrived for ``quiet`` seconds (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        events = receiver.events()
        if len(events) != count:
            count, since = len(events), time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.1)
    return receiver.events()


def summary(events: list[dict]) -> dict[str, list[tuple]]:
    """Per repository, in the order received: (action, media type, tag, from repository, digest) of each event."""
    found = collections.defaultdict(list)
    for e in events:
        t = e["target"]
        found[t["repository"]].append(
            (e["action"], t.get("mediaType"), t.get("tag"), t.get("fromRepository"), t.get("digest"))
        )
    return dict(found)


def test_distribution_events_are_what_the_reference_sends(tmp_path, skopeo, layout, receiver):
    _, image = layout
    theirs_receiver = ReceiverProcess(str(tmp_path / "theirs")).start()
    try:
        theirs = reference(str(tmp_path / "reference-data"), theirs_receiver).start()
        try:
            operations(theirs, skopeo, layout)
            # Distribution 2.8 sends pulls (HEADs too) whatever its endpoint's ignore says; ours by default not.
            their_events = [e for e in settled(theirs_receiver) if e["action"] != "pull"]
        finally:
            theirs.stop()
    finally:
        theirs_receiver.cleanup()

    ours = ociregistry(tmp_path, str(tmp_path / "data"), [endpoint(receiver)]).start()
    try:
        operations(ours, skopeo, layout)
        our_events = receiver.wait_for(len(their_events), timeout=90)
        time.sleep(1.0)  # nothing more comes
        our_events = receiver.events()
    finally:
        ours.stop()

    # What a receiver sees happen, per repository and in order.
    blobs = sorted(image.blob_digests)
    for events in (our_events, their_events):
        by_repository = summary(events)
        app, copy = by_repository["notify/app"], by_repository["notify/copy"]
        assert sorted(e[4] for e in app[:3]) == blobs and {e[:4] for e in app[:3]} == {
            ("push", "application/octet-stream", None, None)
        }
        assert app[3:] == [
            ("push", "application/vnd.oci.image.manifest.v1+json", "v1", None, image.manifest_digest),
            ("push", "application/vnd.oci.image.manifest.v1+json", "v2", None, image.manifest_digest),
            ("delete", None, None, None, image.config_digest),
        ]
        assert sorted(copy[:3]) == sorted(
            [("mount", "application/octet-stream", None, "notify/app", d) for d in image.layer_digests]
            + [("push", "application/octet-stream", None, None, image.config_digest)]
        )
        assert copy[3:] == [
            ("push", "application/vnd.oci.image.manifest.v1+json", "v1", None, image.manifest_digest),
            ("delete", None, None, None, image.manifest_digest),
            ("delete", None, "v1", None, None),
        ]
    # Field for field, but for ids, times, ports and instance ids (each checked for its form).
    ours_comparable = sorted(json.dumps(comparable(e, ours.port), sort_keys=True) for e in our_events)
    theirs_comparable = sorted(json.dumps(comparable(e, theirs.port), sort_keys=True) for e in their_events)
    assert ours_comparable == theirs_comparable
    # Each request an envelope of one or more events (Distribution's contract: events that wait together
    # go together, of one repository or several), with Distribution's Content-Type (2.8 says
    # ...events.v1+json for the same envelope; Distribution 3 and ociregistry v2+json).
    records = receiver.accepted()
    envelopes = [json.loads(r["body"])["events"] for r in records]
    assert sum(map(len, envelopes)) == len(our_events) and all(envelopes)
    assert {r["headers"]["content-type"] for r in records} == {"application/vnd.docker.distribution.events.v2+json"}
    assert {r["method"] for r in records} == {"POST"}
    # The events of one request share its id: the manifest's delete and the tag it removed.
    deletes = [e for e in our_events if e["action"] == "delete" and e["target"]["repository"] == "notify/copy"]
    assert len({e["request"]["id"] for e in deletes}) == 1 and len({e["id"] for e in deletes}) == 2


def test_references_as_the_reference_includes_them(tmp_path, skopeo, layout, receiver):
    """``include_references`` adds a pushed manifest's blobs, as Distribution's ``includereferences`` does."""
    source, image = layout
    theirs_receiver = ReceiverProcess(str(tmp_path / "theirs")).start()
    try:
        theirs = reference(str(tmp_path / "reference-data"), theirs_receiver, include_references=True).start()
        try:
            skopeo(*copy_args(source.reference("v1"), f"docker://{theirs.host}/notify/refs:v1"))
            their_events = theirs_receiver.wait_for(4, timeout=30, what=lambda e: e["action"] == "push")
        finally:
            theirs.stop()
    finally:
        theirs_receiver.cleanup()
    ours = ociregistry(tmp_path, str(tmp_path / "data"), [endpoint(receiver, include_references=True)]).start()
    try:
        skopeo(*copy_args(source.reference("v1"), f"docker://{ours.host}/notify/refs:v1"))
        our_events = receiver.wait_for(4, timeout=30)
    finally:
        ours.stop()
    [ours_pushed] = [e["target"] for e in our_events if "tag" in e["target"]]
    [theirs_pushed] = [e["target"] for e in their_events if "tag" in e["target"]]
    assert ours_pushed["references"] == theirs_pushed["references"]
    assert [r["digest"] for r in ours_pushed["references"]] == image.blob_digests


def test_cloudevents(tmp_path, skopeo, layout, receiver):
    _, image = layout
    registry = ociregistry(tmp_path, str(tmp_path / "data"), [endpoint(receiver, format="cloudevents")]).start()
    try:
        operations(registry, skopeo, layout)
        untagged = http_request("DELETE", f"{registry.url}/v2/notify/app/manifests/v2")
        assert untagged.status == 202
        events = receiver.wait_for(15, timeout=90)
        time.sleep(1.0)
        # Delivery is at least once: a batch whose answer was late (a loaded machine) is sent again, and
        # a receiver keeps the first copy of each event id.
        seen: set = set()
        events = [e for e in receiver.events() if not (e["id"] in seen or seen.add(e["id"]))]
    finally:
        registry.stop()
    by_subject_repository = collections.defaultdict(list)
    for event in events:
        by_subject_repository[event["data"]["repository"]].append(event)
    app = [e["type"] for e in by_subject_repository["notify/app"]]
    assert app == ["ociregistry.repository.created"] + ["ociregistry.blob.pushed"] * 3 + [
        "ociregistry.manifest.pushed",
        "ociregistry.manifest.pushed",
        "ociregistry.blob.deleted",
        "ociregistry.tag.deleted",
    ]
    copy = [e["type"] for e in by_subject_repository["notify/copy"]]
    assert copy[0] == "ociregistry.repository.created"
    assert sorted(copy[1:4]) == ["ociregistry.blob.mounted"] * 2 + ["ociregistry.blob.pushed"]
    assert copy[4:] == ["ociregistry.manifest.pushed", "ociregistry.manifest.deleted", "ociregistry.tag.deleted"]
    assert len(events) == 15
    # CloudEvents 1.0 structured mode: the required attributes, and the content type of each request.
    for event in events:
        assert event["specversion"] == "1.0"
        assert UUID.fullmatch(event["id"]) and event["source"] and RFC3339.fullmatch(event["time"])
        assert event["datacontenttype"] == "application/json"
    assert len({e["id"] for e in events}) == len(events)
    records = receiver.accepted()
    assert {r["headers"]["content-type"] for r in records} == {"application/cloudevents+json; charset=utf-8"}
    pushed = [e for e in events if e["type"] == "ociregistry.manifest.pushed"]
    assert pushed[0]["subject"] == "notify/app:v1"
    assert pushed[0]["data"]["digest"] == image.manifest_digest
    assert pushed[0]["data"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert pushed[0]["data"]["size"] == image.manifest_size and pushed[0]["data"]["tag"] == "v1"
    assert pushed[0]["data"]["url"] == f"{registry.url}/v2/notify/app/manifests/{image.manifest_digest}"
    assert pushed[0]["data"]["request"]["useragent"].startswith("skopeo/")
    mounted = [e for e in events if e["type"] == "ociregistry.blob.mounted"]
    assert {e["data"]["fromRepository"] for e in mounted} == {"notify/app"}


def test_a_copy_whose_manifest_is_written_with_its_mounts_is_announced(tmp_path, layout, receiver):
    """
    A copy into a new repository by mounts and a manifest push made within
    one record window: the events are written together, after the manifest
    is stored, and the repository is still announced as created (it held
    no manifest when its first mount was observed).
    """
    path, image = layout
    registry = ociregistry(
        tmp_path, str(tmp_path / "data"), [endpoint(receiver, format="cloudevents")], record_window="1s"
    ).start()
    try:
        push_image_http(registry.url, "seed/app", path, image, tag="v1")
        for copy in ("copy/one", "copy/two"):
            for digest in image.blob_digests:
                mounted = http_request(
                    "POST", f"{registry.url}/v2/{copy}/blobs/uploads/?mount={digest}&from=seed/app", b""
                )
                assert mounted.status == 201, mounted
            push_manifest_http(registry.url, copy, "v1", image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST)
        expected = 3 * (2 + len(image.blob_digests))  # per repository: created, its blobs, its manifest
        receiver.wait_for(expected, timeout=60)
        time.sleep(1.5)
        seen: set = set()
        events = [e for e in receiver.events() if not (e["id"] in seen or seen.add(e["id"]))]
    finally:
        registry.stop()
    for repository in ("seed/app", "copy/one", "copy/two"):
        types = [e["type"] for e in events if e["data"]["repository"] == repository]
        verb = "pushed" if repository == "seed/app" else "mounted"
        assert types == ["ociregistry.repository.created"] + [f"ociregistry.blob.{verb}"] * len(image.blob_digests) + [
            "ociregistry.manifest.pushed"
        ], (repository, types)
    assert len(events) == expected


def test_a_signature_verifies_with_the_right_secret_only(tmp_path):
    """Every body is signed; a receiver with the endpoint's secret verifies it, one with another rejects it."""
    right = ReceiverProcess(str(tmp_path / "right"), secret="the endpoint's secret").start()
    wrong = ReceiverProcess(str(tmp_path / "wrong"), secret="not the endpoint's secret").start()
    endpoints = [
        endpoint(right, name="right", secret="the endpoint's secret"),
        endpoint(wrong, name="wrong", secret="the endpoint's secret"),
        endpoint(right, name="unsigned"),
    ]
    registry = ociregistry(tmp_path, str(tmp_path / "data"), endpoints).start()
    try:
        digest = push_blob_http(registry.url, "signed/app", b"signed")
        [event] = right.wait_for(1, timeout=20)
        assert event["target"]["digest"] == digest
        assert wait_until(lambda: len(wrong.records()) >= 2, timeout=20)  # refused, and tried again
        assert wait_until(lambda: len(right.records()) >= 2, timeout=20)  # the unsigned one, refused there
    finally:
        registry.stop()
        right.cleanup()
        wrong.cleanup()
    signed = [r for r in right.records() if "ociregistry-signature" in r["headers"]]
    unsigned = [r for r in right.records() if "ociregistry-signature" not in r["headers"]]
    assert [(r["status"], r["verified"]) for r in signed] == [(200, True)]
    assert unsigned and {(r["status"], r["verified"]) for r in unsigned} == {(401, False)}
    signed = signed[0]
    assert wrong.accepted() == [] and {r["verified"] for r in wrong.records()} == {False}
    # What a receiver checks: the header over the exact body, with the secret; a changed body fails.
    header, body = signed["headers"]["ociregistry-signature"], signed["body"].encode()
    assert verify("the endpoint's secret", body, header)
    assert not verify("another secret", body, header)
    assert not verify("the endpoint's secret", body + b" ", header)
    assert wrong.records()[0]["body"] == signed["body"]
