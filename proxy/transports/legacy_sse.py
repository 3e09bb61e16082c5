"""The HTTP+SSE transport of protocol version 2024-11-05, for clients that predate Streamable HTTP.

``GET /sse`` opens the session's one stream; its first event, ``endpoint``, tells the client where to
POST (``/messages?session_id=...``). Every POSTed message gets 202, and everything for the client (replies,
requests, notifications) arrives on the stream as ``message`` events. The session ends with the stream.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from proxy import jsonrpc
from proxy.errors import InvalidRequest, PorticoError
from proxy.jsonrpc import RequestId
from proxy.session import Session
from proxy.transports.app_keys import GATEWAY
from proxy.transports.authentication import admit, belongs
from proxy.transports.guards import refusal
from proxy.transports.sse import SseSink

log = logging.getLogger("portico.sse")

MESSAGES_PATH = "/messages"


class SseChannel:
    """Everything for the client goes down its one event stream."""

    def __init__(self, sink: SseSink) -> None:
        self.sink = sink
        self.ended = asyncio.Event()

    async def respond(self, frame: bytes, request_id: RequestId | None) -> None:
        await self.sink.write_event("message", frame)

    def finished(self, request_id: RequestId) -> None:
        return None  # one stream for everything: nothing to close per request

    async def send(self, frame: bytes, related: RequestId | None) -> None:
        await self.sink.write_event("message", frame)

    async def close(self, reason: str) -> None:
        self.ended.set()


LEGACY_SESSIONS = web.AppKey("legacy_sse_sessions", dict[str, Session])


async def handle_stream(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    refused = refusal(request, gateway.config.listen)
    if refused is not None:
        return refused
    admission = await admit(request, gateway, "sse")
    if isinstance(admission, web.Response):
        return admission
    sink = await SseSink.open(request, 0, {})
    channel = SseChannel(sink)
    session = Session(gateway, "sse", channel, remote=request.remote or "")
    session.authenticated(admission.principal)
    sessions = request.app[LEGACY_SESSIONS]
    sessions[session.id] = session
    try:
        await sink.write_event("endpoint", f"{MESSAGES_PATH}?session_id={session.id}".encode())
        await sink.keep_alive_until(channel.ended)
    finally:
        sessions.pop(session.id, None)
        await asyncio.shield(gateway.end_session(session))
    return sink.response


async def handle_message(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    refused = refusal(request, gateway.config.listen)
    if refused is not None:
        return refused
    admission = await admit(request, gateway, "sse")
    if isinstance(admission, web.Response):
        return admission
    session = request.app[LEGACY_SESSIONS].get(request.query.get("session_id", ""))
    if session is None or not belongs(session, admission):
        return web.json_response({"error": "unknown session; open GET /sse first"}, status=404)
    if request.content_type != "application/json":
        return _error(415, InvalidRequest("Unsupported Media Type: Content-Type must be application/json"))
    body = await request.read()
    try:
        message = jsonrpc.loads(body)
        if not isinstance(message, dict | list):
            raise InvalidRequest("Invalid Request: a message must be a JSON object")
    except PorticoError as exc:
        return _error(400, exc)
    # Replies, errors included, travel on the event stream like everything else.
    await session.receive(body)
    return web.Response(status=202, text="Accepted")


def _error(status: int, exc: PorticoError) -> web.Response:
    return web.Response(
        status=status, body=jsonrpc.dumps(jsonrpc.error_from(None, exc)), content_type="application/json"
    )
