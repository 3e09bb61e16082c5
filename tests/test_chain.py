"""The plugin chain: config order, modify, answer, reject, fail closed; and a real gateway's chain."""

from __future__ import annotations

import asyncio
import copy
import importlib
import itertools
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import config
from proxy.chain import Chain, Context, Direction, Handler, Key, NamedPlugin, Route
from proxy.errors import InvalidParams, Rejection
from proxy.gateway import Gateway
from proxy.jsonrpc import Message
from tests.conftest import StartGateway, everything
from tests.fake_session import FakeSession


def ctx_for(
    message: Message, direction: Direction = Direction.TO_BACKEND, route: Route | None = None
) -> Context:
    return Context(FakeSession(), direction, message.get("method", ""), route, time.monotonic() + 10)


def request(method: str = "tools/call", request_id: Any = 7, **params: Any) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


class Terminal:
    """Records what reached the end of the chain and answers with a fixed result."""

    def __init__(self, log: list[str] | None = None, raises: Exception | None = None) -> None:
        self.received: list[Message] = []
        self.log = log if log is not None else []
        self.raises = raises

    async def __call__(self, ctx: Context, message: Message) -> Message | None:
        self.log.append("terminal")
        self.received.append(copy.deepcopy(message))
        if self.raises is not None:
            raise self.raises
        if "id" not in message:
            return None
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [], "from": "terminal"}}


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        self.log.append(f"{self.name} in")
        reply = await call_next(ctx, message)
        self.log.append(f"{self.name} out")
        return reply


def chain_of(terminal: Handler, *plugins: Any) -> Chain:
    return Chain([NamedPlugin(f"p{i}", p) for i, p in enumerate(plugins)], terminal)


# -- order -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", list(Direction))
async def test_plugins_run_in_config_order_like_an_onion(direction: Direction) -> None:
    log: list[str] = []
    terminal = Terminal(log)
    chain = chain_of(terminal, Recorder("a", log), Recorder("b", log), Recorder("c", log))
    reply = await chain.dispatch(ctx_for(request(), direction), request())
    assert reply is not None and reply["result"]["from"] == "terminal"
    assert log == ["a in", "b in", "c in", "terminal", "c out", "b out", "a out"]


async def test_the_reverse_config_gives_the_reverse_order() -> None:
    log: list[str] = []
    chain = chain_of(Terminal(log), Recorder("c", log), Recorder("b", log), Recorder("a", log))
    await chain.dispatch(ctx_for(request()), request())
    assert log == ["c in", "b in", "a in", "terminal", "a out", "b out", "c out"]


async def test_notifications_travel_the_same_order_and_return_none() -> None:
    log: list[str] = []
    terminal = Terminal(log)
    chain = chain_of(terminal, Recorder("a", log), Recorder("b", log))
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}}
    assert await chain.dispatch(ctx_for(note, Direction.TO_CLIENT), note) is None
    assert log == ["a in", "b in", "terminal", "b out", "a out"]
    assert terminal.received == [note]


async def test_an_empty_chain_is_the_terminal() -> None:
    terminal = Terminal()
    chain = chain_of(terminal)
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply == {"jsonrpc": "2.0", "id": 7, "result": {"content": [], "from": "terminal"}}
    assert len(terminal.received) == 1


# -- modify, answer, reject --------------------------------------------------------------------------------


async def test_a_plugin_modifies_the_message_and_the_reply() -> None:
    class Rewrite:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            changed = {**message, "params": {**message["params"], "arguments": {"text": "rewritten"}}}
            reply = await call_next(ctx, changed)
            assert reply is not None
            reply["result"]["_meta"] = {"example.com/seen": True}
            return reply

    terminal = Terminal()
    chain = chain_of(terminal, Rewrite())
    original = request(name="echo", arguments={"text": "hello"})
    reply = await chain.dispatch(ctx_for(original), original)
    assert terminal.received[0]["params"]["arguments"] == {"text": "rewritten"}
    assert reply is not None
    assert reply["result"]["_meta"] == {"example.com/seen": True}
    assert reply["result"]["from"] == "terminal"


async def test_a_plugin_answers_by_itself_without_the_terminal() -> None:
    log: list[str] = []

    class Cache:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [], "cached": True}}

    terminal = Terminal(log)
    chain = chain_of(terminal, Recorder("before", log), Cache(), Recorder("after", log))
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply == {"jsonrpc": "2.0", "id": 7, "result": {"content": [], "cached": True}}
    assert terminal.received == []
    assert log == ["before in", "before out"]


