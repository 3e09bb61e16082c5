"""The gateway pings idle WebSocket clients, and drops the ones that never answer."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import StartGateway, everything


async def test_idle_clients_are_pinged_and_silent_ones_dropped(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"listen": {"heartbeat_seconds": 0.2}, "mcpServers": {"ev": everything()}})
    ws = await gw.http.ws_connect(gw.url, protocols=("mcp",), autoping=False)
    try:
        async with asyncio.timeout(3):
            frame = await ws.receive()
        assert frame.type is aiohttp.WSMsgType.PING
        # This client never answers pings: the gateway must give up on it and free the session.
        async with asyncio.timeout(5):
            while not ws.closed:
                frame = await ws.receive()
                if frame.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                ):
                    break
        async with asyncio.timeout(3):
            while gw.gateway.sessions:
                await asyncio.sleep(0.05)
    finally:
        await ws.close()
