"""
A real webhook receiver on 127.0.0.1, in a process of its own: what the
notification tests point ociregistry (and the reference registry) at, and
what the benchmark's ``--notifications`` runs use.  Standard library only
(asyncio), HTTP/1.1 with keep-alive, so that it costs little CPU beside
the registry it serves.

    python tests/receiver_process.py --port 8080 --log requests.jsonl [--secret S] [--status 200]

Every request is answered ``--status`` (200 by default), or 401 when
``--secret`` is given and its ``Ociregistry-Signature`` does not verify,
and appended to ``--log`` as one JSON line: ``{"t", "method", "path",
"headers" (names in lower case), "body", "status", "verified"}``
(``--count-only``: no body).  `ReceiverProcess` starts and stops it and
reads what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

MAX_BODY = 16 << 20
READ_TIMEOUT = 30.0
SIGNATURE_HEADER = "ociregistry-signature"


def verify(secret: str, body: bytes, header: str | None, tolerance: float = 300.0) -> bool:
    """The check docs/notifications.md describes: ``t=<unix>,sha256=<hex>`` of HMAC-SHA256(secret, t + "." + body)."""
    if not header:
        return False
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("sha256", ""))


# --------------------------------------------------------------------------- the server


class Receiver:
    def __init__(self, log_path: str, status: int, secret: str | None, count_only: bool):
        self.log = open(log_path, "a", buffering=1, encoding="utf-8")
        self.status = status
        self.secret = secret
        self.count_only = count_only
        self.dropped = 0  # connections ended by a bad or vanished client

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100000):  # requests on one connection
                if not await self.one(reader, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError) as e:
            self.note_dropped(e)  # the client went away or sent garbage: the connection ends
        finally:
            writer.close()

    def note_dropped(self, error: Exception) -> None:
        self.dropped += 1

    async def one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                name = name.strip().lower()
                headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        length = int(headers.get("content-length", "0"))
        if length > MAX_BODY:
            raise ValueError("body too large")
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT) if length else b""
        verified = None if self.secret is None else verify(self.secret, body, headers.get(SIGNATURE_HEADER))
        status = 401 if verified is False else self.status
        record = {
            "t": time.time(),
            "method": method,
            "path": path,
            "headers": headers,
            "status": status,
            "verified": verified,
        }
        if not self.count_only:
            record["body"] = body.decode("utf-8", "replace")
        self.log.write(json.dumps(record) + "\n")
        close = headers.get("connection", "").lower() == "close"
        closing = "Connection: close\r\n" if close else ""
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{closing}\r\n".encode())
        await writer.drain()
        return not close


async def main_async(args) -> None:
    receiver = Receiver(args.log, args.status, args.secret, args.count_only)
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", args.port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="A webhook receiver that logs every request.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--secret", default=os.environ.get("RECEIVER_SECRET"))
    parser.add_argument("--count-only", action="store_true")
    asyncio.run(main_async(parser.parse_args(argv)))


# --------------------------------------------------------------------------- the launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverProcess:
    """
    The receiver in a process of its own, on a port that stays the same
    across `stop` and `start` (an endpoint that goes down and comes back).
    """

    def __init__(self, directory: str | None = None, secret: str | None = None, count_only: bool = False):
        self.dir = directory or tempfile.mkdtemp(prefix="ociregistry-receiver-")
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "requests.jsonl")
        self.port = _free_port()
        self.secret = secret
        self.count_only = count_only
        self.status = 200
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self, status: int = 200, timeout: float = 10.0) -> ReceiverProcess:
        self.status = status
        command = [sys.executable, os.path.abspath(__file__), "--port", str(self.port), "--log", self.log_path]
        command += ["--status", str(status)] + (["--count-only"] if self.count_only else [])
        env = dict(os.environ)
        env.pop("RECEIVER_SECRET", None)
        if self.secret is not None:
            env["RECEIVER_SECRET"] = self.secret  # not in argv, which any local user can read
        with open(os.path.join(self.dir, "receiver.err"), "ab") as errors:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(os.path.join(self.dir, "receiver.err"), errors="replace") as f:
                    raise RuntimeError(f"the receiver exited with {self.process.returncode}: {f.read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the receiver did not listen within {timeout}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def records(self) -> list[dict]:
        """Every request received so far, in order."""
        try:
            with open(self.log_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def accepted(self) -> list[dict]:
        """The requests answered 2xx."""
        return [r for r in self.records() if 200 <= r["status"] < 300]

    def events(self, accepted_only: bool = True) -> list[dict]:
        """The events of the requests (answered 2xx), in order: Distribution envelopes' and CloudEvents alike."""
        found = []
        for record in self.accepted() if accepted_only else self.records():
            document = json.loads(record["body"])
            if isinstance(document, dict) and "events" in document:
                found.extend(document["events"])
            elif isinstance(document, list):
                found.extend(document)
            else:
                found.append(document)
        return found

    def wait_for(self, count: int, timeout: float = 60.0, what=None) -> list[dict]:
        """
        The events once at least ``count`` arrived (of those ``what(event)``
        selects, when given), polling for ``timeout`` seconds; the ones so
        far if they did not.
        """
        deadline = time.monotonic() + timeout
        events: list[dict] = []
        while time.monotonic() < deadline:
            events = [e for e in self.events() if what is None or what(e)]
            if len(events) >= count:
                return events
            time.sleep(0.1)
        return events

    def cleanup(self) -> None:
        self.stop()


if __name__ == "__main__":
    main()
