"""The ratelimit plugin: token buckets per principal, per backend and per tool, in memory or Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fnmatch import fnmatchcase

from plugins.ratelimit.buckets import Draw, MemoryBuckets, Verdict
from plugins.ratelimit.options import Limit, RateLimitOptions
from plugins.ratelimit.redis_buckets import RedisBuckets, RedisUnavailable
from proxy.chain import Context, Direction, Handler, PluginCounter, Principal, Route
from proxy.errors import RateLimited
from proxy.jsonrpc import Message

log = logging.getLogger("portico.ratelimit")


def _draw(key: str, limit: Limit) -> Draw:
    return Draw(key=key, tokens_per_second=limit.tokens_per_second, capacity=limit.capacity)


def principal_key(principal: Principal) -> str:
    """Who a per-principal bucket belongs to: the subject within its tenant (length-prefixed, so no
    tenant and subject pair can be spelt like another)."""
    tenant = principal.tenant or ""
    return f"{len(tenant)}:{tenant}:{principal.subject}"


class RateLimit:
    """Refuses a client's request (``RateLimited``, -32065, HTTP 429) when any bucket that applies to
    it is empty; otherwise takes one token from each and lets it on. Backend-initiated traffic and
    notifications are never limited."""

    Options = RateLimitOptions

    def __init__(self, options: RateLimitOptions, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.store: MemoryBuckets | RedisBuckets
        if options.redis_url is not None:
            self.store = RedisBuckets(options.redis_url, options.redis_prefix, options.redis_timeout_seconds)
        else:
            self.store = MemoryBuckets(options.max_buckets, clock)
        self._tool_limits = list(options.tools.items())
        self._allowed = 0
        self._limited = 0
        self._store_errors = 0
        self._store_failing = False

    def counts(self) -> dict[str, int]:
        """Requests let through and refused so far (refusals because Redis failed included), and Redis
        failures (whatever ``on_redis_error`` then decided)."""
        return {"allowed": self._allowed, "limited": self._limited, "store_errors": self._store_errors}

    def metrics(self) -> list[PluginCounter]:
        limited: dict[tuple[str, ...], float] = {(): float(self._limited)}
        return [PluginCounter("ratelimit_limited", "Requests refused by a rate limit.", samples=limited)]

    async def close(self) -> None:
        """Close the Redis connections, if any (in-memory buckets need nothing); the gateway calls it
        when it stops."""
        if isinstance(self.store, RedisBuckets):
            await self.store.aclose()

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        # Only what clients ask of the gateway is limited: not their notifications or replies, and not
        # what backends send to them (their sampling must not be starved by the client's own calls).
        if ctx.direction is Direction.TO_BACKEND and "id" in message and "method" in message:
            draws = self.draws_for(ctx.principal, ctx.route)
            if draws:
                await self._take(draws)
        return await call_next(ctx, message)

    def draws_for(self, principal: Principal, route: Route | None) -> list[Draw]:
        """The buckets a request from ``principal`` to ``route`` takes a token from."""
        who = principal_key(principal)
        draws: list[Draw] = []
        per_principal = self.options.per_principal
        if per_principal is not None and (route is not None or self.options.limit_gateway_requests):
            draws.append(_draw(f"p:{who}", per_principal))
        if route is None:
            return draws
        backend_limit = self.options.backends.get(route.backend)
        if backend_limit is not None:
            draws.append(_draw(f"b:{route.backend}", backend_limit))
        target = route.object
        for pattern, tool_limit in self._tool_limits:
            if fnmatchcase(target, pattern):
                owner = "*" if tool_limit.scope == "shared" else who
                draws.append(_draw(f"t:{target}|{owner}", tool_limit))
                break
        return draws

    async def _take(self, draws: list[Draw]) -> None:
        why = "Rate limit exceeded"
        try:
            verdict = await self.store.take(draws)
        except RedisUnavailable as exc:
            verdict = self._when_store_fails(exc)
            why = "Rate limit unavailable: the rate limit store did not answer"
        else:
            if self._store_failing:
                self._store_failing = False
                log.warning("rate limit store is back: limits are enforced again")
        if verdict.allowed:
            self._allowed += 1
            return
        self._limited += 1
        raise RateLimited(f"{why}; try again in {verdict.retry_after:.3f} s", verdict.retry_after)

    def _when_store_fails(self, exc: RedisUnavailable) -> Verdict:
        self._store_errors += 1
        deny = self.options.on_redis_error == "deny"
        if not self._store_failing:
            # Logged once per outage, not once per request.
            self._store_failing = True
            what = "refusing requests" if deny else "letting requests through unlimited"
            log.warning("rate limit store unavailable (%s): %s until it answers again", exc, what)
        if not deny:
            return Verdict(allowed=True)
        return Verdict(allowed=False, retry_after=self.options.redis_error_retry_seconds)
