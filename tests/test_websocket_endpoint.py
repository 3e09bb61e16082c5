"""The client-facing WebSocket endpoint, through a real gateway with a real stdio backend.

One test per promise of the endpoint: the ``mcp`` subprotocol, the legacy handshake and its version
negotiation, heartbeats, the Origin allow-list, the message-size limit, the JSON-RPC error for every kind
of bad frame (with the right id), the gating of requests before ``initialize``, duplicate ids in flight,
binary frames, ``/healthz`` and the 406 for a plain GET. Every bad frame is followed by a good call on the
same session, because a gateway that answers correctly and then stops serving is still broken.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningGateway, StartGateway, everything
from tests.rawclient import CLIENT_INFO, RawClient

ECHO = "everything_echo"
WHOAMI = "everything_whoami"
SLOW = "everything_slow"
LATEST = "2025-11-25"
SUPPORTED_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")


async def start(start_gateway: StartGateway, **listen: Any) -> RunningGateway:
    settings: dict[str, Any] = {"mcpServers": {"everything": everything("endpoint")}}
    if listen:
        settings["listen"] = listen
    return await start_gateway(settings)


def http_url(gw: RunningGateway, path: str) -> str:
    return str(gw.server.make_url(path))


def initialize_params(version: str = LATEST) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT_INFO}


async def echo(client: RawClient, text: str) -> str:
    result = await client.call("tools/call", {"name": ECHO, "arguments": {"text": text}}, timeout=5.0)
    assert not result.get("isError"), result
    content = result["content"]
    assert isinstance(content, list) and len(content) == 1, result
    text_back: str = content[0]["text"]
    return text_back


async def assert_usable(client: RawClient, marker: str) -> None:
    """The session still serves: a real call reaches the backend and comes back intact."""
    try:
        text = await echo(client, marker)
    except TimeoutError:
        pytest.fail(f"no answer {marker}: connection closed={client.ws.closed}, code={client.ws.close_code}")
    assert text == marker


async def whoami(client: RawClient) -> tuple[str, int]:
    """The backend's process id and how many whoami calls that process has served so far."""
    result = await client.call("tools/call", {"name": WHOAMI, "arguments": {}})
    tag, pid, count = result["content"][0]["text"].split(":")
    assert tag == "endpoint"
    return pid, int(count)


async def exchange(client: RawClient, frame: str | bytes) -> dict[str, Any]:
    """Send one raw frame and return the one reply it earns."""
    await client.send_raw(frame)
    return await client.next_frame()


def assert_error(reply: dict[str, Any], request_id: Any, code: int) -> None:
    assert reply.get("jsonrpc") == "2.0", reply
    assert "result" not in reply, reply
    assert "id" in reply and reply["id"] == request_id and type(reply["id"]) is type(request_id), reply
    error = reply["error"]
    assert error["code"] == code, reply
    assert isinstance(error["message"], str) and error["message"], reply


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# -- the upgrade -------------------------------------------------------------------------------------------


