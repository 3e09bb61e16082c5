"""Hostile frames against the WebSocket endpoint of a gateway run as an operator runs it.

One ``python -m proxy serve --port 0`` process (with the everything fixture as its backend) serves the
whole module. Hypothesis draws batches of frames: JSON garbage, truncated messages, scalars and arrays,
envelopes with every member wrong in turn, bad and colliding ids, huge numbers, 20,000-level nesting,
forged list cursors, unknown methods and tools, stray responses, random notifications and binary frames.
Each batch goes down one initialized session, and the replies are checked against what the contract
says each frame earns (see ``oracle``):

- every request with a valid id gets exactly one reply carrying that id, with an allowed code;
- malformed JSON gets -32700 with id null, an invalid envelope -32600 (with the id when it is valid),
  an unknown method -32601; notifications and responses get nothing;
- the session survives the batch (a ping and a real tool call still work), the gateway stays healthy
  (``/healthz``, and a new client can initialize and call the backend), it never prints a traceback,
  and once the clients have gone its open file descriptors are back where they started.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
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
ECHO = "everything_echo"
LATEST = "2025-11-25"
CLIENT_INFO = {"name": "portico-fuzz", "version": "1.0"}

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
RESOURCE_NOT_FOUND = -32002
RESULT = 0  # stands for "a result" where a code is expected

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LIST_METHODS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")
NAMED_METHODS = ("tools/call", "prompts/get")
URI_METHODS = ("resources/read", "resources/subscribe", "resources/unsubscribe")
KNOWN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "logging/setLevel",
        "completion/complete",
        *LIST_METHODS,
        *NAMED_METHODS,
        *URI_METHODS,
    }
)


# -- the gateway, as a process -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("fuzz-gateway")
    with serve_gateway(workdir, {"mcpServers": {"everything": everything("fuzz")}}) as running:
        yield running


# -- a raw client that keeps every frame -------------------------------------------------------------------


class Conn:
    """One WebSocket session; every text frame is parsed with Python's json, so big integers stay exact."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Any] = []
        self.strays: list[Any] = []  # anything that is not a JSON text frame
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str) -> Conn:
        return cls(await http.ws_connect(url, protocols=("mcp",)))

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                try:
                    self.frames.append(json.loads(message.data))
                except ValueError:
                    self.strays.append(message.data)
            else:
                self.strays.append(message)

    def replies(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and "id" in f and "method" not in f]

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if self._reader.done():
                raise AssertionError(
                    f"the gateway closed the connection (code {self.ws.close_code}) while waiting for {what}"
                )
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def send(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_str(payload)

    async def call(self, request_id: str, method: str, params: dict[str, Any] | None = None) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(json.dumps(message))

        def answered() -> bool:
            return any(r.get("id") == request_id for r in self.replies())

        assert await self.until(answered, 10.0, f"the reply to {method} {request_id!r}"), method
        return next(r for r in self.replies() if r.get("id") == request_id)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def initialized(http: aiohttp.ClientSession, url: str) -> Conn:
    conn = await Conn.open(http, url)
    reply = await conn.call(
        "fuzz-initialize-request",
        "initialize",
        {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": CLIENT_INFO},
    )
    assert reply["result"]["protocolVersion"] == LATEST, reply
    await conn.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    return conn


async def assert_echo(conn: Conn, text: str) -> None:
    reply = await conn.call(f"fuzz-echo-{text}", "tools/call", {"name": ECHO, "arguments": {"text": text}})
    assert "result" in reply, reply
    assert not reply["result"].get("isError"), reply
    assert reply["result"]["content"][0]["text"] == text, reply


async def assert_gateway_healthy(gw: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.base + "/healthz") as response:
            assert response.status == 200
        conn = await initialized(http, gw.url)
        await assert_echo(conn, "a brand-new client")
        await conn.close()


# -- what each frame earns ---------------------------------------------------------------------------------

IdKey = tuple[str, Any]
NULL: IdKey = ("null", None)


def id_key(value: Any) -> IdKey:
    """Ids compared by JSON type as well as value: 1, "1", true and 1.0 are four different ids."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, str):
        return ("str", value)
    return (type(value).__name__, json.dumps(value, sort_keys=True))


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


@dataclass(frozen=True)
class Slot:
    """One reply a frame may earn: the (id, code) pairs that would do, and whether it may be left out."""

    accepts: frozenset[tuple[IdKey, int]]
    optional: bool = False

    def __repr__(self) -> str:
        return f"{'maybe ' if self.optional else ''}one of {sorted(self.accepts, key=repr)}"


def reply(request_id: Any, *codes: int) -> Slot:
    return Slot(frozenset((id_key(request_id), code) for code in codes))


def null_error(*codes: int) -> Slot:
    return Slot(frozenset((NULL, code) for code in codes))


def maybe(slot: Slot) -> Slot:
    return Slot(slot.accepts, optional=True)


def either(first: Slot, second: Slot) -> Slot:
    return Slot(first.accepts | second.accepts, first.optional and second.optional)


NO_ID = ("none", None)  # marks a frame that puts no request in flight / cancels nothing


@dataclass(frozen=True)
class Frame:
    payload: str | bytes
    slot: Slot | None  # None: the frame earns no reply at all
    in_flight: IdKey = NO_ID  # the id of the request this frame starts
    cancels: IdKey = NO_ID  # the id a notifications/cancelled names

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how Hypothesis shows a failing batch
        printer.text(repr(self))

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 160 else self.payload[:120]
        more = "" if len(self.payload) <= 160 else f"... ({len(self.payload)} long)"
        return f"Frame({shown!r}{more} -> {self.slot})"


def request_codes(method: str, params: dict[str, Any]) -> tuple[int, ...]:
    """The codes a well-formed request may earn once the session is initialized (names route nowhere)."""
    if method == "ping":
        return (RESULT,)
    if method == "initialize":
        return (INVALID_REQUEST,)  # already initialized
    if method in LIST_METHODS:
        return (RESULT, INVALID_PARAMS)  # a forged or stale cursor is invalid params
    if method == "logging/setLevel":
        return (RESULT,) if params.get("level") in LOG_LEVELS else (INVALID_PARAMS,)
    if method in NAMED_METHODS or method == "completion/complete":
        return (INVALID_PARAMS,)
    if method in URI_METHODS:
        return (RESOURCE_NOT_FOUND, INVALID_PARAMS)
    if method == "":
        return (INVALID_REQUEST, METHOD_NOT_FOUND)
    return (METHOD_NOT_FOUND,)


def oracle(obj: Any) -> tuple[Slot | None, IdKey, IdKey]:
    """What the contract says one parsed message earns: (slot, the id it puts in flight, the id it cancels).

    Written from the contract, not from the gateway's code: JSON-RPC 2.0 envelopes, MCP ids (strings or
    integers, never null, booleans or floats), params always an object, nothing answers a response.
    """
    if not isinstance(obj, dict):
        return null_error(INVALID_REQUEST), NO_ID, NO_ID
    request_id = obj.get("id")
    valid_id = "id" in obj and is_valid_id(request_id)
    invalid = reply(request_id, INVALID_REQUEST) if valid_id else null_error(INVALID_REQUEST)
    if obj.get("jsonrpc") != "2.0":
        return invalid, NO_ID, NO_ID
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or ("params" in obj and not isinstance(obj["params"], dict)):
            return invalid, NO_ID, NO_ID
        params = obj.get("params", {})
        if "id" not in obj:
            if method == "":
                return maybe(null_error(INVALID_REQUEST)), NO_ID, NO_ID
            cancelled = params.get("requestId")
            if method == "notifications/cancelled" and is_valid_id(cancelled):
                return None, NO_ID, id_key(cancelled)
            return None, NO_ID, NO_ID
        if not valid_id:
            return null_error(INVALID_REQUEST), NO_ID, NO_ID
        return reply(request_id, *request_codes(method, params)), id_key(request_id), NO_ID
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        return invalid, NO_ID, NO_ID  # neither a request nor a response
    # A response to nothing the gateway asked: it is ignored. A malformed one may be refused, never
    # answered with anything else, and must never hurt the session.
    if has_result:
        return (None if valid_id else maybe(invalid)), NO_ID, NO_ID
    error = obj["error"]
    well_formed = (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )
    if well_formed and (valid_id or ("id" in obj and request_id is None)):
        return None, NO_ID, NO_ID
    return maybe(invalid), NO_ID, NO_ID


def message_frame(obj: Any, ensure_ascii: bool = True) -> Frame:
    slot, in_flight, cancels = oracle(obj)
    return Frame(json.dumps(obj, ensure_ascii=ensure_ascii), slot, in_flight, cancels)


# -- strategies --------------------------------------------------------------------------------------------

# Ids and other members the gateway inspects stay within 64 bits (bigger ones: see the test further down);
# params, results and error data may hold integers of any size JSON parsers accept as doubles.
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
HUGE = st.integers(min_value=-(10**300), max_value=10**300)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=16)


def json_values(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), ints, FLOATS, TEXT)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


VALUES = json_values(INT64)
BIG_VALUES = json_values(HUGE)
OBJECTS = st.dictionaries(st.text(max_size=8), BIG_VALUES, max_size=4)
NON_OBJECTS = VALUES.filter(lambda v: not isinstance(v, dict))
# Small integers and short strings collide often: duplicate ids are part of the game.
VALID_IDS = st.one_of(st.integers(-3, 3), INT64, st.text(max_size=12))
BAD_IDS = st.one_of(
    st.none(),
    st.booleans(),
    FLOATS,
    st.lists(VALUES, max_size=3),
    st.dictionaries(st.text(max_size=4), VALUES, max_size=3),
)
ANY_IDS = st.one_of(VALID_IDS, VALID_IDS, BAD_IDS)
NOTIFICATIONS = [
    "notifications/cancelled",
    "notifications/initialized",
    "notifications/progress",
    "notifications/roots/list_changed",
]
UNKNOWN_METHODS = st.text(max_size=40).filter(lambda m: m not in KNOWN_METHODS)
# Names and URIs that route to nothing: the fuzzer must not call the real tools (one of them kills the
# backend on purpose).
NOWHERE_NAMES = st.one_of(
    TEXT, st.sampled_from(["echo", "whoami", "crash", "everything", "greet"]), VALUES
).filter(lambda n: not (isinstance(n, str) and n.startswith("everything")))
NOWHERE_URIS = st.one_of(
    TEXT,
    st.sampled_from(["memo://one", "portico://", "portico://nobody/memo://one", "portico://everything"]),
    VALUES,
)


def forged_cursor(method: str, version: Any, offset: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"m": method, "v": version, "o": offset}).encode()).decode()


FORGED_CURSORS = st.builds(
    forged_cursor,
    st.sampled_from(LIST_METHODS),
    st.one_of(st.integers(-1, 5), VALUES),
    st.one_of(st.integers(-2, 600), VALUES),
)
CURSORS = st.one_of(
    TEXT,
    BIG_VALUES,
    FORGED_CURSORS,
    FORGED_CURSORS,
    st.builds(lambda raw: base64.urlsafe_b64encode(raw).decode(), st.binary(max_size=24)),
)


def params_for(method: str) -> st.SearchStrategy[dict[str, Any]]:
    """Params shaped (more or less) like the method's, with every member hostile in turn."""
    if method in NAMED_METHODS:
        specific = st.fixed_dictionaries(
            {"name": NOWHERE_NAMES}, optional={"arguments": BIG_VALUES, "_meta": OBJECTS}
        )
    elif method in URI_METHODS:
        specific = st.fixed_dictionaries({"uri": NOWHERE_URIS}, optional={"_meta": OBJECTS})
    elif method == "completion/complete":
        ref = st.fixed_dictionaries(
            {"type": st.one_of(st.sampled_from(["ref/prompt", "ref/resource"]), VALUES)},
            optional={"name": NOWHERE_NAMES, "uri": NOWHERE_URIS},
        )
        specific = st.fixed_dictionaries({"ref": st.one_of(ref, VALUES)}, optional={"argument": BIG_VALUES})
    elif method in LIST_METHODS:
        specific = st.fixed_dictionaries({"cursor": CURSORS}, optional={"_meta": OBJECTS})
    elif method == "logging/setLevel":
        specific = st.fixed_dictionaries({"level": st.one_of(st.sampled_from(LOG_LEVELS), VALUES)})
    elif method == "initialize":
        specific = st.fixed_dictionaries(
            {"protocolVersion": st.one_of(st.just(LATEST), VALUES)},
            optional={"capabilities": BIG_VALUES, "clientInfo": BIG_VALUES},
        )
    else:
        specific = OBJECTS
    return st.one_of(specific, OBJECTS)


def routes_nowhere(params: Any) -> bool:
    """True unless the params could name a real tool, prompt or resource of the backend."""
    if not isinstance(params, dict):
        return True
    ref = params.get("ref")
    candidates = [params.get("name"), params.get("uri")]
    if isinstance(ref, dict):
        candidates += [ref.get("name"), ref.get("uri")]
    return not any(
        isinstance(c, str) and c.startswith(("everything", "portico://everything/")) for c in candidates
    )


MISSING = object()


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """A message of some shape, with any member missing or wrong."""
    shape = draw(st.sampled_from(["request", "request", "notification", "response", "response", "chimera"]))
    message: dict[str, Any] = {}
    if draw(st.integers(0, 7)) > 0:
        message["jsonrpc"] = "2.0"
    elif (
        version := draw(
            st.one_of(st.just(MISSING), st.sampled_from(["1.0", "2", "2.0 ", "", 2.0, 2]), VALUES)
        )
    ) is not MISSING:
        message["jsonrpc"] = version
    if shape == "chimera":
        keys = st.one_of(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]), TEXT)
        values: st.SearchStrategy[Any] = st.one_of(
            st.just("2.0"), st.sampled_from(["ping", "tools/list", "x", ""]), VALID_IDS, st.just({}), VALUES
        )
        message.update(draw(st.dictionaries(keys, values, max_size=6)))
        return message
    if shape in ("request", "notification"):
        method = draw(
            st.one_of(
                st.sampled_from(sorted(KNOWN_METHODS)),
                UNKNOWN_METHODS,
                st.sampled_from(NOTIFICATIONS),
                VALUES,
            )
        )
        message["method"] = method
        params: Any = draw(params_for(method) if isinstance(method, str) else OBJECTS)
        if method == "notifications/cancelled":
            params = draw(
                st.one_of(st.fixed_dictionaries({"requestId": ANY_IDS}, optional={"reason": TEXT}), OBJECTS)
            )
        choice = draw(st.integers(0, 9))
        if choice == 0:
            params = draw(NON_OBJECTS)  # an array, a string, a number, null...
        if choice != 1:  # 1: no params at all
            message["params"] = params
        if shape == "request":
            request_id = draw(st.one_of(VALID_IDS, VALID_IDS, VALID_IDS, BAD_IDS, st.just(MISSING)))
            if request_id is not MISSING:
                message["id"] = request_id
        return message
    request_id = draw(st.one_of(VALID_IDS, BAD_IDS, BAD_IDS, st.just(MISSING)))
    if request_id is not MISSING:
        message["id"] = request_id
    good_error = st.fixed_dictionaries({"code": INT64, "message": TEXT}, optional={"data": BIG_VALUES})
    body = draw(st.sampled_from(["result", "error", "error", "both", "neither"]))
    if body in ("result", "both"):
        message["result"] = draw(st.one_of(OBJECTS, BIG_VALUES))
    if body in ("error", "both"):
        message["error"] = draw(st.one_of(good_error, good_error, good_error, VALUES))
    return message


