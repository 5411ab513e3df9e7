"""
Who sent a request, behind a reverse proxy: the client's address, the
scheme and the host it asked for.

``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are
believed only from the peers listed in ``trusted_proxies`` (CIDRs): anyone
else could write any address there and so choose the key of their own
failed-login rate limit.  From a trusted peer the client is the right-most
address of the ``X-Forwarded-For`` chain that is not itself a trusted proxy
(each proxy appends the address it saw, so everything to the left of the
first untrusted hop may be the client's own invention).  Proto and host are
the right-most values: the ones the trusted peer itself set.
"""

from __future__ import annotations

import ipaddress
import re

import attr

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32  # X-Forwarded-For entries looked at, from the right
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@attr.s(auto_attribs=True, frozen=True)
class Origin:
    """Where a request came from, as far as it can be believed."""

    client: str  # an address ("203.0.113.7"), or "local" for a unix socket
    scheme: str  # "http" or "https", as the client spoke it
    host: str | None  # Host the client asked for (X-Forwarded-Host from a trusted proxy), if valid
    forwarded: bool = False  # the client was read from X-Forwarded-For


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:1234"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _values(request, name: bytes) -> list[str]:
    """Every comma-separated value of every ``name`` header, in order."""
    found: list[str] = []
    for raw in request.requestHeaders.getRawHeaders(name, [])[:MAX_HOPS]:
        found.extend(part.strip() for part in raw.decode("latin-1").split(","))
    return [value for value in found if value][-MAX_HOPS:]


def _valid_host(value: str | None) -> str | None:
    if value and len(value) <= 255 and _HOST.fullmatch(value):
        return value
    return None


@attr.s(auto_attribs=True, frozen=True)
class TrustedProxies:
    """The peers whose ``X-Forwarded-*`` headers are believed (none by default)."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, values) -> TrustedProxies:
        """From CIDRs (``10.0.0.0/8``, ``::1``; a bare address is a /32 or /128); ValueError naming a bad one."""
        if values is None:
            return cls()
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, (list, tuple)):
            raise ValueError("must be a list of CIDRs, e.g. [10.0.0.0/8, 127.0.0.1]")
        networks = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
            except ValueError:
                raise ValueError(f"not a CIDR: {value!r} (use e.g. 10.0.0.0/8 or 127.0.0.1)") from None
        return cls(tuple(networks))

    def to_list(self) -> list[str]:
        return [str(network) for network in self.networks]

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def origin(self, request) -> Origin:
        """The `Origin` of a `twisted.web` request, from its peer and, if that is trusted, its headers."""
        peer = request.getClientAddress()
        peer_host = getattr(peer, "host", None)
        client = peer_host or "local"
        secure = getattr(request, "isSecure", None)  # a test's stand-in request may have none
        scheme = "https" if secure is not None and secure() else "http"
        host = _valid_host((request.getHeader(b"host") or b"").decode("latin-1").strip())
        if not self.networks:
            return Origin(client, scheme, host)
        # A unix socket's peer is whoever may open it: a local proxy, trusted as such.
        if peer_host is not None and not self.trusts(_address(peer_host)):
            return Origin(client, scheme, host)
        forwarded = False
        for hop in reversed(_values(request, b"x-forwarded-for")):
            address = _address(hop)
            if address is None:
                break  # a trusted proxy passed on garbage: the client is the hop that proxy saw
            client, forwarded = str(address), True
            if not self.trusts(address):
                break
        protos = _values(request, b"x-forwarded-proto")
        if protos and protos[-1].lower() in ("http", "https"):
            scheme = protos[-1].lower()
        hosts = _values(request, b"x-forwarded-host")
        if hosts and _valid_host(hosts[-1]):
            host = hosts[-1]
        return Origin(client, scheme, host, forwarded)
