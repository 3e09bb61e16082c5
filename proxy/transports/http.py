"""MCP Streamable HTTP at ``/mcp`` (the legacy, session era: protocol versions 2025-03-26 .. 2025-11-25).

- ``POST`` carries one message. A request is answered with JSON, or, as soon as the gateway has
  something to send before the reply (progress, a sampling or elicitation request), with an SSE stream
  that ends with the reply. Notifications and responses get 202.
- ``initialize`` without a session creates one; the gateway mints ``Mcp-Session-Id`` itself (never a
  backend's id, never guessable). Every later request must carry it: missing is 400, unknown or ended
  is 404, which tells the client to initialize again.
- ``GET`` opens the session's standalone SSE stream for messages unrelated to a request, or, with
  ``Last-Event-ID``, resumes a stream that broke: the missed events are replayed from the session's
  bounded event store, and a request still running carries on on the new connection.
- ``DELETE`` ends the session. Idle sessions end by themselves after ``listen.session_idle_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from proxy import eras, jsonrpc
from proxy.errors import InvalidRequest, PorticoError
from proxy.gateway import Gateway
from proxy.jsonrpc import Kind, Message
from proxy.session import Session
from proxy.transports import http_modern
from proxy.transports.app_keys import GATEWAY
from proxy.transports.authentication import Admission, admit, belongs
from proxy.transports.guards import refusal
from proxy.transports.http_channel import Exchange, HttpChannel, answer
from proxy.transports.http_sessions import HTTP_SESSIONS, HttpSessions
from proxy.transports.shared_sessions import SharedStoreUnavailable
from proxy.transports.sse import EventLog, SseSink, follow_elsewhere
from proxy.transports.websocket import handle_websocket

log = logging.getLogger("portico.http")

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
_BODY_SECONDS = 30.0


async def handle_post(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    refused = refusal(request, gateway.config.listen)
    if refused is not None:
        return refused
    problem = _content_problem(request)
    if problem is not None:
        return problem
    admission = await admit(request, gateway, "streamable-http")
    if isinstance(admission, web.Response):
        return admission
    body = await _body_of(request)
    if isinstance(body, web.Response):
        return body
    modern = http_modern.speaks_modern(request)
    message: Any = None
    try:
        message = jsonrpc.loads(body)
        if isinstance(message, list) and not modern:
            return await _post_batch(request, message, admission)
        kind = jsonrpc.classify(message)
    except PorticoError as exc:
        return _error(400, jsonrpc.salvage_id(message), exc)
    if modern:
        return await http_modern.post(request, gateway, message, kind, admission)
    return await _post_message(request, gateway, message, kind, admission)


async def _body_of(request: web.Request) -> bytes | web.Response:
    """The POST's body, or the 408/400 that says why it could not be read."""
    try:
        if request.content.is_eof():
            # Usually the whole body came with the headers: nothing to wait for, so no timer to set.
            return await request.read()
        async with asyncio.timeout(_BODY_SECONDS):
            return await request.read()
    except TimeoutError:
        return _error(408, None, InvalidRequest("Request Timeout: the body did not arrive in time"))
    except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
        # A body that is cut off or wrongly encoded: the client's fault, said plainly, no traceback.
        return _error(400, None, InvalidRequest(f"Bad Request: the body could not be read ({exc})"))


async def _post_message(
    request: web.Request, gateway: Gateway, message: Message, kind: Kind, admission: Admission
) -> web.StreamResponse:
    sessions = request.app[HTTP_SESSIONS]
    request_id = message.get("id") if kind is Kind.REQUEST else None
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None:
        if kind is not Kind.REQUEST or message["method"] != "initialize":
            return _error(
                400, request_id, InvalidRequest(f"Bad Request: the {SESSION_HEADER} header is required")
            )
        if len(sessions.clients) >= gateway.config.listen.max_sessions:
            return _too_many_sessions(request_id)
        session, channel = sessions.create(request.remote or "", admission)
    else:
        found = await _session(request, sessions, request_id, admission)
        if isinstance(found, web.Response):
            return found
        session, channel = found
    channel.last_active = time.monotonic()
    headers = {SESSION_HEADER: session.id}
    if kind is not Kind.REQUEST:
        await session.receive_parsed(message)
        # What it answers or cancels may wait on another instance that serves the session too.
        await sessions.relay(session.id, message)
        await sessions.saw(session)
        return web.Response(status=202, headers=headers)
    request_id = message["id"]
    if request_id in channel.exchanges:
        return _error(
            400, request_id, InvalidRequest(f"Invalid Request: id {request_id!r} is already in flight")
        )
    exchange = channel.open_exchange(request_id)
    new = session_id is None
    # The exchange runs in a task of its own: in this era a broken connection does not cancel the
    # request, and its events must stay on its stream (for Last-Event-ID) even if the handler is cancelled.
    relay = channel.loop.create_task(
        _relay(request, sessions, session, channel, exchange, message, headers, new)
    )
    return await asyncio.shield(relay)


