"""
One worker process, 1..N-1 of ``workers: N``: ``python -m oci_registry.worker
INDEX``, started (and restarted) by worker 0's `WorkerSupervisor`, which
hands it the configuration in its environment.  It serves what
`oci_registry.service.make_service` builds for a worker, so that it is the
same registry as worker 0's, and stops when worker 0 does (or dies: it
watches its stdin, a pipe from worker 0).
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from .config import Config
from .logs import forwarding_observer, stamp_request_ids
from .startup import stop
from .workers import CONFIG_VARIABLE

log = Logger(namespace="oci_registry.workers")  # the namespace worker lines have always had


@implementer(IReadDescriptor)
class _ParentWatch:
    """Stops the worker when the parent's pipe on stdin closes (the parent ended)."""

    def __init__(self, reactor, fd: int = 0):
        self._reactor = reactor
        self._fd = fd

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "parent-watch"

    def doRead(self):
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._reactor.removeReader(self)
            self.connectionLost(None)
        return None

    def connectionLost(self, reason):
        # The reactor reports a hung-up pipe here rather than as a read.
        # After SIGTERM the reactor is stopping already (draining): no second stop.
        stop(self._reactor)


def main(argv=None) -> None:
    """Entry point of worker processes 1..N-1."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from .bulk import large_buffers_from_mmap
    from .service import make_service
    from .startup import install, raise_open_files_limit

    large_buffers_from_mmap()
    files = raise_open_files_limit()
    argv = sys.argv[1:] if argv is None else argv
    index = int(argv[0])
    payload = argv[1] if len(argv) > 1 else os.environ.pop(CONFIG_VARIABLE)
    config = Config.from_dict(json.loads(payload))
    # Every event goes to worker 0, which logs it where and as it logs its own.
    stamp_request_ids()
    globalLogBeginner.beginLoggingTo([forwarding_observer(reactor, config.log_level)], redirectStandardIO=False)
    install(reactor)
    top = make_service(config, reactor, worker=index)
    reactor.addReader(_ParentWatch(reactor))
    top.startService()  # a StartupError ends the worker with one line
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("worker {index} serving; open files limit {files}", index=index, files=files)
    reactor.run()


if __name__ == "__main__":
    main()
