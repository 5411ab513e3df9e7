"""
The ``notifications`` section of the configuration (see docs/notifications.md)::

    notifications:
      registry_url: https://registry.example.com  # base of the events' target URLs (default: the request's Host)
      record_window: 100ms                        # events are written to the outbox in groups, at most this late
      endpoints:
        - name: ci                                # names the endpoint's outbox: keep it when the url changes
          url: https://ci.example.com/registry-events
          format: distribution                    # or cloudevents
          headers: {Authorization: "Bearer 0123"} # sent with every request (a value or a list of values)
          secret: "a long random string"          # HMAC-SHA256 of every body, in the Ociregistry-Signature header
          timeout: 5s                             # connecting, sending and the whole answer
          backoff: {initial: 1s, max: 5m}         # after a failure: doubles from initial up to max
          actions: [push, mount, delete]          # the default; add pull to get (batched) pull events
          repositories: ["team/**"]               # globs as in access rules; default: every repository
          media_types: []                         # only targets of these media types (globs); default: all
          ignore: {actions: [], repositories: [], media_types: []}
          include_references: false               # a pushed manifest's blobs and child manifests, as references
          max_attempts: 0                         # dead-letter an event after this many failed tries (0: no limit)
          max_age: 3d                             # ... or once it has waited this long (0: no limit)
          concurrency: 4                          # requests in flight (never two with one repository) at once
          batch: 50                               # at most this many waiting events per request (of any repositories)
                                                  # (distribution: 50; cloudevents: 1, more is batched mode)
          batch_window: 500ms                     # a request not full waits until this long after the last one
          pull_batch: 100                         # pull events per request

Parsed once, at start-up; a mistake is a `ValueError` naming the key.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import attr

from ..auth.rules import Glob
from ..units import parse_duration

DISTRIBUTION, CLOUDEVENTS = "distribution", "cloudevents"
FORMATS = (DISTRIBUTION, CLOUDEVENTS)
PUSH, PULL, MOUNT, DELETE = "push", "pull", "mount", "delete"
ACTIONS = (PUSH, PULL, MOUNT, DELETE)
DEFAULT_ACTIONS = (PUSH, MOUNT, DELETE)
#: An endpoint name is a storage path component of its own (its outbox folder).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_BATCH_WINDOW = 10.0  # seconds

_ENDPOINT_KEYS = {
    "name",
    "url",
    "format",
    "headers",
    "secret",
    "timeout",
    "backoff",
    "actions",
    "repositories",
    "media_types",
    "ignore",
    "include_references",
    "max_attempts",
    "max_age",
    "concurrency",
    "batch",
    "batch_window",
    "pull_batch",
}
_SECTION_KEYS = {"registry_url", "endpoints", "lease", "poll_interval", "record_window", "pull_window", "max_buffered"}
_FILTER_KEYS = {"actions", "repositories", "media_types"}
#: Headers the registry sets itself: configuring them would break the format or the signature.
_RESERVED_HEADERS = {"content-length", "host", "transfer-encoding", "ociregistry-signature"}


@attr.s(auto_attribs=True, frozen=True)
class Filter:
    """
    Which events an endpoint gets: those whose action, repository and media
    type all match (an empty list matches everything), and none of the
    ``ignore`` lists.  An event without a media type (a delete) passes
    ``media_types``.
    """

    actions: tuple[str, ...] = DEFAULT_ACTIONS
    repositories: tuple[str, ...] = ()
    media_types: tuple[str, ...] = ()
    ignore_actions: tuple[str, ...] = ()
    ignore_repositories: tuple[str, ...] = ()
    ignore_media_types: tuple[str, ...] = ()
    _globs: tuple = attr.ib(init=False, repr=False, eq=False)
    _ignored_globs: tuple = attr.ib(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "_globs", tuple(Glob(p) for p in self.repositories))
        object.__setattr__(self, "_ignored_globs", tuple(Glob(p) for p in self.ignore_repositories))

    def wants_action(self, action: str) -> bool:
        return action in self.actions and action not in self.ignore_actions

    def wants_repository(self, repository: str) -> bool:
        if self._globs and not any(g.fullmatch(repository) for g in self._globs):
            return False
        return not any(g.fullmatch(repository) for g in self._ignored_globs)

    def matches(self, action: str, repository: str, media_type: str | None) -> bool:
        if not self.wants_action(action) or not self.wants_repository(repository):
            return False
        if media_type is None:
            return True
        if self.media_types and not any(fnmatch.fnmatchcase(media_type, p) for p in self.media_types):
            return False
        return not any(fnmatch.fnmatchcase(media_type, p) for p in self.ignore_media_types)

    def to_dict(self) -> dict:
        return {
            "actions": list(self.actions),
            "repositories": list(self.repositories),
            "media_types": list(self.media_types),
            "ignore": {
                "actions": list(self.ignore_actions),
                "repositories": list(self.ignore_repositories),
                "media_types": list(self.ignore_media_types),
            },
        }


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class EndpointConfig:
    """One receiver of notifications."""

    name: str
    url: str
    format: str = DISTRIBUTION
    headers: tuple[tuple[str, str], ...] = ()  # (name, value) pairs, in order; a name may repeat
    secret: str | None = attr.ib(default=None, repr=False)
    timeout: float = 5.0  # seconds for one request: connecting, sending, the status and the answer's body
    backoff_initial: float = 1.0  # seconds before the first retry; doubles after each failure...
    backoff_max: float = 300.0  # ...up to this
    filter: Filter = attr.ib(factory=Filter)
    include_references: bool = False
    max_attempts: int = 0  # failed requests after which an event is dead-lettered; 0: no limit
    max_age: float = 3 * 86400.0  # seconds an event may wait before it is dead-lettered; 0: no limit
    concurrency: int = 4  # requests in flight at once, never two with events of one repository
    batch: int = 50  # events (of one repository or several) sent in one request, when that many wait
    batch_window: float = 0.5  # seconds: a request not full starts this long after the one before it, at the soonest
    pull_batch: int = 100  # pull events sent in one request

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "format": self.format,
            "headers": [list(h) for h in self.headers],
            "secret": self.secret,
            "timeout": self.timeout,
            "backoff": {"initial": self.backoff_initial, "max": self.backoff_max},
            **self.filter.to_dict(),
            "include_references": self.include_references,
            "max_attempts": self.max_attempts,
            "max_age": self.max_age,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "batch_window": self.batch_window,
            "pull_batch": self.pull_batch,
        }

    @classmethod
    def parse(cls, value) -> EndpointConfig:
        if not isinstance(value, Mapping):
            raise ValueError("each endpoint is a mapping with at least name and url")
        unknown = set(value) - _ENDPOINT_KEYS
        if unknown:
            raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
        for key in ("name", "url"):
            if key not in value:
                raise ValueError(f"{key} is required")
        name = value["name"]
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValueError(
                f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        values: dict = {"name": name, "url": _url(value["url"])}
        if "format" in value:
            if value["format"] not in FORMATS:
                raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {value['format']!r}")
            values["format"] = value["format"]
        if "headers" in value:
            values["headers"] = _headers(value["headers"])
        if value.get("secret") is not None:
            if not isinstance(value["secret"], str) or not value["secret"]:
                raise ValueError("secret must be a non-empty string")
            values["secret"] = value["secret"]
        if "timeout" in value:
            values["timeout"] = _duration("timeout", value["timeout"])
            if not values["timeout"] > 0:
                raise ValueError("timeout must be more than 0: every request needs a deadline")
        if "backoff" in value:
            values["backoff_initial"], values["backoff_max"] = _backoff(value["backoff"])
        values["filter"] = _filter(value)
        if "include_references" in value:
            if not isinstance(value["include_references"], bool):
                raise ValueError("include_references must be true or false")
            values["include_references"] = value["include_references"]
        if "max_attempts" in value:
            values["max_attempts"] = _whole("max_attempts", value["max_attempts"], minimum=0)
        if "max_age" in value:
            values["max_age"] = _duration("max_age", value["max_age"])
        if "concurrency" in value:
            values["concurrency"] = _whole("concurrency", value["concurrency"], minimum=1, maximum=64)
        if "batch_window" in value:
            values["batch_window"] = _duration("batch_window", value["batch_window"])
            if values["batch_window"] > MAX_BATCH_WINDOW:
                raise ValueError(
                    f"batch_window must be at most {MAX_BATCH_WINDOW:g}s: a busy endpoint's events wait that long"
                )
        if "pull_batch" in value:
            values["pull_batch"] = _whole("pull_batch", value["pull_batch"], minimum=1, maximum=1000)
        # Distribution's envelope holds "one or more events"; a CloudEvents receiver may know only the
        # structured mode, one event per request, unless it is told to expect batches.
        values["batch"] = _whole(
            "batch",
            value.get("batch", 50 if values.get("format", DISTRIBUTION) == DISTRIBUTION else 1),
            minimum=1,
            maximum=1000,
        )
        return cls(**values)


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class NotificationsConfig:
    """
    The endpoints, and how the registry processes share their delivery:
    ``lease`` is how long one process delivers an endpoint's events
    without renewing its claim (another takes over once it lapses, when
    that process died); ``poll_interval`` how often the delivering process
    looks for events other processes recorded; ``record_window`` how long
    an event may wait in memory, gathering others, before they are written
    to the outbox together (one durable write for all: with the time of
    that write, how long after its request was answered an event can be
    lost with the process); ``pull_window`` the same for pull events;
    ``max_buffered`` how many events a process holds while the storage
    cannot take them (more are counted as lost).
    """

    endpoints: tuple[EndpointConfig, ...] = ()
    registry_url: str | None = None
    lease: float = 15.0
    poll_interval: float = 1.0
    record_window: float = 0.1
    pull_window: float = 1.0
    max_buffered: int = 10000

    def to_dict(self) -> dict:
        return {
            "endpoints": [e.to_dict() for e in self.endpoints],
            "registry_url": self.registry_url,
            "lease": self.lease,
            "poll_interval": self.poll_interval,
            "record_window": self.record_window,
            "pull_window": self.pull_window,
            "max_buffered": self.max_buffered,
        }

    def endpoint(self, name: str) -> EndpointConfig | None:
        return next((e for e in self.endpoints if e.name == name), None)

    @classmethod
    def parse(cls, value) -> NotificationsConfig:
        if isinstance(value, NotificationsConfig):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping with an endpoints list")
        unknown = set(value) - _SECTION_KEYS
        if unknown:
            raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
        endpoints = value.get("endpoints") or []
        if not isinstance(endpoints, list | tuple):
            raise ValueError("endpoints must be a list")
        parsed = []
        for i, item in enumerate(endpoints):
            try:
                parsed.append(item if isinstance(item, EndpointConfig) else EndpointConfig.parse(item))
            except ValueError as e:
                raise ValueError(f"endpoints[{i}]: {e}") from None
        names = [e.name for e in parsed]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two endpoints are named {name!r}")
        values: dict = {"endpoints": tuple(parsed)}
        if value.get("registry_url") is not None:
            values["registry_url"] = _url(value["registry_url"], "registry_url").rstrip("/")
        for key in ("lease", "poll_interval", "record_window", "pull_window"):
            if key in value:
                values[key] = _duration(key, value[key])
        if values.get("record_window", 0) > 1:
            raise ValueError("record_window must be at most 1s: it is how long an event may be held in memory")
        if "lease" in values and values["lease"] < 1:
            raise ValueError("lease must be at least 1s")
        if "poll_interval" in values and not values["poll_interval"] > 0:
            raise ValueError("poll_interval must be more than 0")
        if "max_buffered" in value:
            values["max_buffered"] = _whole("max_buffered", value["max_buffered"], minimum=1)
        return cls(**values)


def _url(value, key: str = "url") -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} {value!r} must be an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{key} must not hold credentials: give them in headers")
    return value.strip()


def _duration(key: str, value) -> float:
    """Seconds, from what `parse_duration` reads or ``250ms``."""
    try:
        text = str(value).strip()
        seconds = float(text[:-2]) / 1000 if text.endswith("ms") else parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if seconds < 0:
        raise ValueError(f"{key} must not be negative")
    return seconds


def _whole(key: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be a whole number of at least {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{key} must be at most {maximum}")
    return value


def _backoff(value) -> tuple[float, float]:
    if not isinstance(value, Mapping):
        initial = _duration("backoff", value)
        return initial, max(initial, 300.0)
    unknown = set(value) - {"initial", "max"}
    if unknown:
        raise ValueError(f"backoff: unknown keys {', '.join(sorted(unknown))}")
    initial = _duration("backoff.initial", value.get("initial", 1.0))
    cap = _duration("backoff.max", value.get("max", max(initial, 300.0)))
    if not initial > 0:
        raise ValueError("backoff.initial must be more than 0")
    if cap < initial:
        raise ValueError("backoff.max must not be less than backoff.initial")
    return initial, cap


def _headers(value) -> tuple[tuple[str, str], ...]:
    if isinstance(value, list | tuple):  # [[name, value], ...], as to_dict writes them
        items = []
        for item in value:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise ValueError("headers must be a mapping of header names to values")
            items.append((item[0], item[1]))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ValueError("headers must be a mapping of header names to values")
    headers = []
    for name, values in items:
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name} is set by the registry")
        for text in values if isinstance(values, list | tuple) else [values]:
            if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name}: each value must be a string on one line")
            headers.append((name, text))
    return tuple(headers)


def _strings(key: str, value, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key} must be a list of strings")
    if allowed is not None:
        wrong = [v for v in value if v not in allowed]
        if wrong:
            raise ValueError(f"{key}: {', '.join(wrong)} not one of {', '.join(allowed)}")
    return tuple(value)


def _filter(value: Mapping) -> Filter:
    values: dict = {}
    if "actions" in value:
        values["actions"] = _strings("actions", value["actions"], ACTIONS)
    for key in ("repositories", "media_types"):
        if key in value:
            values[key] = _strings(key, value[key])
    ignore = value.get("ignore") or {}
    if not isinstance(ignore, Mapping):
        raise ValueError("ignore must be a mapping with actions, repositories and/or media_types")
    unknown = set(ignore) - _FILTER_KEYS
    if unknown:
        raise ValueError(f"ignore: unknown keys {', '.join(sorted(unknown))}")
    if "actions" in ignore:
        values["ignore_actions"] = _strings("ignore.actions", ignore["actions"], ACTIONS)
    for key in ("repositories", "media_types"):
        if key in ignore:
            values[f"ignore_{key}"] = _strings(f"ignore.{key}", ignore[key])
    return Filter(**values)