class Refuse:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize("request_id", [7, "abc-1", 0])
async def test_a_rejection_becomes_an_error_reply_with_the_plugins_code(request_id: Any) -> None:
    log: list[str] = []
    terminal = Terminal(log)
    refuse = Refuse(Rejection("not on my watch", code=-32099, data={"policy": "p1"}))
    chain = chain_of(terminal, Recorder("outer", log), refuse, Recorder("inner", log))
    message = request(request_id=request_id)
    reply = await chain.dispatch(ctx_for(message), message)
    assert reply == {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": -32099, "message": "not on my watch", "data": {"policy": "p1"}},
    }
    assert terminal.received == []
    # The refusal travels out through the outer layers as an exception; nothing inner ever runs.
    assert log == ["outer in"]
    assert refuse.calls == 1


async def test_a_rejection_without_a_code_uses_the_rejected_code() -> None:
    terminal = Terminal()
    chain = chain_of(terminal, Refuse(Rejection("no")))
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply is not None
    assert reply["error"] == {"code": -32060, "message": "no"}
    assert terminal.received == []


async def test_any_portico_error_keeps_its_code() -> None:
    chain = chain_of(Terminal(), Refuse(InvalidParams("Invalid params: no")))
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply is not None and reply["error"]["code"] == -32602


async def test_a_plugin_that_crashes_gives_an_internal_error_and_stops_the_message() -> None:
    log: list[str] = []
    terminal = Terminal(log)
    chain = chain_of(
        terminal, Recorder("outer", log), Refuse(KeyError("secret detail")), Recorder("inner", log)
    )
    reply = await chain.dispatch(ctx_for(request(request_id=3)), request(request_id=3))
    assert reply is not None
    assert reply["id"] == 3
    assert reply["error"]["code"] == -32603
    assert "p1" in reply["error"]["message"]
    assert "secret detail" not in str(reply)
    assert terminal.received == []
    assert log == ["outer in"]


async def test_a_plugin_that_crashes_on_the_reply_still_gives_an_error() -> None:
    class BadReply:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            reply = await call_next(ctx, message)
            return reply["nope"]  # type: ignore[index]

    terminal = Terminal()
    chain = chain_of(terminal, BadReply())
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply is not None and reply["error"]["code"] == -32603
    assert "result" not in reply


async def test_a_rejected_notification_returns_none() -> None:
    terminal = Terminal()
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1}}
    for exc in (Rejection("no"), RuntimeError("bug")):
        chain = chain_of(terminal, Refuse(exc))
        assert await chain.dispatch(ctx_for(note, Direction.TO_CLIENT), note) is None
    assert terminal.received == []


async def test_a_terminal_failure_is_an_internal_error() -> None:
    chain = chain_of(Terminal(raises=RuntimeError("gateway bug")), Recorder("a", []))
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply is not None and reply["error"]["code"] == -32603
    chain = chain_of(Terminal(raises=InvalidParams("Unknown tool: 'x'")))
    reply = await chain.dispatch(ctx_for(request()), request())
    assert reply is not None and reply["error"] == {"code": -32602, "message": "Unknown tool: 'x'"}


async def test_plugins_share_data_through_typed_keys_and_see_the_route() -> None:
    who: Key[str] = Key("who")
    seen: list[Any] = []

    class Authenticate:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            ctx.set(who, "alice")
            ctx.principal = "alice"
            return await call_next(ctx, message)

    class Authorize:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            seen.append((ctx.get(who), ctx.principal, ctx.route, ctx.method, ctx.direction, ctx.session.id))
            assert 0 < ctx.remaining() <= 10
            return await call_next(ctx, message)

    route = Route("weather", "tool", "get_weather", "weather_get_weather")
    chain = chain_of(Terminal(), Authenticate(), Authorize())
    await chain.dispatch(ctx_for(request(), route=route), request())
    assert seen == [("alice", "alice", route, "tools/call", Direction.TO_BACKEND, "session-1")]


async def test_concurrent_messages_do_not_share_a_context() -> None:
    key: Key[int] = Key("n")

    class Slow:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            ctx.set(key, message["id"])
            await asyncio.sleep(0.01)
            reply = await call_next(ctx, message)
            assert reply is not None
            reply["result"]["n"] = ctx.get(key)
            return reply

    chain = chain_of(Terminal(), Slow())
    messages = [request(request_id=i) for i in range(20)]
    replies = await asyncio.gather(*(chain.dispatch(ctx_for(m), m) for m in messages))
    assert [r["result"]["n"] for r in replies if r] == list(range(20))


