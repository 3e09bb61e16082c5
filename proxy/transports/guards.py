"""Checks every client-facing endpoint makes before anything else: Origin and Host (DNS rebinding)."""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web
from yarl import URL

from proxy.config import ListenConfig
from proxy.transports.app_keys import GATEWAY

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    bare = _bare(host)
    if bare in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, allowed: tuple[str, ...], host: str | None = None) -> bool:
    """No Origin (not a browser), a localhost page, the gateway's own pages (the console: an Origin
    naming the request's own ``Host``), or an origin the operator listed.

    Same-origin is safe to admit because ``host_allowed`` still judges the Host: a rebinding page is
    same-origin too, but under a foreign name, which a loopback-bound gateway refuses.
    """
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    try:
        url = URL(origin)
    except ValueError:
        return False
    if url.scheme not in ("http", "https"):
        return False
    return _bare(url.host) in LOCAL_HOSTS or (host is not None and url.raw_authority.lower() == host.lower())


def host_allowed(host: str | None, listen: ListenConfig) -> bool:
    """A gateway bound to loopback answers only to local names (or ones the operator listed).

    A rebinding attack points a hostile name at 127.0.0.1; the browser then sends that name as Host.
    A gateway listening on other addresses is reachable by design, so only a configured list applies.
    """
    if "*" in listen.allowed_hosts:
        return True
    if not listen.allowed_hosts and not is_loopback(listen.host):
        return True
    name = _name_in(host) if host is not None else None
    if name is None:
        return False
    return _bare(name) in LOCAL_HOSTS or name in listen.allowed_hosts


# Parsed on every request, and yarl takes a few µs; clients choose the header, so the cache is bounded.
@functools.lru_cache(maxsize=256)
def _name_in(host: str) -> str | None:
    """The host name of a Host header's value (without the port), or None if it is not a valid one."""
    try:
        return URL(f"http://{host}").host
    except ValueError:
        return None


def foreign_reason(request: web.Request, listen: ListenConfig) -> str | None:
    """Why the request comes from a foreign Origin or Host, or None when it may proceed. A refusal is
    counted (``portico_refused_requests_total``): a burst of them is an attack worth seeing."""
    host = request.headers.get("Host")
    if not origin_allowed(request.headers.get("Origin"), listen.allowed_origins, host):
        request.app[GATEWAY].metrics.refused("foreign_origin")
        return "Forbidden: this Origin is not allowed"
    if not host_allowed(host, listen):
        request.app[GATEWAY].metrics.refused("foreign_host")
        return "Forbidden: this Host is not allowed"
    return None


def refusal(request: web.Request, listen: ListenConfig) -> web.Response | None:
    """A 403 (a JSON-RPC error body) for a foreign Origin or Host, or None when the request may proceed."""
    reason = foreign_reason(request, listen)
    return _forbidden(reason) if reason is not None else None


def _forbidden(message: str) -> web.Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    return web.json_response(body, status=403)


def _bare(host: str | None) -> str:
    return (host or "").strip("[]")
