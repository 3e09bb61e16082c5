"""The gateway's side of its own tokens: verifying them, and noticing revocations made by another process.

The store is opened lazily (and never created here: the ``portico token`` command creates it). Every
message of a session that a gateway token opened asks ``is_active``: one ``PRAGMA data_version`` on the
persistent connection (a few microseconds), which changes only when another connection has committed; the
set of active ids is reloaded only then.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from plugins.auth.options import AuthOptions
from plugins.auth.token_store import TokenStore, TokenStoreError, load_key, parse_token
from proxy.chain import Principal
from proxy.errors import Unauthenticated

log = logging.getLogger("portico.auth")

REVOKED = "the token was revoked"


class GatewayTokens:
    """Verifies ``ptc_…`` tokens against the store and tracks which ones are still active."""

    def __init__(self, options: AuthOptions, now: Callable[[], float] = time.time) -> None:
        self.path = Path(options.token_store) if options.token_store is not None else None
        self.options = options
        self._now = now
        self._store: TokenStore | None = None
        self._version: int | None = None
        self._active: frozenset[str] = frozenset()

    def verify(self, token: str) -> Principal:
        """The principal of a gateway token; ``Unauthenticated`` if it is unknown, wrong, revoked or
        expired (unknown and wrong read the same, so the answer tells nothing about which ids exist)."""
        parsed = parse_token(token)
        store = self._open()
        if parsed is None or store is None:
            raise Unauthenticated("the gateway token is not valid")
        try:
            record = store.find(parsed.id)
        except sqlite3.Error as exc:
            log.error("cannot read the token store %s: %s", store.path, exc)
            raise Unauthenticated("gateway tokens cannot be checked right now") from None
        digest = store.hash(token)
        # Compared in constant time, and compared even when the id is unknown, so timing says nothing.
        expected = record.hash if record is not None else digest[::-1]
        if record is None or not hmac.compare_digest(expected, digest) or record.kind != parsed.kind:
            raise Unauthenticated("the gateway token is not valid")
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

    def is_active(self, token_id: str) -> bool:
        """Whether the token ``token_id`` has not been revoked (by this process or any other)."""
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

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _open(self) -> TokenStore | None:
        if self._store is not None or self.path is None or not self.path.exists():
            return self._store
        try:
            key = load_key(self.options.token_key, self.options.key_file(), create=False)
            self._store = TokenStore.open_existing(self.path, key)
        except TokenStoreError as exc:
            log.error("gateway tokens are unusable: %s", exc)
            return None
        return self._store
