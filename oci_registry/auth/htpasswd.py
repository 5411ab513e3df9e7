"""
Users and passwords from an Apache ``htpasswd`` file.

Accepted hashes, as ``htpasswd`` writes them:

- ``-B`` bcrypt (``$2y$``, also ``$2a$``/``$2b$``): the one to use;
- ``-m`` MD5 (``$apr1$``, the default of older ``htpasswd``);
- ``-2``/``-5`` SHA-256/SHA-512 crypt (``$5$``/``$6$``);
- ``-s`` SHA-1 (``{SHA}``, unsalted: accepted, but logged as weak).

Refused, with a log line naming the user when the file is read: ``-d``
(DES ``crypt(3)``, 8-character passwords) and ``-p`` (plain text).  Their
users cannot log in until their password is hashed again with ``-B``.

`HtpasswdFile` reads the file again when it changes (size, mtime or inode,
looked at most once per ``check_interval`` seconds) or on `reload`; a file
that has become unreadable or malformed keeps the previous users in force.
Verifying a password is slow on purpose (bcrypt) and so is done off the
reactor thread by the caller: `lookup` gives the stored hash, `verify_hash`
checks a password against it and can run in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import re
import time

import bcrypt
from twisted.logger import Logger

log = Logger()

_BCRYPT = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")
_APR1 = re.compile(r"^\$apr1\$([^$]{0,8})\$[./A-Za-z0-9]{22}$")
_SHA_CRYPT = re.compile(r"^\$([56])\$(?:rounds=(\d+)\$)?([^$]{0,16})\$[./A-Za-z0-9]+$")
_SHA1 = re.compile(r"^\{SHA\}[A-Za-z0-9+/]{27}=$")
_GENERATIONS = itertools.count(1)  # shared by every file, so a replaced file never reuses one
_DES = re.compile(r"^[./A-Za-z0-9]{13}$")

BCRYPT_MAX_PASSWORD = 72  # bcrypt uses the first 72 bytes, as htpasswd does
# Longer passwords are wrong without being hashed (htpasswd itself takes at most 255
# characters): SHA-crypt's work grows with the square of a password's length.
MAX_PASSWORD = 1024

# An unknown user's password is hashed with bcrypt at the cost of the costliest
# bcrypt hash in the file, so that a wrong name takes as long as a wrong password.
DEFAULT_DUMMY_COST = 5  # htpasswd -B's own default, for a file without bcrypt hashes
MAX_DUMMY_COST = 17  # htpasswd -C accepts 4 to 17


class HtpasswdError(ValueError):
    """The file cannot be read or is not an htpasswd file."""


def hash_kind(stored: str) -> str | None:
    """The name of an accepted hash format, or None when ``stored`` is not one."""
    if _BCRYPT.match(stored):
        return "bcrypt"
    if _APR1.match(stored):
        return "apr1"
    if _SHA_CRYPT.match(stored):
        return "sha256-crypt" if stored[1] == "5" else "sha512-crypt"
    if _SHA1.match(stored):
        return "sha1"
    return None


def _refusal(stored: str) -> str:
    if _DES.match(stored):
        return "a DES crypt(3) hash (htpasswd -d), which is not accepted"
    if stored.startswith("$"):
        return "a hash format that is not supported"
    return "what looks like a plain-text password (htpasswd -p), which is not accepted"


def verify_hash(stored: str, password: bytes) -> bool:
    """Whether ``password`` matches the htpasswd hash ``stored``; constant-time comparisons. Blocking."""
    if len(password) > MAX_PASSWORD:
        return False
    kind = hash_kind(stored)
    if kind == "bcrypt":
        candidate = stored.encode()
        if candidate[:4] in (b"$2y$", b"$2x$"):
            candidate = b"$2b$" + candidate[4:]
        try:
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], candidate)
        except ValueError:
            return False
    if kind == "apr1":
        apr1 = _APR1.match(stored)
        if apr1 is None:
            return False
        salt = apr1.group(1).encode()
        return hmac.compare_digest(apr1_md5(password, salt).encode(), stored.encode())
    if kind in ("sha256-crypt", "sha512-crypt"):
        match = _SHA_CRYPT.match(stored)
        if match is None:
            return False
        rounds = int(match.group(2)) if match.group(2) else None
        expected = sha_crypt(password, match.group(3).encode(), rounds, 256 if kind == "sha256-crypt" else 512)
        return hmac.compare_digest(expected.encode(), stored.encode())
    if kind == "sha1":
        expected = "{SHA}" + base64.b64encode(hashlib.sha1(password).digest()).decode()
        return hmac.compare_digest(expected.encode(), stored.encode())
    return False


def bcrypt_cost(stored: str) -> int | None:
    """The cost (log2 of the rounds) of a bcrypt hash; None for other formats."""
    return int(stored.split("$")[2]) if _BCRYPT.match(stored) else None


def verify_unknown(password: bytes, cost: int = DEFAULT_DUMMY_COST) -> bool:
    """The work of a bcrypt check at ``cost`` for a user who does not exist; always False. Blocking."""
    if len(password) > MAX_PASSWORD:
        return False  # as `verify_hash` answers it, at once
    # Hashing with a fresh salt is the work checkpw does: one bcrypt at that cost.
    bcrypt.hashpw(password[:BCRYPT_MAX_PASSWORD], bcrypt.gensalt(cost))
    return False


# ----------------------------------------------------------------- hashes

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _to64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return "".join(out)


def apr1_md5(password: bytes, salt: bytes) -> str:
    """Apache's MD5 crypt (``$apr1$``), as in apr_md5.c."""
    magic = b"$apr1$"
    salt = salt[:8]
    alternate = hashlib.md5(password + salt + password).digest()
    context = password + magic + salt
    length = len(password)
    while length > 0:
        context += alternate[: min(16, length)]
        length -= 16
    i = len(password)
    while i:
        context += b"\0" if i & 1 else password[:1]
        i >>= 1
    final = hashlib.md5(context).digest()
    for i in range(1000):
        step = password if i & 1 else final
        if i % 3:
            step += salt
        if i % 7:
            step += password
        step += final if i & 1 else password
        final = hashlib.md5(step).digest()
    groups = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
    encoded = "".join(_to64((final[a] << 16) | (final[b] << 8) | final[c], 4) for a, b, c in groups)
    encoded += _to64(final[11], 2)
    return f"$apr1${salt.decode('ascii', 'replace')}${encoded}"


