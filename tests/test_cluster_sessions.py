"""Legacy Streamable HTTP sessions in a real cluster (tests/cluster.py): three gateway processes on one
Redis behind nginx round-robin, so a session's requests land on one instance after another, as they
would behind any load balancer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.cluster import Cluster, gateway_cluster
from tests.test_http_transport import (
    SESSION,
    Endpoint,
    all_events,
    is_reply,
    next_event,
    sequences,
    sse_events,
    text_of,
    tool_call,
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def through_nginx(cluster: Cluster, http: aiohttp.ClientSession) -> Endpoint:
    return Endpoint(http, URL(cluster.mcp))


async def test_a_legacy_session_goes_on_while_its_requests_land_on_different_instances(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path) as cluster:
        mcp = through_nginx(cluster, http)
        session = await mcp.open_session()  # initialize and notifications/initialized: two instances
        answered = set()
        for n in range(6):
            response = await mcp.post(tool_call("ev_echo", text=f"call {n}"), session)
            assert response.status == 200, await response.text()
            assert response.headers[SESSION] == session
            reply = await response.json()
            assert text_of(reply) == f"call {n}"
            answered.add(cluster.answered_by(response.headers).index)
        assert answered == {0, 1, 2}

        # DELETE through nginx ends it on every instance.
        assert (await mcp.delete(session)).status == 200
        for instance in cluster.instances:
            assert await Endpoint(http, URL(instance.mcp)).status_of(session) == 404


async def test_a_last_event_id_resume_on_another_instance_gets_the_missed_events(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path) as cluster:
        mcp = through_nginx(cluster, http)
        session = await mcp.open_session()
        slow = tool_call("ev_slow", progress="cluster", seconds=1.5, steps=5)
        response = await mcp.post(slow, session)
        assert response.content_type == "text/event-stream"
        running_on = cluster.answered_by(response.headers)
        first = await next_event(sse_events(response), "notifications/progress")
        response.close()  # the client's connection breaks while the call runs

        # The client comes back on another instance than the one running the call.
        elsewhere = next(i for i in cluster.instances if i is not running_on)
        assert first[0] is not None
        resumed = await Endpoint(http, URL(elsewhere.mcp)).get(session, headers={"Last-Event-ID": first[0]})
        assert resumed.status == 200, await resumed.text()
        rest = await all_events(resumed, timeout=15)
        assert [m.get("params", {}).get("progress") for _, m in rest[:-1]] == [2, 3, 4, 5], rest
        assert rest and is_reply(rest[-1][1]), rest
        assert rest[-1][1]["id"] == slow["id"] and text_of(rest[-1][1]) == "done"
        streams, numbers = sequences([first, *rest])
        assert len(streams) == 1 and numbers == sorted(set(numbers))

        # Once over, the same resume anywhere replays it all again, from Redis.
        replay = await mcp.get(session, headers={"Last-Event-ID": first[0]})
        assert await all_events(replay, timeout=15) == rest
