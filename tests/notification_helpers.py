"""
What the notification tests share: a registry process configured with
endpoints at a `ReceiverProcess`, the reference registry configured the
same way, and the outbox as the filesystem storage keeps it.
"""

from __future__ import annotations

import json
import os
import re
import time

import yaml

from receiver_process import ReceiverProcess
from registry_process import RegistryProcess

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def endpoint(receiver: ReceiverProcess, name: str = "test", **options) -> dict:
    """An endpoint at ``receiver``, retrying quickly (the tests wait for what it gets)."""
    return {"name": name, "url": receiver.url, "backoff": {"initial": "0.2s", "max": "1s"}, **options}


def config_file(directory, endpoints: list[dict], storage: dict | None = None, **section) -> str:
    """A config file with a ``notifications`` section (and ``storage``, for S3)."""
    path = os.path.join(str(directory), f"notifications-{time.monotonic_ns()}.yaml")
    document: dict = {"notifications": {"endpoints": endpoints, **section}}
    if storage is not None:
        document["storage"] = storage
    with open(path, "w") as f:
        yaml.safe_dump(document, f)
    return path


def ociregistry(directory, data_dir: str, endpoints: list[dict], **section) -> RegistryProcess:
    return RegistryProcess(data_dir, config=config_file(directory, endpoints, **section))


def reference(data_dir: str, receiver: ReceiverProcess, include_references: bool = False) -> RegistryProcess:
    """The reference registry, sending what it does to ``receiver`` (2.8 ignores the ``ignore`` for pulls)."""
    notifications = {
        "events": {"includereferences": include_references},
        "endpoints": [
            {
                "name": "test",
                "url": receiver.url,
                "timeout": "2s",
                "threshold": 5,
                "backoff": "1s",
                "ignore": {"actions": ["pull"]},
            }
        ],
    }
    return RegistryProcess(data_dir, kind="reference", reference_config=f"notifications: {json.dumps(notifications)}\n")


def pending_events(data_dir: str, endpoint_name: str = "test") -> int:
    """Events waiting in a filesystem outbox, as the batch names count them."""
    folder = os.path.join(data_dir, "notifications", "endpoints", endpoint_name, "pending")
    try:
        names = [n for n in os.listdir(folder) if n.count("-") == 3]  # batches, not the keep file
    except FileNotFoundError:
        return 0
    return sum(int(n.rsplit("-", 1)[1]) for n in names)


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def comparable(event: dict, port: int) -> dict:
    """
    A Distribution event without what differs between two registries and
    two runs (ids, times, the client's port, the registry's port and
    instance), each of which is checked for its form here.
    """
    event = json.loads(json.dumps(event))
    assert UUID.fullmatch(event.pop("id")), event
    assert RFC3339.fullmatch(event.pop("timestamp")), event
    request = event["request"]
    assert UUID.fullmatch(request.pop("id")), event
    assert request.pop("addr").split(":")[0] == "127.0.0.1", event
    assert request["host"] == f"127.0.0.1:{port}", event
    request["host"] = "HOST"
    source = event.pop("source")
    assert source["addr"].endswith(f":{port}") and UUID.fullmatch(source["instanceID"]), event
    target = event["target"]
    if "url" in target:
        prefix = f"http://127.0.0.1:{port}/v2/"
        assert target["url"].startswith(prefix), event
        target["url"] = "URL/" + target["url"][len(prefix) :]
    return event
