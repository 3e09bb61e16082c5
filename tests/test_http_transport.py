"""Streamable HTTP at ``/mcp`` (the legacy session era, 2025-03-26 .. 2025-11-25), on the wire.

Raw aiohttp requests against a real gateway with the everything fixture as its backend, so every status,
header and SSE event is the one a client sees. One test (or a few) per clause of the contract in
``proxy/transports/http.py``, plus the official mcp SDK client as an interoperability check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from yarl import URL

from proxy import jsonrpc
from proxy.transports.http import HTTP_SESSIONS
from tests.conftest import RunningGateway, StartGateway, everything

ROOT = Path(__file__).resolve().parent.parent
SESSION = "Mcp-Session-Id"
VERSION = "MCP-Protocol-Version"
LATEST = "2025-11-25"
VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
JSON_AND_SSE = "application/json, text/event-stream"
POST_HEADERS = {"Content-Type": "application/json", "Accept": JSON_AND_SSE}
CLIENT_INFO = {"name": "portico-http-tests", "version": "1.0"}
EVENT_ID = re.compile(r"^(\d+)-(\d+)$")
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
Message = dict[str, Any]
Event = tuple[str | None, Any]

# The gateway notices an SSE client that went away within a second (it polls the connection), so a client
# that reconnects after this long must find its old stream gone.
PEER_NOTICED = 1.5

_ids = itertools.count(1)


# -- a small raw client ------------------------------------------------------------------------------------


def request(method: str, params: dict[str, Any] | None = None, request_id: Any = None) -> Message:
    return jsonrpc.request(next(_ids) if request_id is None else request_id, method, params)


notification = jsonrpc.notification


def tool_call(tool: str, /, request_id: Any = None, progress: str | None = None, **arguments: Any) -> Message:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if progress is not None:
        params["_meta"] = {"progressToken": progress}
    return request("tools/call", params, request_id)


def initialize_params(capabilities: dict[str, Any] | None = None, version: str = LATEST) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": capabilities or {}, "clientInfo": CLIENT_INFO}


def text_of(reply: Message) -> str:
    assert "result" in reply, reply
    return "".join(c.get("text", "") for c in reply["result"]["content"])


def is_reply(message: Any) -> bool:
    return (
        isinstance(message, dict) and "method" not in message and ("result" in message or "error" in message)
    )


def assert_rpc_error(body: Any, code: int, request_id: Any = None) -> None:
    """A JSON-RPC error response with that code and id (null when the request had no usable id)."""
    assert isinstance(body, dict), body
    assert body.get("jsonrpc") == "2.0", body
    assert "result" not in body, body
    assert body["id"] == request_id and type(body["id"]) is type(request_id), body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


class SseEvents:
    """The (id, parsed data) events of an SSE response, as they arrive, until the stream ends.

    A plain iterator rather than an async generator: one abandoned by a failing test has nothing to
    finalize when the garbage collector finds it.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    def __aiter__(self) -> SseEvents:
        return self

    async def __anext__(self) -> Event:
        event_id: str | None = None
        data: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:  # the end of the stream
                if data:
                    return event_id, json.loads("\n".join(data))
                raise StopAsyncIteration
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    return event_id, json.loads("\n".join(data))
                event_id, data = None, []
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def sse_events(response: aiohttp.ClientResponse) -> SseEvents:
    return SseEvents(response)


async def all_events(response: aiohttp.ClientResponse, timeout: float = 15.0) -> list[Event]:
    """Every event of an SSE response up to the end of the stream."""
    assert response.content_type == "text/event-stream", response.content_type
    async with asyncio.timeout(timeout):
        return [event async for event in sse_events(response)]


