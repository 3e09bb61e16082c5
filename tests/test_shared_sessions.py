"""Legacy Streamable HTTP sessions that several gateway instances share through Redis.

Two real gateways (each with its own backends) and one real redis-server: a client's requests go to one
instance or the other, as a load balancer would send them, under the same ``Mcp-Session-Id``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import asyncio as aioredis

from tests.conftest import RunningGateway, StartGateway, everything
from tests.ports import free_port
from tests.test_http_transport import (
    INVALID_REQUEST,
    LATEST,
    PEER_NOTICED,
    SESSION,
    Endpoint,
    all_events,
    assert_rpc_error,
    endpoint,
    eventually,
    http_sessions,
    is_reply,
    next_event,
    notification,
    request,
    sequences,
    sse_events,
    text_of,
    tool_call,
)


def shared(redis_url: str, **extra: Any) -> dict[str, Any]:
    return {"redis": {"url": redis_url, "key_prefix": "test"}, "mcpServers": {"ev": everything()}, **extra}


async def two_gateways(
    start_gateway: StartGateway, settings: dict[str, Any]
) -> tuple[RunningGateway, RunningGateway]:
    """Two instances sharing one Redis, each listening to the other's news."""
    first, second = await start_gateway(settings), await start_gateway(settings)
    for gw in (first, second):
        await _listening(gw)
    return first, second


async def two_instances(start_gateway: StartGateway, settings: dict[str, Any]) -> tuple[Endpoint, Endpoint]:
    first, second = await two_gateways(start_gateway, settings)
    return endpoint(first), endpoint(second)


async def _listening(gw: RunningGateway) -> None:
    # Each instance hears the others' news once its channel is subscribed.
    from proxy.transports.http_sessions import HTTP_SESSIONS

    directory = gw.server.app[HTTP_SESSIONS].directory
    assert directory is not None
    await asyncio.wait_for(directory.listener.subscribed.wait(), 5)


