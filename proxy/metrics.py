"""Prometheus metrics of one gateway, served at ``GET /metrics``.

Each gateway has its own ``CollectorRegistry`` (never the process-wide default: tests run many gateways in
one process), created with it as ``gateway.metrics``. Every name starts with ``portico_``; the list is stable:

Counted on the request path (``Session`` around the chain, ``Forwarder`` around the backend):
    portico_requests_total{backend,method,tool,outcome}   client requests answered
    portico_request_seconds{backend,method}               histogram: the whole request inside the gateway
    portico_backend_seconds{backend,method}               histogram: the time inside the backend's call;
                                                          gateway overhead = request - backend
    portico_policy_denials_total                          replies with error code -32063 (access denied)
    portico_refused_requests_total{reason}                HTTP requests and WebSocket upgrades refused before
                                                          any session or message: ``unauthenticated`` (401),
                                                          ``insufficient_scope`` (403), ``foreign_origin``
                                                          and ``foreign_host`` (403, DNS-rebinding guard)

Read when Prometheus scrapes (nothing in backends or plugins changes for them):
    portico_requests_in_flight                            client requests running now
    portico_sessions{transport,era}                       open client sessions
    portico_backend_up{backend}                           1 if the backend is ready (its tools offered)
    portico_backend_tools{backend}                        tools the backend lists
    portico_backend_breaker_state{backend}                each instance's breaker: 0 closed, 1 half-open,
                                                          2 open (a pool's instances are ``name[i]``)
    portico_backend_restarts_total{backend}               restarts and reconnections of each instance
    portico_cache_events_total{event}                     cache plugin: hits, misses, stores, errors,
                                                          evictions
    portico_dedup_shared_total                            dedup plugin: calls answered by another's call
    portico_ratelimit_limited_total                       ratelimit plugin: requests refused
    portico_redactions_total{detector}                    redact plugin: replacements and blocks

Label values are bounded, so a client cannot grow the series without end: ``backend`` is a configured
backend ("" for what the gateway answers itself, and for names no backend has); ``method`` one of
``METHODS`` or ``other``; ``tool`` (``tools/call`` only, else "") the backend's own tool name, ``unknown``
for names not in the catalog and ``other`` past ``TOOL_LABEL_LIMIT`` distinct names per backend;
``outcome`` ``ok``, ``tool_error`` (a result with ``isError``), ``error_<code>`` (JSON-RPC codes
-32768..-32000, else ``error_other``), ``cancelled`` or ``no_reply``; ``era`` ``legacy`` (handshake made),
``modern`` (stateless requests) or ``pending`` (nothing asked yet).
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.chain import Context, PluginCounter, Route
from proxy.errors import ErrorCode
from proxy.jsonrpc import Message
from proxy.metric_series import CounterSeries, HistogramSeries

if TYPE_CHECKING:
    from proxy.backend import Backend
    from proxy.gateway import Gateway

log = logging.getLogger("portico.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
TOOL_LABEL_LIMIT = 200
UNKNOWN, OTHER = "unknown", "other"
# The MCP methods a client may ask the gateway; anything else is counted as "other".
METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "subscriptions/listen",
        "logging/setLevel",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
    }
)
# Why the edge refused a request (the ``reason`` label of portico_refused_requests_total).
REFUSAL_REASONS = ("unauthenticated", "insufficient_scope", "foreign_origin", "foreign_host")
# Gateway overhead is well under a millisecond and backends take up to the request deadline (60 s).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def outcome_of(reply: Message | None) -> str:
    """``ok``, ``tool_error``, ``error_<code>`` or ``no_reply`` (see the module docstring)."""
    if reply is None:
        return "no_reply"
    error = reply.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        # Only the JSON-RPC reserved range keeps its code: a backend's own codes could be anything.
        if isinstance(code, int) and -32768 <= code <= -32000:
            return f"error_{code}"
        return "error_other"
    result = reply.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "tool_error"
    return "ok"


class ToolLabels:
    """The ``tool`` label's values: at most ``limit`` distinct names per backend, then ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def of(self, method: str, route: Route | None) -> str:
        if method != "tools/call":
            return ""
        if route is None:
            return UNKNOWN
        seen = self._seen.setdefault(route.backend, set())
        if route.name in seen:
            return route.name
        if len(seen) >= self.limit:
            return OTHER
        seen.add(route.name)
        return route.name


