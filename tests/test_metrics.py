"""Prometheus metrics (``/metrics``) and readiness (``/readyz``) of a real gateway.

Real gateway, real stdio backend (tests/fixtures/counting_server.py); every scrape goes over HTTP and is
parsed with prometheus-client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import proxy.metrics
from proxy.chain import Context, Handler
from proxy.errors import AccessDenied
from proxy.jsonrpc import Message
from proxy.metrics import CONTENT_TYPE, REFUSAL_REASONS
from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.test_backend_restart import pid_of
from tests.test_http_transport import eventually
from tests.test_modern_era import meta
from tests.test_security_gateway import auth_options, token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def counting(**extra: Any) -> dict[str, Any]:
    return fixture_server("counting_server.py", **extra)


async def scrape(gw: RunningGateway) -> Samples:
    async with gw.http.get(gw.server.make_url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples if sample == name}


async def call_tool(gw: RunningGateway, client: Any, name: str, **arguments: Any) -> Message:
    reply: Message = await client.request("tools/call", {"name": name, "arguments": arguments})
    return reply


async def test_requests_are_counted_by_backend_method_tool_and_outcome(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting()}})
    client = await gw.client()
    for key in ("a", "b"):
        await call_tool(gw, client, "c_lookup", key=key)
    await call_tool(gw, client, "c_fail", text="no")
    await client.request("tools/list", {})
    samples = await scrape(gw)
    requests = "portico_requests_total"
    assert value(samples, requests, backend="c", method="tools/call", tool="lookup", outcome="ok") == 2
    assert value(samples, requests, backend="c", method="tools/call", tool="fail", outcome="tool_error") == 1
    assert value(samples, requests, backend="", method="tools/list", tool="", outcome="ok") == 1
    assert value(samples, requests, backend="", method="initialize", tool="", outcome="ok") == 1
    assert value(samples, "portico_request_seconds_count", backend="c", method="tools/call") == 3
    assert value(samples, "portico_backend_seconds_count", backend="c", method="tools/call") == 3
    # The gateway answers tools/list itself: no backend time.
    assert value(samples, "portico_backend_seconds_count", backend="", method="tools/list") is None
    # The backend's time is part of the request's (gateway overhead = the difference).
    backend_sum = value(samples, "portico_backend_seconds_sum", backend="c", method="tools/call")
    request_sum = value(samples, "portico_request_seconds_sum", backend="c", method="tools/call")
    assert backend_sum is not None and request_sum is not None and 0 < backend_sum <= request_sum


async def test_made_up_names_and_methods_fold_into_bounded_labels(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting()}})
    client = await gw.client()
    for name in ("made_up_1", "made_up_2", "c_not_a_tool"):
        reply = await call_tool(gw, client, name)
        assert reply["error"]["code"] == -32602
    await client.request("no/such/method", {})
    samples = await scrape(gw)
    requests = "portico_requests_total"
    assert (
        value(samples, requests, backend="", method="tools/call", tool="unknown", outcome="error_-32602") == 3
    )
    assert value(samples, requests, backend="", method="other", tool="", outcome="error_-32601") == 1
    assert label_values(samples, requests, "tool") == {"", "unknown"}
    assert "no/such/method" not in label_values(samples, requests, "method")


async def test_the_tool_label_is_capped_per_backend(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting()}})
    gw.gateway.metrics.tools.limit = 2
    client = await gw.client()
    for tool in ("lookup", "upsert", "append", "stats", "lookup"):
        await call_tool(gw, client, f"c_{tool}", key="k", value="v")
    samples = await scrape(gw)
    requests = "portico_requests_total"
    assert label_values(samples, requests, "tool") == {"", "lookup", "upsert", "other"}
    assert value(samples, requests, backend="c", method="tools/call", tool="lookup", outcome="ok") == 2
    assert value(samples, requests, backend="c", method="tools/call", tool="other", outcome="ok") == 2


async def test_sessions_backends_and_calls_in_flight_are_read_at_scrape_time(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting(), "d": counting()}})
    client = await gw.client()
    await gw.client()
    await gw.client(initialize=False)
    modern = await gw.client(initialize=False)
    await modern.call("tools/list", {"_meta": meta()})
    slow = asyncio.create_task(call_tool(gw, client, "c_slow_lookup", key="k", seconds=1.0))
    await eventually(lambda: sum(len(s.calls_in_flight()) for s in gw.gateway.sessions.values()) == 1)
    samples = await scrape(gw)
    assert value(samples, "portico_requests_in_flight") == 1
    assert value(samples, "portico_sessions", transport="websocket", era="legacy") == 2
    assert value(samples, "portico_sessions", transport="websocket", era="pending") == 1
    assert value(samples, "portico_sessions", transport="websocket", era="modern") == 1
    for backend in ("c", "d"):
        assert value(samples, "portico_backend_up", backend=backend) == 1
        assert value(samples, "portico_backend_tools", backend=backend) == 8
    assert "result" in await slow
    assert value(await scrape(gw), "portico_requests_in_flight") == 0


async def test_a_killed_backend_is_down_and_the_gateway_not_ready(start_gateway: StartGateway) -> None:
    no_restart = {"restart": {"enabled": False}}
    settings = {"mcpServers": {"c": counting(**no_restart), "d": counting(**no_restart)}}
    gw = await start_gateway({**settings, "listen": {"min_ready_backends": 2}})
    status, body = await readyz(gw)
    assert (status, body["status"], body["not_ready"]) == (200, "ready", [])
    backend = gw.gateway.backends["d"]
    os.kill(pid_of(backend), signal.SIGKILL)
    await eventually(lambda: not backend.ready)
    samples = await scrape(gw)
    assert value(samples, "portico_backend_up", backend="d") == 0
    assert value(samples, "portico_backend_up", backend="c") == 1
    status, body = await readyz(gw)
    assert status == 503
    assert body == {"status": "not ready", "min_ready_backends": 2, "ready": ["c"], "not_ready": ["d"]}


async def test_readyz_needs_min_ready_backends_and_names_those_that_failed(
    start_gateway: StartGateway,
) -> None:
    broken = {"command": "/nonexistent/portico-test-server", "restart": {"enabled": False}}
    gw = await start_gateway({"mcpServers": {"c": counting(), "broken": broken}})
    status, body = await readyz(gw)
    assert (status, body["ready"], body["not_ready"]) == (200, ["c"], ["broken"])
    gw = await start_gateway({"mcpServers": {"broken": broken}, "listen": {"min_ready_backends": 1}})
    status, body = await readyz(gw)
    assert (status, body["not_ready"]) == (503, ["broken"])
    async with gw.http.get(gw.server.make_url("/healthz")) as response:
        assert response.status == 200  # alive, though not ready


async def readyz(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with gw.http.get(gw.server.make_url("/readyz")) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_the_bundled_plugins_counters_appear_when_they_are_configured(
    start_gateway: StartGateway,
) -> None:
    plugins = [
        {"name": "ratelimit", "options": {"backends": {"c": {"rate": 3, "per_seconds": 3600}}}},
        {"name": "redact"},
        {"name": "cache"},
        {"name": "dedup"},
    ]
    gw = await start_gateway({"mcpServers": {"c": counting()}, "plugins": plugins})
    client = await gw.client()
    for key in ("someone@example.com", "same", "same"):
        await call_tool(gw, client, "c_lookup", key=key)
    limited = await call_tool(gw, client, "c_lookup", key="fourth")
    assert limited["error"]["code"] == -32065
    samples = await scrape(gw)
    assert value(samples, "portico_cache_events_total", event="hits") == 1
    assert value(samples, "portico_cache_events_total", event="misses") == 2
    assert value(samples, "portico_dedup_shared_total") == 0
    assert value(samples, "portico_ratelimit_limited_total") == 1
    assert (value(samples, "portico_redactions_total", detector="email") or 0) >= 1

    # Every name exposed is part of the documented, stable list (module docstring and README).
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    exposed = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name, _ in samples}
    assert exposed >= {"portico_requests_total", "portico_request_seconds", "portico_refused_requests_total"}
    for name in exposed:
        assert name in (proxy.metrics.__doc__ or "") and f"`{name}" in readme, name


async def test_without_those_plugins_their_metrics_are_absent(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting()}})
    names = {name for name, _ in await scrape(gw)}
    assert "portico_backend_up" in names
    assert not {n for n in names if n.startswith(("portico_cache", "portico_dedup", "portico_ratelimit"))}
    assert "portico_redactions_total" not in names


class DenyAppend:
    """A test plugin refusing calls of ``c_append``, as a policy would."""

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        if ctx.route is not None and ctx.route.name == "append":
            raise AccessDenied("Access denied: append")
        return await call_next(ctx, message)


async def test_policy_denials_are_counted(start_gateway: StartGateway) -> None:
    plugins = [{"name": "tests.test_metrics:DenyAppend"}]
    gw = await start_gateway({"mcpServers": {"c": counting()}, "plugins": plugins})
    client = await gw.client()
    await call_tool(gw, client, "c_append", key="k", value="v")
    await call_tool(gw, client, "c_lookup", key="k")
    samples = await scrape(gw)
    assert value(samples, "portico_policy_denials_total") == 1
    denied = {"backend": "c", "method": "tools/call", "tool": "append", "outcome": "error_-32063"}
    assert value(samples, "portico_requests_total", **denied) == 1


async def test_requests_refused_at_the_edge_are_counted_by_reason(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    auth = {"name": "auth", "options": auth_options(tmp_path, required_scopes=["mcp"])}
    gw = await start_gateway({"mcpServers": {"c": counting()}, "plugins": [auth]})
    before = await scrape(gw)
    assert {value(before, "portico_refused_requests_total", reason=r) for r in REFUSAL_REASONS} == {0.0}
    resource = str(gw.server.make_url("/mcp"))
    cases = [
        ({}, 401),
        ({"Authorization": "Bearer not-a-token"}, 401),
        ({"Authorization": f"Bearer {token('ann', aud=resource)}"}, 403),  # no "mcp" scope
        ({"Origin": "http://evil.example"}, 403),
        ({"Host": f"evil.example:{gw.server.port}"}, 403),
    ]
    for headers, status in cases:
        async with gw.http.post(resource, json={}, headers=headers) as response:
            assert response.status == status, headers
    # A WebSocket upgrade is refused by the same guard.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.http.ws_connect(
            gw.url, protocols=("mcp",), headers={"Host": f"evil.example:{gw.server.port}"}
        )
    assert refused.value.status == 403
    samples = await scrape(gw)
    assert value(samples, "portico_refused_requests_total", reason="unauthenticated") == 2
    assert value(samples, "portico_refused_requests_total", reason="insufficient_scope") == 1
    assert value(samples, "portico_refused_requests_total", reason="foreign_origin") == 1
    assert value(samples, "portico_refused_requests_total", reason="foreign_host") == 2
    # None of them reached the chain.
    assert label_values(samples, "portico_requests_total", "method") == set()


async def test_each_gateway_has_its_own_registry(start_gateway: StartGateway) -> None:
    first = await start_gateway({"mcpServers": {"c": counting()}})
    second = await start_gateway({"mcpServers": {"c": counting()}})
    client = await first.client()
    await call_tool(first, client, "c_lookup", key="k")
    ok = {"backend": "c", "method": "tools/call", "tool": "lookup", "outcome": "ok"}
    assert value(await scrape(first), "portico_requests_total", **ok) == 1
    assert value(await scrape(second), "portico_requests_total", **ok) is None


async def test_breaker_states_and_restarts_are_exposed_per_instance(start_gateway: StartGateway) -> None:
    fast = {"restart": {"initial_backoff_seconds": 0.1, "max_backoff_seconds": 0.5}}
    settings = {"mcpServers": {"c": counting(**fast), "p": counting(replicas=2)}}
    gw = await start_gateway(settings)
    samples = await scrape(gw)
    assert value(samples, "portico_backend_breaker_state", backend="c") == 0
    assert value(samples, "portico_backend_breaker_state", backend="p[1]") == 0
    assert value(samples, "portico_backend_restarts_total", backend="c") == 0
    backend = gw.gateway.backends["c"]
    old = pid_of(backend)
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: backend.ready and pid_of(backend) != old, timeout=10)
    assert value(await scrape(gw), "portico_backend_restarts_total", backend="c") == 1
    # Five transport failures in a row (the default threshold), as calls would report them, open it.
    breaker = backend.breaker
    assert breaker is not None
    for _ in range(5):
        breaker.failed(breaker.admit())
    assert value(await scrape(gw), "portico_backend_breaker_state", backend="c") == 2
