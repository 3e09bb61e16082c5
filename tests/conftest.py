"""Shared fixtures: a real gateway (aiohttp server in the test's loop) with real subprocess backends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from proxy import config
from proxy.app import build_app
from proxy.gateway import Gateway
from proxy.plugin_loader import build_plugins
from tests.fixtures.oauth_server import OAuthServer
from tests.rawclient import RawClient
from tests.redis_server import RedisServer

FIXTURES = Path(__file__).parent / "fixtures"


def everything(tag: str = "", **extra: Any) -> dict[str, Any]:
    """A backend entry running tests/fixtures/everything_server.py over stdio.

    The fixture speaks both eras; most tests exercise the handshake era's features (server-to-client
    requests, subscriptions, logging/setLevel), so it is spoken to in that era unless ``era`` says
    otherwise.
    """
    return {
        "command": sys.executable,
        "args": [str(FIXTURES / "everything_server.py")],
        "env": {"FIXTURE_TAG": tag},
        "era": "legacy",
        **extra,
    }


@asynccontextmanager
async def listening_fixture(script: str, *args: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Run a network fixture backend (tests/fixtures/SCRIPT --port 0 ...) until its LISTENING line; yield
    its URL and process; stop it on the way out (it may be gone already: the `crash` tool ends it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(FIXTURES / script), "--port", "0", *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        assert line.startswith("LISTENING "), line
        yield line.split(" ", 1)[1], process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def fixture_server(script: str, **extra: Any) -> dict[str, Any]:
    """A stdio backend entry for tests/fixtures/SCRIPT, spoken to in the handshake era (as ``everything``)."""
    return {"command": sys.executable, "args": [str(FIXTURES / script)], "era": "legacy", **extra}


class RunningGateway:
    def __init__(self, server: TestServer, gateway: Gateway, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.gateway = gateway
        self.http = http
        self.url = str(server.make_url("/mcp")).replace("http://", "ws://")
        self.clients: list[RawClient] = []

    async def client(
        self, initialize: bool = True, capabilities: dict[str, Any] | None = None, **kwargs: Any
    ) -> RawClient:
        client = await RawClient.connect(self.http, self.url, **kwargs)
        self.clients.append(client)
        if initialize:
            await client.initialize(capabilities)
        return client


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """Start a gateway from a config dict (written to a real file, as an operator would)."""
    running: list[tuple[TestServer, aiohttp.ClientSession, RunningGateway]] = []

    async def start(settings: dict[str, Any]) -> RunningGateway:
        path = tmp_path / f"portico-{len(running)}.yaml"
        path.write_text(yaml.safe_dump(settings))
        cfg = config.load(path)
        gateway = Gateway(cfg, build_plugins(cfg))
        server = TestServer(build_app(gateway), host="127.0.0.1", port=0)
        await server.start_server()
        http = aiohttp.ClientSession()
        handle = RunningGateway(server, gateway, http)
        running.append((server, http, handle))
        return handle

    yield start
    for server, http, handle in reversed(running):
        for client in handle.clients:
            if not client.ws.closed:
                await client.close()
        await http.close()
        await server.close()


# The client secret the ``oauth`` authorization server expects of the gateway (tests put it in files).
OAUTH_CLIENT_SECRET = "cs-7f3a9b-never-log-me"


@pytest.fixture
async def oauth() -> AsyncIterator[OAuthServer]:
    """A real OAuth authorization server (client credentials, introspection) on 127.0.0.1."""
    async with OAuthServer(client_id="portico", client_secret=OAUTH_CLIENT_SECRET) as server:
        yield server


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A real, empty redis-server on a free loopback port (tests/redis_server.py)."""
    async with RedisServer() as server:
        yield server.url
