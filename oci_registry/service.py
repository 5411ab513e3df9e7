"""
Build the registry from a `Config`: the storage, the `Registry`, the HTTP
resource, the `Site` and the listening services.  The twistd plugin uses
this; so can any Twisted application that embeds the registry:

    from oci_registry.service import registry_resource, RegistrySite
    site = RegistrySite(registry_resource("/srv/registry"))

`RegistrySite` reads a request's body only once its handler has authorized
it, streams blob uploads straight into storage, and caps connections; the
resource also works in a plain `twisted.web.server.Site` (request bodies are
then buffered by twisted.web before the registry sees them).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource

from .api.app import RegistryAPI
from .api.body import BodyBudget, StreamingRequest
from .api.channel import ConnectionLimits, RegistryChannel
from .auth.service import Auth, build_auth
from .config import Config, ConfigError
from .observe import LogObserver, ObservedRegistry
from .registry import Registry
from .startup import CONFIG_STATUS, StartupError, fail
from .storage.filesystem import FilesystemDriver
from .storage.interfaces import StorageUnavailable

if TYPE_CHECKING:
    from .workers import ListenService

log = Logger()
_DEFAULTS = Config()  # for RegistrySite's defaults


def build_storage(config: Config, reactor=None):
    """The storage driver the config names (the filesystem by default)."""
    if config.storage is not None:
        from .storage.s3 import S3Driver

        return S3Driver(config.storage, reactor=reactor)
    return FilesystemDriver(config.data_dir, reactor=reactor)


def build_registry(config: Config, reactor=None) -> ObservedRegistry:
    """
    The local `Registry`; wrapped in a `ProxyRegistry` when ``proxies`` are
    configured; observed (`oci_registry.observe`) by the log.
    """
    registry = Registry(
        build_storage(config, reactor),
        max_manifest_size=config.max_manifest_size,
        max_upload_size=config.max_upload_size,
        reactor=reactor,
        gc_grace=config.gc_grace,
    )
    if config.proxies:
        from .proxy import ProxyRegistry

        for upstream in config.proxies:
            log.info(
                "pull-through cache: {prefix} -> {url}",
                prefix=f"{upstream.prefix}/" if upstream.prefix else "every other repository",
                url=upstream.url,
            )
        return ObservedRegistry(ProxyRegistry.from_config(registry, config.proxies, reactor), [LogObserver()])
    return ObservedRegistry(registry, [LogObserver()])


def registry_resource(data_dir: str | None = None, reactor=None, config: Config | None = None) -> IResource:
    """The registry as an `IResource`, to serve at the root of a `Site`."""
    if config is None:
        config = Config(data_dir=data_dir) if data_dir else Config()
    auth = build_auth(config, reactor)
    return auth.wrap(RegistryAPI(build_registry(config, reactor), authorizer=auth.authorizer).resource())


class RegistrySite(server.Site):
    """
    A `Site` that reads request bodies only when a handler asks (after
    authorizing), streams upload bodies, caps connections and the memory
    small bodies hold, and logs one line per request.  ``timeout`` (seconds)
    closes idle connections, bounds the time to send a request's line and
    headers, and drops a client that stops reading a response.
    """

    requestFactory = StreamingRequest
    # A plain HTTP/1.1 channel where Site's default negotiates HTTP/2 too, which Twisted's types insist on.
    protocol = RegistryChannel  # type: ignore[assignment]
    registry: ObservedRegistry  # set by build_site
    auth: Auth

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
        **kwargs,
    ):
        super().__init__(resource, **kwargs)
        self.access_log = access_log
        self.max_header_size = max_header_size
        self.min_body_rate = min_body_rate
        self.body_rate_window = body_rate_window
        self.connections = ConnectionLimits(max_connections, max_connections_per_client)
        self.body_budget = BodyBudget(max_body_memory)

    def buildProtocol(self, addr):
        client = getattr(addr, "host", None) or "local"
        refused = self.connections.admit(client)
        if refused is not None:
            return self.connections.refusal(refused)
        channel = super().buildProtocol(addr)
        channel.limits, channel.client = self.connections, client
        channel.totalHeadersSize = channel.MAX_LENGTH = self.max_header_size
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
    api = RegistryAPI(
        registry,
        max_uploads_per_client=config.max_uploads_per_client,
        upload_expiry=config.upload_expiry,
        authorizer=auth.authorizer,
    )
    site = RegistrySite(
        auth.wrap(api.resource()),
        access_log=config.access_log,
        max_header_size=config.max_header_size,
        min_body_rate=config.min_body_rate,
        body_rate_window=config.client_timeout,
        max_connections=config.max_connections,
        max_connections_per_client=config.max_connections_per_client,
        max_body_memory=config.max_body_memory,
        timeout=config.client_timeout,
        reactor=reactor,
    )
    site.registry = registry
    site.auth = auth
    return site


def gc_service(config: Config, storage, reactor=None):
    """
    Garbage collection every ``gc_interval`` seconds, in this process
    (worker 0 only), yielding to the reactor after each millisecond of work so that
    requests are served meanwhile.
    """
    from twisted.application.internet import TimerService

    from .gc import GCAborted, GCOptions, collect

    options = GCOptions(
        grace=config.gc_grace, upload_expiry=config.upload_expiry, delete_untagged=config.gc_delete_untagged
    )

    def failed(failure):
        if failure.check(StorageUnavailable):
            log.error("scheduled garbage collection not run: storage unavailable: {cause}", cause=failure.value.cause)
        elif not failure.check(GCAborted):  # already logged, in one line
            log.failure("scheduled garbage collection failed", failure)

    def run():
        return Deferred.fromCoroutine(collect(storage, options, reactor=reactor)).addErrback(failed)

    service = TimerService(config.gc_interval, run)
    service.setName("gc")
    return service


def _listen_error(description: str, reason) -> StartupError:
    error = reason.value
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        path = error.filename2 or error.filename  # a unix: socket's lock file, say
        error = f"{error.strerror}: {os.fsdecode(path)}" if isinstance(path, (str, bytes)) else error.strerror
    return StartupError(f"cannot listen on {description}: {error}")


def _at_once(d: Deferred, judge, reactor) -> None:
    """
    Start-up fails when ``d`` does, as ``judge(failure)`` says (a
    `StartupError`, or None to carry on): raised here when ``d`` has failed
    already (so twistd stops before it runs the reactor), else through `fail`.
    """
    known = []

    def failed(reason):
        error = judge(reason)
        if error is None:
            return
        if starting:
            known.append(error)
        else:
            fail(reactor, error)

    starting = True
    d.addErrback(failed)
    starting = False
    if known:
        raise known[0]


class Listener(Service):
    """
    Listens on one endpoint (as root, before twistd drops privileges, so
    ports below 1024 work); start-up fails, with one line, when it cannot.
    ``listening`` fires once it does.
    """

    def __init__(self, reactor, description: str, factory):
        self.description = description
        self._reactor = reactor
        self._factory = factory
        try:
            self._endpoint = serverFromString(reactor, description)
        except Exception as e:  # noqa: BLE001  (an unknown type, a bad option, a certificate that cannot be read)
            raise ConfigError(f"listen: cannot use {description!r}: {e}") from None
        self.listening: Deferred[IListeningPort] = Deferred()
        self._port = None
        self._started = False

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()

    def startService(self):
        super().startService()
        self._listen()

    def _listen(self):
        if self._started:
            return
        self._started = True
        _at_once(
            self._endpoint.listen(self._factory).addCallback(self._listened),
            lambda reason: _listen_error(self.description, reason),
            self._reactor,
        )

    def _listened(self, port):
        self._port = port
        self.listening.callback(port)

    def stopService(self):
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()


class StorageCheck(Service):
    """
    At start-up, once twistd has dropped privileges: the storage can be used
    (`IStorageDriver.check`), or the registry does not start.  A storage
    that refuses the configuration (a data directory this user cannot
    write, a bucket that does not exist, credentials it refuses) stops it;
    one merely unreachable does not: requests get 503 until it answers, and
    an orchestrator sees a process that is up.
    """

    def __init__(self, reactor, storage):
        self._reactor = reactor
        self._storage = storage

    def startService(self):
        super().startService()
        _at_once(self._storage.check(), self._judge, self._reactor)

    def _judge(self, reason) -> StartupError | None:
        if not reason.check(StorageUnavailable):
            return StartupError(f"cannot use the storage: {reason.getErrorMessage()}")
        if reason.value.misconfigured:
            return StartupError(reason.value.cause, CONFIG_STATUS)
        return None  # logged as an outage by the driver; requests get 503 until it ends


class _Announce(Service):
    """Says the registry is listening once it is (and its storage passed its check)."""

    def __init__(self, config: Config, listeners):
        self._config = config
        self._listeners = listeners

    def startService(self):
        super().startService()
        gatherResults([listener.listening for listener in self._listeners]).addCallback(self._listening)

    def _listening(self, _):
        log.info(
            "ociregistry listening on {listen} with {workers} worker(s); open files limit {files}",
            listen=", ".join(self._config.listen),
            workers=self._config.workers,
            files=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )


def make_service(config: Config, reactor=None) -> MultiService:
    """
    The daemon: storage check, listeners (or workers), scheduled GC and
    auth reloading.  ConfigError when the configuration cannot work; the
    services raise `StartupError` when they cannot start.
    """
    if reactor is None:
        from twisted.internet import reactor
    site = build_site(config, reactor)
    top = MultiService()
    StorageCheck(reactor, site.registry.storage).setServiceParent(top)
    supervisor = None
    listeners: Sequence[Listener | ListenService]
    if config.workers > 1:
        from .workers import WorkerSupervisor, add_listeners

        listeners = add_listeners(top, reactor, config, site)
        supervisor = WorkerSupervisor(reactor, config)
        supervisor.setServiceParent(top)
    else:
        listeners = [Listener(reactor, description, site) for description in config.listen]
        for listener in listeners:
            listener.setServiceParent(top)
    if config.gc_interval > 0:
        top.addService(gc_service(config, site.registry.storage, reactor))
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

    _Announce(config, listeners).setServiceParent(top)  # last: once everything else has started
    return top
