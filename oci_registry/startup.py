"""
Starting the daemon, or failing to: every reason the registry cannot start
is one line that names it and a non-zero exit status, at once; never a
traceback, nor a process that stays up serving nothing.

Exit statuses: 2 when the configuration cannot work (the config file or
options, the data directory, the bucket or its credentials), 1 for anything
else (a port already in use...).  ``twistd -n ociregistry`` and worker
processes install this (`install`); an application embedding the registry
keeps its own process handling.
"""

from __future__ import annotations

import atexit
import os
import resource
import signal
import sys

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from .catalog import prepare
from .storage.interfaces import StorageUnavailable

log = Logger(namespace="ociregistry")

CONFIG_STATUS = 2  # the configuration cannot work
FAILED_STATUS = 1  # anything else


class StartupError(Exception):
    """The registry cannot start; ``str()`` says why, in one line, for the operator."""

    def __init__(self, message: str, status: int = FAILED_STATUS):
        super().__init__(message)
        self.status = status


def report(message: str) -> None:
    """Say why the process cannot start, before logging has begun (config errors)."""
    print(f"ociregistry: {message}", file=sys.stderr, flush=True)


class _Exit:
    """The exit status a failed start-up asks for, applied once twistd has cleaned up."""

    status: int | None = None
    installed = False


def install(reactor) -> None:
    """
    For the daemon's process: a `StartupError` escaping start-up is logged
    as one line (not a traceback) and sets the exit status; SIGTERM and
    SIGINT stop the registry and exit 0.
    """
    if _Exit.installed:
        return
    _Exit.installed = True
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        if isinstance(value, StartupError):
            log.critical("{message}", message=str(value))
            _Exit.status = value.status
        else:
            previous(kind, value, traceback)

    sys.excepthook = excepthook
    atexit.register(_exit)
    reactor.callWhenRunning(_stop_on_signals, reactor)


def _exit() -> None:
    # Registered at start, so it runs after what is registered later.
    if _Exit.status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_Exit.status)


def _stop_on_signals(reactor) -> None:
    # Twisted's own handlers end the process with the signal once it has
    # stopped (a shell sees 143); a registry that stopped as asked exits 0.
    def signalled(number, frame):
        log.info("received {signal}: stopping", signal=signal.Signals(number).name)
        reactor.callFromThread(stop, reactor)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signalled)


class DaemonService(MultiService):
    """
    The registry's services as twistd runs them: before any of them starts,
    `install` and `raise_open_files_limit` for the whole process.
    ``log_observer``, if given, is the one twistd is to log to (set on the
    application, which twistd asks before it builds its own).
    """

    def __init__(self, reactor, log_observer=None):
        super().__init__()
        self._reactor = reactor
        self._log_observer = log_observer

    def setServiceParent(self, parent):
        if self._log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self._log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        install(self._reactor)
        raise_open_files_limit()
        super().privilegedStartService()


def fail(reactor, error: StartupError) -> None:
    """Stop at once for a reason found after the reactor started (a bucket that does not exist...)."""
    log.critical("{message}", message=str(error))
    _Exit.status = error.status
    if reactor.running:
        stop(reactor)
    else:
        reactor.callWhenRunning(stop, reactor)


def stop(reactor) -> None:
    """Stop the reactor, unless it is stopping already."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # stopping already


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn(
                "could not raise the open files limit from {soft} to {hard}: {error}", soft=soft, hard=hard, error=e
            )
    return soft


def at_once(d: Deferred, judge, reactor) -> None:
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
        checked = self._storage.check()
        # Then a new store is marked as having every catalog entry (none): see oci_registry.catalog.
        checked.addCallback(lambda _: Deferred.fromCoroutine(prepare(self._storage)))
        at_once(checked, self._judge, self._reactor)

    def _judge(self, reason) -> StartupError | None:
        if not reason.check(StorageUnavailable):
            return StartupError(f"cannot use the storage: {reason.getErrorMessage()}")
        if reason.value.misconfigured:
            return StartupError(reason.value.cause, CONFIG_STATUS)
        return None  # logged as an outage by the driver; requests get 503 until it ends
