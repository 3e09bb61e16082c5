"""Backends reached over WebSocket: subprotocol ``mcp``, one JSON-RPC message per text frame.

Credentials go with the handshake; a handshake refused with 401 is tried once more with fresh ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import aiohttp

from proxy.connectors.remote import RemoteConnector
from proxy.credentials import REFUSED
from proxy.errors import BackendUnavailable

_CONNECT_TIMEOUT_SECONDS = 10.0
_HEARTBEAT_SECONDS = 20.0


class WebSocketConnector(RemoteConnector):
    transport = "websocket"

    def _start_state(self) -> None:
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        try:
            self._ws = await self._connect_with_credentials()
        except aiohttp.WSServerHandshakeError as exc:
            why = REFUSED if exc.status == 401 else str(exc)
            raise BackendUnavailable(f"cannot connect to {self.config.url}: {why}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(
                f"cannot connect to {self.config.url}: {exc or type(exc).__name__}"
            ) from None
        self._reader = asyncio.create_task(self._read(self._ws), name=f"{self.backend}-ws")

    async def _connect_with_credentials(self) -> aiohttp.ClientWebSocketResponse:
        """The handshake carries the credentials; one refused with 401 is tried once more with fresh ones."""
        # No principal: a connection is shared by every client (see proxy.credentials).
        presented = await self.credentials.headers(None)
        try:
            return await self._connect(presented)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status != 401 or not await self.credentials.rejected(presented, None):
                raise
        return await self._connect(await self.credentials.headers(None))

    async def _connect(self, headers: Mapping[str, str]) -> aiohttp.ClientWebSocketResponse:
        async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
            return await self.http.ws_connect(
                self.config.url,
                protocols=("mcp",),
                headers=headers,
                heartbeat=_HEARTBEAT_SECONDS,
                max_msg_size=self.config.max_message_bytes,
                # Deflate costs CPU on every frame and opens the door to compression bombs.
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reason = "connection closed"
        try:
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT or frame.type is aiohttp.WSMsgType.BINARY:
                    self._received(frame.data)
                elif frame.type is aiohttp.WSMsgType.ERROR:
                    reason = f"connection error: {ws.exception()}"
                    break
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"connection error: {exc}"
        if ws.close_code is not None:
            reason = f"{reason} (close code {ws.close_code})"
        self._report_closed(reason)

    async def send(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise BackendUnavailable(f"backend {self.backend!r} is not connected")
        try:
            await ws.send_frame(data, aiohttp.WSMsgType.TEXT)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise BackendUnavailable(f"backend {self.backend!r} connection failed: {exc}") from None

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
                    await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._report_closed("closed by the gateway")
