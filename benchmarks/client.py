"""
The HTTP client of the workloads: a minimal HTTP/1.1 keep-alive client on a
blocking socket, so that the client is not what is measured.
"""

from __future__ import annotations

import socket
import urllib.parse

from .common import MiB


class HTTPError(Exception):
    pass


# What a request on a Connection raises when the server or the network misbehaves
# (ValueError: a status line, a length or a chunk size that is not a number).
CLIENT_ERRORS = (OSError, HTTPError, ValueError)


class Connection:
    """
    A minimal HTTP/1.1 keep-alive client on a blocking socket: large request
    bodies go out with sendfile(2), large response bodies are read into one
    reused buffer and dropped.
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._scratch: bytearray | None = None

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, target, headers=(), body: bytes | None = None, file_parts=(), discard=False):
        """
        Send one request and read its response: ``(status, headers, body)``,
        headers lower-cased, body the bytes, or their count when ``discard``.
        ``file_parts`` is a sequence of ``(file object, offset, count)`` sent
        after ``body`` with sendfile.
        """
        if self.sock is None:
            self.connect()
        length = (len(body) if body else 0) + sum(count for _, _, count in file_parts)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if body and len(body) <= 256 * 1024:
                self.sock.sendall(head + body)
            else:
                self.sock.sendall(head)
                if body:
                    self.sock.sendall(body)
            for f, offset, count in file_parts:
                sent = self.sock.sendfile(f, offset, count)
                if sent != count:
                    raise HTTPError(f"sent {sent} of {count} bytes")
        except OSError as e:
            # The server may have answered early (an error) and closed: read it.
            try:
                status, rheaders, rbody = self._read_response(method, discard)
            except CLIENT_ERRORS:
                self.close()
                raise HTTPError(f"{method} {target}: sending failed: {e}") from None
            self.close()
            return status, rheaders, rbody
        return self._read_response(method, discard)

    def request_chunked(self, method, target, headers, f, offset: int, count: int, piece: int):
        """
        Send ``count`` bytes of file ``f`` from ``offset`` as a request body in
        ``Transfer-Encoding: chunked``, ``piece`` bytes a chunk (each sent with
        sendfile), and read the response: ``(status, headers, body)``.
        """
        if self.sock is None:
            self.connect()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Transfer-Encoding: chunked"]
        lines += [f"{k}: {v}" for k, v in headers]
        try:
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            for start in range(offset, offset + count, piece):
                size = min(piece, offset + count - start)
                self.sock.sendall(f"{size:x}\r\n".encode())
                if self.sock.sendfile(f, start, size) != size:
                    raise HTTPError(f"sent less than {size} bytes")
                self.sock.sendall(b"\r\n")
            self.sock.sendall(b"0\r\n\r\n")
        except OSError as e:
            self.close()
            raise HTTPError(f"{method} {target}: sending failed: {e}") from None
        return self._read_response(method, False)

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise HTTPError("connection closed by the server")
        self._buf += data

    def _read_line(self) -> bytes:
        for _ in range(10_000):
            index = self._buf.find(b"\r\n")
            if index >= 0:
                line = bytes(self._buf[:index])
                del self._buf[: index + 2]
                return line
            if len(self._buf) > 64 * 1024:
                raise HTTPError("header line too long")
            self._fill()
        raise HTTPError("no line")

    def _read_exact(self, count: int, discard: bool):
        if not discard:
            while len(self._buf) < count:
                self._fill()
            data = bytes(self._buf[:count])
            del self._buf[:count]
            return data
        taken = min(count, len(self._buf))
        del self._buf[:taken]
        remaining = count - taken
        if self._scratch is None:
            self._scratch = bytearray(4 * MiB)
        view = memoryview(self._scratch)
        while remaining > 0:
            n = self.sock.recv_into(view, min(len(view), remaining))
            if n == 0:
                raise HTTPError(f"connection closed with {remaining} body bytes missing")
            remaining -= n
        return count

    def _read_response(self, method: str, discard: bool):
        for _ in range(10):  # skip any 1xx
            status_line = self._read_line()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise HTTPError(f"bad status line {status_line!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for _ in range(1000):
                line = self._read_line()
                if not line:
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if status >= 200:
                break
        else:
            raise HTTPError("too many 1xx responses")
        if method == "HEAD" or status in (204, 304):
            body = 0 if discard else b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            pieces, total = [], 0
            for _ in range(10_000_000):
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                piece = self._read_exact(size, discard)
                self._read_line()
                if discard:
                    total += piece
                else:
                    pieces.append(piece)
            body = total if discard else b"".join(pieces)
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]), discard)
        else:  # until the server closes
            chunks = [bytes(self._buf)]
            self._buf = bytearray()
            while True:
                data = self.sock.recv(256 * 1024)
                if not data:
                    break
                chunks.append(data)
            body = sum(map(len, chunks)) if discard else b"".join(chunks)
            self.close()
            return status, headers, body
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


def expect(status: int, wanted, what: str, headers=None, body=b"") -> None:
    wanted = (wanted,) if isinstance(wanted, int) else wanted
    if status not in wanted:
        text = body[:300].decode("utf-8", "replace") if isinstance(body, bytes) else ""
        raise HTTPError(f"{what}: HTTP {status}, wanted {wanted}: {text}")


def location_target(headers: dict) -> str:
    """The path and query of a Location header (absolute or relative)."""
    location = headers.get("location")
    if not location:
        raise HTTPError("no Location header")
    parsed = urllib.parse.urlsplit(location)
    return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def with_query(target: str, **params) -> str:
    separator = "&" if "?" in target else "?"
    return target + separator + urllib.parse.urlencode(params)
