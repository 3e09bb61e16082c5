"""Gateway-issued tokens: the ``token`` commands run for real as subprocesses, the SQLite file they write,
and a running plugin that sees their revocations on the next message, without a restart."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from plugins.auth import Auth, AuthOptions
from plugins.auth.cli import add_token_commands, run_token_command
from proxy.chain import Chain, Context, Direction, NamedPlugin, Principal
from proxy.errors import ErrorCode, Unauthenticated
from proxy.jsonrpc import Message
from tests.fake_session import FakeSession
from tests.test_auth_jwt import credentials

TOKEN_KEY = "a-token-hashing-key-that-is-long-enough-0123"


def portico_token(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``portico token ARGS`` as its own process (``python -m plugins.auth``), in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "plugins.auth", "token", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def create(cwd: Path, *args: str) -> dict[str, Any]:
    done = portico_token(cwd, "create", "--json", *args)
    assert done.returncode == 0, done.stderr
    created: dict[str, Any] = orjson.loads(done.stdout)
    return created


def plugin_in(cwd: Path, **options: Any) -> Auth:
    """The plugin as the gateway would run it in ``cwd`` (whose .portico/ the commands wrote)."""
    store = str(cwd / ".portico" / "tokens.sqlite")
    return Auth(AuthOptions.model_validate({"token_store": store, **options}))


class Terminal:
    def __init__(self) -> None:
        self.received: list[Message] = []

    async def __call__(self, ctx: Context, message: Message) -> Message | None:
        self.received.append(message)
        return {"jsonrpc": "2.0", "id": message["id"], "result": {}}


def call(method: str = "tools/call", request_id: int = 1) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}}


async def dispatch(chain: Chain, session: FakeSession, principal: Principal, direction: Direction) -> Message:
    message = call()
    ctx = Context(session, direction, "tools/call", None, time.monotonic() + 10, principal=principal)
    reply = await chain.dispatch(ctx, message)
    assert reply is not None
    return reply


# -- the commands -----------------------------------------------------------------------------------------


def test_create_list_revoke_end_to_end(tmp_path: Path) -> None:
    personal = create(tmp_path, "--user", "alice", "--label", "laptop", "--expires-in", "90d")
    account = create(tmp_path, "--account", "ci-bot", "--backends", "notes,weather")
    assert personal["token"].startswith(f"ptc_pat_{personal['id']}_")
    assert account["token"].startswith(f"ptc_vat_{account['id']}_")
    assert account["backends"] == ["notes", "weather"]
    assert 89 * 86400 < personal["expires_at"] - personal["created_at"] <= 90 * 86400

    text = portico_token(tmp_path, "create", "--user", "bob")
    assert text.returncode == 0
    assert "ptc_pat_" in text.stdout and "only its hash is stored" in text.stdout

    listing = portico_token(tmp_path, "list")
    assert listing.returncode == 0
    for shown in (personal["id"], "alice", "laptop", account["id"], "ci-bot", "notes,weather", "bob"):
        assert shown in listing.stdout
    rows = orjson.loads(portico_token(tmp_path, "list", "--json").stdout)
    assert [row["subject"] for row in rows] == ["alice", "ci-bot", "bob"]
    assert all("hash" not in row and "token" not in row for row in rows)

    revoked = portico_token(tmp_path, "revoke", personal["id"])
    assert revoked.returncode == 0 and personal["id"] in revoked.stdout
    again = portico_token(tmp_path, "revoke", personal["id"])
    assert again.returncode == 0 and "already revoked" in again.stdout
    unknown = portico_token(tmp_path, "revoke", "0123456789ab")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == ("portico: no token with id '0123456789ab' in .portico/tokens.sqlite")
    rows = orjson.loads(portico_token(tmp_path, "list", "--json").stdout)
    assert rows[0]["revoked_at"] is not None and rows[1]["revoked_at"] is None


def test_the_store_keeps_only_keyed_hashes(tmp_path: Path) -> None:
    created = [create(tmp_path, "--user", f"user{i}") for i in range(3)]
    created.append(create(tmp_path, "--account", "app", "--backends", "notes"))
    listing = portico_token(tmp_path, "list").stdout + portico_token(tmp_path, "list", "--json").stdout
    folder = tmp_path / ".portico"
    contents = b"".join(path.read_bytes() for path in folder.iterdir())
    for item in created:
        secret = item["token"].split("_", 3)[3]  # the secret itself may contain "_"
        assert len(secret) == 43
        assert item["token"].encode() not in contents
        assert secret.encode() not in contents
        assert secret not in listing
        assert item["id"].encode() in contents  # the file is really the store these tokens live in
    for name in ("tokens.sqlite", "tokens.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["create", "--account", "app"], 2, "needs --backends"),
        (["create", "--user", "alice", "--backends", "notes"], 2, "account tokens only"),
        (["create", "--user", "alice", "--expires-in", "5y"], 2, "not a lifetime"),
        (["create", "--user", "has space"], 2, "not a valid name"),
        (["create"], 2, "one of the arguments --user --account is required"),
        (["revoke", "0123456789ab"], 1, "no token with id"),
    ],
)
def test_bad_commands_fail_with_one_clear_line(
    tmp_path: Path, args: list[str], status: int, says: str
) -> None:
    done = portico_token(tmp_path, *args)
    assert done.returncode == status
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_store_and_key_file_overrides(tmp_path: Path) -> None:
    store, key_file = tmp_path / "elsewhere" / "t.sqlite", tmp_path / "keys" / "k"
    made = create(tmp_path, "--user", "alice", "--store", str(store), "--key-file", str(key_file))
    assert store.exists() and key_file.exists() and not (tmp_path / ".portico").exists()
    listed = portico_token(tmp_path, "list", "--json", "--store", str(store))
    assert [row["id"] for row in orjson.loads(listed.stdout)] == [made["id"]]


async def test_concurrent_commands_share_one_store_and_key(tmp_path: Path) -> None:
    """Several ``token create`` at once on a fresh directory: all succeed, one key, every token verifies."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "plugins.auth", "token", "create", "--json", "--user", f"user{i}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, [err for _, err in outputs]
    auth = plugin_in(tmp_path)
    subjects = {
        (await auth.authenticate(credentials(orjson.loads(out)["token"]))).subject for out, _ in outputs
    }
    assert subjects == {f"user{i}" for i in range(8)}
    assert [p.name for p in (tmp_path / ".portico").iterdir() if p.name.startswith(".")] == []
    await auth.close()