class GatewayMetrics:
    """The metrics of one gateway: its registry, and the calls the request path makes."""

    def __init__(self, gateway: Gateway, tool_limit: int = TOOL_LABEL_LIMIT) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.tools = ToolLabels(tool_limit)
        self._requests = CounterSeries(
            "portico_requests",
            "Client requests answered, by backend, method, tool and outcome.",
            ("backend", "method", "tool", "outcome"),
        )
        self._request_seconds = HistogramSeries(
            "portico_request_seconds",
            "Seconds a client request spent in the gateway, backend included.",
            ("backend", "method"),
            BUCKETS,
        )
        self._backend_seconds = HistogramSeries(
            "portico_backend_seconds",
            "Seconds spent inside the backend's call.",
            ("backend", "method"),
            BUCKETS,
        )
        self._denials = CounterSeries(
            "portico_policy_denials", "Replies refused by the access policy (-32063)."
        )
        self._refused = CounterSeries(
            "portico_refused_requests",
            "HTTP requests and WebSocket upgrades refused before any session, by reason.",
            ("reason",),
        )
        # Every reason from the start, so a rate over them is defined before the first refusal.
        self._refused.counts.update(((reason,), 0) for reason in REFUSAL_REASONS)
        series = (self._requests, self._request_seconds, self._backend_seconds, self._denials, self._refused)
        self.registry.register(SeriesCollector(series))
        self.registry.register(GatewayCollector(gateway))

    def request_done(self, ctx: Context, reply: Message | None, seconds: float, cancelled: bool) -> None:
        """A client request's chain dispatch ended after ``seconds``."""
        route = ctx.route
        backend = route.backend if route is not None else ""
        method = method_label(ctx.method)
        outcome = "cancelled" if cancelled else outcome_of(reply)
        self._requests.inc((backend, method, self.tools.of(ctx.method, route), outcome))
        self._request_seconds.observe((backend, method), seconds)
        if outcome == _DENIED:
            self._denials.inc()

    def refused(self, reason: str) -> None:
        """A request was refused at the edge, before the chain (one of ``REFUSAL_REASONS``)."""
        self._refused.inc((reason,))

    def backend_done(self, backend: str, method: str, seconds: float) -> None:
        """A call to ``backend`` (from the forwarder) ended after ``seconds``."""
        self._backend_seconds.observe((backend, method_label(method)), seconds)

    def traffic(self) -> dict[str, Any]:
        """Totals since start, for the console (which turns two readings into a rate and percentiles):
        requests answered, those that ended in an error, and the request-latency histogram summed over
        backends and methods (``buckets`` are upper bounds in seconds, ``counts`` cumulative, ``count``
        every timed request, those slower than the last bound included)."""
        requests = sum(self._requests.counts.values())
        errors = sum(n for labels, n in self._requests.counts.items() if labels[3].startswith("error"))
        per_bucket = [0] * (len(BUCKETS) + 1)
        total_seconds = 0.0
        for distribution in self._request_seconds.series.values():
            per_bucket = [a + b for a, b in zip(per_bucket, distribution.counts, strict=True)]
            total_seconds += distribution.sum
        cumulative = list(accumulate(per_bucket))
        return {
            "requests": requests,
            "errors": errors,
            "latency": {
                "buckets": list(BUCKETS),
                "counts": cumulative[:-1],
                "count": cumulative[-1],
                "sum_seconds": total_seconds,
            },
        }

    def exposition(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


_DENIED = f"error_{ErrorCode.ACCESS_DENIED}"



# -- read at scrape time ------------------------------------------------------------------------------------

BackendReading = Callable[["Backend"], float]
# What is exposed of each backend, read when Prometheus scrapes (breakers and restarts, per instance,
# come from _recovery_families).
BACKEND_GAUGES: tuple[tuple[str, str, BackendReading], ...] = (
    ("portico_backend_up", "1 if the backend is ready and its tools are offered, else 0.", lambda b: b.ready),
    ("portico_backend_tools", "Tools the backend lists.", lambda b: len(b.lists.tools)),
)


class SeriesCollector(Collector):
    """Exposes the series the request path counts into."""

    def __init__(self, series: Iterable[CounterSeries | HistogramSeries]) -> None:
        self._series = tuple(series)

    def collect(self) -> Iterator[Metric]:
        for series in self._series:
            yield series.family()


class GatewayCollector(Collector):
    """Reads the gateway's state when Prometheus scrapes: sessions, calls in flight, backends, plugins."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = weakref.ref(gateway)

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway()
        if gateway is None:
            return
        yield from _session_families(gateway)
        for name, text, reading in BACKEND_GAUGES:
            family = GaugeMetricFamily(name, text, labels=("backend",))
            for backend in gateway.backends.values():
                family.add_metric((backend.name,), float(reading(backend)))
            yield family
        yield from _recovery_families(gateway)
        yield from plugin_families(named.plugin for named in gateway.plugins)


# The breaker's states as the values of portico_backend_breaker_state.
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


def _recovery_families(gateway: Gateway) -> Iterator[Metric]:
    """Each backend instance's breaker state and restart count (a pool's instances are ``name[i]``)."""
    breakers = GaugeMetricFamily(
        "portico_backend_breaker_state",
        "The circuit breaker of each backend instance: 0 closed, 1 half-open, 2 open.",
        labels=("backend",),
    )
    restarts = CounterMetricFamily(
        "portico_backend_restarts",
        "Restarts (stdio) and reconnections (remote) of each backend instance.",
        labels=("backend",),
    )
    for backend in gateway.backends.values():
        for instance in getattr(backend, "instances", None) or (backend,):
            if instance.breaker is not None:
                breakers.add_metric((instance.name,), float(BREAKER_STATES.get(instance.breaker.state, 2)))
            if instance.restarter is not None:
                restarts.add_metric((instance.name,), float(instance.restarter.restarts))
    yield breakers
    yield restarts


def _session_families(gateway: Gateway) -> Iterator[Metric]:
    sessions = list(gateway.sessions.values())
    in_flight = GaugeMetricFamily("portico_requests_in_flight", "Client requests running now.")
    in_flight.add_metric((), float(sum(len(s.calls_in_flight()) for s in sessions)))
    yield in_flight
    family = GaugeMetricFamily("portico_sessions", "Open client sessions.", labels=("transport", "era"))
    for (transport, era), count in sorted(Tally((s.transport, s.era) for s in sessions).items()):
        family.add_metric((transport, era), float(count))
    yield family


# -- the plugins' own counters ------------------------------------------------------------------------------


def plugin_families(plugins: Iterable[object]) -> Iterator[Metric]:
    """The counters plugins report (``metrics()``, see ``proxy.chain.PluginCounter``); several plugins
    reporting one name are summed."""
    merged: dict[str, tuple[PluginCounter, Tally[tuple[str, ...]]]] = {}
    for plugin in plugins:
        report = getattr(plugin, "metrics", None)
        if not callable(report):
            continue
        try:
            counters: list[PluginCounter] = list(report())
        except Exception:
            # A scrape must not fail for one plugin's bug; its counts are missing until it is fixed.
            log.exception("plugin %s failed to report its counters", type(plugin).__name__)
            continue
        for counter in counters:
            _, samples = merged.setdefault(counter.name, (counter, Tally()))
            samples.update(counter.samples)
    for name, (first, samples) in merged.items():
        family = CounterMetricFamily(f"portico_{name}", first.help, labels=first.labels)
        for labels, value in samples.items():
            family.add_metric(labels, float(value))
        yield family
