"""
The pull-through cache: repositories under a configured prefix are served
from an upstream registry (Docker Hub, GHCR, any Distribution API registry)
and kept in local storage.

    config.py   the ``proxies`` settings (`UpstreamConfig`)
    auth.py     upstream auth challenges, Bearer token cache
    client.py   the upstream client over treq (`IUpstream`, `UpstreamClient`)
    fill.py     one blob fetched once, streamed to clients while it is stored
    cache.py    the cache policy (`ProxyRegistry`), wrapping the local `Registry`

See docs/proxy.md.
"""

from .cache import ProxyRegistry, Upstream
from .client import IUpstream, UpstreamClient
from .config import UpstreamConfig, parse_upstreams

__all__ = ["IUpstream", "ProxyRegistry", "Upstream", "UpstreamClient", "UpstreamConfig", "parse_upstreams"]
