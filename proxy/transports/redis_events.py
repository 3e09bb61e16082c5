"""A legacy Streamable HTTP session's SSE events in Redis, so that any gateway instance can replay them.

One Redis stream per session holds its events, each with the SSE stream it went out on and its frame.
Sequence numbers come from one counter per session, taken and used in the same atomic step (a Lua
script), so they are contiguous and in order whichever instance records: a ``Last-Event-ID`` whose next
events are gone was trimmed, and says so. Stream numbers are random (several instances make streams for
one session and must not collide); the session's standalone (``GET``) stream is always 1, as in memory.
Both keys live as long as the session does without activity.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

from proxy.shared_redis import SharedRedis
from proxy.transports.sse import STANDALONE_STREAM, Replay, parse_event_id

# KEYS: the sequence counter, the event stream; ARGV: SSE stream, frame, capacity, ttl (ms), final flag.
# Returns the event's sequence number.
RECORD_SCRIPT = """
local sequence = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], sequence .. '-0', 's', ARGV[1], 'f', ARGV[2], 'e', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return sequence
"""

# A Redis stream's entries as redis-py returns them: (entry id, fields).
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class RedisEventLog:
    """The events of one session, kept in Redis (the ``EventStore`` of shared sessions)."""

    def __init__(self, shared: SharedRedis, session_id: str, capacity: int, ttl_seconds: float) -> None:
        self._client = shared.client
        # A blocking read must return before the client's own timeout gives up on the connection.
        self._block_ms = max(10, int(shared.timeout * 500))
        self._counter = shared.key("session", session_id, "sequence")
        self._events = shared.key("session", session_id, "events")
        self._capacity = capacity
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._record = self._client.register_script(RECORD_SCRIPT)

    def new_stream(self) -> int:
        # Never 1 (the standalone stream) and never a number another instance is likely to pick.
        return STANDALONE_STREAM + 1 + secrets.randbelow(2**52)

    async def record(self, stream: int, frame: bytes, *, final: bool = False) -> int:
        if self._capacity == 0:
            # Nothing is kept, but the number must still be the session's next: an instance that keeps
            # no events still hands out ids no other instance hands out.
            return int(await self._client.incr(self._counter))
        sequence = await self._record(
            keys=[self._counter, self._events],
            args=[stream, frame, self._capacity, self._ttl_ms, 1 if final else 0],
        )
        return int(sequence)

    async def end_stream(self, stream: int) -> None:
        # An empty final event: replays skip it, and a follower stops at it.
        await self.record(stream, b"", final=True)

    async def after(self, event_id: str) -> Replay | None:
        stream, sequence = parse_event_id(event_id)
        if stream is None or sequence is None:
            return None
        first = cast(Entries, await self._client.xrange(self._events, "-", "+", count=1))
        if not first or _sequence_of(first[0][0]) > sequence + 1:
            # Nothing kept, or the events right after this one were trimmed: they cannot be replayed.
            return None
        entries = cast(Entries, await self._client.xrange(self._events, f"{sequence}-0", "+"))
        if not entries or _sequence_of(entries[0][0]) != sequence or int(entries[0][1][b"s"]) != stream:
            # The named event is not this session's (or not on the stream the id names).
            return None
        return stream, [(seq, frame) for seq, frame, _ in _on_stream(entries[1:], stream) if frame]

    async def _ended_at(self, sequence: int) -> bool:
        """Whether event ``sequence`` was the last of its stream (a replay may have ended on the reply)."""
        entries = cast(Entries, await self._client.xrange(self._events, f"{sequence}-0", f"{sequence}-0"))
        return bool(entries) and entries[0][1][b"e"] == b"1"

    async def follow(
        self, stream: int, after: int, keep_going: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The events of ``stream`` after sequence ``after`` as they are recorded, until its final
        event (which is yielded), or until ``keep_going`` (asked about once a second) says no."""
        last: str | bytes = f"{after}-0"
        if await self._ended_at(after):
            return
        while await keep_going():
            found = cast(
                list[tuple[bytes, Entries]],
                await self._client.xread({self._events: last}, block=self._block_ms),
            )
            for _, entries in found or ():
                last = entries[-1][0]
                for sequence, frame, final in _on_stream(entries, stream):
                    if frame:
                        yield sequence, frame
                    if final:
                        return


def _sequence_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _on_stream(entries: list[tuple[bytes, dict[bytes, bytes]]], stream: int) -> list[tuple[int, bytes, bool]]:
    wanted = str(stream).encode()
    return [
        (_sequence_of(entry_id), fields[b"f"], fields[b"e"] == b"1")
        for entry_id, fields in entries
        if fields[b"s"] == wanted
    ]
