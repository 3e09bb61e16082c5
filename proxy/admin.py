"""The admin API under ``/admin``: backends, sessions and reload, for operators (config: ``admin:``).

Off unless ``admin.enabled`` (then ``/admin/*`` is simply not routed: 404). When on, every call is
authenticated exactly as ``/mcp`` is (same tokens, same 401/403 challenge, same Origin/Host checks) and
the principal must hold ``admin.role``. Without an authentication plugin every caller is anonymous, so the
API may only be enabled with ``admin.allow_anonymous_admin: true`` on a gateway listening on a loopback
address (local use); anything else is refused at start-up.

Routes (JSON in and out; errors are ``{"error": "..."}``)::

    GET    /admin/overview?audit=N  in one reading (the web console's poll): version, uptime, readiness;
                                    traffic totals (requests, errors, latency histogram, in flight);
                                    sessions per transport; every backend; the latest N audit records
    GET    /admin/backends          every backend: transport, ready, state, instances (breaker, restarts),
                                    tool/prompt/resource/template counts, its own tool names
    POST   /admin/backends          {"name": ..., "config": {an mcpServers entry}}: 201 and the backend;
                                    400 invalid, 409 name taken or names collide, 502 it did not start
    DELETE /admin/backends/{name}   stop it, its tools leave the lists (list_changed); 404 if unknown
    GET    /admin/sessions          every client session: id, transport, era, principal, calls in flight
    DELETE /admin/sessions/{id}     end it (a WebSocket closes with 1008 and a reason); 404 if unknown
    POST   /admin/reload            read the config file again and apply its mcpServers (added, removed,
                                    changed backends); 400 if the file is invalid (nothing changes)

Every call, refused or not, is audited: one JSON line (``time``, ``event`` = "admin", ``principal``
{subject, kind} or null, ``remote``, ``method``, ``path``, ``status``; 499 when the caller went away
first) on the ``portico.admin`` logger, at DEBUG for a successful GET (a console repeats one every two
seconds) and at INFO otherwise, and handed to every plugin with a ``record_admin(entry)`` method
(the audit plugin). Registering a stdio backend runs a command on the gateway's host: the admin role is
as powerful as the config file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from proxy import heap
from proxy.admin_views import describe_backend, describe_session, overview
from proxy.chain import Principal
from proxy.config import AdminConfig, GatewayConfig, validation_problems
from proxy.errors import BackendUnavailable, ConfigError, Unauthenticated
from proxy.gateway import Gateway
from proxy.transports.app_keys import GATEWAY, RELOADER
from proxy.transports.authentication import credentials_of, refusal
from proxy.transports.guards import foreign_reason, is_loopback

log = logging.getLogger("portico.admin")

ENDED_BY_ADMIN = "ended by an administrator"
# The status recorded when the caller disconnected before the answer (nginx's convention).
CLIENT_WENT_AWAY = 499
# Readings of live state: never from a cache.
NO_STORE = {"Cache-Control": "no-store"}


AdminHandler = Callable[[web.Request, Gateway], Awaitable[web.Response]]


def add_admin_routes(app: web.Application, gateway: Gateway) -> None:
    """Route ``/admin/*`` when ``admin.enabled``; raises ``ConfigError`` if it would be open to anyone."""
    settings = gateway.config.admin
    if not settings.enabled:
        return
    if gateway.authenticator is None:
        if not settings.allow_anonymous_admin:
            raise ConfigError(
                f"{gateway.config.source}: admin: enabled without an authentication plugin, so anyone "
                "could use it; add the auth plugin, or set admin.allow_anonymous_admin: true (local use)"
            )
        host = gateway.config.listen.host
        if not is_loopback(host):
            raise ConfigError(
                f"{gateway.config.source}: admin.allow_anonymous_admin is for local use, but the gateway "
                f"listens on {host!r}, where anyone who can reach the port could use the admin API; "
                "listen on 127.0.0.1, or add the auth plugin"
            )
        log.warning("the admin API is open to anonymous local callers (admin.allow_anonymous_admin)")
    routes: list[tuple[str, str, AdminHandler]] = [
        ("GET", "/admin/overview", show_overview),
        ("GET", "/admin/backends", list_backends),
        ("POST", "/admin/backends", register_backend),
        ("DELETE", "/admin/backends/{name}", deregister_backend),
        ("GET", "/admin/sessions", list_sessions),
        ("DELETE", "/admin/sessions/{id}", end_session),
        ("POST", "/admin/reload", reload_config),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guarded(handler, settings))


def _guarded(
    handler: AdminHandler, settings: AdminConfig
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler behind authentication and the role check, every call audited whatever its end."""

    async def guarded(request: web.Request) -> web.Response:
        gateway = request.app[GATEWAY]
        principal: Principal | None = None
        try:
            # A web page must not drive the API through the operator's browser (DNS rebinding), least of
            # all an anonymous one: the same Origin/Host checks as the MCP endpoint.
            foreign = foreign_reason(request, gateway.config.listen)
            if foreign is not None:
                response = _error(403, foreign)
            else:
                principal, refused = await _admit(request, gateway, settings)
                response = refused if refused is not None else await handler(request, gateway)
        except asyncio.CancelledError:
            audit(gateway, request, principal, CLIENT_WENT_AWAY)
            raise
        except web.HTTPException as exc:
            # What aiohttp itself refuses while reading the request (a body over the size limit).
            response = _error(exc.status, exc.reason)
        except Exception:
            log.exception("admin: %s %s failed", request.method, request.path)
            response = _error(500, "internal error (see the gateway's log)")
        audit(gateway, request, principal, response.status)
        return response

    return guarded


async def _admit(
    request: web.Request, gateway: Gateway, settings: AdminConfig
) -> tuple[Principal | None, web.Response | None]:
    """Who is calling (None if unidentified), and the response refusing them, if they are refused."""
    # The admin API is part of the gateway's protected resource: a token for /mcp, holding the role.
    try:
        principal = await gateway.authenticate(credentials_of(request, "admin"))
    except Unauthenticated as exc:
        return None, refusal(request, gateway, exc)
    if gateway.authenticator is not None and settings.role not in principal.roles:
        return principal, _error(403, f"the admin API needs the role {settings.role!r}")
    return principal, None


def audit(gateway: Gateway, request: web.Request, principal: Principal | None, status: int) -> None:
    """One line per admin call on ``portico.admin``, and to every plugin that records admin calls."""
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": "admin",
        "principal": {"subject": principal.subject, "kind": principal.kind} if principal else None,
        "remote": request.remote or "",
        "method": request.method,
        "path": request.path,
        "status": status,
    }
    # The operator's log gets changes and refusals at INFO; successful reads (a console polls every two
    # seconds) only at DEBUG. The audit plugin records every call either way.
    level = logging.DEBUG if request.method == "GET" and status < 400 else logging.INFO
    log.log(level, "%s", orjson.dumps(entry).decode())
    for named in gateway.plugins:
        record = getattr(named.plugin, "record_admin", None)
        if not callable(record):
            continue
        try:
            record(dict(entry))
        except Exception:
            log.exception("plugin %s failed to record an admin call", named.name)


# -- backends -------------------------------------------------------------------------------------------


async def show_overview(request: web.Request, gateway: Gateway) -> web.Response:
    """The gateway, its traffic, sessions, backends and latest audit records in one reading (the web
    console polls it); ``?audit=N`` asks for up to N audit records (default 50)."""
    try:
        limit = int(request.query.get("audit", "50"))
    except ValueError:
        return _error(400, "audit: expected a whole number of records")
    return web.json_response(overview(gateway, limit), headers=NO_STORE)


async def list_backends(request: web.Request, gateway: Gateway) -> web.Response:
    return web.json_response({"backends": [describe_backend(b) for b in gateway.backends.values()]})


async def register_backend(request: web.Request, gateway: Gateway) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    name, entry = body.get("name"), body.get("config")
    if not isinstance(name, str) or not isinstance(entry, dict):
        return _error(400, 'the body must be {"name": "<backend>", "config": {<an mcpServers entry>}}')
    try:
        config = GatewayConfig.model_validate({"mcpServers": {name: entry}}).mcpServers[name]
    except ValidationError as exc:
        return _error(400, "\n".join(validation_problems(exc)))
    if config.disabled:
        return _error(400, f"mcpServers.{name}.disabled: a disabled backend cannot be registered")
    if name in gateway.backends:
        return _error(409, f"a backend named {name!r} already exists")
    try:
        backend = await gateway.add_backend(name, config)
    except KeyError:
        return _error(409, f"a backend named {name!r} already exists")
    except ConfigError as exc:
        return _error(409, f"backend {name!r} was not registered: {exc.message}")
    except BackendUnavailable as exc:
        return _error(502, f"backend {name!r} did not start, so it was not registered: {exc.message}")
    return web.json_response(describe_backend(backend), status=201)


async def deregister_backend(request: web.Request, gateway: Gateway) -> web.Response:
    name = request.match_info["name"]
    try:
        await gateway.remove_backend(name)
    except KeyError:
        return _error(404, f"no backend named {name!r}")
    # What the backend held is garbage now; frozen, its cycles would never be freed (proxy.heap).
    heap.settle()
    return web.json_response({"removed": name})


# -- sessions -------------------------------------------------------------------------------------------


async def list_sessions(request: web.Request, gateway: Gateway) -> web.Response:
    return web.json_response({"sessions": [describe_session(s) for s in gateway.sessions.values()]})


async def end_session(request: web.Request, gateway: Gateway) -> web.Response:
    session_id = request.match_info["id"]
    session = gateway.sessions.get(session_id)
    if session is None:
        return _error(404, f"no session {session_id!r}")
    session.end(ENDED_BY_ADMIN)
    return web.json_response({"ended": session_id})


async def reload_config(request: web.Request, gateway: Gateway) -> web.Response:
    """Read the config file again and apply its ``mcpServers`` (``proxy.reload``)."""
    try:
        outcome = await request.app[RELOADER].reload()
    except ConfigError as exc:
        status = 409 if gateway.config.source == "<memory>" else 400
        return _error(status, f"the config was not reloaded: {exc.message}")
    return web.json_response(outcome)


# -- helpers --------------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
