"""Buckets in Redis, shared by every gateway instance that names the same ``redis_url`` and prefix.

One Lua script refills and draws from all of a request's buckets in a single atomic step (sent with
EVALSHA; loaded again if the server lost it), on the Redis server's own clock, so instances with skewed
clocks still agree. Each bucket is a hash (``level``, ``at``) that expires once it would be full again,
so idle buckets leave nothing behind. All of a request's keys go to one script: on Redis Cluster they
would need a common hash tag, which this store does not add (a single Redis, or a primary with
replicas, is what it is built for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from plugins.ratelimit.buckets import EPSILON, Draw, Verdict

# KEYS: the buckets; ARGV: tokens per second and capacity of each, in turn, then EPSILON.
# Returns {1} when every bucket gave a token, else {0, seconds until the emptiest has one} (as a string:
# Redis truncates Lua numbers to integers).
TAKE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local epsilon = tonumber(ARGV[#ARGV])
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(state[1])
  local at = tonumber(state[2])
  if level == nil or at == nil then
    level = capacity
  else
    level = math.min(capacity, level + math.max(0, now - at) * rate)
  end
  levels[i] = level
  if level < 1 - epsilon then
    wait = math.max(wait, (1 - level) / rate)
  end
end
if wait > 0 then
  return {0, tostring(wait)}
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local level = levels[i] - 1
  redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
  local refill_ms = math.ceil((tonumber(ARGV[2 * i]) - level) / rate * 1000) + 1000
  redis.call('PEXPIRE', key, refill_ms)
end
return {1}
"""


class RedisUnavailable(Exception):
    """Redis did not answer in time, or answered with an error."""


class RedisBuckets:
    """Buckets kept in Redis under ``prefix``; every call is bounded by ``timeout`` seconds."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self.script = self.client.register_script(TAKE_SCRIPT)

    async def take(self, draws: Sequence[Draw]) -> Verdict:
        if not draws:
            return Verdict(allowed=True)
        keys = [self.prefix + draw.key for draw in draws]
        args: list[str] = []
        for draw in draws:
            args += [repr(draw.tokens_per_second), repr(draw.capacity)]
        args.append(repr(EPSILON))
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self.script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if int(answer[0]) == 1:
            return Verdict(allowed=True)
        return Verdict(allowed=False, retry_after=float(answer[1]))

    async def aclose(self) -> None:
        await self.client.aclose()
