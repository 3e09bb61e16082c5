"""Gateway-issued tokens: their format, their key, and the SQLite file that keeps their keyed hashes.

A token reads ``ptc_pat_<id>_<secret>`` (a personal access token: one user) or ``ptc_vat_<id>_<secret>``
(a virtual-account token: an application limited to named backends). ``id`` is 12 random hex digits and
names the token in listings and revocations; ``secret`` is 32 random bytes, URL-safe base64. The file
holds only HMAC-SHA256 of each whole token under a server key, so a copy of the file alone cannot
produce a token that verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from plugins.auth.keys import MIN_SECRET_BYTES

TokenKind = Literal["personal", "account"]
TOKEN_PREFIX = "ptc_"  # noqa: S105  # what every gateway token starts with, not a password
_PREFIXES: dict[TokenKind, str] = {"personal": "ptc_pat_", "account": "ptc_vat_"}
_ID_HEX_DIGITS = 12
_SECRET_BYTES = 32
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('personal', 'account')),
    subject TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    backends TEXT,
    hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
)
"""
# How long a statement waits for another connection's lock. The gateway asks on its event loop, and a
# writer (the CLI) holds the lock only for the instant of a commit, so it waits briefly; the CLI can wait.
GATEWAY_BUSY_TIMEOUT = 0.2
CLI_BUSY_TIMEOUT = 10.0
_COLUMNS = "id, kind, subject, label, backends, hash, created_at, expires_at, revoked_at"


class TokenStoreError(Exception):
    """The store or its key cannot be used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One row of the store (``hash`` is the keyed hash, never the token)."""

    id: str
    kind: TokenKind
    subject: str
    label: str
    backends: tuple[str, ...] | None
    hash: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class ParsedToken:
    kind: TokenKind
    id: str


def new_token(kind: TokenKind) -> tuple[str, str]:
    """A fresh ``(id, token)``."""
    token_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
    return token_id, f"{_PREFIXES[kind]}{token_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def parse_token(token: str) -> ParsedToken | None:
    """The kind and id a gateway token claims to have, or None if it is not shaped like one."""
    for kind, prefix in _PREFIXES.items():
        if token.startswith(prefix):
            token_id, underscore, secret = token.removeprefix(prefix).partition("_")
            if len(token_id) == _ID_HEX_DIGITS and underscore and len(secret) >= _SECRET_BYTES:
                return ParsedToken(kind, token_id)
    return None


def load_key(token_key: str | None, key_file: Path, *, create: bool) -> bytes:
    """The hashing key: ``token_key`` if given, else the key file's content (created, mode 0600, with a
    fresh random key when ``create`` and it does not exist yet)."""
    if token_key is not None:
        return token_key.encode()
    if create and not key_file.exists():
        _new_key_file(key_file)
    try:
        key = key_file.read_text(encoding="ascii").strip().encode()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenStoreError(f"cannot read the token key file {key_file}: {reason}") from None
    if len(key) < MIN_SECRET_BYTES:
        raise TokenStoreError(f"the token key in {key_file} is shorter than {MIN_SECRET_BYTES} bytes")
    return key


def new_record(
    key: bytes,
    kind: TokenKind,
    subject: str,
    label: str,
    backends: tuple[str, ...] | None,
    created_at: float,
    expires_at: float | None,
) -> tuple[TokenRecord, str]:
    """A fresh token and the record a store keeps of it (the token itself is never stored)."""
    token_id, token = new_token(kind)
    record = TokenRecord(
        token_id, kind, subject, label, backends, token_hash(key, token), created_at, expires_at, None
    )
    return record, token


def required_key(key: bytes | None) -> bytes:
    """The store's key, for what needs one (hashing, adding): a store opened only to list or revoke has
    none."""
    if key is None:
        raise TokenStoreError("the token store was opened without its key")
    return key


def token_hash(key: bytes, token: str) -> str:
    """What a store keeps of a token: HMAC-SHA256 of the whole token under the server key, in hex."""
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


