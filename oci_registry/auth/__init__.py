"""
Who may pull, push and delete.

The HTTP API asks an `IAuthorizer` before it does anything: every route names
the access it needs as scopes in the Docker token specification's terms
(``("repository", "team/app", ("pull", "push"))``, ``("registry",
"catalog", ("*",))``).  The authorizer answers by returning (access granted),
or by raising `Unauthorized` (401, with the ``WWW-Authenticate`` challenge
in its headers), `InsufficientScope` (a 401 for a valid token that does not
cover the request) or `Denied` (403).  `OpenAccess`, the default, grants
everything.

``authorize`` fires with the `Principal` it found the request comes from:
the HTTP API passes it explicitly to later questions about the same request
(``filter_repositories``, a mount's check of its source) and, inside a
`Caller`, to the registry.  Nothing is kept on the request object.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from zope.interface import Interface, implementer

from ..errors import Unauthorized
from ..identity import ANONYMOUS, Principal

__all__ = ["ANONYMOUS", "IAuthorizer", "InsufficientScope", "OpenAccess", "Principal"]


class InsufficientScope(Unauthorized):
    """
    401 for a valid token that lacks some of the access asked for: the
    challenge names the scopes needed, so the client may fetch a wider token.
    """


class IAuthorizer(Interface):
    def authorize(request, scopes, principal=None):
        """
        Fire with the request's `Principal` when ``request`` may have every
        access in ``scopes`` (a list of ``(type, name, actions)``); fail with
        `Unauthorized` or `Denied`.  ``principal``: what an earlier call
        returned for the same request (who it is is settled then; only the
        access is checked again).
        """

    def filter_repositories(principal, names):
        """
        Fire with the subset of repository ``names`` that ``principal`` (as
        ``authorize`` returned it) may see in the catalog.  A listing: being
        listed grants no access.
        """


@implementer(IAuthorizer)
class OpenAccess:
    """No authentication: anyone may do anything."""

    def authorize(self, request, scopes, principal=None):
        return succeed(principal if principal is not None else ANONYMOUS)

    def filter_repositories(self, principal, names):
        return succeed(list(names))


def pull(name) -> tuple:
    return ("repository", str(name), ("pull",))


def push(name) -> tuple:
    return ("repository", str(name), ("pull", "push"))


def delete(name) -> tuple:
    return ("repository", str(name), ("delete",))


CATALOG = ("registry", "catalog", ("*",))
