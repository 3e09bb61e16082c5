"""The cache plugin's chain layer: answers repeated reads from the store, keeps what may be kept."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import orjson

from plugins.cache.options import CacheOptions
from plugins.cache.rules import (
    ConfiguredTtls,
    EntryKeys,
    backend_generation,
    entry_keys,
    identity,
    judge_reply,
    may_cache_request,
    uri_generation,
)
from plugins.cache.store import MemoryStore, RedisStore, Store
from proxy import jsonrpc
from proxy.chain import POLICY_VERSION, Context, Direction, Handler, PluginCounter, Route
from proxy.jsonrpc import Message

log = logging.getLogger("portico.cache")

T = TypeVar("T")


class Cache:
    """Keeps the results of reads (resources, prompts, read-only tools) and answers repeats with them.

    It must sit after ``policy`` in the chain: a request only reaches it once allowed, and its key holds
    the policy version, so a changed policy never finds an answer kept under the old one.
    """

    Options = CacheOptions

    def __init__(self, options: CacheOptions) -> None:
        self.options = options
        self.store: Store
        if options.redis_url is not None:
            self.store = RedisStore(
                options.redis_url,
                prefix=options.key_prefix,
                timeout=options.redis_timeout_seconds,
                # Longer than any entry lives (see RedisStore): an expired token meets no old entry.
                generation_ttl=2 * options.longest_ttl() + 60,
            )
        else:
            self.store = MemoryStore(options.max_entries, options.max_bytes)
        self._configured_ttl = ConfiguredTtls(options)
        self._counts: collections.Counter[str] = collections.Counter()
        self._failing = False

    def counters(self) -> dict[str, int]:
        """hits, misses, stores, evictions (memory bounds only) and errors (store failures) so far."""
        names = ("hits", "misses", "stores", "errors")
        return {**{name: self._counts[name] for name in names}, "evictions": self.store.evictions}

    def metrics(self) -> list[PluginCounter]:
        events: dict[tuple[str, ...], float] = {
            (event,): float(count) for event, count in sorted(self.counters().items())
        }
        help_text = "Cache plugin events: hits, misses, stores, errors, evictions."
        return [PluginCounter("cache_events", help_text, ("event",), events)]

    async def close(self) -> None:
        """Let go of the store (Redis connections)."""
        await self.store.close()

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        route = ctx.route
        if route is None or not self._applies(ctx, message, route):
            return await call_next(ctx, message)
        generation_names = [backend_generation(route.backend)]
        if ctx.method == "resources/read":
            generation_names.append(uri_generation(route.exposed))
        if self.store.settling(generation_names):
            return await call_next(ctx, message)
        generations = await self._guarded(ctx, self.store.generations(generation_names))
        if generations is None:
            return await call_next(ctx, message)
        keys = self._keys(ctx, message, route, generations)
        found = await self._guarded(ctx, self.store.get_first([keys.private, keys.shared]))
        result = _decode(found)
        if result is not None:
            self._counts["hits"] += 1
            # A fresh object for every hit, with the caller's own id: callers may change what they get.
            return {"jsonrpc": "2.0", "id": message["id"], "result": result}
        self._counts["misses"] += 1
        reply = await call_next(ctx, message)
        await self._keep(ctx, route, reply, keys)
        return reply

    def _applies(self, ctx: Context, message: Message, route: Route) -> bool:
        return (
            ctx.direction is Direction.TO_BACKEND
            and "id" in message
            and "method" in message
            and may_cache_request(self.options, ctx.method, route)
            and self._configured_ttl(route) > 0
        )

    def _keys(self, ctx: Context, message: Message, route: Route, generations: list[str]) -> EntryKeys:
        parts = [ctx.get(POLICY_VERSION), generations]
        params = jsonrpc.params_of(message)
        return entry_keys(self.options.key_prefix, route, ctx.method, params, parts, identity(ctx.principal))

    async def _keep(self, ctx: Context, route: Route, reply: Message | None, keys: EntryKeys) -> None:
        verdict = judge_reply(self.options, route, self._configured_ttl(route), reply)
        if verdict is None or reply is None:
            return
        value = orjson.dumps(reply["result"])
        if len(value) > self.options.max_entry_bytes:
            return
        key = keys.shared if verdict.shared else keys.private
        if await self._guarded(ctx, self._set(key, value, verdict.ttl)):
            self._counts["stores"] += 1

    async def _set(self, key: str, value: bytes, ttl: float) -> bool:
        await self.store.set(key, value, ttl)
        return True

    async def _guarded(self, ctx: Context, operation: Awaitable[T]) -> T | None:
        """Run a store operation within its time budget; a failure is a miss (None), never an error."""
        try:
            if self.store.may_hang:
                async with asyncio.timeout(min(self.options.redis_timeout_seconds, ctx.remaining())):
                    outcome = await operation
            else:
                # Memory never makes an operation wait, so no budget can run out; a timer per operation
                # would cost more than the operation.
                outcome = await operation
        except Exception as exc:
            self._counts["errors"] += 1
            if not self._failing:
                log.warning("cache: the store failed (%s); serving without it until it recovers", exc)
            self._failing = True
            return None
        if self._failing:
            log.info("cache: the store works again")
            self._failing = False
        return outcome

    def backend_event(self, backend: str, event: str, params: Mapping[str, Any]) -> None:
        """Forget what a backend's change made stale: everything of a changed or withdrawn backend, the
        reads of an updated resource."""
        if event in ("lists_changed", "down"):
            self.store.invalidate(backend_generation(backend))
        elif event == "resource_updated" and isinstance(params.get("uri"), str):
            self.store.invalidate(uri_generation(params["uri"]))


def _decode(found: bytes | None) -> dict[str, Any] | None:
    if found is None:
        return None
    try:
        result = orjson.loads(found)
    except orjson.JSONDecodeError:
        return None
    return result if isinstance(result, dict) else None
