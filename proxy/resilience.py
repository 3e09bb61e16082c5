"""Per-backend resilience: retries within a budget (tenacity) and an asyncio-correct circuit breaker.

pybreaker's ``CircuitBreaker.call`` runs a synchronous function: handed a coroutine function it never
sees the coroutine fail, and in half-open it lets every concurrent caller through as a probe. So
``AsyncBreaker`` keeps pybreaker for what it does well (the closed/open/half-open states, the count of
consecutive failures in its storage, the ``fail_max`` and ``reset_timeout`` settings) and drives the
transitions itself around each awaited attempt, with its own monotonic clock (injectable in tests). The
decision to let a call through and the claim of the single half-open probe happen in one synchronous step
with no await in between, so on one event loop exactly one caller can win the probe and no lock is needed.
pybreaker's own listeners fire before its storage records the new state, so the breaker reports
transitions through ``on_change`` after they are complete.

Only failures of the link count (``BackendUnavailable``, ``BackendTimeout``): a JSON-RPC error or a tool
error is an answer, which proves the backend alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pybreaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from proxy.config import BreakerConfig, RetryConfig
from proxy.errors import BackendTimeout, BackendUnavailable

log = logging.getLogger("portico.resilience")

T = TypeVar("T")

# The retry budget may bank this many retries during quiet, healthy periods, no more.
_BUDGET_CAPACITY = 10.0
# While a breaker is not closed, how often the prober looks whether a probe is due.
_PROBE_POLL_SECONDS = 0.2
# A retry needs at least this much of the request's deadline left to be worth sending.
_MIN_ATTEMPT_SECONDS = 0.05


class BreakerOpen(BackendUnavailable):
    """The backend's circuit breaker refused the call; nothing was sent. Never retried."""


class BackendDown(BackendUnavailable):
    """The backend is not running (crashed, restarting, never started); nothing was sent."""


class RetryBudget:
    """A token bucket that keeps retries under ``ratio`` of the first attempts.

    Every first attempt earns ``ratio`` of a token, every retry costs one, so over any period the
    retries sent are at most ``ratio`` times the first attempts, plus the one token it starts with.
    """

    def __init__(self, ratio: float, capacity: float = _BUDGET_CAPACITY) -> None:
        self.ratio = ratio
        self.capacity = capacity
        self.tokens = 1.0 if ratio > 0 else 0.0

    def earn(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class AsyncBreaker:
    """A circuit breaker for awaited calls, built on pybreaker's state; see the module docstring.

    Use: ``probe = breaker.admit()`` (raises ``BreakerOpen``), await the call, then exactly one of
    ``succeeded(probe)``, ``failed(probe)`` or ``abandoned(probe)``.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        on_change: Callable[[str], None] = lambda state: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=config.failures,
            reset_timeout=config.reset_seconds,
            state_storage=self._storage,
            name=name,
            throw_new_error_on_trip=False,
        )
        self._on_change = on_change
        self._clock = clock
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (pybreaker's names)."""
        return str(self._breaker.current_state)

    @property
    def closed(self) -> bool:
        return self.state == pybreaker.STATE_CLOSED

    @property
    def failures(self) -> int:
        """Consecutive link failures counted while closed."""
        return int(self._storage.counter)

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state != pybreaker.STATE_OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._breaker.reset_timeout - self._clock())

    def admit(self) -> bool:
        """Let one attempt through, or raise ``BreakerOpen``. True if this attempt is the one probe."""
        state = self.state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN:
            wait = self.retry_in
            if wait > 0:
                raise BreakerOpen(
                    f"backend {self.name!r} is failing and its circuit breaker is open; "
                    f"it will be tried again in {wait:.1f} s",
                    data={"retryAfterSeconds": round(wait, 3)},
                )
            self._transition(self._breaker.half_open)
        if self._probe_in_flight:
            raise BreakerOpen(
                f"backend {self.name!r} is failing and its circuit breaker is half-open: one probe call "
                "is testing it, other calls are refused until it answers",
                data={"retryAfterSeconds": 1.0},
            )
        self._probe_in_flight = True
        return True

    def succeeded(self, probe: bool) -> None:
        if probe:
            self._probe_in_flight = False
            self._transition(self._breaker.close)
        elif self._storage.counter and self.closed:
            # Reading the counter first skips the state look-up after every success in a row.
            self._storage.reset_counter()
        # A straggler that answers while open says nothing about now: only the probe closes it.

    def failed(self, probe: bool) -> None:
        if probe:
            self._probe_in_flight = False
            self._trip()
        elif self.closed:
            self._storage.increment_counter()
            if self._storage.counter >= self._breaker.fail_max:
                self._trip()

    def abandoned(self, probe: bool) -> None:
        """The attempt ended without an answer of its own (cancelled): the next caller may probe."""
        if probe:
            self._probe_in_flight = False

    def reset(self) -> None:
        """Close the breaker (a freshly restarted backend starts with a clean slate)."""
        self._probe_in_flight = False
        if self.closed:
            self._storage.reset_counter()
        else:
            self._transition(self._breaker.close)

    def follow(self, state: str) -> None:
        """Take the state another gateway instance's breaker for the same backend went to (shared
        breakers): opened there, it opens here for its full ``reset_seconds``; closed there (a probe
        succeeded), it closes here. Half-open is each instance's own business."""
        if state == pybreaker.STATE_OPEN and self.closed:
            self._trip("another gateway instance found the backend failing")
        elif state == pybreaker.STATE_CLOSED and not self.closed:
            self.reset()

    def _trip(self, why: str = "repeated failures") -> None:
        self._opened_at = self._clock()
        log.warning(
            "backend %s: circuit breaker open for %.1f s (%s)", self.name, self._breaker.reset_timeout, why
        )
        self._transition(self._breaker.open)

    def _transition(self, change: Callable[[], object]) -> None:
        change()
        self._on_change(self.state)


