"""How a backend withdraws its tools when it is failing, and how it comes back.

Three mechanisms, each owned by one object here:

- the circuit breaker (``proxy.resilience.AsyncBreaker``): consecutive transport failures open it, which
  withdraws the backend's tools; while it is not closed the gateway sends its own half-open probes, since
  no client can call a tool it cannot see;
- the restarter (``proxy.restart.Restarter``): a catalog link that closed (a stdio process that exited, a
  WebSocket or HTTP+SSE connection that broke) is opened again with exponential backoff;
- health checks (``health:`` in the config): every ``interval_seconds`` a ``ping`` (or ``server/discover``)
  on the catalog link. A check that fails with a transport error or gets no answer in ``timeout_seconds``
  counts as one transport failure for the breaker, exactly like a failed call, so ``breaker.failures``
  failed checks in a row withdraw the tools, and the breaker's probes bring them back. A JSON-RPC error is
  an answer and proves the backend alive. A backend whose breaker is disabled has its link closed after
  that many failed checks instead, so the restarter brings up a fresh process or connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from proxy.errors import BackendTimeout, BackendUnavailable
from proxy.resilience import AsyncBreaker, BackendDown, probe_until_closed
from proxy.restart import Restarter

if TYPE_CHECKING:
    from proxy.backend import Backend

log = logging.getLogger("portico.backend")

# The gateway's own half-open probe waits no longer than this for its answer.
_PROBE_TIMEOUT_SECONDS = 5.0


class Recovery:
    """The breaker, restarts and health checks of one backend; see the module docstring."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        config = backend.config
        self.breaker = (
            AsyncBreaker(backend.name, config.breaker, self._breaker_changed)
            if config.breaker.enabled
            else None
        )
        self._breaker_was_closed = True
        # True while taking a state another instance announced, which is not announced back.
        self._following = False
        self._prober: asyncio.Task[None] | None = None
        self.restarter = (
            Restarter(backend.name, config.restart, self._restart) if config.restart.enabled else None
        )
        self._checker: asyncio.Task[None] | None = None
        # Failed health checks in a row, for a backend without a breaker.
        self._failed_checks = 0
        self.checks = 0

    def start_health_checks(self) -> None:
        if self._backend.config.health is not None and self._checker is None:
            self._checker = self._backend.spawn(self._check_health_forever())

    def link_lost(self) -> None:
        if self.restarter is not None:
            self.restarter.schedule()

    async def close(self) -> None:
        if self.restarter is not None:
            await self.restarter.close()

    async def wait_running(self, timeout: float, is_retry: bool) -> float:
        """Fail fast while the backend is down; a retry may wait for a restart under way. Returns the
        time left."""
        backend = self._backend
        if backend.state == "ready":
            return timeout
        restarter = self.restarter
        if is_retry and restarter is not None and restarter.pending:
            started = asyncio.get_running_loop().time()
            if await restarter.wait_until_back(timeout) and backend.state == "ready":
                return timeout - (asyncio.get_running_loop().time() - started)
        restarting = restarter is not None and restarter.pending
        raise BackendDown(
            f"backend {backend.name!r} is unavailable ({backend.state}{', restarting' if restarting else ''})"
        )

    # -- restarts -------------------------------------------------------------------------------------

    async def _restart(self) -> None:
        """One restart attempt (see proxy.restart): a fresh link, a clean breaker, the tools back."""
        backend = self._backend
        await backend.reopen()
        self._failed_checks = 0
        if self.breaker is not None and not self.breaker.closed:
            self.breaker.reset()  # announces the tools through _breaker_changed
        else:
            backend.events.backend_changed(backend)

    # -- the breaker ------------------------------------------------------------------------------------

    def follow_breaker(self, state: str) -> None:
        """Another gateway instance's breaker for this backend opened or closed (``breaker.shared``)."""
        if self.breaker is None:
            return
        self._following = True
        try:
            self.breaker.follow(state)
        finally:
            self._following = False

    def _breaker_changed(self, state: str) -> None:
        backend = self._backend
        closed = state == "closed"
        was_closed, self._breaker_was_closed = self._breaker_was_closed, closed
        if closed != was_closed and backend.config.breaker.shared and not self._following:
            backend.events.breaker_changed(backend, state)
        if not closed and (self._prober is None or self._prober.done()):
            self._prober = backend.spawn(self._probe_until_closed())
        if backend.state != "ready" or closed == was_closed:
            return  # a backend that is down is out of the lists already
        if closed:
            log.warning("backend %s: circuit breaker closed, its tools are back", backend.name)
            backend.events.backend_changed(backend)
        else:
            backend.events.backend_down(backend, "its circuit breaker opened after repeated failures")

    async def _probe_until_closed(self) -> None:
        assert self.breaker is not None  # noqa: S101 - only called when there is a breaker
        backend = self._backend

        def usable() -> bool | None:
            if backend.state == "ready":
                return True
            return False if self.restarter is not None and self.restarter.pending else None

        health = backend.config.health
        method = health.method if health is not None else "ping"
        timeout = min(backend.config.timeout_seconds, _PROBE_TIMEOUT_SECONDS)
        await probe_until_closed(
            self.breaker, lambda: backend.catalog().request(method, {}, timeout=timeout), usable
        )

    # -- health checks --------------------------------------------------------------------------------

    async def _check_health_forever(self) -> None:
        health = self._backend.config.health
        assert health is not None  # noqa: S101 - only started when configured
        while self._backend.state != "stopped":
            await asyncio.sleep(health.interval_seconds)
            if self._backend.state == "ready" and (self.breaker is None or self.breaker.closed):
                await self.check_health()

    async def check_health(self) -> bool:
        """Send one health check now and count its outcome; True if the backend answered."""
        backend = self._backend
        health = backend.config.health
        method = health.method if health is not None else "ping"
        timeout = health.timeout_seconds if health is not None else _PROBE_TIMEOUT_SECONDS
        self.checks += 1
        try:
            await backend.catalog().request(method, {}, timeout=timeout)
        except (BackendUnavailable, BackendTimeout) as exc:
            log.warning("backend %s: health check (%s) failed: %s", backend.name, method, exc.message)
            self._check_failed()
            return False
        if self.breaker is not None:
            self.breaker.succeeded(False)
        self._failed_checks = 0
        return True

    def _check_failed(self) -> None:
        if self.breaker is not None:
            self.breaker.failed(False)
            return
        self._failed_checks += 1
        if self._failed_checks >= self._backend.config.breaker.failures:
            self._failed_checks = 0
            log.warning("backend %s: no answer to repeated health checks; reconnecting", self._backend.name)
            with contextlib.suppress(BackendUnavailable):
                self._backend.spawn(self._backend.catalog().close())
