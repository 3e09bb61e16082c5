"""MCP over WebSocket at ``/mcp`` (and each virtual server's ``/servers/{name}/mcp``): subprotocol ``mcp``,
one JSON-RPC message per text frame.

The session lives exactly as long as the socket. Origins are checked before the upgrade so a web page
on another site cannot reach a gateway on localhost (DNS rebinding); frames over the size limit close the
socket with 1009 and are never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref

from aiohttp import WSCloseCode, WSMsgType, web

from proxy import jsonrpc
from proxy.errors import InvalidRequest
from proxy.jsonrpc import RequestId
from proxy.session import Session
from proxy.transports.app_keys import GATEWAY
from proxy.transports.authentication import admit
from proxy.transports.guards import refusal
from proxy.write_batch import WriteBatch

log = logging.getLogger("portico.websocket")

# Open client sockets, so that shutdown can say goodbye (1001) instead of waiting for each to leave.
OPEN_SOCKETS = web.AppKey("open_sockets", weakref.WeakSet["WebSocketChannel"])

_FIN_TEXT = 0x81  # FIN set, opcode 1 (text)
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
# Replies a client has not read yet, in bytes, past which its next request waits (see ``_until_read``).
_UNREAD_LIMIT_BYTES = 1 << 20
_UNREAD_POLL_SECONDS = 0.01


class WebSocketChannel:
    """Everything for the client goes down its one socket, one message per text frame.

    Text frames are framed here and leave through a ``WriteBatch``: the replies that become ready in one
    turn of the event loop reach the client in one write instead of one each. aiohttp still owns the
    socket: the handshake, reading, pings and the closing handshake (before which the batch is flushed,
    since no data frame may follow a close frame).
    """

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws = ws
        self._transport = transport
        self._batch = WriteBatch(self._write)

    def _write(self, frames: bytes) -> None:
        if self.ws.closed or self._transport.is_closing():
            return  # a close frame has gone (or the peer left): nothing may follow it
        try:
            self._transport.write(frames)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("could not write to a WebSocket client: %s", exc)

    async def respond(self, frame: bytes, request_id: RequestId | None) -> None:
        self.queue(frame)

    def queue(self, frame: bytes) -> None:
        """Send ``frame`` as one text frame, with whatever else is sent during this turn of the loop."""
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        self._batch.add(text_frame(frame))

    def finished(self, request_id: RequestId) -> None:
        return None  # one stream for everything: nothing to close per request

    async def send(self, frame: bytes, related: RequestId | None) -> None:
        self.queue(frame)

    async def close(self, reason: str) -> None:
        # 1008, policy violation: the close frame's reason (at most 123 bytes) is what the client reads.
        await self.shut_down(WSCloseCode.POLICY_VIOLATION, reason)

    async def shut_down(self, code: int, reason: str) -> None:
        """Send what is pending, then close with ``code`` and ``reason`` (cut to the 123 bytes allowed)."""
        self._batch.flush()
        await self.ws.close(code=code, message=reason.encode()[:123])


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 section 5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, length))
    elif length < 1 << 16:
        header = _HEADER_16.pack(_FIN_TEXT, 126, length)
    else:
        header = _HEADER_64.pack(_FIN_TEXT, 127, length)
    return header + payload


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
    transport = request.transport
    if transport is None:  # the client left during the handshake
        return ws

    channel = WebSocketChannel(ws, transport)
    session = Session(gateway, "websocket", channel, remote=request.remote or "", view=admission.view)
    session.authenticated(admission.principal)
    request.app[OPEN_SOCKETS].add(channel)
    try:
        async for frame in ws:
            if transport.get_write_buffer_size() > _UNREAD_LIMIT_BYTES:
                await _until_read(ws, transport)
            if frame.type is WSMsgType.TEXT:
                await session.receive(frame.data)
            elif frame.type is WSMsgType.BINARY:
                error = InvalidRequest("Invalid Request: send each message as a text frame")
                channel.queue(jsonrpc.dumps(jsonrpc.error_from(None, error)))
            elif frame.type is WSMsgType.ERROR:
                log.info("session %s: WebSocket error: %s", session.id, ws.exception())
                break
    finally:
        # The handler itself may be cancelled when the peer vanishes; the clean-up must still run whole.
        await asyncio.shield(gateway.end_session(session))
    return ws


async def _until_read(ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
    """Wait while the client leaves its replies unread. Its next request is not read meanwhile, so a client
    that never reads holds TCP's window shut instead of growing the gateway's memory."""
    while transport.get_write_buffer_size() > _UNREAD_LIMIT_BYTES and not transport.is_closing():
        if ws.closed:
            return
        await asyncio.sleep(_UNREAD_POLL_SECONDS)


async def close_open_sockets(app: web.Application) -> None:
    """On shutdown, close every client socket with 1001 (going away) so clients know to reconnect."""
    channels = [*app[OPEN_SOCKETS]]
    await asyncio.gather(
        *(channel.shut_down(WSCloseCode.GOING_AWAY, "gateway shutting down") for channel in channels),
        return_exceptions=True,
    )