_SHA256_ORDER = (
    (0, 10, 20),
    (21, 1, 11),
    (12, 22, 2),
    (3, 13, 23),
    (24, 4, 14),
    (15, 25, 5),
    (6, 16, 26),
    (27, 7, 17),
    (18, 28, 8),
    (9, 19, 29),
)
_SHA512_ORDER = (
    (0, 21, 42),
    (22, 43, 1),
    (44, 2, 23),
    (3, 24, 45),
    (25, 46, 4),
    (47, 5, 26),
    (6, 27, 48),
    (28, 49, 7),
    (50, 8, 29),
    (9, 30, 51),
    (31, 52, 10),
    (53, 11, 32),
    (12, 33, 54),
    (34, 55, 13),
    (56, 14, 35),
    (15, 36, 57),
    (37, 58, 16),
    (59, 17, 38),
    (18, 39, 60),
    (40, 61, 19),
    (62, 20, 41),
)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, salt: bytes, rounds: int | None, bits: int) -> str:
    """SHA-256/SHA-512 crypt (``$5$``/``$6$``), as specified by Ulrich Drepper."""
    new = hashlib.sha256 if bits == 256 else hashlib.sha512
    size = bits // 8
    explicit = rounds is not None
    rounds = min(max(rounds if rounds is not None else 5000, 1000), 999_999_999)
    salt = salt[:16]
    alternate = new(password + salt + password).digest()
    context = new(password + salt)
    context.update(_repeat(alternate, len(password)))
    i = len(password)
    while i:
        context.update(alternate if i & 1 else password)
        i >>= 1
    a = context.digest()
    p_digest = new()
    for _ in range(len(password)):  # the password as many times as it has bytes, without building that string
        p_digest.update(password)
    p_bytes = _repeat(p_digest.digest(), len(password)) if password else b""
    s_bytes = _repeat(new(salt * (16 + a[0])).digest(), len(salt)) if salt else b""
    previous = a
    for i in range(rounds):
        step = new(p_bytes if i & 1 else previous)
        if i % 3:
            step.update(s_bytes)
        if i % 7:
            step.update(p_bytes)
        step.update(previous if i & 1 else p_bytes)
        previous = step.digest()
    f = previous
    order = _SHA256_ORDER if size == 32 else _SHA512_ORDER
    encoded = "".join(_to64((f[x] << 16) | (f[y] << 8) | f[z], 4) for x, y, z in order)
    encoded += _to64((f[31] << 8) | f[30], 3) if size == 32 else _to64(f[63], 2)
    prefix = f"${'5' if size == 32 else '6'}$" + (f"rounds={rounds}$" if explicit else "")
    return f"{prefix}{salt.decode('ascii', 'replace')}${encoded}"


