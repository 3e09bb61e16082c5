"""Backends reached over Streamable HTTP, in either era: one POST per message.

A POSTed request is answered with JSON or with an SSE stream that ends with the reply (and may carry the
backend's own requests and notifications first); notifications and responses get 202. The backend's
``Mcp-Session-Id`` is kept here and never shown to clients. After the handshake a GET stream carries what
the backend sends on its own (``list_changed``, ``resources/updated``), resumed with ``Last-Event-ID``
when it breaks. HTTP failures become JSON-RPC errors for the request they answer.

A modern-era request (its ``_meta`` names the protocol version) stands alone: no session id, and the
headers repeat the method and target (``Mcp-Method``, ``Mcp-Name``). Such a request is cancelled by
closing its response, not with ``notifications/cancelled``. A backend that refuses the handshake with
an HTTP client error may be an old HTTP+SSE server; ``fallback`` offers that connector instead.

Every request carries the backend's credentials (``proxy.credentials``); one answered 401 is sent once
more with fresh ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson

from proxy import eras, jsonrpc, param_headers
from proxy.connectors.base import Connector
from proxy.connectors.remote import RemoteConnector, trace_headers
from proxy.connectors.sse import SseConnector
from proxy.connectors.sse_events import read_events
from proxy.credentials import REFUSED, send_with_credentials
from proxy.errors import BackendUnavailable, ErrorCode

_CONNECT = aiohttp.ClientTimeout(total=None, sock_connect=10)
_CLOSE_SECONDS = 3.0
_RECONNECT_SECONDS = 1.0


class StreamableHttpConnector(RemoteConnector):
    transport = "streamable-http"

    def _start_state(self) -> None:
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._initialize_id: Any = None
        # The HTTP status with which the backend refused the handshake, if it did.
        self._handshake_refused: int | None = None
        # Response streams of modern requests still being read, by request id: closing one cancels it.
        self._modern_streams: dict[Any, asyncio.Task[None]] = {}
        # Tool name -> the Mcp-Param-* headers its calls carry (x-mcp-header annotations).
        self._param_paths: dict[str, dict[str, param_headers.Path]] = {}
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def _open(self) -> None:
        # Nothing to connect: the first POST (initialize) opens the session.
        return None

    def fallback(self) -> Connector | None:
        if self._handshake_refused is None:
            return None
        self.log.info("the handshake was refused (HTTP %d); trying HTTP+SSE", self._handshake_refused)
        return SseConnector(self.backend, self.config, self.http, self.credentials)

    def note_tools(self, tools: tuple[dict[str, Any], ...]) -> None:
        self._param_paths = {}
        for tool in tools:
            with contextlib.suppress(param_headers.InvalidAnnotation):
                paths = param_headers.annotated_paths(tool.get("inputSchema"))
                if paths and isinstance(tool.get("name"), str):
                    self._param_paths[tool["name"]] = paths

    def _headers(self, accept: str, message: dict[str, Any] | None = None) -> dict[str, str]:
        headers = {"Accept": accept}
        if message is not None:
            headers |= trace_headers(message)
        if message is not None and eras.is_modern(message):
            headers |= eras.request_headers(message)
            params = jsonrpc.params_of(message)
            if message.get("method") == "tools/call":
                paths = self._param_paths.get(str(params.get("name")), {})
                headers |= param_headers.headers_for(paths, params.get("arguments"))
            return headers
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise BackendUnavailable(f"backend {self.backend!r} is closed")
        message = orjson.loads(data)
        if message.get("method") == "initialize":
            self._initialize_id = message.get("id")
        if message.get("method") == "notifications/cancelled" and self._close_stream(message):
            return
        headers = self._headers("application/json, text/event-stream", message) | {
            "Content-Type": "application/json"
        }
        try:
            response = await self._request("POST", headers, data=data)
        except aiohttp.ClientConnectorError as exc:
            self._gone(f"the backend is unreachable: {exc}")
            raise BackendUnavailable(f"cannot reach {self.config.url}: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            self._spawn(self._check_alive())
            raise BackendUnavailable(f"cannot reach {self.config.url}: {exc or type(exc).__name__}") from None
        if self._initialize_id is not None and message.get("id") == self._initialize_id:
            self.session_id = response.headers.get("Mcp-Session-Id")
        await self._take(response, message)
        if message.get("method") == "notifications/initialized":
            self._spawn(self._listen())

    async def _request(self, method: str, headers: dict[str, str], **options: Any) -> aiohttp.ClientResponse:
        # No principal: connectors are shared by every client (see proxy.credentials).
        return await send_with_credentials(
            self.http, self.credentials, method, self.config.url, headers=headers, timeout=_CONNECT, **options
        )

    def _close_stream(self, cancellation: dict[str, Any]) -> bool:
        """Cancel a modern request the way that era says: close its response. False if there is none."""
        stream = self._modern_streams.pop(jsonrpc.params_of(cancellation).get("requestId"), None)
        if stream is None:
            return False
        stream.cancel()
        return True

    async def _take(self, response: aiohttp.ClientResponse, sent: dict[str, Any]) -> None:
        modern = eras.is_modern(sent)
        if response.status == 404 and self.session_id and not modern:
            response.release()
            self._gone("the backend ended the session (404)")
            raise BackendUnavailable(f"backend {self.backend!r} ended the session")
        content_type = response.headers.get("Content-Type", "")
        if response.status == 200 and content_type.startswith("text/event-stream"):
            # Read the stream in the background: the reply comes through it when it is ready.
            stream = self._spawn(self._drain(response, sent))
            if modern and "id" in sent:
                self._modern_streams[sent["id"]] = stream
                stream.add_done_callback(lambda _: self._modern_streams.pop(sent["id"], None))
            return
        body = await self._read(response)
        if 200 <= response.status < 300:
            if body.strip():
                self._received(body)
            return
        self._failed(sent, response.status, body)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"reading from {self.config.url} failed: {exc}") from None
        finally:
            response.release()

    def _failed(self, sent: dict[str, Any], status: int, body: bytes) -> None:
        # An HTTP error answers the request it came back for; one carrying a JSON-RPC error says more.
        # Refused credentials say nothing about the transport: no fallback for those.
        if sent.get("method") == "initialize" and 400 <= status < 500 and status not in (401, 403):
            self._handshake_refused = status
        if "id" not in sent or "method" not in sent:
            self.log.warning("POST answered %d: %.200r", status, body)
            return
        with contextlib.suppress(orjson.JSONDecodeError):
            reply = orjson.loads(body)
            if isinstance(reply, dict) and reply.get("id") == sent["id"] and "error" in reply:
                self._deliver(reply)
                return
        what = f"the backend answered HTTP {status}" if status else "the backend's reply stream ended early"
        if status == 401:
            what = REFUSED
        error = {"code": ErrorCode.BACKEND_UNAVAILABLE, "message": what}
        self._deliver(jsonrpc.error(sent["id"], error))

    async def _drain(self, response: aiohttp.ClientResponse, sent: dict[str, Any]) -> None:
        answered = False
        try:
            async for event in read_events(response, self.config.max_message_bytes):
                if event.event == "message":
                    message = self._received(event.data)
                    answered = answered or _answers(message, sent)
        except (aiohttp.ClientError, OSError, BackendUnavailable) as exc:
            self.log.warning("a response stream broke: %s", exc)
            self._spawn(self._check_alive())
        except asyncio.CancelledError:
            # Closing, not releasing: the connection must really end, since that is what cancels.
            response.close()
            raise
        finally:
            response.release()
        if not answered and not self._closed:
            # The stream ended without the reply (the backend died, say): its caller must not wait forever.
            self._failed(sent, 0, b"")

    def _deliver(self, message: dict[str, Any]) -> None:
        if self._initialize_id is not None and message.get("id") == self._initialize_id:
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                self.protocol_version = result["protocolVersion"]
        super()._deliver(message)

    async def _listen(self) -> None:
        """The GET stream for what the backend sends on its own; reconnects, resuming, while open."""
        last_event: str | None = None
        while not self._closed:
            headers = self._headers("text/event-stream")
            if last_event:
                headers["Last-Event-ID"] = last_event
            try:
                async with await self._request("GET", headers) as response:
                    if response.status != 200:
                        # 405: this backend offers no such stream (401: it refused fresh credentials too).
                        return
                    async for event in read_events(response, self.config.max_message_bytes):
                        last_event = event.id or last_event
                        if event.event == "message":
                            self._received(event.data)
            except aiohttp.ClientConnectorError as exc:
                # Nobody listens at the backend's address any more: it is gone, not just the stream.
                self._gone(f"the backend is unreachable: {exc}")
                return
            except (aiohttp.ClientError, OSError, BackendUnavailable) as exc:
                self.log.info("the GET stream broke: %s", exc)
            await asyncio.sleep(_RECONNECT_SECONDS)

    async def _check_alive(self) -> None:
        """A connection broke mid-exchange: find out whether the backend is still there at all.

        Any HTTP answer means it is; a refused connection means it is gone, which the gateway must know
        even when no stream is open to tell it (a modern backend has none).
        """
        if self._closed:
            return
        try:
            # Without credentials: any HTTP answer, a 401 too, says the backend is there.
            async with self.http.head(self.config.url, timeout=_CONNECT):
                return
        except aiohttp.ClientConnectorError as exc:
            self._gone(f"the backend is unreachable: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            self.log.info("could not tell whether the backend is up: %s", exc)

    def _gone(self, reason: str) -> None:
        self._closed = True
        self._report_closed(reason)

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self.session_id:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, BackendUnavailable):
                async with asyncio.timeout(_CLOSE_SECONDS):
                    response = await self._request("DELETE", self._headers("application/json"))
                    response.release()
        self._report_closed("closed by the gateway")


def _answers(message: dict[str, Any] | None, sent: dict[str, Any]) -> bool:
    """Whether ``message`` is the reply to the request ``sent``."""
    if message is None or "id" not in sent or "method" in message:
        return False
    return bool(message.get("id") == sent["id"])
