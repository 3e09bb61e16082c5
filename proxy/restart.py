"""Bringing a backend back whose catalog link closed: restart attempts with exponential backoff.

The same for every transport: a stdio process that exited is started again, a WebSocket or HTTP+SSE
connection that broke is opened again (``start`` is whatever brings this backend's link back). The first
attempt comes after ``initial_backoff_seconds``; each failed attempt, and each failure soon after a
restart, doubles the wait up to ``max_backoff_seconds``. A backend that stays
up long enough is forgiven and its next crash waits the initial time again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from proxy.config import RestartConfig
from proxy.errors import BackendUnavailable

log = logging.getLogger("portico.restart")

# A backend that ran this long (or twice the longest backoff, if more) since its last restart counts as
# healthy: its next crash starts the backoff over.
_STABLE_SECONDS = 60.0


class Restarter:
    """Restarts one backend; ``start`` raises (``BackendUnavailable``, usually) when an attempt fails."""

    def __init__(
        self,
        name: str,
        config: RestartConfig,
        start: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.config = config
        self._start = start
        self._clock = clock
        self._sleep = sleep
        self._delay = config.initial_backoff_seconds
        self._last_restart: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self.restarts = 0

    @property
    def pending(self) -> bool:
        """Whether a restart is under way (so the backend is expected back)."""
        return self._task is not None and not self._task.done()

    def next_delay(self) -> float:
        """The wait before the next restart attempt, given how recently the last one happened."""
        stable = max(_STABLE_SECONDS, 2 * self.config.max_backoff_seconds)
        if self._last_restart is None or self._clock() - self._last_restart >= stable:
            self._delay = self.config.initial_backoff_seconds
        return self._delay

    def schedule(self) -> None:
        """The backend went down: start restarting it, unless that is already under way."""
        if self.pending:
            return
        self._back.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-restart")

    async def wait_until_back(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for a pending restart to succeed; False if it did not."""
        if not self.pending:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._back.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _run(self) -> None:
        delay = self.next_delay()
        while True:
            log.warning("backend %s: restarting in %.1f s", self.name, delay)
            await self._sleep(delay)
            self._delay = min(delay * 2, self.config.max_backoff_seconds)
            try:
                await self._start()
            except Exception as exc:
                why = exc.message if isinstance(exc, BackendUnavailable) else repr(exc)
                log.error("backend %s: restart failed: %s", self.name, why)
                delay = self._delay
                continue
            self.restarts += 1
            self._last_restart = self._clock()
            self._back.set()
            log.warning("backend %s: restarted", self.name)
            return
