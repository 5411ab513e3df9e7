"""
Several worker processes serving one listening port.

All registry state lives in storage, so any process can serve any request.
With ``workers: N`` the twistd process is worker 0 and starts N-1 more
(``python -m oci_registry.worker``, `oci_registry.worker`).  Each worker binds the same TCP port
with ``SO_REUSEPORT`` and the kernel spreads incoming connections across
them.  A worker that dies is restarted; workers stop when the parent stops
(or dies: each watches its stdin, a pipe from the parent).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from .config import Config, ConfigError
from .logs import EVENT_FD, EventReader
from .startup import StartupError

log = Logger(namespace="oci_registry.workers")

RESTART_DELAY = 1.0
STOP_GRACE = 10.0  # seconds workers get to stop, beyond their shutdown_timeout, before they are killed
CONFIG_VARIABLE = "OCIREGISTRY_WORKER_CONFIG"  # the JSON config a worker process starts from


def parse_tcp_listen(description: str) -> tuple[int, str, int]:
    """``(family, host, port)`` of a ``tcp:``/``tcp6:`` endpoint string; ConfigError otherwise."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(f"workers > 1 needs tcp: or tcp6: listen endpoints, not {description!r}")
    parts = rest.split(":")
    options = {}
    positional = []
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            options[key] = value
        else:
            positional.append(part)
    port = options.get("port", positional[0] if positional else None)
    if port is None or not str(port).isdigit():
        raise ConfigError(f"cannot read a port from {description!r}")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    host = options.get("interface", "::" if family == socket.AF_INET6 else "0.0.0.0").replace("\\:", ":")
    return family, host, int(port)


def shared_socket(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ListenService(Service):
    """Listens on a ``SO_REUSEPORT`` socket shared with the other workers."""

    def __init__(self, reactor, description: str, factory):
        self._reactor = reactor
        self._address = parse_tcp_listen(description)
        self._description = description
        self._factory = factory
        self._port = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self):
        super().startService()
        family = self._address[0]
        try:
            sock = shared_socket(*self._address)
        except OSError as e:
            raise StartupError(f"cannot listen on {self._description}: {e.strerror or e}") from None
        self._port = self._reactor.adoptStreamPort(sock.fileno(), family, self._factory)
        sock.close()  # the port holds its own duplicate of the descriptor
        self.listening.callback(self._port)

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()


class _WorkerProtocol(protocol.ProcessProtocol):
    """A worker process: its log events arrive on `EVENT_FD` and are logged here, as if this process had."""

    def __init__(self, supervisor: WorkerSupervisor, index: int):
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self.events = EventReader(index)
        self.pid: int | None = None

    def childDataReceived(self, childFD, data):
        if childFD == EVENT_FD:
            self.events.feed(data)

    def processEnded(self, reason):
        self.events.close()
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """Starts workers 1..N-1 and restarts any that die while it runs."""

    def __init__(self, reactor, config: Config, on_exit=None):
        self._reactor = reactor
        self._config = config
        self._on_exit = on_exit  # called with the pid of each worker that ended (the metrics forget its gauges)
        self._workers: dict[int, _WorkerProtocol] = {}
        self._stop_timeout = config.shutdown_timeout + STOP_GRACE

    def startService(self):
        super().startService()
        for index in range(1, self._config.workers):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        worker = _WorkerProtocol(self, index)
        # The config goes through the environment, not argv: it may hold
        # secrets (S3 keys), and any local user can read a process's argv.
        payload = json.dumps(self._config.to_dict())
        transport = self._reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "oci_registry.worker", str(index)],
            env={**os.environ, CONFIG_VARIABLE: payload},
            childFDs={0: "w", 1: 1, 2: 2, EVENT_FD: "r"},
        )
        worker.pid = getattr(transport, "pid", None)
        self._workers[index] = worker

    def signal_workers(self, name: str) -> None:
        """Send every running worker a signal ("HUP", ...)."""
        for worker in list(self._workers.values()):
            if worker.transport is None:  # set when it was spawned
                continue
            try:
                worker.transport.signalProcess(name)
            except ProcessExitedAlready as e:  # it has just ended: it is restarted with fresh settings anyway
                log.info("could not signal worker {index}: {error}", index=worker.index, error=e)

    def ended(self, worker: _WorkerProtocol, reason) -> None:
        self._workers.pop(worker.index, None)
        if self._on_exit is not None and worker.pid:
            self._on_exit(worker.pid)
        if self.running:
            log.warn("worker {index} ended ({reason}); restarting it", index=worker.index, reason=reason.value)
            self._reactor.callLater(RESTART_DELAY, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if self.running and index not in self._workers:
            self._spawn(index)

    def stopService(self):
        """Stop every worker; fires once they have all ended (killed after ``shutdown_timeout`` + `STOP_GRACE`)."""
        super().stopService()
        workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessExitedAlready):  # it has ended already: nothing to stop
                worker.transport.signalProcess("TERM")
        if not workers:
            return None

        def kill():
            for worker in workers:
                if not worker.ended.called:
                    log.warn(
                        "worker {index} did not stop within {timeout}s: killing it",
                        index=worker.index,
                        timeout=self._stop_timeout,
                    )
                    with contextlib.suppress(ProcessExitedAlready):
                        worker.transport.signalProcess("KILL")

        timer = self._reactor.callLater(self._stop_timeout, kill)
        done = DeferredList([worker.ended for worker in workers])
        done.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return done
