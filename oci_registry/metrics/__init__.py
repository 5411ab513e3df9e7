"""
Prometheus metrics (``metrics: tcp:9100:interface=127.0.0.1``): what the
registry did, in the text exposition format, on a listener of its own.

The names are CNCF Distribution's where it has one (``registry_http_*``,
``registry_storage_*``, ``registry_proxy_*``), so that its dashboards work,
and ``ociregistry_*`` for the rest; docs/metrics.md lists them all.  They
are taken at the seams, never in the routes:

- requests, at the site, where the access line is written
  (`oci_registry.metrics.http.RequestMetrics`);
- storage actions, by a decorator of the storage driver
  (`oci_registry.metrics.storage.MeasuredDriver`);
- the pull-through cache, through its observer (`IProxyObserver`);
- garbage collection, through the scheduled run's report;
- notification deliveries and open uploads, read from the notifier's
  `INotificationStatus` and the API every few seconds (`StatusSync`).

Every process writes its values to files in one directory
(prometheus_client's multiprocess mode, `oci_registry.metrics.process`),
and the metrics listener (in worker 0) adds them up: one scrape gives the
sum over every worker, and a restarted worker's counters carry on from what
the one before it had counted.  No label takes an unbounded value (no
digest, user or path); the repository is a label only when the operator
asks (``repository_label: true``).
"""

from __future__ import annotations

import attr

__all__ = ["MetricsConfig"]


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class MetricsConfig:
    """The ``metrics:`` section: where to listen, and whether requests are counted per repository."""

    listen: str
    repository_label: bool = False

    def to_dict(self) -> dict:
        return {"listen": self.listen, "repository_label": self.repository_label}

    @classmethod
    def parse(cls, value) -> MetricsConfig | None:
        """``metrics: ENDPOINT`` or ``metrics: {listen: ENDPOINT, repository_label: BOOL}``; None/false: off."""
        if value is None or value is False or value == "":
            return None
        if isinstance(value, MetricsConfig):
            return value
        if isinstance(value, str):
            return cls(listen=value)
        if not isinstance(value, dict):
            raise ValueError("must be a listen endpoint (e.g. tcp:9100:interface=127.0.0.1) or a mapping")
        unknown = set(value) - {"listen", "repository_label"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        listen = value.get("listen")
        if not isinstance(listen, str) or not listen:
            raise ValueError("listen must be an endpoint string, e.g. tcp:9100:interface=127.0.0.1")
        repository_label = value.get("repository_label", False)
        if not isinstance(repository_label, bool):
            raise ValueError("repository_label must be true or false")
        return cls(listen=listen, repository_label=repository_label)