async def _relay(
    request: web.Request,
    sessions: HttpSessions,
    session: Session,
    channel: HttpChannel,
    exchange: Exchange,
    message: Message,
    headers: dict[str, str],
    new: bool,
) -> web.StreamResponse:
    try:
        await session.receive_parsed(message)
        # A failed initialize leaves no session behind, so its reply names none.
        return await answer(request, channel, exchange, lambda: headers if session.protocol_version else {})
    finally:
        channel.exchanges.pop(exchange.request_id, None)
        channel.last_active = time.monotonic()
        if new and session.protocol_version is None:
            await sessions.end(session.id)
        else:
            # Before the reply leaves: the client's next request may reach another instance.
            await sessions.saw(session)


async def _post_batch(request: web.Request, batch: list[Any], admission: Admission) -> web.StreamResponse:
    """Several messages in one POST: part of protocol version 2025-03-26 only. The replies to its
    requests come back as one JSON array (what precedes a reply is not streamed in a batch)."""
    found = await _session(request, request.app[HTTP_SESSIONS], None, admission)
    if isinstance(found, web.Response):
        return found
    session, channel = found
    if not batch or session.protocol_version != "2025-03-26":
        why = "an empty batch" if batch else "batches are only part of protocol version 2025-03-26"
        return _error(400, None, InvalidRequest(f"Invalid Request: {why}"))
    channel.last_active = time.monotonic()
    replies: list[Message] = []
    exchanges: list[Exchange] = []
    for item in batch:
        try:
            kind = jsonrpc.classify(item)
            if kind is Kind.REQUEST and item["id"] in channel.exchanges:
                raise InvalidRequest(f"Invalid Request: id {item['id']!r} is already in flight")
        except PorticoError as exc:
            replies.append(jsonrpc.error_from(jsonrpc.salvage_id(item), exc))
            continue
        if kind is Kind.REQUEST:
            exchanges.append(channel.open_exchange(item["id"]))
        await session.receive_parsed(item)
    try:
        for exchange in exchanges:
            frame, final = await exchange.queue.get()
            while not final:
                frame, final = await exchange.queue.get()
            if frame:
                replies.append(orjson.loads(frame))
    finally:
        for exchange in exchanges:
            channel.exchanges.pop(exchange.request_id, None)
    if not replies:
        return web.Response(status=202, headers={SESSION_HEADER: session.id})
    return web.Response(
        body=orjson.dumps(replies), content_type="application/json", headers={SESSION_HEADER: session.id}
    )