message_frames = st.builds(
    message_frame,
    envelopes().filter(lambda m: not isinstance(m, dict) or routes_nowhere(m.get("params"))),
    st.booleans(),
)

batches = st.lists(envelopes().filter(lambda m: routes_nowhere(m.get("params"))), min_size=1, max_size=3)
non_object_frames = st.builds(message_frame, st.one_of(NON_OBJECTS, st.just([]), st.just([[[]]]), batches))

MALFORMED = [
    "",
    " ",
    "\n",
    "NaN",
    "Infinity",
    "-Infinity",
    "undefined",
    "nul",
    "tru",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
    "'single'",
    "{'a': 1}",
    '{"a":1,}',
    "[1,]",
    '{"a"}',
    '{"a":}',
    "{,}",
    "}{",
    "]",
    "[1 2]",
    "True",
    "None",
    '{"a":1 "b":2}',
    "\x00",
    '{"a":\x00}',
    "// comment\n{}",
    "/* comment */ {}",
    '"unterminated',
    '"\\x41"',
    '"tab\tinside"',
    '{"jsonrpc":"2.0","id":1,"method":"ping"} x',
    # Two messages in one frame are not one JSON text.
    '{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0","id":2,"method":"ping"}',
    '{"jsonrpc":"2.0","id":1,"method":"ping"}\n{"jsonrpc":"2.0","id":2,"method":"ping"}',
]


