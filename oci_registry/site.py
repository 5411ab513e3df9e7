"""
`RegistrySite`: the `twisted.web` `Site` the registry is served through.
It reads a request's body only once its handler has authorized it, streams
blob uploads straight into storage, caps connections and the memory small
bodies hold, and logs one line per request.  The composition root
(`oci_registry.compose`) builds one from a `Config`; an embedding
application may build its own around any resource.
"""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING

from twisted.web import server

from .api.access_log import log_request
from .api.body import BodyBudget, StreamingRequest
from .api.channel import ConnectionLimits, RegistryChannel
from .api.forwarded import TrustedProxies
from .config import Config
from .drain import RequestTracker

if TYPE_CHECKING:
    from .metrics.http import RequestMetrics

_DEFAULTS = Config()  # for RegistrySite's defaults


class RegistrySite(server.Site):
    """
    A `Site` that reads request bodies only when a handler asks (after
    authorizing), streams upload bodies, caps connections and the memory
    small bodies hold, and logs one line per request.  ``timeout`` (seconds)
    closes idle connections, bounds the time to send a request's line and
    headers, and drops a client that stops reading a response.
    ``trusted_proxies``: the peers whose ``X-Forwarded-*`` headers are
    believed (`oci_registry.api.forwarded`).  ``tracker`` knows its open
    connections and requests in flight, for a graceful stop
    (`oci_registry.drain`).
    """

    requestFactory = StreamingRequest
    # A plain HTTP/1.1 channel where Site's default negotiates HTTP/2 too, which Twisted's types insist on.
    protocol = RegistryChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource,
        access_log: bool = True,
        max_header_size: int = 16384,
        min_body_rate: int = 0,
        body_rate_window: float = 60.0,
        max_connections: int = _DEFAULTS.max_connections,
        max_connections_per_client: int = _DEFAULTS.max_connections_per_client,
        max_body_memory: int = _DEFAULTS.max_body_memory,
        trusted_proxies: TrustedProxies | None = None,
        **kwargs,
    ):
        super().__init__(resource, **kwargs)
        self.access_log = access_log
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.tracker = RequestTracker()
        self.request_metrics: RequestMetrics | None = (
            None  # an `oci_registry.metrics.http.RequestMetrics`, when metrics are on
        )
        self.max_header_size = max_header_size
        self.min_body_rate = min_body_rate
        self.body_rate_window = body_rate_window
        self.connections = ConnectionLimits(max_connections, max_connections_per_client)
        self.body_budget = BodyBudget(max_body_memory)

    @classmethod
    def from_config(cls, resource, config: Config, reactor=None) -> RegistrySite:
        """The site the daemon serves ``resource`` through, with the config's limits."""
        return cls(
            resource,
            access_log=config.access_log,
            max_header_size=config.max_header_size,
            min_body_rate=config.min_body_rate,
            body_rate_window=config.client_timeout,
            max_connections=config.max_connections,
            max_connections_per_client=config.max_connections_per_client,
            max_body_memory=config.max_body_memory,
            trusted_proxies=config.trusted_proxies,
            timeout=config.client_timeout,
            reactor=reactor,
        )

    def startFactory(self):
        # By now the daemon has raised the open files limit as far as it goes.
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if files != resource.RLIM_INFINITY:
            self.connections.fit(files)
        super().startFactory()

    def buildProtocol(self, addr):
        client = getattr(addr, "host", None) or "local"
        refused = self.connections.admit(client)
        if refused is not None:
            return self.connections.refusal(refused)
        channel = super().buildProtocol(addr)
        channel.limits, channel.client = self.connections, client
        self.tracker.connected(channel)
        channel.totalHeadersSize = channel.MAX_LENGTH = self.max_header_size
        return channel

    def log(self, request):
        if self.request_metrics is not None:
            self.request_metrics.ended(request)
        if self.access_log:
            log_request(request)
