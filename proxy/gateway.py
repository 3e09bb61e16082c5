"""The gateway core: backends, the aggregate catalog, client sessions and the two chain terminals.

Every client message reaches ``_to_backend`` only after the whole plugin chain; every backend message
reaches a client through ``_to_client`` likewise. Transports know nothing of backends, and backends know
nothing of transports: both talk to this module.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from proxy import __version__, eras, jsonrpc
from proxy.backend import Backend
from proxy.backend_pool import make_backend
from proxy.chain import (
    ANONYMOUS,
    Authenticator,
    Chain,
    Context,
    Credentials,
    Direction,
    NamedPlugin,
    Principal,
    Route,
    authenticator_of,
    observers_of,
)
from proxy.config import GatewayConfig, RemoteBackendConfig, StdioBackendConfig
from proxy.connectors import make_connector
from proxy.errors import (
    BackendUnavailable,
    ConfigError,
    ErrorCode,
    InvalidParams,
    MethodNotFound,
)
from proxy.forwarding import Forwarder
from proxy.input_bridge import InputBridge
from proxy.jsonrpc import Message
from proxy.listen_hub import ListenHub
from proxy.metrics import GatewayMetrics
from proxy.naming import NameCollision, NamingRules
from proxy.router import LIST_METHODS, Catalog, Pager, build_catalog
from proxy.shared_breakers import SharedBreakers
from proxy.shared_redis import SharedRedis
from proxy.tracing import Tracing, remember_http_traceparent
from proxy.virtual_servers import build_virtual_servers

if TYPE_CHECKING:
    from proxy.session import Session

log = logging.getLogger("portico")

GATEWAY_INFO = {"name": "portico", "title": "Portico MCP gateway", "version": __version__}
_DEFAULT_DEADLINE_SECONDS = 60.0
TIMEOUT_META_KEY = "dev.portico/timeoutSeconds"
_LIST_CHANGED_FOR = {
    "tools": "notifications/tools/list_changed",
    "prompts": "notifications/prompts/list_changed",
    "resources": "notifications/resources/list_changed",
    "resourceTemplates": "notifications/resources/list_changed",
}


class Gateway:
    """One running gateway: what every transport and backend talks to."""

    def __init__(self, config: GatewayConfig, plugins: list[NamedPlugin]) -> None:
        self.config = config
        self.info = GATEWAY_INFO
        self.rules = NamingRules(
            config.namespacing.separator, config.namespacing.mode, config.namespacing.max_tool_name_length
        )
        self.backends: dict[str, Backend] = {}
        self.virtual_servers = build_virtual_servers(config.virtual_servers)
        self.sessions: dict[str, Session] = {}
        self.pager = Pager(config.namespacing.page_size)
        self.catalog: Catalog = build_catalog(0, self.rules, {})
        self.plugins = plugins
        # The first plugin that can identify clients does; without one every client is anonymous.
        self.authenticator: Authenticator | None = authenticator_of(plugins)
        self.observers = observers_of(plugins)
        self.metrics = GatewayMetrics(self)
        # Tracing off: the chains are built without span layers (no cost per message).
        self.tracing = Tracing(config.tracing)
        self.to_backend = Chain(plugins, self._to_backend, self.tracing.plugin_observer())
        self.to_client = Chain(plugins, self._to_client, self.tracing.plugin_observer())
        self.forwarder = Forwarder(self)
        self.listens = ListenHub(self)
        self._http: aiohttp.ClientSession | None = None
        # Shared state for several instances (the ``redis`` section); None: everything in memory.
        self.shared = (
            SharedRedis(str(config.redis.url), config.redis.key_prefix, config.redis.timeout_seconds)
            if config.redis is not None
            else None
        )
        state = config.request_state
        self.inputs = InputBridge(
            state.secret.encode() if state.secret else None, state.ttl_seconds, self.end_session, self.shared
        )
        self.breakers = (
            SharedBreakers(self.shared, self._breaker_follower) if self.shared is not None else None
        )
        if self.shared is not None and not state.secret:
            log.warning(
                "redis is configured but request_state.secret is not: each instance signs the requestState "
                "of parked calls with its own random key, so a modern client's retry that reaches another "
                "instance is refused as not issued by it; set the same secret on every instance"
            )
        # The catalog as it was before each withdrawn backend left it, so that a call to one of its
        # names is answered as the backend's failure (-32050), not as the client's unknown name.
        self._before_withdrawal: dict[str, Catalog] = {}
        self._version = 0
        self._closing: set[asyncio.Task[None]] = set()
        # When the gateway was made (monotonic clock): its uptime, for the admin API.
        self.created = time.monotonic()

    # -- life cycle -------------------------------------------------------------------------------------

    def readiness(self) -> tuple[list[str], list[str]]:
        """The enabled backends that are ready, and those that are not (not yet started, down,
        recovering): ``/readyz`` and the admin API compare the first with ``listen.min_ready_backends``."""
        ready: list[str] = []
        not_ready: list[str] = []
        for name in self.config.enabled_backends():
            backend = self.backends.get(name)
            (ready if backend is not None and backend.ready else not_ready).append(name)
        return ready, not_ready

    async def start(self) -> None:
        """Start every backend at once; one that fails is logged and left out, the rest serve."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        base_dir = Path(self.config.source).parent if self.config.source != "<memory>" else Path.cwd()
        for name, cfg in self.config.enabled_backends().items():
            factory = functools.partial(
                make_connector,
                name,
                cfg,
                http=self._http,
                base_dir=base_dir,
            )
            self.backends[name] = make_backend(name, cfg, factory, self, GATEWAY_INFO)
        if self.breakers is not None:
            self.breakers.start()
        self.inputs.start()
        await asyncio.gather(
            start_plugins(self.plugins), *(self._start_backend(b) for b in self.backends.values())
        )
        try:
            self._rebuild_catalog()
        except NameCollision as exc:
            await self.stop()
            raise ConfigError(f"{self.config.source}: namespacing: {exc}") from None

    async def _start_backend(self, backend: Backend) -> None:
        started = time.monotonic()
        try:
            await backend.start()
        except BackendUnavailable as exc:
            log.error("backend %s failed to start: %s", backend.name, exc.message)
            return
        log.info(
            "backend %s ready in %.0f ms: %d tools, %d prompts, %d resources, %d templates",
            backend.name,
            1000 * (time.monotonic() - started),
            len(backend.lists.tools),
            len(backend.lists.prompts),
            len(backend.lists.resources),
            len(backend.lists.resourceTemplates),
        )

    async def drain(self, seconds: float) -> bool:
        """Let the client calls in flight now finish, for at most ``seconds``; True if they all did.

        Only the calls already running count: one that arrives while draining does not prolong it (it is
        cancelled with its session when the sockets close). Nothing is cancelled here.
        """
        calls = [task for session in self.sessions.values() for task in session.calls_in_flight()]
        if not calls:
            return True
        log.info("draining %d call(s) in flight, for at most %.1f s", len(calls), seconds)
        _, pending = await asyncio.wait(calls, timeout=seconds)
        if pending:
            log.warning("%d call(s) still in flight after %.1f s: cutting them off", len(pending), seconds)
        return not pending

    async def stop(self) -> None:
        """End every session (cancelling what is left of their calls), then stop every backend."""
        await self.listens.shut_down()
        for session in list(self.sessions.values()):
            self.end_session(session)
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.inputs.stop()
        await asyncio.gather(*(b.stop() for b in self.backends.values()), return_exceptions=True)
        await close_plugins(self.plugins)
        await self.tracing.close()
        if self._http is not None:
            await self._http.close()
        if self.breakers is not None:
            await self.breakers.stop()
        if self.shared is not None:
            await self.shared.close()

    def replace_plugins(self, plugins: list[NamedPlugin]) -> list[NamedPlugin]:
        """Put a new chain in force (a reload changed the plugins or their options) and return the old
        plugins, for the caller to close once nothing uses them. Messages already on their way finish on
        the chain they started on; the next one takes the new chain. Sessions stay as they are."""
        old = self.plugins
        self.plugins = plugins
        self.authenticator = authenticator_of(plugins)
        self.observers = observers_of(plugins)
        self.to_backend = Chain(plugins, self._to_backend, self.tracing.plugin_observer())
        self.to_client = Chain(plugins, self._to_client, self.tracing.plugin_observer())
        return old

    # -- sessions ---------------------------------------------------------------------------------------

    async def authenticate(self, credentials: Credentials) -> Principal:
        """Who presented ``credentials``; raises ``Unauthenticated`` to refuse them."""
        if self.tracing.enabled:
            # Every HTTP request passes here before its message reaches a session: the client's trace.
            remember_http_traceparent(credentials)
        if self.authenticator is None:
            return ANONYMOUS
        return await self.authenticator.authenticate(credentials)

    def register(self, session: Session) -> None:
        self.sessions[session.id] = session

    def end_session(self, session: Session) -> asyncio.Task[None]:
        """Close a session in a task of its own, so that cancelling the caller cannot cut it short."""
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    async def session_ended(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.inputs.forget(session.id)
        await asyncio.gather(
            *(
                b.forget_session(session.id, stateless=session.protocol_version is None)
                for b in self.backends.values()
            ),
            return_exceptions=True,
        )

    def context(
        self, session: Session, message: Message, direction: Direction, route: Route | None
    ) -> Context:
        backend = self.backends.get(route.backend) if route else None
        seconds = backend.config.timeout_seconds if backend else _DEFAULT_DEADLINE_SECONDS
        if direction is Direction.TO_BACKEND:
            seconds = min(seconds, _asked_timeout(message) or seconds)
        deadline = time.monotonic() + seconds
        ctx = Context(
            session,
            direction,
            message.get("method", ""),
            route,
            deadline,
            session.protocol_version,
            session.principal,
        )
        if session.view is not None:
            ctx.restrict(session.view.allows)
        if session.principal.backends is not None:
            ctx.restrict(_within(session.principal.backends))
        return ctx

    def resolve(self, method: str, params: dict[str, Any]) -> Route | None:
        return self.forwarder.resolve(self.catalog, method, params)

    def withdrawn_route(self, method: str, params: dict[str, Any]) -> Route | None:
        """Where a request would have gone before its backend was withdrawn (down, restarting, breaker
        open), or None if the name was never a withdrawn backend's."""
        for backend, before in self._before_withdrawal.items():
            route = self.forwarder.resolve(before, method, params)
            if route is not None and route.backend == backend:
                return route
        return None

    def capabilities(self) -> dict[str, Any]:
        """The union of what the live backends offer; lists can change, so listChanged is always on."""
        caps: dict[str, Any] = {}
        for backend in self.live_backends():
            offered = backend.capabilities
            for kind in ("tools", "prompts"):
                if kind in offered:
                    caps[kind] = {"listChanged": True}
            if "resources" in offered:
                resources = caps.setdefault("resources", {"listChanged": True})
                if isinstance(offered["resources"], dict) and offered["resources"].get("subscribe"):
                    resources["subscribe"] = True
            for kind in ("logging", "completions"):
                if kind in offered:
                    caps[kind] = {}
        return caps

    def discover(self) -> dict[str, Any]:
        """The modern era's ``server/discover``: what the aggregate offers and which versions it speaks."""
        result: dict[str, Any] = {
            "supportedVersions": list(eras.SUPPORTED_VERSIONS),
            "capabilities": self.capabilities(),
        }
        instructions = self.instructions()
        if instructions:
            result["instructions"] = instructions
        return result

    def _list_cache_hint(self, method: str) -> dict[str, Any]:
        """The merged list may be cached no longer than its stalest part, and only privately if any part
        is private (the modern era's ttlMs / cacheScope)."""
        hints = [hint for b in self.live_backends() if (hint := b.cache_hint(method)) is not None]
        if not hints:
            return {"ttlMs": 0, "cacheScope": "private"}
        scope = "private" if any(scope == "private" for _, scope in hints) else "public"
        return {"ttlMs": min(ttl for ttl, _ in hints), "cacheScope": scope}

    def instructions(self) -> str | None:
        parts = [f"## {b.name}\n{b.instructions}" for b in self.live_backends() if b.instructions]
        return "\n\n".join(parts) or None

    def live_backends(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.ready]

    # -- the chain's terminal, client to backend ----------------------------------------------------------

    async def _to_backend(self, ctx: Context, message: Message) -> Message | None:
        session: Session = ctx.session  # type: ignore[assignment]
        method = ctx.method
        params = jsonrpc.params_of(message)
        if "id" not in message:
            await self._client_notification(session, method, params)
            return None
        request_id = message["id"]
        if method in LIST_METHODS:
            page = self.pager.page(self.catalog, method, params, ctx.allows if ctx.restricted else None)
            if ctx.protocol_version in eras.MODERN_VERSIONS:
                page.update(self._list_cache_hint(method))
            return jsonrpc.result(request_id, page)
        if method == "ping":
            return jsonrpc.result(request_id, {})
        if method == "server/discover":
            return jsonrpc.result(request_id, self.discover())
        if method == "subscriptions/listen":
            return await self.listens.serve(ctx, session, message)
        if method == "initialize":
            return jsonrpc.result(request_id, session.initialize(params))
        if method == "logging/setLevel":
            return jsonrpc.result(request_id, await self._set_log_level(session, params))
        if method in self.forwarder.routed_methods:
            return await self.forwarder.forward(ctx, session, message, params)
        raise MethodNotFound(f"Method not found: {method}")

    async def _client_notification(self, session: Session, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/initialized":
            session.initialized = True
        elif method == "notifications/cancelled":
            session.cancel(params.get("requestId"))
        elif method == "notifications/roots/list_changed":
            for backend in self.backends.values():
                if not backend.shared:
                    await backend.notify(session, method, params)
        # Other notifications (progress on a relayed request, unknown ones) have nowhere to go.

    async def _set_log_level(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        level = params.get("level")
        if level not in eras.LOG_LEVELS:
            raise InvalidParams(f"Invalid params: level must be one of {', '.join(eras.LOG_LEVELS)}")
        session.log_level = level
        # A shared backend logs for everyone, so it gets the most verbose level any session asked for;
        # each session then receives only what it asked for.
        levels = [s.log_level for s in self.sessions.values() if s.log_level]
        shared_level = min(levels, key=eras.LOG_LEVELS.index) if levels else level
        calls = [
            b.set_log_level(session, level if not b.shared else shared_level)
            for b in self.live_backends()
            if "logging" in b.capabilities
        ]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.info("logging/setLevel was not accepted by a backend: %s", outcome)
        return {}

    # -- the chain's terminal, backend to client ----------------------------------------------------------

    async def _to_client(self, ctx: Context, message: Message) -> Message | None:
        session: Session = ctx.session  # type: ignore[assignment]
        if "id" in message:
            return await session.ask_client(message, ctx.remaining())
        await session.send_message(message)
        return None

    # -- BackendEvents ------------------------------------------------------------------------------------

    async def relay_request(self, backend: Backend, session_id: str, message: Message) -> Message:
        session = self.sessions.get(session_id)
        method = message["method"]
        needed = {
            "sampling/createMessage": "sampling",
            "elicitation/create": "elicitation",
            "roots/list": "roots",
        }
        if session is None:
            return _undeliverable(message, "the client session that made the call has ended")
        if method in needed and needed[method] not in session.client_capabilities:
            if session.protocol_version is None:
                # A modern client is told in its own call's reply, with the capability it lacks.
                self.inputs.fail(
                    session,
                    eras.MissingClientCapability(
                        f"The call needs the {needed[method]} capability, which the client did not declare",
                        needed[method],
                    ),
                )
            return _undeliverable(message, f"the client did not declare the {needed[method]} capability")
        route = Route(backend.name, "backend", method, method)
        ctx = self.context(session, message, Direction.TO_CLIENT, route)
        reply = await self.to_client.dispatch(ctx, message)
        return reply if reply is not None else _undeliverable(message, "no reply")

    def deliver_notification(self, backend: Backend, session_ids: list[str] | None, message: Message) -> None:
        if message["method"] == "notifications/message":
            message = _tag_log(backend.name, message)
        targets = (
            self.sessions.values()
            if session_ids is None
            else [s for s in map(self.sessions.get, session_ids) if s is not None]
        )
        if message["method"] == "notifications/resources/updated":
            message = self.forwarder.expose_notification_uri(backend.name, message)
            self._observe(backend, "resource_updated", jsonrpc.params_of(message))
        route = Route(backend.name, "backend", message["method"], message["method"])
        for session in targets:
            if message["method"] == "notifications/resources/updated" and self.listens.listening(session):
                self.listens.resource_updated(session, message)
            elif session.wants(message):
                session.post(self.context(session, message, Direction.TO_CLIENT, route), message)

    def backend_changed(self, backend: Backend) -> None:
        if backend.ready:
            self._before_withdrawal.pop(backend.name, None)
        self._observe(backend, "lists_changed", {})
        self._rebuild_and_announce()

    def backend_down(self, backend: Backend, reason: str) -> None:
        log.error(
            "backend %s is down: %s; its tools are withdrawn, the others keep serving", backend.name, reason
        )
        self._before_withdrawal.setdefault(backend.name, self.catalog)
        self._observe(backend, "down", {})
        self._rebuild_and_announce()

    def breaker_changed(self, backend: Backend, state: str) -> None:
        if self.breakers is not None:
            self.breakers.announce(backend.name, state)

    def _breaker_follower(self, name: str) -> Callable[[str], None] | None:
        """How the breaker of the backend (or pool instance) called ``name`` takes another instance's
        state; None if there is no such backend here or its breaker is not shared."""
        for backend in self.backends.values():
            for instance in getattr(backend, "instances", None) or (backend,):
                if instance.name == name and instance.config.breaker.shared:
                    follow: Callable[[str], None] = instance.recovery.follow_breaker
                    return follow
        return None

    def _observe(self, backend: Backend, event: str, params: dict[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer.backend_event(backend.name, event, params)
            except Exception:
                log.exception("a plugin failed to take the event %s of backend %s", event, backend.name)

    def _rebuild_and_announce(self) -> None:
        before = self.catalog
        try:
            self._rebuild_catalog()
        except NameCollision as exc:
            log.error("the catalog was not updated: %s", exc)
            return
        changed = {
            _LIST_CHANGED_FOR[key]
            for key in _LIST_CHANGED_FOR
            if before.items.get(key) != self.catalog.items[key]
        }
        for method in sorted(changed):
            notice = jsonrpc.notification(method)
            route = Route("", "gateway", method, method)
            for session in list(self.sessions.values()):
                if session.initialized:
                    session.post(self.context(session, notice, Direction.TO_CLIENT, route), notice)
                self.listens.list_changed(session, method)

    def _rebuild_catalog(self) -> None:
        self._version += 1
        lists = {b.name: b.lists for b in self.live_backends()}
        self.catalog = build_catalog(self._version, self.rules, lists)
        self.pager.remember(self.catalog)

    # -- runtime registration (the admin API, proxy.admin) ------------------------------------------------

    async def add_backend(self, name: str, config: StdioBackendConfig | RemoteBackendConfig) -> Backend:
        """Register and start a backend while the gateway runs; its lists reach clients with list_changed.

        Raises ``KeyError`` for a name already taken, ``BackendUnavailable`` when it does not start and
        ``ConfigError`` when its names collide with another backend's; then nothing is left registered.
        """
        if name in self.backends:
            raise KeyError(name)
        if self._http is None:
            raise BackendUnavailable("the gateway is not running")
        base_dir = Path(self.config.source).parent if self.config.source != "<memory>" else Path.cwd()
        factory = functools.partial(make_connector, name, config, http=self._http, base_dir=base_dir)
        backend = make_backend(name, config, factory, self, GATEWAY_INFO)
        # Taken before the first await, so two registrations of one name cannot both proceed.
        self.backends[name] = backend
        accepted = False
        try:
            await backend.start()
            # Try the catalog first: colliding names are refused before any client sees them.
            build_catalog(self._version + 1, self.rules, {b.name: b.lists for b in self.live_backends()})
            accepted = True
        except NameCollision as exc:
            raise ConfigError(f"namespacing: {exc}") from None
        finally:
            if not accepted:
                self.backends.pop(name, None)
                await backend.stop()
        servers = {**self.config.mcpServers, name: config}
        self.config = self.config.model_copy(update={"mcpServers": servers})
        log.info("backend %s registered at run time", name)
        self.backend_changed(backend)
        return backend

    async def remove_backend(self, name: str) -> None:
        """Stop a backend and take its tools out of the lists (list_changed); ``KeyError`` if unknown."""
        backend = self.backends.pop(name)
        servers = {key: cfg for key, cfg in self.config.mcpServers.items() if key != name}
        self.config = self.config.model_copy(update={"mcpServers": servers})
        self._before_withdrawal.pop(name, None)
        # Out of the catalog first, so no new call is routed to it while it stops.
        self._observe(backend, "down", {})
        self._rebuild_and_announce()
        await backend.stop()
        log.info("backend %s deregistered at run time", name)


async def start_plugins(plugins: list[NamedPlugin]) -> None:
    """Plugins that follow something outside the process (Redis) begin: ``start()``, sync or async,
    before the chain they belong to is put in force. One that fails is logged; the gateway serves on."""
    await _each_plugin(plugins, "start")


async def close_plugins(plugins: list[NamedPlugin]) -> None:
    """Plugins that hold connections or files (Redis, SQLite) release them: ``close()``, sync or async."""
    await _each_plugin(plugins, "close")


async def _each_plugin(plugins: list[NamedPlugin], method: str) -> None:
    for named in plugins:
        call = getattr(named.plugin, method, None)
        if not callable(call):
            continue
        try:
            outcome = call()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("plugin %s failed to %s", named.name, method)


def _asked_timeout(message: Message) -> float | None:
    """The deadline a client asked for in ``_meta`` (seconds, ``dev.portico/timeoutSeconds``): it may
    shorten the backend's own, never lengthen it. MCP has no standard field for this."""
    meta = jsonrpc.params_of(message).get("_meta")
    asked = meta.get(TIMEOUT_META_KEY) if isinstance(meta, dict) else None
    if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
        return float(asked)
    return None


def _within(backends: frozenset[str]) -> Callable[[Route], bool]:
    return lambda route: route.backend in backends


def _undeliverable(message: Message, why: str) -> Message:
    return jsonrpc.error(
        message["id"],
        {"code": ErrorCode.CLIENT_REQUEST_UNDELIVERABLE, "message": f"{message['method']}: {why}"},
    )


def _tag_log(backend: str, message: Message) -> Message:
    params = jsonrpc.params_of(message)
    logger = params.get("logger")
    tagged = {**params, "logger": f"{backend}/{logger}" if isinstance(logger, str) and logger else backend}
    meta = params.get("_meta")
    tagged["_meta"] = {**(meta if isinstance(meta, dict) else {}), "dev.portico/backend": backend}
    return {**message, "params": tagged}
