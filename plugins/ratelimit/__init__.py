"""Rate limits on what clients ask (config name: ``ratelimit``): token buckets, one token per request.

Buckets that apply to a request (each takes one token; all or nothing):

- ``per_principal``: one bucket per principal (subject within tenant; without an authentication plugin
  every client is ``anonymous`` and they share one);
- ``backends: {name: limit}``: one bucket per backend, shared by every caller of it;
- ``tools: {glob: limit}``: the first glob matching the request's ``backend/kind/name`` (``c/tool/*``,
  ``c/resource/*``) gives each matching object its own bucket, per principal (``scope: principal``, the
  default) or shared by all callers (``scope: shared``).

A limit is ``{rate, per_seconds (1), burst (rate)}``. Over any limit the request is refused with
``RateLimited`` (-32065, ``data.retryAfterSeconds``: when the emptiest bucket has a token again; HTTP 429
with ``Retry-After``). Requests to the gateway itself (initialize, ping, lists) only take from the
per-principal bucket when ``limit_gateway_requests`` is true (default false). Only client requests are
counted: notifications, replies and backend-initiated traffic never are.

Buckets live in memory (``max_buckets``, default 100000, least recently used dropped), or in Redis when
``redis_url`` is set (atomic across instances; ``redis_prefix``, ``redis_timeout_seconds``). When Redis
fails, ``on_redis_error`` decides: ``deny`` (default: the request is refused as rate limited, with
``redis_error_retry_seconds``) or ``allow`` (let through unlimited). ``RateLimit.counts()`` gives the
allowed, limited and store-error counts.
"""

from __future__ import annotations

from plugins.ratelimit.buckets import Draw, MemoryBuckets, Verdict
from plugins.ratelimit.options import Limit, RateLimitOptions, ToolLimit
from plugins.ratelimit.plugin import RateLimit

__all__ = [
    "Draw",
    "Limit",
    "MemoryBuckets",
    "RateLimit",
    "RateLimitOptions",
    "ToolLimit",
    "Verdict",
    "plugin",
]

plugin = RateLimit
