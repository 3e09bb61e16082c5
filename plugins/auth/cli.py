"""``portico token create|list|revoke``: manage gateway-issued tokens in the auth plugin's store.

``proxy.cli`` adds these commands with ``add_token_commands`` and runs them with ``run_token_command``,
passing the auth plugin's validated options from the gateway config (so the command and the gateway
agree on the store and its key). ``python -m plugins.auth token ...`` runs them with default options.
With the plugin's ``redis_url`` (or the config's ``redis`` section) the tokens are in Redis, shared by
every instance, unless ``--store`` names a file (``plugins/auth/shared_tokens.py``).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from plugins.auth.options import KEY_FILE_NAME, AuthOptions
from plugins.auth.shared_tokens import RedisTokenStore
from plugins.auth.token_store import (
    CLI_BUSY_TIMEOUT,
    TokenKind,
    TokenRecord,
    TokenStore,
    TokenStoreError,
    load_key,
)

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_LIFETIME = 10 * 366 * 86400
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")
_BACKEND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")


def add_token_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add ``token create|list|revoke`` to ``subparsers``; ``parents`` (e.g. one with ``--config``) are
    added to each of the three. Returns the ``token`` parser. The parsed namespace has ``command ==
    "token"`` (when ``subparsers`` has ``dest="command"``) and ``token_command``."""
    token = subparsers.add_parser("token", help="create, list and revoke gateway-issued tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="{create,list,revoke}")
    create = actions.add_parser("create", parents=list(parents), help="create a token and print it once")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a personal access token for this user")
    who.add_argument("--account", help="a virtual-account token for this application")
    create.add_argument(
        "--backends", type=_backend_list, help="comma-separated backends the account may reach"
    )
    create.add_argument("--label", default="", help="a note saying what the token is for")
    create.add_argument("--expires-in", type=duration, help="lifetime such as 90d, 12h or 30m")
    listing = actions.add_parser("list", parents=list(parents), help="list tokens (never their secrets)")
    revoke = actions.add_parser("revoke", parents=list(parents), help="revoke a token by its id")
    revoke.add_argument("id", help="the token's id, as create and list show it")
    for parser in (create, listing):
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    for parser in (create, listing, revoke):
        parser.add_argument("--store", help="the token store file (overrides the token_store option)")
        parser.add_argument("--key-file", help="the hashing key file (overrides token_key/token_key_file)")
    return token


def run_token_command(args: argparse.Namespace, options: AuthOptions | None = None) -> int:
    """Run a parsed ``token`` command; returns the exit status (0 done, 1 failed, 2 bad usage)."""
    options = options if options is not None else AuthOptions()
    store_path = args.store or options.token_store
    if store_path is None:
        return _fail("gateway-issued tokens are turned off (the auth plugin's token_store is null)")
    try:
        match args.token_command:
            case "create":
                return _create(args, options, Path(store_path))
            case "list":
                return _list(args, options, Path(store_path))
            case _:
                return _revoke(args, options, Path(store_path))
    except (TokenStoreError, sqlite3.Error) as exc:
        return _fail(str(exc))


def main(argv: list[str] | None = None) -> int:
    """``python -m plugins.auth token ...``: the token commands with default options."""
    parser = argparse.ArgumentParser(prog="portico", description="Manage Portico's gateway-issued tokens.")
    add_token_commands(parser.add_subparsers(dest="command", required=True))
    return run_token_command(parser.parse_args(argv))


def duration(text: str) -> float:
    """Seconds in ``90d``, ``12h``, ``30m``, ``45s`` or ``2w`` (an argparse type)."""
    match = _DURATION.fullmatch(text.strip())
    seconds = int(match.group(1)) * _SECONDS[match.group(2)] if match else 0
    if not 0 < seconds <= _MAX_LIFETIME:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime such as 90d, 12h or 30m (max 10 years)")
    return float(seconds)


def _backend_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    for name in names:
        if not _BACKEND.fullmatch(name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a backend name")
    if not names:
        raise argparse.ArgumentTypeError("name at least one backend")
    return names


def _create(args: argparse.Namespace, options: AuthOptions, store_path: Path) -> int:
    subject: str = args.user or args.account
    if not _NAME.fullmatch(subject):
        return _fail(f"{subject!r} is not a valid name (letters, digits and _ . @ + -, at most 128)", 2)
    if args.account and not args.backends:
        return _fail("an account token needs --backends (the backends it may reach)", 2)
    if args.user and args.backends:
        return _fail("--backends applies to account tokens only", 2)
    if len(args.label) > 200 or not args.label.isprintable():
        return _fail("the label must be printable text of at most 200 characters", 2)
    key = load_key(None if args.key_file else options.token_key, _key_file(args, options), create=True)
    store = _shared_store(args, options, key) or TokenStore.create(store_path, key)
    try:
        now = time.time()
        expires = now + args.expires_in if args.expires_in else None
        kind: TokenKind = "account" if args.account else "personal"
        record, token = store.add(kind, subject, args.label, args.backends, now, expires)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps({**_row(record), "token": token}).decode())
        return 0
    what = "virtual-account" if record.kind == "account" else "personal access"
    print(f"Created a {what} token for {subject} (expires: {_when(record.expires_at, 'never')}).")
    print(f"id:    {record.id}")
    print(f"token: {token}")
    print("Copy the token now: only its hash is stored, so it cannot be shown again.")
    return 0


def _list(args: argparse.Namespace, options: AuthOptions, store_path: Path) -> int:
    store = _shared_store(args, options, None) or TokenStore.open_existing(store_path, None, CLI_BUSY_TIMEOUT)
    try:
        records = [] if store is None else store.records()
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(orjson.dumps([_row(record) for record in records]).decode())
        return 0
    if not records:
        print(f"no tokens in {_where(args, options, store_path)}")
        return 0
    rows = [["ID", "KIND", "SUBJECT", "LABEL", "BACKENDS", "CREATED", "EXPIRES", "REVOKED"]]
    rows += [_columns(record) for record in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace, options: AuthOptions, store_path: Path) -> int:
    store = _shared_store(args, options, None) or TokenStore.open_existing(store_path, None, CLI_BUSY_TIMEOUT)
    if store is None:
        return _fail(f"no token with id {args.id!r} (there is no token store at {store_path})")
    try:
        before = store.find(args.id)
        record = store.revoke(args.id, time.time()) if before is not None else None
    finally:
        store.close()
    if before is None or record is None:
        return _fail(f"no token with id {args.id!r} in {_where(args, options, store_path)}")
    if before.revoked_at is not None:
        print(f"token {record.id} was already revoked at {_when(before.revoked_at, '-')}")
    else:
        print(f"revoked token {record.id} ({record.kind}, {record.subject})")
    return 0


def _columns(record: TokenRecord) -> list[str]:
    return [
        record.id,
        record.kind,
        record.subject,
        record.label,
        ",".join(record.backends or ()),
        _when(record.created_at, "-"),
        _when(record.expires_at, "never"),
        _when(record.revoked_at, "-"),
    ]


def _shared_store(
    args: argparse.Namespace, options: AuthOptions, key: bytes | None
) -> RedisTokenStore | None:
    """The tokens in Redis when the plugin has a ``redis_url`` and no ``--store`` names a file."""
    if options.redis_url is None or args.store:
        return None
    return RedisTokenStore(options.redis_url, options.redis_prefix, CLI_BUSY_TIMEOUT, key)


def _where(args: argparse.Namespace, options: AuthOptions, store_path: Path) -> str:
    return "Redis" if options.redis_url is not None and not args.store else str(store_path)


def _key_file(args: argparse.Namespace, options: AuthOptions) -> Path:
    if args.key_file:
        return Path(args.key_file)
    if args.store and options.token_key_file is None:
        # A store given on the command line keeps its key beside it, as the default store does.
        return Path(args.store).parent / KEY_FILE_NAME
    return options.key_file()


def _row(record: TokenRecord) -> dict[str, Any]:
    """What may be shown of a record: everything but its hash."""
    return {
        "id": record.id,
        "kind": record.kind,
        "subject": record.subject,
        "label": record.label,
        "backends": list(record.backends) if record.backends is not None else None,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
    }


def _when(moment: float | None, otherwise: str) -> str:
    if moment is None:
        return otherwise
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fail(message: str, status: int = 1) -> int:
    print(f"portico: {message}", file=sys.stderr)
    return status