async def test_a_session_made_on_one_instance_goes_on_on_another(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session()

    # Each request to another instance than the one before, as round-robin would send them.
    for n, instance in enumerate((b, a, b, b, a)):
        _, reply = await instance.call(session, tool_call("ev_echo", text=f"call {n}"))
        assert text_of(reply) == f"call {n}"
    # The other instance knows what the handshake settled, and refuses what the session may not do.
    again = request("initialize", {"protocolVersion": LATEST, "capabilities": {}})
    response = await b.post(again, session)
    assert response.status == 200
    assert_rpc_error(await response.json(), INVALID_REQUEST, again["id"])


async def test_a_session_id_that_no_instance_made_is_404_everywhere(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    await a.open_session()
    for instance in (a, b):
        assert await instance.status_of("never-made-by-anyone") == 404


async def test_delete_on_one_instance_ends_the_session_on_every_instance(
    redis_url: str, start_gateway: StartGateway
) -> None:
    first, second = await two_gateways(start_gateway, shared(redis_url))
    a, b = endpoint(first), endpoint(second)
    session = await a.open_session()
    assert await b.status_of(session) == 200
    assert session in http_sessions(first) and session in http_sessions(second)

    assert (await b.delete(session)).status == 200
    await eventually(lambda: session not in http_sessions(first), what="the other copy ended")
    assert await a.status_of(session) == 404
    assert await b.status_of(session) == 404


async def test_a_session_is_continued_only_on_the_endpoint_that_opened_it(
    redis_url: str, start_gateway: StartGateway
) -> None:
    settings = shared(redis_url, virtual_servers={"narrow": {"include": ["ev/*"]}})
    a, b = await two_instances(start_gateway, settings)
    session = await a.open_session()
    other_endpoint = Endpoint(b.http, b.url.with_path("/servers/narrow/mcp"))
    assert await other_endpoint.status_of(session) == 404
    assert await b.status_of(session) == 200


async def test_a_stream_broken_on_one_instance_resumes_on_another_with_the_rest_of_its_events(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session()
    slow = tool_call("ev_slow", progress="moves", seconds=0.2, steps=3)
    events = await all_events(await a.post(slow, session))
    assert len(events) == 4

    assert events[0][0] is not None
    resumed = await b.get(session, headers={"Last-Event-ID": events[0][0]})
    assert resumed.status == 200, await resumed.text()
    assert resumed.headers[SESSION] == session
    replayed = await all_events(resumed, timeout=10)
    assert replayed == events[1:]
    assert replayed[-1][1]["id"] == slow["id"] and text_of(replayed[-1][1]) == "done"


async def test_a_request_still_running_elsewhere_reaches_the_client_on_the_resumed_stream(
    redis_url: str, start_gateway: StartGateway
) -> None:
    """The call runs on the instance it was POSTed to; its later events reach the other through Redis."""
    a, b = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session()
    slow = tool_call("ev_slow", progress="running", seconds=1.2, steps=4)
    response = await a.post(slow, session)
    assert response.content_type == "text/event-stream"
    first = await next_event(sse_events(response), "notifications/progress")
    response.close()  # the connection breaks before the reply

    assert first[0] is not None
    resumed = await b.get(session, headers={"Last-Event-ID": first[0]})
    assert resumed.status == 200
    rest = await all_events(resumed, timeout=10)
    assert [m.get("params", {}).get("progress") for _, m in rest[:-1]] == [2, 3, 4], rest
    assert rest and is_reply(rest[-1][1]) and rest[-1][1]["id"] == slow["id"], rest
    streams, numbers = sequences([first, *rest])
    assert len(streams) == 1 and numbers == sorted(set(numbers))


async def test_an_answer_posted_to_another_instance_reaches_the_call_that_asked(
    redis_url: str, start_gateway: StartGateway
) -> None:
    """A backend's elicitation travels on the call's stream from instance A; the client's answer is
    POSTed to instance B, and the call on A gets it."""
    a, b = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session({"elicitation": {}})
    message = tool_call("ev_ask", question="proceed?")
    response = await a.post(message, session)
    assert response.content_type == "text/event-stream"
    seen = []
    async with asyncio.timeout(15):
        async for event_id, sent in sse_events(response):
            seen.append((event_id, sent))
            if sent.get("method") == "elicitation/create":
                result = {"action": "accept", "content": {"answer": "yes"}}
                answer = {"jsonrpc": "2.0", "id": sent["id"], "result": result}
                posted = await b.post(answer, session)
                assert posted.status == 202, await posted.text()
    assert seen[-1][1]["id"] == message["id"], seen
    assert text_of(seen[-1][1]) == "accept:yes", seen


async def test_the_event_log_in_redis_refuses_ids_it_never_gave(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session()
    events = await all_events(await a.post(tool_call("ev_slow", progress="p", seconds=0.1, steps=2), session))
    assert events[0][0] is not None
    stream, _, number = events[0][0].partition("-")
    made_up = (f"{stream}-999", f"{int(stream) + 1}-{number}", "garbage", "1-x", "0-0")
    for last in made_up:
        response = await b.get(session, headers={"Last-Event-ID": last})
        assert response.status == 400, last
        assert_rpc_error(await response.json(), INVALID_REQUEST)


async def test_events_trimmed_from_the_log_cannot_be_replayed(
    redis_url: str, start_gateway: StartGateway
) -> None:
    settings = shared(redis_url, listen={"event_store_size": 2})
    a, b = await two_instances(start_gateway, settings)
    session = await a.open_session()
    events = await all_events(await a.post(tool_call("ev_slow", progress="p", seconds=0.1, steps=4), session))
    assert len(events) == 5
    assert events[0][0] is not None and events[-2][0] is not None
    # The first event's successors are gone (only two kept): too old. The one before last still works.
    too_old = await b.get(session, headers={"Last-Event-ID": events[0][0]})
    assert too_old.status == 400
    recent = await b.get(session, headers={"Last-Event-ID": events[-2][0]})
    assert recent.status == 200
    assert await all_events(recent, timeout=10) == events[-1:]


async def test_the_unrelated_stream_moves_to_the_instance_where_the_client_opens_it(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session()
    on_a = await a.get(session)
    assert on_a.status == 200
    on_b = await b.get(session)
    assert on_b.status == 200
    # The stream on A is given up for the one on B (a client has one GET stream).
    await asyncio.wait_for(on_a.content.read(), PEER_NOTICED + 5)
    assert on_a.content.at_eof()

    # A change every instance sees is announced once, on B's stream.
    events = sse_events(on_b)
    await b.call(session, tool_call("ev_add_tool", name="seen_once"))
    changed = await next_event(events, "notifications/tools/list_changed")
    assert changed[1]["method"] == "notifications/tools/list_changed"
    on_b.close()


async def test_when_redis_is_unreachable_an_unknown_session_is_503_and_a_known_one_goes_on(
    start_gateway: StartGateway,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = {"redis": {"url": dead, "timeout_seconds": 0.2}, "mcpServers": {"ev": everything()}}
    first, second = await start_gateway(settings), await start_gateway(settings)
    a, b = endpoint(first), endpoint(second)
    session = await a.open_session()  # its record cannot be written: it goes on here alone
    _, reply = await a.call(session, tool_call("ev_echo", text="still here"))
    assert text_of(reply) == "still here"
    response = await b.post(request("ping"), session)
    assert response.status == 503
    assert response.headers["Retry-After"]
    body = await response.json()
    assert "Redis" in body["error"]["message"]


async def test_a_notification_posted_anywhere_reaches_the_session(
    redis_url: str, start_gateway: StartGateway
) -> None:
    """notifications/initialized POSTed to B marks the session initialized on A as well."""
    first, second = await two_gateways(start_gateway, shared(redis_url))
    a, b = endpoint(first), endpoint(second)
    hello = {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    response = await a.post(request("initialize", hello))
    session = response.headers[SESSION]
    assert await b.status_of(session) == 200  # B has a copy now
    ack = await b.post(notification("notifications/initialized"), session)
    assert ack.status == 202
    copy_on_a = http_sessions(first)[session][0]
    await eventually(lambda: copy_on_a.initialized, what="A hears the notification")


async def test_every_key_a_shared_session_writes_expires(redis_url: str, start_gateway: StartGateway) -> None:
    a, _ = await two_instances(start_gateway, shared(redis_url))
    session = await a.open_session()
    await all_events(await a.post(tool_call("ev_slow", progress="p", seconds=0.1, steps=2), session))
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = await redis.keys("test:session:*")
        assert {k.decode().rsplit(":", 1)[1] for k in keys} == {"record", "sequence", "events"}
        for key in keys:
            assert await redis.pttl(key) > 0, key
    finally:
        await redis.aclose()


@pytest.mark.parametrize("size", [0, 1000])
async def test_the_shared_event_log_numbers_events_in_order(
    redis_url: str, start_gateway: StartGateway, size: int
) -> None:
    a, _ = await two_instances(start_gateway, shared(redis_url, listen={"event_store_size": size}))
    session = await a.open_session()
    events = await all_events(await a.post(tool_call("ev_slow", progress="p", seconds=0.1, steps=3), session))
    streams, numbers = sequences(events)
    assert len(streams) == 1 and numbers == sorted(set(numbers)) and len(numbers) == 4


async def test_an_instance_at_its_session_bound_takes_no_copy_of_another_instances_session(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url, listen={"max_sessions": 1}))
    on_b = await b.open_session()  # B is full
    from_a = await a.open_session()
    response = await b.post(request("ping"), from_a)
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert await b.status_of(on_b) == 200
    assert await a.status_of(from_a) == 200


async def test_a_resource_update_for_a_subscription_taken_elsewhere_reaches_the_stream_on_another(
    redis_url: str, start_gateway: StartGateway
) -> None:
    """The client's GET stream is on B; its subscription was taken on A, whose backend sends the update:
    A hands the update to B, which sends it on the stream. Only once, and not A's list changes."""
    first, second = await two_gateways(start_gateway, shared(redis_url))
    a, b = endpoint(first), endpoint(second)
    session = await a.open_session()
    stream = await b.get(session)
    assert stream.status == 200
    events = sse_events(stream)
    copy_on_a = http_sessions(first)[session][1]
    await eventually(lambda: not copy_on_a.keeps_unrelated, what="A hears that the stream is on B")
    _, subscribed = await a.call(session, request("resources/subscribe", {"uri": "portico://ev/memo://one"}))
    assert subscribed.get("result") == {}, subscribed
    await a.call(session, tool_call("ev_touch", uri="memo://one"))
    update = await next_event(events, "notifications/resources/updated")
    assert update[1]["params"]["uri"] == "portico://ev/memo://one"
    stream.close()
