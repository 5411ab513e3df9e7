"""
Access rules: who may pull, push and delete which repositories.

From the ``auth`` section of the configuration::

    groups:
      team-a: [alice, bob]
      ops: [olivia]
    admins: [root, "@ops"]          # every right everywhere, and the whole catalog
    access:
      - repository: "public/**"     # a glob, or a list of globs
        pull: [anonymous]
      - repository: "team-a/**"
        pull: ["@team-a", carol]
        push: ["@team-a"]
        delete: [alice]
      - repository: "**"
        pull: [authenticated]

A principal is ``anonymous`` (anyone, logged in or not), ``authenticated``
(any user who logged in), ``@group``, or a user name.  Rights add up: a
caller has an action on a repository when any rule matching the repository
grants it to them; nothing is granted otherwise.  In globs ``*`` matches
within one path component, ``**`` across components (``team-a/**`` matches
``team-a/app`` and ``team-a/x/app``, not ``team-a``), ``?`` one character.

Pushing needs ``pull`` as well as ``push`` (clients ask for both).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attr

ACTIONS = ("pull", "push", "delete")
ANONYMOUS = "anonymous"
AUTHENTICATED = "authenticated"


def glob_to_regex(pattern: str) -> re.Pattern:
    """A compiled regex for a repository glob (``*``, ``**``, ``?``)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


class Glob:
    """
    A compiled repository glob.  Python's regular expressions backtrack: a
    glob with several stars (``*-*-*-*-*x``) took over a second to fail on
    one 255-character name a client chose.  A glob with at most two stars
    is matched by its regex (quick, and at worst quadratic in the name); one
    with more, by following every position of the pattern at once, in time
    linear in the name's length.
    """

    def __init__(self, pattern: str, regex_stars: int = 2):
        self.pattern = pattern
        self._tokens: list[str] = []
        i = 0
        while i < len(pattern):
            token = "**" if pattern.startswith("**", i) else pattern[i]
            self._tokens.append(token)
            i += len(token)
        stars = sum(t in ("*", "**") for t in self._tokens)
        self._regex = glob_to_regex(pattern) if stars <= regex_stars else None
        end = len(self._tokens)
        # The positions reachable from each position without reading a character (stars match nothing too).
        self._skip = []
        for start in range(end + 1):
            reach = [start]
            while reach[-1] < end and self._tokens[reach[-1]] in ("*", "**"):
                reach.append(reach[-1] + 1)
            self._skip.append(reach)

    def fullmatch(self, name: str) -> bool:
        if self._regex is not None:
            return self._regex.fullmatch(name) is not None
        tokens, end = self._tokens, len(self._tokens)
        states = set(self._skip[0])
        for ch in name:
            following: set[int] = set()
            for i in states:
                if i == end:
                    continue
                token = tokens[i]
                if token == "**" or (token == "*" and ch != "/"):
                    following.update(self._skip[i])
                elif (token == "?" and ch != "/") or token == ch:
                    following.update(self._skip[i + 1])
            if not following:
                return False
            states = following
        return end in states


@attr.s(auto_attribs=True, frozen=True)
class Identity:
    """Who is asking: a user and their groups, or anonymous (``name`` None)."""

    name: str | None = None
    groups: frozenset = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.name is None


ANONYMOUS_IDENTITY = Identity()


def _principal_matches(principal: str, identity: Identity) -> bool:
    if principal == ANONYMOUS:
        return True
    if principal == AUTHENTICATED:
        return not identity.anonymous
    if principal.startswith("@"):
        return principal[1:] in identity.groups
    return principal == identity.name


def _names(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a name or a list of names")
    return tuple(value)


@attr.s(auto_attribs=True, frozen=True)
class AccessRule:
    """Repositories matching any of ``patterns`` grant each action to its principals."""

    patterns: tuple[str, ...]
    pull: tuple[str, ...] = ()
    push: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    _globs: tuple = attr.ib(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "_globs", tuple(Glob(p) for p in self.patterns))

    @classmethod
    def parse(cls, value, number: int = 0) -> AccessRule:
        where = f"access rule {number + 1}"
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping with repository and pull/push/delete")
        unknown = set(value) - {"repository", "repositories", *ACTIONS}
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        patterns = value.get("repository", value.get("repositories"))
        if patterns is None:
            raise ValueError(f"{where} needs a repository glob")
        grants = {action: _names(value[action], f"{where}: {action}") for action in ACTIONS if action in value}
        return cls(patterns=_names(patterns, f"{where}: repository"), **grants)

    def to_dict(self) -> dict:
        out: dict = {"repository": list(self.patterns)}
        for action in ACTIONS:
            if getattr(self, action):
                out[action] = list(getattr(self, action))
        return out

    def matches(self, repository: str) -> bool:
        return any(g.fullmatch(repository) for g in self._globs)

    def actions_for(self, identity: Identity) -> set[str]:
        return {a for a in ACTIONS if any(_principal_matches(p, identity) for p in getattr(self, a))}


@attr.s(auto_attribs=True, frozen=True)
class AccessPolicy:
    """Every rule, the groups and the admins; answers "may this identity do that"."""

    rules: tuple[AccessRule, ...] = ()
    groups: Mapping[str, frozenset] = attr.ib(factory=dict, eq=False)
    admins: tuple[str, ...] = ()

    def identity(self, user: str | None) -> Identity:
        """The `Identity` of a user who logged in (None: anonymous), with their groups."""
        if user is None:
            return ANONYMOUS_IDENTITY
        return Identity(user, frozenset(g for g, members in self.groups.items() if user in members))

    def is_admin(self, identity: Identity) -> bool:
        return not identity.anonymous and any(_principal_matches(p, identity) for p in self.admins)

    def actions(self, identity: Identity, repository: str) -> frozenset:
        """The actions ``identity`` has on ``repository``."""
        if self.is_admin(identity):
            return frozenset(ACTIONS)
        granted: set[str] = set()
        for rule in self.rules:
            if rule.matches(repository):
                granted |= rule.actions_for(identity)
        return frozenset(granted)

    def may_catalog(self, identity: Identity) -> bool:
        """
        Whether ``identity`` may list the catalog (filtered to what it may
        pull): admins and users who logged in; anonymous callers only when
        some rule lets anonymous pull.
        """
        if not identity.anonymous:
            return True
        return any(ANONYMOUS in rule.pull for rule in self.rules)

    def allows(self, identity: Identity, scope) -> bool:
        """Whether ``identity`` has every action of ``scope`` (``(type, name, actions)``)."""
        kind, name, wanted = scope
        if kind == "repository":
            wanted = set(ACTIONS) if "*" in wanted else set(wanted)
            return wanted <= self.actions(identity, name)
        if kind == "registry" and name == "catalog":
            return self.may_catalog(identity)
        return self.is_admin(identity)

    def may_pull(self, identity: Identity, names: Iterable[str]) -> list[str]:
        return [n for n in names if "pull" in self.actions(identity, n)]


def parse_groups(value) -> dict[str, frozenset]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("groups must map each group name to a list of user names")
    groups = {}
    for name, members in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError("group names must be strings")
        groups[name] = frozenset(_names(members or [], f"members of group {name}"))
    return groups


def parse_access(value) -> tuple[AccessRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("access must be a list of rules")
    return tuple(AccessRule.parse(rule, i) for i, rule in enumerate(value))


def parse_admins(value) -> tuple[str, ...]:
    return () if value is None else _names(value, "admins")
