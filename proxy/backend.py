"""A backend: one configured MCP server, its upstream links, and what it offers.

Each backend keeps one *catalog link* that is always open: it lists the backend's tools, prompts and
resources and, for ``session: shared`` backends, carries every client's calls. A ``session: per-client``
backend also opens one link per client session on its first call and closes it when that session ends,
so backends that keep per-caller state, or call back to the client, see one caller per session.

The era a backend speaks is learnt on the catalog link (``era: auto``) and remembered. A modern backend
is stateless, so every client's calls share the catalog link, each carrying its caller's own envelope;
when such a backend asks a legacy client for input (an ``InputRequiredResult``), the gateway puts each
request to the client as an ordinary server-to-client request and retries with the answers.

Server-to-client requests arriving on a per-client link belong to that link's client. On a shared link
they belong to the one client with calls in flight to this backend; when several have, no one can tell
whose it is, and the backend gets an error saying to use ``session: per-client`` rather than a guess that
could show one client's data to another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from proxy import eras, jsonrpc, param_headers
from proxy.backend_listen import UpstreamListener
from proxy.chain import Principal
from proxy.config import RemoteBackendConfig, StdioBackendConfig
from proxy.connectors.base import Connector
from proxy.errors import BackendError, BackendUnavailable, ErrorCode, InvalidParams, PorticoError
from proxy.jsonrpc import Message
from proxy.link_pool import IdleLinks
from proxy.resilience import AsyncBreaker, BackendDown, Resilience, probe_until_closed
from proxy.restart import Restarter
from proxy.router import LIST_METHODS, BackendLists
from proxy.upstream import UpstreamLink

log = logging.getLogger("portico.backend")

_MAX_LIST_PAGES = 1000
# How many times one call may come back asking for input before the gateway gives up on it.
_MAX_INPUT_ROUNDS = 16
_INPUT_METHODS = frozenset({"sampling/createMessage", "elicitation/create", "roots/list"})
_SET_LEVEL_SECONDS = 10.0
# The gateway's own half-open probe (a ping) waits no longer than this for its answer.
_PROBE_TIMEOUT_SECONDS = 5.0
# Capabilities a shared link declares: the gateway can route these to the calling client. Roots are
# left out because roots belong to one client and a shared session has many.
_SHARED_LINK_CAPABILITIES: dict[str, Any] = {"sampling": {}, "elicitation": {"form": {}}}
_LIST_CAPABILITY = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resources",
}
_LIST_CHANGED = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}


class ClientIdentity(Protocol):
    """What a backend needs to know about the client session it opens a per-client link for."""

    @property
    def id(self) -> str: ...

    @property
    def client_info(self) -> dict[str, Any]: ...

    @property
    def client_capabilities(self) -> dict[str, Any]: ...

    @property
    def log_level(self) -> str | None: ...

    @property
    def principal(self) -> Principal: ...

    @property
    def protocol_version(self) -> str | None:
        """None for a modern-era client, which has no session of its own to keep."""
        ...


class BackendEvents(Protocol):
    """How a backend reaches the clients; implemented by the gateway."""

    def backend_changed(self, backend: Backend) -> None: ...

    def backend_down(self, backend: Backend, reason: str) -> None: ...

    async def relay_request(self, backend: Backend, session_id: str, message: Message) -> Message:
        """Put a backend's request to the client of ``session_id`` and return the client's response."""
        ...

    def deliver_notification(
        self, backend: Backend, session_ids: list[str] | None, message: Message
    ) -> None: ...


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
        self._progress: dict[int, tuple[str, Any]] = {}
        self._progress_ids = itertools.count(1)
        self._subscribers: dict[str, set[str]] = {}
        # The log level each session asked for, applied when its per-client link opens.
        self._log_levels: dict[str, str] = {}
        self._refresh_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Server-to-client requests being relayed, by (link, the backend's request id).
        self._relays: dict[tuple[int, Any], asyncio.Task[Any]] = {}
        # Resilience (proxy.resilience, proxy.restart): while the breaker is not closed, or the process
        # is being restarted, the backend's tools are out of the lists and its calls fail fast.
        self.breaker = (
            AsyncBreaker(name, config.breaker, self._breaker_changed) if config.breaker.enabled else None
        )
        self._breaker_was_closed = True
        self._prober: asyncio.Task[None] | None = None
        self.resilience = Resilience(name, config.retry, self.breaker)
        restartable = isinstance(config, StdioBackendConfig) and config.restart.enabled
        self.restarter = Restarter(name, config.restart, self._restart) if restartable else None

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
        if self.restarter is not None:
            await self.restarter.close()
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
        for uri in [uri for uri, ids in self._subscribers.items() if session_id in ids]:
            await self._unsubscribe_shared(session_id, uri)
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
        deadline = asyncio.get_running_loop().time() + timeout
        return await self.resilience.run(
            lambda remaining, is_retry: self._attempt(session, method, dict(params), remaining, is_retry),
            retryable=retryable,
            deadline=deadline,
        )

    async def _attempt(
        self, session: ClientIdentity, method: str, params: dict[str, Any], timeout: float, is_retry: bool
    ) -> Message:
        timeout = await self._wait_running(timeout, is_retry)
        link = await self._link_for(session, timeout)
        progress_id = self._remap_progress(session.id, params)
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
            return await self._bridge_input_requests(session, link, method, params, reply, deadline)
        finally:
            # The session may have been forgotten meanwhile (a call shared by several clients outlives
            # the one that started it): never leave a count at zero or below behind.
            left = self._inflight.pop(session.id, 0) - 1
            if left > 0:
                self._inflight[session.id] = left
            if progress_id is not None:
                self._progress.pop(progress_id, None)

    async def _wait_running(self, timeout: float, is_retry: bool) -> float:
        """Fail fast while the backend is down; a retry may wait for a restart under way. Returns the
        time left."""
        if self.state == "ready":
            return timeout
        restarter = self.restarter
        if is_retry and restarter is not None and restarter.pending:
            started = asyncio.get_running_loop().time()
            if await restarter.wait_until_back(timeout) and self.state == "ready":
                return timeout - (asyncio.get_running_loop().time() - started)
        restarting = restarter is not None and restarter.pending
        raise BackendDown(
            f"backend {self.name!r} is unavailable ({self.state}{', restarting' if restarting else ''})"
        )

    async def _bridge_input_requests(
        self,
        session: ClientIdentity,
        link: UpstreamLink,
        method: str,
        params: dict[str, Any],
        reply: Message,
        deadline: float,
    ) -> Message:
        """A modern backend's InputRequiredResult, answered for a legacy client by asking it directly.

        Each input request goes to the client as the server-to-client request it used to be; the call is
        then retried with the answers and the backend's own ``requestState``, until it completes.
        """
        for _ in range(_MAX_INPUT_ROUNDS):
            result = reply.get("result")
            if not eras.input_required(result) or not isinstance(result, dict):
                return reply
            retry = {key: value for key, value in params.items() if key not in eras.RETRY_KEYS}
            requests = result.get("inputRequests")
            if requests:
                retry["inputResponses"] = await self._ask_client_for_inputs(session, requests)
            if isinstance(result.get("requestState"), str):
                retry["requestState"] = result["requestState"]
            params = retry
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            reply = await link.request(method, params, timeout=remaining)
        raise BackendError(f"backend {self.name!r} kept asking for input ({_MAX_INPUT_ROUNDS} rounds)")

    async def _ask_client_for_inputs(self, session: ClientIdentity, requests: object) -> dict[str, Any]:
        if not isinstance(requests, dict) or not all(
            isinstance(r, dict) and r.get("method") in _INPUT_METHODS for r in requests.values()
        ):
            raise BackendError(f"backend {self.name!r} sent malformed inputRequests")
        keys = list(requests)
        replies = await asyncio.gather(
            *(
                self._events.relay_request(
                    self, session.id, jsonrpc.request(0, requests[key]["method"], requests[key].get("params"))
                )
                for key in keys
            )
        )
        answers: dict[str, Any] = {}
        for key, answer in zip(keys, replies, strict=True):
            if "error" in answer:
                error = answer["error"]
                raise PorticoError(
                    f"the backend needed {requests[key]['method']} from the client, which failed: "
                    f"{error.get('message')}",
                    code=error.get("code")
                    if isinstance(error.get("code"), int)
                    else ErrorCode.INTERNAL_ERROR,
                )
            answers[key] = answer.get("result")
        return answers

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
        if self._listener is not None:
            if not self._listener.subscribable:
                raise InvalidParams(f"Invalid params: backend {self.name!r} offers no resource subscriptions")
            self._subscribers.setdefault(uri, set()).add(session.id)
            await self._listener.watch(frozenset(self._subscribers))
            return jsonrpc.result(None, {})
        if not self.shared:
            reply = await self.call(session, "resources/subscribe", {"uri": uri}, timeout)
        elif self._subscribers.get(uri):
            reply = jsonrpc.result(None, {})
        else:
            reply = await self.call(session, "resources/subscribe", {"uri": uri}, timeout)
        if "result" in reply:
            self._subscribers.setdefault(uri, set()).add(session.id)
        return reply

    async def unsubscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        if not self.shared:
            self._subscribers.get(uri, set()).discard(session.id)
            return await self.call(session, "resources/unsubscribe", {"uri": uri}, timeout)
        await self._unsubscribe_shared(session.id, uri)
        return jsonrpc.result(None, {})

    async def _unsubscribe_shared(self, session_id: str, uri: str) -> None:
        subscribers = self._subscribers.get(uri, set())
        subscribers.discard(session_id)
        if subscribers:
            return
        self._subscribers.pop(uri, None)
        if self._listener is not None:
            await self._listener.watch(frozenset(self._subscribers))
            return
        link = self._catalog_link if self.shared else self._client_links.get(session_id)
        if link is not None and not link.closed:
            with contextlib.suppress(BackendUnavailable):
                await link.request("resources/unsubscribe", {"uri": uri}, timeout=self.config.timeout_seconds)

    async def _link_for(self, session: ClientIdentity, timeout: float) -> UpstreamLink:
        if self.shared:
            return self._catalog()
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

    def _remap_progress(self, session_id: str, params: dict[str, Any]) -> int | None:
        # Progress tokens are chosen by clients and may collide; the backend sees the gateway's own.
        meta = params.get("_meta")
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return None
        progress_id = next(self._progress_ids)
        self._progress[progress_id] = (session_id, meta["progressToken"])
        params["_meta"] = {**meta, "progressToken": progress_id}
        return progress_id

    # -- what the backend sends on its own (UpstreamHandler) ----------------------------------------------

    def on_server_request(self, link: UpstreamLink, message: Message) -> None:
        owner = link.owner or self._only_caller()
        if owner is None:
            log.warning(
                "backend %s sent %s while %d clients had calls in flight; it cannot be attributed to one "
                "client. Set `session: per-client` for this backend.",
                self.name,
                message["method"],
                len(self._inflight),
            )
            reply = jsonrpc.error(
                message["id"],
                {
                    "code": ErrorCode.CLIENT_REQUEST_UNDELIVERABLE,
                    "message": f"The gateway cannot tell which client {message['method']} is for "
                    "(this backend is shared; configure it with session: per-client)",
                },
            )
            self._spawn(link.respond(reply))
            return
        key = (id(link), message["id"])
        task = self._spawn(self._relay(link, owner, message))
        self._relays[key] = task
        task.add_done_callback(lambda _: self._relays.pop(key, None))

    async def _relay(self, link: UpstreamLink, session_id: str, message: Message) -> None:
        reply = await self._events.relay_request(self, session_id, message)
        await link.respond({**reply, "id": message["id"]})

    def on_server_notification(self, link: UpstreamLink, message: Message) -> None:
        method = message["method"]
        params = jsonrpc.params_of(message)
        if link.modern:
            # Listen-stream notifications are tagged with the gateway's own subscription id upstream,
            # which means nothing to clients.
            subscription = _pop_meta(params, eras.SUBSCRIPTION_ID_KEY)
            if method == "notifications/subscriptions/acknowledged":
                if self._listener is not None:
                    self._listener.acknowledged(subscription)
                return
            message = {**message, "params": params}
        if method == "notifications/progress":
            target = self._progress.get(params.get("progressToken"))  # type: ignore[arg-type]
            if target is not None:
                session_id, token = target
                forwarded = {**message, "params": {**params, "progressToken": token}}
                self._events.deliver_notification(self, [session_id], forwarded)
        elif method in _LIST_CHANGED:
            self._spawn(self._refresh_and_announce(_LIST_CHANGED[method]))
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            subscribers = self._subscribers.get(uri, set()) if isinstance(uri, str) else set()
            targets = [s for s in subscribers if link.owner in (None, s)]
            # Delivered even to no one: what the gateway keeps of the resource (a cache) must hear it.
            self._events.deliver_notification(self, targets, message)
        elif method == "notifications/cancelled":
            # The backend gave up on a request it sent: stop relaying it (the client is told).
            relay = self._relays.get((id(link), params.get("requestId")))
            if relay is not None:
                relay.cancel()
        elif method == "notifications/message":
            self._events.deliver_notification(self, [link.owner] if link.owner else None, message)
        else:
            self._events.deliver_notification(self, [link.owner] if link.owner else [], message)

    def on_link_closed(self, link: UpstreamLink, reason: str) -> None:
        if link is self._catalog_link and self.state != "stopped":
            was_offered = self.ready
            self.state = "down"
            if was_offered:
                self._events.backend_down(self, reason)
            for client_link in list(self._client_links.values()):
                self._spawn(client_link.close())
            self._client_links.clear()
            if self.restarter is not None:
                self.restarter.schedule()
        elif link.owner is not None and self._client_links.get(link.owner) is link:
            del self._client_links[link.owner]

    # -- resilience -----------------------------------------------------------------------------------

    async def _restart(self) -> None:
        """One restart attempt (see proxy.restart): a fresh process, a clean breaker, the tools back."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self.start()
        if self.breaker is not None and not self.breaker.closed:
            self.breaker.reset()  # announces the tools through _breaker_changed
        else:
            self._events.backend_changed(self)

    def _breaker_changed(self, state: str) -> None:
        closed = state == "closed"
        was_closed, self._breaker_was_closed = self._breaker_was_closed, closed
        if not closed and (self._prober is None or self._prober.done()):
            self._prober = self._spawn(self._probe_until_closed())
        if self.state != "ready" or closed == was_closed:
            return  # a backend that is down is out of the lists already
        if closed:
            log.warning("backend %s: circuit breaker closed, its tools are back", self.name)
            self._events.backend_changed(self)
        else:
            self._events.backend_down(self, "its circuit breaker opened after repeated failures")

    async def _probe_until_closed(self) -> None:
        assert self.breaker is not None  # noqa: S101 - only called when there is a breaker

        def usable() -> bool | None:
            if self.state == "ready":
                return True
            return False if self.restarter is not None and self.restarter.pending else None

        timeout = min(self.config.timeout_seconds, _PROBE_TIMEOUT_SECONDS)
        await probe_until_closed(
            self.breaker, lambda: self._catalog().request("ping", {}, timeout=timeout), usable
        )

    def _only_caller(self) -> str | None:
        return next(iter(self._inflight)) if len(self._inflight) == 1 else None

    # -- lists -------------------------------------------------------------------------------------------

    async def _refresh_and_announce(self, methods: tuple[str, ...]) -> None:
        try:
            await self._refresh(methods)
        except BackendUnavailable as exc:
            log.warning("backend %s: could not re-read its lists: %s", self.name, exc.message)
            return
        self._events.backend_changed(self)

    async def _refresh(self, methods: tuple[str, ...]) -> None:
        async with self._refresh_lock:
            changes: dict[str, tuple[dict[str, Any], ...]] = {}
            for method in methods:
                if _LIST_CAPABILITY[method] in self.capabilities:
                    changes[LIST_METHODS[method][0]] = await self._fetch_all(method)
            if "tools" in changes:
                changes["tools"] = param_headers.valid_tools(self.name, changes["tools"], log)
                self._catalog().connector.note_tools(changes["tools"])
            self.lists = BackendLists(**{**_as_dict(self.lists), **changes})

    def _catalog(self) -> UpstreamLink:
        if self._catalog_link is None:
            raise BackendUnavailable(f"backend {self.name!r} has not started")
        return self._catalog_link

    async def _fetch_all(self, method: str) -> tuple[dict[str, Any], ...]:
        link = self._catalog()
        key = LIST_METHODS[method][0]
        items: list[dict[str, Any]] = []
        pages: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        for _ in range(_MAX_LIST_PAGES):
            reply = await link.request(method, params, timeout=self.config.timeout_seconds)
            result = reply.get("result")
            if (
                not isinstance(result, dict)
                and reply.get("error", {}).get("code") == ErrorCode.METHOD_NOT_FOUND
            ):
                # Offering resources without templates (say) is common: a list it lacks is an empty one.
                return ()
            if not isinstance(result, dict):
                error = reply.get("error", {}).get("message", "no result")
                raise BackendUnavailable(f"{method} failed: {error}")
            items.extend(item for item in result.get(key) or () if isinstance(item, dict))
            pages.append(result)
            cursor = result.get("nextCursor")
            if not cursor:
                break
            params = {"cursor": cursor}
        self._note_cache_hint(method, pages)
        return tuple(items)

    def cache_hint(self, method: str) -> tuple[int, str] | None:
        """How long this backend said its list may be cached, and by whom; None if it offers no such list.
        A backend that said nothing (every legacy one) gets 0 ms, private."""
        if _LIST_CAPABILITY[method] not in self.capabilities:
            return None
        return self.cache_hints.get(method, (0, "private"))

    def _note_cache_hint(self, method: str, pages: list[dict[str, Any]]) -> None:
        # A list is as fresh as its stalest page and as private as its most private one; a page that
        # says nothing leaves the whole list without a hint.
        ttls = [ttl for page in pages if isinstance(ttl := page.get("ttlMs"), int) and ttl >= 0]
        scopes = [scope for page in pages if (scope := page.get("cacheScope")) in ("public", "private")]
        if len(ttls) < len(pages) or len(scopes) < len(pages):
            self.cache_hints.pop(method, None)
            return
        self.cache_hints[method] = (min(ttls), "private" if "private" in scopes else "public")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _as_dict(lists: BackendLists) -> dict[str, tuple[dict[str, Any], ...]]:
    return {key: getattr(lists, key) for key, _ in LIST_METHODS.values()}


def _pop_meta(params: dict[str, Any], key: str) -> Any:
    """Remove one key from ``params["_meta"]`` in place (dropping an emptied ``_meta``); return its value."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or key not in meta:
        return None
    rest = {k: v for k, v in meta.items() if k != key}
    if rest:
        params["_meta"] = rest
    else:
        del params["_meta"]
    return meta[key]
