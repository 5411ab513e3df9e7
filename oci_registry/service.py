"""
Build the registry from a `Config`: the storage, the `Registry`, the HTTP
resource, the `Site` and the listening services.  The twistd plugin uses
this; so can any Twisted application that embeds the registry:

    from oci_registry.service import registry_resource, RegistrySite
    site = RegistrySite(registry_resource("/srv/registry"))

`RegistrySite` streams blob uploads straight into storage; the resource also
works in a plain `twisted.web.server.Site` (upload bodies are then buffered
by twisted.web before the registry sees them).
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource

from .api.app import RegistryAPI
from .api.body import RegistryChannel, StreamingRequest
from .auth.service import build_auth
from .config import Config
from .registry import Registry
from .storage.filesystem import FilesystemDriver
from .storage.interfaces import StorageUnavailable

log = Logger()


def build_storage(config: Config, reactor=None):
    """The storage driver the config names (the filesystem by default)."""
    if config.storage is not None:
        from .storage.s3 import S3Driver

        return S3Driver(config.storage, reactor=reactor)
    return FilesystemDriver(config.data_dir, reactor=reactor)


def build_registry(config: Config, reactor=None) -> Registry:
    """The local `Registry`; wrapped in a `ProxyRegistry` when ``proxies`` are configured."""
    registry = Registry(
        build_storage(config, reactor),
        max_manifest_size=config.max_manifest_size,
        max_upload_size=config.max_upload_size,
    )
    if config.proxies:
        from .proxy import ProxyRegistry

        for upstream in config.proxies:
            log.info(
                "pull-through cache: {prefix} -> {url}",
                prefix=f"{upstream.prefix}/" if upstream.prefix else "every other repository",
                url=upstream.url,
            )
        registry = ProxyRegistry.from_config(registry, config.proxies, reactor)
    return registry


def registry_resource(data_dir: str | None = None, reactor=None, config: Config | None = None) -> IResource:
    """The registry as an `IResource`, to serve at the root of a `Site`."""
    if config is None:
        config = Config(data_dir=data_dir) if data_dir else Config()
    auth = build_auth(config, reactor)
    return auth.wrap(RegistryAPI(build_registry(config, reactor), authorizer=auth.authorizer).resource())


class RegistrySite(server.Site):
    """A `Site` that streams upload bodies and logs one line per request."""

    requestFactory = StreamingRequest
    protocol = RegistryChannel

    def __init__(
        self,
        resource,
        max_body_size: int | None = None,
        access_log: bool = True,
        max_header_size: int = 16384,
        min_body_rate: int = 0,
        body_rate_window: float = 60.0,
        **kwargs,
    ):
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
        self.access_log = access_log
        self.max_header_size = max_header_size
        self.min_body_rate = min_body_rate
        self.body_rate_window = body_rate_window

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.totalHeadersSize = self.max_header_size
        return channel

    def log(self, request):
        if not self.access_log:
            return
        log.info(
            '{client} "{method} {uri} {protocol}" {code} {length} "{agent}"',
            client=request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "-",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            protocol=request.clientproto.decode("ascii", "replace"),
            code=request.code,
            length=request.sentLength or "-",
            agent=(request.getHeader(b"user-agent") or b"-").decode("latin-1"),
        )


def build_site(config: Config, reactor=None) -> RegistrySite:
    registry = build_registry(config, reactor)
    auth = build_auth(config, reactor)
    # A manifest PUT is the largest body twisted.web buffers for us.
    api = RegistryAPI(
        registry,
        max_uploads_per_client=config.max_uploads_per_client,
        upload_expiry=config.upload_expiry,
        authorizer=auth.authorizer,
    )
    site = RegistrySite(
        auth.wrap(api.resource()),
        max_body_size=config.max_manifest_size,
        access_log=config.access_log,
        max_header_size=config.max_header_size,
        min_body_rate=config.min_body_rate,
        body_rate_window=config.client_timeout,
        timeout=config.client_timeout,
        reactor=reactor,
    )
    site.registry = registry
    site.auth = auth
    return site


def gc_service(config: Config, storage):
    """Garbage collection every ``gc_interval`` seconds, in this process (worker 0 only)."""
    from twisted.application.internet import TimerService

    from .gc import GCOptions, collect

    options = GCOptions(
        grace=config.gc_grace, upload_expiry=config.upload_expiry, delete_untagged=config.gc_delete_untagged
    )

    def failed(failure):
        if failure.check(StorageUnavailable):
            log.error("scheduled garbage collection not run: storage unavailable: {cause}", cause=failure.value.cause)
        else:
            log.failure("scheduled garbage collection failed", failure)

    def run():
        return Deferred.fromCoroutine(collect(storage, options)).addErrback(failed)

    service = TimerService(config.gc_interval, run)
    service.setName("gc")
    return service


def make_service(config: Config, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    site = build_site(config, reactor)
    top = MultiService()
    supervisor = None
    if config.workers > 1:
        from .workers import WorkerSupervisor, add_listeners

        add_listeners(top, reactor, config, site)
        supervisor = WorkerSupervisor(reactor, config)
        supervisor.setServiceParent(top)
    else:
        for description in config.listen:
            endpoint = serverFromString(reactor, description)
            StreamServerEndpointService(endpoint, site).setServiceParent(top)
    if config.gc_interval > 0:
        top.addService(gc_service(config, site.registry.storage))
    log.info(
        "ociregistry storing data in {data_dir}",
        data_dir=config.storage.describe() if config.storage else config.data_dir,
    )
    site.auth.announce()
    # SIGHUP re-reads the auth settings, here and in every worker.
    reload_service = site.auth.reload_service(
        forward=(lambda: supervisor.signal_workers("HUP")) if supervisor is not None else None
    )
    if reload_service is not None:
        top.addService(reload_service)
    log.info(
        "ociregistry listening on {listen} with {workers} worker(s)",
        listen=", ".join(config.listen),
        workers=config.workers,
    )
    return top
