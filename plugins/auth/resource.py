"""Canonical resource URIs (RFC 8707, as the MCP authorization specification uses them).

A token's ``aud`` must name the endpoint it is presented to: ``https://gw.example.com/mcp`` for the
aggregate, ``https://gw.example.com/servers/notes/mcp`` for a virtual server. The canonical form has a
lowercase scheme and host, no default port, no trailing slash, no query and no fragment.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
# The aggregate's own endpoint path; ``resource`` names it, virtual servers live beside it.
AGGREGATE_PATH = "/mcp"


def canonical_uri(url: str, *, strict: bool = False) -> str:
    """``url`` in canonical form. ``strict`` refuses a query or fragment (a configured ``resource``)
    instead of dropping it (a URL a client addressed). Raises ``ValueError`` for anything that is not an
    absolute http(s) URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} must not carry a user name or password")
    if strict and (parts.query or parts.fragment):
        raise ValueError(f"{url!r} must not have a query or a fragment")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def origin_of(url: str) -> str:
    """The scheme and host (and a non-default port) of ``url``, canonical."""
    canonical = canonical_uri(url)
    scheme, _, rest = canonical.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


class EndpointResources:
    """The canonical resource URI of each MCP endpoint of this gateway.

    With ``resource`` configured (the aggregate's URI as clients know it, e.g. behind a reverse proxy),
    ``/mcp`` is ``resource`` itself and any other endpoint path sits beside it: under the same prefix
    when ``resource`` ends in ``/mcp``, else under its origin. Without it, the URI is derived from the
    URL the client addressed.
    """

    def __init__(self, resource: str | None) -> None:
        self.resource = resource
        self._base: str | None = None
        if resource is not None:
            self._base = (
                resource.removesuffix(AGGREGATE_PATH)
                if resource.endswith(AGGREGATE_PATH)
                else origin_of(resource)
            )

    def of(self, path: str, url: str) -> str:
        """The canonical URI of the endpoint at ``path``, which the client addressed as ``url``."""
        path = "/" + path.strip("/")
        if self.resource is None or self._base is None:
            return canonical_uri(origin_of(url) + path)
        if path == AGGREGATE_PATH:
            return self.resource
        return (self._base + path).rstrip("/")
