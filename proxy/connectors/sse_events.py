"""Reading server-sent events from an aiohttp response, for the HTTP backend connectors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from proxy.errors import BackendUnavailable


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: bytes
    id: str | None


async def read_events(response: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[SseEvent]:
    """The events of an SSE response, until it ends. An event larger than ``max_bytes`` ends the stream
    with BackendUnavailable rather than being cut (a line reader would choke on a large result)."""
    buffer = b""
    event, event_id = "message", None
    data: list[bytes] = []
    last_id: str | None = None
    async for chunk in response.content.iter_any():
        buffer += chunk
        while True:
            line, newline, rest = buffer.partition(b"\n")
            if not newline:
                break
            buffer = rest
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield SseEvent(event, b"\n".join(data), event_id or last_id)
                    last_id = event_id or last_id
                event, data, event_id = "message", [], None
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                event = value.decode(errors="replace")
            elif field == b"data":
                data.append(value)
            elif field == b"id":
                event_id = value.decode(errors="replace")
        if len(buffer) + sum(len(d) for d in data) > max_bytes:
            raise BackendUnavailable(f"an event larger than {max_bytes} bytes")
