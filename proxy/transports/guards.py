"""Checks every client-facing endpoint makes before anything else: Origin and Host (DNS rebinding)."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from proxy.config import ListenConfig

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), a localhost page, or an origin the operator listed."""
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    try:
        url = URL(origin)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and _bare(url.host) in LOCAL_HOSTS


def host_allowed(host: str | None, listen: ListenConfig) -> bool:
    """A gateway bound to loopback answers only to local names (or ones the operator listed).

    A rebinding attack points a hostile name at 127.0.0.1; the browser then sends that name as Host.
    A gateway listening on other addresses is reachable by design, so only a configured list applies.
    """
    if "*" in listen.allowed_hosts:
        return True
    if not listen.allowed_hosts and _bare(listen.host) not in LOCAL_HOSTS:
        return True
    if host is None:
        return False
    try:
        name = URL(f"http://{host}").host
    except ValueError:
        return False
    return _bare(name) in LOCAL_HOSTS or name in listen.allowed_hosts


def refusal(request: web.Request, listen: ListenConfig) -> web.Response | None:
    """A 403 for a foreign Origin or Host, or None when the request may proceed."""
    if not origin_allowed(request.headers.get("Origin"), listen.allowed_origins):
        return _forbidden("Forbidden: this Origin is not allowed")
    if not host_allowed(request.headers.get("Host"), listen):
        return _forbidden("Forbidden: this Host is not allowed")
    return None


def _forbidden(message: str) -> web.Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    return web.json_response(body, status=403)


def _bare(host: str | None) -> str:
    return (host or "").strip("[]")
