"""Backends over Streamable HTTP and HTTP+SSE: real SDK servers (tests/fixtures/http_backend.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tests.conftest import StartGateway, listening_fixture
from tests.rawclient import Message
from tests.test_aggregation import text_of
from tests.test_bidirectional import call

HttpBackend = Callable[..., AbstractAsyncContextManager[tuple[str, asyncio.subprocess.Process]]]


@pytest.fixture
def http_backend() -> HttpBackend:
    def run(
        transport: str, *flags: str
    ) -> AbstractAsyncContextManager[tuple[str, asyncio.subprocess.Process]]:
        return listening_fixture("http_backend.py", "--transport", transport, *flags)

    return run


async def sampled(request: Message) -> dict[str, Any]:
    return {"role": "assistant", "content": {"type": "text", "text": "from the client"}, "model": "m"}


@pytest.mark.parametrize("flags", [(), ("--json-response",)])
async def test_streamable_http_backend_serves_calls(
    start_gateway: StartGateway, http_backend: HttpBackend, flags: tuple[str, ...]
) -> None:
    async with http_backend("streamable-http", *flags) as (url, _):
        gw = await start_gateway({"mcpServers": {"remote": {"url": url, "era": "legacy"}}})
        client = await gw.client()
        names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
        assert {"remote_echo", "remote_slow"} <= names
        assert text_of(await client.call("tools/call", call("remote_echo", text="over http"))) == "over http"
        read = await client.call("resources/read", {"uri": "portico://remote/memo://one"})
        assert read["contents"][0]["text"] == "first memo"
        connector = gw.gateway.backends["remote"]._catalog_link.connector  # type: ignore[union-attr]
        assert connector.session_id  # type: ignore[attr-defined]


async def test_streamable_http_backend_relays_progress_sampling_and_list_changes(
    start_gateway: StartGateway, http_backend: HttpBackend
) -> None:
    async with http_backend("streamable-http") as (url, _):
        gw = await start_gateway({"mcpServers": {"remote": {"url": url, "era": "legacy"}}})
        client = await gw.client(capabilities={"sampling": {}})
        client.handlers["sampling/createMessage"] = sampled
        params = {**call("remote_slow", seconds=0.3, steps=3), "_meta": {"progressToken": "p"}}
        await client.call("tools/call", params)
        assert [n["params"]["progress"] for n in client.notifications_of("notifications/progress")] == [
            1,
            2,
            3,
        ]
        assert (
            text_of(await client.call("tools/call", call("remote_sample", prompt="x"))) == "from the client"
        )
        await client.call("tools/call", call("remote_add_tool", name="late"))
        await client.wait_notification("notifications/tools/list_changed")
        assert "remote_late" in {t["name"] for t in (await client.call("tools/list"))["tools"]}


async def test_sse_backend_serves_calls_and_sampling(
    start_gateway: StartGateway, http_backend: HttpBackend
) -> None:
    async with http_backend("sse") as (url, _):
        gw = await start_gateway({"mcpServers": {"old": {"url": url, "type": "sse"}}})
        client = await gw.client(capabilities={"sampling": {}})
        client.handlers["sampling/createMessage"] = sampled
        assert text_of(await client.call("tools/call", call("old_echo", text="sse"))) == "sse"
        assert text_of(await client.call("tools/call", call("old_sample", prompt="x"))) == "from the client"


@pytest.mark.parametrize(("transport", "entry"), [("streamable-http", {}), ("sse", {"type": "sse"})])
async def test_an_http_backend_that_dies_fails_its_calls_and_leaves_the_lists(
    start_gateway: StartGateway, http_backend: HttpBackend, transport: str, entry: dict[str, str]
) -> None:
    async with http_backend(transport) as (url, process):
        gw = await start_gateway({"mcpServers": {"remote": {"url": url, **entry}}})
        client = await gw.client()
        waiting = asyncio.create_task(client.request("tools/call", call("remote_sleep_forever"), timeout=30))
        await asyncio.sleep(0.5)
        process.kill()
        started = asyncio.get_running_loop().time()
        reply = await waiting
        assert reply["error"]["code"] == -32050
        assert asyncio.get_running_loop().time() - started < 5
        await client.wait_notification("notifications/tools/list_changed", timeout=10)
        assert (await client.call("tools/list"))["tools"] == []
