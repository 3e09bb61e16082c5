"""A modern client's retry that reaches another gateway instance than the one holding its parked call.

Two real gateways (each with its own legacy backend) and one real redis-server: the call is parked on the
first (its backend asked for input), the retry goes to the second, which carries it to the first through
Redis and answers with the outcome, as if the call had been its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis import asyncio as aioredis

from proxy.input_bridge import StateSigner
from proxy.parked_relay import ParkedRelay
from tests.conftest import RunningGateway, StartGateway, everything
from tests.redis_server import RedisServer
from tests.test_input_bridge import elicitation_answer, post, tool_call

SECRET = "a secret every instance shares, 32+"
PREFIX = "test"
INVALID_PARAMS = -32602


def shared(redis_url: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url, "key_prefix": PREFIX},
        "request_state": {"secret": SECRET},
        "mcpServers": {"ev": everything()},
    }


def relay_of(gw: RunningGateway) -> ParkedRelay:
    relay = gw.gateway.inputs.relay
    assert relay is not None
    return relay


async def two_instances(start_gateway: StartGateway, settings: dict[str, Any]) -> list[RunningGateway]:
    instances = [await start_gateway(settings), await start_gateway(settings)]
    for gw in instances:
        await asyncio.wait_for(relay_of(gw).listener.subscribed.wait(), 5)
    return instances


def mcp(gw: RunningGateway) -> Any:
    return gw.server.make_url("/mcp")


async def test_a_retry_on_another_instance_resumes_the_call_parked_on_the_first(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    first = (await post(a.http, mcp(a), tool_call("ev_ask_twice", 1)))["result"]
    assert first["resultType"] == "input_required"
    assert StateSigner(SECRET.encode()).claims(first["requestState"])["at"] == relay_of(a).instance
    answers = {key: elicitation_answer(q["params"]["message"]) for key, q in first["inputRequests"].items()}

    # The next round comes back through the other instance, still naming the first as the call's holder.
    retry = tool_call("ev_ask_twice", 2, inputResponses=answers, requestState=first["requestState"])
    second = (await post(b.http, mcp(b), retry))["result"]
    assert second["resultType"] == "input_required"
    [(key, question)] = second["inputRequests"].items()
    assert question["params"]["message"] == "third?"
    assert StateSigner(SECRET.encode()).claims(second["requestState"])["at"] == relay_of(a).instance
    assert b.gateway.inputs._parked == {} and len(a.gateway.inputs._parked) == 1

    # The holder's refusals come back too: the first round's state no longer resumes the call.
    stale = tool_call("ev_ask_twice", 3, inputResponses=answers, requestState=first["requestState"])
    refused = await post(b.http, mcp(b), stale)
    assert refused["error"]["code"] == INVALID_PARAMS and "earlier round" in refused["error"]["message"]

    last = tool_call(
        "ev_ask_twice", 4, inputResponses={key: elicitation_answer("c")}, requestState=second["requestState"]
    )
    done = await post(b.http, mcp(b), last)
    assert done["id"] == 4
    assert done["result"]["content"][0]["text"] == "first?,second?,c"
    assert done["result"]["resultType"] == "complete"
    await asyncio.sleep(0.1)
    assert a.gateway.inputs._parked == {} and a.gateway.sessions == {}


async def test_a_sampling_answer_over_a_websocket_to_the_other_instance(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    on_a, on_b = await a.client(initialize=False), await b.client(initialize=False)
    first = await on_a.call("tools/call", tool_call("ev_sample", 0, arguments={"prompt": "hi"})["params"])
    [key] = first["inputRequests"]
    answer = {"role": "assistant", "content": {"type": "text", "text": "sampled on a"}, "model": "m"}
    retry = tool_call("ev_sample", 0, inputResponses={key: answer}, requestState=first["requestState"])
    final = await on_b.call("tools/call", retry["params"])
    assert final["content"][0]["text"] == "sampled on a"
    assert on_a.server_requests == [] and on_b.server_requests == []


async def test_states_that_fail_the_checks_are_refused_where_they_arrive_and_never_forwarded(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    first = (await post(a.http, mcp(a), tool_call("ev_ask", 1, arguments={"question": "Q"})))["result"]
    state: str = first["requestState"]
    [key] = first["inputRequests"]
    answers = {key: elicitation_answer("x")}
    claims = StateSigner(SECRET.encode()).claims(state)
    forged = StateSigner(b"not the instances' shared secret!").issue(claims)
    tampered = state[:-3] + ("AAA" if not state.endswith("AAA") else "BBB")
    expired = StateSigner(SECRET.encode()).issue({**claims, "exp": int(time.time()) - 1})

    redis = aioredis.Redis.from_url(redis_url)
    async with redis.pubsub() as relayed:
        await relayed.psubscribe(f"{PREFIX}:instance:*")
        for n, (bad, why) in enumerate(
            [
                (forged, "not issued by this gateway"),
                (tampered, "not issued by this gateway"),
                (expired, "expired"),
            ]
        ):
            reply = await post(
                b.http, mcp(b), tool_call("ev_ask", n, inputResponses=answers, requestState=bad)
            )
            assert reply["error"]["code"] == INVALID_PARAMS and why in reply["error"]["message"], reply
        # A genuine state, for another tool than the one it was issued for.
        other = tool_call("ev_echo", 9, arguments={"text": "t"}, inputResponses=answers, requestState=state)
        reply = await post(b.http, mcp(b), other)
        assert "another principal or request" in reply["error"]["message"]
        assert await _messages(relayed) == []

        # The genuine retry is carried over: one request to the holder, one outcome back.
        done = await post(b.http, mcp(b), tool_call("ev_ask", 10, inputResponses=answers, requestState=state))
        assert done["result"]["content"][0]["text"] == "accept:x"
        heard = await _messages(relayed)
        assert [channel for channel, _ in heard] == [
            f"{PREFIX}:instance:{relay_of(a).instance}",
            f"{PREFIX}:instance:{relay_of(b).instance}",
        ]
        await relayed.punsubscribe()
    await redis.aclose()


async def _messages(pubsub: Any) -> list[tuple[str, bytes]]:
    """What the pattern subscription heard so far."""
    heard = []
    while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)) is not None:
        heard.append((message["channel"].decode(), message["data"]))
    return heard


async def test_a_retry_for_an_instance_that_has_stopped_is_told_the_call_has_ended(
    redis_url: str, start_gateway: StartGateway
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    first = (await post(a.http, mcp(a), tool_call("ev_ask_twice", 1)))["result"]
    answers = {key: elicitation_answer("x") for key in first["inputRequests"]}
    retry = tool_call("ev_ask_twice", 2, inputResponses=answers, requestState=first["requestState"])
    second = (await post(b.http, mcp(b), retry))["result"]
    assert second["resultType"] == "input_required"  # carried to the first instance and back
    await a.server.close()  # the instance stops: its parked call and its channel go with it

    [key] = second["inputRequests"]
    last = tool_call(
        "ev_ask_twice", 3, inputResponses={key: elicitation_answer("y")}, requestState=second["requestState"]
    )
    # Told at once (nobody follows the holder's channel), not at the request's 60 s deadline.
    reply = await asyncio.wait_for(post(b.http, mcp(b), last), 5)
    assert reply["error"]["code"] == INVALID_PARAMS
    assert "the call this requestState resumes has ended; send it again" in reply["error"]["message"]


async def test_a_retry_that_redis_cannot_carry_gets_a_clear_error(start_gateway: StartGateway) -> None:
    async with RedisServer() as redis:
        a, b = await two_instances(start_gateway, shared(redis.url))
        first = (await post(a.http, mcp(a), tool_call("ev_ask", 1, arguments={"question": "Q"})))["result"]
    [key] = first["inputRequests"]  # Redis has stopped

    retry = tool_call(
        "ev_ask", 2, inputResponses={key: elicitation_answer("x")}, requestState=first["requestState"]
    )
    reply = await asyncio.wait_for(post(b.http, mcp(b), retry), 5)
    assert reply["error"]["code"] == -32050
    assert (
        "instance holding the call this requestState resumes cannot be reached" in reply["error"]["message"]
    )
    # The call is still parked where it was: a retry that reaches that instance completes it.
    done = await post(a.http, mcp(a), retry)
    assert done["result"]["content"][0]["text"] == "accept:x"


async def test_malformed_messages_on_an_instances_channel_are_ignored_without_a_traceback(
    redis_url: str, start_gateway: StartGateway, caplog: Any
) -> None:
    a, b = await two_instances(start_gateway, shared(redis_url))
    first = (await post(a.http, mcp(a), tool_call("ev_ask", 1, arguments={"question": "Q"})))["result"]
    channel = f"{PREFIX}:instance:{relay_of(a).instance}"
    redis = aioredis.Redis.from_url(redis_url)
    junk: list[Any] = [
        b"not json",
        [1, 2],
        {"kind": "outcome", "id": ["unhashable"]},
        {"kind": "resume", "id": "no-fields"},
        {
            "kind": "resume",
            "id": "wrong-types",
            "state": 1,
            "principal": 2,
            "binding": 3,
            "reply_to": 4,
            "seconds": 5,
        },
    ]
    for message in junk:
        assert (
            await redis.publish(channel, message if isinstance(message, bytes) else orjson.dumps(message))
            == 1
        )
    await redis.aclose()

    [key] = first["inputRequests"]
    retry = tool_call(
        "ev_ask", 2, inputResponses={key: elicitation_answer("x")}, requestState=first["requestState"]
    )
    done = await post(b.http, mcp(b), retry)
    assert done["result"]["content"][0]["text"] == "accept:x"
    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == len(junk)
    assert not [r for r in caplog.records if r.exc_info is not None]
