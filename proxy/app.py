"""aiohttp wiring: the routes, and the gateway's life tied to the application's."""

from __future__ import annotations

import weakref

from aiohttp import web

from proxy.gateway import Gateway
from proxy.transports.websocket import GATEWAY, OPEN_SOCKETS, close_open_sockets, handle_websocket


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=gateway.config.listen.max_message_bytes)
    app[GATEWAY] = gateway
    app[OPEN_SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(close_open_sockets)
    app.router.add_get("/mcp", handle_websocket)
    app.router.add_get("/healthz", handle_healthz)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
