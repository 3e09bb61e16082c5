"""Token-bucket maths and the in-memory bucket store.

A bucket holds up to ``capacity`` tokens and regains ``tokens_per_second``. A request draws one token
from every bucket that applies, all or nothing: if any of them is short, none is touched, and the
request may try again once the emptiest of them has a whole token (``retry_after``). A bucket's state is
only its level and when that was measured; refilling is computed on the next draw, so idle buckets cost
nothing but memory, and a bucket that is full again is the same as one never seen (which is why dropping
idle ones is safe).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Draw:
    """One bucket a request must take a token from."""

    key: str
    tokens_per_second: float
    capacity: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the request got its tokens, and if not, in how many seconds it could."""

    allowed: bool
    retry_after: float = 0.0


def level_at(level: float, measured: float, now: float, tokens_per_second: float, capacity: float) -> float:
    """A bucket's level at ``now``, given its ``level`` at ``measured`` (a clock going back adds nothing)."""
    return min(capacity, level + max(0.0, now - measured) * tokens_per_second)


# Float sums of refills can land a hair under 1.0 at the very moment a client was told to come back.
EPSILON = 1e-9


def wait_for_token(level: float, tokens_per_second: float) -> float:
    """Seconds until a bucket at ``level`` holds one whole token (0 if it does)."""
    return 0.0 if level >= 1.0 - EPSILON else (1.0 - level) / tokens_per_second


class MemoryBuckets:
    """Buckets of one gateway instance, at most ``max_buckets`` of them (least recently used dropped)."""

    def __init__(self, max_buckets: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_buckets = max_buckets
        self.clock = clock
        # key -> (level, when it was measured); ordered from least to most recently used.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, draws: Sequence[Draw]) -> Verdict:
        return self.take_now(draws)

    def take_now(self, draws: Sequence[Draw]) -> Verdict:
        """Draw one token from each bucket, all or nothing (no await: atomic within the event loop)."""
        now = self.clock()
        levels = [self._level(draw, now) for draw in draws]
        wait = max(
            (wait_for_token(level, d.tokens_per_second) for d, level in zip(draws, levels, strict=True)),
            default=0.0,
        )
        if wait > 0:
            return Verdict(allowed=False, retry_after=wait)
        for draw, level in zip(draws, levels, strict=True):
            self._buckets[draw.key] = (level - 1.0, now)
            self._buckets.move_to_end(draw.key)
        while len(self._buckets) > self.max_buckets:
            # A dropped bucket comes back full: over the cap, the least recently used caller gets leeway.
            self._buckets.popitem(last=False)
        return Verdict(allowed=True)

    def _level(self, draw: Draw, now: float) -> float:
        state = self._buckets.get(draw.key)
        if state is None:
            return draw.capacity
        level, measured = state
        return level_at(level, measured, now, draw.tokens_per_second, draw.capacity)
