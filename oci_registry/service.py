"""
The daemon: the registry's components (built by `oci_registry.compose`)
with the services that make them a process, namely the listeners (or the
worker processes sharing them), the storage check at start-up, scheduled
garbage collection and the reload of the auth settings.  The twistd plugin
and every ``--workers`` process call `make_service`.

An application embedding the registry takes its resource:

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

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource

from .compose import Components, build
from .config import Config, ConfigError
from .site import RegistrySite
from .startup import StartupError, at_once
from .storage import drivers
from .workers import ListenService, WorkerSupervisor

__all__ = ["Listener", "RegistrySite", "make_service", "registry_resource"]

log = Logger()


def registry_resource(data_dir: str | None = None, reactor=None, config: Config | None = None) -> IResource:
    """
    The registry as an `IResource`, to serve at the root of a `Site`: the
    same registry as the daemon's for the same ``config`` (its storage,
    auth, upload limits and expiry); ``data_dir`` alone is the default
    config over that directory.
    """
    if config is None:
        config = Config(data_dir=data_dir) if data_dir else Config()
    return build(config, reactor).resource


def _listen_error(description: str, reason) -> StartupError:
    error = reason.value
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        path = error.filename2 or error.filename  # a unix: socket's lock file, say
        error = f"{error.strerror}: {os.fsdecode(path)}" if isinstance(path, (str, bytes)) else error.strerror
    return StartupError(f"cannot listen on {description}: {error}")


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
        at_once(
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


def make_service(config: Config, reactor=None, worker: int = 0) -> MultiService:
    """
    The daemon's services for ``config``: worker 0 (the twistd process)
    checks the storage, listens (or, with ``workers > 1``, shares its port
    with the worker processes it supervises), collects garbage on schedule,
    and reloads the auth settings on SIGHUP, passing the signal on; worker
    ``N > 0`` (started by worker 0) listens on the shared port and reloads.
    `ConfigError` when the configuration cannot work; the services raise
    `StartupError` when they cannot start.
    """
    cleanup = None
    if config.metrics is not None and not worker:
        from .metrics.process import DirectoryCleanup, make_directory

        cleanup = DirectoryCleanup(make_directory())  # the workers find it in their environment
    components = build(config, reactor)
    if worker:
        return _worker_service(components)
    stages = _daemon_service(components)
    if cleanup is not None:
        cleanup.setServiceParent(stages.background)  # stops once the workers have
    return stages


class _ServingFirst(MultiService):
    """
    The daemon's services in two groups: ``serving`` (the listeners, the
    workers, the drain) and the others (``background``: the storage check,
    GC, notifications, auth).  They start background first; they stop
    serving first, and the others only once its requests are done, so that
    what the last requests do (the events they record) is still taken care of.
    """

    def __init__(self):
        super().__init__()
        self.background = MultiService()
        self.serving = MultiService()
        self.background.setServiceParent(self)
        self.serving.setServiceParent(self)

    def stopService(self):
        Service.stopService(self)
        stopped = maybeDeferred(self.serving.stopService)
        stopped.addBoth(lambda _: self.background.stopService())
        return stopped


def _daemon_service(components: Components) -> _ServingFirst:
    config, reactor = components.config, components.reactor
    stages = _ServingFirst()
    top, serving = stages.background, stages.serving
    components.storage_check().setServiceParent(top)
    supervisor = None
    listeners: Sequence[Listener | ListenService]
    if config.workers > 1:
        listeners = _shared_listeners(serving, components)
        on_exit = None
        if components.metrics is not None:
            from .metrics.process import process_ended

            on_exit = process_ended
        supervisor = WorkerSupervisor(reactor, config, on_exit=on_exit)
        supervisor.setServiceParent(serving)
    else:
        listeners = [Listener(reactor, description, components.site) for description in config.listen]
        for listener in listeners:
            listener.setServiceParent(serving)
    gc = components.gc_service()
    if gc is not None:
        top.addService(gc)
    notifications = components.notification_service()
    if notifications is not None:
        top.addService(notifications)
        log.info(
            "notifications to {endpoints}",
            endpoints=", ".join(f"{e.name} ({e.url}, {e.format})" for e in notifications.settings.endpoints),
        )
    if components.metrics_site is not None and config.metrics is not None:
        Listener(reactor, config.metrics.listen, components.metrics_site).setServiceParent(serving)
        log.info("metrics on {listen} (/metrics)", listen=config.metrics.listen)
    _add_metrics_sync(top, components)
    components.drain_service().setServiceParent(serving)
    log.info(
        "ociregistry storing data in {data_dir}",
        data_dir=drivers.describe(config.storage, config.data_dir),
    )
    components.auth.announce()
    # SIGHUP re-reads the auth settings, here and in every worker.
    auth = components.auth_service(
        forward=(lambda: supervisor.signal_workers("HUP")) if supervisor is not None else None
    )
    if auth is not None:
        top.addService(auth)

    _Announce(config, listeners).setServiceParent(serving)  # last: once everything else has started
    return stages


def _worker_service(components: Components) -> MultiService:
    stages = _ServingFirst()
    top = stages.background
    _shared_listeners(stages.serving, components)
    components.drain_service().setServiceParent(stages.serving)
    notifications = components.notification_service()  # every worker records what it serves
    if notifications is not None:
        top.addService(notifications)
    _add_metrics_sync(top, components)
    auth = components.auth_service()  # worker 0 passes SIGHUP on
    if auth is not None:
        top.addService(auth)
    return stages


def _add_metrics_sync(top: MultiService, components: Components) -> None:
    sync = components.metrics_sync_service()
    if sync is not None:
        top.addService(sync)


def _shared_listeners(top: MultiService, components: Components) -> list[ListenService]:
    listeners = [
        ListenService(components.reactor, description, components.site) for description in components.config.listen
    ]
    for listener in listeners:
        listener.setServiceParent(top)
    return listeners
