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
"""

from __future__ import annotations

import os

import attr
import yaml

from .gc import parse_duration
from .manifest import MAX_MANIFEST_SIZE

DEFAULT_LISTEN = "tcp:5000"


class ConfigError(ValueError):
    """The configuration file or options are not usable."""


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

    def to_dict(self) -> dict:
        return {**attr.asdict(self), "listen": list(self.listen)}

    @classmethod
    def load(cls, path: str | None = None, **overrides) -> Config:
        """Read ``path`` (YAML) if given, then apply the non-None ``overrides``."""
        values: dict = {}
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    loaded = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read config {path}: {e}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"config {path} must be a mapping")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v not in (None, [], ())})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        known = {f.name for f in attr.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        values = dict(values)
        if "listen" in values:
            listen = values["listen"]
            values["listen"] = tuple([listen] if isinstance(listen, str) else listen)
        if "data_dir" in values:
            values["data_dir"] = os.path.abspath(os.path.expanduser(str(values["data_dir"])))
        for key in ("workers",):
            if key in values:
                try:
                    values[key] = int(values[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"{key} must be a whole number") from None
        for key in ("gc_interval", "gc_grace", "upload_expiry"):
            if key in values:
                try:
                    values[key] = parse_duration(values[key])
                except ValueError as e:
                    raise ConfigError(f"{key}: {e}") from None
        if values.get("workers", 1) < 1:
            raise ConfigError("workers must be at least 1")
        if "max_manifest_size" in values:
            try:
                values["max_manifest_size"] = int(values["max_manifest_size"])
            except (TypeError, ValueError):
                raise ConfigError("max_manifest_size must be a number of bytes") from None
        return cls(**values)
