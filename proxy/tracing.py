"""OpenTelemetry tracing: one span per client request, a child per plugin and per backend call.

Each gateway owns its ``TracerProvider`` (never the process-wide one), so one process can run many
gateways, each with its own exporter. A client joins its own trace by sending a W3C ``traceparent``:
in ``params._meta.traceparent`` (any transport), or as the HTTP header of the request that carries the
message (Streamable HTTP, HTTP+SSE). The gateway passes its backend span on to the backend in the
forwarded request's ``params._meta.traceparent`` and, toward HTTP backends, also in the ``traceparent``
header of the POST carrying it (``proxy.connectors.remote.trace_headers``), so the backend's spans join
the same trace.

Spans carry names and outcomes only (method, backend, tool, request id, error code): never arguments or
results, which may hold secrets. When tracing is off nothing here runs: the chain is built without
span layers, and the session and forwarder skip the traced paths.

The shape of one ``tools/call`` (plugins nest like the chain they trace; the backend call happens
inside the innermost plugin)::

    tools/call                  SERVER   (the client's request; child of the client's span, if any)
      plugin request_log        INTERNAL
        plugin policy           INTERNAL
          backend tools/call    CLIENT   (its context travels to the backend in _meta.traceparent)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy import __version__, jsonrpc
from proxy.chain import Context, Credentials, Handler, PluginObserver, Route
from proxy.config import TracingConfig
from proxy.errors import ErrorCode, PorticoError
from proxy.jsonrpc import Message

log = logging.getLogger("portico.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Attribute names (the brief's; the OpenTelemetry MCP conventions are still a draft).
METHOD = "mcp.method"
BACKEND = "mcp.backend"
TOOL = "mcp.tool"
PLUGIN = "mcp.plugin"
TRANSPORT = "mcp.transport"
REQUEST_ID = "rpc.jsonrpc.request_id"
ERROR_CODE = "rpc.jsonrpc.error_code"
# "ok", "error" (a JSON-RPC error), "tool_error" (a result with isError) or "cancelled".
OUTCOME = "mcp.outcome"

# Transports whose every message arrives with an HTTP request of its own, whose header may name the
# client's trace. (A WebSocket's upgrade request is not any one message's parent.)
_HTTP_TRANSPORTS = frozenset({"streamable-http", "sse"})
# The traceparent header of the HTTP request being handled. Set where every HTTP request is
# authenticated, before its message reaches the session; the session's request task inherits it.
_http_traceparent: ContextVar[str | None] = ContextVar("portico_http_traceparent", default=None)
_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """One gateway's tracer: its provider and exporter, and the spans the gateway's modules open."""

    def __init__(self, config: TracingConfig) -> None:
        self.enabled = config.enabled
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()
        if not config.enabled:
            return
        self._provider = TracerProvider(
            # A client's sampling decision stands for its trace; new traces are sampled at the ratio.
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create({"service.name": config.service_name}),
            shutdown_on_exit=False,
        )
        exporter = _exporter(config)
        if exporter is not None:
            # Exports happen on the processor's own thread, never in the event loop.
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("portico", __version__)

    def add_exporter(self, exporter: SpanExporter) -> None:
        """Also hand every finished span to ``exporter``, as it ends (tests: an in-memory exporter)."""
        if self._provider is None:
            raise RuntimeError("tracing is not enabled")
        self._provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def close(self) -> None:
        """Flush and stop the exporter (off the event loop: an OTLP flush is blocking network I/O)."""
        if self._provider is not None:
            await asyncio.to_thread(self._provider.shutdown)

    # -- where spans come from ------------------------------------------------------------------------

    def plugin_observer(self) -> PluginObserver | None:
        """What ``Chain`` wraps each plugin in: a span per plugin, or None when tracing is off."""
        return self._plugin_layer if self.enabled else None

    async def trace_request(self, ctx: Context, message: Message, dispatch: Handler) -> Message | None:
        """Run a client request (``dispatch``: the chain) inside its request span."""
        attributes: dict[str, Any] = {
            METHOD: ctx.method,
            REQUEST_ID: str(message.get("id")),
            TRANSPORT: ctx.session.transport,
            **_route_attributes(ctx.route, exposed=True),
        }
        with self._span(ctx.method, SpanKind.SERVER, attributes, _client_parent(message)) as span:
            reply = await dispatch(ctx, message)
            _record_reply(span, reply)
            return reply

    async def trace_backend_call(
        self,
        ctx: Context,
        message: Message,
        route: Route,
        params: dict[str, Any],
        call: Callable[[dict[str, Any]], Awaitable[Message]],
    ) -> Message:
        """Run one backend call inside its span; the backend gets the span's context in ``_meta``."""
        attributes: dict[str, Any] = {
            METHOD: ctx.method,
            REQUEST_ID: str(message.get("id")),
            **_route_attributes(route, exposed=False),
        }
        with self._span(f"backend {ctx.method}", SpanKind.CLIENT, attributes) as span:
            reply = await call(with_trace_context(params))
            _record_reply(span, reply)
            return reply

    def _plugin_layer(self, name: str, inner: Handler) -> Handler:
        async def traced(ctx: Context, message: Message) -> Message | None:
            # Only within a request's span: backend-initiated traffic and client notifications have no
            # trace to join, and a span per plugin for each of them would be noise.
            if not trace.get_current_span().is_recording():
                return await inner(ctx, message)
            with self._span(f"plugin {name}", SpanKind.INTERNAL, {PLUGIN: name, METHOD: ctx.method}) as span:
                reply = await inner(ctx, message)
                _record_reply(span, reply)
                return reply

        return traced

    @contextmanager
    def _span(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        parent: otel_context.Context | None = None,
    ) -> Iterator[Span]:
        # Exceptions are recorded by code only: their messages and tracebacks stay out of the trace.
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except asyncio.CancelledError:
                span.set_attribute(OUTCOME, "cancelled")
                raise
            except PorticoError as exc:
                _mark_error(span, exc.code)
                raise
            except Exception:
                _mark_error(span, ErrorCode.INTERNAL_ERROR)
                raise


