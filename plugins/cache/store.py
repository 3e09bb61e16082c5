"""Where the cache keeps its entries: a bounded LRU in memory, or Redis through aiocache.

Both stores also keep *generations*: a short token per backend and per resource URI that is part of every
entry's key. Invalidating a backend or a URI changes its token, so every entry stored under the old one
can never be found again (and ages out by its TTL or the LRU): O(1), whatever the number of entries.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from aiocache import RedisCache
from aiocache.serializers import NullSerializer

log = logging.getLogger("portico.cache")


class Store(Protocol):
    """What the cache plugin needs of a place to keep entries."""

    @property
    def evictions(self) -> int: ...

    @property
    def may_hang(self) -> bool:
        """Whether an operation can wait long enough to need a time budget (one over a network can)."""
        ...

    async def get_first(self, keys: Sequence[str]) -> bytes | None:
        """The value of the first of ``keys`` present (and not expired), if any."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def generations(self, names: Sequence[str]) -> list[str]:
        """The current generation token of each name (a backend's, a URI's)."""
        ...

    def invalidate(self, name: str) -> None:
        """Change ``name``'s generation; synchronous, never raises (called from backend events)."""
        ...

    def settling(self, names: Sequence[str]) -> bool:
        """Whether an invalidation of one of ``names`` is still under way (do not use the cache then)."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """A least-recently-used store bounded in entries and in bytes (keys plus serialised values).

    aiocache's SimpleMemoryCache has no bound at all, so the bound is kept here: an insert that exceeds
    either limit evicts the least recently used entries until both hold again.
    """

    # Every operation finishes without ever giving the event loop a turn.
    may_hang = False

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.size_bytes = 0
        self._evictions = 0
        self._generations: dict[str, int] = {}
        # Bumped when the generation table is cleared to stay bounded: every old key changes with it.
        self._epoch = 0

    @property
    def evictions(self) -> int:
        return self._evictions

    def __len__(self) -> int:
        return len(self._entries)

    async def get_first(self, keys: Sequence[str]) -> bytes | None:
        for key in keys:
            value = self._get(key)
            if value is not None:
                return value
        return None

    def _get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._drop(key)
        size = len(key) + len(value)
        if size > self.max_bytes:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self.size_bytes += size
        while len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self._evictions += 1

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= len(key) + len(entry[1])

    async def generations(self, names: Sequence[str]) -> list[str]:
        return [f"{self._epoch}.{self._generations.get(name, 0)}" for name in names]

    def invalidate(self, name: str) -> None:
        self._generations[name] = self._generations.get(name, 0) + 1
        # One counter per URI ever updated would grow without end; past the entry bound, start over
        # under a new epoch (which also forgets every entry, the safe direction).
        if len(self._generations) > self.max_entries:
            self._generations.clear()
            self._epoch += 1

    def settling(self, names: Sequence[str]) -> bool:
        return False

    async def close(self) -> None:
        self._entries.clear()
        self.size_bytes = 0


class RedisStore:
    """Entries in Redis (aiocache's Redis backend), every key with a TTL.

    Generation tokens live in Redis too, so gateways sharing a Redis share invalidations: invalidating
    writes a fresh random token (a counter could restart at a value old entries still use once its key
    expired; a random token cannot). The token keys expire after ``generation_ttl``, longer than any entry
    lives, so an absent token ("0") can only meet entries written after it went. While the write is under
    way the names involved are *settling* and not cached; if it fails, a local counter that is also part
    of the token changes instead, so this gateway never serves what the event made stale.
    Redis's memory bound (``maxmemory`` and an eviction policy such as ``volatile-lru``) is the operator's.
    """

    may_hang = True

    def __init__(self, url: str, *, prefix: str, timeout: float, generation_ttl: float) -> None:
        parts = urlsplit(url)
        pool_options = {"username": parts.username} if parts.username else {}
        self._redis = RedisCache(
            serializer=NullSerializer(encoding=None),
            endpoint=parts.hostname,
            port=parts.port or 6379,
            db=int(parts.path.strip("/") or "0"),
            password=parts.password,
            ssl=parts.scheme == "rediss",
            timeout=timeout,
            create_connection_timeout=timeout,
            connection_pool_kwargs=pool_options,
        )
        self._prefix = prefix
        self._generation_ttl = generation_ttl
        self._local: dict[str, int] = {}
        self._settling: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def evictions(self) -> int:
        # Redis evicts by itself (maxmemory); this gateway never learns of it.
        return 0

    def _generation_key(self, name: str) -> str:
        return f"{self._prefix}:generation:{name}"

    async def get_first(self, keys: Sequence[str]) -> bytes | None:
        values = await self._redis.multi_get(list(keys))
        for value in values:
            if value is not None:
                return bytes(value)
        return None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        # A float TTL is written with PSETEX (milliseconds), so sub-second TTLs hold.
        await self._redis.set(key, value, ttl=float(ttl))

    async def generations(self, names: Sequence[str]) -> list[str]:
        tokens = await self._redis.multi_get([self._generation_key(name) for name in names])
        return [
            f"{self._local.get(name, 0)}.{token.decode() if token is not None else '0'}"
            for name, token in zip(names, tokens, strict=True)
        ]

    def invalidate(self, name: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._local[name] = self._local.get(name, 0) + 1
            return
        self._settling[name] = self._settling.get(name, 0) + 1
        task = loop.create_task(self._write_generation(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_generation(self, name: str) -> None:
        try:
            await self._redis.set(
                self._generation_key(name), secrets.token_hex(8).encode(), ttl=float(self._generation_ttl)
            )
        except Exception as exc:
            log.warning(
                "cache: could not invalidate %s in Redis (%s); this gateway forgets it alone", name, exc
            )
            self._local[name] = self._local.get(name, 0) + 1
        finally:
            self._settling[name] -= 1
            if not self._settling[name]:
                del self._settling[name]

    def settling(self, names: Sequence[str]) -> bool:
        return any(name in self._settling for name in names)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The client itself: aiocache's close() calls redis-py's deprecated close().
        await self._redis.client.aclose()
