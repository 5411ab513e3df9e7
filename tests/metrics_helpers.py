"""
Reading a registry's metrics as Prometheus would: ``GET /metrics`` parsed
by prometheus_client's own parser, and the counts an access log says the
metrics must hold.
"""

from __future__ import annotations

import collections
import http.client
import re
import time

from prometheus_client.parser import text_string_to_metric_families

from oci_registry.metrics.http import route_of

# An access line: "METHOD PATH PROTOCOL" STATUS
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3}|-) ')


def metrics_text(port: int, path: str = "/metrics", timeout: float = 10) -> tuple[int, dict, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    status, _, text = metrics_text(port)
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, found), value in samples.items() if n == name and wanted <= found)


def by_labels(samples: dict, name: str, *keys: str) -> dict[tuple, float]:
    """``name``'s samples added up by the values of ``keys`` (the samples at 0 left out)."""
    sums: dict[tuple, float] = collections.defaultdict(float)
    for (n, labels), value in samples.items():
        if n == name and value:
            found = dict(labels)
            sums[tuple(found.get(k) for k in keys)] += value
    return dict(sums)


def logged_requests(log: str) -> dict[tuple, float]:
    """(handler, method, code) -> requests, from the access lines of ``log`` (health checks are not logged)."""
    counts: dict[tuple, float] = collections.defaultdict(float)
    for match in _ACCESS.finditer(log):
        handler, _ = route_of(match.group("path").split("?", 1)[0].encode())
        code = match.group("status")
        counts[(handler, match.group("method"), "none" if code == "-" else code)] += 1
    return dict(counts)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    """``predicate()``'s first true value within ``timeout`` seconds; the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
