"""
`MeasuredDriver`: a storage driver that times every call of the driver it
wraps (``registry_storage_action_seconds{driver,action}``) and counts its
failures by kind.  It provides what the wrapped driver provides, so the
registry uses it as it would the driver itself.
"""

from __future__ import annotations

import inspect
import time

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from ..storage.interfaces import (
    DRIVER_EXTENSIONS,
    DestinationExists,
    IClosableDriver,
    IStorageDriver,
    PathNotFound,
    SourceChanged,
    StorageFull,
    StorageUnavailable,
)
from .families import Metrics

# What a caller expects now and then: not a failure of the storage.
_EXPECTED = (PathNotFound, DestinationExists, SourceChanged, FileExistsError, FileNotFoundError)
_ACTIONS = tuple(
    name for interface in (IStorageDriver, *DRIVER_EXTENSIONS) for name in interface.names() if name != "close"
)


def driver_name(driver) -> str:
    name = type(driver).__name__.lower()
    return name.removesuffix("driver") or name


def _kind(error: BaseException) -> str:
    if isinstance(error, StorageUnavailable):
        return "unavailable"
    if isinstance(error, StorageFull):
        return "full"
    return "other"


@implementer(IStorageDriver)
class MeasuredDriver:
    """``driver``, with each of its calls measured in ``metrics``."""

    def __init__(self, driver, metrics: Metrics):
        self.driver = driver
        self._metrics = metrics
        self._name = driver_name(driver)
        directlyProvides(self, providedBy(driver))
        for action in _ACTIONS:
            method = getattr(driver, action, None)
            if method is not None:
                setattr(self, action, self._measured(action, method))
        if IClosableDriver.providedBy(driver):
            self.close = driver.close

    def __getattr__(self, name):
        # Anything else (settings, counters a test reads) is the driver's own.
        return getattr(self.driver, name)

    def __repr__(self) -> str:
        return f"MeasuredDriver({self.driver!r})"

    def _measured(self, action: str, method):
        timing = self._metrics.histogram(self._metrics.storage_action, self._name, action)
        errors = self._metrics.storage_errors
        name, metrics = self._name, self._metrics

        def failed(error: BaseException) -> None:
            if not isinstance(error, _EXPECTED):
                metrics.counter(errors, name, action, _kind(error)).inc()

        def ended(result, started: float):
            timing.observe(time.perf_counter() - started)
            if isinstance(result, Failure):
                failed(result.value)
            return result

        async def awaited(result, started: float):
            try:
                value = await result
            except BaseException as e:
                ended(None, started)
                failed(e)
                raise
            return ended(value, started)

        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            except BaseException as e:
                ended(None, started)
                failed(e)
                raise
            if isinstance(result, Deferred):
                return result.addBoth(ended, started)
            if inspect.isawaitable(result):
                return awaited(result, started)
            return ended(result, started)

        call.__name__ = action
        return call