def truncated(message: Any, cut: int) -> Frame:
    text = json.dumps(message)
    # Only the last character closes the top-level object, so every shorter prefix is malformed.
    return Frame(text[: 1 + cut % (len(text) - 1)], null_error(PARSE_ERROR))


malformed_frames = st.one_of(
    st.sampled_from([Frame(text, null_error(PARSE_ERROR)) for text in MALFORMED]),
    st.builds(truncated, envelopes().filter(lambda m: isinstance(m, dict) and len(m) > 0), st.integers(0)),
    # An object that is never closed.
    st.builds(
        lambda s: Frame("{" + s, null_error(PARSE_ERROR)),
        st.text(st.characters(codec="utf-8", exclude_characters="}"), max_size=30),
    ),
)


def binary_frame(payload: bytes) -> Frame:
    # Text frames only; the gateway may name the id of a request it found inside, or not.
    try:
        slot, _, _ = oracle(json.loads(payload))
        ids = {key for key, _ in slot.accepts} if slot else set()
    except ValueError:
        ids = set()
    return Frame(payload, Slot(frozenset((key, INVALID_REQUEST) for key in {NULL, *ids})))


binary_frames = st.one_of(
    st.builds(binary_frame, st.binary(max_size=64)),
    st.builds(lambda m: binary_frame(json.dumps(m).encode()), envelopes()),
)


