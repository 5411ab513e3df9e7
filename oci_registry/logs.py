"""
Where log events go and how they look: text (twistd's classic lines) or
JSON (one object per line), above a level; the request id every event of a
request carries; and the events of ``--workers`` children, which are sent
to the parent and written by its observer, so that every process logs to
the same place (``--logfile``, stdout or the operator's ``--logger``) in the
same format.

JSON lines have these fields, always: ``time`` (UTC, ISO 8601, milliseconds),
``level`` (debug, info, warn, error, critical), ``event`` (the message) and
``namespace``; ``worker`` (0 is the parent) with ``--workers`` > 1;
``request_id`` for anything logged while a request is handled; the access
line's fields (see `oci_registry.api.access_log`); ``traceback`` for a
failure; and the event's other plain values (numbers, strings) under their
own names (except those an event names in ``log_text_only``: parts of its
text line only).

The request id travels in a `contextvars.ContextVar`: the site sets it in a
context of the request's own, and Twisted carries a coroutine's context
across every ``await`` (`Deferred.fromCoroutine`), so the lines that the
registry, the storage or the proxy log while serving that request carry it,
and concurrent requests never see each other's.
"""

from __future__ import annotations

import atexit
import contextvars
import copy
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error")
EVENT_FD = 3  # the pipe a worker sends its events to its parent on

MAX_EVENT_LINE = 1 << 20  # bytes of one forwarded event; longer ones are cut short
MAX_PENDING = 4 << 20  # bytes of events a worker holds while its parent does not read
FLUSH_TIMEOUT = 2.0  # seconds a stopping worker waits to hand its last events over

#: The id of the request being handled in this context (None outside requests).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("ociregistry_request_id", default=None)

_LEVEL_NAMES = {level.name for level in LogLevel.iterconstants()}
_KNOWN = ("time", "level", "event", "namespace", "worker", "request_id", "traceback")
# Keys that Twisted's legacy log events carry, not fields of their own.
_LEGACY = {"message", "system", "isError", "format", "why", "failure", "printed", "time"}


def parse_log_format(value) -> str:
    text = str(value).strip().lower()
    if text not in LOG_FORMATS:
        raise ValueError(f"must be text or json, not {value!r}")
    return text


def parse_log_level(value) -> str:
    text = str(value).strip().lower()
    text = {"warning": "warn"}.get(text, text)
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return text


def in_request(request_id: str, function: Callable[..., Any], *args) -> Any:
    """Call ``function(*args)`` in a context of its own, where `current_request_id` is ``request_id``."""

    def run():
        current_request_id.set(request_id)
        return function(*args)

    return contextvars.copy_context().run(run)


# ------------------------------------------------------------------ rendering


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _SKIP


_SKIP = object()


def json_line(event: dict, worker: int | None = None) -> str:
    """One event as one line of JSON (with its newline)."""
    record: dict[str, Any] = {
        "time": _timestamp(event.get("log_time") or time.time()),
        "level": level_name(event.get("log_level")),
        "event": formatEvent(event),
        "namespace": event.get("log_namespace", "-"),
    }
    worker = event.get("worker", worker)
    if worker is not None:
        record["worker"] = worker
    request_id = event.get("request_id")
    if request_id is not None:
        record["request_id"] = request_id
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # noqa: BLE001  (a failure that cannot print itself must not lose the line)
            record["traceback"] = repr(failure)
    text_only = event.get("log_text_only", ())
    for key, value in event.items():
        if key in text_only:
            continue
        if key in record or key in _KNOWN or key in _LEGACY or key.startswith("log_") or not key.isidentifier():
            continue
        plain = _plain(value)
        if plain is not _SKIP:
            record[key] = plain
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def level_name(level) -> str:
    """The name of a `LogLevel` constant (``info`` for anything else)."""
    name = getattr(level, "name", None)
    return name if isinstance(name, str) and name in _LEVEL_NAMES else "info"


def _text_line(event: dict) -> str | None:
    """twistd's classic line; a worker's events say which worker: ``[worker 1 oci_registry.access#info]``."""
    worker = event.get("worker")
    if worker is not None:
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level_name(event.get('log_level'))}"
        event = dict(event, log_system=f"worker {worker} {system}")
    return formatEventAsClassicLogText(event)


@implementer(ILogObserver)
class RequestStamp:
    """Adds the `current_request_id` to each event logged inside a request, then passes it on."""

    def __init__(self, observer):
        self._observer = observer

    def __call__(self, event: dict) -> None:
        if "request_id" not in event:
            request_id = current_request_id.get()
            if request_id is not None:
                event["request_id"] = request_id
        self._observer(event)


@implementer(ILogObserver)
class _Stamp:
    def __call__(self, event: dict) -> None:
        if "request_id" not in event:
            request_id = current_request_id.get()
            if request_id is not None:
                event["request_id"] = request_id


_STAMP = _Stamp()  # stateless: what it adds comes from the context of each event


def stamp_request_ids(publisher=globalLogPublisher) -> None:
    """
    Give every event logged inside a request its ``request_id``, whichever
    observer then writes it (twistd's own, an operator's ``--logger``):
    an observer that runs first, before the ones logging begins with.
    """
    publisher.addObserver(_STAMP)  # once: a publisher adds an observer it has only once


def file_observer(file: IO[str], log_format: str = "text", level: str = "info", worker: int | None = None):
    """
    An observer writing events of ``level`` and above to ``file`` in
    ``log_format``; ``worker``: the index this process's own events are
    marked with (0 for the parent of workers), None for a single process.
    """
    if log_format == "json":
        writer = FileLogObserver(file, lambda event: json_line(event, worker))
    else:
        writer = FileLogObserver(file, _text_line)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return RequestStamp(FilteringLogObserver(writer, [predicate]))


