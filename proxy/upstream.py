"""One MCP client connection to a backend, over any connector: era, handshake, ids and pending calls.

The link finds out which era the backend speaks, as the specification describes: a ``server/discover``
probe first (a modern server answers it), and the legacy ``initialize`` handshake when the probe fails in
any way. On a modern link every request carries the envelope (protocol version, client capabilities and
info) in ``_meta``; the caller's own envelope wins where it sent one.

The link owns the upstream id space: every request it sends gets the next integer, so ids from
different clients can never collide on the backend. Requests the backend sends (sampling, elicitation,
roots) and its notifications go to the link's ``UpstreamHandler``, which decides whose they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any, Protocol

from proxy import eras, jsonrpc
from proxy.connectors.base import Connector
from proxy.errors import BackendTimeout, BackendUnavailable, InvalidRequest
from proxy.jsonrpc import Kind, Message, RequestId

log = logging.getLogger("portico.upstream")

LEGACY_VERSIONS = eras.HANDSHAKE_VERSIONS
# The discovery probe gets at most this long: a legacy server answers an unknown method at once, and one
# that says nothing is treated as legacy rather than holding up start-up.
_PROBE_SECONDS = 10.0


class UpstreamHandler(Protocol):
    """Receives what a backend sends on its own initiative."""

    def on_server_request(self, link: UpstreamLink, message: Message) -> None: ...

    def on_server_notification(self, link: UpstreamLink, message: Message) -> None: ...

    def on_link_closed(self, link: UpstreamLink, reason: str) -> None: ...


class UpstreamLink:
    """An initialized MCP session with one backend."""

    def __init__(
        self, backend: str, connector: Connector, handler: UpstreamHandler, owner: str | None
    ) -> None:
        self.backend = backend
        self.connector = connector
        self.handler = handler
        # The client session this link serves alone, or None for a link shared by every client.
        self.owner = owner
        # Whose calls a per-client link has carried: a warm link is handed only to the same principal,
        # since a backend may keep state per connection.
        self.subject: str | None = None
        # "legacy" (handshake sessions) or "modern" (2026-07-28, stateless), once started.
        self.era = "legacy"
        # What the backend said of itself: capabilities, serverInfo, instructions, protocolVersion.
        self.server: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.client_info: dict[str, Any] = {}
        self.closed = False
        self.close_reason = ""
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, asyncio.Future[Message]] = {}
        # Fire-and-forget sends stay referenced until done, so the event loop cannot drop them.
        self._background: set[asyncio.Task[None]] = set()
        # Links are opened by a backend's coroutines; kept because get_running_loop() costs a getpid()
        # system call on Python 3.11, and every request needs the loop.
        self._loop = asyncio.get_running_loop()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def start(
        self, capabilities: dict[str, Any], client_info: dict[str, Any], timeout: float, era: str = "auto"
    ) -> None:
        """Connect and learn the backend's era (``era`` "auto"), or use the one given; raises
        BackendUnavailable if the backend cannot be reached or speaks neither."""
        self.capabilities, self.client_info = capabilities, client_info
        await self.connector.open(self._on_message, self._on_closed)
        if era != "legacy" and await self._discover(timeout, required=era == "modern"):
            return
        await self._handshake(timeout)

    async def _discover(self, timeout: float, *, required: bool) -> bool:
        """Probe with ``server/discover``; True when the backend speaks the modern era."""
        params = eras.with_envelope({}, self.capabilities, self.client_info)
        why = ""
        try:
            reply = await self.request("server/discover", params, timeout=min(timeout, _PROBE_SECONDS))
        except BackendTimeout:
            reply, why = {}, "no answer to server/discover"
        result = reply.get("result")
        versions = result.get("supportedVersions") if isinstance(result, dict) else None
        if isinstance(result, dict) and isinstance(versions, list) and eras.MODERN_VERSION in versions:
            meta = result.get("_meta")
            self.era = "modern"
            self.server = {
                "protocolVersion": eras.MODERN_VERSION,
                "capabilities": result.get("capabilities") or {},
                "serverInfo": (meta.get(eras.SERVER_INFO_KEY) if isinstance(meta, dict) else None) or {},
                "instructions": result.get("instructions"),
            }
            return True
        if required:
            why = why or _describe(reply)
            raise BackendUnavailable(f"the backend does not speak {eras.MODERN_VERSION}: {why}")
        return False

    async def _handshake(self, timeout: float) -> None:
        params = {
            "protocolVersion": LEGACY_VERSIONS[0],
            "capabilities": self.capabilities,
            "clientInfo": self.client_info,
        }
        reply = await self.request("initialize", params, timeout=timeout)
        if "error" in reply:
            raise BackendUnavailable(f"initialize failed: {reply['error'].get('message')}")
        result = reply.get("result")
        if not isinstance(result, dict) or result.get("protocolVersion") not in LEGACY_VERSIONS:
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            raise BackendUnavailable(f"initialize answered an unsupported protocol version {version!r}")
        self.server = result
        await self.notify("notifications/initialized")

    @property
    def modern(self) -> bool:
        return self.era == "modern"

    def new_id(self) -> int:
        """An id for a request sent later with ``request(..., request_id=...)``; streams need theirs first."""
        return next(self._ids)

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None,
        request_id: int | None = None,
    ) -> Message:
        """Send a request and wait for the backend's response message (``result`` or ``error``).

        On timeout or cancellation the backend is told (``notifications/cancelled``, or on modern HTTP
        by closing the response), as the specification asks, so it can stop working on something nobody
        waits for. ``timeout`` None is for streams that last until cancelled (``subscriptions/listen``).
        """
        if self.closed:
            raise BackendUnavailable(f"backend {self.backend!r} is unavailable: {self.close_reason}")
        if self.modern:
            params = eras.with_envelope(params, self.capabilities, self.client_info)
        if request_id is None:
            request_id = next(self._ids)
        future: asyncio.Future[Message] = self._loop.create_future()
        self._pending[request_id] = future
        # The deadline is a timer that fails the reply's future: asyncio.timeout costs several times as
        # much (it cancels and un-cancels the task), and this runs for every call.
        expiry = None if timeout is None else self._loop.call_later(timeout, _expire, future)
        data = jsonrpc.dumps(jsonrpc.request(request_id, method, params))
        try:
            if self.connector.sends_at_once():
                await self.connector.send(data)
            else:
                # The send is inside the deadline too: a backend that stops reading fills its pipe, and
                # then the write itself waits (an HTTP connector's send waits for the POST, too).
                async with asyncio.timeout(timeout):
                    await self.connector.send(data)
            return await future
        except TimeoutError:
            self._cancel_upstream(request_id, "request timed out")
            raise BackendTimeout(f"backend {self.backend!r} did not answer {method} in time") from None
        except asyncio.CancelledError:
            self._cancel_upstream(request_id, "the client cancelled the request")
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self.connector.send(jsonrpc.dumps(jsonrpc.notification(method, params)))

    async def respond(self, message: Message) -> None:
        """Answer a request the backend sent (the id is the backend's own)."""
        with contextlib.suppress(BackendUnavailable):
            await self.connector.send(jsonrpc.dumps(message))

    async def close(self) -> None:
        await self.connector.close()

    def _cancel_upstream(self, request_id: RequestId, reason: str) -> None:
        if self.closed or request_id not in self._pending:
            return
        message = jsonrpc.notification("notifications/cancelled", {"requestId": request_id, "reason": reason})
        task = asyncio.get_running_loop().create_task(self._send_quietly(message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_quietly(self, message: Message) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.connector.send(jsonrpc.dumps(message))

    def _on_message(self, message: Message) -> None:
        try:
            kind = jsonrpc.classify(message)
        except InvalidRequest as exc:
            log.warning("backend %s sent an invalid message (%s): %.200r", self.backend, exc.message, message)
            return
        if kind is Kind.RESPONSE:
            future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
        elif kind is Kind.REQUEST:
            self.handler.on_server_request(self, message)
        else:
            self.handler.on_server_notification(self, message)

    def _on_closed(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        failure = BackendUnavailable(f"backend {self.backend!r} is unavailable: {reason}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self.handler.on_link_closed(self, reason)


def _expire(future: asyncio.Future[Message]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _describe(reply: Message) -> str:
    error = reply.get("error")
    if isinstance(error, dict):
        return f"error {error.get('code')}: {error.get('message')}"
    return "an answer without supportedVersions"
