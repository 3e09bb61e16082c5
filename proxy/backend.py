"""A backend: one configured MCP server, its upstream links, and what it offers.

Each backend keeps one *catalog link* that is always open: it lists the backend's tools, prompts and
resources and, for ``session: shared`` backends, carries every client's calls. A ``session: per-client``
backend also opens one link per client session on its first call and closes it when that session ends,
so backends that keep per-caller state, or call back to the client, see one caller per session.

The era a backend speaks is learnt on the catalog link (``era: auto``) and remembered. A modern backend
is stateless, so every client's calls share the catalog link, each carrying its caller's own envelope;
when such a backend asks a legacy client for input, ``proxy.backend_input`` bridges it.

Split by concern: ``proxy.backend_lists`` reads the lists, ``proxy.backend_traffic`` routes what the
backend sends on its own, ``proxy.backend_recovery`` holds the breaker, restarts and health checks, and
``proxy.backend_events`` the protocols the gateway implements.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from proxy import eras, param_headers
from proxy.backend_events import BackendEvents, ClientIdentity
from proxy.backend_input import bridge_input_requests
from proxy.backend_listen import UpstreamListener
from proxy.backend_lists import LIST_CAPABILITY, as_dict, read_lists
from proxy.backend_recovery import Recovery
from proxy.backend_subscriptions import ResourceSubscriptions
from proxy.backend_traffic import ServerTraffic
from proxy.config import RemoteBackendConfig, StdioBackendConfig
from proxy.connectors.base import Connector
from proxy.errors import BackendUnavailable
from proxy.jsonrpc import Message
from proxy.link_pool import IdleLinks
from proxy.resilience import Resilience
from proxy.router import LIST_METHODS, BackendLists
from proxy.upstream import UpstreamLink

__all__ = ["Backend", "BackendEvents", "ClientIdentity"]

log = logging.getLogger("portico.backend")

_SET_LEVEL_SECONDS = 10.0
# Capabilities a shared link declares: the gateway can route these to the calling client. Roots are
# left out because roots belong to one client and a shared session has many.
_SHARED_LINK_CAPABILITIES: dict[str, Any] = {"sampling": {}, "elicitation": {"form": {}}}


class Backend:
    """One configured backend; see the module docstring for how sessions map onto links."""

    def __init__(
        self,
        name: str,
        config: StdioBackendConfig | RemoteBackendConfig,
        connector_factory: Callable[..., Connector],
        events: BackendEvents,
        gateway_info: dict[str, Any],
    ) -> None:
        self.name = name
        self.config = config
        self.state = "starting"
        self.lists = BackendLists()
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self.instructions: str | None = None
        # "auto" until the catalog link has learnt the backend's era, then "legacy" or "modern".
        self.era: str = config.era
        # How long each list may be cached and by whom, as the backend said (modern backends only).
        self.cache_hints: dict[str, tuple[int, str]] = {}
        self._connector_factory = connector_factory
        # The transport actually used, once a fallback (Streamable HTTP to HTTP+SSE) has happened.
        self._transport: str | None = None
        self._listener: UpstreamListener | None = None
        # Per-client links of ended stateless sessions, for the next one (see proxy.link_pool).
        self._idle_links = IdleLinks(
            lambda capabilities: self._open_link(None, capabilities, self._gateway_info)
        )
        self._events = events
        self._gateway_info = gateway_info
        self._catalog_link: UpstreamLink | None = None
        self._client_links: dict[str, UpstreamLink] = {}
        self._link_openers: dict[str, asyncio.Task[UpstreamLink]] = {}
        self._inflight: collections.Counter[str] = collections.Counter()
        self.subscriptions = ResourceSubscriptions(self)
        self._subscribers = self.subscriptions.by_uri
        # The log level each session asked for, applied when its per-client link opens.
        self._log_levels: dict[str, str] = {}
        self._refresh_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._traffic = ServerTraffic(self)
        # Resilience (proxy.backend_recovery): while the breaker is not closed, or the link is being
        # restarted, the backend's tools are out of the lists and its calls fail fast.
        self.recovery = Recovery(self)
        self.breaker = self.recovery.breaker
        self.restarter = self.recovery.restarter
        self.resilience = Resilience(name, config.retry, self.breaker)

    @property
    def modern(self) -> bool:
        return self.era == "modern"

    @property
    def shared(self) -> bool:
        # A modern backend keeps no per-connection state, so one link serves every client.
        return self.config.session == "shared" or self.modern

    @property
    def ready(self) -> bool:
        """Running and trusted: a backend whose breaker is open or half-open offers nothing."""
        return self.state == "ready" and (self.breaker is None or self.breaker.closed)

    # -- life cycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the catalog link and read the lists; raises BackendUnavailable with the reason."""
        try:
            link = await self._open_link(None, dict(_SHARED_LINK_CAPABILITIES), self._gateway_info)
        except BackendUnavailable:
            self.state = "down"
            raise
        self._catalog_link = link
        try:
            self.capabilities = link.server.get("capabilities") or {}
            self.server_info = link.server.get("serverInfo") or {}
            self.instructions = link.server.get("instructions")
            await self._refresh(tuple(LIST_METHODS))
            if link.modern:
                self._listener = UpstreamListener(self.name, link, self.capabilities)
                await self._listener.start()
        except BackendUnavailable:
            self.state = "down"
            await link.close()
            raise
        except Exception as exc:
            self.state = "down"
            await link.close()
            raise BackendUnavailable(f"start-up failed: {exc}") from exc
        if link.closed:
            self.state = "down"
            raise BackendUnavailable(link.close_reason)
        self.state = "ready"
        self.recovery.start_health_checks()

    async def reopen(self) -> None:
        """Open a fresh catalog link (and listen stream) after the last one closed."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self.start()

    async def _open_link(
        self, owner: str | None, capabilities: dict[str, Any], client_info: dict[str, Any]
    ) -> UpstreamLink:
        """A started link in the backend's era; the first one learns the era (and any fallback)."""
        connector = self._connector_factory(transport=self._transport)
        # HTTP+SSE predates the modern era: no backend on it can answer the probe.
        era = "legacy" if connector.transport == "sse" else self.era
        link = UpstreamLink(self.name, connector, self, owner)
        try:
            await link.start(capabilities, client_info, self.config.startup_timeout_seconds, era)
        except BackendUnavailable:
            await link.close()
            alternative = connector.fallback()
            if alternative is None:
                raise
            link = UpstreamLink(self.name, alternative, self, owner)
            try:
                await link.start(capabilities, client_info, self.config.startup_timeout_seconds, "legacy")
            except BaseException:
                await link.close()
                raise
            self._transport = alternative.transport
        except BaseException:
            await link.close()
            raise
        self.era = link.era
        return link

    async def stop(self) -> None:
        self.state = "stopped"
        await self.recovery.close()
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            await self._listener.close()
        await self._idle_links.close()
        links = [*self._client_links.values(), *([self._catalog_link] if self._catalog_link else [])]
        self._client_links.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    async def forget_session(self, session_id: str, stateless: bool = False) -> None:
        """A client session ended: drop its subscriptions and close its per-client link (or, for a
        stateless client's session, keep the link warm for the next one)."""
        await self.subscriptions.forget(session_id)
        opener = self._link_openers.pop(session_id, None)
        if opener is not None:
            opener.cancel()
        link = self._client_links.pop(session_id, None)
        if link is not None and not (stateless and self._idle_links.keep(link)):
            await link.close()
        self._inflight.pop(session_id, None)
        self._log_levels.pop(session_id, None)

    # -- calls -----------------------------------------------------------------------------------------

    async def call(
        self,
        session: ClientIdentity,
        method: str,
        params: dict[str, Any],
        timeout: float,
        *,
        retryable: bool = False,
    ) -> Message:
        """Forward a request for ``session`` and return the backend's response message.

        Through the circuit breaker; sent again after a link failure only if ``retryable`` (the caller
        knows the request is safe to repeat), all within ``timeout``."""
        resilience = self.resilience
        if not resilience.retries(retryable):
            # The common case, sent at most once: the breaker's bookkeeping without the retry loop's
            # closure, clock readings and extra awaits (this runs on every call).
            probe = resilience.admit_first(timeout)
            return await resilience.settled(probe, self._attempt(session, method, params, timeout, False))
        deadline = asyncio.get_running_loop().time() + timeout
        return await resilience.run(
            lambda remaining, is_retry: self._attempt(session, method, params, remaining, is_retry),
            retryable=retryable,
            deadline=deadline,
        )

    async def _attempt(
        self, session: ClientIdentity, method: str, params: dict[str, Any], timeout: float, is_retry: bool
    ) -> Message:
        # ``params`` is the caller's and is never changed here, so every attempt starts from the same.
        if self.state != "ready":
            # Recovery fails the call fast, or lets a retry wait for a restart under way.
            timeout = await self.recovery.wait_running(timeout, is_retry)
        # A shared link needs no await (the catalog link is open or the call fails at once).
        link = self.catalog() if self.shared else await self._client_link(session, timeout)
        params, progress_id = self._traffic.remap_progress(session.id, params)
        self._inflight[session.id] += 1
        try:
            if not link.modern:
                return await link.request(method, eras.for_legacy_backend(params), timeout=timeout)
            deadline = asyncio.get_running_loop().time() + timeout  # for the rounds of input, if any
            caller_is_modern = eras.is_modern({"params": params})
            params = eras.with_envelope(
                params, session.client_capabilities, session.client_info, session.log_level
            )
            reply = await link.request(method, params, timeout=timeout)
            if caller_is_modern:
                return reply
            return await bridge_input_requests(
                self.name,
                lambda request: self._events.relay_request(self, session.id, request),
                link,
                method,
                params,
                reply,
                deadline,
            )
        finally:
            # The session may have been forgotten meanwhile (a call shared by several clients outlives
            # the one that started it): never leave a count at zero or below behind.
            left = self._inflight.pop(session.id, 0) - 1
            if left > 0:
                self._inflight[session.id] = left
            if progress_id is not None:
                self._traffic.forget_progress(progress_id)

    async def notify(self, session: ClientIdentity, method: str, params: dict[str, Any] | None) -> None:
        link = self._client_links.get(session.id) if not self.shared else self._catalog_link
        if link is not None and not link.closed:
            with contextlib.suppress(BackendUnavailable):
                await link.notify(method, params)

    async def notify_all(self, method: str, params: dict[str, Any] | None) -> None:
        links = [self._catalog_link, *self._client_links.values()]
        for link in links:
            if link is not None and not link.closed:
                with contextlib.suppress(BackendUnavailable):
                    await link.notify(method, params)

    async def set_log_level(self, session: ClientIdentity, level: str) -> None:
        """Tell the backend how much to log. A per-client link that is not open yet gets the level when it
        opens, rather than a process started only to hear it. A modern backend has no such method: each
        call carries its caller's level instead."""
        if self.modern:
            return
        if not self.shared:
            self._log_levels[session.id] = level
            link = self._client_links.get(session.id)
            if link is None or link.closed:
                return
        reply = await self.call(session, "logging/setLevel", {"level": level}, _SET_LEVEL_SECONDS)
        if "error" in reply:
            log.info("backend %s refused logging/setLevel: %s", self.name, reply["error"].get("message"))

    async def subscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        return await self.subscriptions.subscribe(session, uri, timeout)

    async def unsubscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        return await self.subscriptions.unsubscribe(session, uri, timeout)

    def link_of(self, session_id: str) -> UpstreamLink | None:
        """The link that carries ``session_id``'s calls, if open."""
        return self._catalog_link if self.shared else self._client_links.get(session_id)

    async def _client_link(self, session: ClientIdentity, timeout: float) -> UpstreamLink:
        """The per-client link of ``session`` (``session: per-client``), opened on its first call."""
        link = self._client_links.get(session.id)
        if link is not None and not link.closed:
            return link
        # Concurrent first calls of one session share a single handshake.
        opener = self._link_openers.get(session.id)
        if opener is None:
            opener = asyncio.create_task(self._open_client_link(session))
            self._link_openers[session.id] = opener
            opener.add_done_callback(lambda _: self._link_openers.pop(session.id, None))
        async with asyncio.timeout(timeout):
            return await asyncio.shield(opener)

    async def _open_client_link(self, session: ClientIdentity) -> UpstreamLink:
        link = None
        if session.protocol_version is None:
            # A stateless client's link may serve other stateless clients later (proxy.link_pool).
            link = self._idle_links.take(session.client_capabilities, session.id, session.principal.subject)
        if link is None:
            link = await self._open_link(session.id, session.client_capabilities, session.client_info)
            link.subject = session.principal.subject
        self._client_links[session.id] = link
        level = self._log_levels.get(session.id)
        if level is not None and "logging" in self.capabilities:
            with contextlib.suppress(BackendUnavailable):
                await link.request("logging/setLevel", {"level": level}, timeout=_SET_LEVEL_SECONDS)
        return link

    # -- what the backend sends on its own (UpstreamHandler) ----------------------------------------------

    def on_server_request(self, link: UpstreamLink, message: Message) -> None:
        self._traffic.on_server_request(link, message)

    def on_server_notification(self, link: UpstreamLink, message: Message) -> None:
        self._traffic.on_server_notification(link, message)

    def on_link_closed(self, link: UpstreamLink, reason: str) -> None:
        if link is self._catalog_link and self.state != "stopped":
            was_offered = self.ready
            self.state = "down"
            if was_offered:
                self._events.backend_down(self, reason)
            for client_link in list(self._client_links.values()):
                self.spawn(client_link.close())
            self._client_links.clear()
            self.recovery.link_lost()
        elif link.owner is not None and self._client_links.get(link.owner) is link:
            del self._client_links[link.owner]

    # -- lists -------------------------------------------------------------------------------------------

    async def refresh_and_announce(self, methods: tuple[str, ...]) -> None:
        try:
            await self._refresh(methods)
        except BackendUnavailable as exc:
            log.warning("backend %s: could not re-read its lists: %s", self.name, exc.message)
            return
        self._events.backend_changed(self)

    async def _refresh(self, methods: tuple[str, ...]) -> None:
        async with self._refresh_lock:
            changes = await read_lists(
                self.catalog(), methods, self.capabilities, self.cache_hints, self.config
            )
            if "tools" in changes:
                changes["tools"] = param_headers.valid_tools(self.name, changes["tools"], log)
                self.catalog().connector.note_tools(changes["tools"])
            self.lists = BackendLists(**{**as_dict(self.lists), **changes})

    def catalog(self) -> UpstreamLink:
        """The catalog link; raises BackendUnavailable before the backend has started."""
        if self._catalog_link is None:
            raise BackendUnavailable(f"backend {self.name!r} has not started")
        return self._catalog_link

    def cache_hint(self, method: str) -> tuple[int, str] | None:
        """How long this backend said its list may be cached, and by whom; None if it offers no such list.
        A backend that said nothing (every legacy one) gets 0 ms, private."""
        if LIST_CAPABILITY[method] not in self.capabilities:
            return None
        return self.cache_hints.get(method, (0, "private"))

    # -- what the helpers (proxy.backend_traffic, proxy.backend_recovery) use ----------------------------

    @property
    def events(self) -> BackendEvents:
        return self._events

    @property
    def listener(self) -> UpstreamListener | None:
        return self._listener

    def subscribers_of(self, uri: str) -> set[str]:
        return self._subscribers.get(uri, set())

    def only_caller(self) -> str | None:
        """The one client session with calls in flight, if exactly one has."""
        return next(iter(self._inflight)) if len(self._inflight) == 1 else None

    def callers(self) -> int:
        return len(self._inflight)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