Attempt = Callable[[float, bool], Awaitable[T]]


class Resilience:
    """Retries and the breaker around one backend's attempts; see ``run``."""

    def __init__(self, name: str, retry: RetryConfig, breaker: AsyncBreaker | None) -> None:
        self.name = name
        self.retry = retry
        self.budget = RetryBudget(retry.budget_ratio)
        self.breaker = breaker

    async def run(self, attempt: Attempt[T], *, retryable: bool, deadline: float) -> T:
        """Await ``attempt(remaining_seconds, is_retry)`` through the breaker; retry it after a link
        failure only when ``retryable``, the budget allows, the deadline leaves room, and the breaker is
        not open. ``deadline`` is on the event loop's clock."""
        remaining = deadline - asyncio.get_running_loop().time()
        probe = self.admit_first(remaining)
        first = self._started(attempt, remaining, probe, is_retry=False)
        try:
            # Almost every call succeeds at once: the retry loop is only set up once one has failed.
            return await self.settled(probe, first)
        except Exception as exc:
            if not (self.retries(retryable) and _worth_retrying(exc)):
                raise
            failure = exc
        return await self._retry(attempt, deadline, failure)

    async def _retry(self, attempt: Attempt[T], deadline: float, failure: Exception) -> T:
        """The attempts after a first one that failed with ``failure``. Tenacity's first round raises that
        failure again instead of sending anything, so every decision -- stop, wait, the log line -- is
        tenacity's, as if it had run the first attempt itself."""
        retrying = AsyncRetrying(
            stop=self._stop_for(deadline),
            wait=wait_random_exponential(
                multiplier=self.retry.initial_backoff_seconds, max=self.retry.max_backoff_seconds
            ),
            retry=retry_if_exception(_worth_retrying),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                if try_.retry_state.attempt_number == 1:
                    raise failure
                return await self._again(attempt, deadline)
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def retries(self, retryable: bool) -> bool:
        """Whether a call may be sent more than once; when not, ``admit_first`` and ``settled`` are all of
        ``run`` and a caller on the hot path may use them directly, without ``run``'s closure and layers."""
        return retryable and self.retry.attempts > 1

    def admit_first(self, remaining: float) -> bool:
        """Before a call's first (or only) attempt: it earns the retry budget its share, then the breaker
        decides (raises ``BackendTimeout`` or ``BreakerOpen``). Returns whether the attempt is the probe;
        the caller must then await the attempt through ``settled``."""
        self.budget.earn()
        return self._admit(remaining)

    async def settled(self, probe: bool, attempt: Awaitable[T]) -> T:
        """Await one admitted attempt and tell the breaker how it went."""
        try:
            result = await attempt
        except BaseException as exc:
            self._record_failure(probe, exc)
            raise
        if self.breaker is not None:
            self.breaker.succeeded(probe)
        return result

    async def _again(self, attempt: Attempt[T], deadline: float) -> T:
        """One retry: admitted by the breaker like the first attempt, but earning no budget."""
        remaining = deadline - asyncio.get_running_loop().time()
        probe = self._admit(remaining)
        return await self.settled(probe, self._started(attempt, remaining, probe, is_retry=True))

    def _started(self, attempt: Attempt[T], remaining: float, probe: bool, *, is_retry: bool) -> Awaitable[T]:
        """The admitted attempt, begun; a failure to even begin it still settles the breaker's admission."""
        try:
            return attempt(remaining, is_retry)
        except BaseException as exc:
            self._record_failure(probe, exc)
            raise

    def _admit(self, remaining: float) -> bool:
        if remaining <= 0:
            raise BackendTimeout(f"backend {self.name!r}: the request's deadline passed")
        return self.breaker.admit() if self.breaker is not None else False

    def _record_failure(self, probe: bool, exc: BaseException) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        if isinstance(exc, BackendUnavailable | BackendTimeout) and not isinstance(exc, BackendDown):
            breaker.failed(probe)
        else:
            # Nothing reached a backend that is down, and a cancelled or failed-here attempt proves
            # nothing either way: only real link failures count.
            breaker.abandoned(probe)

    def _stop_for(self, deadline: float) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.retry.attempts:
                return True
            sleep = state.upcoming_sleep
            if asyncio.get_running_loop().time() + sleep + _MIN_ATTEMPT_SECONDS >= deadline:
                return True
            if self.breaker is not None and not self.breaker.closed:
                return True
            # Spent last, so only a retry that will really be sent pays.
            return not self.budget.try_spend()

        return stop

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "backend %s: retrying after %s (attempt %d, in %.2f s)",
            self.name,
            error,
            state.attempt_number + 1,
            state.upcoming_sleep,
        )