# -- the plugin verifies what the commands made --------------------------------------------------------


async def test_personal_and_account_tokens_authenticate(tmp_path: Path) -> None:
    personal = create(tmp_path, "--user", "alice", "--expires-in", "12h")
    account = create(tmp_path, "--account", "ci-bot", "--backends", "notes,weather")
    auth = plugin_in(tmp_path)
    try:
        principal = await auth.authenticate(credentials(personal["token"]))
        assert principal == Principal(
            subject="alice", valid_until=personal["expires_at"], credential=personal["id"], kind="personal"
        )
        principal = await auth.authenticate(credentials(account["token"], path="/servers/x/mcp"))
        assert principal.subject == "ci-bot"
        assert principal.kind == "account"
        assert principal.backends == frozenset({"notes", "weather"})
        assert principal.valid_until is None
        assert principal.credential == account["id"]
    finally:
        await auth.close()


async def test_forged_gateway_tokens_are_refused(tmp_path: Path) -> None:
    made = create(tmp_path, "--user", "alice")
    auth = plugin_in(tmp_path)
    ptc, pat, token_id, secret = made["token"].split("_", 3)
    prefix = f"{ptc}_{pat}_{token_id}"
    forged = [
        f"{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",  # a wrong secret for a real id
        made["token"].replace("ptc_pat_", "ptc_vat_"),  # the kind changed
        f"ptc_pat_0123456789ab_{secret}",  # an unknown id
        "ptc_pat_short_secret",
    ]
    try:
        for token in forged:
            with pytest.raises(Unauthenticated) as caught:
                await auth.authenticate(credentials(token))
            assert caught.value.message == "the gateway token is not valid"
        assert (await auth.authenticate(credentials(made["token"]))).subject == "alice"
    finally:
        await auth.close()


async def test_a_different_key_verifies_nothing(tmp_path: Path) -> None:
    made = create(tmp_path, "--user", "alice")
    auth = plugin_in(tmp_path, token_key=TOKEN_KEY)
    with pytest.raises(Unauthenticated, match="not valid"):
        await auth.authenticate(credentials(made["token"]))
    await auth.close()


async def test_the_key_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The command is given the key as a file, the gateway the same key through the environment.
    (tmp_path / "k").write_text(TOKEN_KEY + "\n")
    made = create(tmp_path, "--user", "bob", "--key-file", str(tmp_path / "k"))
    monkeypatch.setenv("PORTICO_TEST_TOKEN_KEY", TOKEN_KEY)
    auth = plugin_in(tmp_path, token_key="${PORTICO_TEST_TOKEN_KEY}")
    assert (await auth.authenticate(credentials(made["token"]))).subject == "bob"
    await auth.close()