# ------------------------------------------------------------------ the file


def parse_htpasswd(text: str, path: str = "htpasswd") -> tuple[dict[str, str], dict[str, str]]:
    """``(users -> accepted hash, users -> why refused)`` from the text of an htpasswd file."""
    users: dict[str, str] = {}
    refused: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, stored = line.partition(":")
        if not colon or not user:
            raise HtpasswdError(f"{path}:{number}: not a user:hash line")
        stored = stored.strip()
        kind = hash_kind(stored)
        if kind is None:
            refused[user] = _refusal(stored)
            users.pop(user, None)
        else:
            users[user] = stored
            refused.pop(user, None)
    return users, refused


class HtpasswdFile:
    """The users of one htpasswd file, read again when the file changes."""

    def __init__(self, path: str, check_interval: float = 1.0, clock=time.monotonic):
        self.path = path
        self.check_interval = check_interval
        self._clock = clock
        self._users: dict[str, str] = {}
        self._refused: dict[str, str] = {}
        self._stamp = None
        self._checked = float("-inf")
        self.generation = 0  # changes whenever the users change (`PasswordLogin` caches per generation)
        self.dummy_cost = DEFAULT_DUMMY_COST  # of the check for an unknown user: the costliest bcrypt hash
        self.load(initial=True)

    def __len__(self) -> int:
        return len(self._users)

    def _stat(self):
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self, initial: bool = False) -> None:
        """Read the file; on start-up an unusable file is an error, later it keeps the users in force."""
        try:
            stamp = self._stat()
            with open(self.path, encoding="utf-8") as f:
                users, refused = parse_htpasswd(f.read(), self.path)
        except (OSError, UnicodeDecodeError, HtpasswdError) as e:
            if initial:
                raise HtpasswdError(f"cannot read htpasswd file {self.path}: {e}") from None
            log.error(
                "cannot read htpasswd file {path} ({error}); keeping the {count} users read before",
                path=self.path,
                error=str(e),
                count=len(self._users),
            )
            self._checked = self._clock()
            return
        for user, why in sorted(refused.items()):
            if self._refused.get(user) != why or initial:
                log.warn(
                    "htpasswd {path}: user {user} has {why}; hash the password with `htpasswd -B` to let them log in",
                    path=self.path,
                    user=user,
                    why=why,
                )
        for user, stored in sorted(users.items()):
            if hash_kind(stored) == "sha1" and self._users.get(user) != stored:
                log.warn(
                    "htpasswd {path}: user {user} has an unsalted SHA-1 hash (htpasswd -s); "
                    "prefer bcrypt (htpasswd -B)",
                    path=self.path,
                    user=user,
                )
        if not initial:
            log.info("htpasswd {path} read again: {count} users", path=self.path, count=len(users))
        self._users, self._refused, self._stamp = users, refused, stamp
        costs = [c for c in map(bcrypt_cost, users.values()) if c is not None]
        self.dummy_cost = min(max(costs, default=DEFAULT_DUMMY_COST), MAX_DUMMY_COST)
        self._checked = self._clock()
        self.generation = next(_GENERATIONS)

    def maybe_reload(self) -> None:
        """Read the file again if it changed (looked at most once per ``check_interval``)."""
        now = self._clock()
        if now - self._checked < self.check_interval:
            return
        self._checked = now
        try:
            stamp = self._stat()
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self.load()

    def lookup(self, user: str) -> str | None:
        """The stored hash of ``user``, or None (unknown, or refused with a log line)."""
        stored = self._users.get(user)
        if stored is None and user in self._refused:
            log.warn("login as {user} refused: their htpasswd entry has {why}", user=user, why=self._refused[user])
        return stored
