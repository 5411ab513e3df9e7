"""
The built-in token endpoint, ``/token``, served by the registry's own Site.

``GET /token?service=...&scope=repository:team-a/app:pull,push&scope=...``
with Basic credentials (or none: an anonymous token) answers, per the Docker
registry token specification::

    {"token": "<JWT>", "access_token": "<JWT>", "expires_in": 300, "issued_at": "2024-01-01T00:00:00Z"}

The token grants the intersection of the requested scope and the caller's
rights under the access rules (possibly nothing).  Wrong credentials get
401 (and count towards the failed-login limit, past which 429).

``POST /token`` with a form (``grant_type=password``, ``username``,
``password``, ``scope`` space-separated, ``service``) is the OAuth2
password grant of the same specification; no refresh tokens are issued, so
clients keep using their stored password.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.logger import Logger
from twisted.web.resource import Resource

from ..api.body import read_form
from ..errors import RegistryError, TooLarge, Unauthorized, Unsupported
from ..reference import Name
from .basic import MalformedCredentials, basic_credentials
from .rules import ACTIONS, Identity
from .state import AuthState, PasswordLogin
from .tokens import Access, TokenIssuer, parse_scope

log = Logger()

MAX_SCOPES = 64  # scope items per token request; clients ask for one to a few
MAX_FORM = 64 * 1024  # bytes of a POST /token form


def grant(state: AuthState, identity: Identity, requested: list[Access]) -> list[Access]:
    """What a token for ``identity`` carries: the requested access it has under the rules."""
    policy = state.policy
    granted: dict[tuple[str, str], set[str]] = {}
    for access in requested:
        if access.type == "repository":
            try:
                Name.parse(access.name)
            except RegistryError:
                continue
            wanted = set(ACTIONS) if "*" in access.actions else set(access.actions)
            actions = wanted & policy.actions(identity, access.name)
        elif (access.type, access.name) == ("registry", "catalog"):
            actions = {"*"} if "*" in access.actions and policy.may_catalog(identity) else set()
        else:
            actions = set()
        if actions:
            granted.setdefault((access.type, access.name), set()).update(actions)
    order = {a: i for i, a in enumerate((*ACTIONS, "*"))}
    return [
        Access(kind, name, tuple(sorted(actions, key=order.__getitem__))) for (kind, name), actions in granted.items()
    ]


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class TokenServer:
    app = Klein()

    def __init__(self, state: AuthState, login: PasswordLogin, issuer: TokenIssuer):
        self.state = state
        self.login = login
        self.issuer = issuer

    def resource(self) -> Resource:
        return self.app.resource()

    @app.handle_errors(RegistryError)
    def registry_error(self, request, failure):
        error = failure.value
        request.setResponseCode(error.status)
        for key, value in error.headers.items():
            request.setHeader(key.encode(), str(value).encode())
        return _json(request, {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]})

    @app.handle_errors(_OAuthError)
    def oauth_error(self, request, failure):
        error = failure.value
        request.setResponseCode(error.status)
        return _json(request, {"error": error.error, "error_description": error.description})

    def _check_service(self, service: str | None) -> None:
        if service and service != self.issuer.service:
            raise _bad_request(f"this token server issues tokens for service {self.issuer.service!r}, not {service!r}")

    @app.route("/token", methods=["GET"])
    async def get_token(self, request):
        self._check_service(_arg(request, "service"))
        requested = _requested(request)
        if requested is None:
            raise _bad_request(f"a token request may name at most {MAX_SCOPES} scopes")
        challenge = {"WWW-Authenticate": f'Basic realm="{self.state.config.realm}"'}
        self.state.maybe_reload()
        try:
            credentials = basic_credentials(request)
        except MalformedCredentials as e:
            self.login.refuse_if_limited(request)
            raise Unauthorized(message=str(e), headers=challenge) from None
        if credentials is None or credentials == ("", ""):
            identity = self.state.identity(None)
        else:
            identity = await self.login.login(request, *credentials)
            if identity is None:
                raise Unauthorized(message="incorrect username or password", headers=challenge)
        issued = self._issue(identity, requested)
        return _json(
            request,
            {
                "token": issued.token,
                "access_token": issued.token,
                "expires_in": issued.expires_in,
                "issued_at": issued.issued_at,
            },
        )

    @app.route("/token", methods=["POST"])
    async def post_token(self, request):
        too_large = _OAuthError(413, "invalid_request", f"the form is larger than {MAX_FORM} bytes")
        if _body_size(request) > MAX_FORM:
            raise too_large
        try:
            await read_form(request, MAX_FORM)
        except TooLarge:
            raise too_large from None
        grant_type = _arg(request, "grant_type")
        if grant_type != "password":
            raise _OAuthError(400, "unsupported_grant_type", "only grant_type=password is supported")
        try:
            self._check_service(_arg(request, "service"))
        except RegistryError as e:
            raise _OAuthError(400, "invalid_request", e.detail or e.message) from None
        user, password = _arg(request, "username"), _arg(request, "password")
        if not user or password is None:
            raise _OAuthError(400, "invalid_request", "username and password are required")
        requested = _requested(request)
        if requested is None:
            raise _OAuthError(400, "invalid_scope", f"a token request may name at most {MAX_SCOPES} scopes")
        self.state.maybe_reload()
        identity = await self.login.login(request, user, password)
        if identity is None:
            raise _OAuthError(401, "invalid_grant", "incorrect username or password")
        issued = self._issue(identity, requested)
        return _json(
            request,
            {
                "access_token": issued.token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "issued_at": issued.issued_at,
                "scope": " ".join(map(str, requested)),
            },
        )

    @app.route("/token", methods=["HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def other_methods(self, request):
        raise Unsupported(f"{request.method.decode()} is not allowed on /token")

    def _issue(self, identity: Identity, requested: list[Access]):
        access = grant(self.state, identity, requested)
        log.info(
            "token for {who} granting {access}",
            who=identity.name or "anonymous",
            access=" ".join(map(str, access)) or "nothing",
        )
        return self.issuer.issue(identity.name or "", access)


def _bad_request(detail: str) -> RegistryError:
    error = RegistryError(detail, message="invalid token request")
    error.code = "UNSUPPORTED"
    error.status = 400
    return error


def _requested(request) -> list[Access] | None:
    """The scopes a token request names; None when it names more than `MAX_SCOPES`."""
    requested: list[Access] = []
    for value in request.args.get(b"scope", [])[: MAX_SCOPES + 1]:
        items = value.split(None, MAX_SCOPES)  # splits no further than needed to know
        if len(requested) + len(items) > MAX_SCOPES:
            return None
        requested += parse_scope(b" ".join(items).decode("utf-8", "replace"))
    return requested


def _body_size(request) -> int:
    content = getattr(request, "content", None)
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return size


def _args(request, name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in request.args.get(name.encode(), [])]


def _arg(request, name: str) -> str | None:
    values = _args(request, name)
    return values[0] if values else None


def _json(request, document) -> bytes:
    body = json.dumps(document).encode()
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(body)).encode())
    return body


class TokenRoute(Resource):
    """Serves ``/token`` from the token server and every other path from the registry."""

    isLeaf = True

    def __init__(self, registry_resource, token_server: TokenServer):
        super().__init__()
        self._registry = registry_resource
        self._token = token_server.resource()

    def render(self, request):
        if request.path.rstrip(b"/") == b"/token":
            request.prepath = []
            request.postpath = [b"token"]
            return self._token.render(request)
        return self._registry.render(request)