# -- through a real gateway --------------------------------------------------------------------------------

RECORDER_MODULE = """
from __future__ import annotations

from dataclasses import dataclass

from proxy.chain import Context, Handler
from proxy.jsonrpc import Message

TRAIL: list[str] = []


@dataclass(frozen=True)
class Options:
    label: str = "recorder"


class Recorder:
    Options = Options

    def __init__(self, options: Options) -> None:
        self.label = options.label
        self.seen: list[tuple[str, str, object, bool]] = []

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        TRAIL.append(f"{self.label} {ctx.direction.value} {ctx.method}")
        self.seen.append((ctx.direction.name, ctx.method, ctx.route, "id" in message))
        return await call_next(ctx, message)


plugin = Recorder
"""

_modules = itertools.count()


@pytest.fixture
def recorder_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"portico_test_recorder_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(RECORDER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


async def test_a_real_gateway_runs_requests_and_notifications_through_the_chain(
    start_gateway: StartGateway, recorder_module: str
) -> None:
    gw = await start_gateway(
        {
            "mcpServers": {"ev": everything("ev")},
            "plugins": [
                {"name": recorder_module, "options": {"label": "first"}},
                {"name": recorder_module, "options": {"label": "second"}},
            ],
        }
    )
    first, second = (p.plugin for p in gw.gateway.plugins)
    trail: list[str] = sys.modules[recorder_module].TRAIL

    client = await gw.client(capabilities={"roots": {}})

    async def roots(_: Message) -> dict[str, Any]:
        return {"roots": [{"uri": "file:///work", "name": "work"}]}

    client.handlers["roots/list"] = roots

    result = await client.call("tools/call", {"name": "ev_echo", "arguments": {"text": "hi"}})
    assert result["content"][0]["text"] == "hi"
    seen = first.seen  # type: ignore[attr-defined]
    assert ("TO_BACKEND", "initialize", None, True) in seen
    assert ("TO_BACKEND", "notifications/initialized", None, False) in seen
    assert ("TO_BACKEND", "tools/call", Route("ev", "tool", "echo", "ev_echo"), True) in seen

    # A backend notification on its way to the client (a log message caused by the call).
    await client.call(
        "tools/call", {"name": "ev_log", "arguments": {"level": "warning", "message": "careful"}}
    )
    note = await client.wait_notification("notifications/message")
    assert note["params"]["data"] == "careful"
    to_client = [s for s in seen if s[0] == "TO_CLIENT"]
    assert (
        "TO_CLIENT",
        "notifications/message",
        Route("ev", "backend", "notifications/message", "notifications/message"),
        False,
    ) in to_client

    # A backend request on its way to the client (roots/list), and the client's answer on its way back.
    result = await client.call("tools/call", {"name": "ev_roots", "arguments": {}})
    assert result["content"][0]["text"] == "file:///work"
    assert any(s[0] == "TO_CLIENT" and s[1] == "roots/list" and s[3] for s in seen)

    # Both plugin instances saw the same messages, always "first" before "second", in both directions.
    assert second.seen == first.seen  # type: ignore[attr-defined]
    for direction, method in (
        ("to_backend", "tools/call"),
        ("to_client", "notifications/message"),
        ("to_client", "roots/list"),
    ):
        firsts = [i for i, t in enumerate(trail) if t == f"first {direction} {method}"]
        seconds = [i for i, t in enumerate(trail) if t == f"second {direction} {method}"]
        assert firsts and len(firsts) == len(seconds)
        assert all(f < s for f, s in zip(firsts, seconds, strict=True))


async def test_the_gateway_closes_plugins_that_hold_resources_when_it_stops() -> None:
    closed: list[str] = []

    class AsyncHolder:
        async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
            return await call_next(ctx, message)

        async def close(self) -> None:
            closed.append("async")

    class SyncHolder(AsyncHolder):
        def close(self) -> None:  # type: ignore[override]
            closed.append("sync")

    class Broken(AsyncHolder):
        async def close(self) -> None:
            raise RuntimeError("cannot close")

    plugins = [NamedPlugin("a", AsyncHolder()), NamedPlugin("b", Broken()), NamedPlugin("s", SyncHolder())]
    gateway = Gateway(config.parse("{}"), plugins)
    await gateway.start()
    await gateway.stop()
    # One plugin failing to close does not keep the others open.
    assert closed == ["async", "sync"]