def deep_frame(depth: int, form: str, request_id: str) -> Frame:
    """Nested arrays and objects. Up to 300 levels a frame is handled like any other; far deeper, the
    gateway may refuse it as a parse error (RFC 8259 lets a parser limit nesting), but nothing else."""
    arrays = "[" * depth + "]" * depth
    objects = '{"a":' * depth + "null" + "}" * depth
    refusable = depth > 300
    if form in ("arrays", "objects"):
        slot = null_error(INVALID_REQUEST, PARSE_ERROR) if refusable else null_error(INVALID_REQUEST)
        return Frame(arrays if form == "arrays" else objects, slot)
    if form == "request":
        text = (
            '{"jsonrpc":"2.0","id":'
            + json.dumps(request_id)
            + ',"method":"tools/call","params":{"name":"nowhere","arguments":'
            + objects
            + "}}"
        )
        slot = reply(request_id, INVALID_PARAMS)
        return Frame(text, either(slot, null_error(PARSE_ERROR)) if refusable else slot, id_key(request_id))
    text = '{"jsonrpc":"2.0","method":"notifications/deep","params":{"deep":' + arrays + "}}"
    return Frame(text, maybe(null_error(PARSE_ERROR)) if refusable else None)


deep_frames = st.builds(
    deep_frame,
    st.one_of(st.integers(1, 300), st.sampled_from([1_100, 5_000, 20_000])),
    st.sampled_from(["arrays", "objects", "request", "notification"]),
    st.uuids().map(lambda u: f"deep-{u}"),
)


