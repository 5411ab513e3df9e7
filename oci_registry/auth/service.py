"""
Auth, built from a `Config`: the `IAuthorizer` the HTTP API asks, the
``/token`` endpoint wrapped around the registry's resource (built-in token
mode), the start-up log lines, and a service that runs the login thread pool
and reloads the settings on SIGHUP.  ``oci_registry.service`` uses `build_auth`; so can an embedding
application.
"""

from __future__ import annotations

import os
import signal

from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from . import IAuthorizer, OpenAccess
from .basic import BasicAuthorizer
from .bearer import TokenAuthorizer
from .config import AuthConfig
from .pool import LoginPool, LoginPoolService
from .state import AuthState, PasswordLogin
from .token_server import TokenRoute, TokenServer
from .tokens import TokenIssuer, TokenVerifier, load_or_create_signing_key, load_public_keys

log = Logger()


def default_token_key(data_dir: str) -> str:
    return os.path.join(data_dir, "auth", "token-key.pem")


class Auth:
    """What `build_auth` made: ``authorizer`` for `RegistryAPI`, `wrap` for its resource."""

    def __init__(
        self,
        config: AuthConfig | None,
        authorizer: IAuthorizer,
        state: AuthState | None = None,
        token_server: TokenServer | None = None,
        key_path: str | None = None,
        login_pool: LoginPool | None = None,
    ):
        self.config = config
        self.authorizer = authorizer
        self.state = state
        self.token_server = token_server
        self.key_path = key_path
        self.login_pool = login_pool

    def wrap(self, resource):
        """The registry's resource, with ``/token`` in front of it when this registry issues tokens."""
        if self.token_server is None:
            return resource
        return TokenRoute(resource, self.token_server)

    def reload(self) -> None:
        if self.state is not None:
            self.state.reload()

    def announce(self) -> None:
        """Say at start-up who may do what."""
        config = self.config
        if config is None:
            log.warn(
                "no auth configured: the registry is open to anyone who can reach it "
                "(anyone may pull, push and delete); see docs/auth.md"
            )
            return
        users = len(self.state.users) if self.state and self.state.users is not None else 0
        token = config.token
        if token is None:  # config.mode == "basic"
            log.info(
                "auth: HTTP Basic, realm {realm!r}, {users} users from {htpasswd}, {rules} access rules",
                realm=config.realm,
                users=users,
                htpasswd=config.htpasswd or "(no htpasswd file)",
                rules=len(config.access),
            )
        elif not token.external:  # config.mode == "token"
            log.info(
                "auth: bearer tokens from the built-in /token endpoint (service {service!r}, issuer "
                "{issuer!r}, key {key}), {users} users from {htpasswd}, {rules} access rules",
                service=token.service,
                issuer=token.issuer,
                key=self.key_path,
                users=users,
                htpasswd=config.htpasswd or "(no htpasswd file)",
                rules=len(config.access),
            )
        else:
            log.info(
                "auth: bearer tokens from the external token server {realm} (issuer {issuer!r}, service "
                "{service!r}, keys from {key})",
                realm=token.realm,
                issuer=token.issuer,
                service=token.service,
                key=token.public_key,
            )
        if config.mode != "external-token" and not config.access and not config.admins:
            log.warn("auth: no access rules and no admins: nobody may pull or push")

    def service(self, forward=None) -> Service | None:
        """
        What runs alongside the site: the login thread pool (started and
        stopped with this service) and the reload of the settings on SIGHUP;
        None when there are no passwords to check.  ``forward``, if given, is
        called after each reload (the worker supervisor passes the signal on
        to its workers).  Without this service the pool starts at the first
        login and stops with the reactor.
        """
        if self.state is None:
            return None
        top = MultiService()
        top.setName("auth")
        if self.login_pool is not None:
            LoginPoolService(self.login_pool).setServiceParent(top)
        SighupReload(self, forward=forward).setServiceParent(top)
        return top

    reload_service = service  # its former name


class SighupReload(Service):
    name = "auth-reload"  # type: ignore[assignment]  # Twisted declares Service.name by its default, None

    def __init__(self, auth: Auth, reactor=None, forward=None):
        self._auth = auth
        self._reactor = reactor
        self._forward = forward
        self._previous = None

    def startService(self):
        super().startService()
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        try:
            self._previous = signal.signal(signal.SIGHUP, self._signalled)
        except ValueError:  # not the main thread: no signals, file changes still count
            self._previous = None

    def _signalled(self, signum, frame):
        self._reactor.callFromThread(self._reload)

    def _reload(self):
        self._auth.reload()
        if self._forward is not None:
            self._forward()

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None


def build_auth(config, reactor=None) -> Auth:
    """The authorization a `Config` asks for: `OpenAccess` without an ``auth`` section; ConfigError if unusable."""
    from ..config import ConfigError

    try:
        return _build_auth(config, reactor)
    except (ValueError, OSError) as e:
        raise ConfigError(f"auth: {e}") from None


def _build_auth(config, reactor) -> Auth:
    auth: AuthConfig | None = getattr(config, "auth", None)
    if auth is None:
        return Auth(None, OpenAccess())
    token = auth.token
    if token is not None and token.public_key is not None:  # auth.mode == "external-token"
        verifier = TokenVerifier(load_public_keys(token.public_key), token.issuer, token.service)
        return Auth(auth, TokenAuthorizer(verifier, token.service, token.realm))
    state = AuthState(auth)
    pool = LoginPool(reactor)
    login = PasswordLogin(state, pool)
    if token is None:  # auth.mode == "basic"
        return Auth(auth, BasicAuthorizer(state, login), state, login_pool=pool)
    key_path = token.key or default_token_key(config.data_dir)
    key = load_or_create_signing_key(key_path)
    issuer = TokenIssuer(key, token.issuer, token.service, token.expiry)
    verifier = TokenVerifier([key.public_key()], token.issuer, token.service)
    authorizer = TokenAuthorizer(verifier, token.service, token.realm, state)
    return Auth(auth, authorizer, state, TokenServer(state, login, issuer), key_path, pool)
