"""A cache of backend answers that only read (config name: ``cache``), in memory or in Redis.

What is kept: the results of ``resources/read``, ``prompts/get``, and ``tools/call`` of tools the backend
annotates ``readOnlyHint`` (or that the ``tools`` option names). Lists are not: the gateway answers them
from its own catalog, refreshed on list_changed, without asking a backend. Never kept: JSON-RPC errors,
tool errors (``isError``), unfinished results (``resultType`` other than "complete"), ``ttlMs: 0``.

How long: the first matching ``ttls`` pattern, else the backend's ``ttl_seconds``, else
``default_ttl_seconds`` (60) — and never longer than a result's own ``ttlMs``.

For whom: a result marked ``cacheScope: "public"`` is shared by every principal; ``"private"`` ones, and
those that say nothing (unless ``shared_by_default`` or the backend's ``shared`` says otherwise), are
kept for the caller's identity alone. Every key also holds the policy version, the backend, the method
and the canonical params (without ``_meta``), and the backend's and URI's generations: a backend's
``lists_changed`` or ``down`` forgets all its entries, a ``resource_updated`` forgets that URI's reads.

Order: ``auth → policy → redact → cache → dedup``. The cache comes after policy (a hit can never skip a
decision, and keys on the version of the policy that allowed it) and after redact (it keeps, and serves,
redacted results).

Memory is bounded by ``max_entries`` (10 000) and ``max_bytes`` (64 MiB), least recently used first. With
``redis_url`` every key has a TTL; Redis's own bound (``maxmemory``) is the operator's. A failing store is
a miss, never an error. ``Cache.counters()`` gives hits, misses, stores, evictions and errors.
"""

from __future__ import annotations

from plugins.cache.options import BackendCacheOptions, CacheOptions
from plugins.cache.plugin import Cache
from plugins.cache.store import MemoryStore, RedisStore, Store

__all__ = ["BackendCacheOptions", "Cache", "CacheOptions", "MemoryStore", "RedisStore", "Store", "plugin"]

plugin = Cache
