"""Storage drivers by name: each driver module declares its factory, and the configuration chooses one."""

from __future__ import annotations

import os
import re
import sys
import textwrap

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from oci_registry.compose import build_storage
from oci_registry.config import Config, ConfigError
from oci_registry.storage import drivers
from oci_registry.storage.interfaces import IStorageDriver, IStorageDriverFactory
from oci_registry.storage.settings import S3Settings


def test_every_driver_module_declares_a_factory():
    found = drivers.factories()
    assert sorted(found) == ["filesystem", "s3"]
    for name, factory in found.items():
        assert verifyObject(IStorageDriverFactory, factory)
        assert factory.name == name


def test_the_filesystem_is_the_default(tmp_path):
    config = Config(data_dir=str(tmp_path))
    assert config.storage is None
    assert drivers.factory_of(None).name == "filesystem"
    assert drivers.describe(None, str(tmp_path)) == str(tmp_path)
    assert Config.from_dict(config.to_dict()) == config


def test_s3_settings_belong_to_the_s3_driver_and_come_back_from_their_section():
    config = Config.from_dict({"storage": {"s3": {"bucket": "b", "access_key": "a", "secret_key": "s", "prefix": "p"}}})
    assert isinstance(config.storage, S3Settings)
    assert drivers.factory_of(config.storage).name == "s3"
    assert config.to_dict()["storage"]["s3"]["bucket"] == "b"
    assert Config.from_dict(config.to_dict()) == config
    assert drivers.describe(config.storage, "/unused") == "s3://b/p at https://s3.us-east-1.amazonaws.com"
    storage = build_storage(config)
    try:
        assert verifyObject(IStorageDriver, storage)
        assert storage.settings == config.storage
    finally:
        storage.close()


def test_an_unknown_driver_names_the_known_ones():
    with pytest.raises(ConfigError, match=re.escape("storage: unknown storage 'gcs' (use filesystem or s3)")):
        Config.from_dict({"storage": {"gcs": {}}})
    with pytest.raises(ConfigError, match=re.escape("storage must be a mapping with one key: filesystem or s3")):
        Config.from_dict({"storage": {"s3": {}, "filesystem": {}}})


# ------------------------------------------- a new backend: one module, nothing else

ELSEWHERE = '''
"""A driver elsewhere: the filesystem under a root of its own, chosen as ``storage: {elsewhere: {root: ...}}``."""

import attr

from oci_registry.storage.filesystem import FilesystemDriver
from oci_registry.storage.interfaces import DriverFactory


@attr.s(auto_attribs=True, frozen=True)
class ElsewhereSettings:
    root: str


def parse(section):
    if not section.get("root"):
        raise ValueError("elsewhere storage needs a root")
    return ElsewhereSettings(str(section["root"]))


def sources(section, environ, options):
    root = environ.get("ELSEWHERE_ROOT")
    return None if root is None else {**(section or {}), "root": root}


DRIVER = DriverFactory(
    name="elsewhere",
    settings_type=ElsewhereSettings,
    parse=parse,
    sources=sources,
    describe=lambda settings, data_dir: f"elsewhere at {settings.root}",
    build=lambda settings, data_dir, reactor: FilesystemDriver(settings.root, reactor=reactor),
)
'''


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A package of drivers holding one new module, and the registry knowing its drivers too."""
    package = tmp_path / "more_drivers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "elsewhere.py").write_text(textwrap.dedent(ELSEWHERE))
    (package / "helpers.py").write_text("HELPER = 1\n")  # a module without a driver is no driver
    monkeypatch.syspath_prepend(str(tmp_path))
    found = drivers.discover("more_drivers")
    known = {**drivers.factories(), **found}
    monkeypatch.setattr(drivers, "factories", lambda: known)
    yield found
    for name in [m for m in sys.modules if m == "more_drivers" or m.startswith("more_drivers.")]:
        del sys.modules[name]


@pytest_twisted.ensureDeferred
async def test_a_new_driver_module_is_found_configured_and_built(elsewhere, tmp_path, monkeypatch):
    assert list(elsewhere) == ["elsewhere"]
    assert verifyObject(IStorageDriverFactory, elsewhere["elsewhere"])
    root = tmp_path / "root"
    config = Config.from_dict({"data_dir": str(tmp_path / "unused"), "storage": {"elsewhere": {"root": str(root)}}})
    assert Config.from_dict(config.to_dict()) == config
    assert drivers.describe(config.storage, config.data_dir) == f"elsewhere at {root}"
    storage = build_storage(config)
    try:
        await storage.write_bytes("a/b", b"hello")
        assert (root / "a" / "b").read_bytes() == b"hello"
    finally:
        storage.close()
    with pytest.raises(ConfigError, match="elsewhere storage needs a root"):
        Config.from_dict({"storage": {"elsewhere": {}}})
    with pytest.raises(ConfigError, match=re.escape("(use elsewhere or filesystem or s3)")):
        Config.from_dict({"storage": {"nowhere": {}}})
    # Its environment variables choose it, as OCIREGISTRY_S3_* choose S3.
    for name in [n for n in os.environ if n.startswith(("OCIREGISTRY_S3_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ELSEWHERE_ROOT", str(root))
    assert Config.load().storage == elsewhere["elsewhere"].parse({"root": str(root)})


def test_a_driver_that_is_not_a_factory_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "bad_drivers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("DRIVER = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(TypeError, match="bad_drivers.broken.DRIVER does not provide IStorageDriverFactory"):
            drivers.discover("bad_drivers")
    finally:
        for name in [m for m in sys.modules if m.startswith("bad_drivers")]:
            del sys.modules[name]
