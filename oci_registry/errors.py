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


# One class per error code of the spec (and the registry's own 5xx ones), so
# that each is a type: raised, caught and named in annotations.


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404
    message = "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400
    message = "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404
    message = "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    status = 400
    message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 400
    message = "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    status = 400
    message = "manifest invalid"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404
    message = "manifest unknown to registry"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    status = 400
    message = "invalid repository name"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404
    message = "repository name not known to registry"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    status = 400
    message = "provided length did not match content length"


class TooLarge(RegistryError):
    code = "SIZE_INVALID"
    status = 413
    message = "payload too large"


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"
    status = 401
    message = "authentication required"


class Denied(RegistryError):
    code = "DENIED"
    status = 403
    message = "requested access to the resource is denied"


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 405
    message = "the operation is unsupported"


class TooManyRequests(RegistryError):
    code = "TOOMANYREQUESTS"
    status = 429
    message = "too many requests"


class TagInvalid(RegistryError):
    code = "TAG_INVALID"
    status = 400
    message = "invalid tag"


class RangeInvalid(RegistryError):
    code = "RANGE_INVALID"
    status = 416
    message = "requested range not satisfiable"


class NotFound(RegistryError):
    code = "NOT_FOUND"
    status = 404
    message = "no such endpoint"


class InsufficientStorage(RegistryError):
    code = "INSUFFICIENT_STORAGE"
    status = 507
    message = "the registry's storage is full"


class Unavailable(RegistryError):
    code = "UNAVAILABLE"
    status = 503
    message = "the registry cannot serve this request right now"


class UploadRangeInvalid(BlobUploadInvalid):
    """An out-of-order chunk: 416, with the session's current ``Range``."""

    status = 416
    message = "chunk does not start where the upload ends"