async def test_the_mcp_subprotocol_is_echoed(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    only_mcp = await gw.client()
    assert only_mcp.ws.protocol == "mcp"
    await assert_usable(only_mcp, "over mcp")
    # A client offering several subprotocols gets mcp, the one the gateway speaks.
    ws = await gw.http.ws_connect(gw.url, protocols=("something-else", "mcp"))
    try:
        assert ws.protocol == "mcp"
    finally:
        await ws.close()


async def test_healthz_answers_200(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    async with gw.http.get(http_url(gw, "/healthz")) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_a_plain_get_on_mcp_is_not_acceptable_and_opens_nothing(start_gateway: StartGateway) -> None:
    # /mcp also serves Streamable HTTP, whose GET needs Accept: text/event-stream and a session.
    gw = await start(start_gateway)
    async with gw.http.get(http_url(gw, "/mcp"), headers={"Accept": "application/json"}) as response:
        assert response.status == 406
        assert (await response.json())["error"]["code"] == -32600
    assert gw.gateway.sessions == {}


# -- the handshake -----------------------------------------------------------------------------------------


async def test_initialize_negotiates_every_supported_version(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    for version in SUPPORTED_VERSIONS:
        client = await gw.client(initialize=False)
        result = await client.call("initialize", initialize_params(version))
        assert result["protocolVersion"] == version
        await client.notify("notifications/initialized")
        await assert_usable(client, f"speaking {version}")


async def test_an_unknown_version_gets_the_latest(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    for requested in ("1999-01-01", "2025-11-26", "2024-11-5", "latest", ""):
        client = await gw.client(initialize=False)
        result = await client.call("initialize", initialize_params(requested))
        assert result["protocolVersion"] == LATEST, requested
        await assert_usable(client, f"after asking for {requested!r}")


async def test_initialize_returns_the_backends_capabilities(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client(initialize=False)
    result = await client.call("initialize", initialize_params())
    caps = result["capabilities"]
    # The everything fixture offers tools, prompts, subscribable resources, logging and completions.
    assert caps["tools"] == {"listChanged": True}
    assert caps["prompts"] == {"listChanged": True}
    assert caps["resources"] == {"listChanged": True, "subscribe": True}
    assert caps["logging"] == {}
    assert caps["completions"] == {}
    assert result["serverInfo"]["name"] == "portico"
    assert isinstance(result["serverInfo"]["version"], str)
    assert "Test fixture server exercising every MCP feature." in result["instructions"]


async def test_heartbeat_pings_keep_live_clients_and_drop_dead_ones(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway, heartbeat_seconds=0.2)
    live = await gw.client()  # aiohttp answers pings itself
    dead = await gw.http.ws_connect(gw.url, protocols=("mcp",), autoping=False)
    try:
        first = await dead.receive(timeout=2.0)
        assert first.type is aiohttp.WSMsgType.PING
        # It never answers, so the gateway gives up on it and closes its session.
        async with asyncio.timeout(3.0):
            while not dead.closed:
                message = await dead.receive()
                assert message.type in (
                    aiohttp.WSMsgType.PING, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ), message
        await wait_for(lambda: len(gw.gateway.sessions) == 1)
    finally:
        await dead.close()
    # The live client, answering every ping, is still served after many heartbeat periods.
    await asyncio.sleep(1.0)
    await assert_usable(live, "alive")


# -- origins -----------------------------------------------------------------------------------------------


async def origin_is_allowed(gw: RunningGateway, origin: str | None) -> bool:
    headers = {} if origin is None else {"Origin": origin}
    try:
        client = await gw.client(initialize=False, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403, (origin, exc)
        return False
    result = await client.call("initialize", initialize_params())
    assert result["protocolVersion"] == LATEST
    await assert_usable(client, f"from {origin}")
    await client.close()
    return True


LOCAL_ORIGINS = [
    None,
    "http://localhost:3000",
    "http://localhost",
    "https://localhost:8443",
    "http://127.0.0.1",
    "http://127.0.0.1:5173",
    "http://[::1]:8080",
]
FOREIGN_ORIGINS = [
    "http://evil.example",
    "https://evil.example:3000",
    "http://localhost.evil.example",
    "http://127.0.0.1.evil.example",
    "http://localhost@evil.example",
    "null",
]


async def test_localhost_origins_and_no_origin_are_allowed(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    for origin in LOCAL_ORIGINS:
        assert await origin_is_allowed(gw, origin), origin


async def test_foreign_origins_get_403_and_no_upgrade(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    for origin in FOREIGN_ORIGINS:
        assert not await origin_is_allowed(gw, origin), origin
    # Also as a plain HTTP exchange: a 403, and no 101 Switching Protocols.
    headers = {
        "Origin": "http://evil.example",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": "mcp",
    }
    async with gw.http.get(http_url(gw, "/mcp"), headers=headers) as response:
        assert response.status == 403
        assert "Sec-WebSocket-Accept" not in response.headers
    assert gw.gateway.sessions == {}


async def test_allowed_origins_adds_origins(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway, allowed_origins=["https://app.example.com", "http://evil.example"])
    assert await origin_is_allowed(gw, "https://app.example.com")
    assert await origin_is_allowed(gw, "http://evil.example")
    # Listing some origins neither opens the door to others nor closes it to localhost.
    assert not await origin_is_allowed(gw, "https://other.example.com")
    assert not await origin_is_allowed(gw, "http://app.example.com")
    assert await origin_is_allowed(gw, "http://localhost:3000")
    assert await origin_is_allowed(gw, None)


# -- the size limit ----------------------------------------------------------------------------------------


async def test_an_oversized_frame_closes_with_1009_and_is_not_forwarded(start_gateway: StartGateway) -> None:
    limit = 2048
    gw = await start(start_gateway, max_message_bytes=limit)
    observer = await gw.client()
    pid, before = await whoami(observer)

    def padded_whoami(request_id: str, size: int) -> str:
        meta = {"pad": ""}
        frame = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                 "params": {"name": WHOAMI, "arguments": {}, "_meta": meta}}
        meta["pad"] = "x" * (size - len(json.dumps(frame, separators=(",", ":")).encode()))
        text = json.dumps(frame, separators=(",", ":"))
        assert len(text.encode()) == size
        return text

    sender = await gw.client()
    # Control: the same call just under the limit is forwarded and counted, so the counter can tell.
    reply = await exchange(sender, padded_whoami("fits", limit - 16))
    assert reply["id"] == "fits" and reply["result"]["content"][0]["text"] == f"endpoint:{pid}:{before + 1}"

    await sender.send_raw(padded_whoami("too-big", limit + 1))
    await wait_for(lambda: sender.ws.closed)
    assert sender.ws.close_code == 1009
    assert sender.unmatched == []
    await asyncio.sleep(0.3)  # time enough for a wrongly forwarded call to be served

    fresh = await gw.client()
    assert await whoami(fresh) == (pid, before + 2)  # the control call and this one, nothing else
    await wait_for(lambda: len(gw.gateway.sessions) == 2)  # the closed session is gone
    await assert_usable(observer, "others unaffected")


# -- bad frames and their errors ---------------------------------------------------------------------------


MALFORMED_JSON = [
    "",
    " ",
    "{",
    '{"jsonrpc": "2.0", "id": 1, "method": "ping"',
    '{"jsonrpc": "2.0", "id": 1, "method": "ping"} trailing',
    '{"jsonrpc": "2.0", "id": 1, "method": "ping"}{"jsonrpc": "2.0", "id": 2, "method": "ping"}',
    "{'jsonrpc': '2.0', 'id': 1, 'method': 'ping'}",
    '{"jsonrpc": "2.0", "id": 1, "method": "ping",}',
    "NaN",
    "undefined",
    "not json at all",
    "\x00",
]


async def test_malformed_json_gets_parse_error_with_null_id(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    for index, frame in enumerate(MALFORMED_JSON):
        assert_error(await exchange(client, frame), None, -32700)
        await assert_usable(client, f"after malformed frame {index}")


INVALID_REQUESTS: list[tuple[Any, Any]] = [
    # (message, the id the error must carry)
    ({"id": 1, "method": "ping"}, 1),
    ({"jsonrpc": "1.0", "id": "a", "method": "ping"}, "a"),
    ({"jsonrpc": 2.0, "id": 7, "method": "ping"}, 7),
    ({"jsonrpc": "2.0", "id": 8, "method": 42}, 8),
    ({"jsonrpc": "2.0", "id": "m", "method": None}, "m"),
    ({"jsonrpc": "2.0", "id": 9, "method": ["tools/list"]}, 9),
    ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": False, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": 2.0, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": None, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": {"n": 1}, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": 10}, 10),
    ({"jsonrpc": "2.0", "id": 11, "result": {}, "error": {"code": 1, "message": "both"}}, 11),
    ({"jsonrpc": "2.0"}, None),
    ({}, None),
    ([], None),
    ([{"jsonrpc": "2.0", "id": 12, "method": "ping"}], None),
    ([[[]]], None),
    ("a string", None),
    (42, None),
    (None, None),
    (True, None),
]


async def test_invalid_requests_get_32600_with_their_id(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    for index, (message, expected_id) in enumerate(INVALID_REQUESTS):
        reply = await exchange(client, json.dumps(message))
        assert_error(reply, expected_id, -32600)
        await assert_usable(client, f"after invalid request {index}")


async def test_an_unknown_method_gets_32601_with_its_id(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    for request_id, method in [(1, "no/such/method"), ("s", "tools/delete"), (0, "notifications/initialized"),
                               (-5, "Ping"), ("x", "tools/list/")]:
        frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}})
        assert_error(await exchange(client, frame), request_id, -32601)
        await assert_usable(client, f"after unknown method {method}")


async def test_params_that_are_not_an_object_get_32600(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    for request_id, params in [(1, []), (2, [ECHO, {"text": "x"}]), ("three", "params"), (4, 4), (5, None),
                               (6, True)]:
        frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        assert_error(await exchange(client, frame), request_id, -32600)
        await assert_usable(client, f"after params {params!r}")


async def test_an_unknown_tool_gets_32602_with_its_id(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    for request_id, params in [(1, {"name": "no_such_tool"}), ("x", {"name": "echo", "arguments": {}}),
                               (3, {}), (4, {"name": 17})]:
        frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        assert_error(await exchange(client, frame), request_id, -32602)
        await assert_usable(client, f"after params {params!r}")


async def test_requests_before_initialize_get_32600_and_reach_no_backend(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    observer = await gw.client()
    pid, before = await whoami(observer)

    early = await gw.client(initialize=False)
    for request_id, method, params in [
        (1, "tools/call", {"name": WHOAMI, "arguments": {}}),
        ("list", "tools/list", {}),
        (3, "resources/read", {"uri": "portico://everything/memo://one"}),
        (4, "logging/setLevel", {"level": "debug"}),
        (5, "no/such/method", {}),
    ]:
        frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        assert_error(await exchange(early, frame), request_id, -32600)
    # A notification before initialize has nothing to answer, and breaks nothing.
    await early.notify("notifications/initialized")

    assert await whoami(observer) == (pid, before + 1)  # the early tools/call never ran
    result = await early.call("initialize", initialize_params())
    assert result["protocolVersion"] == LATEST
    tools = await early.call("tools/list")
    assert ECHO in {tool["name"] for tool in tools["tools"]}
    await assert_usable(early, "initialized at last")


async def test_ping_is_answered_before_initialize(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client(initialize=False)
    for request_id in (1, "p", 0):
        reply = await client.request("ping", id=request_id)
        assert reply == {"jsonrpc": "2.0", "id": request_id, "result": {}}
    reply = await client.request("ping", {"_meta": {"x": 1}}, id="with-params")
    assert reply == {"jsonrpc": "2.0", "id": "with-params", "result": {}}
    # Pinging did not count as initializing.
    assert_error(await exchange(client, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})),
                 2, -32600)


async def test_initialize_twice_is_refused(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    frame = json.dumps({"jsonrpc": "2.0", "id": "again", "method": "initialize",
                        "params": initialize_params("2024-11-05")})
    assert_error(await exchange(client, frame), "again", -32600)
    await assert_usable(client, "still on the first handshake")


async def test_a_duplicate_id_in_flight_gets_32600(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    slow = {"jsonrpc": "2.0", "id": "dup", "method": "tools/call",
            "params": {"name": SLOW, "arguments": {"seconds": 1.0, "steps": 1}}}
    second = {"jsonrpc": "2.0", "id": "dup", "method": "tools/call",
              "params": {"name": ECHO, "arguments": {"text": "second"}}}
    await client.send_raw(json.dumps(slow))
    await client.send_raw(json.dumps(second))
    refusal = await client.next_frame(timeout=0.9)  # before the slow call could have finished
    assert_error(refusal, "dup", -32600)
    done = await client.next_frame(timeout=5.0)
    assert done["id"] == "dup"
    assert done["result"]["content"][0]["text"] == "done"  # the first call's reply, not "second"
    # Exactly those two replies for "dup": a round trip later nothing else has come.
    await assert_usable(client, "after the duplicate")
    assert client.unmatched == []
    # Once the first request has been answered, its id is free again.
    reply = await client.request("ping", id="dup")
    assert reply == {"jsonrpc": "2.0", "id": "dup", "result": {}}


async def test_a_binary_frame_gets_32600_and_is_not_processed(start_gateway: StartGateway) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    pid, before = await whoami(client)
    call = json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                       "params": {"name": WHOAMI, "arguments": {}}}).encode()
    for frame in (call, b"", b"\xff\xfe\x00garbage", json.dumps({"jsonrpc": "2.0", "id": 5,
                                                               "method": "ping"}).encode()):
        reply = await exchange(client, frame)
        assert reply.get("error", {}).get("code") == -32600, reply
        assert reply["id"] in (None, 99, 5), reply
        await assert_usable(client, f"after binary {frame[:10]!r}")
    assert await whoami(client) == (pid, before + 1)  # the binary tools/call never ran
    assert client.unmatched == []


BAD_FRAMES = [
    "}{",
    "[]",
    "[[[[[[[[[[]]]]]]]]]]",
    "[" * 5000 + "]" * 5000,
    '{"a":' * 5000 + "1" + "}" * 5000,
    json.dumps({"jsonrpc": "2.0", "method": 5}),
    json.dumps({"jsonrpc": "2.0", "method": "notifications/whatever", "params": []}),
    json.dumps({"jsonrpc": "2.0", "id": 12345, "result": {}}),
    json.dumps({"jsonrpc": "2.0", "id": "nobody-asked", "error": {"code": -1, "message": "no"}}),
    json.dumps({"jsonrpc": "2.0", "id": None, "result": {}}),
    json.dumps({"jsonrpc": "2.0", "id": 3, "error": "not an object"}),
    json.dumps({"jsonrpc": "2.0", "id": {"an": "object"}, "error": {"code": 1, "message": "x"}}),
    json.dumps({"jsonrpc": "2.0", "id": ["an", "array"], "error": {"code": 1, "message": "x"}}),
    json.dumps({"jsonrpc": "2.0", "id": {"an": "object"}, "result": {}}),
    json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"x": 1}}}),
    json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": [1]}}),
    json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": "nope"}),
]


@pytest.mark.parametrize("frame", BAD_FRAMES, ids=lambda frame: frame[:40])
async def test_the_session_survives_every_kind_of_bad_frame(start_gateway: StartGateway, frame: str) -> None:
    gw = await start(start_gateway)
    client = await gw.client()
    await client.send_raw(frame)
    # Whatever the frame earned (an error, or nothing for a response or a notification), the same session
    # still serves a real call, and the gateway still holds it.
    await assert_usable(client, "after a bad frame")
    assert not client.ws.closed
    assert len(gw.gateway.sessions) == 1
    for reply in client.unmatched:
        assert "error" in reply and reply["error"]["code"] in (-32700, -32600), reply
        # Responses (to ids the gateway never used) are not answered; a malformed one may be.
        assert reply["id"] in (None, 3), reply
