"""The one small interface every backend transport implements.

A connector moves JSON-RPC messages to and from one backend and knows nothing of MCP: the upstream link
above it does the handshake, ids and pending calls. Foreign errors (OSError, aiohttp, subprocess) are
mapped to ``BackendUnavailable`` here, at the boundary they cross.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any

from proxy import jsonrpc
from proxy.jsonrpc import Message

MessageSink = Callable[[Message], None]
ClosedSink = Callable[[str], None]


class Connector(abc.ABC):
    """A byte pipe to one backend that speaks one JSON-RPC message at a time."""

    #: Shown in logs and errors ("stdio", "websocket", ...).
    transport: str = "?"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.log = logging.getLogger(f"portico.backend.{backend}")
        self._on_message: MessageSink = _ignore
        self._on_closed: ClosedSink = _ignore
        self._closed_reported = False

    async def open(self, on_message: MessageSink, on_closed: ClosedSink) -> None:
        """Connect; afterwards every message received goes to ``on_message``, and the end of the
        connection, once, to ``on_closed`` with a reason."""
        self._on_message, self._on_closed = on_message, on_closed
        await self._open()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one serialized message; raises BackendUnavailable if the connection is gone."""

    def sends_at_once(self) -> bool:
        """Whether ``send`` would return now, without waiting (its caller then needs no timer around it).
        A connector that cannot tell says no."""
        return False

    def note_tools(self, tools: tuple[dict[str, Any], ...]) -> None:
        """The backend's tools, as last listed; a transport that mirrors arguments in headers needs them."""
        return None

    def fallback(self) -> Connector | None:
        """After a failed start, another way to reach the same backend (an older transport), if any."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection and release everything it holds (processes, sockets)."""

    def _received(self, raw: bytes | str) -> dict[str, Any] | None:
        """Parse one frame and hand it up; returns the message, or None for a frame that is not one."""
        try:
            message: Any = jsonrpc.loads(raw)
        except jsonrpc.ParseError:
            # Backends sometimes print stray text on their protocol channel; it is not a message.
            self.log.warning("ignored a frame that is not JSON: %.200r", raw)
            return None
        if not isinstance(message, dict):
            self.log.warning("ignored a frame that is not a JSON-RPC object: %.200r", raw)
            return None
        self._deliver(message)
        return message

    def _deliver(self, message: dict[str, Any]) -> None:
        """Hand one parsed message up; a connector that needs to look at replies first overrides this."""
        self._on_message(message)

    def _report_closed(self, reason: str) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self._on_closed(reason)


def _ignore(*_: Any) -> None:
    return None
