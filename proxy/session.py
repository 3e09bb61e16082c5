"""One client session: frames in, frames out, and the bookkeeping that keeps many clients apart.

The session parses each frame once, answers malformed ones itself (they never reach the chain), runs
every request as its own task so slow calls never block fast ones, and relays backend traffic to its
client in order. Closing it cancels the client's calls upstream and ends its per-client backend links.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from proxy import eras, jsonrpc
from proxy.chain import ANONYMOUS, Context, Direction, Principal
from proxy.errors import InvalidRequest, MethodNotFound, PorticoError
from proxy.jsonrpc import Kind, Message, RequestId

if TYPE_CHECKING:
    from proxy.gateway import Gateway
    from proxy.virtual_servers import VirtualServer

log = logging.getLogger("portico.session")


class Channel(Protocol):
    """How a transport carries frames to its client.

    HTTP sends each reply, and whatever relates to that request, on the request's own response; the
    WebSocket has one socket for everything and ignores the distinction.
    """

    async def respond(self, frame: bytes, request_id: RequestId | None) -> None:
        """Carry the reply to the client's request ``request_id`` (None: no usable id, or a batch)."""
        ...

    async def send(self, frame: bytes, related: RequestId | None) -> None:
        """Carry a request or notification for the client, related to one of its requests if known."""
        ...

    def finished(self, request_id: RequestId) -> None:
        """The client's request ``request_id`` is over, answered or not (a cancelled one gets no reply)."""
        ...

    async def close(self, reason: str) -> None:
        """The gateway ends the session (its credential expired or was revoked): tell the client why."""
        ...


# Before the handshake only these may be used (the specification allows ping at any time).
_BEFORE_INITIALIZE = frozenset({"initialize", "ping"})


class ClientGone(PorticoError):
    """The client's connection closed while the gateway was waiting for it."""


def new_session_id() -> str:
    """An id no client can guess (144 random bits), in the characters an ``Mcp-Session-Id`` may use."""
    return secrets.token_urlsafe(18)


