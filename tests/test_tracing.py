"""OpenTelemetry tracing (proxy/tracing.py), through a real gateway and a real stdio backend.

Spans are caught by an in-memory exporter added to the gateway's own tracer provider; the backend
(tests/fixtures/counting_server.py) records every line it receives, so the test sees the traceparent
the gateway forwarded exactly as the backend got it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy import config
from proxy.errors import ConfigError
from proxy.tracing import Tracing, with_trace_context
from tests.conftest import RunningGateway, StartGateway, fixture_server, listening_fixture

# A client's own trace, as a W3C traceparent: version 00, trace id, parent span id, sampled.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
POST_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
SESSION = "Mcp-Session-Id"
LATEST = "2025-11-25"


def settings(
    record: Path, *, enabled: bool = True, plugins: Sequence[str] = ("request_log",)
) -> dict[str, Any]:
    backend = fixture_server("counting_server.py", env={"RECORD_TO": str(record)})
    return {"mcpServers": {"c": backend}, "plugins": list(plugins), "tracing": {"enabled": enabled}}


async def traced_gateway(
    start_gateway: StartGateway, record: Path, **options: Any
) -> tuple[RunningGateway, InMemorySpanExporter]:
    gw = await start_gateway(settings(record, **options))
    spans = InMemorySpanExporter()
    gw.gateway.tracing.add_exporter(spans)
    return gw, spans


def received_calls(record: Path) -> list[dict[str, Any]]:
    """The tools/call requests the backend received, as it received them."""
    lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [m for m in lines if m.get("method") == "tools/call"]


def trace_of(spans: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    """Every span of the (one) trace whose request span is ``method``."""
    finished = spans.get_finished_spans()
    roots = [s for s in finished if s.name == method and s.kind is SpanKind.SERVER]
    assert len(roots) == 1, [s.name for s in finished]
    trace_id = roots[0].context.trace_id
    return [s for s in finished if s.context.trace_id == trace_id]


def named(found: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in found if s.name == name]
    assert len(matching) == 1, [s.name for s in found]
    return matching[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def traceparent_fields(value: str) -> tuple[str, str]:
    """(trace id, parent span id) of a traceparent, as lowercase hex."""
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, value
    return trace_id, span_id


async def post(gw: RunningGateway, message: dict[str, Any], headers: dict[str, str]) -> Any:
    response = await gw.http.post(
        gw.server.make_url("/mcp"), data=json.dumps(message), headers={**POST_HEADERS, **headers}
    )
    assert response.status in (200, 202), await response.text()
    return response


async def http_session(gw: RunningGateway) -> str:
    params = {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    response = await post(gw, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}, {})
    session: str = response.headers[SESSION]
    await post(gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, {SESSION: session})
    return session


# -- one request, one trace ----------------------------------------------------------------------------


async def test_a_tool_call_is_one_trace_of_request_plugin_and_backend_spans(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    gw, spans = await traced_gateway(start_gateway, record)
    assert gw.gateway.to_backend._entry.__qualname__ != "_layer.<locals>.layer"
    client = await gw.client()
    await client.call("tools/call", {"name": "c_lookup", "arguments": {"key": "secret-k"}}, id=7)

    found = trace_of(spans, "tools/call")
    request, plugin = named(found, "tools/call"), named(found, "plugin request_log")
    backend = named(found, "backend tools/call")
    # The client sent no traceparent: the request span starts the trace.
    assert request.parent is None
    assert parent_id(plugin) == request.context.span_id and plugin.kind is SpanKind.INTERNAL
    assert parent_id(backend) == plugin.context.span_id and backend.kind is SpanKind.CLIENT
    assert dict(request.attributes or {}) == {
        "mcp.method": "tools/call",
        "rpc.jsonrpc.request_id": "7",
        "mcp.transport": "websocket",
        "mcp.backend": "c",
        "mcp.tool": "c_lookup",
        "mcp.outcome": "ok",
    }
    assert backend.attributes is not None and backend.attributes["mcp.tool"] == "lookup"
    assert backend.attributes["mcp.backend"] == "c" and backend.attributes["mcp.outcome"] == "ok"
    # Never arguments or results.
    every_value = [str(v) for s in found for v in (s.attributes or {}).values()]
    assert not any("secret-k" in v or "#1" in v for v in every_value), every_value

    # The backend's request names the backend span, so the backend's own spans join the trace.
    (call,) = received_calls(record)
    trace_id, span_id = traceparent_fields(call["params"]["_meta"]["traceparent"])
    assert int(trace_id, 16) == request.context.trace_id
    assert int(span_id, 16) == backend.context.span_id


async def test_errors_and_tool_failures_are_outcomes_on_the_spans(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw, spans = await traced_gateway(start_gateway, tmp_path / "received.jsonl", plugins=())
    client = await gw.client()
    await client.call("tools/call", {"name": "c_fail", "arguments": {"text": "no"}})
    failed = named(trace_of(spans, "tools/call"), "backend tools/call")
    assert failed.attributes is not None and failed.attributes["mcp.outcome"] == "tool_error"
    spans.clear()

    reply = await client.request("tools/call", {"name": "c_nonexistent", "arguments": {}})
    assert reply["error"]["code"] == -32602
    (request,) = trace_of(spans, "tools/call")  # refused before any backend call
    assert request.attributes is not None
    assert request.attributes["mcp.outcome"] == "error"
    assert request.attributes["rpc.jsonrpc.error_code"] == -32602
    assert request.status.status_code is StatusCode.ERROR


# -- the client's trace ------------------------------------------------------------------------------------


async def test_a_traceparent_header_on_an_http_post_makes_the_request_part_of_the_clients_trace(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    gw, spans = await traced_gateway(start_gateway, record)
    session = await http_session(gw)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "c_lookup", "arguments": {}},
    }
    response = await post(gw, call, {SESSION: session, "traceparent": CLIENT_TRACEPARENT})
    assert "result" in await response.json()

    found = trace_of(spans, "tools/call")
    request = named(found, "tools/call")
    assert request.context.trace_id == int(CLIENT_TRACE, 16)
    assert parent_id(request) == int(CLIENT_SPAN, 16)
    assert request.parent is not None and request.parent.is_remote
    assert request.attributes is not None and request.attributes["mcp.transport"] == "streamable-http"
    (received,) = received_calls(record)
    trace_id, span_id = traceparent_fields(received["params"]["_meta"]["traceparent"])
    assert trace_id == CLIENT_TRACE
    assert int(span_id, 16) == named(found, "backend tools/call").context.span_id

    # The header belongs to its own request only: the next POST without one starts a trace of its own.
    spans.clear()
    await post(gw, {**call, "id": 3}, {SESSION: session})
    assert named(trace_of(spans, "tools/call"), "tools/call").parent is None


async def test_a_meta_traceparent_over_websocket_joins_the_clients_trace_and_is_replaced_upstream(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    gw, spans = await traced_gateway(start_gateway, record)
    client = await gw.client()
    meta = {"traceparent": CLIENT_TRACEPARENT, "progressToken": "p1"}
    await client.call("tools/call", {"name": "c_lookup", "arguments": {}, "_meta": meta})

    found = trace_of(spans, "tools/call")
    request = named(found, "tools/call")
    assert request.context.trace_id == int(CLIENT_TRACE, 16)
    assert parent_id(request) == int(CLIENT_SPAN, 16)
    (received,) = received_calls(record)
    forwarded = received["params"]["_meta"]
    # The gateway's backend span is the backend's parent now; the rest of the client's _meta travels on
    # (the progress token under the gateway's own number for it).
    assert forwarded["traceparent"] != CLIENT_TRACEPARENT and "progressToken" in forwarded
    trace_id, span_id = traceparent_fields(forwarded["traceparent"])
    assert trace_id == CLIENT_TRACE
    assert int(span_id, 16) == named(found, "backend tools/call").context.span_id


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_an_http_backend_gets_the_backend_span_in_the_traceparent_header_too(
    start_gateway: StartGateway, tmp_path: Path, transport: str
) -> None:
    record = tmp_path / "headers.jsonl"
    args = ("--transport", transport, "--record-headers", str(record))
    async with listening_fixture("http_backend.py", *args) as (url, _):
        backend = {"url": url, "type": transport, "era": "legacy"}
        gw = await start_gateway({"mcpServers": {"h": backend}, "tracing": {"enabled": True}})
        spans = InMemorySpanExporter()
        gw.gateway.tracing.add_exporter(spans)
        client = await gw.client()
        meta = {"traceparent": CLIENT_TRACEPARENT}
        await client.call("tools/call", {"name": "h_echo", "arguments": {"text": "hi"}, "_meta": meta})

    backend_span = named(trace_of(spans, "tools/call"), "backend tools/call")
    received = [json.loads(line) for line in record.read_text().splitlines()]
    # Only the traced request carries one (the gateway's own handshake and list requests are not traced).
    (traced,) = [r for r in received if r["traceparent"] is not None]
    assert traced["method"] == "POST"
    trace_id, span_id = traceparent_fields(traced["traceparent"])
    assert trace_id == CLIENT_TRACE
    assert int(span_id, 16) == backend_span.context.span_id


async def test_a_malformed_traceparent_starts_a_new_trace_and_the_call_still_works(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw, spans = await traced_gateway(start_gateway, tmp_path / "received.jsonl")
    client = await gw.client()
    params = {"name": "c_lookup", "arguments": {}, "_meta": {"traceparent": "00-nonsense-01"}}
    assert "content" in await client.call("tools/call", params)
    assert named(trace_of(spans, "tools/call"), "tools/call").parent is None


# -- off by default --------------------------------------------------------------------------------------


async def test_disabled_tracing_adds_no_spans_and_no_traceparent(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    gw = await start_gateway(settings(record, enabled=False))
    tracing = gw.gateway.tracing
    assert not tracing.enabled and tracing.plugin_observer() is None
    with pytest.raises(RuntimeError):
        tracing.add_exporter(InMemorySpanExporter())
    # No span layer in the chain at all: the first layer a message meets is the first plugin's own.
    assert gw.gateway.to_backend._entry.__qualname__ == "_layer.<locals>.layer"
    client = await gw.client()
    await client.call("tools/call", {"name": "c_lookup", "arguments": {}})
    (received,) = received_calls(record)
    assert "_meta" not in received["params"]


def test_tracing_is_off_by_default_and_otlp_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = config.parse("{}").tracing
    assert (defaults.enabled, defaults.exporter, defaults.service_name, defaults.sample_ratio) == (
        False,
        "none",
        "portico",
        1.0,
    )
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        config.parse("tracing: {enabled: true, sample_ratio: 2}")
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_otlp(name: str, package: str | None = None) -> Any:
        return None if name.startswith("opentelemetry.exporter.otlp") else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_otlp)
    with pytest.raises(ConfigError, match=r"tracing: exporter 'otlp' needs the otlp extra") as refused:
        config.parse("tracing: {enabled: true, exporter: otlp}")
    assert "\n" not in refused.value.message


async def test_the_otlp_exporter_is_built_when_its_extra_is_installed() -> None:
    # make test installs the otlp extra (see the Makefile), so this always runs there.
    cfg = config.parse("tracing: {enabled: true, exporter: otlp, endpoint: 'http://127.0.0.1:9/v1/traces'}")
    tracing = Tracing(cfg.tracing)
    assert tracing.enabled
    await tracing.close()


def test_forwarded_params_get_a_copy_of_meta_never_the_clients_own() -> None:
    clients_meta = {"progressToken": 1}
    params = {"name": "t", "_meta": clients_meta}
    assert with_trace_context(params) is params  # no span: nothing to propagate
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("call") as span:
        forwarded = with_trace_context(params)
    assert clients_meta == {"progressToken": 1} and params["_meta"] is clients_meta
    trace_id, span_id = traceparent_fields(forwarded["_meta"]["traceparent"])
    assert int(trace_id, 16) == span.get_span_context().trace_id
    assert int(span_id, 16) == span.get_span_context().span_id
    assert forwarded["_meta"]["progressToken"] == 1
    assert trace.get_current_span() is trace.INVALID_SPAN
