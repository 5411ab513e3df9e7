"""
Shared fixtures.  Set ``OCIREGISTRY_TEST_TARGET=reference`` to run the HTTP
and end-to-end tests against the reference registry instead of ociregistry.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from registry_process import RegistryProcess

TARGET = os.environ.get("OCIREGISTRY_TEST_TARGET", "ociregistry")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry process on a fresh data directory, shared by one test module."""
    process = RegistryProcess(str(tmp_path_factory.mktemp("data")), kind=TARGET).start()
    yield process
    process.stop()


@pytest.fixture
def fresh_registry(tmp_path_factory):
    """A registry process of its own, for tests that restart or kill it."""
    process = RegistryProcess(str(tmp_path_factory.mktemp("data")), kind=TARGET).start()
    yield process
    process.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "ociregistry_only: a feature the reference registry lacks")


def pytest_collection_modifyitems(config, items):
    if TARGET == "reference":
        skip = pytest.mark.skip(reason="not supported by the reference registry")
        for item in items:
            if "ociregistry_only" in item.keywords:
                item.add_marker(skip)
