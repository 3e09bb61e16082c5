"""Everything written to one pipe or socket during one turn of the event loop leaves in one system call.

Every write wakes the process at the other end, and the writer pays for the wake-up: bench/RESULTS.md
measured 27 µs of wall time per write to a backend's pipe and up to 82 µs per WebSocket frame, most of a
call's cost then. Messages come in bursts -- one read of a client's socket holds many requests, one read
of a backend's pipe many replies -- and the tasks they wake all write within the same turn of the loop.
A ``WriteBatch`` keeps those writes and hands them over joined, once the callbacks already queued for
this turn have run: under load the wake-ups per call fall with the burst size, and a lone message waits
only for the loop to come round once (a few µs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class WriteBatch:
    """Collects chunks and writes them joined, with ``write``, at the end of the loop's current turn.

    ``write`` must not raise: a failure there would surface in the event loop, far from anyone who could
    act on it, so the owner catches and reports it (a dead peer is noticed by its reader anyway).
    Order is kept: chunks leave in the order they were added, and ``flush()`` sends what is pending at
    once (before a close frame, say).
    """

    __slots__ = ("_chunks", "_loop", "_scheduled", "_write")

    def __init__(self, write: Callable[[bytes], None], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._write = write
        # Kept rather than looked up per chunk: ``get_running_loop()`` costs a getpid() on Python 3.11.
        self._loop = loop or asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._scheduled = False

    @property
    def pending(self) -> int:
        """Bytes added and not yet written."""
        return sum(len(chunk) for chunk in self._chunks)

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        chunks = self._chunks
        if not chunks:
            return
        self._chunks = []
        self._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def discard(self) -> None:
        """Drop what is pending (the peer is gone, or must get nothing more)."""
        self._chunks = []