class Session:
    """A client session on any transport; see the module docstring."""

    def __init__(
        self,
        gateway: Gateway,
        transport: str,
        channel: Channel,
        remote: str = "",
        view: VirtualServer | None = None,
        session_id: str | None = None,
    ) -> None:
        # Given when the session exists already (made by another gateway instance, continued here).
        self.id = session_id or new_session_id()
        # The virtual server whose endpoint the session was opened on (None: the whole aggregate).
        self.view = view
        self.gateway = gateway
        self.transport = transport
        self.remote = remote
        self.protocol_version: str | None = None
        self.client_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self.initialized = False
        self.log_level: str | None = None
        self.closed = False
        # Calls parked for a modern client's retry (see proxy.input_bridge); the session outlives its
        # transport's request until they end. ``released``: the transport has let the session go.
        self.parked = 0
        self.released = False
        # Who the client is, as the transport's authentication found; see ``authenticated``.
        self.principal: Principal = ANONYMOUS
        self._expiry: asyncio.TimerHandle | None = None
        self._channel = channel
        # Which client request a progress token belongs to, so progress travels with that request.
        self._progress_owners: dict[str | int, RequestId] = {}
        self._inflight: dict[RequestId, asyncio.Task[Any]] = {}
        self._asked: dict[int, asyncio.Future[Message]] = {}
        self._ask_ids = itertools.count(1)
        # Made on the first notification: an asyncio.Queue here cost ~3 KB per idle session.
        self._outbox: collections.deque[tuple[Context, Message]] | None = None
        self._courier: asyncio.Task[None] | None = None
        self._metrics = gateway.metrics
        # Sessions are made by transports' handlers, on the loop that runs them; kept because Python
        # 3.11's get_running_loop() makes a getpid() system call, and every request needs the loop.
        self._loop = asyncio.get_running_loop()
        # Whether a modern-era request has been answered (for the sessions metric's ``era`` label).
        self._modern = False
        gateway.register(self)

    # -- from the client ---------------------------------------------------------------------------------

    async def receive(self, frame: str | bytes) -> None:
        """Handle one frame from the client. Never raises for bad input: the client gets an error."""
        try:
            message = jsonrpc.loads(frame)
        except PorticoError as exc:
            await self._respond(jsonrpc.error_from(None, exc))
            return
        await self.receive_parsed(message)

    async def receive_parsed(self, message: Any) -> None:
        """Handle one frame's content, parsed already (by a transport that had to look inside first)."""
        if isinstance(message, list):
            await self._receive_batch(message)
            return
        outcome = await self._accept(message, self._serve)
        if isinstance(outcome, dict):
            await self._respond(outcome)

    async def _accept(
        self, message: Any, run: Callable[[Message], Coroutine[Any, Any, Any]]
    ) -> Message | asyncio.Task[Any] | None:
        """Take one message: an error reply if it is bad, the task running it if it is a request."""
        try:
            kind = jsonrpc.classify(message)
            if kind is Kind.REQUEST:
                self._check_admissible(message)
        except PorticoError as exc:
            return jsonrpc.error_from(jsonrpc.salvage_id(message), exc)
        if kind is Kind.RESPONSE:
            self._answered(message)
        elif kind is Kind.NOTIFICATION:
            await self._dispatch_notification(message)
        else:
            return self._track(message["id"], run(message))
        return None

    async def _receive_batch(self, batch: list[Any]) -> None:
        # Batches exist only in protocol version 2025-03-26: several messages in one frame, and the replies
        # to its requests back in one array.
        if not batch or self.protocol_version != "2025-03-26":
            why = "an empty batch" if batch else "batches are only part of protocol version 2025-03-26"
            await self._respond(jsonrpc.error_from(None, InvalidRequest(f"Invalid Request: {why}")))
            return
        replies: list[Message] = []
        running: list[asyncio.Task[Any]] = []
        for item in batch:
            outcome = await self._accept(item, self._answer)
            if isinstance(outcome, dict):
                replies.append(outcome)
            elif outcome is not None:
                running.append(outcome)
        for reply in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(reply, dict):
                replies.append(reply)
        if replies:
            await self._transmit(self._channel.respond(orjson.dumps(replies), None))

    def _check_admissible(self, message: Message) -> None:
        if message["id"] in self._inflight:
            raise InvalidRequest(
                f"Invalid Request: id {message['id']!r} is already used by a request in flight"
            )
        if (
            not self.protocol_version
            and message["method"] not in _BEFORE_INITIALIZE
            and not eras.is_modern(message)
        ):
            raise InvalidRequest("Invalid Request: the session is not initialized; send initialize first")

    def _track(self, request_id: RequestId, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # Requests run as tasks of their own, so a slow call never holds up the next frame.
        task = self._loop.create_task(work)
        self._inflight[request_id] = task
        task.add_done_callback(lambda _: self._forget(request_id, task))
        return task

    def _forget(self, request_id: RequestId, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(request_id) is task:
            del self._inflight[request_id]
        self._channel.finished(request_id)
        if self._progress_owners:
            for token in [t for t, owner in self._progress_owners.items() if owner == request_id]:
                del self._progress_owners[token]

    async def _serve(self, message: Message) -> None:
        reply = await self._answer(message)
        if reply is not None:
            await self._respond(reply)

    async def _answer(self, message: Message) -> Message | None:
        params = jsonrpc.params_of(message)
        meta = params.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("progressToken"), str | int):
            self._progress_owners[meta["progressToken"]] = message["id"]
        if eras.is_modern(message):
            return await self._answer_modern(message)
        route = self.gateway.resolve(message["method"], params)
        ctx = self.gateway.context(self, message, Direction.TO_BACKEND, route)
        return await self._dispatch_request(ctx, message)

    async def _dispatch_request(self, ctx: Context, message: Message) -> Message | None:
        """Run a client request through the chain, counted and timed for the metrics (and traced)."""
        started = time.perf_counter()
        reply: Message | None = None
        finished = False
        tracing = self.gateway.tracing
        try:
            if tracing.enabled:
                reply = await tracing.trace_request(ctx, message, self.gateway.to_backend.dispatch)
            else:
                reply = await self.gateway.to_backend.dispatch(ctx, message)
            finished = True
            return reply
        finally:
            # The chain turns every Exception into a reply, so only cancellation leaves ``finished`` False.
            self._metrics.request_done(ctx, reply, time.perf_counter() - started, cancelled=not finished)

    async def _answer_modern(self, message: Message) -> Message | None:
        """A 2026-07-28 request: its own ``_meta`` says who is asking; the result gets the modern fields."""
        params = jsonrpc.params_of(message)
        try:
            envelope = eras.envelope(message)
            if message["method"] in eras.LEGACY_ONLY_METHODS:
                raise MethodNotFound(
                    f"Method not found: {message['method']} is not part of {envelope.version}"
                )
        except PorticoError as exc:
            return jsonrpc.error_from(message["id"], exc)
        if self.protocol_version is None:
            # Without a handshake, the request itself says who the client is, what it can answer and
            # which logs it wants.
            self.client_capabilities, self.client_info = envelope.capabilities, envelope.client_info
            self.log_level = envelope.log_level
        route = self.gateway.resolve(message["method"], params)
        ctx = self.gateway.context(self, message, Direction.TO_BACKEND, route)
        ctx.protocol_version = envelope.version
        self._modern = True
        reply = await self._dispatch_request(ctx, message)
        if reply is not None and isinstance(reply.get("result"), dict):
            reply["result"] = eras.complete_result(message["method"], reply["result"], self.gateway.info)
        elif reply is not None and isinstance(reply.get("error"), dict):
            reply["error"] = eras.modern_error(reply["error"])
        return reply

    async def _dispatch_notification(self, message: Message) -> None:
        ctx = self.gateway.context(self, message, Direction.TO_BACKEND, None)
        await self.gateway.to_backend.dispatch(ctx, message)

    def initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer the legacy handshake with the aggregate's capabilities."""
        if self.protocol_version is not None:
            raise InvalidRequest("Invalid Request: the session is already initialized")
        version, capabilities, client_info = eras.negotiate(params)
        self.protocol_version, self.client_capabilities, self.client_info = version, capabilities, client_info
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": self.gateway.capabilities(),
            "serverInfo": dict(self.gateway.info),
        }
        instructions = self.gateway.instructions()
        if instructions:
            result["instructions"] = instructions
        return result

    @property
    def era(self) -> str:
        """``legacy`` (the handshake was made), ``modern`` (stateless requests) or ``pending``."""
        if self.protocol_version is not None:
            return "legacy"
        return "modern" if self._modern else "pending"

    def calls_in_flight(self) -> list[asyncio.Task[Any]]:
        """The tasks of the client's requests still running (each ends once its reply is sent)."""
        return list(self._inflight.values())

    def cancel(self, request_id: object) -> None:
        """The client cancelled one of its requests: stop it here and upstream; no reply follows."""
        task = self._inflight.get(request_id) if jsonrpc.is_valid_id(request_id) else None
        if task is not None:
            task.cancel()

    # -- to the client -----------------------------------------------------------------------------------

    async def ask_client(self, message: Message, timeout: float) -> Message:
        """Send a backend's request to the client under a gateway id; return the client's response.

        A client that never made the handshake speaks the modern era and cannot be sent requests; the
        question waits for its retry instead (proxy.input_bridge).
        """
        if self.protocol_version is None:
            return await self.gateway.inputs.ask(self, message)
        ask_id = next(self._ask_ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._asked[ask_id] = future
        related = self._sole_request()
        try:
            await self._send({**message, "id": ask_id}, related)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            await self._notify_cancelled(ask_id, "timed out", related)
            return jsonrpc.error(ask_id, {"code": -32001, "message": "The client did not answer in time"})
        except asyncio.CancelledError:
            await self._notify_cancelled(ask_id, "the backend cancelled the request", related)
            raise
        finally:
            self._asked.pop(ask_id, None)

    async def _notify_cancelled(self, ask_id: int, reason: str, related: RequestId | None) -> None:
        if not self.closed:
            notice = jsonrpc.notification("notifications/cancelled", {"requestId": ask_id, "reason": reason})
            await self._send(notice, related)

    def _sole_request(self) -> RequestId | None:
        # A backend's request is caused by one of this client's calls; when only one is running, the
        # gateway knows which, and HTTP can carry it on that call's own stream.
        return next(iter(self._inflight)) if len(self._inflight) == 1 else None

    def _answered(self, message: Message) -> None:
        future = self._asked.get(message.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            log.debug("session %s: response to an unknown request id %r ignored", self.id, message.get("id"))
            return
        future.set_result(message)

    async def send_message(self, message: Message) -> None:
        related = None
        params = jsonrpc.params_of(message)
        meta = params.get("_meta")
        if message.get("method") == "notifications/progress":
            token = params.get("progressToken")
            related = self._progress_owners.get(token) if isinstance(token, str | int) else None
        elif isinstance(meta, dict) and jsonrpc.is_valid_id(meta.get(eras.SUBSCRIPTION_ID_KEY)):
            # A listen stream's notification travels on that stream.
            related = meta[eras.SUBSCRIPTION_ID_KEY]
        await self._send(message, related)

    def wants(self, message: Message) -> bool:
        """Whether this client asked to see a log message of that level. A legacy client that never said
        gets everything; a modern one gets logs only when its request asked for them."""
        if message["method"] != "notifications/message":
            return True
        if self.log_level is None:
            return self.protocol_version is not None
        level = jsonrpc.params_of(message).get("level")
        levels = eras.LOG_LEVELS
        return level not in levels or levels.index(level) >= levels.index(self.log_level)

    def post(self, ctx: Context, message: Message) -> None:
        """Queue a backend notification; one courier task delivers them in the order they came."""
        if self.closed:
            return
        if self._outbox is None:
            self._outbox = collections.deque()
        self._outbox.append((ctx, message))
        if self._courier is None or self._courier.done():
            self._courier = self._loop.create_task(self._deliver_posted(self._outbox))

    async def _deliver_posted(self, outbox: collections.deque[tuple[Context, Message]]) -> None:
        while outbox:
            ctx, message = outbox.popleft()
            await self.gateway.to_client.dispatch(ctx, message)

    async def _respond(self, message: Message) -> None:
        # What ``_transmit`` does, inline: every reply passes here, and a coroutine layer costs each one.
        if self.closed:
            return
        try:
            await self._channel.respond(jsonrpc.dumps(message), message.get("id"))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %s: could not send to the client: %s", self.id, exc)

    async def _send(self, message: Message, related: RequestId | None) -> None:
        await self._transmit(self._channel.send(jsonrpc.dumps(message), related))

    async def _transmit(self, delivery: Coroutine[Any, Any, None]) -> None:
        if self.closed:
            delivery.close()
            return
        try:
            await delivery
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %s: could not send to the client: %s", self.id, exc)

    # -- who the client is --------------------------------------------------------------------------------

    def authenticated(self, principal: Principal) -> None:
        """Bind the session to the principal its transport authenticated (again, on HTTP, with every
        request). A session never outlives its credential: it ends when ``valid_until`` passes."""
        if principal is self.principal and (self._expiry is not None or principal.valid_until is None):
            return  # the same credential again (verified tokens are cached): its timer already runs
        self.principal = principal
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if principal.valid_until is not None:
            delay = max(0.0, principal.valid_until - time.time())
            self._expiry = asyncio.get_running_loop().call_later(
                delay, self.end, "the token expired; connect again with a fresh token"
            )

    def end(self, reason: str) -> None:
        """End the session from the gateway's side, telling the client ``reason``."""
        if self.closed:
            return
        log.info("session %s ended: %s", self.id, reason)
        task = asyncio.get_running_loop().create_task(self._channel.close(reason))
        task.add_done_callback(lambda _: self.gateway.end_session(self))

    # -- the end -----------------------------------------------------------------------------------------

    async def close(self) -> None:
        """The client left: cancel its calls (upstream too) and release its backend links."""
        if self.closed:
            return
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        tasks = list(self._inflight.values())
        if self._courier is not None:
            tasks.append(self._courier)
        for task in tasks:
            task.cancel()
        for future in self._asked.values():
            if not future.done():
                future.set_exception(ClientGone("the client disconnected"))
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.gateway.session_ended(self)
