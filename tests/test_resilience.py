"""Unit tests of proxy.resilience: the retry budget, the async circuit breaker, retries around attempts."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from proxy.config import BreakerConfig, RetryConfig
from proxy.errors import BackendTimeout, BackendUnavailable
from proxy.resilience import (
    AsyncBreaker,
    BackendDown,
    BreakerOpen,
    Resilience,
    RetryBudget,
    probe_until_closed,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, reset: float = 30.0) -> tuple[AsyncBreaker, Clock, list[str]]:
    clock, changes = Clock(), []
    cb = AsyncBreaker("b", BreakerConfig(failures=failures, reset_seconds=reset), changes.append, clock)
    return cb, clock, changes


def fast_retry(attempts: int = 3, ratio: float = 0.2) -> RetryConfig:
    return RetryConfig(
        attempts=attempts, initial_backoff_seconds=0.001, max_backoff_seconds=0.002, budget_ratio=ratio
    )


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


# -- retry budget ---------------------------------------------------------------------------------------


def test_budget_allows_one_retry_per_five_first_attempts() -> None:
    budget = RetryBudget(0.2)
    assert budget.try_spend()  # the one token it starts with
    assert not budget.try_spend()
    for _ in range(5):
        budget.earn()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_budget_banks_no_more_than_its_capacity() -> None:
    budget = RetryBudget(0.2, capacity=3)
    for _ in range(1000):
        budget.earn()
    assert sum(budget.try_spend() for _ in range(10)) == 3


def test_budget_of_zero_never_retries() -> None:
    budget = RetryBudget(0.0)
    budget.earn()
    assert not budget.try_spend()


# -- breaker states ------------------------------------------------------------------------------------


def test_breaker_opens_after_n_consecutive_failures_only() -> None:
    cb, _, changes = breaker(failures=3)
    for _ in range(2):
        cb.failed(cb.admit())
    cb.succeeded(cb.admit())  # a success (or an application error) breaks the run
    for _ in range(2):
        cb.failed(cb.admit())
    assert cb.closed and changes == []
    cb.failed(cb.admit())
    assert cb.state == "open" and changes == ["open"]


def test_open_breaker_refuses_at_once_saying_when_it_tries_again() -> None:
    cb, clock, _ = breaker(failures=1, reset=30)
    cb.failed(cb.admit())
    clock.now += 10
    with pytest.raises(BreakerOpen) as refused:
        cb.admit()
    assert refused.value.code == -32050
    assert "open" in refused.value.message and "20.0 s" in refused.value.message
    assert refused.value.data == {"retryAfterSeconds": 20.0}


def test_after_reset_one_probe_whose_success_closes() -> None:
    cb, clock, changes = breaker(failures=1, reset=30)
    cb.failed(cb.admit())
    clock.now += 30
    probe = cb.admit()
    assert probe is True and cb.state == "half-open"
    with pytest.raises(BreakerOpen, match="half-open"):
        cb.admit()
    cb.succeeded(probe)
    assert cb.closed and changes == ["open", "half-open", "closed"]
    assert cb.admit() is False and cb.failures == 0


def test_a_failed_probe_reopens_for_another_full_period() -> None:
    cb, clock, changes = breaker(failures=1, reset=30)
    cb.failed(cb.admit())
    clock.now += 31
    cb.failed(cb.admit())
    assert cb.state == "open" and changes[-1] == "open"
    clock.now += 29
    with pytest.raises(BreakerOpen):
        cb.admit()
    clock.now += 1
    assert cb.admit() is True


def test_an_abandoned_probe_lets_the_next_caller_probe() -> None:
    cb, clock, _ = breaker(failures=1, reset=1)
    cb.failed(cb.admit())
    clock.now += 1
    cb.abandoned(cb.admit())
    assert cb.state == "half-open"
    assert cb.admit() is True


def test_stragglers_do_not_decide_an_open_breaker() -> None:
    cb, _, _ = breaker(failures=1)
    in_flight = cb.admit()
    cb.failed(cb.admit())
    cb.succeeded(in_flight)
    assert cb.state == "open"


async def test_hundred_concurrent_half_open_callers_send_one_probe() -> None:
    cb, clock, _ = breaker(failures=1, reset=5)
    resilience = Resilience("b", fast_retry(attempts=1), cb)
    reached = 0
    release = asyncio.Event()

    async def attempt(remaining: float, is_retry: bool) -> str:
        nonlocal reached
        reached += 1
        await release.wait()
        return "ok"

    async def failing(remaining: float, is_retry: bool) -> str:
        raise BackendUnavailable("link broke")

    with pytest.raises(BackendUnavailable):
        await resilience.run(failing, retryable=False, deadline=deadline())
    clock.now += 5
    callers = [
        asyncio.create_task(resilience.run(attempt, retryable=True, deadline=deadline())) for _ in range(100)
    ]
    await asyncio.sleep(0.05)
    release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert reached == 1
    assert outcomes.count("ok") == 1
    assert sum(isinstance(o, BreakerOpen) for o in outcomes) == 99
    assert cb.closed


# -- retries -------------------------------------------------------------------------------------------


async def test_only_retryable_requests_are_retried_after_a_link_failure() -> None:
    for retryable, expected in ((False, 1), (True, 2)):
        calls = 0

        async def flaky(remaining: float, is_retry: bool) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BackendUnavailable("link broke")
            return "ok"

        resilience = Resilience("b", fast_retry(), None)
        if retryable:
            assert await resilience.run(flaky, retryable=True, deadline=deadline()) == "ok"
        else:
            with pytest.raises(BackendUnavailable):
                await resilience.run(flaky, retryable=False, deadline=deadline())
        assert calls == expected


@pytest.mark.parametrize(
    "error",
    [BreakerOpen("open"), BackendDown("down"), ValueError("application"), asyncio.CancelledError()],
)
async def test_no_retry_for_an_open_breaker_a_down_backend_or_anything_not_a_link_failure(
    error: BaseException,
) -> None:
    calls = 0

    async def attempt(remaining: float, is_retry: bool) -> str:
        nonlocal calls
        calls += 1
        raise error

    resilience = Resilience("b", fast_retry(attempts=5), None)
    resilience.budget.tokens = 10
    with pytest.raises(type(error)):
        await resilience.run(attempt, retryable=True, deadline=deadline())
    assert calls == 1


async def test_retries_stop_at_the_attempt_limit_and_pass_the_remaining_time() -> None:
    seen: list[tuple[float, bool]] = []

    async def attempt(remaining: float, is_retry: bool) -> str:
        seen.append((remaining, is_retry))
        raise BackendTimeout("slow")

    resilience = Resilience("b", fast_retry(attempts=3), None)
    resilience.budget.tokens = 10
    with pytest.raises(BackendTimeout):
        await resilience.run(attempt, retryable=True, deadline=deadline(5))
    assert [is_retry for _, is_retry in seen] == [False, True, True]
    assert all(0 < remaining <= 5 for remaining, _ in seen)


async def test_no_retry_when_the_backoff_would_pass_the_deadline() -> None:
    calls = 0

    async def attempt(remaining: float, is_retry: bool) -> str:
        nonlocal calls
        calls += 1
        raise BackendUnavailable("link broke")

    config = RetryConfig(attempts=5, initial_backoff_seconds=10, max_backoff_seconds=10)
    resilience = Resilience("b", config, None)
    resilience.budget.tokens = 10
    with pytest.raises(BackendUnavailable):
        await resilience.run(attempt, retryable=True, deadline=deadline(0.5))
    assert calls == 1  # waited for nothing: the retry could not have made it in time


async def test_retries_add_at_most_the_budget_at_half_failures() -> None:
    rng = random.Random(7)
    attempts = 0

    async def half_failing(remaining: float, is_retry: bool) -> str:
        nonlocal attempts
        attempts += 1
        if rng.random() < 0.5:
            raise BackendUnavailable("link broke")
        return "ok"

    resilience = Resilience("b", fast_retry(attempts=3, ratio=0.2), None)
    requests = 500
    for _ in range(requests):
        with contextlib.suppress(BackendUnavailable):
            await resilience.run(half_failing, retryable=True, deadline=deadline())
    assert requests < attempts <= 1.2 * requests + 1


async def test_failures_of_retries_count_towards_the_breaker_and_stop_retrying_once_open() -> None:
    cb, _, _ = breaker(failures=2)
    resilience = Resilience("b", fast_retry(attempts=5), cb)
    resilience.budget.tokens = 10
    calls = 0

    async def broken(remaining: float, is_retry: bool) -> str:
        nonlocal calls
        calls += 1
        raise BackendUnavailable("link broke")

    with pytest.raises(BackendUnavailable):
        await resilience.run(broken, retryable=True, deadline=deadline())
    assert calls == 2 and cb.state == "open"
    with pytest.raises(BreakerOpen):
        await resilience.run(broken, retryable=True, deadline=deadline())
    assert calls == 2


async def test_application_errors_and_down_backends_do_not_count_towards_the_breaker() -> None:
    cb, _, _ = breaker(failures=1)
    resilience = Resilience("b", fast_retry(), cb)

    async def raising(error: Exception) -> None:
        async def attempt(remaining: float, is_retry: bool) -> None:
            raise error

        with pytest.raises(type(error)):
            await resilience.run(attempt, retryable=False, deadline=deadline())

    await raising(BackendDown("not running"))
    await raising(ValueError("a tool error"))
    assert cb.closed


# -- the gateway's own probe ---------------------------------------------------------------------------


async def test_prober_sends_one_probe_when_due_and_stops_once_closed() -> None:
    cb, clock, _ = breaker(failures=1, reset=30)
    cb.failed(cb.admit())
    probes = 0

    async def ping() -> None:
        nonlocal probes
        probes += 1
        if probes == 1:
            raise BackendTimeout("still stuck")

    prober = asyncio.create_task(probe_until_closed(cb, ping, lambda: True))
    await asyncio.sleep(0.3)
    assert probes == 0  # not due yet
    clock.now += 30
    await asyncio.sleep(0.3)
    assert probes == 1 and cb.state == "open"  # the failed probe reopened it
    clock.now += 30
    await asyncio.wait_for(prober, 2)
    assert probes == 2 and cb.closed


async def test_prober_gives_up_on_a_backend_that_is_gone() -> None:
    cb, clock, _ = breaker(failures=1, reset=1)
    cb.failed(cb.admit())
    clock.now += 1

    async def ping() -> None:
        raise AssertionError("no probe for a backend that is gone")

    await asyncio.wait_for(probe_until_closed(cb, ping, lambda: None), 2)
    assert cb.state == "open"
