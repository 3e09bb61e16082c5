"""The plugin chain: the one road every JSON-RPC message travels, in both directions.

A plugin is an async callable in the shape of an onion layer (like aiohttp middlewares)::

    async def __call__(self, ctx, message, call_next) -> reply | None

- pass:      ``return await call_next(ctx, message)``
- modify:    call on with a changed copy of the message, or change the reply on its way back
- answer:    return a reply without calling on (a cache hit, a de-duplicated call)
- refuse:    raise ``Rejection`` (or any ``PorticoError``)

The order is the config's list and nothing else. ``Chain.dispatch`` is the single place where an exception
becomes a JSON-RPC error; a plugin that fails never lets the message through unprocessed, because the
message only moves on when the plugin itself calls ``call_next``.

Requests return their response (a dict with ``result`` or ``error``); notifications return ``None``.
Direction ``TO_BACKEND`` carries what a client sent (and brings back the backend's reply); direction
``TO_CLIENT`` carries what a backend sent (sampling, elicitation, roots, progress, logs, list changes) and
brings back the client's reply.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from proxy import jsonrpc
from proxy.errors import ErrorCode, PorticoError
from proxy.jsonrpc import Message

log = logging.getLogger("portico.chain")

T = TypeVar("T")


class Direction(enum.Enum):
    TO_BACKEND = "to_backend"
    TO_CLIENT = "to_client"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes: the backend and the backend's own name for the thing addressed."""

    backend: str
    # "tool", "prompt", "resource", "template" or "backend" (a call that addresses the backend itself).
    kind: str
    # The backend's own tool or prompt name, or resource URI.
    name: str
    # The name or URI the client used.
    exposed: str
    # What the backend's annotations say of a tool: it only reads (readOnlyHint), or calling it twice
    # does no more than calling it once (idempotentHint). See ``only_reads`` and ``safe_to_repeat``.
    read_only: bool = False
    idempotent: bool = False

    @property
    def object(self) -> str:
        """``backend/kind/name``: how policies and virtual servers name what a message addresses."""
        return f"{self.backend}/{self.kind}/{self.name}"


# What calling (or reading) each kind of listed item means: the action a policy decides on when it
# filters a list, so a client sees exactly what it may use.
USE_ACTIONS: Mapping[str, str] = {
    "tool": "tools/call",
    "prompt": "prompts/get",
    "resource": "resources/read",
    "template": "resources/read",
}


# Requests that change nothing: safe to retry, to cache and to share between identical callers.
READ_METHODS = frozenset(
    {
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/get",
        "completion/complete",
        "ping",
        "server/discover",
    }
)


def only_reads(method: str, route: Route | None) -> bool:
    """Whether a request only reads (so its result may be cached, or shared by identical calls): the
    read methods, and calls of tools the backend annotates ``readOnlyHint``."""
    if method == "tools/call":
        return route is not None and route.read_only
    return method in READ_METHODS


