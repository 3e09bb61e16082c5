"""Streamable HTTP in the modern era (2026-07-28): every POST stands alone.

There is no session and no handshake: the request's own ``_meta`` says who is asking, and the headers
must agree with the body. The reply is JSON, or an SSE stream when progress comes first; a client that
closes the connection has cancelled the request, and the backend is told. Notifications get 202 and go
no further (the modern era defines none from client to server on this wire). GET and DELETE have no
meaning without sessions: 405.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from proxy import eras, jsonrpc, param_headers
from proxy.errors import PorticoError
from proxy.gateway import Gateway
from proxy.jsonrpc import Kind, Message
from proxy.session import Session
from proxy.transports.authentication import Admission
from proxy.transports.http_channel import Exchange, HttpChannel, NextFrame, answer
from proxy.transports.sse import EventStore

_PEER_CHECK_SECONDS = 1.0


def speaks_modern(request: web.Request) -> bool:
    """The specification's rule: a protocol-version header that is not a handshake version is modern."""
    version = request.headers.get(eras.VERSION_HEADER)
    return version is not None and version not in eras.HANDSHAKE_VERSIONS


def not_allowed() -> web.Response:
    error = jsonrpc.error(
        None, {"code": -32600, "message": "Method Not Allowed: the 2026-07-28 era has no sessions"}
    )
    return web.Response(
        status=405, body=jsonrpc.dumps(error), content_type="application/json", headers={"Allow": "POST"}
    )


async def post(
    request: web.Request, gateway: Gateway, message: Message, kind: Kind, admission: Admission
) -> web.StreamResponse:
    if kind is not Kind.REQUEST:
        return web.Response(status=202)
    try:
        eras.envelope(message, request.headers)
        _check_param_headers(gateway, message, request)
    except PorticoError as exc:
        return _error(message["id"], exc)
    channel = HttpChannel(EventStore(0))
    session = Session(gateway, "streamable-http", channel, remote=request.remote or "", view=admission.view)
    session.authenticated(admission.principal)
    exchange = channel.open_exchange(message["id"])
    answered = False
    try:
        await session.receive_parsed(message)
        next_frame = _until_disconnect(request, exchange, session)
        response = await answer(request, channel, exchange, dict, next_frame=next_frame, status_of=_status_of)
        answered = True
        return response
    finally:
        # A call parked for the client's retry keeps the session (the input bridge ends it later), unless
        # the client went away (aiohttp cancels the handler), which cancels everything it started.
        session.released = True
        if not (answered and session.parked):
            await asyncio.shield(gateway.end_session(session))


def _check_param_headers(gateway: Gateway, message: Message, request: web.Request) -> None:
    """A tool call's Mcp-Param-* headers must mirror the arguments its tool annotates (x-mcp-header)."""
    if message["method"] != "tools/call":
        return
    params = jsonrpc.params_of(message)
    paths = gateway.catalog.param_paths.get(params.get("name"))  # type: ignore[arg-type]
    why = param_headers.mismatch(paths, params.get("arguments"), request.headers) if paths else None
    if why is not None:
        raise eras.HeaderMismatch(f"Header mismatch: {why}")


def _until_disconnect(request: web.Request, exchange: Exchange, session: Session) -> NextFrame:
    """The next frame for the client, or None once the client has gone (which cancels the request)."""

    async def take() -> tuple[bytes, bool] | None:
        waiter = asyncio.ensure_future(exchange.queue.get())
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=_PEER_CHECK_SECONDS)
            if done:
                return waiter.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
                session.cancel(exchange.request_id)
                return None

    return take


def _status_of(frame: bytes) -> int:
    if b'"error"' not in frame:
        return 200
    error = orjson.loads(frame).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return eras.HTTP_STATUS_OF_ERROR.get(code, 200) if isinstance(code, int) else 200


def _error(request_id: object, exc: PorticoError) -> web.Response:
    reply = jsonrpc.error_from(request_id if jsonrpc.is_valid_id(request_id) else None, exc)
    status = eras.HTTP_STATUS_OF_ERROR.get(exc.code, 400)
    return web.Response(status=status, body=jsonrpc.dumps(reply), content_type="application/json")
