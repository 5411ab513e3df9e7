"""
One access line per request, when its response is done (or when it is cut
off before that).  Its fields, in JSON logs and as the text line's parts:

    client       the client's address (through trusted proxies: see forwarded.py)
    user         who authenticated, or "-"
    method       GET, PUT...
    path         the request target, with its query
    protocol     HTTP/1.1
    status       the response's status code (null when none was sent)
    bytes_in     request body bytes received
    bytes_out    response body bytes sent
    duration_ms  from the request's headers to its end
    user_agent   the client's User-Agent, or "-"
    request_id   as sent back in X-Request-ID
    error        only for a request that did not end with its response: why
"""

from __future__ import annotations

import time

from twisted.logger import Logger, LogLevel

from .context import context_of

log = Logger(namespace="oci_registry.access")

TEXT = (
    '{client} {user_text} "{method} {path} {protocol}" {status_text} {bytes_out} "{agent_text}"'
    " in={bytes_in} {duration_ms}ms id={request_id}{error_text}"
)
_TEXT_ONLY = ("user_text", "status_text", "agent_text", "error_text")  # not fields of the JSON line
MAX_FIELD = 2048  # characters of the path and the user agent that are logged


def _text(value: bytes | None) -> str | None:
    if not value:
        return None
    text = value.decode("latin-1")
    if len(text) > MAX_FIELD:
        text = text[:MAX_FIELD] + "..."
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def body_bytes_of(request) -> int:
    received = getattr(request, "body_bytes", None)
    if received is not None:
        return received
    content = getattr(request, "content", None)
    try:
        return content.seek(0, 2) if content is not None else 0
    except (OSError, ValueError):  # closed already
        return 0


def log_request(request, error: str | None = None, level: LogLevel | None = None) -> None:
    """Log the access line of ``request``: its context's level (info, debug for health checks) unless ``level``."""
    context = context_of(request)
    status = request.code if error is None or request.startedWriting else None
    duration = round((time.monotonic() - context.started) * 1000, 1)
    user = context.user
    agent = _text(request.getHeader(b"user-agent"))
    log.emit(
        level or context.log_level,
        TEXT,
        client=context.origin.client,
        user=user,
        method=_text(request.method),
        path=_text(request.uri),
        protocol=_text(request.clientproto),
        status=status,
        bytes_in=body_bytes_of(request),
        bytes_out=request.sentLength,
        duration_ms=duration,
        user_agent=agent,
        request_id=context.request_id,
        error=error,
        user_text=user or "-",
        status_text=status if status is not None else "-",
        agent_text=agent or "-",
        error_text=f" error={error!r}" if error else "",
        log_text_only=_TEXT_ONLY,
    )
