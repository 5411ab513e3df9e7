"""
The ``auth`` section of the configuration, validated into `AuthConfig`.

Either a mapping in the configuration file or the path of a YAML file
holding that mapping (``auth: /etc/ociregistry/auth.yaml``)::

    auth:
      htpasswd: /etc/ociregistry/htpasswd   # users (htpasswd -B)
      realm: ociregistry                    # Basic realm
      groups: {team-a: [alice, bob]}
      admins: [root]
      access:
        - {repository: "public/**", pull: [anonymous]}
        - {repository: "team-a/**", pull: ["@team-a"], push: ["@team-a"]}
      max_failed_logins: 10                 # per client address ...
      failed_login_window: 60s              # ... within this window; then 429
      token:                                # absent: Basic auth
        service: registry.example.com       # aud of tokens, service= of challenges
        issuer: ociregistry                 # iss of tokens
        expiry: 5m
        key: /etc/ociregistry/token.pem     # default: <data_dir>/auth/token-key.pem, made at first start
        realm: https://registry.example.com/token   # default: this registry's /token, from the request
        # public_key: /etc/ociregistry/token-server.pem  # trust an external token server instead

Relative paths are taken from the directory of the file they are written in.
`source` (and `source_key`) remember that file, so the rules and the
htpasswd path can be read again without a restart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attr
import yaml

from ..units import parse_duration
from .rules import ACTIONS, ANONYMOUS, AUTHENTICATED, AccessPolicy, AccessRule, parse_access, parse_admins, parse_groups

_AUTH_KEYS = {
    "htpasswd",
    "realm",
    "groups",
    "admins",
    "access",
    "max_failed_logins",
    "failed_login_window",
    "token",
    "source",
    "source_key",
}
_TOKEN_KEYS = {"service", "issuer", "expiry", "key", "realm", "public_key"}


def _path(value, base: str | None, what: str) -> str | None:
    return None if value is None else _file_path(value, base, what)


def _file_path(value, base: str | None, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a file path")
    value = os.path.expanduser(value)
    return os.path.abspath(os.path.join(base, value) if base else value)


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value or '"' in value or "\\" in value:
        raise ValueError(f"{what} must be a non-empty string without quotes or backslashes")
    return value


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class TokenConfig:
    service: str = "ociregistry"
    issuer: str = "ociregistry"
    expiry: float = 300.0
    key: str | None = None
    realm: str | None = None
    public_key: str | None = None

    @property
    def external(self) -> bool:
        """Tokens come from another token server (its key is configured); no ``/token`` here."""
        return self.public_key is not None

    @classmethod
    def parse(cls, value, base: str | None) -> TokenConfig:
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError("token must be a mapping (or true for the defaults)")
        unknown = set(value) - _TOKEN_KEYS
        if unknown:
            raise ValueError(f"unknown token keys: {', '.join(sorted(map(str, unknown)))}")
        values: dict[str, Any] = {}
        for key in ("service", "issuer", "realm"):
            if value.get(key) is not None:
                values[key] = _text(value[key], f"token.{key}")
        if "expiry" in value:
            values["expiry"] = parse_duration(value["expiry"])
            if values["expiry"] < 60:
                raise ValueError("token.expiry must be at least 60s (clients expect that much)")
        for key in ("key", "public_key"):
            values[key] = _path(value.get(key), base, f"token.{key}")
        config = cls(**values)
        if config.external and config.realm is None:
            raise ValueError("token.realm (the external token server's URL) is needed with token.public_key")
        if config.external and config.key is not None:
            raise ValueError("token.key (for signing) and token.public_key (an external server) exclude each other")
        return config

    def to_dict(self) -> dict:
        return attr.asdict(self)


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class AuthConfig:
    htpasswd: str | None = None
    realm: str = "ociregistry"
    groups: Mapping = attr.ib(factory=dict, eq=False)
    admins: tuple[str, ...] = ()
    access: tuple[AccessRule, ...] = ()
    max_failed_logins: int = 10
    failed_login_window: float = 60.0
    token: TokenConfig | None = None
    source: str | None = None  # the file the mapping was read from ...
    source_key: str | None = None  # ... and its key there ("auth"), or None when it is the whole file

    @property
    def mode(self) -> str:
        """``basic``, ``token`` (the built-in token server) or ``external-token``."""
        if self.token is None:
            return "basic"
        return "external-token" if self.token.external else "token"

    def policy(self) -> AccessPolicy:
        return AccessPolicy(rules=self.access, groups=self.groups, admins=self.admins)

    @classmethod
    def parse(cls, value, source: str | None = None) -> AuthConfig:
        """
        From the YAML value of ``auth`` in the config file ``source``: a
        mapping, or the path of a YAML file holding one.  ValueError if unusable.
        """
        if isinstance(value, AuthConfig):
            return value
        if isinstance(value, str):
            base = os.path.dirname(os.path.abspath(source)) if source else None
            path = _file_path(value, base, "auth")
            return cls._from_mapping(_read_yaml(path), path, None)
        return cls._from_mapping(value, source and os.path.abspath(source), "auth" if source else None)

    @classmethod
    def _from_mapping(cls, value, source: str | None, source_key: str | None) -> AuthConfig:
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping, or the path of a YAML file holding one")
        unknown = set(value) - _AUTH_KEYS
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
        if value.get("source"):  # a round trip through to_dict (worker processes)
            source, source_key = value["source"], value.get("source_key")
        base = os.path.dirname(source) if source else None
        values: dict = {"source": source, "source_key": source_key}
        values["htpasswd"] = _path(value.get("htpasswd"), base, "htpasswd")
        if value.get("realm") is not None:
            values["realm"] = _text(value["realm"], "realm")
        values["groups"] = parse_groups(value.get("groups"))
        values["admins"] = parse_admins(value.get("admins"))
        values["access"] = parse_access(value.get("access"))
        if "max_failed_logins" in value:
            try:
                values["max_failed_logins"] = int(value["max_failed_logins"])
            except (TypeError, ValueError):
                raise ValueError("max_failed_logins must be a whole number (0: no limit)") from None
        if "failed_login_window" in value:
            values["failed_login_window"] = parse_duration(value["failed_login_window"])
        if value.get("token") not in (None, False):
            values["token"] = TokenConfig.parse(value["token"], base)
        config = cls(**values)
        config._check()
        return config

    def _check(self) -> None:
        known_groups = set(self.groups)
        principals = list(self.admins)
        for rule in self.access:
            for action in ACTIONS:
                principals += getattr(rule, action)
        for principal in principals:
            if principal.startswith("@") and principal[1:] not in known_groups:
                raise ValueError(f"group {principal} is used but not defined under groups")
        if ANONYMOUS in self.admins or AUTHENTICATED in self.admins:
            raise ValueError("admins must be users or @groups, not anonymous or authenticated")
        if self.mode == "external-token" and (self.htpasswd or self.access or self.admins or self.groups):
            raise ValueError(
                "with an external token server (token.public_key) the token server decides who may "
                "do what: htpasswd, groups, admins and access do not apply here"
            )

    def to_dict(self) -> dict:
        """The YAML form; `parse` reads it back (worker processes get their config this way)."""
        return {
            "htpasswd": self.htpasswd,
            "realm": self.realm,
            "groups": {name: sorted(members) for name, members in self.groups.items()},
            "admins": list(self.admins),
            "access": [rule.to_dict() for rule in self.access],
            "max_failed_logins": self.max_failed_logins,
            "failed_login_window": self.failed_login_window,
            "token": self.token.to_dict() if self.token else None,
            "source": self.source,
            "source_key": self.source_key,
        }

    def reread(self) -> AuthConfig:
        """The section as its source file has it now (ValueError if it cannot be used)."""
        if self.source is None:
            return self
        loaded = _read_yaml(self.source)
        if self.source_key is None:
            return AuthConfig._from_mapping(loaded, self.source, None)
        if not isinstance(loaded, Mapping) or not loaded.get(self.source_key):
            raise ValueError(
                f"{self.source} has no {self.source_key} section any more; turning auth off needs a restart"
            )
        return AuthConfig.parse(loaded[self.source_key], source=self.source)


def _read_yaml(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