def real_call(request_id: Any, tool: str, arguments: Any, meta: Any) -> Frame:
    """A call that reaches the backend: a result (maybe a tool error), or invalid params, nothing else."""
    params: dict[str, Any] = {"name": f"everything_{tool}", "arguments": arguments}
    if meta is not MISSING:
        params["_meta"] = meta
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return Frame(json.dumps(message), reply(request_id, RESULT, INVALID_PARAMS), id_key(request_id))


real_calls = st.one_of(
    st.builds(
        real_call,
        VALID_IDS,
        st.just("echo"),
        st.one_of(st.fixed_dictionaries({"text": TEXT}), BIG_VALUES),
        st.one_of(st.just(MISSING), OBJECTS),
    ),
    st.builds(
        real_call,
        VALID_IDS,
        st.just("add"),
        st.one_of(st.fixed_dictionaries({"a": HUGE, "b": INT64}), OBJECTS),
        st.just(MISSING),
    ),
    # Progress notifications flow back while it runs, and a later cancellation may stop it.
    st.builds(
        real_call,
        VALID_IDS,
        st.just("slow"),
        st.fixed_dictionaries({"seconds": st.floats(0, 0.05), "steps": st.integers(1, 3)}),
        st.one_of(st.just(MISSING), st.fixed_dictionaries({"progressToken": VALUES})),
    ),
)