async def handle_get(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handle_websocket(request)
    gateway = request.app[GATEWAY]
    refused = _session_verb_refusal(request, gateway)
    if refused is not None:
        return refused
    if not _accepts(request, "text/event-stream"):
        return _error(406, None, InvalidRequest("Not Acceptable: a GET needs Accept: text/event-stream"))
    admission = await admit(request, gateway, "streamable-http")
    if isinstance(admission, web.Response):
        return admission
    sessions = request.app[HTTP_SESSIONS]
    found = await _session(request, sessions, None, admission)
    if isinstance(found, web.Response):
        return found
    session, channel = found
    channel.last_active = time.monotonic()
    await sessions.saw(session)
    headers = {SESSION_HEADER: session.id}
    last_event = request.headers.get("Last-Event-ID")
    if last_event is None:
        return await _standalone(request, sessions, session, channel, headers, after=0)
    try:
        replay = await channel.store.after(last_event)
    except SharedStoreUnavailable:
        return _shared_store_down(None)
    if replay is None:
        return _error(400, None, InvalidRequest("Bad Request: Last-Event-ID is unknown or too old to replay"))
    stream, events = replay
    if stream == channel.standalone_stream:
        after = events[0][0] - 1 if events else _seq(last_event)
        return await _standalone(request, sessions, session, channel, headers, after=after)
    return await _resume_exchange(request, channel, stream, _seq(last_event), headers)


async def _standalone(
    request: web.Request,
    sessions: HttpSessions,
    session: Session,
    channel: HttpChannel,
    headers: dict[str, str],
    after: int,
) -> web.StreamResponse:
    if channel.standalone is not None and channel.standalone.check_alive():
        return _error(409, None, InvalidRequest("Conflict: this session already has an open GET stream"))
    sink = await SseSink.open(request, channel.standalone_stream, headers)
    try:
        await sessions.opened_stream(session.id, channel)
        if after:
            await _catch_up(sink, channel.store, channel.standalone_stream, after)
        channel.standalone = sink
        await sink.keep_alive_until(channel.ended)
    finally:
        # However the handler ends (the peer left, or aiohttp cancelled it), this stream is over.
        sink.alive = False
    return sink.response


async def _resume_exchange(
    request: web.Request, channel: HttpChannel, stream: int, after: int, headers: dict[str, str]
) -> web.StreamResponse:
    sink = await SseSink.open(request, stream, headers)
    after = await _catch_up(sink, channel.store, stream, after)
    exchange = channel.exchange_on(stream)
    if exchange is not None and not exchange.done.is_set():
        # No await between the last catch-up and taking over, so no event can fall in between.
        exchange.sink = sink
        try:
            await sink.keep_alive_until(exchange.done)
        finally:
            sink.alive = False
    elif exchange is None:
        # The request runs on another instance (sessions shared through Redis): what it sends next
        # reaches this one through the event log.
        patience = request.app[GATEWAY].config.listen.session_idle_seconds
        await follow_elsewhere(sink, channel.store, stream, after, patience)
    return sink.response


async def _catch_up(sink: SseSink, store: EventLog, stream: int, after: int) -> int:
    """Replay ``stream``'s events after ``after`` until none is left; the last sequence replayed."""
    while True:
        replay = await store.after(f"{stream}-{after}")
        events = replay[1] if replay else []
        if not events:
            return after
        await sink.replay(events)
        after = events[-1][0]


async def handle_delete(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    refused = _session_verb_refusal(request, gateway)
    if refused is not None:
        return refused
    admission = await admit(request, gateway, "streamable-http")
    if isinstance(admission, web.Response):
        return admission
    sessions = request.app[HTTP_SESSIONS]
    found = await _session(request, sessions, None, admission)
    if isinstance(found, web.Response):
        return found
    await sessions.end(found[0].id)
    return web.Response(status=200)


def _session_verb_refusal(request: web.Request, gateway: Gateway) -> web.Response | None:
    """GET and DELETE: a foreign Origin or Host is 403; in the modern era, which has no sessions, 405."""
    refused = refusal(request, gateway.config.listen)
    if refused is None and http_modern.speaks_modern(request):
        refused = http_modern.not_allowed()
    return refused


async def _session(
    request: web.Request, sessions: HttpSessions, request_id: Any, admission: Admission
) -> tuple[Session, HttpChannel] | web.Response:
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None:
        return _error(
            400, request_id, InvalidRequest(f"Bad Request: the {SESSION_HEADER} header is required")
        )
    client = sessions.clients.get(session_id)
    if client is None and sessions.shared:
        if len(sessions.clients) >= request.app[GATEWAY].config.listen.max_sessions:
            # A copy costs what a session costs; past the bound this instance takes no more.
            return _too_many_sessions(request_id)
        try:
            client = await sessions.adopt(session_id, request.remote or "", admission)
        except SharedStoreUnavailable:
            return _shared_store_down(request_id)
    if client is None or client[0].closed or not belongs(client[0], admission):
        return _error(404, request_id, InvalidRequest("Session not found; initialize a new session"))
    version = request.headers.get(VERSION_HEADER)
    if version is not None and version not in eras.HANDSHAKE_VERSIONS:
        supported = ", ".join(eras.HANDSHAKE_VERSIONS)
        return _error(
            400,
            request_id,
            InvalidRequest(f"Bad Request: unsupported {VERSION_HEADER} {version!r} (supported: {supported})"),
        )
    return client


def _too_many_sessions(request_id: Any) -> web.Response:
    busy = PorticoError("Service Unavailable: too many sessions; try again later")
    return _error(503, request_id, busy, retry=True)


def _shared_store_down(request_id: Any) -> web.Response:
    # Only this request fails: the client may try again, on this instance or another.
    down = PorticoError("Service Unavailable: the shared session store (Redis) did not answer; try again")
    return _error(503, request_id, down, retry=True)


def _content_problem(request: web.Request) -> web.Response | None:
    if request.content_type != "application/json":
        return _error(
            415, None, InvalidRequest("Unsupported Media Type: Content-Type must be application/json")
        )
    if not (_accepts(request, "application/json") and _accepts(request, "text/event-stream")):
        return _error(
            406,
            None,
            InvalidRequest("Not Acceptable: Accept must list application/json and text/event-stream"),
        )
    return None


def _accepts(request: web.Request, media_type: str) -> bool:
    accept = request.headers.get("Accept", "")
    return media_type in accept or "*/*" in accept


def _seq(event_id: str) -> int:
    return int(event_id.partition("-")[2])


def _error(status: int, request_id: Any, exc: PorticoError, *, retry: bool = False) -> web.Response:
    body = jsonrpc.dumps(jsonrpc.error_from(request_id if jsonrpc.is_valid_id(request_id) else None, exc))
    headers = {"Retry-After": "5"} if retry else None
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