async def test_run_token_command_takes_the_gateway_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """How ``proxy.cli`` runs the commands: with the auth plugin's options from the gateway config."""
    options = AuthOptions.model_validate(
        {"token_store": str(tmp_path / "store" / "tokens.sqlite"), "token_key": TOKEN_KEY}
    )
    parser = argparse.ArgumentParser(prog="portico")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    add_token_commands(parser.add_subparsers(dest="command"), parents=[common])
    args = parser.parse_args(["token", "create", "--config", "x.yaml", "--user", "carol", "--json"])
    assert (args.command, args.token_command, args.config) == ("token", "create", "x.yaml")
    assert run_token_command(args, options) == 0
    made = orjson.loads(capsys.readouterr().out)
    assert not (tmp_path / "store" / "tokens.key").exists()  # the configured key was used, no file made
    auth = Auth(options)
    assert (await auth.authenticate(credentials(made["token"]))).subject == "carol"
    assert run_token_command(parser.parse_args(["token", "revoke", made["id"]]), options) == 0
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(credentials(made["token"]))
    await auth.close()
    off = AuthOptions.model_validate({"token_store": None, "allow_anonymous": True})
    assert run_token_command(parser.parse_args(["token", "list"]), off) == 1
    assert "turned off" in capsys.readouterr().err


async def test_revoked_and_expired_gateway_tokens_are_refused(tmp_path: Path) -> None:
    made = create(tmp_path, "--user", "alice", "--expires-in", "1m")
    auth = plugin_in(tmp_path)
    assert (await auth.authenticate(credentials(made["token"]))).subject == "alice"  # now cached
    later = Auth(auth.options, now=lambda: made["expires_at"] + 1)
    with pytest.raises(Unauthenticated, match="expired"):
        await later.authenticate(credentials(made["token"]))
    assert portico_token(tmp_path, "revoke", made["id"]).returncode == 0
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(credentials(made["token"]))
    await auth.close()
    await later.close()


async def test_gateway_tokens_can_be_turned_off(tmp_path: Path) -> None:
    made = create(tmp_path, "--user", "alice")
    auth = Auth(AuthOptions.model_validate({"token_store": None, "allow_anonymous": True}))
    with pytest.raises(Unauthenticated, match="not enabled"):
        await auth.authenticate(credentials(made["token"]))


async def test_without_a_store_no_gateway_token_verifies_and_nothing_is_created(tmp_path: Path) -> None:
    auth = plugin_in(tmp_path)
    with pytest.raises(Unauthenticated, match="not valid"):
        await auth.authenticate(credentials("ptc_pat_0123456789ab_" + "A" * 43))
    assert not (tmp_path / ".portico").exists()
    # The store appears later (the first `token create`): the running plugin picks it up.
    made = create(tmp_path, "--user", "alice")
    assert (await auth.authenticate(credentials(made["token"]))).subject == "alice"
    await auth.close()


# -- revocation reaches open sessions ---------------------------------------------------------------------


@pytest.mark.parametrize("direction", list(Direction))
async def test_a_revocation_from_another_process_ends_the_open_session(
    tmp_path: Path, direction: Direction
) -> None:
    made = create(tmp_path, "--account", "ci-bot", "--backends", "notes")
    other = create(tmp_path, "--user", "alice")
    auth = plugin_in(tmp_path)
    terminal = Terminal()
    chain = Chain([NamedPlugin("auth", auth)], terminal)
    principal = await auth.authenticate(credentials(made["token"]))
    bystander = await auth.authenticate(credentials(other["token"]))
    session, other_session = FakeSession(), FakeSession(id="session-2")
    try:
        for _ in range(3):
            assert "result" in await dispatch(chain, session, principal, direction)
        assert portico_token(tmp_path, "revoke", made["id"]).returncode == 0
        reply = await dispatch(chain, session, principal, direction)
        assert reply["error"]["code"] == ErrorCode.UNAUTHENTICATED
        assert reply["error"]["message"] == "the token was revoked"
        assert session.ended == ["the token was revoked"]
        assert len(terminal.received) == 3
        # Someone else's session carries on.
        assert "result" in await dispatch(chain, other_session, bystander, direction)
        assert other_session.ended == []
    finally:
        await auth.close()
