"""Hostile requests against the Streamable HTTP endpoint of a gateway run as an operator runs it.

One ``python -m proxy serve --port 0`` process (the everything fixture as its backend, named ``ev``, and a
64 KiB message limit) serves the module. Hypothesis draws short runs of requests: POST bodies of garbage
bytes, malformed text, JSON scalars and arrays, batches, envelopes with every member wrong in turn, bad
ids, random methods, huge and deeply nested JSON, under every combination of right and wrong
``Content-Type``, ``Accept``, ``Mcp-Session-Id`` (none, a live one, an ended one, made up) and
``MCP-Protocol-Version``; and GET, DELETE and other verbs with bogus headers. For each, the contract says
what it earns (see ``expected``), and in every case:

- never a 5xx, and never a traceback in the gateway's stderr;
- every 4xx with a JSON body carries a JSON-RPC error; every 200 carries the reply to that very request
  (as JSON, or as an SSE stream ending with it); a 202 has no body;
- afterwards the gateway is healthy (``/healthz``, a fresh initialize and a real call), the live session
  still answers, every session the fuzzing opened is deleted, and the gateway's open file descriptors
  are back where they started.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import everything
from tests.gateway_process import GatewayProcess, serve_gateway

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 64 * 1024
SESSION = "Mcp-Session-Id"
VERSION = "MCP-Protocol-Version"
LATEST = "2025-11-25"
VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
CLIENT_INFO = {"name": "portico-http-fuzz", "version": "1.0"}
GOOD_ACCEPT = "application/json, text/event-stream"
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
EVENT_ID = re.compile(r"^\d+-\d+$")
KNOWN_METHODS = (
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "logging/setLevel",
    "completion/complete",
)
NOTIFICATIONS = (
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
)


# -- the gateway, as a process -----------------------------------------------------------------------------


@dataclass
class Sessions:
    """The sessions the fuzz keeps track of, beside the gateway process."""

    live: str = ""  # an initialized session that every run may use, and must not end
    ended: str = ""  # a session that was deleted
    opened: set[str] = field(default_factory=set)  # sessions the fuzzing created


@dataclass
class FuzzGateway:
    proc: GatewayProcess
    sessions: Sessions

    def __getattr__(self, name: str) -> Any:
        # The process's helpers (mcp, base, open_fds, stderr_*) and the sessions read as one object.
        target = self.sessions if name in ("live", "ended", "opened") else self.proc
        return getattr(target, name)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzGateway]:
    workdir = tmp_path_factory.mktemp("fuzz-http-gateway")
    settings = {"listen": {"max_message_bytes": MAX_BYTES}, "mcpServers": {"ev": everything("fuzz")}}
    with serve_gateway(workdir, settings) as running:
        fuzz = FuzzGateway(running, Sessions())
        fuzz.sessions.live, fuzz.sessions.ended = asyncio.run(_prepare_sessions(fuzz))
        yield fuzz


async def _prepare_sessions(gw: FuzzGateway) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http:
        live = await open_session(http, gw.mcp)
        ended = await open_session(http, gw.mcp)
        async with http.delete(gw.mcp, headers={SESSION: ended}) as response:
            assert response.status == 200
        return live, ended


async def open_session(http: aiohttp.ClientSession, url: str) -> str:
    headers = {"Content-Type": "application/json", "Accept": GOOD_ACCEPT}
    init = {
        "jsonrpc": "2.0",
        "id": "fuzz-init",
        "method": "initialize",
        "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": CLIENT_INFO},
    }
    async with http.post(url, json=init, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["result"]["protocolVersion"] == LATEST
        session = response.headers[SESSION]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, json=initialized, headers={**headers, SESSION: session}) as response:
        assert response.status == 202
    return session


async def assert_gateway_healthy(gw: FuzzGateway) -> None:
    headers = {"Content-Type": "application/json", "Accept": GOOD_ACCEPT}
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.base + "/healthz") as response:
            assert response.status == 200
        for session in (await open_session(http, gw.mcp), gw.live):
            echo = {
                "jsonrpc": "2.0",
                "id": "fuzz-echo",
                "method": "tools/call",
                "params": {"name": "ev_echo", "arguments": {"text": "still here"}},
            }
            async with http.post(gw.mcp, json=echo, headers={**headers, SESSION: session}) as response:
                assert response.status == 200, await response.text()
                reply = await response.json()
            assert reply["id"] == "fuzz-echo" and reply["result"]["content"][0]["text"] == "still here", reply
            if session != gw.live:
                async with http.delete(gw.mcp, headers={SESSION: session}) as response:
                    assert response.status == 200


# -- what a request earns ----------------------------------------------------------------------------------

NO_ID = object()  # the reply may carry any id (or there is none to check)


@dataclass(frozen=True)
class Expect:
    statuses: frozenset[int]
    codes: frozenset[int] = frozenset()  # the JSON-RPC codes a 4xx may carry; empty: any
    reply_id: Any = NO_ID  # the id every JSON-RPC reply must carry

    def __or__(self, other: Expect) -> Expect:
        same_id = self.reply_id is other.reply_id or self.reply_id == other.reply_id
        return Expect(
            self.statuses | other.statuses,
            self.codes | other.codes if self.codes and other.codes else frozenset(),
            self.reply_id if same_id else NO_ID,
        )


def expect(*statuses: int, codes: tuple[int, ...] = (), reply_id: Any = NO_ID) -> Expect:
    return Expect(frozenset(statuses), frozenset(codes), reply_id)


ANYTHING = expect(200, 202, 400, 404, 405, 406, 409, 413, 415)


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def envelope_kind(obj: Any) -> tuple[str, Any]:
    """("request" | "notification" | "response" | "invalid" | "unsure", the id a reply must carry).

    Written from JSON-RPC 2.0 and MCP: ids are strings or integers, params an object, nothing else.
    """
    if not isinstance(obj, dict):
        return "invalid", None
    request_id = obj.get("id")
    salvaged = request_id if is_valid_id(request_id) else None
    if obj.get("jsonrpc") != "2.0":
        return "invalid", salvaged
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or ("params" in obj and not isinstance(obj["params"], dict)):
            return "invalid", salvaged
        if method == "":
            return "unsure", salvaged  # an empty method name may be refused outright, or not found
        if "id" not in obj:
            return "notification", None
        return ("request", request_id) if is_valid_id(request_id) else ("invalid", None)
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        return "invalid", salvaged
    if has_result:
        return ("response", None) if is_valid_id(request_id) else ("invalid", salvaged)
    error = obj["error"]
    well_formed = (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )
    if well_formed and (is_valid_id(request_id) or ("id" in obj and request_id is None)):
        return "response", None
    return "invalid", salvaged


@dataclass(frozen=True)
class Body:
    """A POST body and what is known about it."""

    data: bytes
    parsed: Any = NO_ID  # the JSON value it encodes; NO_ID: garbage, or not known
    deep: bool = False  # nested deeper than a JSON parser has to go (RFC 8259 section 9)

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 160 else self.data[:120] + b"..."
        return f"Body({shown!r}, {len(self.data)} bytes{', deep' if self.deep else ''})"


@dataclass(frozen=True)
class Post:
    body: Body
    content_type: str | None  # None: no Content-Type header at all
    accept: str | None
    session: str  # "none", "live", "ended" or "bogus"
    bogus_session: str
    version: str | None
    encoding: str | None = None  # Content-Encoding: the body goes compressed (gzip, deflate) or as is

    def data(self) -> bytes:
        if self.encoding == "gzip":
            return gzip.compress(self.body.data)
        if self.encoding == "deflate":
            return zlib.compress(self.body.data)
        return self.body.data

    def headers(self, gw: FuzzGateway) -> tuple[dict[str, str], list[str]]:
        headers: dict[str, str] = {}
        if self.encoding is not None:
            headers["Content-Encoding"] = self.encoding
        skip = []
        if self.content_type is None:
            skip.append("Content-Type")
        else:
            headers["Content-Type"] = self.content_type
        if self.accept is None:
            skip.append("Accept")
        else:
            headers["Accept"] = self.accept
        session = {"live": gw.live, "ended": gw.ended, "bogus": self.bogus_session}.get(self.session)
        if session is not None:
            headers[SESSION] = session
        if self.version is not None:
            headers[VERSION] = self.version
        return headers, skip


def good_content_type(value: str | None) -> bool:
    return value is not None and value.split(";")[0].strip().lower() == "application/json"


def good_accept(value: str | None) -> bool:
    if value is None:
        return False
    types = {part.split(";")[0].strip().lower() for part in value.split(",")}
    return "*/*" in types or {"application/json", "text/event-stream"} <= types


def expected(post: Post) -> Expect:
    """What the contract says this POST earns (several answers where it leaves the order open)."""
    header_problems = set()
    if not good_content_type(post.content_type):
        header_problems.add(415)
    if not good_accept(post.accept):
        header_problems.add(406)
    if len(post.body.data) > MAX_BYTES:
        header_problems.add(413)
    if header_problems:
        return expect(*header_problems)
    if post.body.parsed is NO_ID:
        body: Expect = expect(400, codes=(PARSE_ERROR, INVALID_REQUEST), reply_id=None)
        if post.session in ("ended", "bogus"):
            body = body | expect(404, codes=(INVALID_REQUEST,))
    else:
        body = expect_for_message(post, post.body.parsed)
        if post.body.deep:
            body = body | expect(400, codes=(PARSE_ERROR,), reply_id=None)
    if post.version is not None and post.version not in VERSIONS:
        # Another protocol era, or a bad version: refused, or treated as the era it names.
        return Expect(ANYTHING.statuses - {406, 409, 413, 415})
    return body


def expect_for_message(post: Post, obj: Any) -> Expect:
    kind, request_id = envelope_kind(obj)
    invalid = expect(400, codes=(INVALID_REQUEST,), reply_id=request_id)
    if kind == "invalid":
        # A message that is no message at all is refused whatever the session header says.
        return invalid | (expect(404) if post.session in ("ended", "bogus") else invalid)
    if post.session == "none":
        if kind == "request" and obj["method"] == "initialize":
            return expect(200, reply_id=request_id)
        refused = expect(400, codes=(INVALID_REQUEST,), reply_id=request_id if kind != "response" else NO_ID)
        return refused | invalid if kind == "unsure" else refused
    if post.session in ("ended", "bogus"):
        unknown = expect(404, codes=(INVALID_REQUEST,), reply_id=request_id if kind == "request" else None)
        return unknown | invalid if kind == "unsure" else unknown
    if kind == "request":
        return expect(200, reply_id=request_id)
    if kind == "unsure":
        return invalid | expect(200, 202)
    return expect(202)


# -- strategies --------------------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_TEXT = st.text(PRINTABLE, max_size=30).map(str.strip)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=16)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
LEAVES = st.one_of(st.none(), st.booleans(), INT64, FLOATS, TEXT)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
OBJECTS = st.dictionaries(st.text(max_size=8), VALUES, max_size=4)
VALID_IDS = st.one_of(st.integers(-3, 3), INT64, st.integers(2**64, 2**80), st.text(max_size=12))
BAD_IDS = st.one_of(st.none(), st.booleans(), FLOATS, st.lists(LEAVES, max_size=3), OBJECTS)
MISSING = object()


def routes_nowhere(value: Any) -> bool:
    """Nothing in it could name a real tool, prompt or resource of the backend (crash would end it)."""
    if isinstance(value, str):
        return not value.startswith(("ev", "portico://ev"))
    if isinstance(value, dict):
        return all(routes_nowhere(k) and routes_nowhere(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(routes_nowhere, value))
    return True


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["request", "request", "notification", "response", "chimera"]))
    message: dict[str, Any] = {}
    if draw(st.integers(0, 6)) > 0:
        message["jsonrpc"] = "2.0"
    elif (
        version := draw(st.one_of(st.just(MISSING), st.sampled_from(["1.0", "2", "", 2.0]), VALUES))
    ) is not MISSING:
        message["jsonrpc"] = version
    if shape == "chimera":
        keys = st.one_of(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]), TEXT)
        values = st.one_of(st.just("2.0"), st.sampled_from(["ping", "tools/list", ""]), VALID_IDS, VALUES)
        message.update(draw(st.dictionaries(keys, values, max_size=6)))
        return message
    if shape in ("request", "notification"):
        method = draw(st.one_of(st.sampled_from(KNOWN_METHODS), st.sampled_from(NOTIFICATIONS), TEXT, VALUES))
        message["method"] = method
        params = draw(st.one_of(OBJECTS, st.fixed_dictionaries({"name": TEXT, "uri": TEXT}), VALUES))
        if method == "initialize" and draw(st.booleans()):
            params = {
                "protocolVersion": draw(st.one_of(st.sampled_from(VERSIONS), VALUES)),
                "capabilities": draw(st.one_of(st.just({}), VALUES)),
                "clientInfo": CLIENT_INFO,
            }
        if draw(st.integers(0, 5)) > 0:
            message["params"] = params
        if shape == "request":
            message["id"] = draw(st.one_of(VALID_IDS, VALID_IDS, BAD_IDS))
        return message
    if (request_id := draw(st.one_of(VALID_IDS, BAD_IDS, st.just(MISSING)))) is not MISSING:
        message["id"] = request_id
    body = draw(st.sampled_from(["result", "error", "both", "neither"]))
    if body in ("result", "both"):
        message["result"] = draw(st.one_of(OBJECTS, VALUES))
    if body in ("error", "both"):
        good = st.fixed_dictionaries({"code": INT64, "message": TEXT})
        message["error"] = draw(st.one_of(good, good, VALUES))
    return message


def encoded(value: Any, ascii_only: bool = True) -> Body:
    return Body(json.dumps(value, ensure_ascii=ascii_only).encode(), value)


MALFORMED = [
    b"",
    b" ",
    b"NaN",
    b"Infinity",
    b"undefined",
    b"nul",
    b"01",
    b"'single'",
    b"{'a': 1}",
    b'{"a":1,}',
    b"[1,]",
    b'{"a"}',
    b"}{",
    b"\x00",
    b'"\\ud800"',
    b"1e400",
    b'"\xff"',
    b"\xef\xbb\xbf{}",
    b"// c\n{}",
    b'{"jsonrpc":"2.0","id":1,"method":"ping"} x',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0","id":2,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"',
]


def huge(size: int, request_id: str) -> Body:
    message = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "nowhere", "arguments": {"blob": "x" * size}},
    }
    return encoded(message)


def deep(depth: int, form: str) -> Body:
    arrays = "[" * depth + "]" * depth
    objects = '{"a":' * depth + "null" + "}" * depth
    inner: Any = json.loads(arrays) if depth < 400 else None
    if form == "arrays":
        return Body(arrays.encode(), inner if depth < 400 else NO_ID, deep=depth > 200)
    if form == "objects":
        parsed = json.loads(objects) if depth < 400 else NO_ID
        return Body(objects.encode(), parsed, deep=depth > 200)
    text = '{"jsonrpc":"2.0","id":"deep","method":"tools/call","params":{"name":"nowhere","arguments":'
    data = (text + '{"deep":' + arrays + "}}}").encode()
    parsed = json.loads(data) if depth < 400 else {"jsonrpc": "2.0", "id": "deep", "method": "tools/call"}
    return Body(data, parsed, deep=depth > 200)


bodies = st.one_of(
    st.builds(Body, st.binary(max_size=120)),
    st.sampled_from([Body(m) for m in MALFORMED]),
    st.builds(encoded, st.one_of(LEAVES, st.lists(VALUES, max_size=3), st.lists(envelopes(), max_size=3))),
    st.builds(encoded, envelopes().filter(routes_nowhere), st.booleans()),
    st.builds(encoded, envelopes().filter(routes_nowhere), st.booleans()),
    st.builds(encoded, envelopes().filter(routes_nowhere), st.booleans()),
    st.builds(huge, st.sampled_from([MAX_BYTES - 200, MAX_BYTES + 1, 3 * MAX_BYTES]), st.just("huge")),
    st.builds(
        deep, st.sampled_from([5, 150, 1_100, 8_000]), st.sampled_from(["arrays", "objects", "request"])
    ),
)
GOOD_CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json", "application/json; charset=utf-8", "Application/JSON"]
)
BAD_CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/json",
            "application/jsonl",
            "application/octet-stream",
            "",
        ]
    ),
    HEADER_TEXT.filter(lambda t: "json" not in t.lower()),
    st.none(),
)
GOOD_ACCEPTS = st.sampled_from(
    [
        GOOD_ACCEPT,
        GOOD_ACCEPT,
        "text/event-stream, application/json",
        "*/*",
        "application/json;q=0.9, text/event-stream;q=0.5",
    ]
)
BAD_ACCEPTS = st.one_of(
    st.sampled_from(["application/json", "text/event-stream", "text/html", ""]),
    HEADER_TEXT.filter(lambda t: not any(w in t.lower() for w in ("json", "event-stream", "*"))),
    st.none(),
)
BOGUS_SESSIONS = HEADER_TEXT
BAD_VERSIONS = st.one_of(
    st.sampled_from(["2099-01-01", "2026-07-28", "latest", "2025-11-25x", ""]),
    HEADER_TEXT.filter(lambda v: v not in VERSIONS),
)


def mostly(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 6
) -> st.SearchStrategy[Any]:
    """``good`` ``odds`` times out of ``odds + 1`` (one_of would weigh them equally)."""
    return st.integers(0, odds).flatmap(lambda n: bad if n == 0 else good)


# Mostly right headers, so that the bodies get looked at; every kind of wrong one now and then.
CONTENT_TYPES = mostly(GOOD_CONTENT_TYPES, BAD_CONTENT_TYPES)
ACCEPTS = mostly(GOOD_ACCEPTS, BAD_ACCEPTS)
VERSION_HEADERS = mostly(st.one_of(st.none(), st.sampled_from(VERSIONS)), BAD_VERSIONS, odds=5)


@st.composite
def initializes(draw: st.DrawFn) -> Body:
    """An initialize that may well open a session (each one the fuzzing opens is deleted at the end)."""
    params: dict[str, Any] = {
        "protocolVersion": draw(st.one_of(st.sampled_from(VERSIONS), st.sampled_from(VERSIONS), VALUES)),
        "capabilities": draw(st.one_of(st.just({}), st.just({"sampling": {}}), OBJECTS, VALUES)),
        "clientInfo": draw(st.one_of(st.just(CLIENT_INFO), OBJECTS, VALUES)),
    }
    for key in draw(st.sets(st.sampled_from(sorted(params)), max_size=3)):
        del params[key]
    return encoded({"jsonrpc": "2.0", "id": draw(VALID_IDS), "method": "initialize", "params": params})


# A body that is not compressed although Content-Encoding says so is in the test further down.
ENCODINGS = mostly(st.none(), st.sampled_from(["gzip", "deflate", "identity"]), odds=5)

posts = st.one_of(
    st.builds(
        Post,
        body=bodies,
        content_type=CONTENT_TYPES,
        accept=ACCEPTS,
        session=st.sampled_from(["none", "live", "live", "live", "ended", "bogus"]),
        bogus_session=BOGUS_SESSIONS,
        version=VERSION_HEADERS,
        encoding=ENCODINGS,
    ),
    st.builds(
        Post,
        body=initializes(),
        content_type=CONTENT_TYPES,
        accept=ACCEPTS,
        session=st.sampled_from(["none", "none", "none", "live", "bogus"]),
        bogus_session=BOGUS_SESSIONS,
        version=VERSION_HEADERS,
    ),
)


@dataclass(frozen=True)
class Other:
    """A GET, DELETE or other verb with hostile headers; never one that would open a stream or end the
    live session."""

    verb: str
    session: str
    bogus_session: str
    accept: str | None
    version: str | None
    last_event_id: str | None


def harmless(other: Other) -> bool:
    if other.session != "live":
        return True
    if other.verb == "DELETE":
        return False
    if other.verb == "GET":
        garbage_id = other.last_event_id is not None and not re.fullmatch(r"\d+-\d+", other.last_event_id)
        return not good_accept_sse(other.accept) or garbage_id
    return True


def good_accept_sse(value: str | None) -> bool:
    return value is not None and ("text/event-stream" in value or "*/*" in value)


others = st.builds(
    Other,
    verb=st.sampled_from(["GET", "GET", "GET", "DELETE", "DELETE", "PUT", "PATCH", "OPTIONS"]),
    session=st.sampled_from(["none", "live", "ended", "bogus"]),
    bogus_session=BOGUS_SESSIONS,
    accept=st.one_of(st.just("text/event-stream"), BAD_ACCEPTS),
    version=VERSION_HEADERS,
    last_event_id=st.one_of(st.none(), HEADER_TEXT, st.sampled_from(["1-1", "2-0", "999-1", "x-1"])),
).filter(harmless)

runs = st.lists(mostly(posts, others, odds=4), min_size=1, max_size=8)


# -- sending and checking ----------------------------------------------------------------------------------


def check_error_body(body: Any, what: str) -> None:
    assert isinstance(body, dict), what
    assert body.get("jsonrpc") == "2.0", what
    assert "result" not in body, what
    assert body.get("id") is None or is_valid_id(body["id"]), what
    error = body.get("error")
    assert isinstance(error, dict), what
    assert isinstance(error.get("code"), int) and not isinstance(error["code"], bool), what
    assert isinstance(error.get("message"), str), what


def check_reply(reply: Any, request_id: Any, what: str) -> None:
    assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0", what
    assert ("result" in reply) != ("error" in reply), what
    if request_id is not NO_ID:
        assert reply.get("id") == request_id and type(reply.get("id")) is type(request_id), what
    if "error" in reply:
        check_error_body(reply, what)


async def read_sse(response: aiohttp.ClientResponse) -> list[tuple[str | None, Any]]:
    events: list[tuple[str | None, Any]] = []
    event_id, data = None, []
    async with asyncio.timeout(15):
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    events.append((event_id, json.loads("\n".join(data))))
                event_id, data = None, []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "id":
                    event_id = value.removeprefix(" ")
                elif name == "data":
                    data.append(value.removeprefix(" "))
    return events


async def check_response(
    gw: FuzzGateway, response: aiohttp.ClientResponse, wanted: Expect, what: str, initializing: bool
) -> None:
    what = f"{what}\n-> {response.status} {response.headers.get('Content-Type')}"
    assert response.status < 500, what
    assert response.status in wanted.statuses, f"{what}; expected one of {sorted(wanted.statuses)}"
    if response.status == 200 and response.content_type == "text/event-stream":
        events = await read_sse(response)
        assert events and all(e[0] and EVENT_ID.match(e[0]) for e in events), f"{what}\n{events}"
        check_reply(events[-1][1], wanted.reply_id, f"{what}\n{events}")
        return
    data = await response.read()
    if response.status == 202:
        assert data == b"", what
        return
    if response.content_type != "application/json":
        assert response.status >= 400, what  # aiohttp's own refusals (413, 405) are plain text
        return
    body = json.loads(data)
    what = f"{what}\n{data[:400]!r}"
    if response.status == 200:
        check_reply(body, wanted.reply_id, what)
        if initializing and "result" in body:
            assert SESSION in response.headers, what
            gw.opened.add(response.headers[SESSION])
        return
    if response.status == 403:
        return  # the Origin/Host guard (not fuzzed here) answers in its own shape
    check_error_body(body, what)
    if wanted.codes:
        assert body["error"]["code"] in wanted.codes, f"{what}; expected a code in {sorted(wanted.codes)}"
    if wanted.reply_id is not NO_ID:
        assert body["id"] == wanted.reply_id and type(body["id"]) is type(wanted.reply_id), what


async def send_post(gw: FuzzGateway, http: aiohttp.ClientSession, post: Post) -> None:
    headers, skip = post.headers(gw)
    wanted = expected(post)
    initializing = isinstance(post.body.parsed, dict) and post.body.parsed.get("method") == "initialize"
    async with http.post(gw.mcp, data=post.data(), headers=headers, skip_auto_headers=skip) as response:
        await check_response(gw, response, wanted, f"{post!r}", initializing)


async def send_other(gw: FuzzGateway, http: aiohttp.ClientSession, other: Other) -> None:
    session = {"live": gw.live, "ended": gw.ended, "bogus": other.bogus_session}.get(other.session)
    headers = {SESSION: session} if session is not None else {}
    skip = []
    if other.accept is None:
        skip.append("Accept")
    else:
        headers["Accept"] = other.accept
    if other.version is not None:
        headers[VERSION] = other.version
    if other.last_event_id is not None:
        headers["Last-Event-ID"] = other.last_event_id
    if other.verb in ("GET", "DELETE"):
        refusals = {"none": 400, "ended": 404, "bogus": 404, "live": 400}
        statuses = {refusals[other.session]}
        if other.verb == "GET" and not good_accept_sse(other.accept):
            statuses.add(406)
        if other.version is not None and other.version not in VERSIONS:
            statuses |= {400, 404, 405, 406}
        wanted = expect(*statuses)
    else:
        wanted = expect(405)
    async with http.request(other.verb, gw.mcp, headers=headers, skip_auto_headers=skip) as response:
        await check_response(gw, response, wanted, f"{other!r}", initializing=False)


async def run(gw: FuzzGateway, requests: list[Post | Other]) -> None:
    async with aiohttp.ClientSession() as http:
        for item in requests:
            if isinstance(item, Post):
                await send_post(gw, http, item)
            else:
                await send_other(gw, http, item)


async def delete_opened(gw: FuzzGateway) -> None:
    async with aiohttp.ClientSession() as http:
        for session in sorted(gw.opened):
            async with http.delete(gw.mcp, headers={SESSION: session}) as response:
                assert response.status == 200, (session, response.status)
            async with http.delete(gw.mcp, headers={SESSION: session}) as response:
                assert response.status == 404, (session, response.status)


# -- the test ----------------------------------------------------------------------------------------------


def post(data: bytes | Any, **overrides: Any) -> Post:
    body = Body(data) if isinstance(data, bytes) else encoded(data)
    fields: dict[str, Any] = {
        "content_type": "application/json",
        "accept": GOOD_ACCEPT,
        "session": "live",
        "bogus_session": "nope",
        "version": None,
    }
    return Post(body, **{**fields, **overrides})


PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": "i",
    "method": "initialize",
    "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": CLIENT_INFO},
}
EVERY_KIND: list[Post | Other] = [
    post(PING),
    post(PING, content_type="text/plain"),
    post(PING, content_type=None),
    post(PING, accept="application/json"),
    post(PING, accept=None),
    post(PING, accept="*/*"),
    post(b"{"),
    post(b"\xff\xfe\x00"),
    post([PING]),
    post([]),
    post(42),
    post({"jsonrpc": "2.0", "id": True, "method": "ping"}),
    post({"jsonrpc": "2.0", "id": 2**70, "method": "ping"}),
    post({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": ["ev_echo"]}),
    post({"jsonrpc": "2.0", "id": 6, "method": "no/such/method"}),
    post({"jsonrpc": "2.0", "id": 7, "result": {}}),
    # Found by hypothesis in a fresh-clone run: an error response with no "id" member at all.
    post({"jsonrpc": "2.0", "error": {"code": 0, "message": ""}}),
    post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"x": 1}}}),
    post(PING, session="none"),
    post(PING, session="ended"),
    post(PING, session="bogus", bogus_session=""),
    post(PING, version="2099-01-01"),
    post(PING, version="2025-06-18"),
    post(PING, encoding="gzip"),
    post({"jsonrpc": "2.0", "id": "z", "method": "tools/list"}, encoding="deflate"),
    post(INITIALIZE, session="none"),
    post(INITIALIZE),
    post({**INITIALIZE, "params": {"capabilities": {}}}, session="none"),
    Post(huge(MAX_BYTES + 1, "h"), "application/json", GOOD_ACCEPT, "live", "", None),
    Post(deep(8_000, "arrays"), "application/json", GOOD_ACCEPT, "live", "", None),
    Post(deep(1_100, "request"), "application/json", GOOD_ACCEPT, "live", "", None),
    Other("GET", "bogus", "x", "text/event-stream", None, None),
    Other("GET", "live", "", "text/event-stream", None, "garbage"),
    Other("GET", "live", "", "application/json", None, None),
    Other("DELETE", "none", "", None, None, None),
    Other("DELETE", "ended", "", None, "2099-01-01", None),
    Other("PUT", "live", "", None, None, None),
]


def test_hostile_http_requests_get_the_right_answers_and_break_nothing(gateway: FuzzGateway) -> None:
    since = gateway.stderr_size()
    asyncio.run(assert_gateway_healthy(gateway))  # warm up: anything opened lazily is open now
    baseline = gateway.settled_fds(None)

    def hostile_run(requests: list[Post | Other]) -> None:
        mark = gateway.stderr_size()
        asyncio.run(run(gateway, requests))
        gateway.assert_no_traceback(mark)

    fuzz = settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )(given(requests=runs)(example(requests=EVERY_KIND)(hostile_run)))
    try:
        fuzz()
        asyncio.run(assert_gateway_healthy(gateway))
        asyncio.run(delete_opened(gateway))
    finally:
        gateway.assert_no_traceback(since)
    assert gateway.opened, "no run ever opened a session: the fuzzing missed initialize"
    after = gateway.settled_fds(baseline + 2)
    assert after <= baseline + 2, f"{after} descriptors open after the fuzzing, {baseline} before"


# -- what never reaches the handler whole ------------------------------------------------------------------


def raw_exchange(gw: FuzzGateway, request: bytes, linger: float = 0.3) -> bytes:
    """Send raw bytes on a fresh connection, stop sending, and return whatever comes back."""
    host, _, port = gw.base.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        time.sleep(linger)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return received


def status_line(received: bytes) -> int | None:
    found = re.match(rb"HTTP/\d(?:\.\d)? (\d{3}) ", received)
    return int(found[1]) if found else None


POST_HEAD = (
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Accept: application/json, text/event-stream\r\n"
)
PING_BYTES = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def run_raw_cases(gw: FuzzGateway, cases: dict[str, tuple[bytes, bool]]) -> list[str]:
    """Each case: the bytes, and whether an answer is owed (a client that hung up mid-body gets none).

    Returns what went wrong, case by case: a 5xx, no 4xx where one is owed, or a traceback in the log.
    """
    problems = []
    for name, (request, answered) in cases.items():
        mark = gw.stderr_size()
        status = status_line(raw_exchange(gw, request))
        time.sleep(0.2)  # let the gateway log whatever it logs
        log = gw.stderr_since(mark)
        if status is not None and status >= 500:
            problems.append(f"{name}: {status}")
        elif answered and (status is None or not 400 <= status < 500):
            problems.append(f"{name}: {status} where a 4xx was owed")
        if "Traceback" in log:
            last = [line for line in log.splitlines() if line and not line.startswith(" ")][-1]
            problems.append(f"{name}: a traceback in the gateway's log ({last})")
    gw.proc.stderr_mark()
    asyncio.run(assert_gateway_healthy(gw))
    return problems


def test_a_body_that_cannot_be_read_is_refused_quietly(gateway: FuzzGateway) -> None:
    """A body the gateway cannot read (not what Content-Encoding says, or cut short by a client that
    went away) is the client's fault: a 4xx if anyone is still there to read it, never a 5xx, and
    nothing in the operator's log that looks like the gateway broke."""
    truncated_gzip = gzip.compress(PING_BYTES)[:20]
    cases = {
        "gzip that is not gzip": (
            POST_HEAD + b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde",
            True,
        ),
        "deflate that is not deflate": (
            POST_HEAD + b"Content-Encoding: deflate\r\nContent-Length: 5\r\n\r\nabcde",
            True,
        ),
        "gzip cut short": (
            POST_HEAD
            + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(truncated_gzip)
            + truncated_gzip,
            True,
        ),
        "a body shorter than its Content-Length, then the client hangs up": (
            POST_HEAD + b"Content-Length: 100\r\n\r\n" + PING_BYTES[:10],
            False,
        ),
        "a chunked body cut short, then the client hangs up": (
            POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n" + PING_BYTES[:5],
            False,
        ),
    }
    problems = run_raw_cases(gateway, cases)
    assert not problems, "\n".join(problems)


def test_malformed_http_framing_is_refused_quietly(gateway: FuzzGateway) -> None:
    """Requests that are not valid HTTP/1.1 never reach a handler; they get a 400, and one hostile client
    must not be able to fill the operator's log with tracebacks."""
    cases = {
        "an invalid chunk size": (
            POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
            True,
        ),
        "two Content-Lengths": (POST_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", True),
        "Content-Length and Transfer-Encoding": (
            POST_HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            True,
        ),
        "a Content-Length that is no number": (POST_HEAD + b"Content-Length: abc\r\n\r\n", True),
        "a header line without a colon": (POST_HEAD + b"NoColonHere\r\nContent-Length: 2\r\n\r\n{}", True),
        "a 20 kB header": (
            POST_HEAD + b"X-Long: " + b"a" * 20_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
            True,
        ),
        "an encoding the gateway cannot decode": (
            POST_HEAD + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
            True,
        ),
        "HTTP/9.9": (b"POST /mcp HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", True),
    }
    problems = run_raw_cases(gateway, cases)
    assert not problems, "\n".join(problems)
