"""The cache plugin's options, validated once at start-up (a bad URL or bound is a config error)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The longest any entry may live: a day. Longer is almost certainly a unit mistake (ms for seconds).
MAX_TTL_SECONDS = 86_400.0


class BackendCacheOptions(BaseModel):
    """What one backend's answers are worth keeping for, and whether they are the same for everyone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Overrides ``default_ttl_seconds`` for this backend; 0 caches nothing of it.
    ttl_seconds: float | None = Field(default=None, ge=0, le=MAX_TTL_SECONDS)
    # Results that say nothing of their scope are shared by every principal (overrides
    # ``shared_by_default``). A result's own ``cacheScope`` always wins.
    shared: bool | None = None


class CacheOptions(BaseModel):
    """The cache plugin's options (see the package docstring for what each one means)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_ttl_seconds: float = Field(default=60.0, ge=0, le=MAX_TTL_SECONDS)
    backends: dict[str, BackendCacheOptions] = Field(default_factory=dict)
    # Per-object TTLs: a glob over ``backend/kind/name`` -> seconds; the first pattern that matches wins
    # over the backend's and the default TTL (0 caches nothing of what it matches).
    ttls: dict[str, float] = Field(default_factory=dict)
    # Globs over ``backend/tool/name``: tools cached although the backend does not annotate them
    # ``readOnlyHint`` (the operator vouches that they only read).
    tools: tuple[str, ...] = ()
    shared_by_default: bool = False
    # The in-memory store's bounds: least recently used entries go first when either is exceeded.
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # A result bigger than this (serialised) is never cached, in memory or in Redis.
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1)
    # Keep entries in Redis (``redis://[:password@]host[:port][/db]`` or ``rediss://``) instead of memory.
    redis_url: str | None = None
    # The most one Redis operation may take; a slower or failed Redis is a miss, never an error.
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    # The prefix of every Redis key this plugin writes (several gateways may share one Redis).
    key_prefix: str = Field(default="portico:cache", min_length=1, max_length=100)

    @field_validator("ttls")
    @classmethod
    def _ttls_in_range(cls, ttls: dict[str, float]) -> dict[str, float]:
        for pattern, seconds in ttls.items():
            if not 0 <= seconds <= MAX_TTL_SECONDS:
                raise ValueError(f"ttls[{pattern!r}]: {seconds} is not between 0 and {MAX_TTL_SECONDS:.0f}")
        return ttls

    @field_validator("redis_url")
    @classmethod
    def _redis_url_usable(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("redis_url must look like redis://host[:port][/db] (or rediss://)")
        try:
            _ = parts.port
            int(parts.path.strip("/") or "0")
        except ValueError:
            raise ValueError("redis_url has a bad port or database number") from None
        return url

    @model_validator(mode="after")
    def _entry_fits(self) -> CacheOptions:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("max_entry_bytes must not exceed max_bytes")
        return self

    def longest_ttl(self) -> float:
        """The longest any entry may be kept under this config."""
        backend_ttls = [b.ttl_seconds for b in self.backends.values() if b.ttl_seconds is not None]
        return max([self.default_ttl_seconds, *backend_ttls, *self.ttls.values()])