class TokenStore:
    """The SQLite file of gateway tokens. Every call is one tiny statement (microseconds)."""

    def __init__(self, connection: sqlite3.Connection, key: bytes | None, path: Path) -> None:
        self.connection = connection
        self.path = path
        self._key = key

    @classmethod
    def create(cls, path: Path, key: bytes | None, busy_timeout: float = CLI_BUSY_TIMEOUT) -> TokenStore:
        """Open the store, creating its directory (0700) and file (0600) if needed (the CLI's way)."""
        if not path.exists():
            _private_directory(path.parent)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return cls._connect(path, key, f"{path.resolve().as_uri()}?mode=rwc", busy_timeout)

    @classmethod
    def open_existing(
        cls, path: Path, key: bytes | None, busy_timeout: float = GATEWAY_BUSY_TIMEOUT
    ) -> TokenStore | None:
        """Open the store if it exists (never creating one); None if it does not."""
        if not path.exists():
            return None
        return cls._connect(path, key, f"{path.resolve().as_uri()}?mode=rw", busy_timeout)

    @classmethod
    def _connect(cls, path: Path, key: bytes | None, uri: str, busy_timeout: float) -> TokenStore:
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
            connection.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot open the token store {path}: {exc}") from None
        return cls(connection, key, path)

    def close(self) -> None:
        self.connection.close()

    def hash(self, token: str) -> str:
        """The keyed hash of ``token`` (a store opened without a key, only to list or revoke, has none)."""
        return token_hash(required_key(self._key), token)

    def add(
        self,
        kind: TokenKind,
        subject: str,
        label: str,
        backends: tuple[str, ...] | None,
        created_at: float,
        expires_at: float | None,
    ) -> tuple[TokenRecord, str]:
        """Store a new token; returns its record and the token itself (which is never stored)."""
        record, token = new_record(
            required_key(self._key), kind, subject, label, backends, created_at, expires_at
        )
        self.connection.execute(
            f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608  # constant columns
            (
                record.id,
                kind,
                subject,
                label,
                None if backends is None else orjson.dumps(list(backends)).decode(),
                record.hash,
                created_at,
                expires_at,
                None,
            ),
        )
        return record, token

    def find(self, token_id: str) -> TokenRecord | None:
        row = self.connection.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608  # constant columns
            (token_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def records(self) -> list[TokenRecord]:
        rows = self.connection.execute(
            f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at, id"  # noqa: S608  # constant columns
        )
        return [_record(row) for row in rows]

    def revoke(self, token_id: str, now: float) -> TokenRecord | None:
        """Mark the token revoked (once: revoking again keeps the first time); None if there is none."""
        self.connection.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id)
        )
        return self.find(token_id)

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the file."""
        row = self.connection.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def active_ids(self) -> frozenset[str]:
        rows = self.connection.execute("SELECT id FROM tokens WHERE revoked_at IS NULL")
        return frozenset(row[0] for row in rows)


def _record(row: tuple[Any, ...]) -> TokenRecord:
    token_id, kind, subject, label, backends, digest, created, expires, revoked = row
    return TokenRecord(
        id=str(token_id),
        kind="account" if kind == "account" else "personal",
        subject=str(subject),
        label=str(label),
        backends=None if backends is None else tuple(orjson.loads(backends)),
        hash=str(digest),
        created_at=float(created),
        expires_at=None if expires is None else float(expires),
        revoked_at=None if revoked is None else float(revoked),
    )


def _new_key_file(key_file: Path) -> None:
    # Written whole under a temporary name, then linked into place: another command starting at the same
    # moment either finds no key file or a complete one, and the first link wins.
    _private_directory(key_file.parent)
    draft = key_file.with_name(f".{key_file.name}.{secrets.token_hex(4)}")
    try:
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(secrets.token_urlsafe(_SECRET_BYTES) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(draft, key_file)
    except OSError as exc:
        raise TokenStoreError(f"cannot create the token key file {key_file}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            draft.unlink()


def _private_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenStoreError(f"cannot create {directory}: {exc.strerror or exc}") from None