@st.composite
def stray_responses(draw: st.DrawFn) -> Any:
    """Responses to requests the gateway never sent, with every kind of id."""
    message: dict[str, Any] = {"jsonrpc": "2.0"}
    request_id = draw(st.one_of(VALID_IDS, BAD_IDS, st.just(MISSING)))
    if request_id is not MISSING:
        message["id"] = request_id
    if draw(st.booleans()):
        message["result"] = draw(st.one_of(OBJECTS, BIG_VALUES))
    else:
        message["error"] = draw(
            st.one_of(
                st.fixed_dictionaries({"code": INT64, "message": TEXT}, optional={"data": BIG_VALUES}), VALUES
            )
        )
    return message


@st.composite
def with_bad_id(draw: st.DrawFn) -> Any:
    """Any message, with an id of a type MCP does not allow."""
    message = draw(envelopes())
    message["id"] = draw(BAD_IDS)
    return message


@st.composite
def list_calls(draw: st.DrawFn) -> Frame:
    """A list request whose cursor is anything, often a forged one naming the right method."""
    method = draw(st.sampled_from(LIST_METHODS))
    forged = st.builds(
        forged_cursor,
        st.just(method),
        st.one_of(st.integers(-1, 5), VALUES),
        st.one_of(st.integers(0, 600), VALUES),
    )
    cursor = draw(st.one_of(forged, forged, CURSORS))
    message = {"jsonrpc": "2.0", "id": draw(VALID_IDS), "method": method, "params": {"cursor": cursor}}
    return message_frame(message)


frames = st.one_of(
    message_frames,
    message_frames,
    st.builds(message_frame, stray_responses()),
    st.builds(message_frame, with_bad_id().filter(lambda m: routes_nowhere(m.get("params")))),
    non_object_frames,
    malformed_frames,
    binary_frames,
    deep_frames,
    real_calls,
    list_calls(),
)

# Batches tried on every run before the random ones: one of every kind of frame, then alone each frame
# that once broke the gateway.
EVERY_KIND: list[Frame] = [
    message_frame({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    message_frame({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}),
    message_frame({"jsonrpc": "2.0", "id": "s", "method": "no/such/method"}),
    message_frame({"jsonrpc": "2.0", "id": True, "method": "ping"}),
    message_frame({"jsonrpc": "2.0", "id": 2.5, "method": "ping"}),
    message_frame({"jsonrpc": "1.0", "id": 7, "method": "ping"}),
    message_frame({"jsonrpc": "2.0", "id": 8, "method": 8}),
    message_frame({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": ["everything_echo"]}),
    message_frame({"jsonrpc": "2.0", "id": 2**64 - 1, "method": "ping"}),
    message_frame({"jsonrpc": "2.0", "id": -(2**63), "method": "ping"}),
    message_frame(
        {
            "jsonrpc": "2.0",
            "id": 10,
            "method": "tools/call",
            "params": {"name": "nope", "arguments": {"n": 10**300}},
        }
    ),
    message_frame({"jsonrpc": "2.0", "id": 11, "result": {}}),
    message_frame(
        {
            "jsonrpc": "2.0",
            "id": 12,
            "method": "tools/list",
            "params": {"cursor": forged_cursor("tools/list", 1, 0)},
        }
    ),
    message_frame({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"x": 1}}}),
    message_frame([]),
    message_frame([{"jsonrpc": "2.0", "id": 14, "method": "ping"}]),
    Frame("", null_error(PARSE_ERROR)),
    Frame(
        '{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0","id":2,"method":"ping"}',
        null_error(PARSE_ERROR),
    ),
    binary_frame(b"\xff\xfe\xfd"),
    deep_frame(5_000, "arrays", "deep-a"),
    deep_frame(5_000, "request", "deep-b"),
    real_call("real", "slow", {"seconds": 0.01, "steps": 2}, {"progressToken": {"an": "object"}}),
    message_frame({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "real"}}),
]
REGRESSIONS: list[list[Frame]] = [
    [message_frame({"jsonrpc": "2.0", "id": {"an": "object"}, "error": {"code": 1, "message": "x"}})],
    [message_frame({"jsonrpc": "2.0", "id": ["an", "array"], "error": {"code": 1, "message": "x"}})],
    [
        message_frame(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/list",
                "params": {"cursor": forged_cursor("tools/list", [], 0)},
            }
        )
    ],
    [
        message_frame(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "prompts/list",
                "params": {"cursor": forged_cursor("prompts/list", {"v": 1}, 0)},
            }
        )
    ],
]


