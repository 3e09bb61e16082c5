"""A backend served by several identical instances: ``urls: [...]`` (remote) or ``replicas: N`` (stdio).

Each instance is a full ``Backend`` of its own (catalog link, circuit breaker, restarts, health checks);
the pool stands in front of them for the gateway. Its tools stay listed while at least one instance is
ready; its lists come from the first ready instance (instances are assumed to serve the same lists).

Calls are spread by ``balance``: ``least_outstanding`` (the default) sends each call to the ready instance
with the fewest calls in flight through the pool, ``round_robin`` to the next one in turn. A per-client
session is pinned to the instance its first call went to, since that instance holds its link.

Failover: an instance that is down or whose breaker is open sent nothing, so any call moves on to the next
ready instance. A call that failed on the wire (a broken link, a timeout) is sent again on another
instance only when it is safe to repeat (``retryable``); the rest fail, sent once. Each instance is tried
at most once per call, within the call's deadline. Instances are called without retries of their own,
so a call never waits for a dead instance's restart while another one could serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable
from typing import Any

from proxy.backend import Backend
from proxy.backend_events import BackendEvents, ClientIdentity
from proxy.config import RemoteBackendConfig, StdioBackendConfig
from proxy.connectors.base import Connector
from proxy.errors import BackendTimeout, BackendUnavailable
from proxy.jsonrpc import Message
from proxy.resilience import BackendDown, BreakerOpen

log = logging.getLogger("portico.backend")


class BackendPool(Backend):
    """Several instances of one backend behind one name; see the module docstring."""

    def __init__(
        self,
        name: str,
        config: StdioBackendConfig | RemoteBackendConfig,
        connector_factory: Callable[..., Connector],
        events: BackendEvents,
        gateway_info: dict[str, Any],
    ) -> None:
        super().__init__(name, config, connector_factory, events, gateway_info)
        # The pool itself holds no link: breakers and restarts belong to its instances.
        self.breaker = None
        self.restarter = None
        relay = _InstanceEvents(self)
        self.instances = [
            Backend(
                f"{name}[{index}]",
                config.instance(index),
                functools.partial(connector_factory, instance=index),
                relay,
                gateway_info,
            )
            for index in range(config.instance_count)
        ]
        for instance in self.instances:
            # Failover across instances replaces retries on one instance.
            instance.resilience.retry = instance.resilience.retry.model_copy(update={"attempts": 1})
        self.outstanding = [0] * len(self.instances)
        self._turns = itertools.count()
        self._pinned: dict[str, Backend] = {}
        self._subscribed_on: dict[tuple[str, str], Backend] = {}
        self._offered = False

    @property
    def ready(self) -> bool:
        return self.state == "ready" and any(instance.ready for instance in self.instances)

    # -- life cycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every instance; the pool is up when one is (the others keep being restarted)."""
        outcomes = await asyncio.gather(*(i.start() for i in self.instances), return_exceptions=True)
        for instance, outcome in zip(self.instances, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
            if isinstance(outcome, Exception):
                log.error("backend %s failed to start: %s", instance.name, outcome)
                instance.recovery.link_lost()
        failures = [o for o in outcomes if isinstance(o, Exception)]
        if len(failures) == len(self.instances):
            self.state = "down"
            raise BackendUnavailable(f"no instance started: {failures[0]}")
        self.state = "ready"
        self._adopt()

    async def stop(self) -> None:
        self.state = "stopped"
        await asyncio.gather(*(i.stop() for i in self.instances), return_exceptions=True)

    async def forget_session(self, session_id: str, stateless: bool = False) -> None:
        self._pinned.pop(session_id, None)
        for key in [key for key in self._subscribed_on if key[0] == session_id]:
            del self._subscribed_on[key]
        await asyncio.gather(*(i.forget_session(session_id, stateless) for i in self.instances))

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tried: set[int] = set()
        while True:
            instance = self._pick(session, tried)
            if instance is None:
                raise BackendDown(f"backend {self.name!r} is unavailable (no instance is ready)")
            index = self.instances.index(instance)
            tried.add(index)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BackendTimeout(f"backend {self.name!r}: the request's deadline passed")
            self.outstanding[index] += 1
            try:
                return await instance.call(session, method, params, remaining, retryable=retryable)
            except (BackendUnavailable, BackendTimeout) as exc:
                nothing_sent = isinstance(exc, BackendDown | BreakerOpen)
                if not (nothing_sent or retryable):
                    raise
                log.info("backend %s: %s; trying another instance", instance.name, exc.message)
                self._pinned.pop(session.id, None)
            finally:
                self.outstanding[index] -= 1

    def _pick(self, session: ClientIdentity, tried: set[int]) -> Backend | None:
        """The instance for this call: the session's own (per-client), else one chosen by ``balance``."""
        ready = [i for n, i in enumerate(self.instances) if i.ready and n not in tried]
        if not ready:
            return None
        pinned = self._pinned.get(session.id)
        if pinned in ready:
            return pinned
        turn = next(self._turns)
        # Rotated first, so ties under least_outstanding are spread too.
        ready = ready[turn % len(ready) :] + ready[: turn % len(ready)]
        if self.config.balance == "least_outstanding":
            chosen = min(ready, key=lambda i: self.outstanding[self.instances.index(i)])
        else:
            chosen = ready[0]
        if not self.shared:
            self._pinned[session.id] = chosen
        return chosen

    async def notify(self, session: ClientIdentity, method: str, params: dict[str, Any] | None) -> None:
        pinned = self._pinned.get(session.id)
        targets = [pinned] if pinned is not None else self.instances
        await asyncio.gather(*(i.notify(session, method, params) for i in targets))

    async def notify_all(self, method: str, params: dict[str, Any] | None) -> None:
        await asyncio.gather(*(i.notify_all(method, params) for i in self.instances))

    async def set_log_level(self, session: ClientIdentity, level: str) -> None:
        for instance in self.instances:
            with contextlib.suppress(BackendUnavailable, BackendTimeout):
                await instance.set_log_level(session, level)

    async def subscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        instance = self._pick(session, set())
        if instance is None:
            raise BackendDown(f"backend {self.name!r} is unavailable (no instance is ready)")
        self._subscribed_on[(session.id, uri)] = instance
        return await instance.subscribe(session, uri, timeout)

    async def unsubscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        instance = self._subscribed_on.pop((session.id, uri), None) or self._pick(session, set())
        if instance is None:
            raise BackendDown(f"backend {self.name!r} is unavailable (no instance is ready)")
        return await instance.unsubscribe(session, uri, timeout)

    # -- what the instances report -----------------------------------------------------------------------

    def _adopt(self) -> None:
        """Offer what the first ready instance offers."""
        source = next((i for i in self.instances if i.ready), None)
        if source is None:
            return
        self.era = source.era
        self.lists = source.lists
        self.capabilities = source.capabilities
        self.server_info = source.server_info
        self.instructions = source.instructions
        self.cache_hints = source.cache_hints

    def instance_changed(self, instance: Backend) -> None:
        was_offered, lists = self.ready_before_change(), self.lists
        self._adopt()
        if self.state == "ready" and (not was_offered or self.lists != lists):
            self.events.backend_changed(self)

    def instance_down(self, instance: Backend, reason: str) -> None:
        log.warning("backend %s is down: %s", instance.name, reason)
        if self.state == "ready" and not self.ready:
            self.events.backend_down(self, f"every instance is down (last: {reason})")
        elif self.ready:
            self._adopt()

    def ready_before_change(self) -> bool:
        """Whether the pool was offered before the instance that just came back: any other one ready."""
        return self.state == "ready" and sum(i.ready for i in self.instances) > 1


class _InstanceEvents:
    """What the instances tell the gateway, told in the pool's name."""

    def __init__(self, pool: BackendPool) -> None:
        self._pool = pool

    def backend_changed(self, backend: Backend) -> None:
        self._pool.instance_changed(backend)

    def backend_down(self, backend: Backend, reason: str) -> None:
        self._pool.instance_down(backend, reason)

    def breaker_changed(self, backend: Backend, state: str) -> None:
        # Breakers belong to instances: announced under the instance's own name (``name[i]``).
        self._pool.events.breaker_changed(backend, state)

    async def relay_request(self, backend: Backend, session_id: str, message: Message) -> Message:
        return await self._pool.events.relay_request(self._pool, session_id, message)

    def deliver_notification(self, backend: Backend, session_ids: list[str] | None, message: Message) -> None:
        self._pool.events.deliver_notification(self._pool, session_ids, message)


def make_backend(
    name: str,
    config: StdioBackendConfig | RemoteBackendConfig,
    connector_factory: Callable[..., Connector],
    events: BackendEvents,
    gateway_info: dict[str, Any],
) -> Backend:
    """The backend a config entry describes: a pool when it has several instances (``urls``,
    ``replicas``), else a single one."""
    kind = BackendPool if config.instance_count > 1 else Backend
    return kind(name, config, connector_factory, events, gateway_info)
