"""
The registry's errors, as values: each carries its OCI error code, HTTP
status, message and detail.  Raise them anywhere; the HTTP layer turns them
into the spec's JSON body (``{"errors": [{"code", "message", "detail"}]}``)
in one place.
"""

from __future__ import annotations

import json
from typing import Any


class RegistryError(Exception):
    code = "UNKNOWN"
    status = 500
    message = "unknown error"

    def __init__(self, detail: Any = None, message: str | None = None, headers=None):
        super().__init__(message or self.message)
        self.detail = detail
        if message is not None:
            self.message = message
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        error = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r}, {self.detail!r})"


def _error(name: str, code: str, status: int, message: str) -> type[RegistryError]:
    return type(name, (RegistryError,), {"code": code, "status": status, "message": message})


BlobUnknown = _error("BlobUnknown", "BLOB_UNKNOWN", 404, "blob unknown to registry")
BlobUploadInvalid = _error("BlobUploadInvalid", "BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BlobUploadUnknown = _error("BlobUploadUnknown", "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DigestInvalid = _error("DigestInvalid", "DIGEST_INVALID", 400, "provided digest did not match uploaded content")
ManifestBlobUnknown = _error(
    "ManifestBlobUnknown", "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"
)
ManifestInvalid = _error("ManifestInvalid", "MANIFEST_INVALID", 400, "manifest invalid")
ManifestUnknown = _error("ManifestUnknown", "MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NameInvalid = _error("NameInvalid", "NAME_INVALID", 400, "invalid repository name")
NameUnknown = _error("NameUnknown", "NAME_UNKNOWN", 404, "repository name not known to registry")
SizeInvalid = _error("SizeInvalid", "SIZE_INVALID", 400, "provided length did not match content length")
TooLarge = _error("TooLarge", "SIZE_INVALID", 413, "payload too large")
Unauthorized = _error("Unauthorized", "UNAUTHORIZED", 401, "authentication required")
Denied = _error("Denied", "DENIED", 403, "requested access to the resource is denied")
Unsupported = _error("Unsupported", "UNSUPPORTED", 405, "the operation is unsupported")
TooManyRequests = _error("TooManyRequests", "TOOMANYREQUESTS", 429, "too many requests")
TagInvalid = _error("TagInvalid", "TAG_INVALID", 400, "invalid tag")
RangeInvalid = _error("RangeInvalid", "RANGE_INVALID", 416, "requested range not satisfiable")
NotFound = _error("NotFound", "NOT_FOUND", 404, "no such endpoint")
InsufficientStorage = _error("InsufficientStorage", "INSUFFICIENT_STORAGE", 507, "the registry's storage is full")
Unavailable = _error("Unavailable", "UNAVAILABLE", 503, "the registry cannot serve this request right now")


class UploadRangeInvalid(BlobUploadInvalid):
    """An out-of-order chunk: 416, with the session's current ``Range``."""

    status = 416
    message = "chunk does not start where the upload ends"
