"""The plugin chains the open-loop benchmark runs the gateway with, and how to start it with each.

- ``empty``: no plugins, the null backend as it is: what the gateway alone costs.
- ``full``: ``auth`` (a JWT, HS256, from an issuer whose secret is made up per run), ``policy`` (Casbin
  RBAC, a temporary policy that allows only the bench subject the echo tool), ``redact`` (defaults),
  ``cache`` (memory) and ``dedup``, in the order the README recommends. The null backend marks echo
  read-only, so the cache and dedup take its calls; every call's text is unique, so each one is a cache
  miss that still pays for the key, the lookup, the store and the dedup bookkeeping.
- ``cache-hit``: the same full chain, but every call sends the same text, so all calls after the first
  are answered by the cache (after auth, policy and redaction have run on the request).

The generator presents the token as ``Authorization: Bearer`` on the WebSocket upgrade and on every
HTTP POST; the token's ``aud`` is the canonical URL of the endpoint it is used on (``http://host:port/mcp``),
so it is minted once the gateway's port is known.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson

from bench import core_ws
from bench.core_ws import REPO, Children

ISSUER = "https://bench.portico.invalid"
SUBJECT = "portico-bench"
BACKEND = "null"
# One text for every call of the cache-hit scenario: the cache key is the same each time.
CACHED_TEXT = "portico bench cached"
TOKEN_LIFETIME_SECONDS = 3600


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    plugins: bool  # the full chain (auth, policy, redact, cache, dedup) or none
    fixed_text: str | None = None  # every call sends this text (cache hits) instead of a unique one

    @property
    def backend_args(self) -> tuple[str, ...]:
        # Read-only echo lets the cache and dedup take its calls; without plugins it changes nothing.
        return ("--read-only",) if self.plugins else ()


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("empty", "empty plugin chain", plugins=False),
        Scenario("full", "auth (JWT) + policy + redact + cache (miss) + dedup", plugins=True),
        Scenario(
            "cache-hit", "auth (JWT) + policy + redact + cache (hit) + dedup", True, fixed_text=CACHED_TEXT
        ),
    )
}


@dataclass(frozen=True)
class Gateway:
    process: asyncio.subprocess.Process
    ws_url: str
    # What the generator sends on the upgrade and on every POST (the bearer token, when there is auth).
    headers: dict[str, str]

    @property
    def http_url(self) -> str:
        return "http://" + self.ws_url.removeprefix("ws://")


def plugin_config(workdir: Path, secret: str) -> list[dict[str, Any] | str]:
    """The full chain's ``plugins:`` list; writes the policy file it names into ``workdir``."""
    policy = workdir / "bench_policy.csv"
    policy.write_text(f"p, {SUBJECT}, {BACKEND}/tool/echo, tools/call, allow\n")
    return [
        # No token store: the bench presents JWTs only, and the store would write into the repository.
        {"name": "auth", "options": {"issuers": [{"issuer": ISSUER, "secret": secret}], "token_store": None}},
        {
            "name": "policy",
            "options": {"model": str(REPO / "policies" / "rbac_model.conf"), "policy": str(policy)},
        },
        "redact",
        {"name": "cache", "options": {}},
        "dedup",
    ]


def write_config(workdir: Path, scenario: Scenario, secret: str) -> Path:
    # JSON is valid YAML and needs no YAML library; cwd makes ``-m bench.null_backend`` importable.
    backend = {
        "command": sys.executable,
        "args": ["-m", "bench.null_backend", *scenario.backend_args],
        "cwd": str(REPO),
    }
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "mcpServers": {BACKEND: backend},
        "plugins": plugin_config(workdir, secret) if scenario.plugins else [],
    }
    path = workdir / f"portico-{scenario.name}.yaml"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


def mint_token(secret: str, audience: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": audience, "iat": now, "exp": now + TOKEN_LIFETIME_SECONDS}
    return jwt.encode(claims, secret, algorithm="HS256")


async def start_gateway(
    children: Children, workdir: Path, scenario: Scenario, prefix: Sequence[str] = ()
) -> Gateway:
    """Start ``python -m proxy serve`` (after ``prefix``, e.g. ``taskset -c 0``) with ``scenario``'s chain."""
    secret = secrets.token_hex(32)
    config = write_config(workdir, scenario, secret)
    process, ws_url = await core_ws.start_gateway(
        children, workdir, prefix=prefix, config=config, ready_marker=f"{BACKEND} (1 tools)".encode()
    )
    headers: dict[str, str] = {}
    if scenario.plugins:
        # The audience is the endpoint's canonical URI, which uses http:// for a WebSocket URL too.
        audience = "http://" + ws_url.removeprefix("ws://")
        headers["Authorization"] = f"Bearer {mint_token(secret, audience)}"
    return Gateway(process, ws_url, headers)


# What the chain reports at /metrics, so a run shows it did what its scenario says (hits, misses, ...).
_COUNTERS = {
    'portico_cache_events_total{event="hits"}': "cache_hits",
    'portico_cache_events_total{event="misses"}': "cache_misses",
    "portico_dedup_shared_total": "dedup_shared",
    "portico_policy_denials_total": "policy_denials",
    'portico_refused_requests_total{reason="unauthenticated"}': "unauthenticated",
}


async def chain_counters(gateway: Gateway) -> dict[str, float]:
    """The chain's counters from the gateway's ``/metrics`` (an empty dict when it does not answer)."""
    url = gateway.http_url.removesuffix("/mcp") + "/metrics"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(5), http.get(url) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    counters: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in _COUNTERS:
            counters[_COUNTERS[name]] = float(value)
    return counters