# -------------------------------------------------------------------- twistd


def twistd_observer(twistd_options, log_format: str, level: str, worker: int | None = None):
    """
    The observer for a ``twistd`` run, writing where twistd itself would
    (``--logfile FILE``, ``-`` or stdout with ``-n``, else ``twistd.log``,
    rotated on SIGUSR1 as twistd does); None when the operator chose their
    own observer (``--logger``) or syslog, which twistd then sets up.
    """
    options = twistd_options or {}
    if options.get("logger") or options.get("syslog"):
        return None
    name = options.get("logfile") or ""
    nodaemon = bool(options.get("nodaemon"))
    if name == "-" and not nodaemon:
        return None  # twistd refuses this itself, with its own message
    if name == "-" or (nodaemon and not name):
        return file_observer(sys.stdout, log_format, level, worker)
    from twisted.python import logfile

    log_file = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(number, frame):
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return file_observer(log_file, log_format, level, worker)


# ---------------------------------------------------- events from the workers


def _portable(event: dict) -> dict:
    """
    The event, made fit for `eventAsJSON`: its message rendered here (a
    flattened event loses format specs such as ``{timeout:g}``), and a
    failure keeping its message (JSON cannot hold the exception).
    """
    event = dict(event, log_format="{log_prerendered}", log_prerendered=formatEvent(event))
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        failure = copy.copy(failure)
        failure.value = f"{failure.value}"
        failure.tb = None
        event = dict(event, log_failure=failure)
    return event


@implementer(ILogObserver, IWriteDescriptor)
class EventPipe:
    """
    A worker's observer: each event as a JSON line on a pipe to its parent.
    Never blocks the reactor: what the pipe does not take at once waits here
    (at most `MAX_PENDING` bytes; past that, events are counted and dropped,
    and the count is sent once the pipe drains).
    """

    def __init__(self, reactor, fd: int = EVENT_FD):
        self._reactor = reactor
        self._fd = fd
        self._pending = bytearray()
        self._writing = False
        self._dropped = 0
        self._broken = False
        os.set_blocking(fd, False)
        atexit.register(self.flush)

    def __call__(self, event: dict) -> None:
        if self._broken:
            return
        try:
            text = eventAsJSON(_portable(event))
        except Exception:  # noqa: BLE001  (an event that cannot be encoded: its message still goes)
            text = eventAsJSON({**_essentials(event), "log_format": "{text}", "text": formatEvent(event)})
        line = text.encode("utf-8") + b"\n"
        if len(self._pending) + len(line) > MAX_PENDING:
            self._dropped += 1
            return
        self._pending += line
        self._write()

    def _write(self) -> None:
        while self._pending:
            try:
                written = os.write(self._fd, self._pending[:65536])
            except BlockingIOError:
                break
            except OSError:
                self._broken = True  # the parent is gone: this worker stops too (see _ParentWatch)
                self._pending.clear()
                return
            del self._pending[:written]
        if not self._pending and self._dropped:
            dropped, self._dropped = self._dropped, 0
            self(_note(f"{dropped} log events dropped: the parent did not read them in time"))
            return
        wanted = bool(self._pending)
        if wanted != self._writing:
            self._writing = wanted
            (self._reactor.addWriter if wanted else self._reactor.removeWriter)(self)

    def doWrite(self):
        self._write()
        return None

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "event-pipe"

    def connectionLost(self, reason):
        self._broken = True

    def flush(self) -> None:
        """Hand over what is still waiting, for at most `FLUSH_TIMEOUT` seconds (at exit)."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while self._pending and not self._broken and time.monotonic() < deadline:
            try:
                written = os.write(self._fd, self._pending[:65536])
                del self._pending[:written]
            except BlockingIOError:
                select.select([], [self._fd], [], max(0.0, deadline - time.monotonic()))
            except OSError:
                return


def forwarding_observer(reactor, level: str = "info", fd: int = EVENT_FD):
    """A worker's observer: events of ``level`` and above, with their request ids, to its parent."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return RequestStamp(FilteringLogObserver(EventPipe(reactor, fd), [predicate]))


def _essentials(event: dict) -> dict:
    return {k: event[k] for k in ("log_time", "log_level", "log_namespace", "request_id") if k in event}


def _note(text: str) -> dict:
    return {
        "log_time": time.time(),
        "log_level": LogLevel.warn,
        "log_namespace": "oci_registry.logs",
        "log_format": "{text}",
        "text": text,
    }


class EventReader:
    """
    The parent's end of a worker's `EventPipe`: its events published here,
    marked with the worker's index, as if this process had logged them.
    """

    def __init__(self, worker: int, publish=globalLogPublisher):
        self.worker = worker
        self._publish = publish
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_EVENT_LINE:
                    self._buffer, self._skipping = b"", True
                    self._publish(self._mark(_note(f"an event longer than {MAX_EVENT_LINE} bytes was cut")))
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if self._skipping:
                self._skipping = False
                continue
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            event = _note(line.decode("utf-8", "replace"))
        if getattr(event.get("log_level"), "name", None) not in _LEVEL_NAMES:
            event["log_level"] = LogLevel.info
        self._publish(self._mark(event))

    def _mark(self, event: dict) -> dict:
        event["worker"] = self.worker
        event.pop("log_logger", None)
        event.pop("log_source", None)
        return event

    def close(self) -> None:
        if self._buffer and not self._skipping:
            self._line(self._buffer)
        self._buffer = b""
