"""What may be cached, for how long, for whom, and under which key: pure functions of the config, the
request and the result, kept apart from the plugin so each rule can be read (and tested) on its own."""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any, NamedTuple

import orjson

from plugins.cache.options import CacheOptions
from proxy.chain import Principal, Route, only_reads

# The methods whose results this plugin keeps. Lists are not among them: the gateway answers lists from
# its own catalog (refreshed on list_changed) without asking a backend at all.
CACHED_METHODS = frozenset({"resources/read", "prompts/get", "tools/call"})

# Bumped whenever the key's layout changes, so entries of an older gateway in a shared Redis are never read.
KEY_FORMAT = 2

# How many routes' configured TTLs a ``ConfiguredTtls`` remembers before it starts over: resource routes are
# made per request (one per URI read), so without a bound the table could grow without end.
REMEMBERED_ROUTES = 4096


class Verdict(NamedTuple):
    """What a result allows: kept for ``ttl`` seconds, shared by every principal or not."""

    ttl: float
    shared: bool


class EntryKeys(NamedTuple):
    """Where a request's result is kept for its caller alone, and where it is kept for everyone."""

    private: str
    shared: str


def may_cache_request(options: CacheOptions, method: str, route: Route) -> bool:
    """Whether a request's answer may be kept at all: reads, prompts, and calls of tools that only read
    (by the backend's ``readOnlyHint`` or the operator's ``tools`` patterns)."""
    if method not in CACHED_METHODS:
        return False
    if method == "tools/call":
        return only_reads(method, route) or _matches(route.object, options.tools)
    return True


def configured_ttl(options: CacheOptions, route: Route) -> float:
    """The TTL the config gives what ``route`` addresses: the first matching ``ttls`` pattern, else the
    backend's, else the default."""
    for pattern, seconds in options.ttls.items():
        if fnmatch.fnmatchcase(route.object, pattern):
            return seconds
    backend = options.backends.get(route.backend)
    if backend is not None and backend.ttl_seconds is not None:
        return backend.ttl_seconds
    return options.default_ttl_seconds


class ConfiguredTtls:
    """``configured_ttl`` remembered per route: the options never change under one instance, and matching
    the ``ttls`` patterns on every call would cost more than the rest of a miss."""

    def __init__(self, options: CacheOptions) -> None:
        self._options = options
        self._known: dict[Route, float] = {}

    def __call__(self, route: Route) -> float:
        ttl = self._known.get(route)
        if ttl is None:
            if len(self._known) >= REMEMBERED_ROUTES:
                self._known.clear()
            ttl = self._known[route] = configured_ttl(self._options, route)
        return ttl


def judge_reply(options: CacheOptions, route: Route, configured: float, reply: Any) -> Verdict | None:
    """Whether (and how) a backend's reply may be kept, ``configured`` being the route's configured TTL;
    None for anything that must not be: errors, tool errors, unfinished results (``resultType`` other than
    "complete"), ``ttlMs: 0``."""
    if not isinstance(reply, dict) or "error" in reply:
        return None
    result = reply.get("result")
    if not isinstance(result, dict) or result.get("isError") is True:
        return None
    if result.get("resultType", "complete") != "complete":
        return None
    ttl = configured
    if "ttlMs" in result:
        ttl_ms = result["ttlMs"]
        # A value we cannot read is taken as "do not cache": the conservative reading.
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int | float) or ttl_ms < 0:
            return None
        ttl = min(ttl, ttl_ms / 1000)
    if ttl <= 0:
        return None
    return Verdict(ttl=ttl, shared=_shared(options, route.backend, result.get("cacheScope")))


def _shared(options: CacheOptions, backend: str, scope: Any) -> bool:
    if scope == "public":
        return True
    if scope is not None:
        # "private", or a scope we do not know: kept for the caller alone.
        return False
    configured = options.backends.get(backend)
    if configured is not None and configured.shared is not None:
        return configured.shared
    return options.shared_by_default


def identity(principal: Principal) -> str:
    """Who a private entry belongs to: the credential itself when the authenticator named it, else the
    subject within its tenant and kind. (Without an authentication plugin every caller is anonymous, and
    so one principal.)"""
    if principal.credential:
        return f"credential:{principal.credential}"
    return orjson.dumps([principal.kind, principal.tenant, principal.subject]).decode()


def entry_keys(
    prefix: str, route: Route, method: str, params: Any, parts: list[Any], owner: str
) -> EntryKeys:
    """The keys of a request's two possible entries: the backend (readable, for operators looking at Redis)
    and a hash of everything else that must match: the method, the object, the canonical params (without
    ``_meta``, which carries per-request things like progress tokens), ``parts`` (policy version,
    generations) and the scope: "private" with its ``owner`` (see ``identity``), or "public"."""
    if isinstance(params, dict) and "_meta" in params:
        params = {name: value for name, value in params.items() if name != "_meta"}
    # Serialised once for both keys. A JSON array ends where its brackets close, so nothing appended after
    # it can be mistaken for part of it: different requests or scopes never make the same material.
    common = orjson.dumps(
        [KEY_FORMAT, method, route.object, params, parts],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return EntryKeys(
        private=_hashed_key(prefix, route, common + orjson.dumps(["private", owner])),
        shared=_hashed_key(prefix, route, common + b'["public"]'),
    )


def _hashed_key(prefix: str, route: Route, material: bytes) -> str:
    return f"{prefix}:entry:{route.backend}:{hashlib.sha256(material).hexdigest()}"


def backend_generation(backend: str) -> str:
    return f"backend:{backend}"


def uri_generation(uri: str) -> str:
    # Hashed: a URI may be long, and need not be readable in a Redis key.
    return f"uri:{hashlib.sha256(uri.encode()).hexdigest()[:32]}"


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