async def next_event(events: AsyncIterator[Event], method: str, timeout: float = 10.0) -> Event:
    """The next event carrying a message with ``method`` (skipping others) on an open stream."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if isinstance(event[1], dict) and event[1].get("method") == method:
                return event
    raise AssertionError(f"the stream ended before {method}")


def sequences(events: list[Event]) -> tuple[set[int], list[int]]:
    """The stream numbers and the sequence numbers of events whose ids have the form ``S-N``."""
    streams: set[int] = set()
    numbers: list[int] = []
    for event_id, _ in events:
        match = EVENT_ID.match(event_id or "")
        assert match is not None, event_id
        streams.add(int(match[1]))
        numbers.append(int(match[2]))
    return streams, numbers


@dataclass
class Endpoint:
    """The gateway's ``/mcp`` seen through one aiohttp client session."""

    http: aiohttp.ClientSession
    url: URL

    async def post(
        self,
        message: Any = None,
        session: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> aiohttp.ClientResponse:
        sent = {**POST_HEADERS, **({SESSION: session} if session else {}), **(headers or {})}
        body = data if data is not None else json.dumps(message).encode()
        return await self.http.post(self.url, data=body, headers=sent)

    async def get(
        self, session: str | None = None, *, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        sent = {"Accept": "text/event-stream", **({SESSION: session} if session else {}), **(headers or {})}
        return await self.http.get(self.url, headers=sent)

    async def delete(
        self, session: str | None = None, *, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        sent = {**({SESSION: session} if session else {}), **(headers or {})}
        return await self.http.delete(self.url, headers=sent)

    async def open_session(self, capabilities: dict[str, Any] | None = None) -> str:
        """initialize + notifications/initialized; the session id the gateway minted."""
        response = await self.post(request("initialize", initialize_params(capabilities)))
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        body = await response.json()
        assert body["result"]["protocolVersion"] == LATEST, body
        session = response.headers[SESSION]
        ack = await self.post(notification("notifications/initialized"), session)
        assert ack.status == 202, await ack.text()
        return session

    async def call(
        self, session: str, message: Message, timeout: float = 15.0
    ) -> tuple[list[Event], Message]:
        """POST a request; the events sent before the reply (if it came as a stream) and the reply."""
        response = await self.post(message, session)
        assert response.status == 200, await response.text()
        assert response.headers.get(SESSION) == session
        if response.content_type == "application/json":
            return [], await response.json()
        events = await all_events(response, timeout)
        assert events and is_reply(events[-1][1]), events
        assert not any(is_reply(m) for _, m in events[:-1]), events
        reply: Message = events[-1][1]
        assert reply["id"] == message["id"], (message, reply)
        return events[:-1], reply

    async def status_of(self, session: str) -> int:
        """What a ping in that session gets: 200 while it lives, 404 once it has ended."""
        response = await self.post(request("ping"), session)
        await response.read()
        return response.status


def endpoint(gw: RunningGateway) -> Endpoint:
    return Endpoint(gw.http, gw.server.make_url("/mcp"))


def http_sessions(gw: RunningGateway) -> dict[str, Any]:
    return gw.server.app[HTTP_SESSIONS].clients


async def eventually(condition: Any, timeout: float = 5.0, what: str = "the condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"waited {timeout} s for {what} in vain") from None


@contextlib.asynccontextmanager
async def background(work: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``work`` as a task for the length of the block; whatever becomes of it, it is reaped on exit."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def ends(pending: asyncio.Task[aiohttp.ClientResponse], what: str) -> None:
    """The response ``pending`` waits for arrives, whole, within a few seconds (or the server hangs up)."""
    done, _ = await asyncio.wait({pending}, timeout=5)
    assert done, f"{what} never ended"
    with contextlib.suppress(aiohttp.ClientError):
        await asyncio.wait_for(pending.result().read(), 5)


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@contextlib.asynccontextmanager
async def cli_gateway(workdir: Path, settings: dict[str, Any]) -> AsyncIterator[str]:
    """``python -m proxy serve --port 0`` as an operator runs it; yields the http URL of its /mcp."""
    config_path = workdir / "portico-cli.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    with (workdir / "cli-stderr.txt").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config_path), "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        found = re.search(r"ws://(\S+)/mcp", line)
        assert found, f"no URL printed: {line!r} {(workdir / 'cli-stderr.txt').read_text()}"
        yield f"http://{found[1]}/mcp"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await asyncio.wait_for(process.wait(), 15)


@contextlib.asynccontextmanager
async def serving(
    server: str, start_gateway: StartGateway, workdir: Path, settings: dict[str, Any]
) -> AsyncIterator[Endpoint]:
    """The endpoint of a gateway in this process (the test fixture) or of one run by the CLI.

    They differ in one way that matters here: aiohttp's TestServer cancels a request handler whose client
    disconnects (``handler_cancellation=True``), the CLI's AppRunner does not.
    """
    if server == "in-process":
        yield endpoint(await start_gateway(settings))
        return
    async with cli_gateway(workdir, settings) as url, aiohttp.ClientSession() as http:
        yield Endpoint(http, URL(url))


# -- POST: JSON or a stream --------------------------------------------------------------------------------


async def test_a_request_gets_json_and_notifications_and_responses_get_202(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()

    echo = tool_call("ev_echo", text="plain")
    response = await mcp.post(echo, session)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers[SESSION] == session
    reply = await response.json()
    assert reply["id"] == echo["id"] and text_of(reply) == "plain"

    for message in (
        notification("notifications/roots/list_changed"),
        {"jsonrpc": "2.0", "id": 4242, "result": {}},  # a response to nothing the gateway asked
        {"jsonrpc": "2.0", "id": 4243, "error": {"code": -1, "message": "no"}},
    ):
        response = await mcp.post(message, session)
        assert response.status == 202, (message, await response.text())
        assert await response.read() == b"", message
    assert (await mcp.call(session, request("ping")))[1]["result"] == {}


async def test_progress_makes_the_answer_an_sse_stream_that_ends_with_the_reply(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()

    slow = tool_call("ev_slow", progress="tok-1", seconds=0.3, steps=3)
    response = await mcp.post(slow, session)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.headers[SESSION] == session
    events = await all_events(response)
    assert [m.get("method") for _, m in events] == ["notifications/progress"] * 3 + [None]
    assert [m["params"]["progress"] for _, m in events[:3]] == [1, 2, 3]
    assert all(m["params"]["progressToken"] == "tok-1" for _, m in events[:3])
    assert events[-1][1]["id"] == slow["id"] and text_of(events[-1][1]) == "done"
    streams, numbers = sequences(events)
    assert len(streams) == 1 and numbers == sorted(set(numbers)), events

    # Without a progress token nothing precedes the reply: plain JSON.
    progress, reply = await mcp.call(session, tool_call("ev_slow", seconds=0.1, steps=2))
    assert progress == [] and text_of(reply) == "done"


@pytest.mark.parametrize(
    ("capability", "tool", "arguments", "method", "answer", "expected"),
    [
        ("sampling", "ev_sample", {"prompt": "hi"}, "sampling/createMessage",
         {"role": "assistant", "content": {"type": "text", "text": "sampled!"}, "model": "m"}, "sampled!"),
        ("elicitation", "ev_ask", {"question": "ok?"}, "elicitation/create",
         {"action": "accept", "content": {"answer": "yes"}}, "accept:yes"),
    ],
)  # fmt: skip
async def test_a_request_caused_by_the_call_travels_on_the_calls_stream(
    start_gateway: StartGateway,
    capability: str,
    tool: str,
    arguments: dict[str, Any],
    method: str,
    answer: dict[str, Any],
    expected: str,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session({capability: {}})
    message = tool_call(tool, **arguments)
    response = await mcp.post(message, session)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    seen: list[Event] = []
    async with asyncio.timeout(15):
        async for event_id, sent in sse_events(response):
            seen.append((event_id, sent))
            if sent.get("method") == method:
                assert "id" in sent, sent
                reply_to_gateway = {"jsonrpc": "2.0", "id": sent["id"], "result": answer}
                posted = await mcp.post(reply_to_gateway, session)
                assert posted.status == 202, await posted.text()
    assert [m.get("method") for _, m in seen] == [method, None], seen
    assert seen[-1][1]["id"] == message["id"] and text_of(seen[-1][1]) == expected
    sequences(seen)  # every event has an S-N id


# -- sessions ----------------------------------------------------------------------------------------------


async def test_initialize_mints_an_unguessable_session_id(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    ids = [await mcp.open_session() for _ in range(20)]
    assert len(set(ids)) == len(ids)
    for session in ids:
        assert re.fullmatch(r"[\x21-\x7e]+", session), session  # visible ASCII only
        assert session in gw.gateway.sessions
    # At least 128 bits: the shortest id times the bits each character can carry (the alphabet seen).
    alphabet = set("".join(ids))
    assert min(map(len, ids)) * math.log2(len(alphabet)) >= 128, (ids, len(alphabet))
    # Random in every position: nothing is a counter, a timestamp or a shared prefix.
    for position in range(min(map(len, ids))):
        assert len({session[position] for session in ids}) > 1, (position, ids)


async def test_requests_without_a_session_get_400_and_unknown_or_ended_ones_404(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)

    listing = request("tools/list", request_id="no-session")
    response = await mcp.post(listing)
    assert response.status == 400
    assert_rpc_error(await response.json(), INVALID_REQUEST, "no-session")
    response = await mcp.post(notification("notifications/initialized"))
    assert response.status == 400
    assert_rpc_error(await response.json(), INVALID_REQUEST)
    assert gw.gateway.sessions == {}

    for bogus in ("not-a-session", "A" * 24, "0"):
        response = await mcp.post(request("tools/list", request_id=7), bogus)
        assert response.status == 404, bogus
        assert_rpc_error(await response.json(), INVALID_REQUEST, 7)

    session = await mcp.open_session()
    assert (await mcp.delete(session)).status == 200
    response = await mcp.post(request("ping", request_id="late"), session)
    assert response.status == 404
    assert_rpc_error(await response.json(), INVALID_REQUEST, "late")
    response = await mcp.post(notification("notifications/initialized"), session)
    assert response.status == 404


async def test_the_protocol_version_header_must_be_a_known_version(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    for version in VERSIONS:
        response = await mcp.post(request("ping", request_id=version), session, headers={VERSION: version})
        assert response.status == 200, version
        assert (await response.json())["result"] == {}
    for version in ("2099-01-01", "2025-13-45", "latest", "2025-11-25x", "1"):
        response = await mcp.post(request("ping", request_id="v"), session, headers={VERSION: version})
        assert response.status == 400, version
        body = await response.json()
        assert body["id"] == "v" and isinstance(body["error"]["code"], int), body
    get = await mcp.get(session, headers={VERSION: "2099-01-01"})
    assert 400 <= get.status < 500 and get.content_type != "text/event-stream"
    delete = await mcp.delete(session, headers={VERSION: "2099-01-01"})
    assert 400 <= delete.status < 500
    assert await mcp.status_of(session) == 200  # the refused DELETE did not end it


async def test_a_failed_initialize_leaves_no_session_behind(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    for params in (
        {"capabilities": {}, "clientInfo": CLIENT_INFO},  # no protocolVersion
        {"protocolVersion": 20251125},
        {"protocolVersion": LATEST, "capabilities": "all"},
        {"protocolVersion": LATEST, "clientInfo": ["me"]},
    ):
        message = request("initialize", params)
        response = await mcp.post(message)
        assert response.status < 500
        body = await response.json()
        assert "error" in body and body["id"] == message["id"], (params, body)
        assert gw.gateway.sessions == {}, params
        assert http_sessions(gw) == {}, params
        minted = response.headers.get(SESSION)
        if minted is not None:
            assert await mcp.status_of(minted) == 404, params
    assert await mcp.open_session() in gw.gateway.sessions


# -- refused POSTs -----------------------------------------------------------------------------------------


async def test_malformed_posts_are_refused_with_the_right_status(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    ping = request("ping", request_id="p")

    for content_type in ("text/plain", "application/octet-stream", "application/x-www-form-urlencoded"):
        response = await mcp.post(ping, session, headers={"Content-Type": content_type})
        assert response.status == 415, content_type
        assert_rpc_error(await response.json(), INVALID_REQUEST)
    response = await mcp.post(ping, session, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status == 200

    for accept in ("application/json", "text/event-stream", "text/html", "application/*"):
        response = await mcp.post(ping, session, headers={"Accept": accept})
        assert response.status == 406, accept
        assert_rpc_error(await response.json(), INVALID_REQUEST)
    for accept in ("*/*", "text/event-stream, application/json;q=0.9"):
        response = await mcp.post(ping, session, headers={"Accept": accept})
        assert response.status == 200, accept
        assert (await response.json())["result"] == {}

    for garbage in (b"", b"{", b'{"jsonrpc":"2.0","id":1,"method":"ping"', b"\xff\xfe", b"NaN", b"{'a': 1}"):
        response = await mcp.post(session=session, data=garbage)
        assert response.status == 400, garbage
        assert_rpc_error(await response.json(), PARSE_ERROR, None)

    for envelope, request_id in (
        ({"jsonrpc": "1.0", "id": 5, "method": "ping"}, 5),
        ({"id": "s", "method": "ping"}, "s"),
        ({"jsonrpc": "2.0", "id": 6, "method": 6}, 6),
        ({"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": [1]}, 8),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": 9}, 9),
        ("a string", None),
        (17, None),
        (None, None),
    ):
        response = await mcp.post(envelope, session)
        assert response.status == 400, envelope
        assert_rpc_error(await response.json(), INVALID_REQUEST, request_id)

    for batch in ([ping], [], [ping, notification("notifications/initialized")]):
        response = await mcp.post(batch, session)
        assert response.status == 400, batch
        assert_rpc_error(await response.json(), INVALID_REQUEST)
    # Nothing of the refused batches ran, and the session is fine.
    assert (await mcp.call(session, request("ping")))[1]["result"] == {}


async def _raw_post(url: URL, head: bytes, body: bytes, pause: float | None) -> tuple[int, bytes]:
    """Send ``head`` and the start of ``body``; after ``pause`` seconds the rest (never, if None)."""
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        if pause is not None:
            await asyncio.sleep(pause)
            writer.write(body[5:])
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"(?i)content-length: *(\d+)", headers)
        assert length is not None, headers
        return int(status_line.split()[1]), await asyncio.wait_for(reader.readexactly(int(length[1])), 10)
    finally:
        writer.close()


async def test_a_body_that_comes_after_its_headers_is_waited_for_but_not_forever(
    start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.transports import http as http_transport

    monkeypatch.setattr(http_transport, "_BODY_SECONDS", 1.0)
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {mcp.url.authority}\r\nContent-Type: application/json\r\n"
        f"Accept: {JSON_AND_SSE}\r\n{SESSION}: {session}\r\n"
    ).encode()
    body = json.dumps(request("ping", request_id="late")).encode()

    status, answer = await _raw_post(mcp.url, head, body, pause=0.3)
    assert status == 200, answer
    assert json.loads(answer) == {"jsonrpc": "2.0", "id": "late", "result": {}}

    status, answer = await _raw_post(mcp.url, head, body, pause=None)
    assert status == 408, answer
    assert_rpc_error(json.loads(answer), INVALID_REQUEST)
    assert "the body did not arrive in time" in json.loads(answer)["error"]["message"]
    assert (await mcp.call(session, request("ping")))[1]["result"] == {}


async def test_a_body_over_max_message_bytes_gets_413(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"listen": {"max_message_bytes": 2048}, "mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    fits = tool_call("ev_echo", text="x" * 1500)
    assert len(json.dumps(fits)) < 2048
    assert text_of((await mcp.call(session, fits))[1]) == "x" * 1500
    too_big = tool_call("ev_echo", text="x" * 3000)
    response = await mcp.post(too_big, session)
    assert response.status == 413
    response = await mcp.post(session=session, data=b"[" * 100_000)
    assert response.status == 413
    assert await mcp.status_of(session) == 200


async def test_a_duplicate_id_while_the_first_is_in_flight_gets_400(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    slow = tool_call("ev_slow", request_id="dup", seconds=1.0, steps=1)
    async with background(mcp.call(session, slow)) as first:
        await asyncio.sleep(0.4)
        assert not first.done()
        response = await mcp.post(request("ping", request_id="dup"), session)
        assert response.status == 400
        assert_rpc_error(await response.json(), INVALID_REQUEST, "dup")
        _, reply = await first
    assert reply["id"] == "dup" and text_of(reply) == "done"
    # Once answered, the id is free again.
    response = await mcp.post(request("ping", request_id="dup"), session)
    assert response.status == 200 and (await response.json())["result"] == {}


# -- GET: the standalone stream ----------------------------------------------------------------------------


async def test_the_get_stream_carries_messages_unrelated_to_a_request(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    stream = await mcp.get(session)
    assert stream.status == 200
    assert stream.content_type == "text/event-stream"
    assert stream.headers[SESSION] == session
    events = sse_events(stream)

    progress, added = await mcp.call(session, tool_call("ev_add_tool", name="made_over_http"))
    assert progress == [] and text_of(added) == "added made_over_http"
    changed = await next_event(events, "notifications/tools/list_changed")
    names = {t["name"] for t in (await mcp.call(session, request("tools/list")))[1]["result"]["tools"]}
    assert "ev_made_over_http" in names

    subscribed = await mcp.call(session, request("resources/subscribe", {"uri": "portico://ev/memo://one"}))
    assert subscribed[1]["result"] == {}
    assert text_of((await mcp.call(session, tool_call("ev_touch", uri="memo://one")))[1]) == "touched"
    updated = await next_event(events, "notifications/resources/updated")
    assert updated[1]["params"]["uri"] == "portico://ev/memo://one"
    assert len(sequences([changed, updated])[0]) == 1  # one stream, ids S-N
    stream.close()


async def test_get_refusals(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    first = await mcp.get(session)
    assert first.status == 200

    second = await mcp.get(session)
    assert second.status == 409
    assert_rpc_error(await second.json(), INVALID_REQUEST)
    for accept in ("application/json", "text/html", ""):
        response = await mcp.get(session, headers={"Accept": accept})
        assert response.status == 406, accept
    response = await mcp.get()
    assert response.status == 400
    assert_rpc_error(await response.json(), INVALID_REQUEST)
    response = await mcp.get("no-such-session")
    assert response.status == 404
    assert_rpc_error(await response.json(), INVALID_REQUEST)
    first.close()


async def test_get_with_upgrade_is_still_the_websocket_endpoint(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    reply = await client.call("tools/call", {"name": "ev_echo", "arguments": {"text": "ws"}})
    assert "".join(c["text"] for c in reply["content"]) == "ws"
    assert (await endpoint(gw).get(headers={"Accept": "text/html"})).status == 406


# -- resumption --------------------------------------------------------------------------------------------


async def test_last_event_id_replays_the_rest_of_that_request_stream(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    slow = tool_call("ev_slow", progress="replay", seconds=0.2, steps=3)
    events = await all_events(await mcp.post(slow, session))
    assert len(events) == 4
    # Something on the standalone stream in between, which a replay of the request stream must not show.
    await mcp.call(session, tool_call("ev_add_tool", name="in_between"))

    first_id = events[0][0]
    assert first_id is not None
    resumed = await mcp.get(session, headers={"Last-Event-ID": first_id})
    assert resumed.status == 200
    assert resumed.headers[SESSION] == session
    replayed = await all_events(resumed, timeout=10)
    assert replayed == events[1:]
    assert replayed[-1][1]["id"] == slow["id"] and text_of(replayed[-1][1]) == "done"


@pytest.mark.parametrize("server", ["in-process", "cli"])
async def test_a_request_stream_that_broke_before_the_reply_carries_on_on_a_resumed_get(
    start_gateway: StartGateway, tmp_path: Path, server: str
) -> None:
    """Disconnect is not cancel: the call runs on, and the rest of its events arrive on the new GET."""
    settings = {"mcpServers": {"ev": everything()}}
    async with serving(server, start_gateway, tmp_path, settings) as mcp:
        session = await mcp.open_session()
        slow = tool_call("ev_slow", progress="broken", seconds=1.2, steps=4)
        response = await mcp.post(slow, session)
        assert response.content_type == "text/event-stream"
        events = sse_events(response)
        first = await next_event(events, "notifications/progress")
        assert first[1]["params"]["progress"] == 1
        response.close()  # the connection breaks before the reply
        await asyncio.sleep(0.1)

        assert first[0] is not None
        resumed = await mcp.get(session, headers={"Last-Event-ID": first[0]})
        assert resumed.status == 200
        rest = await all_events(resumed, timeout=10)
        assert [m.get("params", {}).get("progress") for _, m in rest[:-1]] == [2, 3, 4], rest
        assert rest and is_reply(rest[-1][1]), rest
        assert rest[-1][1]["id"] == slow["id"] and text_of(rest[-1][1]) == "done"
        streams, numbers = sequences([first, *rest])
        assert len(streams) == 1 and numbers == sorted(set(numbers))


@pytest.mark.parametrize("server", ["in-process", "cli"])
async def test_the_standalone_stream_resumes_after_its_connection_broke(
    start_gateway: StartGateway, tmp_path: Path, server: str
) -> None:
    async with serving(server, start_gateway, tmp_path, {"mcpServers": {"ev": everything()}}) as mcp:
        session = await mcp.open_session()
        stream = await mcp.get(session)
        events = sse_events(stream)
        await mcp.call(session, tool_call("ev_add_tool", name="one"))
        one = await next_event(events, "notifications/tools/list_changed")
        await mcp.call(session, tool_call("ev_add_tool", name="two"))
        two = await next_event(events, "notifications/tools/list_changed")
        stream.close()  # the client's connection breaks
        await asyncio.sleep(PEER_NOTICED)

        # The client reconnects, naming the last event it saw: it gets what came after.
        assert one[0] is not None and two[0] is not None
        resumed = await mcp.get(session, headers={"Last-Event-ID": one[0]})
        assert resumed.status == 200, await resumed.text()
        events = sse_events(resumed)
        assert await next_event(events, "notifications/tools/list_changed") == two
        resumed.close()
        await asyncio.sleep(PEER_NOTICED)

        # What is sent while no stream is open is replayed on the next one.
        await mcp.call(session, tool_call("ev_add_tool", name="three"))
        resumed = await mcp.get(session, headers={"Last-Event-ID": two[0]})
        assert resumed.status == 200, await resumed.text()
        three = await next_event(sse_events(resumed), "notifications/tools/list_changed")
        numbers = sequences([one, two, three])[1]
        assert numbers == sorted(set(numbers)), numbers
        resumed.close()


async def test_an_unknown_last_event_id_gets_400(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    for last in ("garbage", "", "1", "-1", "1-", "x-1", "1-x", "99-1", "0-1", "1--1", "1-1-1"):
        response = await mcp.get(session, headers={"Last-Event-ID": last})
        assert response.status == 400, last
        assert_rpc_error(await response.json(), INVALID_REQUEST)
    assert await mcp.status_of(session) == 200


# -- DELETE and the end of sessions ------------------------------------------------------------------------


async def test_delete_ends_the_session_and_its_per_client_backends(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything(session="per-client")}})
    mcp = endpoint(gw)
    leaving, staying = await mcp.open_session(), await mcp.open_session()
    pid_of = {}
    for session in (leaving, staying):
        _, pid, _ = text_of((await mcp.call(session, tool_call("ev_whoami")))[1]).split(":")
        pid_of[session] = int(pid)
    assert pid_of[leaving] != pid_of[staying]
    assert not process_gone(pid_of[leaving])

    assert (await mcp.delete()).status == 400
    assert (await mcp.delete("no-such-session")).status == 404
    response = await mcp.delete(leaving)
    assert response.status == 200
    assert leaving not in gw.gateway.sessions and leaving not in http_sessions(gw)
    assert await mcp.status_of(leaving) == 404
    assert (await mcp.get(leaving)).status == 404
    assert (await mcp.delete(leaving)).status == 404
    await eventually(lambda: process_gone(pid_of[leaving]), 10, "the per-client backend to end")

    # The other session, and its own backend process, are untouched.
    assert staying in gw.gateway.sessions
    assert not process_gone(pid_of[staying])
    text = text_of((await mcp.call(staying, tool_call("ev_whoami")))[1])
    assert text.split(":")[1] == str(pid_of[staying])


async def test_delete_ends_the_calls_in_flight_and_their_posts(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    leaving, watcher = await mcp.open_session(), await mcp.open_session()
    async with background(mcp.post(tool_call("ev_sleep_forever"), leaving)) as pending:
        await asyncio.sleep(0.5)
        assert (await mcp.delete(leaving)).status == 200
        # The call is cancelled upstream...
        for _ in range(50):
            if text_of((await mcp.call(watcher, tool_call("ev_was_cancelled")))[1]) == "1":
                break
            await asyncio.sleep(0.1)
        assert text_of((await mcp.call(watcher, tool_call("ev_was_cancelled")))[1]) == "1"
        # ... and its POST does not hang on forever: the session is gone, so is its response.
        await ends(pending, "the POST of a call in flight, after its session was deleted")


async def test_idle_sessions_end_unless_streaming_or_busy(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"listen": {"session_idle_seconds": 0.4}, "mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    idle, streaming, busy = [await mcp.open_session() for _ in range(3)]
    stream = await mcp.get(streaming)
    assert stream.status == 200
    try:
        async with background(mcp.call(busy, tool_call("ev_slow", seconds=2.2, steps=1))) as call:
            await asyncio.sleep(1.5)
            assert idle not in gw.gateway.sessions and idle not in http_sessions(gw)
            assert await mcp.status_of(idle) == 404
            assert streaming in gw.gateway.sessions
            assert busy in gw.gateway.sessions
            _, reply = await call
        assert text_of(reply) == "done"
        assert await mcp.status_of(streaming) == 200
        # Once its call is answered, the busy session idles out like any other.
        await eventually(lambda: busy not in gw.gateway.sessions, 3, "the busy session to idle out")
    finally:
        stream.close()


async def test_a_session_whose_get_stream_was_closed_idles_out(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"listen": {"session_idle_seconds": 0.4}, "mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    stream = await mcp.get(session)
    assert stream.status == 200
    await asyncio.sleep(0.8)
    assert session in gw.gateway.sessions  # an open stream keeps it
    stream.close()  # the client goes away for good
    await eventually(
        lambda: session not in gw.gateway.sessions, PEER_NOTICED + 2, "the abandoned session to idle out"
    )


async def test_a_cancelled_call_ends_its_post(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    session = await mcp.open_session()
    sleeper = tool_call("ev_sleep_forever")
    async with background(mcp.post(sleeper, session)) as pending:
        await asyncio.sleep(0.3)
        cancel = notification("notifications/cancelled", {"requestId": sleeper["id"], "reason": "enough"})
        assert (await mcp.post(cancel, session)).status == 202
        # The call is over (cancelled upstream), so is the exchange: its POST does not hang on forever.
        await ends(pending, "the POST of a cancelled call")
    assert text_of((await mcp.call(session, tool_call("ev_was_cancelled")))[1]) == "1"


@pytest.mark.parametrize("server", ["in-process", "cli"])
async def test_a_cancelled_call_whose_post_was_abandoned_keeps_no_session_alive(
    start_gateway: StartGateway, tmp_path: Path, server: str
) -> None:
    settings = {"listen": {"session_idle_seconds": 0.4}, "mcpServers": {"ev": everything()}}
    async with serving(server, start_gateway, tmp_path, settings) as mcp:
        session = await mcp.open_session()
        sleeper = tool_call("ev_sleep_forever")
        async with background(mcp.post(sleeper, session)):
            await asyncio.sleep(0.3)
            cancel = notification("notifications/cancelled", {"requestId": sleeper["id"], "reason": "x"})
            assert (await mcp.post(cancel, session)).status == 202
            await asyncio.sleep(0.3)
        # The client has given up on the POST and closed its connection.
        # Nothing is in flight and no stream is open: the session idles out.
        await asyncio.sleep(2.0)
        assert await mcp.status_of(session) == 404, "the session never idled out"


async def test_max_sessions_gives_503_with_retry_after(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"listen": {"max_sessions": 2}, "mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    first, _ = await mcp.open_session(), await mcp.open_session()
    message = request("initialize", initialize_params())
    response = await mcp.post(message)
    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()
    body = await response.json()
    assert body["id"] == message["id"] and "error" in body
    assert SESSION not in response.headers
    assert len(gw.gateway.sessions) == 2
    assert (await mcp.delete(first)).status == 200
    assert await mcp.open_session() in gw.gateway.sessions


# -- Origin and Host ---------------------------------------------------------------------------------------


async def test_foreign_origins_get_403_and_local_ones_are_allowed(start_gateway: StartGateway) -> None:
    gw = await start_gateway(
        {"listen": {"allowed_origins": ["https://app.example"]}, "mcpServers": {"ev": everything()}}
    )
    mcp = endpoint(gw)
    for origin in ("http://evil.example", "https://app.example.evil", "null", "http://localhost.evil"):
        foreign = {"Origin": origin}
        response = await mcp.post(request("initialize", initialize_params()), headers=foreign)
        assert response.status == 403, origin
        assert gw.gateway.sessions == {}, origin
        session = await mcp.open_session()
        assert (await mcp.get(session, headers=foreign)).status == 403, origin
        assert (await mcp.post(request("ping"), session, headers=foreign)).status == 403, origin
        assert (await mcp.delete(session, headers=foreign)).status == 403, origin
        assert await mcp.status_of(session) == 200  # the refused DELETE did nothing
        assert (await mcp.delete(session)).status == 200

    for origin in (
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "http://[::1]:9000",
        "https://app.example",
    ):
        local = {"Origin": origin}
        response = await mcp.post(request("initialize", initialize_params()), headers=local)
        assert response.status == 200, origin
        session = response.headers[SESSION]
        get = await mcp.get(session, headers=local)
        assert get.status == 200, origin
        get.close()
        assert (await mcp.delete(session, headers=local)).status == 200, origin


async def test_a_foreign_host_header_gets_403(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    port = gw.server.port
    session = await mcp.open_session()
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "mcp.internal"):
        rebound = {"Host": host}
        assert (await mcp.post(request("initialize", initialize_params()), headers=rebound)).status == 403
        assert (await mcp.post(request("ping"), session, headers=rebound)).status == 403, host
        assert (await mcp.get(session, headers=rebound)).status == 403, host
        assert (await mcp.delete(session, headers=rebound)).status == 403, host
    assert list(gw.gateway.sessions) == [session]
    for host in (f"localhost:{port}", "localhost", f"127.0.0.1:{port}", f"[::1]:{port}"):
        response = await mcp.post(request("ping"), session, headers={"Host": host})
        assert response.status == 200, host


async def test_allowed_hosts_adds_names(start_gateway: StartGateway) -> None:
    gw = await start_gateway(
        {"listen": {"allowed_hosts": ["mcp.internal"]}, "mcpServers": {"ev": everything()}}
    )
    mcp = endpoint(gw)
    port = gw.server.port
    response = await mcp.post(
        request("initialize", initialize_params()), headers={"Host": f"mcp.internal:{port}"}
    )
    assert response.status == 200
    session = response.headers[SESSION]
    assert (await mcp.post(request("ping"), session, headers={"Host": "mcp.internal"})).status == 200
    assert (await mcp.post(request("ping"), session, headers={"Host": f"localhost:{port}"})).status == 200
    assert (await mcp.post(request("ping"), session, headers={"Host": "evil.example"})).status == 403


# -- interoperability and isolation -----------------------------------------------------------------------


async def test_the_mcp_sdk_client_works_over_streamable_http(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    url = str(gw.server.make_url("/mcp"))
    progress: list[float] = []
    sampled: list[str] = []
    changed = asyncio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_sampling(
        context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        assert isinstance(prompt, types.TextContent)
        sampled.append(prompt.text)
        content = types.TextContent(type="text", text=f"sdk({prompt.text})")
        return types.CreateMessageResult(role="assistant", content=content, model="m")

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    def get_stream_open() -> bool:
        return any(ch.standalone is not None and ch.standalone.alive for _, ch in http_sessions(gw).values())

    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write, sampling_callback=on_sampling, message_handler=on_message) as session,
    ):
        init = await session.initialize()
        assert init.protocol_version == LATEST
        assert len(gw.gateway.sessions) == 1
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"ev_echo", "ev_add", "ev_sample"} <= tools
        result = await session.call_tool("ev_add", {"a": 2, "b": 40})
        assert isinstance(result.content[0], types.TextContent) and result.content[0].text == "42"
        await session.call_tool("ev_slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
        assert progress == [1, 2, 3]
        result = await session.call_tool("ev_sample", {"prompt": "hello"})
        assert isinstance(result.content[0], types.TextContent) and result.content[0].text == "sdk(hello)"
        assert sampled == ["hello"]
        await eventually(get_stream_open, 10, "the SDK's GET stream")
        await session.call_tool("ev_add_tool", {"name": "from_the_sdk"})
        await asyncio.wait_for(changed.wait(), 10)
        assert "ev_from_the_sdk" in {t.name for t in (await session.list_tools()).tools}
    # On exit the SDK deletes its session.
    await eventually(lambda: not gw.gateway.sessions and not http_sessions(gw), 5, "the session to end")


async def test_two_sessions_never_see_each_others_replies_or_progress(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    mcp = endpoint(gw)
    first, second = await mcp.open_session(), await mcp.open_session()

    async def slow(session: str, steps: int) -> tuple[list[Event], Message]:
        # Both sessions use the same request id and the same progress token.
        return await mcp.call(
            session, tool_call("ev_slow", "same-id", "same-token", seconds=0.5, steps=steps)
        )

    async def echoes(session: str, who: str) -> list[tuple[Any, str]]:
        replies = await asyncio.gather(
            *(mcp.call(session, tool_call("ev_echo", i, text=f"{who}-{i}")) for i in range(30))
        )
        return [(reply["id"], text_of(reply)) for _, reply in replies]

    (p1, r1), (p2, r2), e1, e2 = await asyncio.gather(
        slow(first, 3), slow(second, 5), echoes(first, "first"), echoes(second, "second")
    )
    assert [m["params"]["total"] for _, m in p1] == [3] * 3
    assert [m["params"]["progress"] for _, m in p1] == [1, 2, 3]
    assert [m["params"]["total"] for _, m in p2] == [5] * 5
    assert [m["params"]["progress"] for _, m in p2] == [1, 2, 3, 4, 5]
    assert all(m["params"]["progressToken"] == "same-token" for _, m in p1 + p2)
    assert r1["id"] == r2["id"] == "same-id" and text_of(r1) == text_of(r2) == "done"
    assert e1 == [(i, f"first-{i}") for i in range(30)]
    assert e2 == [(i, f"second-{i}") for i in range(30)]
