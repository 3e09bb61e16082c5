"""Who is calling: every WebSocket upgrade, HTTP request and SSE stream is authenticated at the edge,
before any of its messages reaches the chain.

The gateway asks its authenticator (the first plugin in the chain that can identify clients, see
``proxy.chain.Authenticator``); without one, every client is ``ANONYMOUS``. A refusal is an HTTP 401
(or 403 for a missing scope) whose ``WWW-Authenticate`` challenge names the RFC 9728 protected-resource
metadata, which the gateway serves at ``/.well-known/oauth-protected-resource`` followed by the
endpoint's path, as the MCP authorization specification prescribes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from proxy import jsonrpc
from proxy.chain import Authenticator, Credentials, Principal
from proxy.errors import InsufficientScope, Unauthenticated
from proxy.gateway import Gateway
from proxy.session import Session
from proxy.transports.app_keys import GATEWAY
from proxy.virtual_servers import VirtualServer

WELL_KNOWN = "/.well-known/oauth-protected-resource"
# Browsers cannot set headers on a WebSocket; they offer their token as one of these subprotocols.
_SUBPROTOCOL_HEADER = "Sec-WebSocket-Protocol"


@dataclass(frozen=True, slots=True)
class Admission:
    """Who may proceed, and on which endpoint (a virtual server's, or None for the whole aggregate)."""

    principal: Principal
    view: VirtualServer | None


async def admit(request: web.Request, gateway: Gateway, transport: str) -> Admission | web.Response:
    """The endpoint and principal of ``request``, or the 404/401/403 response that refuses it."""
    view = None
    name = request.match_info.get("server")
    if name is not None:
        view = gateway.virtual_servers.get(name)
        if view is None:
            error = jsonrpc.error(None, {"code": -32600, "message": f"Not Found: no virtual server {name!r}"})
            return web.Response(status=404, body=jsonrpc.dumps(error), content_type="application/json")
    try:
        principal = await gateway.authenticate(credentials_of(request, transport))
    except Unauthenticated as exc:
        return refusal(request, gateway, exc)
    return Admission(principal, view)


def belongs(session: Session, admission: Admission) -> bool:
    """A session is bound to the endpoint and the subject that opened it: anyone else presenting its id
    is told it does not exist. The same subject with a fresh token renews the session's credential."""
    if session.view is not admission.view or session.principal.subject != admission.principal.subject:
        return False
    session.authenticated(admission.principal)
    return True


def endpoint_path(request: web.Request) -> str:
    """The MCP endpoint a request belongs to: a virtual server's own, or the gateway's ``/mcp`` (the
    HTTP+SSE transport's ``/sse`` and ``/messages`` are the same server as ``/mcp``)."""
    name = request.match_info.get("server")
    return f"/servers/{name}/mcp" if name else "/mcp"


def credentials_of(request: web.Request, transport: str) -> Credentials:
    offered = request.headers.get(_SUBPROTOCOL_HEADER, "")
    path = endpoint_path(request)
    return Credentials(
        transport=transport,
        path=path,
        url=_endpoint_url(request, path),
        authorization=request.headers.get("Authorization"),
        subprotocols=tuple(p.strip() for p in offered.split(",") if p.strip()) if offered else (),
        query=dict(request.query) if request.query_string else {},
        remote=request.remote or "",
        traceparent=request.headers.get("traceparent"),
    )


def _endpoint_url(request: web.Request, path: str) -> str:
    """``request``'s URL with ``path`` and no query (what a token's audience is checked against)."""
    if not request.raw_path.startswith("/"):
        # An absolute-form target ("POST http://host:port/mcp") names its own authority, which
        # request.host only partly reflects (no port).
        return str(request.url.with_path(path).with_query(None))
    # For the usual origin-form target, aiohttp builds request.url from exactly this scheme and host.
    return _url_of(request.scheme, request.host, path)


# Every HTTP request needs its endpoint's URL, yarl takes ~10 µs to build one, and the few there are
# repeat. The Host header is the client's to choose, so the cache is bounded.
@functools.lru_cache(maxsize=256)
def _url_of(scheme: str, host: str, path: str) -> str:
    return str(URL.build(scheme=scheme, authority=host).with_path(path))


def refusal(request: web.Request, gateway: Gateway, exc: Unauthenticated) -> web.Response:
    status = 403 if isinstance(exc, InsufficientScope) else 401
    gateway.metrics.refused("insufficient_scope" if status == 403 else "unauthenticated")
    challenge = []
    if gateway.authenticator is not None:
        challenge.append(f'resource_metadata="{metadata_url(request, gateway.authenticator)}"')
    if exc.error:
        challenge.append(f'error="{exc.error}"')
        challenge.append(f'error_description="{_quotable(exc.message)}"')
    if isinstance(exc, InsufficientScope):
        challenge.append(f'scope="{" ".join(exc.scopes)}"')
    body = jsonrpc.dumps(jsonrpc.error_from(None, exc))
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers={"WWW-Authenticate": "Bearer " + ", ".join(challenge)},
    )


def metadata_url(request: web.Request, authenticator: Authenticator) -> str:
    """Where the endpoint's protected-resource metadata lives: the well-known path inserted before the
    resource's own path (RFC 9728, section 3.1)."""
    resource = URL(str(_metadata(request, authenticator)["resource"]))
    return str(resource.with_path(WELL_KNOWN + resource.path.rstrip("/")).with_query(None))


async def handle_protected_resource(request: web.Request) -> web.Response:
    """``GET /.well-known/oauth-protected-resource[/<endpoint path>]``: the RFC 9728 document."""
    authenticator = request.app[GATEWAY].authenticator
    if authenticator is None:
        raise web.HTTPNotFound(text="this gateway does not authenticate clients")
    return web.json_response(_metadata(request, authenticator), headers={"Cache-Control": "max-age=300"})


def _metadata(request: web.Request, authenticator: Authenticator) -> dict[str, Any]:
    path = request.match_info.get("endpoint")
    path = "/" + path if path else endpoint_path(request)
    return authenticator.protected_resource(path, _endpoint_url(request, path))


def _quotable(text: str) -> str:
    # RFC 6750's error_description is a quoted string of printable ASCII without '"' or '\'.
    return "".join(c for c in text if 0x20 <= ord(c) < 0x7F and c not in '"\\')
