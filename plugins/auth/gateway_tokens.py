"""The gateway's side of its own tokens: verifying them, and noticing revocations made by another process.

Where the records are read from:

- the SQLite store (the default), opened lazily and never created here (the ``portico token`` command
  creates it). Every message of a session that a gateway token opened asks ``is_active``: one ``PRAGMA
  data_version`` on the persistent connection (a few microseconds), which changes only when another
  connection has committed; the set of active ids is reloaded only then. One instance, or several on one
  host sharing the file.
- Redis, with the plugin's ``redis_url``: every instance holds all records in memory, kept current through
  a pub/sub channel (``plugins.auth.shared_tokens``, which also says what happens while Redis is
  unreachable).
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from plugins.auth.options import AuthOptions
from plugins.auth.shared_tokens import UNCHECKABLE, SharedTokens
from plugins.auth.token_store import (
    ParsedToken,
    TokenRecord,
    TokenStore,
    TokenStoreError,
    load_key,
    parse_token,
    token_hash,
)
from proxy.chain import Principal
from proxy.errors import Unauthenticated

log = logging.getLogger("portico.auth")

REVOKED = "the token was revoked"
INVALID = "the gateway token is not valid"


class GatewayTokens:
    """Verifies ``ptc_…`` tokens against the store and tracks which ones are still active."""

    def __init__(self, options: AuthOptions, now: Callable[[], float] = time.time) -> None:
        self.path = Path(options.token_store) if options.token_store is not None else None
        self.options = options
        self._now = now
        self._store: TokenStore | None = None
        self._version: int | None = None
        self._active: frozenset[str] = frozenset()
        self._key: bytes | None = None
        self.shared = (
            SharedTokens(options.redis_url, options.redis_prefix, options.redis_timeout_seconds)
            if options.redis_url is not None
            else None
        )

    async def verify(self, token: str) -> Principal:
        """The principal of a gateway token; ``Unauthenticated`` if it is unknown, wrong, revoked or
        expired (unknown and wrong read the same, so the answer tells nothing about which ids exist)."""
        parsed = parse_token(token)
        if parsed is None:
            raise Unauthenticated(INVALID)
        if self.shared is not None:
            key = self._load_key()
            if key is None:
                raise Unauthenticated(INVALID)
            return self._principal(parsed, await self.shared.find(parsed.id), token_hash(key, token))
        store = self._open()
        if store is None:
            raise Unauthenticated(INVALID)
        try:
            record = store.find(parsed.id)
        except sqlite3.Error as exc:
            log.error("cannot read the token store %s: %s", store.path, exc)
            raise Unauthenticated(UNCHECKABLE) from None
        return self._principal(parsed, record, store.hash(token))

    def _principal(self, parsed: ParsedToken, record: TokenRecord | None, digest: str) -> Principal:
        # Compared in constant time, and compared even when the id is unknown, so timing says nothing.
        expected = record.hash if record is not None else digest[::-1]
        if record is None or not hmac.compare_digest(expected, digest) or record.kind != parsed.kind:
            raise Unauthenticated(INVALID)
        if record.revoked_at is not None:
            raise Unauthenticated(REVOKED)
        if record.expires_at is not None and self._now() >= record.expires_at:
            raise Unauthenticated("the token expired")
        return Principal(
            subject=record.subject,
            backends=frozenset(record.backends or ()) if record.kind == "account" else None,
            valid_until=record.expires_at,
            credential=record.id,
            kind=record.kind,
        )

    @property
    def checkable(self) -> bool:
        """Whether revocations can be known now (with Redis: while its channel is followed)."""
        return self.shared is None or self.shared.in_sync

    def is_active(self, token_id: str) -> bool:
        """Whether the token ``token_id`` has not been revoked (by this process or any other)."""
        if self.shared is not None:
            return self.shared.in_sync and self.shared.is_active(token_id)
        store = self._open()
        if store is None:
            return False
        try:
            version = store.data_version()
            if version != self._version:
                # Read the version first: a commit that lands between the two reads changes it again, so
                # the next call reloads; nothing is missed.
                self._active = store.active_ids()
                self._version = version
        except sqlite3.Error as exc:
            # A writer holding its lock past the busy timeout: keep what is known, look again next time.
            log.warning("cannot check revocations in %s: %s", store.path, exc)
        return token_id in self._active

    async def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.shared is not None:
            await self.shared.close()

    def _load_key(self) -> bytes | None:
        if self._key is None:
            try:
                self._key = load_key(self.options.token_key, self.options.key_file(), create=False)
            except TokenStoreError as exc:
                log.error("gateway tokens are unusable: %s", exc)
        return self._key

    def _open(self) -> TokenStore | None:
        if self._store is not None or self.path is None or not self.path.exists():
            return self._store
        key = self._load_key()
        if key is None:
            return None
        try:
            self._store = TokenStore.open_existing(self.path, key)
        except TokenStoreError as exc:
            log.error("gateway tokens are unusable: %s", exc)
            return None
        return self._store
