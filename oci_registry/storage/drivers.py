"""
The storage drivers by name, as the ``storage`` key of the configuration
chooses them::

    storage:                      # absent: the filesystem under data_dir
      s3: {bucket: registry, ...} # one key: the driver's name, and its section

Every module of this package that declares a ``DRIVER`` (an
`IStorageDriverFactory`) is a driver, under that factory's name: so a new
backend is its own module here (with its tests and docs), and nothing
else changes.  Only this module and the composition root
(`oci_registry.compose`) ever build a driver; the rest of the registry
holds an `IStorageDriver`.  The driver sections are described in
docs/storage.md and in each driver's module (the ``s3`` keys:
`oci_registry.storage.settings`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping

from .interfaces import IStorageDriver, IStorageDriverFactory

DEFAULT = "filesystem"  # the driver whose settings are None: the filesystem under data_dir


@functools.cache
def factories() -> dict[str, IStorageDriverFactory]:
    """Every driver of this package, by name (found once)."""
    return discover(__package__)


def discover(package_name: str) -> dict[str, IStorageDriverFactory]:
    """The ``DRIVER`` of every module of a package, by name, found by importing each module."""
    package = importlib.import_module(package_name)
    found: dict[str, IStorageDriverFactory] = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package_name}.{module_info.name}")
        declared = vars(module).get("DRIVER")
        if declared is None:
            continue
        if not IStorageDriverFactory.providedBy(declared):
            raise TypeError(f"{module.__name__}.DRIVER does not provide IStorageDriverFactory")
        if declared.name in found:
            raise TypeError(f"two storage drivers are named {declared.name!r}")
        found[declared.name] = declared
    return found


def _names() -> str:
    return " or ".join(sorted(factories()))


def factory_of(settings) -> IStorageDriverFactory:
    """The driver that ``settings`` (a parsed ``storage`` value) belong to."""
    for declared in factories().values():
        if declared.owns(settings):
            return declared
    raise TypeError(f"no storage driver takes {type(settings).__name__} settings")


def parse_storage(value):
    """
    The ``storage`` config value, parsed: the chosen driver's settings (None
    for the filesystem); ValueError says what is wrong.
    """
    if value is None:
        return None
    drivers = factories()
    if any(declared.owns(value) for declared in drivers.values()):
        return value  # parsed already
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(f"storage must be a mapping with one key: {_names()}")
    ((name, section),) = value.items()
    declared = drivers.get(name)
    if declared is None:
        raise ValueError(f"unknown storage {name!r} (use {_names()})")
    if section is not None and not isinstance(section, Mapping):
        raise ValueError(f"storage: {name} must be a mapping")
    return declared.parse(section or {})


def storage_values(from_file, environ: Mapping[str, str], options: Mapping | None = None):
    """
    The ``storage`` value of the config file with each driver's
    environment variables and command-line ``options`` applied (see
    `IStorageDriverFactory.sources`): the file's own value when none apply.
    """
    chosen = {}
    for name, declared in factories().items():
        own = from_file.get(name) if isinstance(from_file, Mapping) else None
        merged = declared.sources(own if isinstance(own, Mapping) else None, environ, options or {})
        if merged is not None:
            chosen[name] = merged
    if not chosen:
        return from_file
    if len(chosen) > 1:
        raise ValueError(f"the environment and options choose several storage drivers: {', '.join(chosen)}")
    return chosen


def section_of(settings) -> dict | None:
    """``settings`` back as the ``storage`` config value (None for the filesystem): `parse_storage` reads it."""
    if settings is None:
        return None
    declared = factory_of(settings)
    return {declared.name: declared.section(settings)}


def describe(settings, data_dir: str) -> str:
    """Where the data is, for the logs (never a secret)."""
    return factory_of(settings).describe(settings, data_dir)


def build_driver(settings, data_dir: str, reactor) -> IStorageDriver:
    """A new driver for ``settings`` (the config's ``storage``; None: the filesystem under ``data_dir``)."""
    return factory_of(settings).build(settings, data_dir, reactor)
