"""Gateway-issued tokens kept in Redis (the auth plugin's ``redis_url``): one set of tokens for every
gateway instance, and revocations in force on all of them within a second.

Why Redis holds the records, not only the revocations: instances behind a load balancer have separate
disks, so a token created against one instance's SQLite file would verify nowhere else. With ``redis_url``
set, the ``portico token`` commands write to Redis and every instance reads from it; the SQLite file is not
used (tokens created there earlier must be created again). The trade-off: the tokens now live as long as
Redis keeps its data, so that Redis must persist it (AOF or RDB snapshots), unlike a Redis used only for
caching; a Redis that loses its data loses the tokens, which then fail everywhere (never the reverse).
Only keyed hashes are stored, as in the file: the hashing key (``token_key``, or the key file) stays with
the instances, which must all have the same one, so a copy of Redis alone cannot produce a valid token.

In Redis, under ``redis_prefix`` (default ``portico:auth:``): ``tokens``, a hash of token id to the record
as JSON; ``revoked``, a hash of token id to when it was revoked (set once, never cleared); ``changes``, a
channel on which every creation and revocation announces the token's id.

Every instance keeps all records in memory, so verifying a token and checking, on each message of a
session, that it is still active cost no round trip to Redis. The copy is kept current by following the
channel: an announced id is read again (in the background, never on a request). After every
(re)subscription the whole state is read again, so an announcement missed while the connection was down
cannot leave a revoked token valid. A revocation is never undone in memory, whatever order reads finish
in. A token id this instance has not heard of is looked up in Redis once (a token created a moment ago
whose announcement has not arrived yet): only for unknown ids, never for a known token.

While Redis is unreachable (the channel lost, or the first reading not done yet) gateway tokens are
refused, with 401 "gateway tokens cannot be checked right now", and a message of a session opened by one
is refused without ending the session: failing closed, because an instance that cannot hear revocations
cannot know whether a token was revoked meanwhile, and accepting a revoked (perhaps leaked) token is the
harm revocation exists to prevent. JWTs from trusted issuers are not affected. The channel is tried again
every half second, and tokens are accepted again as soon as the state has been read afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

import orjson
import redis

from plugins.auth.token_store import TokenKind, TokenRecord, TokenStoreError, new_record, required_key
from proxy.errors import Unauthenticated
from proxy.shared_redis import REDIS_ERRORS, ChannelListener, redis_client

log = logging.getLogger("portico.auth")

UNCHECKABLE = "gateway tokens cannot be checked right now"
# How soon a lost channel is tried again: gateway tokens are refused until it is back.
RETRY_SECONDS = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class TokenKeys:
    """The Redis names under one prefix."""

    tokens: str
    revoked: str
    changes: str

    @classmethod
    def under(cls, prefix: str) -> TokenKeys:
        return cls(f"{prefix}tokens", f"{prefix}revoked", f"{prefix}changes")


def encode_record(record: TokenRecord) -> bytes:
    """The record as stored in ``tokens`` (its revocation is kept apart, in ``revoked``)."""
    fields = dataclasses.asdict(record)
    del fields["revoked_at"]
    return orjson.dumps(fields)


def decode_record(data: bytes | str, revoked_at: bytes | str | None) -> TokenRecord:
    """The record from its stored form; ``ValueError`` (or ``KeyError``/``TypeError``) if it is not one."""
    fields: dict[str, Any] = orjson.loads(data)
    kind: TokenKind = "account" if fields["kind"] == "account" else "personal"
    backends = fields.get("backends")
    expires = fields.get("expires_at")
    return TokenRecord(
        id=str(fields["id"]),
        kind=kind,
        subject=str(fields["subject"]),
        label=str(fields.get("label", "")),
        backends=None if backends is None else tuple(str(name) for name in backends),
        hash=str(fields["hash"]),
        created_at=float(fields["created_at"]),
        expires_at=None if expires is None else float(expires),
        revoked_at=None if revoked_at is None else float(revoked_at),
    )


class RedisTokenStore:
    """The ``portico token`` commands' store when the auth plugin has a ``redis_url``: the same calls as
    ``TokenStore`` (the SQLite one), each one short round trip, failures as ``TokenStoreError``."""

    def __init__(self, url: str, prefix: str, timeout: float, key: bytes | None) -> None:
        self.where = f"Redis ({prefix}*)"
        self._keys = TokenKeys.under(prefix)
        self._key = key
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def add(
        self,
        kind: TokenKind,
        subject: str,
        label: str,
        backends: tuple[str, ...] | None,
        created_at: float,
        expires_at: float | None,
    ) -> tuple[TokenRecord, str]:
        record, token = new_record(
            required_key(self._key), kind, subject, label, backends, created_at, expires_at
        )
        with self._failures_explained():
            pipe = self._client.pipeline(transaction=True)
            pipe.hsetnx(self._keys.tokens, record.id, encode_record(record))
            pipe.publish(self._keys.changes, record.id)
            created, _ = pipe.execute()
        if not created:
            # Two tokens drew the same 48-bit id: vanishingly rare; the other one must stay as it is.
            raise TokenStoreError("a token with the same id exists already; run the command again")
        return record, token

    def find(self, token_id: str) -> TokenRecord | None:
        with self._failures_explained():
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._keys.tokens, token_id)
            pipe.hget(self._keys.revoked, token_id)
            data, revoked = pipe.execute()
        return None if data is None else _decoded(token_id, data, revoked)

    def records(self) -> list[TokenRecord]:
        with self._failures_explained():
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(self._keys.tokens)
            pipe.hgetall(self._keys.revoked)
            tokens, revoked = pipe.execute()
        found = [_decoded(_text(token_id), data, revoked.get(token_id)) for token_id, data in tokens.items()]
        records = [record for record in found if record is not None]
        return sorted(records, key=lambda record: (record.created_at, record.id))

    def revoke(self, token_id: str, now: float) -> TokenRecord | None:
        """Mark the token revoked (once: revoking again keeps the first time) and tell every instance."""
        if self.find(token_id) is None:
            return None
        with self._failures_explained():
            pipe = self._client.pipeline(transaction=True)
            pipe.hsetnx(self._keys.revoked, token_id, repr(now))
            pipe.publish(self._keys.changes, token_id)
            pipe.execute()
        return self.find(token_id)

    @contextlib.contextmanager
    def _failures_explained(self) -> Any:
        try:
            yield
        except REDIS_ERRORS as exc:
            raise TokenStoreError(f"the shared token store in Redis cannot be used: {exc}") from None


class SharedTokens:
    """A gateway instance's copy of the tokens in Redis, kept current by following the channel."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self._keys = TokenKeys.under(prefix)
        self._timeout = timeout
        self._client = redis_client(url, timeout)
        self._records: dict[str, TokenRecord] = {}
        # Whether the whole state was read since the current subscription began.
        self._loaded = False
        self._first_deadline: float | None = None
        self.listener = ChannelListener(
            url, self._keys.changes, self._changed, on_subscribed=self._reload, retry_seconds=RETRY_SECONDS
        )

    @property
    def in_sync(self) -> bool:
        """Whether revocations reach this instance now (else gateway tokens are refused)."""
        return self._loaded and self.listener.subscribed.is_set()

    async def ready(self) -> None:
        """Start following the channel (at start-up, through the plugin's ``start``; else at the first
        request) and let the first requests wait, at most the Redis timeout, for the first reading."""
        if self.in_sync:
            return
        if self._first_deadline is None:
            self.listener.start()
            self._first_deadline = time.monotonic() + self._timeout
        remaining = self._first_deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listener.subscribed.wait(), remaining)

    async def find(self, token_id: str) -> TokenRecord | None:
        """The record of ``token_id``, from memory; ``Unauthenticated`` while revocations cannot be heard."""
        await self.ready()
        if not self.in_sync:
            raise Unauthenticated(UNCHECKABLE)
        record = self._records.get(token_id)
        if record is not None:
            return record
        try:
            return await self._fetch(token_id)
        except REDIS_ERRORS as exc:
            log.warning("cannot look up a gateway token in Redis: %s", exc)
            raise Unauthenticated(UNCHECKABLE) from None

    def is_active(self, token_id: str) -> bool:
        """Whether the token is known and not revoked. Memory only: call ``in_sync`` first."""
        record = self._records.get(token_id)
        return record is not None and record.revoked_at is None

    async def close(self) -> None:
        await self.listener.stop()
        await self._client.aclose()

    async def _reload(self) -> None:
        # Raises on a Redis failure: the listener then subscribes again, and this runs again.
        self._loaded = False
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys.tokens)
            pipe.hgetall(self._keys.revoked)
            tokens, revoked = await pipe.execute()
        records: dict[str, TokenRecord] = {}
        for raw_id, data in tokens.items():
            token_id = _text(raw_id)
            record = _decoded(token_id, data, revoked.get(raw_id))
            if record is not None:
                records[token_id] = _keeping_revocation(record, self._records.get(token_id))
        # Replaced whole: a token that left Redis (a Redis that lost its data) is unknown here too.
        self._records = records
        self._loaded = True
        log.info("gateway tokens: following %s (%d tokens)", self._keys.changes, len(records))

    async def _changed(self, data: bytes) -> None:
        await self._fetch(_text(data))

    async def _fetch(self, token_id: str) -> TokenRecord | None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hget(self._keys.tokens, token_id)
            pipe.hget(self._keys.revoked, token_id)
            data, revoked = await pipe.execute()
        record = None if data is None else _decoded(token_id, data, revoked)
        if record is None:
            self._records.pop(token_id, None)
            return None
        # Reads may finish out of order (a request's look-up and an announcement's): never un-revoke.
        record = _keeping_revocation(record, self._records.get(token_id))
        self._records[token_id] = record
        return record


def _keeping_revocation(record: TokenRecord, known: TokenRecord | None) -> TokenRecord:
    if record.revoked_at is None and known is not None and known.revoked_at is not None:
        return dataclasses.replace(record, revoked_at=known.revoked_at)
    return record


def _decoded(token_id: str, data: bytes | str, revoked: bytes | str | None) -> TokenRecord | None:
    try:
        record = decode_record(data, revoked)
    except (ValueError, KeyError, TypeError):
        log.error("gateway tokens: the record of %r in Redis is not a token record; ignoring it", token_id)
        return None
    return record if record.id == token_id else None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
