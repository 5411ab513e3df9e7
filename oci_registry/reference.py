"""
The grammar of repository names, tags and digests (OCI distribution-spec).

Everything that comes from a URL is parsed here, once, into small immutable
values; the rest of the registry never handles the raw strings.  Because a
valid name component must start and end with ``[a-z0-9]``, no name can spell
``..``, an absolute path or one of the registry's own ``_``-prefixed folders.
"""

from __future__ import annotations

import hashlib
import re

import attr

from .errors import DigestInvalid, NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
MAX_NAME_LENGTH = 255

#: Digest algorithms this registry computes, with the length of their hex form.
ALGORITHMS = {"sha256": 64, "sha512": 128}
DEFAULT_ALGORITHM = "sha256"


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Name:
    """A repository name such as ``library/alpine``."""

    value: str

    @classmethod
    def parse(cls, text: str) -> Name:
        if not isinstance(text, str) or len(text) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(text):
            raise NameInvalid(text)
        return cls(text)

    def __str__(self) -> str:
        return self.value


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Digest:
    """A content digest, ``algorithm:hex``, for an algorithm we can compute."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: object) -> Digest:
        """The digest ``text`` spells; DigestInvalid for anything else (of any type: JSON values come here)."""
        match = DIGEST_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise DigestInvalid(text, "malformed digest")
        algorithm, encoded = match.groups()
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestInvalid(text, f"unsupported digest algorithm {algorithm!r}")
        if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise DigestInvalid(text, f"a {algorithm} digest is {length} lowercase hex characters")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher) -> Digest:
        return cls(hasher.name, hasher.hexdigest())

    def hasher(self):
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Tag:
    value: str

    @classmethod
    def parse(cls, text: str) -> Tag:
        if not isinstance(text, str) or not TAG_RE.fullmatch(text):
            raise TagInvalid(text)
        return cls(text)

    def __str__(self) -> str:
        return self.value


def parse_reference(text: str) -> Digest | Tag:
    """A manifest reference: a digest if it has a colon, otherwise a tag."""
    if isinstance(text, str) and ":" in text:
        return Digest.parse(text)
    return Tag.parse(text)


def is_upload_id(text: str) -> bool:
    """Upload session ids are ours (uuid4 hex); anything else is unknown."""
    return isinstance(text, str) and re.fullmatch(r"[a-f0-9]{32}", text) is not None
