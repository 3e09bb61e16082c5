"""Several gateway instances on one Redis behind nginx (tests/cluster.py): what a client of the cluster
sees, through the load balancer, with real processes throughout.

The clients are the ones the other tests use: stateless modern-era POSTs (tests/test_modern_era.py's
helpers) and the mcp SDK's ClientSession over tests/mcp_ws_client.py's WebSocket transport.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from tests.cluster import Cluster, Instance, Nginx, gateway_cluster
from tests.header_auth import HEADER_AUTH
from tests.mcp_ws_client import ws_transport
from tests.test_modern_era import modern_post, request

RATE_LIMITED = -32065


async def call_tool(
    http: aiohttp.ClientSession,
    url: str,
    request_id: int,
    tool: str,
    who: str | None = None,
    **arguments: Any,
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """One stateless tools/call POST: its status, its JSON-RPC body (empty when the body is not JSON,
    e.g. nginx's own 502 page) and its headers."""
    headers = modern_post(tool)
    if who is not None:
        headers["Authorization"] = f"Bearer {who}"
    body = request("tools/call", {"name": tool, "arguments": arguments}, request_id)
    async with http.post(url, json=body, headers=headers) as response:
        is_json = response.content_type == "application/json"
        reply = await response.json() if is_json else {}
        return response.status, reply, response.headers


def text_of(reply: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for part in reply["result"]["content"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def whoami(session: ClientSession, cluster: Cluster) -> Instance:
    """The instance a WebSocket session is connected to, from its backend's pid."""
    answer = await session.call_tool("ev_whoami", {})
    backend_pid = int(answer.content[0].text.split(":")[1])  # type: ignore[union-attr]
    return cluster.serving_backend(backend_pid)


async def test_requests_through_nginx_reach_every_instance(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path) as cluster:
        answered: list[int] = []
        for n in range(6):
            status, reply, headers = await call_tool(http, cluster.mcp, n, "ev_echo", text=f"through-{n}")
            assert status == 200 and reply["id"] == n and text_of(reply) == f"through-{n}"
            answered.append(cluster.answered_by(headers).index)
        # Round-robin: each instance in turn, whichever nginx began with.
        assert sorted(answered) == [0, 0, 1, 1, 2, 2]
        assert answered[:3] == answered[3:]
        # nginx passes the client's Host on, so each instance's DNS-rebinding guard judges the client's own:
        # a loopback name passes (above), a foreign one is refused, as it would be without nginx.
        foreign = {**modern_post("ev_echo"), "Host": "rebound.example"}
        body = request("tools/call", {"name": "ev_echo", "arguments": {"text": "x"}}, 8)
        async with http.post(cluster.mcp, json=body, headers=foreign) as refused:
            assert refused.status == 403
            assert "Host is not allowed" in (await refused.json())["error"]["message"]
        # Each instance also answers on its own address, bypassing nginx.
        for instance in cluster.instances:
            status, reply, _ = await call_tool(http, instance.mcp, 7, "ev_echo", text="direct")
            assert status == 200 and text_of(reply) == "direct"
        # A WebSocket handshake passes through too, each connection to the next instance.
        connected = []
        for _ in range(3):
            async with ws_transport(cluster.ws) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                connected.append((await whoami(session, cluster)).index)
        assert sorted(connected) == [0, 1, 2]


def test_the_readme_nginx_example_is_valid_nginx(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running several instances", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```nginx\n(.*?)```", section, flags=re.S)
    # TLS aside (a test has no certificate), the example exactly as the README gives it.
    assert "listen 443 ssl;" in example
    checked = Nginx(tmp_path, []).check(example.replace("listen 443 ssl;", "listen 127.0.0.1:443;"))
    assert checked.returncode == 0, checked.stderr
    for setting in (
        "proxy_buffering off;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_http_version 1.1;",
    ):
        assert setting in example


async def test_a_rate_limit_holds_across_instances(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    limit = 9
    ratelimit = {"name": "ratelimit", "options": {"per_principal": {"rate": limit, "per_seconds": 60}}}
    async with gateway_cluster(tmp_path, [HEADER_AUTH, ratelimit]) as cluster:
        allowed: list[int] = []
        refused: list[int] = []
        for n in range(3 * limit):
            status, reply, headers = await call_tool(
                http, cluster.mcp, n, "ev_echo", who="alice", text=str(n)
            )
            instance = cluster.answered_by(headers).index
            if status == 200:
                assert text_of(reply) == str(n)
                allowed.append(instance)
            else:
                assert status == 429 and reply["error"]["code"] == RATE_LIMITED, (status, reply)
                refused.append(instance)
        # One bucket for alice, wherever her requests land: each instance alone would let `limit` through.
        # (The bucket refills at limit/60 per second, hence the one extra the test may see.)
        assert limit - 1 <= len(allowed) <= limit + 1, (allowed, refused)
        assert set(allowed) == set(refused) == {0, 1, 2}
        # Bob has a bucket of his own.
        status, _, _ = await call_tool(http, cluster.mcp, 99, "ev_echo", who="bob", text="bob")
        assert status == 200


# -- killing an instance mid-load -------------------------------------------------------------------------

RATE = 100  # calls per second, open loop: each is sent on time whether or not the earlier ones returned
SECONDS = 3.0
KILL_AT = 1.2
SLOW_AT = 1.0  # calls that are still running on every instance when one is killed
SLOW_CALLS = 6
WEBSOCKET_CLIENTS = 4


@dataclass
class Outcome:
    request_id: int
    sent: float
    done: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    right: bool = False  # the reply carried this call's id and this call's echoed text
    instance: int | None = None  # which instance nginx gave it to, when the answer says


@dataclass
class WebSocketClient:
    name: str
    instances: list[int] = field(default_factory=list)  # one per connection, in order
    answered: list[int] = field(default_factory=list)  # calls answered, per connection
    wrong: list[str] = field(default_factory=list)
    lost: list[float] = field(default_factory=list)  # when a connection was lost


async def timed_call(
    http: aiohttp.ClientSession,
    cluster: Cluster,
    outcome: Outcome,
    tool: str,
    expected: str,
    **arguments: Any,
) -> None:
    try:
        status, reply, headers = await call_tool(http, cluster.mcp, outcome.request_id, tool, **arguments)
    except aiohttp.ClientError:
        outcome.done = time.monotonic()
        return
    outcome.done = time.monotonic()
    outcome.status = status
    if headers.get("X-Portico-Upstream"):
        outcome.instance = cluster.answered_by(headers).index
    if status == 200:
        outcome.right = reply.get("id") == outcome.request_id and text_of(reply) == expected


async def websocket_client(
    cluster: Cluster, client: WebSocketClient, ready: asyncio.Event, done: asyncio.Event
) -> None:
    """Calls ev_echo in a loop through nginx; when its connection is lost, connects again (nginx picks an
    instance) and goes on."""
    sequence = 0
    while not done.is_set():
        try:
            async with (
                ws_transport(cluster.ws) as (read, write),
                ClientSession(read, write, read_timeout_seconds=10) as session,
            ):
                await session.initialize()
                client.instances.append((await whoami(session, cluster)).index)
                client.answered.append(0)
                ready.set()
                while not done.is_set():
                    sequence += 1
                    text = f"{client.name}-{sequence}"
                    answer = await session.call_tool("ev_echo", {"text": text})
                    if answer.content[0].text != text:  # type: ignore[union-attr]
                        client.wrong.append(text)
                    client.answered[-1] += 1
                    await asyncio.sleep(0.02)
        # The SDK's task groups wrap what ended the connection (MCPError: Connection closed).
        except* (MCPError, aiohttp.ClientError, ConnectionError):
            client.lost.append(time.monotonic())
            await asyncio.sleep(0.05)


async def test_killing_an_instance_mid_load_loses_no_acknowledged_call(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path) as cluster:
        done = asyncio.Event()
        clients = [WebSocketClient(f"ws{n}") for n in range(WEBSOCKET_CLIENTS)]
        readiness = [asyncio.Event() for _ in clients]
        runners = [
            asyncio.create_task(websocket_client(cluster, client, ready, done))
            for client, ready in zip(clients, readiness, strict=True)
        ]
        async with asyncio.timeout(30):
            await asyncio.gather(*(ready.wait() for ready in readiness))
        # The victim is the instance the first WebSocket client is on, so at least one client loses it.
        victim = cluster.instances[clients[0].instances[0]]

        calls: list[tuple[Outcome, asyncio.Task[None]]] = []
        slow: list[tuple[Outcome, asyncio.Task[None]]] = []
        start = time.monotonic()
        killed_at = killed = 0.0
        slow_sent = False
        for n in range(int(RATE * SECONDS)):
            await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
            now = time.monotonic()
            if not slow_sent and now - start >= SLOW_AT:
                slow_sent = True
                for k in range(SLOW_CALLS):
                    outcome = Outcome(10_000 + k, now)
                    task = timed_call(http, cluster, outcome, "ev_slow", "done", seconds=1.0, steps=1)
                    slow.append((outcome, asyncio.create_task(task)))
            if not killed and now - start >= KILL_AT:
                killed_at = time.monotonic()
                await cluster.kill(victim.index)
                killed = time.monotonic()
                now = killed
            outcome = Outcome(n, now)
            task = timed_call(http, cluster, outcome, "ev_echo", f"call-{n}", text=f"call-{n}")
            calls.append((outcome, asyncio.create_task(task)))
        async with asyncio.timeout(30):
            await asyncio.gather(*(task for _, task in calls + slow))
        await asyncio.sleep(0.3)  # the WebSocket clients make a few more calls after the whole HTTP load
        done.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*runners)

    outcomes = [outcome for outcome, _ in calls + slow]
    # Every call that was answered with a success got its own answer.
    wrong = [o.request_id for o in outcomes if o.status == 200 and not o.right]
    assert not wrong, f"answers to other calls: {wrong}"
    failed = [o for o in outcomes if o.status != 200]
    # Only calls in flight at the kill failed: sent before it, not answered before it, and on the victim.
    for o in failed:
        assert o.sent < killed and o.done >= killed_at, o
        # nginx answered them itself (502): the client's connection to it never broke.
        assert o.status == 502 and o.instance == victim.index, o
    in_flight = [o for o in outcomes if o.sent < killed and o.done >= killed_at]
    assert len(failed) <= len(in_flight) <= SLOW_CALLS + 10
    # The slow calls were running on every instance: the victim's failed, the others' finished.
    slow_failed = [o for o, _ in slow if o.status != 200]
    assert slow_failed, "no slow call was running on the killed instance"
    assert all(o.right for o, _ in slow if o.status == 200)
    # Every call sent after the kill succeeded, on the instances left.
    after = [o for o in outcomes if o.sent >= killed]
    assert after and all(o.status == 200 and o.right for o in after), [o for o in after if not o.right]
    assert {o.instance for o in after} == {i.index for i in cluster.instances} - {victim.index}

    for client in clients:
        assert not client.wrong, client
        first = client.instances[0]
        if first == victim.index:
            # It saw its connection close, connected again through nginx and went on elsewhere.
            assert len(client.lost) == 1 and client.lost[0] >= killed_at, client
            assert len(client.instances) == 2 and client.instances[1] != victim.index, client
        else:
            assert client.lost == [] and client.instances == [first], client
        assert all(count > 0 for count in client.answered), client