# -- checking one batch ------------------------------------------------------------------------------------


@dataclass
class Exchange:
    frames: list[Frame]
    slots: list[tuple[int, Slot]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index, frame in enumerate(self.frames):
            if frame.slot is None:
                continue
            slot = frame.slot
            earlier = [f for f in self.frames[:index] if f.in_flight != NO_ID]
            later = self.frames[index + 1 :]
            if frame.in_flight != NO_ID and any(f.in_flight == frame.in_flight for f in earlier):
                # The same id may still be in flight: refusing the newcomer is right too.
                slot = Slot(slot.accepts | {(frame.in_flight, INVALID_REQUEST)}, slot.optional)
            if frame.in_flight != NO_ID and any(f.cancels == frame.in_flight for f in later):
                # A cancelled request gets no reply, if the cancellation came in time.
                slot = maybe(slot)
            self.slots.append((index, slot))

    def match(self, replies: list[tuple[IdKey, int]]) -> tuple[list[int], list[int]]:
        """Pair replies with slots (bipartite matching); return the unpaired mandatory slots and replies."""
        slots = [slot for _, slot in self.slots]
        slot_of: list[int | None] = [None] * len(replies)
        reply_of: list[int | None] = [None] * len(slots)

        def from_slot(s: int, seen: set[int]) -> bool:
            for r, pair in enumerate(replies):
                if r not in seen and pair in slots[s].accepts:
                    seen.add(r)
                    owner = slot_of[r]
                    if owner is None or from_slot(owner, seen):
                        slot_of[r], reply_of[s] = s, r
                        return True
            return False

        def from_reply(r: int, seen: set[int]) -> bool:
            for s, slot in enumerate(slots):
                if s not in seen and replies[r] in slot.accepts:
                    seen.add(s)
                    owner = reply_of[s]
                    if owner is None or from_reply(owner, seen):
                        reply_of[s], slot_of[r] = r, s
                        return True
            return False

        for s, slot in enumerate(slots):  # the mandatory slots first; augmenting keeps them paired
            if not slot.optional:
                from_slot(s, set())
        for r in range(len(replies)):
            if slot_of[r] is None:
                from_reply(r, set())
        missing = [
            self.slots[s][0] for s, slot in enumerate(slots) if not slot.optional and reply_of[s] is None
        ]
        extra = [r for r in range(len(replies)) if slot_of[r] is None]
        return missing, extra


def reply_code(message: dict[str, Any]) -> int:
    """The code of a reply (RESULT for a result), after checking it is a well-formed JSON-RPC response."""
    assert message.get("jsonrpc") == "2.0", message
    assert ("result" in message) != ("error" in message), message
    if "result" in message:
        assert isinstance(message["result"], dict), message
        return RESULT
    error = message["error"]
    assert isinstance(error, dict), message
    assert isinstance(error.get("code"), int) and not isinstance(error["code"], bool), message
    assert isinstance(error.get("message"), str), message
    code: int = error["code"]
    assert code != RESULT
    return code


async def run_batch(gw: GatewayProcess, batch: list[Frame]) -> None:
    exchange = Exchange(batch)
    log_start = gw.stderr_path.stat().st_size
    async with aiohttp.ClientSession() as http:
        conn = await initialized(http, gw.url)
        start = len(conn.frames)
        for frame in batch:
            await conn.send(frame.payload)

        def batch_replies() -> list[tuple[IdKey, int]]:
            ours = [r for r in conn.frames[start:] if isinstance(r, dict) and "id" in r and "method" not in r]
            return [
                (id_key(r["id"]), reply_code(r))
                for r in ours
                if not (isinstance(r["id"], str) and r["id"].startswith("fuzz-"))
            ]

        def complete() -> bool:
            return exchange.match(batch_replies())[0] == []

        # The session survived the batch: a ping sent after it is answered...
        pong = await conn.call("fuzz-ping-after-batch", "ping")
        assert pong == {"jsonrpc": "2.0", "id": "fuzz-ping-after-batch", "result": {}}, pong
        # ... and once every reply is in (or a second has passed), a second ping flushes any stragglers.
        await conn.until(complete, 1.0, "the replies to the batch")
        pong = await conn.call("fuzz-ping-flush", "ping")
        assert pong["result"] == {}, pong
        await assert_echo(conn, "the same session")

        replies = batch_replies()
        missing, extra = exchange.match(replies)
        frames_text = "\n".join(f"  [{i}] {f!r}" for i, f in enumerate(batch))
        assert not missing, (
            "no acceptable reply to frames " + ", ".join(map(str, missing)) + f"\nframes:\n{frames_text}\n"
            f"replies: {replies}\ngateway log:\n{gw.stderr_since(log_start)[-4000:]}"
        )
        assert not extra, (
            f"unexpected replies {[replies[r] for r in extra]}\nframes:\n{frames_text}\n"
            f"gateway log:\n{gw.stderr_since(log_start)[-4000:]}"
        )
        # The gateway never asked this client anything, and sent nothing that is not JSON.
        assert conn.strays == [], conn.strays
        requests = [f for f in conn.frames if isinstance(f, dict) and "method" in f and "id" in f]
        assert requests == [], requests
        assert all(isinstance(f, dict) for f in conn.frames), conn.frames
        await conn.close()
    await assert_gateway_healthy(gw)


# -- the tests ---------------------------------------------------------------------------------------------


def test_hostile_frames_get_the_right_answers_and_break_nothing(gateway: GatewayProcess) -> None:
    since = gateway.stderr_mark()
    asyncio.run(assert_gateway_healthy(gateway))  # warm up: anything opened lazily is open now
    baseline = gateway.settled_fds(None)

    def hostile_batch(batch: list[Frame]) -> None:
        asyncio.run(run_batch(gateway, batch))

    for batch in (EVERY_KIND, *REGRESSIONS):
        hostile_batch = example(batch=batch)(hostile_batch)
    fuzz = settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )(given(batch=st.lists(frames, min_size=1, max_size=50))(hostile_batch))
    try:
        fuzz()
    finally:
        gateway.assert_no_traceback(since)
    # Every client has gone: whatever they made the gateway open (sockets, sessions' resources) is closed.
    after = gateway.settled_fds(baseline + 2)
    assert after <= baseline + 2, f"{after} descriptors open after the fuzzing, {baseline} before"


