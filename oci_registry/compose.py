"""
The composition root: the one place that turns a `Config` into the
registry's object graph, so that every entry point gets the same storage,
limits and auth.  The twistd plugin and the ``--workers`` processes
(through `oci_registry.service.make_service`), embedding applications
(`oci_registry.service.registry_resource`, or `build` itself), ``ociregistry
gc``/``du`` (`build_storage`) and the tests all start here.

    components = build(config, reactor)
    components.site        # serve it: reactor.listenTCP(5000, components.site)
    components.registry    # or use the domain directly, without HTTP

Everything else receives its collaborators; nothing else chooses them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attr
from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web.resource import IResource

from .api.app import RegistryAPI
from .api.health import HealthResource, HealthRoute
from .auth.service import Auth, build_auth
from .config import Config
from .content_cache import ContentCache
from .drain import DrainService
from .gc import GCOptions, scheduled
from .health import Readiness
from .observe import LogObserver, ObservedRegistry
from .registry import Registry
from .site import RegistrySite
from .startup import StorageCheck
from .storage.drivers import build_driver
from .storage.interfaces import IStorageDriver

if TYPE_CHECKING:
    from .metrics.families import Metrics
    from .notifications.notifier import Notifier

log = Logger(namespace="oci_registry.service")


def build_storage(config: Config, reactor=None) -> IStorageDriver:
    """The storage driver the config names (the filesystem under ``data_dir`` by default)."""
    return build_driver(config.storage, config.data_dir, reactor)


def build_registry(config: Config, storage: IStorageDriver, reactor=None) -> ObservedRegistry:
    """
    The local `Registry` over ``storage``; wrapped in a `ProxyRegistry` when
    ``proxies`` are configured; observed (`oci_registry.observe`) by the log.
    """
    registry = Registry(
        storage,
        max_manifest_size=config.max_manifest_size,
        max_upload_size=config.max_upload_size,
        reactor=reactor,
        gc_grace=config.gc_grace,
        cache=ContentCache(),  # per process, bounded: see oci_registry.content_cache
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


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class Components:
    """
    The registry, built: what serves requests (``resource``, ``site``), what
    it is made of (``storage``, ``registry``, ``auth``, ``api``), and the
    background services that go with it.  Each ``*_service`` method makes a
    new service, for the caller to add to its own service tree.
    """

    config: Config
    reactor: object
    storage: IStorageDriver
    registry: ObservedRegistry  # the `Registry` (in a `ProxyRegistry` when configured), observed
    auth: Auth
    api: RegistryAPI
    resource: IResource  # the API, with ``/token`` in front when this registry issues tokens
    health: HealthResource  # /healthz and /readyz, to mount on any resource (``health.mount(root)``)
    site: RegistrySite  # ``resource`` and ``health`` served with the config's limits and trusted proxies
    notifier: Notifier | None = None  # observes ``registry`` when notification endpoints are configured
    metrics: Metrics | None = None  # this process's metrics, when ``metrics`` is configured
    metrics_site: object = None  # /metrics, /healthz and /readyz, for the metrics listener (worker 0's)

    def storage_check(self) -> Service:
        """Checks the storage at start-up: the daemon does not start on one it cannot use."""
        return StorageCheck(self.reactor, self.storage)

    def gc_service(self) -> Service | None:
        """Garbage collection every ``gc_interval`` (None when it is 0: never)."""
        config = self.config
        if config.gc_interval <= 0:
            return None
        options = GCOptions(
            grace=config.gc_grace, upload_expiry=config.upload_expiry, delete_untagged=config.gc_delete_untagged
        )
        observer = None
        if self.metrics is not None:
            from .metrics.observers import GCMetrics

            observer = GCMetrics(self.metrics, time.time)
        return scheduled(
            self.storage, options, config.gc_interval, self.reactor, observer=observer, busy=self.site.tracker.waiting
        )

    def metrics_sync_service(self) -> Service | None:
        """
        Adds what this process counted to the shared metrics every second (and
        when it stops), and copies the notifier's counters and the open
        uploads into them every few seconds.
        """
        if self.metrics is None:
            return None
        from .metrics.observers import StatusSync

        return StatusSync(self.metrics, self.notifier, self.api).service(self.reactor)

    def notification_service(self) -> Notifier | None:
        """
        The notifications (`oci_registry.notifications`): records the events
        ``notifier`` observes in the outbox and delivers them; None without
        endpoints.  Every process serving the registry runs one.
        """
        return self.notifier

    def auth_service(self, forward=None) -> Service | None:
        """The login thread pool and the reload of the auth settings on SIGHUP (see `Auth.service`)."""
        return self.auth.service(forward=forward)

    def drain_service(self) -> Service:
        """On stop, lets the site's requests in flight finish, for up to ``shutdown_timeout`` (`DrainService`)."""
        return DrainService(self.reactor, self.site.tracker, self.health.readiness, self.config.shutdown_timeout)


def build(config: Config, reactor=None) -> Components:
    """
    The registry's object graph for ``config``, on ``reactor`` (the global
    one when None).  Raises `ConfigError` when the configuration cannot
    work (an auth file that cannot be read...); builds nothing that listens
    or runs until its services are started.
    """
    if reactor is None:
        from twisted.internet import reactor
    metrics = build_metrics(config)
    storage = build_storage(config, reactor)
    if metrics is not None:
        from .metrics.storage import MeasuredDriver

        storage = MeasuredDriver(storage, metrics)
    registry = build_registry(config, storage, reactor)
    if metrics is not None and hasattr(registry.registry, "observer"):  # a pull-through cache
        from .metrics.observers import ProxyMetrics

        registry.registry.observer = ProxyMetrics(metrics)
    auth = build_auth(config, reactor)
    api = RegistryAPI(
        registry,
        max_uploads_per_client=config.max_uploads_per_client,
        upload_expiry=config.upload_expiry,
        authorizer=auth.authorizer,
    )
    resource = auth.wrap(api.resource())
    notifier = build_notifier(config, registry, storage, reactor)
    health = HealthResource(Readiness(storage, reactor))
    site = RegistrySite.from_config(HealthRoute(resource, health), config, reactor)
    metrics_site = None
    if metrics is not None:
        from .metrics.http import RequestMetrics
        from .metrics.resource import MetricsSite

        site.request_metrics = RequestMetrics(metrics)
        metrics_site = MetricsSite(health, metrics, reactor)
    return Components(
        config=config,
        reactor=reactor,
        storage=storage,
        registry=registry,
        auth=auth,
        api=api,
        resource=resource,
        notifier=notifier,
        health=health,
        site=site,
        metrics=metrics,
        metrics_site=metrics_site,
    )


def build_metrics(config: Config) -> Metrics | None:
    """This process's metrics when ``config`` asks for them (`oci_registry.metrics`), else None."""
    if config.metrics is None:
        return None
    from .metrics.process import process_metrics

    return process_metrics(repository_label=config.metrics.repository_label)


def build_notifier(config: Config, registry: ObservedRegistry, storage: IStorageDriver, reactor) -> Notifier | None:
    """The `Notifier` of ``config``'s notification endpoints, observing ``registry``; None when there are none."""
    settings = config.notifications
    if settings is None or not settings.endpoints:
        return None
    from .notifications.notice import Source
    from .notifications.notifier import Notifier

    plain = any(not description.startswith("ssl:") for description in config.listen)
    notifier = Notifier(
        settings, storage, reactor, Source.for_listen(config.listen), scheme="http" if plain else "https"
    )
    registry.add_observer(notifier)
    return notifier
