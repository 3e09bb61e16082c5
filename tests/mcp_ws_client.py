"""An mcp 2.x client transport over aiohttp WebSocket (mcp 2.x ships no WebSocket transport).

Usage::

    async with ws_transport(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

The socket negotiates the ``mcp`` subprotocol and carries one JSON-RPC message per
text frame. ``headers`` are sent with the upgrade request (e.g. ``Authorization``).

``mcp.ClientSession`` (2.3) takes its server-to-client handlers as constructor arguments::

    ClientSession(read_stream, write_stream, read_timeout_seconds=None,
                  sampling_callback=None, elicitation_callback=None,
                  list_roots_callback=None, logging_callback=None,
                  message_handler=None, client_info=None, *, log_level=None, ...)

with these callback shapes (``ClientRequestContext`` is ``mcp.client.session.ClientRequestContext``,
carrying ``session``, ``request_id`` and ``meta``)::

    sampling_callback(ctx, params: CreateMessageRequestParams)
        -> CreateMessageResult | CreateMessageResultWithTools | ErrorData
    elicitation_callback(ctx, params: ElicitRequestFormParams | ElicitRequestURLParams)
        -> ElicitResult | ErrorData
    list_roots_callback(ctx) -> ListRootsResult | ErrorData
    logging_callback(params: LoggingMessageNotificationParams) -> None
    message_handler(message: ServerNotification | Exception) -> None

Passing a sampling, elicitation or roots callback is what makes ``initialize()``
advertise the matching client capability. Progress arrives through
``session.call_tool(name, args, progress_callback=fn)`` where
``fn(progress: float, total: float | None, message: str | None)``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Final

import aiohttp
import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

__all__ = ["SUBPROTOCOL", "ws_transport"]

SUBPROTOCOL: Final = "mcp"

log = logging.getLogger(__name__)


@asynccontextmanager
async def ws_transport(
    url: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """Connect to an MCP WebSocket endpoint and yield ``(read_stream, write_stream)``.

    Raises ``aiohttp.WSServerHandshakeError`` if the upgrade is refused (e.g. 401) and
    ``ConnectionError`` if the server does not accept the ``mcp`` subprotocol.
    """
    from_socket, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, to_socket = anyio.create_memory_object_stream[SessionMessage](0)

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(SUBPROTOCOL,), headers=headers, autoping=True) as ws,
    ):
        if ws.protocol != SUBPROTOCOL:
            raise ConnectionError(f"server refused the {SUBPROTOCOL!r} subprotocol (got {ws.protocol!r})")

        async def pump_in() -> None:
            async with from_socket:
                async for frame in ws:
                    if frame.type == aiohttp.WSMsgType.TEXT:
                        try:
                            message = types.jsonrpc_message_adapter.validate_json(frame.data, by_name=False)
                        except ValueError as exc:
                            # Surfaced to ClientSession's message_handler, as the stdio transport does.
                            await from_socket.send(exc)
                            continue
                        await from_socket.send(SessionMessage(message))
                    elif frame.type == aiohttp.WSMsgType.BINARY:
                        await from_socket.send(ValueError("binary frames are not MCP messages"))
                    elif frame.type == aiohttp.WSMsgType.ERROR:
                        log.debug("websocket error: %r", ws.exception())
            # Closing `from_socket` tells the session the connection is gone, failing pending requests.

        async def pump_out() -> None:
            async with to_socket:
                async for session_message in to_socket:
                    data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    try:
                        await ws.send_str(data)
                    except ConnectionError:
                        # The socket is closing; pump_in will observe the close and end the session.
                        log.debug("dropped outbound message: websocket closed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_in)
            tg.start_soon(pump_out)
            try:
                yield read_stream, write_stream
            finally:
                tg.cancel_scope.cancel()
                read_stream.close()
                write_stream.close()
