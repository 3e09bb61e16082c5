"""Modern clients and legacy backends: a backend's questions become an InputRequiredResult, and the
client's retry (with ``inputResponses`` and the gateway's signed ``requestState``) resumes the parked call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.input_bridge import StateSigner
from tests.conftest import StartGateway, everything
from tests.rawclient import RawClient

MODERN = "2026-07-28"
CAPABLE = {"elicitation": {}, "sampling": {}}


def meta(capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": CAPABLE if capabilities is None else capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"},
    }


def tool_call(tool: str, request_id: int, **extra: Any) -> dict[str, Any]:
    arguments = extra.pop("arguments", {})
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta(), **extra},
    }


async def post(http: aiohttp.ClientSession, url: Any, message: dict[str, Any]) -> dict[str, Any]:
    """One modern POST; the reply whether it came as JSON or as the last event of an SSE stream."""
    reply, _ = await post_with_headers(http, url, message)
    return reply


async def post_with_headers(
    http: aiohttp.ClientSession, url: Any, message: dict[str, Any]
) -> tuple[dict[str, Any], Mapping[str, str]]:
    """``post``, and the response's headers (which instance of a cluster answered, say)."""
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": message["method"],
        "Mcp-Name": message["params"]["name"],
    }
    async with http.post(url, json=message, headers=headers) as response:
        if response.content_type == "text/event-stream":
            events = [
                line[5:].strip() for line in (await response.text()).splitlines() if line.startswith("data:")
            ]
            replies = [orjson.loads(e) for e in events if e]
            return next(r for r in replies if r.get("id") == message["id"]), response.headers
        reply: dict[str, Any] = await response.json()
        return reply, response.headers


def elicitation_answer(answer: str) -> dict[str, Any]:
    return {"action": "accept", "content": {"answer": answer}}