def _worth_retrying(exc: BaseException) -> bool:
    # Application errors come back as replies, not exceptions; of the exceptions, only a broken link or
    # a timeout may go better on a second try. An open breaker or a backend that is down would not.
    return isinstance(exc, BackendUnavailable | BackendTimeout) and not isinstance(
        exc, BreakerOpen | BackendDown
    )


async def probe_until_closed(
    breaker: AsyncBreaker, send_probe: Callable[[], Awaitable[object]], usable: Callable[[], bool | None]
) -> None:
    """Send the half-open probe whenever it is due, until the breaker closes.

    While a breaker is not closed its backend's tools are out of the lists, so no client may come along
    to be the probe: the gateway sends its own (``send_probe``, a ping) through the same single probe
    slot a client call would take. ``usable()`` says whether probing makes sense now: True to probe,
    False to wait (the backend is restarting), None to stop (it is gone for good).
    """
    while not breaker.closed:
        # Polled rather than slept until due: cheap, and it follows the breaker's own clock.
        await asyncio.sleep(_PROBE_POLL_SECONDS)
        state = usable()
        if state is None:
            return
        if not state or breaker.closed:
            continue
        try:
            probe = breaker.admit()
        except BreakerOpen:
            continue  # not due yet, or a client's call is the probe
        try:
            await send_probe()
        except Exception:
            # An answer that is not even a JSON-RPC reply is no sign of health either.
            breaker.failed(probe)
        except BaseException:
            breaker.abandoned(probe)
            raise
        else:
            breaker.succeeded(probe)
