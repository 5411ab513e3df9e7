"""
One typed configuration object, from a YAML file and command-line options.

YAML (every key optional)::

    listen: ["tcp:5000"]          # Twisted endpoint strings: tcp:, ssl:, unix:
    data_dir: /var/lib/ociregistry
    max_manifest_size: 4194304    # bytes; larger manifests get 413
    access_log: true              # one line per request
    workers: 1                    # processes serving the same tcp port
    gc_interval: 0                # run garbage collection every e.g. 24h (0: never)
    gc_grace: 24h                 # blobs and links newer than this are never collected
    gc_delete_untagged: false     # scheduled runs also delete untagged manifests
    upload_expiry: 24h            # uploads idle longer than this are deleted by GC
    max_upload_size: 64GiB        # bytes one upload session may hold (0: no limit)
    max_uploads_per_client: 1000  # open upload sessions per client address, per process
    max_header_size: 16KiB        # request line and headers
    client_timeout: 60s           # idle connections are closed after this; also the time to send
                                  # a request's line and headers, and a response's idle limit
    max_connections: 2000         # open connections per process (0: no limit)
    max_connections_per_client: 200  # open connections per client address, per process (0: no limit)
    max_body_memory: 64MiB        # small bodies (manifests, forms) held in memory at once, per process
    min_body_rate: 1024           # bytes/s a request body must average over client_timeout (0: off)
    storage: {s3: {bucket: ...}}  # a storage driver by name instead of data_dir: oci_registry/storage/drivers.py
    auth: {...}                   # users, access rules, tokens: see oci_registry/auth/config.py, docs/auth.md
    # pull-through caches: docs/proxy.md
    notifications: {endpoints: [...]}  # webhooks: see oci_registry/notifications/config.py, docs/notifications.md
    proxies: [{prefix: dockerhub, url: "https://registry-1.docker.io", tag_ttl: 5m}]
    metrics: tcp:9100:interface=127.0.0.1  # Prometheus /metrics on a listener of its own (default: off);
                                  # or {listen: ..., repository_label: true}: docs/metrics.md
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attr
import yaml

from .api.forwarded import TrustedProxies
from .logs import parse_log_format, parse_log_level
from .manifest import MAX_MANIFEST_SIZE
from .metrics import MetricsConfig
from .storage.drivers import parse_storage, section_of, storage_values
from .units import parse_duration, parse_size

if TYPE_CHECKING:
    from .auth.config import AuthConfig
    from .notifications.config import NotificationsConfig

DEFAULT_LISTEN = "tcp:5000"


class ConfigError(ValueError):
    """The configuration file or options are not usable."""


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong, and where."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(error, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "ociregistry")


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class Config:
    listen: tuple = (DEFAULT_LISTEN,)
    data_dir: str = attr.ib(factory=default_data_dir)
    max_manifest_size: int = MAX_MANIFEST_SIZE
    access_log: bool = True
    workers: int = 1
    gc_interval: float = 0.0  # seconds between in-process garbage collections; 0: never
    gc_grace: float = 24 * 3600.0
    gc_delete_untagged: bool = False
    upload_expiry: float = 24 * 3600.0
    max_upload_size: int = 64 << 30  # bytes one upload session may hold; 0: no limit
    max_uploads_per_client: int = 1000  # open upload sessions per client address (per process)
    max_header_size: int = 16384  # bytes of request line and headers
    client_timeout: float = 60.0  # seconds an idle connection is kept, for a request's headers; min_body_rate window
    max_connections: int = 2000  # open connections per process; 0: no limit
    max_connections_per_client: int = 200  # open connections per client address, per process; 0: no limit
    max_body_memory: int = 64 << 20  # bytes of small request bodies held in memory at once, per process; 0: no limit
    min_body_rate: int = 1024  # bytes/s a request body must average over client_timeout; 0: off
    auth: AuthConfig | None = None  # None: open to anyone
    storage: object = None  # the chosen driver's settings (oci_registry.storage.drivers); None: data_dir's files
    proxies: tuple = ()  # oci_registry.proxy.config.UpstreamConfig: pull-through caches of other registries
    notifications: NotificationsConfig | None = None  # None: no webhooks
    log_format: str = "text"  # text or json
    log_level: str = "info"  # events below this level are not logged
    trusted_proxies: TrustedProxies = attr.ib(factory=TrustedProxies)  # peers whose X-Forwarded-* are believed
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    metrics: MetricsConfig | None = None  # None: no metrics listener

    def to_dict(self) -> dict:
        return {
            **attr.asdict(self),
            "listen": list(self.listen),
            "auth": self.auth.to_dict() if self.auth else None,
            "storage": section_of(self.storage),
            "notifications": self.notifications.to_dict() if self.notifications else None,
            "trusted_proxies": self.trusted_proxies.to_list(),
            "metrics": self.metrics.to_dict() if self.metrics else None,
        }

    @classmethod
    def load(cls, path: str | None = None, storage_options: dict | None = None, **overrides) -> Config:
        """
        Read ``path`` (YAML) if given, then apply the non-None ``overrides``;
        ``OCIREGISTRY_S3_*`` variables and ``storage_options`` (s3 keys from
        the command line) override the file's ``storage: {s3: ...}``.
        """
        values: dict = {}
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    loaded = yaml.safe_load(f) or {}
            except OSError as e:
                raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
            except yaml.YAMLError as e:
                raise ConfigError(f"cannot read config {path}: {_yaml_problem(e)}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"config {path} must be a mapping")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v not in (None, [], ())})
        try:
            storage = storage_values(values.get("storage"), os.environ, storage_options)
        except ValueError as e:
            raise ConfigError(f"storage: {e}") from None
        if storage is not None:
            values["storage"] = storage
        return cls.from_dict(values, source=path)

    @classmethod
    def from_dict(cls, values: dict, source: str | None = None) -> Config:
        known = {f.name for f in attr.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        values = dict(values)
        if "listen" in values:
            listen = values["listen"]
            if isinstance(listen, str):
                listen = [listen]
            if not isinstance(listen, (list, tuple)) or not all(isinstance(item, str) for item in listen):
                raise ConfigError("listen must be an endpoint string (e.g. tcp:5000) or a list of them")
            if not listen:
                raise ConfigError("listen: no endpoint given: the registry would serve nothing (e.g. tcp:5000)")
            values["listen"] = tuple(listen)
        if "data_dir" in values:
            values["data_dir"] = os.path.abspath(os.path.expanduser(str(values["data_dir"])))
        for key in ("max_upload_size", "max_header_size", "max_body_memory"):
            if key in values:
                try:
                    values[key] = parse_size(values[key])
                except ValueError as e:
                    raise ConfigError(f"{key}: {e}") from None
        for key in (
            "workers",
            "max_uploads_per_client",
            "min_body_rate",
            "max_connections",
            "max_connections_per_client",
        ):
            if key in values:
                try:
                    values[key] = int(values[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"{key} must be a whole number") from None
                if values[key] < 0:
                    raise ConfigError(f"{key} must not be negative")
        for key in ("gc_interval", "gc_grace", "upload_expiry", "client_timeout", "shutdown_timeout"):
            if key in values:
                try:
                    values[key] = parse_duration(values[key])
                except ValueError as e:
                    raise ConfigError(f"{key}: {e}") from None
        for key, parse in (
            ("log_format", parse_log_format),
            ("log_level", parse_log_level),
            ("trusted_proxies", TrustedProxies.parse),
            ("metrics", MetricsConfig.parse),
        ):
            if key in values:
                try:
                    values[key] = parse(values[key])
                except ValueError as e:
                    raise ConfigError(f"{key}: {e}") from None
        if values.get("workers", 1) < 1:
            raise ConfigError("workers must be at least 1")
        if "max_manifest_size" in values:
            try:
                values["max_manifest_size"] = parse_size(values["max_manifest_size"])
            except ValueError:
                raise ConfigError("max_manifest_size must be a number of bytes") from None
        if "storage" in values:
            try:
                values["storage"] = parse_storage(values["storage"])
            except ValueError as e:
                raise ConfigError(f"storage: {e}") from None
        if values.get("auth") is not None:
            from .auth.config import AuthConfig

            try:
                values["auth"] = AuthConfig.parse(values["auth"], source=source)
            except ValueError as e:
                raise ConfigError(f"auth: {e}") from None
        if "proxies" in values:
            from .proxy.config import parse_upstreams

            try:
                values["proxies"] = parse_upstreams(values["proxies"] or ())
            except ValueError as e:
                raise ConfigError(f"proxies: {e}") from None
        if values.get("notifications") is not None:
            from .notifications.config import NotificationsConfig

            try:
                values["notifications"] = NotificationsConfig.parse(values["notifications"])
            except ValueError as e:
                raise ConfigError(f"notifications: {e}") from None
        return cls(**values)
