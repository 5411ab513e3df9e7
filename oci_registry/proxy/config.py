"""
The ``proxies`` section of the configuration: one `UpstreamConfig` per
upstream registry, from YAML mappings or ``--proxy PREFIX=URL`` options::

    proxies:
      - prefix: dockerhub             # dockerhub/library/alpine -> registry-1.docker.io/library/alpine
        url: https://registry-1.docker.io
        username: me                  # optional: the upstream's token server or Basic auth
        password: secret
        tag_ttl: 5m                   # a cached tag is served without asking upstream for this long
        fill_lease: 30s               # a process fetching a blob for all others is taken over this long after it died
        timeout: 30s                  # connecting, response headers, any pause in a body, a whole small body
        min_body_rate: 1024           # bytes/s a blob body must average over each timeout-long stretch
        private_redirects: auto       # redirects/token realms to non-public addresses: auto, allow, deny
      - prefix: ghcr
        url: https://ghcr.io
      - prefix: ""                    # no prefix: a whole-registry mirror (Docker's registry-mirrors)
        url: https://registry-1.docker.io

    --proxy dockerhub=https://registry-1.docker.io --proxy ghcr=https://user:token@ghcr.io
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import attr

from ..reference import NAME_RE
from ..units import parse_duration

#: Hosts that serve Docker Hub, where a one-component name means ``library/NAME``.
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com"})

DEFAULT_TAG_TTL = 300.0
#: ``private_redirects``: may a redirect or a token realm lead to a loopback, link-local or private address?
#: auto: only when the upstream itself is at one; allow: always; deny: never.
PRIVATE_REDIRECTS = ("auto", "allow", "deny")
_KEYS = {
    "prefix",
    "url",
    "username",
    "password",
    "tag_ttl",
    "fill_lease",
    "default_namespace",
    "timeout",
    "max_retry_wait",
    "min_body_rate",
    "private_redirects",
}


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class UpstreamConfig:
    """One upstream registry and the local name prefix it is served under."""

    prefix: str  # "" for a whole-registry mirror; otherwise name components without a trailing slash
    url: str  # scheme://host[:port], no path
    username: str | None = None
    password: str | None = attr.ib(default=None, repr=False)
    tag_ttl: float = DEFAULT_TAG_TTL  # seconds a cached tag is trusted before an upstream HEAD
    default_namespace: str | None = None  # "library" for Docker Hub: alpine -> library/alpine upstream
    timeout: float = 30.0  # seconds to connect, to wait for headers or body bytes, to get a whole small body
    max_retry_wait: float = 10.0  # longest Retry-After honoured by waiting; longer counts as unavailable
    min_body_rate: int = 1024  # bytes/s a blob body must average over each ``timeout`` seconds; 0: off
    private_redirects: str = "auto"  # redirects and token realms to non-public addresses: auto, allow, deny
    fill_lease: float = 30.0  # seconds a claim on a blob's fetch holds unrenewed (its holder died): proxy/claim.py

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def to_dict(self) -> dict:
        return attr.asdict(self)

    @classmethod
    def parse(cls, value) -> UpstreamConfig:
        """From a mapping (YAML) or a ``PREFIX=URL`` string (the command line)."""
        if isinstance(value, str):
            prefix, sep, url = value.partition("=")
            if not sep:
                raise ValueError(f"{value!r}: use PREFIX=URL, e.g. dockerhub=https://registry-1.docker.io")
            value = {"prefix": prefix, "url": url}
        if not isinstance(value, Mapping):
            raise ValueError("each proxy is a mapping with prefix and url, or a PREFIX=URL string")
        unknown = set(value) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
        if "url" not in value:
            raise ValueError("url is required")
        prefix = _prefix(value.get("prefix", ""))
        url, username, password = _url(value["url"])
        username = value.get("username", username)
        password = value.get("password", password)
        for what, text in (("username", username), ("password", password)):
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{what} must be a string")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        namespace = value.get("default_namespace", "library" if urlsplit(url).hostname in DOCKER_HUB_HOSTS else None)
        if namespace is not None and (not isinstance(namespace, str) or not NAME_RE.fullmatch(namespace)):
            raise ValueError(f"default_namespace {namespace!r} is not a repository name")
        values = {
            "prefix": prefix,
            "url": url,
            "username": username,
            "password": password,
            "default_namespace": namespace or None,
        }
        for key in ("tag_ttl", "timeout", "max_retry_wait", "fill_lease"):
            if key in value:
                values[key] = parse_duration(value[key])
                if values[key] < 0:
                    raise ValueError(f"{key} must not be negative")
        if "timeout" in values and not values["timeout"] > 0:
            raise ValueError("timeout must be more than 0: every wait on an upstream needs a deadline")
        if "fill_lease" in values and not values["fill_lease"] > 0:
            raise ValueError("fill_lease must be more than 0: a claim held by a process that died must expire")
        if "min_body_rate" in value:
            rate = value["min_body_rate"]
            if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
                raise ValueError("min_body_rate must be a whole number of bytes per second (0: off)")
            values["min_body_rate"] = rate
        if "private_redirects" in value:
            mode = value["private_redirects"]
            mode = {True: "allow", False: "deny"}.get(mode, mode) if isinstance(mode, bool) else mode
            if mode not in PRIVATE_REDIRECTS:
                raise ValueError(f"private_redirects must be one of {', '.join(PRIVATE_REDIRECTS)}")
            values["private_redirects"] = mode
        return cls(**values)


def _prefix(value) -> str:
    if not isinstance(value, str):
        raise ValueError("prefix must be a string")
    prefix = value.strip().strip("/")
    if prefix and not NAME_RE.fullmatch(prefix):
        raise ValueError(f"prefix {value!r} is not a repository name prefix")
    return prefix


def _url(value) -> tuple[str, str | None, str | None]:
    """``scheme://host[:port]`` and any credentials written into the URL."""
    if not isinstance(value, str):
        raise ValueError("url must be a string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {value!r} must be http(s)://host[:port]")
    if parts.path not in ("", "/", "/v2", "/v2/") or parts.query or parts.fragment:
        raise ValueError(f"url {value!r} must not have a path: the registry API is at /v2/ of the host")
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" + ("" if parts.port is None else f":{parts.port}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        raise ValueError("a url with a user name needs a password too (https://user:password@host)")
    return urlunsplit((parts.scheme, netloc, "", "", "")), username, password


def parse_upstreams(values) -> tuple[UpstreamConfig, ...]:
    """The ``proxies`` list: mappings or ``PREFIX=URL`` strings; prefixes must differ."""
    if isinstance(values, str | Mapping):
        values = [values]
    if not isinstance(values, list | tuple):
        raise ValueError("proxies must be a list")
    upstreams = []
    for i, value in enumerate(values):
        if isinstance(value, UpstreamConfig):
            upstreams.append(value)
            continue
        try:
            upstreams.append(UpstreamConfig.parse(value))
        except ValueError as e:
            raise ValueError(f"proxies[{i}]: {e}") from None
    prefixes = [u.prefix for u in upstreams]
    for prefix in set(prefixes):
        if prefixes.count(prefix) > 1:
            raise ValueError(f"two proxies have the prefix {prefix!r}")
    return tuple(upstreams)
