"""
Who a request comes from, as values passed explicitly from the edge inward.

- `Principal`: who the request's authorizer found it comes from.  An
  `oci_registry.auth.IAuthorizer` returns one from ``authorize``; the HTTP
  API passes it back to the authorizer (``filter_repositories``, a mount's
  second check) and on to the registry inside a `Caller`.
- `Caller`: the principal plus the request facts the HTTP API knows (client
  address, ``Host``, method, User-Agent, request id).  Every `IRegistry`
  operation takes one, so that a wrapper reporting operations
  (`oci_registry.observe`) can say who did what without knowing HTTP.

Neither is ever stored on the request object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attr

if TYPE_CHECKING:
    from .auth.rules import Identity
    from .auth.tokens import VerifiedToken


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Principal:
    """
    ``name``: the user who logged in (HTTP Basic) or the bearer token's
    subject; None for an anonymous request.  ``identity`` and ``token`` are
    what the authorizer established (the user with their groups, the
    verified token), for that authorizer's later questions; nobody else
    needs to read them.
    """

    name: str | None = None
    identity: Identity | None = attr.ib(default=None, repr=False)
    token: VerifiedToken | None = attr.ib(default=None, repr=False)

    @property
    def anonymous(self) -> bool:
        return self.name is None


ANONYMOUS = Principal()


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Caller:
    """
    Who asks the registry for an operation, and from where: the fields of
    the ``request`` and ``actor`` objects of a CNCF Distribution
    notification.  Every field is optional: an embedding application calling
    the registry directly may know none of them.
    """

    principal: Principal = ANONYMOUS
    addr: str | None = None  # the client's IP address
    host: str | None = None  # the Host header the client sent
    method: str | None = None  # the HTTP method (GET, HEAD, PUT, ...)
    useragent: str | None = None
    request_id: str | None = None

    @property
    def actor(self) -> str | None:
        """The user name, or None when anonymous."""
        return self.principal.name


NOBODY = Caller()
