"""The stdio connector on its own: environment, stderr logging, process groups, oversized lines."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from proxy.config import StdioBackendConfig
from proxy.connectors.stdio import INHERITED_VARIABLES, StdioConnector
from proxy.errors import BackendUnavailable
from tests.test_failures import pid_alive, wait_until


def script(tmp_path: Path, body: str) -> StdioBackendConfig:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return StdioBackendConfig(command=sys.executable, args=(str(path),))


class Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed: list[str] = []

    def message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def close(self, reason: str) -> None:
        self.closed.append(reason)


async def open_connector(cfg: StdioBackendConfig, tmp_path: Path) -> tuple[StdioConnector, Inbox]:
    connector = StdioConnector("child", cfg, tmp_path)
    inbox = Inbox()
    await connector.open(inbox.message, inbox.close)
    return connector, inbox


async def test_the_child_sees_only_inherited_basics_and_its_configured_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", "must-not-leak")
    base = script(
        tmp_path,
        """
        import json, os, sys
        print(json.dumps({"jsonrpc": "2.0", "method": "env", "params": dict(os.environ)}), flush=True)
        sys.stdin.read()
    """,
    )
    cfg = base.model_copy(update={"env": {"CONFIGURED": "yes"}})
    connector, inbox = await open_connector(cfg, tmp_path)
    try:
        assert await wait_until(lambda: bool(inbox.messages))
        env = inbox.messages[0]["params"]
        assert env["CONFIGURED"] == "yes"
        assert "GATEWAY_SECRET" not in env
        assert set(env) - {"CONFIGURED", *INHERITED_VARIABLES} <= {"LC_CTYPE", "PWD"}
    finally:
        await connector.close()


async def test_stderr_is_logged_line_by_line_under_the_backend_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = script(
        tmp_path,
        """
        import sys
        sys.stderr.write("first line\\nsecond line\\n"); sys.stderr.flush()
        sys.stdin.read()
    """,
    )
    caplog.set_level(logging.INFO, logger="portico.backend.child")
    connector, _ = await open_connector(cfg, tmp_path)
    try:
        assert await wait_until(
            lambda: len([r for r in caplog.records if r.name == "portico.backend.child"]) >= 2
        )
        lines = [r.getMessage() for r in caplog.records if r.name == "portico.backend.child"]
        assert lines[:2] == ["first line", "second line"]
    finally:
        await connector.close()


async def test_close_kills_the_childs_own_children_too(tmp_path: Path) -> None:
    cfg = script(
        tmp_path,
        """
        import json, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn child: only SIGKILL ends it
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(json.dumps({"jsonrpc": "2.0", "method": "pid", "params": {"pid": grandchild.pid}}), flush=True)
        while True:
            time.sleep(1)
    """,
    )
    connector, inbox = await open_connector(cfg, tmp_path)
    assert await wait_until(lambda: bool(inbox.messages))
    grandchild = inbox.messages[0]["params"]["pid"]
    child = connector.pid
    assert child is not None and pid_alive(grandchild)
    await connector.close()
    assert not pid_alive(child)
    assert await wait_until(lambda: not pid_alive(grandchild))
    assert inbox.closed


async def test_an_oversized_line_is_dropped_whole_and_the_next_one_arrives(tmp_path: Path) -> None:
    cfg = script(
        tmp_path,
        """
        import json, sys
        print(json.dumps({"jsonrpc": "2.0", "method": "big", "params": {"x": "y" * 200000}}), flush=True)
        print(json.dumps({"jsonrpc": "2.0", "method": "small"}), flush=True)
        sys.stdin.read()
    """,
    )
    connector, inbox = await open_connector(cfg.model_copy(update={"max_message_bytes": 65536}), tmp_path)
    try:
        assert await wait_until(lambda: bool(inbox.messages))
        await asyncio.sleep(0.2)
        assert [m["method"] for m in inbox.messages] == ["small"]
    finally:
        await connector.close()


async def test_a_missing_command_is_backend_unavailable(tmp_path: Path) -> None:
    cfg = StdioBackendConfig(command="/nonexistent/command")
    connector = StdioConnector("child", cfg, tmp_path)
    with pytest.raises(BackendUnavailable, match="cannot start"):
        await connector.open(lambda _: None, lambda _: None)


async def test_exit_is_reported_with_the_exit_code(tmp_path: Path) -> None:
    cfg = script(tmp_path, "import sys; sys.exit(7)\n")
    connector, inbox = await open_connector(cfg, tmp_path)
    assert await wait_until(lambda: bool(inbox.closed))
    assert inbox.closed == ["process exited with code 7"]
    with pytest.raises(BackendUnavailable):
        await connector.send(b"{}")
    await connector.close()