def safe_to_repeat(method: str, route: Route | None) -> bool:
    """Whether sending a request twice does no harm (retries, failover to another instance): what only
    reads, and calls of tools annotated ``idempotentHint``. Anything else reaches a backend at most once."""
    if method == "tools/call":
        return route is not None and route.idempotent
    return method in READ_METHODS


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of a session, as an authentication plugin established it.

    Without an authentication plugin every session is ``ANONYMOUS``. The gateway itself enforces
    ``backends`` (a virtual-account token's limit) and ends a session whose ``valid_until`` has passed;
    everything else here is for plugins (policy, caches, rate limits) to decide on.
    """

    # A stable identity, the same across the principal's tokens (a JWT's subject claim, a user's name).
    subject: str
    roles: tuple[str, ...] = ()
    # The tenant (Casbin domain) the principal acts in, when the deployment has tenants.
    tenant: str | None = None
    scopes: frozenset[str] = frozenset()
    # The verified token's claims (empty for gateway-issued tokens, which have none).
    claims: Mapping[str, Any] = field(default_factory=dict)
    # Only these backends may be reached (virtual-account tokens); None means every backend.
    backends: frozenset[str] | None = None
    # Epoch seconds after which the session must end (the token's expiry plus the allowed skew).
    valid_until: float | None = None
    # Names the credential itself (a hash of the token, a gateway token's id), for caches and revocation.
    credential: str = ""
    # How the principal was established: "anonymous", "jwt", "personal", "account", ...
    kind: str = "anonymous"


ANONYMOUS = Principal(subject="anonymous")


class SessionView(Protocol):
    """What plugins may know about the client session a message belongs to."""

    @property
    def id(self) -> str: ...

    @property
    def transport(self) -> str: ...

    @property
    def protocol_version(self) -> str | None: ...

    @property
    def client_info(self) -> dict[str, Any]: ...

    def end(self, reason: str) -> None:
        """End the session now (a revoked or expired credential): the client is told ``reason``."""
        ...


class Key(Generic[T]):
    """A typed key for data plugins share through the context (never module globals)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


@dataclass(slots=True)
class Context:
    """Everything a plugin may know about one message on its way."""

    session: SessionView
    direction: Direction
    method: str
    route: Route | None
    # Monotonic time (``time.monotonic()``) by which the message must be answered.
    deadline: float
    # The protocol version this message speaks: the session's (legacy era) or its own (modern era).
    protocol_version: str | None = None
    # Who sent it, as the session's authentication established it.
    principal: Principal = ANONYMOUS
    # Made on the first ``set``: most messages never carry plugin data, so most contexts need no dict.
    _data: dict[Key[Any], Any] | None = None
    # A tuple, replaced on each restriction: most messages have none, and then nothing is allocated.
    _limits: tuple[Callable[[Route], bool], ...] = ()

    def restrict(self, allows: Callable[[Route], bool]) -> None:
        """Narrow what this message may reach and see: list results keep only the items whose route
        ``allows`` accepts, and a call to anything else is answered as if it did not exist. Plugins call
        it before ``call_next``; restrictions only ever add up."""
        self._limits = (*self._limits, allows)

    def allows(self, route: Route) -> bool:
        """Whether every restriction placed on this message lets it reach ``route``."""
        # Most messages carry no restriction: no generator is made for them.
        return not self._limits or all(allows(route) for allows in self._limits)

    @property
    def restricted(self) -> bool:
        return bool(self._limits)

    def get(self, key: Key[T], default: T | None = None) -> T | None:
        if self._data is None:
            return default
        return self._data.get(key, default)

    def set(self, key: Key[T], value: T) -> None:
        if self._data is None:
            self._data = {}
        self._data[key] = value

    def remaining(self) -> float:
        """Seconds left until the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


Handler = Callable[[Context, Message], Awaitable[Message | None]]

# The version of the access policy that decided a request, set by the policy plugin: whatever keeps an
# answer for later (a cache) keys it on this, so a policy change never serves a stale allow.
POLICY_VERSION: Key[int] = Key("policy.version")
# How the policy decided a routed request: "allow by: <rule>", "deny by: <rule>" or "deny: no rule
# matched" (for audit records; set by the policy plugin).
POLICY_DECISION: Key[str] = Key("policy.decision")
# Redactions made in one request and its reply, per detector (counts only, never values; set by redact).
REDACTIONS: Key[dict[str, int]] = Key("redact.counts")
# The request as the redact plugin passed it on (redacted): what an audit record may show of the
# arguments. Absent when no redaction ran, and then no arguments may be shown.
REDACTED_REQUEST: Key[dict[str, Any]] = Key("redact.request")


class Plugin(Protocol):
    """One layer of the chain. See the module docstring for what it may do.

    A plugin holding connections or files may also define ``close()`` (sync or async): the gateway
    calls it once when it stops. One that follows something outside the process (a Redis channel) may
    define ``start()`` (sync or async): called once before its chain is put in force (at start-up, or
    when a reload builds it)."""

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented when it connected (WebSocket, SSE) or sent an HTTP request."""

    transport: str
    # The endpoint's path ("/mcp", "/servers/{name}/mcp") and its URL as the client addressed it.
    path: str
    url: str
    # The Authorization header, if any.
    authorization: str | None
    # The WebSocket subprotocols the client offered; browsers, which cannot set headers on a WebSocket,
    # carry their token in one (see the auth plugin).
    subprotocols: tuple[str, ...]
    # The query string's parameters: a token there is refused, never used.
    query: Mapping[str, str]
    remote: str
    # The W3C ``traceparent`` header of an HTTP request, if any (tracing: the client's trace).
    traceparent: str | None = None


class Authenticator(Protocol):
    """A plugin that can also identify clients: the transports ask it at every connection and HTTP
    request, before any message reaches the chain. It raises ``Unauthenticated`` (HTTP 401) or
    ``InsufficientScope`` (HTTP 403) to refuse."""

    async def authenticate(self, credentials: Credentials) -> Principal: ...

    def protected_resource(self, path: str, url: str) -> dict[str, Any]:
        """The RFC 9728 protected-resource metadata of the endpoint at ``path``."""
        ...


class BackendObserver(Protocol):
    """A plugin that also wants to hear what happens to backends, outside any one message (a cache
    forgetting what a backend's change made stale). Called synchronously; it must not block or raise.

    Events: ``lists_changed`` (the backend's tools, prompts or resources changed, or it came back),
    ``down`` (it is withdrawn), ``resource_updated`` (``params["uri"]``: the URI clients know).
    """

    def backend_event(self, backend: str, event: str, params: Mapping[str, Any]) -> None: ...


def observers_of(plugins: Sequence[NamedPlugin]) -> list[BackendObserver]:
    found: list[BackendObserver] = []
    for named in plugins:
        plugin: Any = named.plugin
        if callable(getattr(plugin, "backend_event", None)):
            found.append(plugin)
    return found


def authenticator_of(plugins: Sequence[NamedPlugin]) -> Authenticator | None:
    """The first plugin that can also identify clients (see ``Authenticator``), if any."""
    for named in plugins:
        plugin: Any = named.plugin
        if callable(getattr(plugin, "authenticate", None)) and callable(
            getattr(plugin, "protected_resource", None)
        ):
            authenticator: Authenticator = plugin
            return authenticator
    return None


# Wraps one plugin's layer (given the plugin's name) in something that watches it, such as a tracing span.
PluginObserver = Callable[[str, Handler], Handler]


@dataclass(frozen=True, slots=True)
class PluginCounter:
    """A counter a plugin reports for ``/metrics`` (exposed as ``portico_<name>_total``): its value for
    each combination of ``labels`` values. A plugin reports them from an optional ``metrics()`` method,
    read when Prometheus scrapes; instances reporting the same name are summed."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    samples: Mapping[tuple[str, ...], float] = field(default_factory=dict)


class PluginFailure(PorticoError):
    """A plugin raised something that is not a ``PorticoError``: a bug, reported as an internal error."""

    code = ErrorCode.INTERNAL_ERROR


@dataclass(frozen=True, slots=True)
class NamedPlugin:
    name: str
    plugin: Plugin


class Chain:
    """The plugins in config order, wrapped once around a terminal handler."""

    def __init__(
        self, plugins: Sequence[NamedPlugin], terminal: Handler, observe: PluginObserver | None = None
    ) -> None:
        self.plugins = tuple(plugins)
        handler = terminal
        # Built from the inside out, so the first plugin in the list sees a message first.
        for named in reversed(self.plugins):
            handler = _layer(named, handler)
            if observe is not None:
                # Outside the error wrapping, so an observer (tracing) sees a plugin's failure as the
                # gateway reports it. Without one the chain has no extra layer at all.
                handler = observe(named.name, handler)
        self._entry = handler

    async def dispatch(self, ctx: Context, message: Message) -> Message | None:
        """Run the message through the chain; the single place errors become JSON-RPC errors."""
        try:
            return await self._entry(ctx, message)
        except PorticoError as exc:
            return _error_reply(message, exc)
        except Exception:
            # Only the terminal can get here (plugins' exceptions are wrapped): a gateway bug.
            log.exception("internal error while handling %s", ctx.method)
            return _error_reply(message, PluginFailure("Internal error in the gateway"))


def _error_reply(message: Message, exc: PorticoError) -> Message | None:
    if "id" in message and "method" in message:
        return jsonrpc.error_from(message["id"], exc)
    # A notification (or a response) cannot be answered; the refusal is logged instead.
    log.info("dropped %s: %s", message.get("method", "response"), exc.message)
    return None


def _layer(named: NamedPlugin, inner: Handler) -> Handler:
    plugin, name = named.plugin, named.name

    async def layer(ctx: Context, message: Message) -> Message | None:
        try:
            return await plugin(ctx, message, inner)
        except PorticoError:
            raise
        except Exception as exc:
            log.exception("plugin %s failed on %s", name, ctx.method)
            raise PluginFailure(f"Internal error in plugin {name!r}") from exc

    return layer
