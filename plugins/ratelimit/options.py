"""The ratelimit plugin's options, validated once at start-up (a bad value is one clear config error)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from proxy.shared_redis import checked_redis_url


class Limit(BaseModel):
    """A token bucket: ``rate`` tokens come back every ``per_seconds``, and it holds at most ``burst``
    (by default ``rate``). Each request takes one token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(gt=0)
    per_seconds: float = Field(1.0, gt=0)
    burst: float | None = Field(None, ge=1)

    @property
    def capacity(self) -> float:
        return self.rate if self.burst is None else self.burst

    @property
    def tokens_per_second(self) -> float:
        return self.rate / self.per_seconds

    @model_validator(mode="after")
    def _holds_a_whole_token(self) -> Limit:
        # A bucket that can never hold one token would refuse everything, forever.
        if self.capacity < 1:
            raise ValueError("burst (by default rate) must be at least 1, or no request could ever pass")
        return self


class ToolLimit(Limit):
    """A limit for what a ``backend/kind/name`` glob matches: each matching tool (prompt, resource) has
    its own bucket, kept for each principal (``scope: principal``) or shared by all (``scope: shared``)."""

    scope: Literal["principal", "shared"] = "principal"


class RateLimitOptions(BaseModel):
    """What to limit and where the buckets live. See the package docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_principal: Limit | None = None
    backends: dict[str, Limit] = Field(default_factory=dict)
    # Globs over ``backend/kind/name`` (``c/tool/*``); the first that matches applies.
    tools: dict[str, ToolLimit] = Field(default_factory=dict)
    # Whether requests to the gateway itself (initialize, ping, lists) take from the per-principal bucket.
    limit_gateway_requests: bool = False
    # In memory: at most this many buckets; the least recently used go first.
    max_buckets: int = Field(100_000, ge=1)
    redis_url: str | None = None
    redis_prefix: str = Field("portico:ratelimit:", min_length=1)
    # The deadline of one round trip to Redis (connecting included).
    redis_timeout_seconds: float = Field(0.5, gt=0, le=30)
    # When Redis fails: refuse the request (``deny``, HTTP 429) or let it through unlimited (``allow``).
    on_redis_error: Literal["allow", "deny"] = "deny"
    # The Retry-After a client is told when Redis fails and ``on_redis_error`` is ``deny``.
    redis_error_retry_seconds: float = Field(1.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return checked_redis_url(value)
