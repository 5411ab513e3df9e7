"""
Bearer token authorization, as in the Docker registry token specification.

A request without a valid token gets 401 with
``WWW-Authenticate: Bearer realm="<token endpoint>",service="...",scope="..."``;
the client fetches a token for that scope and retries.  A valid token whose
``access`` claim does not cover the request gets 401 with
``error="insufficient_scope"`` (the client may ask for a wider token) —
unless the built-in token server's rules say the token's subject may not
have that access at all: then 403 ``DENIED``, as with Basic auth.

With the built-in token server the realm is this registry's own ``/token``
URL, built from the request (scheme and ``Host``) unless ``token.realm`` is
configured (behind a proxy that rewrites them).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..api.context import context_of
from ..errors import Denied, Unauthorized
from ..identity import Principal
from . import IAuthorizer, InsufficientScope
from .basic import scope_detail
from .rules import AccessPolicy
from .state import AuthState
from .tokens import InvalidToken, TokenVerifier, VerifiedToken, covers, format_scope


def bearer_token(request) -> str | None:
    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip().decode("latin-1") or None


def own_token_url(request) -> str:
    """
    ``http(s)://<Host>/token`` for this request, as the client reached us:
    behind a trusted proxy, its ``X-Forwarded-Proto`` and ``X-Forwarded-Host``.
    """
    origin = context_of(request).origin
    scheme, host = origin.scheme, origin.host
    if not host:
        address = request.getHost()
        host = f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', '')}".rstrip(":")
    return f"{scheme}://{host}/token"


@implementer(IAuthorizer)
class TokenAuthorizer:
    """
    ``state`` is the built-in token server's settings (its rules turn a
    refusal into 403 and filter the catalog), or None for an external one.
    """

    def __init__(self, verifier: TokenVerifier, service: str, realm: str | None, state: AuthState | None = None):
        self.verifier = verifier
        self.service = service
        self.realm = realm
        self.state = state

    def challenge(self, request, scopes=(), error: str | None = None) -> dict:
        realm = self.realm or own_token_url(request)
        value = f'Bearer realm="{realm}",service="{self.service}"'
        if scopes:
            value += f',scope="{format_scope(scopes)}"'
        if error:
            value += f',error="{error}"'
        return {"WWW-Authenticate": value}

    def _token(self, request, scopes) -> VerifiedToken:
        token = bearer_token(request)
        if token is None:
            raise Unauthorized(scope_detail(scopes), headers=self.challenge(request, scopes))
        try:
            return self.verifier.verify(token)
        except InvalidToken as e:
            raise Unauthorized(
                scope_detail(scopes),
                message=f"invalid token: {e}",
                headers=self.challenge(request, scopes, "invalid_token"),
            ) from None

    def _policy(self) -> AccessPolicy | None:
        if self.state is None:
            return None
        self.state.maybe_reload()
        return self.state.policy

    def authorize(self, request, scopes, principal=None):
        return Deferred.fromCoroutine(self._authorize(request, scopes, principal))

    async def _authorize(self, request, scopes, principal: Principal | None) -> Principal:
        token = principal.token if principal is not None else None
        if token is None:
            token = self._token(request, scopes)
        missing = [scope for scope in scopes if not covers(list(token.access), scope)]
        if not missing:
            return principal if principal is not None else Principal(token.subject or None, token=token)
        policy = self._policy()
        if policy is not None and token.subject:
            identity = policy.identity(token.subject)
            if not all(policy.allows(identity, scope) for scope in missing):
                raise Denied(scope_detail(missing))
        raise InsufficientScope(
            scope_detail(missing),
            message="the token does not grant this access",
            headers=self.challenge(request, scopes, "insufficient_scope"),
        )

    def filter_repositories(self, principal, names):
        return Deferred.fromCoroutine(self._filter(principal, names))

    async def _filter(self, principal: Principal, names) -> list[str]:
        """
        The catalog's names, for listing only.  With the built-in token
        server: what the token's subject may pull by the rules, for a token
        holding the catalog scope; plus what the token itself grants pull on.
        With an external one, a token holding the catalog scope sees every
        repository (as in CNCF Distribution).  Access to any of them is
        still decided by the token's repository scopes alone (`authorize`).
        """
        token = principal.token
        if token is None:  # not a principal this authorizer returned: it sees nothing
            return []
        names = list(names)
        granted = {a.name for a in token.access if a.type == "repository" and ("pull" in a.actions or "*" in a.actions)}
        catalog = covers(list(token.access), ("registry", "catalog", ("*",)))
        policy = self._policy()
        if catalog:
            if policy is None:
                return names
            allowed = set(policy.may_pull(policy.identity(token.subject or None), names))
            granted |= allowed
        return [n for n in names if n in granted]
