"""
HTTP Basic authentication against the htpasswd users, with the access rules.

- No credentials (or the empty user and password that containers/image
  clients such as skopeo and podman send when they have none): anonymous.
- Wrong credentials: 401 with ``WWW-Authenticate: Basic realm="..."``.
- Anonymous, and the rules do not grant what the request needs: 401 with
  the challenge, so that a client can log in and retry.
- A user who logged in but lacks the right: 403 ``DENIED``.
- ``GET /v2/`` needs a login, as in CNCF Distribution: that is how
  ``docker login`` and ``skopeo login`` check a password.
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..errors import Denied, Unauthorized
from ..identity import Principal
from . import IAuthorizer
from .rules import Identity
from .state import AuthState, PasswordLogin


class MalformedCredentials(ValueError):
    pass


def basic_credentials(request) -> tuple[str, str] | None:
    """``(user, password)`` from a Basic ``Authorization`` header; None when there is none."""
    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise MalformedCredentials("malformed Basic credentials") from None
    user, colon, password = decoded.partition(":")
    if not colon:
        raise MalformedCredentials("malformed Basic credentials")
    return user, password


def scope_detail(scopes) -> list[dict] | None:
    """The ``detail`` of a 401/403: what was asked for, as CNCF Distribution words it."""
    return [{"Type": kind, "Name": name, "Action": ",".join(actions)} for kind, name, actions in scopes] or None


@implementer(IAuthorizer)
class BasicAuthorizer:
    def __init__(self, state: AuthState, login: PasswordLogin):
        self.state = state
        self.login = login

    def _challenge(self) -> dict:
        return {"WWW-Authenticate": f'Basic realm="{self.state.config.realm}"'}

    async def identify(self, request) -> Identity:
        """Who the request comes from; 401 for wrong credentials, 429 when rate limited."""
        self.state.maybe_reload()
        try:
            credentials = basic_credentials(request)
        except MalformedCredentials as e:
            self.login.refuse_if_limited(request)
            raise Unauthorized(message=str(e), headers=self._challenge()) from None
        if credentials is None or credentials == ("", ""):
            return self.state.identity(None)
        identity = await self.login.login(request, *credentials)
        if identity is None:
            raise Unauthorized(message="incorrect username or password", headers=self._challenge())
        return identity

    def authorize(self, request, scopes, principal=None):
        return Deferred.fromCoroutine(self._authorize(request, scopes, principal))

    async def _authorize(self, request, scopes, principal: Principal | None) -> Principal:
        # A request asks again (a mount checks its source): who it is was settled the first time.
        identity = principal.identity if principal is not None else None
        if identity is None:
            identity = await self.identify(request)
        if not scopes and identity.anonymous:
            raise Unauthorized(headers=self._challenge())
        policy = self.state.policy
        refused = [scope for scope in scopes if not policy.allows(identity, scope)]
        if not refused:
            return principal if principal is not None else Principal(identity.name, identity=identity)
        if identity.anonymous:
            raise Unauthorized(scope_detail(refused), headers=self._challenge())
        raise Denied(scope_detail(refused))

    def filter_repositories(self, principal, names):
        return Deferred.fromCoroutine(self._filter(principal, names))

    async def _filter(self, principal: Principal, names) -> list[str]:
        identity = principal.identity if principal.identity is not None else self.state.policy.identity(None)
        return self.state.policy.may_pull(identity, names)