def test_integer_ids_beyond_64_bits_are_answered_with_that_id(gateway: GatewayProcess) -> None:
    """An integer id is a valid id whatever its size: the reply must carry exactly that integer back."""
    since = gateway.stderr_mark()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            conn = await initialized(http, gateway.url)
            for request_id in (2**53 + 1, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, 10**30):
                await conn.send(f'{{"jsonrpc":"2.0","id":{request_id},"method":"ping"}}')
                pong = await conn.call(f"fuzz-after-{request_id}", "ping")
                assert pong["result"] == {}
                answers = [
                    r
                    for r in conn.replies()
                    if r.get("id") != pong["id"] and not str(r.get("id")).startswith("fuzz-")
                ]
                assert len(answers) == 1, (request_id, answers)
                answer = answers[0]
                conn.frames.remove(answer)
                assert answer["id"] == request_id and type(answer["id"]) is int, (request_id, answer)
                assert answer.get("result") == {} or answer["error"]["code"] == INVALID_REQUEST, answer
            await conn.close()

    asyncio.run(scenario())
    gateway.assert_no_traceback(since)


def test_invalid_utf8_in_a_text_frame_fails_only_that_connection(gateway: GatewayProcess) -> None:
    """RFC 6455 section 8.1: invalid UTF-8 in a text frame must fail the connection (1007)."""
    since = gateway.stderr_mark()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            bystander = await initialized(http, gateway.url)
            bad_utf8 = (b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"\xff"}', b"\xc3\x28", b"\xed\xa0\x80")
            for payload in bad_utf8:
                victim = await initialized(http, gateway.url)
                await victim.ws.send_frame(payload, aiohttp.WSMsgType.TEXT)
                await asyncio.wait_for(victim._reader, timeout=5.0)
                assert victim.ws.close_code == 1007, (payload, victim.ws.close_code)
                assert [r for r in victim.replies() if r.get("id") == 1] == []
                await assert_echo(bystander, "bystander")
            await bystander.close()
        await assert_gateway_healthy(gateway)

    asyncio.run(scenario())
    gateway.assert_no_traceback(since)