def remember_http_traceparent(credentials: Credentials) -> None:
    """Keep the traceparent header of the HTTP request being authenticated, for its message's span.

    Called for every connection and HTTP request (a WebSocket's upgrade included, which clears it)."""
    http = credentials.transport in _HTTP_TRANSPORTS
    _http_traceparent.set(credentials.traceparent if http else None)


def with_trace_context(params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` whose ``_meta`` names the current span (``traceparent``, ``tracestate``).

    The client's own ``_meta`` is copied, never changed: plugins may still look at the client's message.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return params
    meta = params.get("_meta")
    return {**params, "_meta": {**(meta if isinstance(meta, dict) else {}), **carrier}}


def _client_parent(message: Message) -> otel_context.Context:
    """The client's trace: ``_meta.traceparent`` first (it belongs to this very message), else the HTTP
    header. A missing or malformed one starts a new trace (an empty context, never the current one)."""
    meta = jsonrpc.params_of(message).get("_meta")
    carrier: dict[str, str] = {}
    if isinstance(meta, dict) and isinstance(meta.get(TRACEPARENT), str):
        carrier[TRACEPARENT] = meta[TRACEPARENT]
        if isinstance(meta.get(TRACESTATE), str):
            carrier[TRACESTATE] = meta[TRACESTATE]
    else:
        header = _http_traceparent.get()
        if header is not None:
            carrier[TRACEPARENT] = header
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


def _route_attributes(route: Route | None, *, exposed: bool) -> dict[str, Any]:
    if route is None:
        return {}
    attributes: dict[str, Any] = {BACKEND: route.backend}
    if route.kind == "tool":
        # The client's name for the tool on the request span, the backend's own on the backend span.
        attributes[TOOL] = route.exposed if exposed else route.name
    return attributes


def _record_reply(span: Span, reply: Message | None) -> None:
    error = reply.get("error") if reply is not None else None
    if isinstance(error, dict):
        code = error.get("code")
        _mark_error(span, code if isinstance(code, int) else ErrorCode.INTERNAL_ERROR)
        return
    result = reply.get("result") if reply is not None else None
    tool_failed = isinstance(result, dict) and result.get("isError") is True
    span.set_attribute(OUTCOME, "tool_error" if tool_failed else "ok")


def _mark_error(span: Span, code: int) -> None:
    span.set_attribute(OUTCOME, "error")
    span.set_attribute(ERROR_CODE, code)
    span.set_status(StatusCode.ERROR, f"JSON-RPC error {code}")


def _exporter(config: TracingConfig) -> SpanExporter | None:
    if config.exporter == "console":
        return ConsoleSpanExporter()
    if config.exporter == "otlp":
        # An optional extra; the config refuses ``otlp`` when it is not installed.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=config.endpoint)
    return None
