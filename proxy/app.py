"""aiohttp wiring: the routes, and the gateway's life tied to the application's."""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from proxy.admin import add_admin_routes
from proxy.console import add_console_routes
from proxy.gateway import Gateway
from proxy.metrics import CONTENT_TYPE
from proxy.reload import ConfigWatcher, Reloader
from proxy.transports import legacy_sse
from proxy.transports.app_keys import GATEWAY, RELOADER
from proxy.transports.authentication import WELL_KNOWN, handle_protected_resource
from proxy.transports.http import handle_delete, handle_get, handle_post
from proxy.transports.http_sessions import HTTP_SESSIONS, HttpSessions
from proxy.transports.websocket import OPEN_SOCKETS, close_open_sockets


class QuietBadRequests(logging.Filter):
    """aiohttp answers malformed HTTP with 400 itself, but logs each with a traceback at ERROR, so one
    hostile client could flood the operator's log. Such a record becomes one line at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | RequestPayloadError | ConnectionResetError):
            record.msg, record.args, record.exc_info = "refused a malformed HTTP request: %s", (error,), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_QUIET = QuietBadRequests()


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """200 once at least ``listen.min_ready_backends`` backends are ready, else 503 naming those that
    are not (a load balancer sends traffic only to a gateway that can serve it)."""
    gateway = request.app[GATEWAY]
    ready, not_ready = gateway.readiness()
    needed = gateway.config.listen.min_ready_backends
    body = {
        "status": "ready" if len(ready) >= needed else "not ready",
        "min_ready_backends": needed,
        "ready": ready,
        "not_ready": not_ready,
    }
    return web.json_response(body, status=200 if len(ready) >= needed else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.exposition()
    # CONTENT_TYPE carries its own charset parameter, which aiohttp accepts only in the raw header.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def drain_calls(app: web.Application) -> None:
    """On shutdown, let the client calls in flight finish, for at most ``listen.drain_seconds``."""
    gateway = app[GATEWAY]
    await gateway.drain(gateway.config.listen.drain_seconds)


async def end_http_sessions(app: web.Application) -> None:
    await app[HTTP_SESSIONS].stop()


def build_app(gateway: Gateway) -> web.Application:
    server_log = logging.getLogger("aiohttp.server")
    if _QUIET not in server_log.filters:
        server_log.addFilter(_QUIET)
    app = web.Application(client_max_size=gateway.config.listen.max_message_bytes)
    app[GATEWAY] = gateway
    app[OPEN_SOCKETS] = weakref.WeakSet()
    app[HTTP_SESSIONS] = HttpSessions(gateway)
    # Shutdown runs once the listener is closed (no new connections): first the calls in flight may
    # finish (up to listen.drain_seconds), and only then do the sockets close with 1001, since closing
    # a socket ends its session and cancels its calls.
    app.on_shutdown.append(drain_calls)
    app.on_shutdown.append(close_open_sockets)
    # Streamable HTTP sessions end too, so their open GET streams do not hold the shutdown up.
    app.on_shutdown.append(end_http_sessions)
    # One endpoint for every transport: GET with Upgrade is the WebSocket, the rest Streamable HTTP.
    # Each virtual server has an endpoint of its own, the same in every way but what it offers.
    for path in ("/mcp", "/servers/{server}/mcp"):
        app.router.add_get(path, handle_get, allow_head=False)
        app.router.add_post(path, handle_post)
        app.router.add_delete(path, handle_delete)
    # RFC 9728 metadata: at the root, and with each endpoint's path appended (clients try both).
    app.router.add_get(WELL_KNOWN, handle_protected_resource, allow_head=False)
    app.router.add_get(WELL_KNOWN + "/{endpoint:.+}", handle_protected_resource, allow_head=False)
    # The 2024-11-05 HTTP+SSE transport, for clients that predate Streamable HTTP.
    app[legacy_sse.LEGACY_SESSIONS] = {}
    app.router.add_get("/sse", legacy_sse.handle_stream, allow_head=False)
    app.router.add_post(legacy_sse.MESSAGES_PATH, legacy_sse.handle_message)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    add_admin_routes(app, gateway)
    add_console_routes(app, gateway)

    app[RELOADER] = Reloader(gateway)
    watcher = ConfigWatcher(app[RELOADER], gateway.config.reload.watch_seconds)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        app[HTTP_SESSIONS].start()
        watcher.start()
        yield
        await watcher.stop()
        await app[RELOADER].close()
        await app[HTTP_SESSIONS].stop()
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
