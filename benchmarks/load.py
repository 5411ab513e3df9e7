"""
Load generators for request rates: ``wrk`` (GET) and a one-thread epoll
closed loop (HEAD, which Debian's wrk 4.1 cannot do), and their percentiles.
"""

from __future__ import annotations

import array
import re
import selectors
import socket
import subprocess
import time

from .client import HTTPError


def percentile(values, pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def closed_loop(host: str, port: int, request: bytes, connections: int, seconds: float, head: bool) -> dict:
    """
    Closed-loop load on ``connections`` keep-alive connections for ``seconds``
    (each sends ``request`` again as soon as its response is in), in one
    thread with epoll: requests/s and p99 latency.  Used for HEAD, which the
    wrk 4.1 in Debian cannot do (it waits for a body after a HEAD response
    that carries Content-Length).
    """
    return ClosedLoop(host, port, request, head).run(connections, seconds)


_CONTENT_LENGTH = re.compile(rb"\r\n[Cc]ontent-[Ll]ength:\s*(\d+)")


class _State:
    """One connection of the closed loop."""

    __slots__ = ("buf", "sock", "start")


class ClosedLoop:
    def __init__(self, host: str, port: int, request: bytes, head: bool):
        self.host, self.port, self.request, self.head = host, port, request, head
        self.selector = selectors.DefaultSelector()
        self.latencies = array.array("d")
        self.counts = {"non_2xx": 0, "socket_errors": 0}
        self.completed = 0
        self.clock = time.perf_counter

    def open_one(self) -> _State:
        state = _State()
        state.sock = socket.create_connection((self.host, self.port), timeout=10)
        state.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state.sock.setblocking(False)
        state.buf = bytearray()
        self.selector.register(state.sock, selectors.EVENT_READ, state)
        return state

    def send(self, state: _State) -> None:
        state.start = self.clock()
        state.sock.send(self.request)  # a few hundred bytes: fits the empty send buffer

    def run(self, connections: int, seconds: float) -> dict:
        states = [self.open_one() for _ in range(connections)]
        clock, selector = self.clock, self.selector
        started = clock()
        end = started + seconds
        for state in states:
            self.send(state)
        try:
            for _ in range(100_000_000):
                now = clock()
                if now >= end:
                    break
                for key, _ in selector.select(min(0.1, end - now)):
                    self.readable(key.data)
        finally:
            elapsed = clock() - started
            for key in list(selector.get_map().values()):
                key.fileobj.close()
            selector.close()
        if not self.latencies:
            raise HTTPError("no request completed")
        return {
            "rps": round(self.completed / elapsed, 1),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
            "requests": self.completed,
            **self.counts,
        }

    def readable(self, state: _State) -> None:
        """Read what arrived; for each complete response, record it and send the request again."""
        try:
            data = state.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.counts["socket_errors"] += 1
            self.selector.unregister(state.sock)
            state.sock.close()
            self.send(self.open_one())
            return
        buf = state.buf
        buf += data
        while True:
            index = buf.find(b"\r\n\r\n")
            if index < 0:
                break
            length = 0
            if not self.head:
                match = _CONTENT_LENGTH.search(buf, 0, index + 2)
                length = int(match.group(1)) if match else 0
            total = index + 4 + length
            if len(buf) < total:
                break
            if buf[9:10] != b"2":
                self.counts["non_2xx"] += 1
            del buf[:total]
            done = self.clock()
            self.latencies.append(done - state.start)
            self.completed += 1
            self.send(state)


def run_wrk(url: str, connections: int, seconds: int, accept: str) -> dict:
    """``wrk`` GETs of ``url`` on ``connections`` connections for ``seconds``: its figures."""
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-H",
        f"Accept: {accept}",
        url,
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise HTTPError(f"wrk failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return parse_wrk(result.stdout)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    def duration_ms(value: str) -> float:
        match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if not match:
            raise ValueError(f"cannot read wrk duration {value!r}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    total = re.search(r"(\d+) requests in", text)
    if not (rps and p99 and total):
        raise ValueError(f"cannot read wrk output: {text[:500]}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": round(float(rps.group(1)), 1),
        "p99_ms": round(duration_ms(p99.group(1)), 2),
        "requests": int(total.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
    }
