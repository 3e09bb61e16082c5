"""A small, real MCP client over WebSocket for the tests: raw JSON-RPC, so tests see the exact wire."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

Message = dict[str, Any]
RequestHandler = Callable[[Message], Awaitable[dict[str, Any]]]

CLIENT_INFO = {"name": "portico-tests", "version": "1.0"}


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.error = error


class RawClient:
    """Sends requests with chosen ids, keeps every notification, answers server requests via handlers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.notifications: list[Message] = []
        self.server_requests: list[Message] = []
        self.handlers: dict[str, RequestHandler] = {}
        self.unmatched: list[Message] = []
        self._ids = itertools.count(1)
        self._waiting: dict[Any, asyncio.Future[Message]] = {}
        self._notified = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, **kwargs: Any) -> RawClient:
        ws = await http.ws_connect(url, protocols=("mcp",), **kwargs)
        return cls(ws)

    async def initialize(
        self, capabilities: dict[str, Any] | None = None, version: str = "2025-11-25"
    ) -> Message:
        result = await self.call(
            "initialize",
            {"protocolVersion": version, "capabilities": capabilities or {}, "clientInfo": CLIENT_INFO},
        )
        await self.notify("notifications/initialized")
        return result

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def send(self, message: Message) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, id: Any = None, timeout: float = 15.0
    ) -> Message:
        """Send a request and return the whole response message."""
        request_id = next(self._ids) if id is None else id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(request_id, None)

    async def call(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Send a request and return its result, raising RpcError for an error response."""
        reply = await self.request(method, params, **kwargs)
        if "error" in reply:
            raise RpcError(reply["error"])
        result: dict[str, Any] = reply["result"]
        return result

    async def list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        """Every item of a list method, following nextCursor."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        while True:
            page = await self.call(method, params)
            items += page[key]
            if not page.get("nextCursor"):
                return items
            params = {"cursor": page["nextCursor"]}

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: Message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)

    async def next_frame(self, timeout: float = 5.0) -> Message:
        """The next message that no pending request claimed (for raw-frame tests)."""
        async with asyncio.timeout(timeout):
            async with self._notified:
                await self._notified.wait_for(lambda: bool(self.unmatched))
                return self.unmatched.pop(0)

    async def wait_notification(
        self, method: str, timeout: float = 10.0, where: Callable[[Message], bool] = lambda _: True
    ) -> Message:
        async with asyncio.timeout(timeout):
            async with self._notified:
                await self._notified.wait_for(
                    lambda: any(n["method"] == method and where(n) for n in self.notifications)
                )
                return next(n for n in self.notifications if n["method"] == method and where(n))

    def notifications_of(self, method: str) -> list[Message]:
        return [n for n in self.notifications if n["method"] == method]

    async def close(self) -> None:
        # Stop reading first: aiohttp's close() hands a concurrent reader the close and skips the
        # closing handshake itself.
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = orjson.loads(frame.data)
            if isinstance(message, dict) and "method" in message and "id" in message:
                self.server_requests.append(message)
                task = asyncio.create_task(self._answer(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(message, dict) and "method" in message:
                self.notifications.append(message)
            elif isinstance(message, dict) and message.get("id") in self._waiting:
                self._waiting[message["id"]].set_result(message)
                continue
            else:
                self.unmatched.append(message)
            async with self._notified:
                self._notified.notify_all()

    async def _answer(self, message: Message) -> None:
        handler = self.handlers.get(message["method"])
        if handler is None:
            reply: Message = {
                "jsonrpc": "2.0",
                "id": message["id"],
                "error": {"code": -32601, "message": "no handler in the test client"},
            }
        else:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": await handler(message)}
        await self.send(reply)
