"""Backends that speak the 2024-11-05 HTTP+SSE transport: one GET stream in, a POST per message out.

The stream's first event, ``endpoint``, names where to POST; it must be on the same origin as the
stream, so a backend cannot make the gateway send messages elsewhere (with its credentials, which go
with the stream's request and with every POST). The session ends with the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
from yarl import URL

from proxy.connectors.remote import RemoteConnector, trace_headers
from proxy.connectors.sse_events import SseEvent, read_events
from proxy.credentials import REFUSED, send_with_credentials
from proxy.errors import BackendUnavailable

_CONNECT = aiohttp.ClientTimeout(total=None, sock_connect=10)
_ENDPOINT_SECONDS = 10.0


class SseConnector(RemoteConnector):
    transport = "sse"

    def _start_state(self) -> None:
        self.endpoint: URL | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        headers = {"Accept": "text/event-stream"}
        try:
            self._response = await send_with_credentials(
                self.http, self.credentials, "GET", self.config.url, headers=headers, timeout=_CONNECT
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach {self.config.url}: {exc or type(exc).__name__}") from None
        if self._response.status != 200:
            self._response.release()
            raise BackendUnavailable(_refusal(self.config.url, self._response.status))
        events = read_events(self._response, self.config.max_message_bytes)
        try:
            async with asyncio.timeout(_ENDPOINT_SECONDS):
                first = await anext(events)
        except (TimeoutError, StopAsyncIteration, aiohttp.ClientError, OSError):
            self._response.release()
            raise BackendUnavailable(f"{self.config.url} sent no endpoint event") from None
        self.endpoint = self._endpoint_of(first)
        self._reader = asyncio.get_running_loop().create_task(self._read(events))

    def _endpoint_of(self, event: SseEvent) -> URL:
        stream = URL(self.config.url)
        endpoint = stream.join(URL(event.data.decode(errors="replace").strip()))
        if event.event != "endpoint" or endpoint.origin() != stream.origin():
            raise BackendUnavailable(f"{self.config.url} named no usable endpoint on its own origin")
        return endpoint

    async def _read(self, events: AsyncIterator[SseEvent]) -> None:
        reason = "the event stream ended"
        try:
            async for event in events:
                if event.event == "message":
                    self._received(event.data)
        except (aiohttp.ClientError, OSError, BackendUnavailable) as exc:
            reason = f"the event stream broke: {exc}"
        finally:
            if self._response is not None:
                self._response.release()
        self._report_closed(reason)

    async def send(self, data: bytes) -> None:
        if self.endpoint is None or self._reader is None or self._reader.done():
            raise BackendUnavailable(f"backend {self.backend!r} is not connected")
        headers = {"Content-Type": "application/json"}
        # Only a traced request is parsed (the bytes are otherwise sent as they are).
        if b'"traceparent"' in data:
            headers |= trace_headers(orjson.loads(data))
        try:
            response = await send_with_credentials(
                self.http,
                self.credentials,
                "POST",
                self.endpoint,
                headers=headers,
                data=data,
                timeout=_CONNECT,
            )
            async with response:
                if response.status >= 300:
                    raise BackendUnavailable(_refusal(self.endpoint, response.status))
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach {self.endpoint}: {exc}") from None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._response is not None:
            self._response.release()
        self._report_closed("closed by the gateway")


def _refusal(where: object, status: int) -> str:
    return f"{where}: {REFUSED}" if status == 401 else f"{where} answered HTTP {status}"
