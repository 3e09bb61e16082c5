"""MCP over WebSocket at ``/mcp`` (and each virtual server's ``/servers/{name}/mcp``): subprotocol ``mcp``,
one JSON-RPC message per text frame.

The session lives exactly as long as the socket. Origins are checked before the upgrade so a web page
on another site cannot reach a gateway on localhost (DNS rebinding); frames over the size limit close the
socket with 1009 and are never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from proxy import jsonrpc
from proxy.errors import InvalidRequest
from proxy.jsonrpc import RequestId
from proxy.session import Session
from proxy.transports.app_keys import GATEWAY
from proxy.transports.authentication import admit
from proxy.transports.guards import refusal

log = logging.getLogger("portico.websocket")

# Open client sockets, so that shutdown can say goodbye (1001) instead of waiting for each to leave.
OPEN_SOCKETS = web.AppKey("open_sockets", weakref.WeakSet[web.WebSocketResponse])


class WebSocketChannel:
    """Everything for the client goes down its one socket, one message per text frame."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    # ``respond`` and ``send`` return aiohttp's own send coroutine rather than awaiting it in one of their
    # own: every reply passes here, and the extra coroutine layer would cost each of them.
    def respond(self, frame: bytes, request_id: RequestId | None) -> Coroutine[Any, Any, None]:
        return self.ws.send_frame(frame, WSMsgType.TEXT)

    def finished(self, request_id: RequestId) -> None:
        return None  # one stream for everything: nothing to close per request

    def send(self, frame: bytes, related: RequestId | None) -> Coroutine[Any, Any, None]:
        return self.ws.send_frame(frame, WSMsgType.TEXT)

    async def close(self, reason: str) -> None:
        # 1008, policy violation: the close frame's reason (at most 123 bytes) is what the client reads.
        await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode()[:123])


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    listen = gateway.config.listen
    refused = refusal(request, listen)
    if refused is not None:
        log.warning(
            "refused a WebSocket from origin %r, host %r", request.headers.get("Origin"), request.host
        )
        return refused
    admission = await admit(request, gateway, "websocket")
    if isinstance(admission, web.Response):
        return admission
    ws = web.WebSocketResponse(
        protocols=("mcp",),
        heartbeat=listen.heartbeat_seconds,
        max_msg_size=listen.max_message_bytes,
        # Deflate costs CPU on every frame and opens the door to compression bombs.
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response(
            {"error": "this endpoint speaks MCP over WebSocket: send a GET with Upgrade: websocket"},
            status=426,
        )
    await ws.prepare(request)

    channel = WebSocketChannel(ws)
    session = Session(gateway, "websocket", channel, remote=request.remote or "", view=admission.view)
    session.authenticated(admission.principal)
    request.app[OPEN_SOCKETS].add(ws)
    try:
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                await session.receive(frame.data)
            elif frame.type is WSMsgType.BINARY:
                error = InvalidRequest("Invalid Request: send each message as a text frame")
                await channel.respond(jsonrpc.dumps(jsonrpc.error_from(None, error)), None)
            elif frame.type is WSMsgType.ERROR:
                log.info("session %s: WebSocket error: %s", session.id, ws.exception())
                break
    finally:
        # The handler itself may be cancelled when the peer vanishes; the clean-up must still run whole.
        await asyncio.shield(gateway.end_session(session))
    return ws


async def close_open_sockets(app: web.Application) -> None:
    """On shutdown, close every client socket with 1001 (going away) so clients know to reconnect."""
    open_sockets = app[OPEN_SOCKETS]
    sockets = [*open_sockets]
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down") for ws in sockets),
        return_exceptions=True,
    )
