"""Hot reload: a changed config file (or SIGHUP) applies its backends without dropping sessions; a bad
file keeps the running config."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.errors import ConfigError
from proxy.transports.app_keys import RELOADER
from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.gateway_process import serve_gateway
from tests.rawclient import RawClient

COUNTING = fixture_server("counting_server.py")
LIST_CHANGED = "notifications/tools/list_changed"


async def tools_of(client: RawClient) -> set[str]:
    return {tool["name"] for tool in await client.list_all("tools/list", "tools")}


async def until_tools(client: RawClient, wanted: set[str], absent: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + 15
    while True:
        tools = await tools_of(client)
        if wanted <= tools and not (absent & tools):
            return
        assert time.monotonic() < deadline, f"tools never became {wanted} without {absent}: {tools}"
        await asyncio.sleep(0.1)


def rewrite(gw: RunningGateway, change: dict[str, Any]) -> None:
    source = Path(gw.gateway.config.source)
    settings = yaml.safe_load(source.read_text())
    settings.update(change)
    source.write_text(yaml.safe_dump(settings))


async def test_a_changed_file_is_applied_and_untouched_sessions_carry_on(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portico.reload")
    gw = await start_gateway({"mcpServers": {"a": COUNTING}, "reload": {"watch_seconds": 0.2}})
    client = await gw.client()
    assert (await client.call("tools/call", {"name": "a_lookup", "arguments": {"key": "k"}}))["content"]
    rewrite(gw, {"mcpServers": {"a": COUNTING, "b": COUNTING}})
    await until_tools(client, {"a_lookup", "b_lookup"})
    assert client.notifications_of(LIST_CHANGED)
    # The session that was open all along still works, on the untouched backend and the new one.
    for name in ("a_lookup", "b_lookup"):
        assert (await client.call("tools/call", {"name": name, "arguments": {"key": "k"}}))["content"]
    # A file that does not load keeps the running config, and says why in the log.
    Path(gw.gateway.config.source).write_text("mcpServers: [not, a, mapping]\n")
    deadline = time.monotonic() + 10
    while "the running one stays" not in caplog.text:
        assert time.monotonic() < deadline, "the bad file was never reported"
        await asyncio.sleep(0.1)
    assert {"a_lookup", "b_lookup"} <= await tools_of(client)
    # Removing a backend takes its tools away; a section a reload cannot apply is named.
    rewrite_to = {
        "mcpServers": {"b": COUNTING},
        "reload": {"watch_seconds": 0.2},
        "namespacing": {"page_size": 7},
    }
    Path(gw.gateway.config.source).write_text(yaml.safe_dump(rewrite_to))
    await until_tools(client, {"b_lookup"}, absent={"a_lookup"})
    deadline = time.monotonic() + 10
    while "'restart_needed': ['namespacing']" not in caplog.text:
        assert time.monotonic() < deadline, "the unapplied section was never named"
        await asyncio.sleep(0.1)


async def test_sighup_reloads_a_running_gateway(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"mcpServers": {"a": COUNTING}, "reload": {"watch_seconds": 0}}
    with serve_gateway(tmp_path, settings) as gateway:
        async with aiohttp.ClientSession() as http:
            client = await RawClient.connect(http, gateway.url)
            try:
                await client.initialize()
                assert "a_lookup" in await tools_of(client)
                settings["mcpServers"] = {"a": COUNTING, "b": COUNTING}
                (tmp_path / "portico.yaml").write_text(yaml.safe_dump(settings))
                # No watcher: nothing happens until the signal.
                await asyncio.sleep(0.5)
                assert "b_lookup" not in await tools_of(client)
                gateway.process.send_signal(signal.SIGHUP)
                await until_tools(client, {"a_lookup", "b_lookup"})
                await client.wait_notification(LIST_CHANGED)
            finally:
                await client.close()


GITHUB_TOKEN = "ghp_" + "ReloadCanary0123456789abcdefghijklmn"


async def test_a_changed_plugin_chain_takes_effect_for_the_next_message(start_gateway: StartGateway) -> None:
    """Adding the redact plugin to the file: the session opened before goes on, and its next call is
    redacted; a plugin that cannot be built leaves everything as it was."""
    gw = await start_gateway({"mcpServers": {"a": COUNTING}, "reload": {"watch_seconds": 0}})
    client = await gw.client()
    call = {"name": "a_upsert", "arguments": {"key": "k", "value": GITHUB_TOKEN}}
    assert GITHUB_TOKEN in (await client.call("tools/call", call))["content"][0]["text"]
    reloader = gw.server.app[RELOADER]
    rewrite(gw, {"plugins": [{"name": "redact"}]})
    outcome = await reloader.reload()
    assert outcome["plugins_replaced"] is True and outcome["added"] == []
    text = (await client.call("tools/call", call))["content"][0]["text"]
    assert GITHUB_TOKEN not in text and "[REDACTED:github_token]" in text
    # A plugin that cannot be built: the running chain (and the backends) stay as they are.
    rewrite(gw, {"plugins": [{"name": "redact", "options": {"no_such_option": 1}}], "mcpServers": {}})
    with pytest.raises(ConfigError):
        await reloader.reload()
    assert [p.name for p in gw.gateway.plugins] == ["redact"] and "a" in gw.gateway.backends
