"""Network faults between the gateway and a real backend, injected by tests/fault_proxy.py.

For each backend transport (Streamable HTTP, HTTP+SSE, WebSocket) and each fault, a client's call gets
its expected outcome within the backend's deadline: latency below it succeeds, a blackhole times out
(-32001), a reset fails fast (-32050) while the other backends keep serving, and one-byte writes leave
the framing intact. Every bound is generous (deadline + 5 s): what is checked is the outcome, not speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import RunningGateway, StartGateway, fixture_server, listening_fixture
from tests.fault_proxy import Fault, FaultProxy
from tests.rawclient import Message, RawClient
from tests.test_aggregation import text_of
from tests.test_bidirectional import call

DEADLINE = 2.0
TRANSPORTS = {
    "streamable-http": (("http_backend.py", "--transport", "streamable-http"), {"era": "legacy"}),
    "sse": (("http_backend.py", "--transport", "sse"), {"type": "sse"}),
    "websocket": (("ws_backend.py",), {"transport": "websocket", "era": "legacy"}),
}


@asynccontextmanager
async def gateway_through_proxy(
    start_gateway: StartGateway, transport: str, fault: Fault | None = None
) -> AsyncIterator[tuple[RunningGateway, RawClient, FaultProxy]]:
    """The backend ``remote`` over ``transport`` behind a fault proxy, and a stdio backend ``local``."""
    script, entry = TRANSPORTS[transport]
    async with listening_fixture(*script) as (url, _), FaultProxy.for_url(url, fault) as proxy:
        remote = {"url": proxy.rewrite(url), "timeout_seconds": DEADLINE, **entry}
        gw = await start_gateway(
            {"mcpServers": {"remote": remote, "local": fixture_server("counting_server.py")}}
        )
        client = await gw.client()
        yield gw, client, proxy


async def echo(client: RawClient, text: str) -> Message:
    async with asyncio.timeout(DEADLINE + 5):
        return await client.request("tools/call", call("remote_echo", text=text), timeout=DEADLINE + 10)


def echoed(reply: Message) -> str:
    assert "result" in reply, reply
    result: dict[str, Any] = reply["result"]
    return text_of(result)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_latency_below_the_deadline_still_succeeds(start_gateway: StartGateway, transport: str) -> None:
    async with gateway_through_proxy(start_gateway, transport) as (_, client, proxy):
        proxy.set_fault(Fault.latency(0.2))
        assert echoed(await echo(client, "late but here")) == "late but here"
        assert proxy.counters.bytes_down > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_blackhole_times_out_within_the_deadline(start_gateway: StartGateway, transport: str) -> None:
    async with gateway_through_proxy(start_gateway, transport) as (_, client, proxy):
        proxy.set_fault(Fault.blackhole())
        reply = await echo(client, "into the void")
        assert reply.get("error", {}).get("code") == -32001, reply
        assert proxy.counters.bytes_dropped > 0
        # The link was never broken, only silent: once the network heals, the next call gets through.
        proxy.set_fault(Fault.passing())
        assert echoed(await echo(client, "back")) == "back"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reset_fails_fast_and_the_other_backends_keep_serving(
    start_gateway: StartGateway, transport: str
) -> None:
    async with gateway_through_proxy(start_gateway, transport) as (_, client, proxy):
        proxy.set_fault(Fault.reset())
        reply = await echo(client, "reset me")
        assert reply.get("error", {}).get("code") == -32050, reply
        assert proxy.counters.resets > 0
        async with asyncio.timeout(DEADLINE + 5):
            looked_up = await client.call("tools/call", call("local_lookup", key="k"))
        assert text_of(looked_up) == "k #1"


# Found with this proxy: SSE and WebSocket backends whose connection was reset stayed out of the lists
# until the gateway restarted; now they are reconnected like crashed stdio processes are restarted.
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_after_a_reset_the_backend_serves_again(start_gateway: StartGateway, transport: str) -> None:
    async with gateway_through_proxy(start_gateway, transport) as (_, client, proxy):
        proxy.set_fault(Fault.reset())
        assert (await echo(client, "reset me")).get("error", {}).get("code") == -32050
        proxy.set_fault(Fault.passing())
        reply: Message = {}
        for _ in range(8):
            reply = await echo(client, "healed")
            if "result" in reply:
                break
            await asyncio.sleep(0.5)
        assert echoed(reply) == "healed"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_byte_writes_keep_the_framing(start_gateway: StartGateway, transport: str) -> None:
    # Sliced once the backend is up: slicing its whole catalog (kilobytes) would outlast the deadline.
    async with gateway_through_proxy(start_gateway, transport) as (_, client, proxy):
        proxy.set_fault(Fault.sliced(0.0005))
        before = proxy.counters.bytes_down
        text = "sliced " * 20
        assert echoed(await echo(client, text)) == text
        assert proxy.counters.bytes_down - before >= len(text)