async def test_a_legacy_backends_question_round_trips_through_a_modern_http_client(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    url = gw.server.make_url("/mcp")
    first = await post(gw.http, url, tool_call("ev_ask", 1, arguments={"question": "Colour?"}))
    result = first["result"]
    assert result["resultType"] == "input_required"
    [(key, question)] = result["inputRequests"].items()
    assert question["method"] == "elicitation/create"
    assert question["params"]["message"] == "Colour?"
    state = result["requestState"]
    retry = tool_call("ev_ask", 2, inputResponses={key: elicitation_answer("blue")}, requestState=state)
    final = await post(gw.http, url, retry)
    assert final["result"]["content"][0]["text"] == "accept:blue"
    assert final["result"]["resultType"] == "complete"
    # Everything is released: no parked call, no leftover session.
    await asyncio.sleep(0.1)
    assert gw.gateway.inputs._parked == {} and gw.gateway.sessions == {}


async def test_the_same_over_a_websocket_without_a_handshake(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    first = await client.call("tools/call", tool_call("ev_sample", 0, arguments={"prompt": "hi"})["params"])
    [(key, question)] = first["inputRequests"].items()
    assert question["method"] == "sampling/createMessage"
    answer = {"role": "assistant", "content": {"type": "text", "text": "sampled"}, "model": "m"}
    retry = tool_call("ev_sample", 0, inputResponses={key: answer}, requestState=first["requestState"])
    final = await client.call("tools/call", retry["params"])
    assert final["content"][0]["text"] == "sampled"
    # The client was never sent a server-to-client request: modern clients cannot take one.
    assert client.server_requests == []


async def test_an_answer_left_out_is_asked_again(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    first = await client.call("tools/call", tool_call("ev_ask", 0, arguments={"question": "Q"})["params"])
    again = await client.call(
        "tools/call", tool_call("ev_ask", 0, inputResponses={}, requestState=first["requestState"])["params"]
    )
    assert again["resultType"] == "input_required"
    assert list(again["inputRequests"]) == list(first["inputRequests"])
    [key] = again["inputRequests"]
    done = await client.call(
        "tools/call",
        tool_call(
            "ev_ask", 0, inputResponses={key: elicitation_answer("x")}, requestState=again["requestState"]
        )["params"],
    )
    assert done["content"][0]["text"] == "accept:x"


async def test_forged_tampered_misused_and_foreign_states_are_refused(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    first = await client.call("tools/call", tool_call("ev_ask", 0, arguments={"question": "Q"})["params"])
    state: str = first["requestState"]
    [key] = first["inputRequests"]
    answers = {key: elicitation_answer("x")}
    tampered = state[:-3] + ("AAA" if not state.endswith("AAA") else "BBB")
    forged = StateSigner(b"not the gateway's secret" * 2).issue({"call": "x", "sub": "", "exp": 9e9})
    for bad in (tampered, forged, "opaque-state-from-elsewhere"):
        reply = await client.request(
            "tools/call", tool_call("ev_ask", 0, inputResponses=answers, requestState=bad)["params"]
        )
        assert reply["error"]["code"] == -32602, bad
    # A state issued for one tool does not resume a call of another.
    other = await client.request(
        "tools/call",
        tool_call("ev_echo", 0, arguments={"text": "t"}, inputResponses=answers, requestState=state)[
            "params"
        ],
    )
    assert other["error"]["code"] == -32602 and "another principal or request" in other["error"]["message"]
    # The genuine state still works after all that.
    done = await client.call(
        "tools/call", tool_call("ev_ask", 0, inputResponses=answers, requestState=state)["params"]
    )
    assert done["content"][0]["text"] == "accept:x"
    # ...once: the call it named has ended.
    replay = await client.request(
        "tools/call", tool_call("ev_ask", 0, inputResponses=answers, requestState=state)["params"]
    )
    assert replay["error"]["code"] == -32602 and "has ended" in replay["error"]["message"]


async def test_an_expired_state_is_refused_and_its_call_cancelled_upstream(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}, "request_state": {"ttl_seconds": 0.5}})
    client = await gw.client(initialize=False)
    first = await client.call("tools/call", tool_call("ev_ask", 0, arguments={"question": "Q"})["params"])
    assert gw.gateway.inputs._parked
    await asyncio.sleep(1.2)
    assert gw.gateway.inputs._parked == {}
    [key] = first["inputRequests"]
    late = await client.request(
        "tools/call",
        tool_call(
            "ev_ask", 0, inputResponses={key: elicitation_answer("x")}, requestState=first["requestState"]
        )["params"],
    )
    assert late["error"]["code"] == -32602 and "expired" in late["error"]["message"]
    assert gw.gateway.backends["ev"]._inflight == {}


async def test_a_client_without_the_capability_is_told_which_one_it_lacks(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    url = gw.server.make_url("/mcp")
    message = tool_call("ev_ask", 1, arguments={"question": "Q"})
    message["params"]["_meta"] = meta(capabilities={"sampling": {}})
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "ev_ask",
    }
    async with gw.http.post(url, json=message, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == -32021
    assert error["data"] == {"requiredCapabilities": {"elicitation": {}}}
    await asyncio.sleep(0.1)
    assert gw.gateway.inputs._parked == {} and gw.gateway.backends["ev"]._inflight == {}


async def test_questions_sent_together_come_in_one_result_and_each_round_has_its_own_state(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    first = await client.call("tools/call", tool_call("ev_ask_twice", 0)["params"])
    assert sorted(q["params"]["message"] for q in first["inputRequests"].values()) == ["first?", "second?"]
    answers = {key: elicitation_answer(q["params"]["message"]) for key, q in first["inputRequests"].items()}
    retry = tool_call("ev_ask_twice", 0, inputResponses=answers, requestState=first["requestState"])
    second = await client.call("tools/call", retry["params"])
    [(key, question)] = second["inputRequests"].items()
    assert question["params"]["message"] == "third?"
    assert second["requestState"] != first["requestState"]
    # The first round's state no longer resumes the call: it cannot be replayed.
    stale = tool_call("ev_ask_twice", 0, inputResponses=answers, requestState=first["requestState"])
    refused = await client.request("tools/call", stale["params"])
    assert refused["error"]["code"] == -32602 and "earlier round" in refused["error"]["message"]
    last = tool_call(
        "ev_ask_twice", 0, inputResponses={key: elicitation_answer("c")}, requestState=second["requestState"]
    )
    done = await client.call("tools/call", last["params"])
    assert done["content"][0]["text"] == "first?,second?,c"


@pytest.mark.parametrize("secret", ["s" * 32])
async def test_a_configured_secret_signs_the_state(start_gateway: StartGateway, secret: str) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}, "request_state": {"secret": secret}})
    client: RawClient = await gw.client(initialize=False)
    first = await client.call("tools/call", tool_call("ev_ask", 0, arguments={"question": "Q"})["params"])
    claims = StateSigner(secret.encode()).claims(first["requestState"])
    assert set(claims) == {"call", "round", "sub", "req", "exp"}
