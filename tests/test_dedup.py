"""The dedup plugin: identical concurrent requests become one backend call.

Gateway tests run the counting fixture backend (``c``), whose ``stats`` tool counts every call it really
received; unit tests drive the group mechanics through ``proxy.chain.Chain`` with a terminal of our own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from plugins.dedup import Dedup, DedupOptions
from proxy.chain import (
    POLICY_VERSION,
    Chain,
    Context,
    Direction,
    NamedPlugin,
    Principal,
    Route,
)
from proxy.errors import BackendTimeout
from proxy.jsonrpc import Message
from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.fake_session import FakeSession
from tests.header_auth import HEADER_AUTH
from tests.rawclient import RawClient

SLOW = {"name": "c_slow_lookup", "arguments": {"key": "k", "seconds": 0.5}}


async def gateway(
    start_gateway: StartGateway, authenticated: bool = False, **options: Any
) -> tuple[RunningGateway, Dedup]:
    plugins: list[dict[str, Any]] = [{"name": "dedup", "options": options}]
    if authenticated:
        plugins.insert(0, HEADER_AUTH)
    gw = await start_gateway({"mcpServers": {"c": fixture_server("counting_server.py")}, "plugins": plugins})
    dedup = next(p.plugin for p in gw.gateway.plugins if p.name == "dedup")
    assert isinstance(dedup, Dedup)
    return gw, dedup


async def stats(client: RawClient) -> dict[str, int]:
    reply = await client.call("tools/call", {"name": "c_stats", "arguments": {}})
    counted: dict[str, int] = json.loads(reply["content"][0]["text"])
    return counted


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def call(request_id: str, params: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


# -- through a real gateway ---------------------------------------------------------------------------


async def test_identical_concurrent_calls_make_one_backend_call(start_gateway: StartGateway) -> None:
    gw, dedup = await gateway(start_gateway)
    client = await gw.client()
    replies = await asyncio.gather(*(client.request("tools/call", SLOW, id=f"r{i}") for i in range(20)))
    assert [r["id"] for r in replies] == [f"r{i}" for i in range(20)]
    assert all(r["result"] == replies[0]["result"] for r in replies)
    assert replies[0]["result"]["content"][0]["text"] == "k #1"
    assert (await stats(client))["tool:slow_lookup"] == 1
    assert dedup.counts() == {"calls": 20, "shared": 19, "in_flight": 0}


async def test_different_arguments_and_unhinted_tools_are_not_shared(start_gateway: StartGateway) -> None:
    gw, _ = await gateway(start_gateway)
    client = await gw.client()
    keys = [{"name": "c_slow_lookup", "arguments": {"key": f"k{i}", "seconds": 0.3}} for i in range(5)]
    appends = [{"name": "c_append", "arguments": {"key": "a", "value": "v"}}] * 10
    await asyncio.gather(*(client.call("tools/call", params) for params in keys + appends))
    counted = await stats(client)
    assert counted["tool:slow_lookup"] == 5
    assert counted["tool:append"] == 10  # no readOnlyHint: every call reaches the backend


async def test_a_later_identical_call_is_a_new_call(start_gateway: StartGateway) -> None:
    gw, _ = await gateway(start_gateway)
    client = await gw.client()
    first = await client.call("tools/call", {"name": "c_lookup", "arguments": {"key": "x"}})
    second = await client.call("tools/call", {"name": "c_lookup", "arguments": {"key": "x"}})
    assert [first["content"][0]["text"], second["content"][0]["text"]] == ["x #1", "x #2"]


async def test_cancelling_the_leader_leaves_the_followers_answered(start_gateway: StartGateway) -> None:
    gw, dedup = await gateway(start_gateway)
    client = await gw.client()
    await client.send(call("leader", SLOW))
    await until(lambda: dedup.counts()["in_flight"] == 1)
    followers = [asyncio.create_task(client.request("tools/call", SLOW, id=f"f{i}")) for i in range(3)]
    await until(lambda: dedup.counts()["calls"] == 4)
    await client.notify("notifications/cancelled", {"requestId": "leader", "reason": "test"})
    replies = await asyncio.gather(*followers)
    assert [r["result"]["content"][0]["text"] for r in replies] == ["k #1"] * 3
    counted = await stats(client)
    assert counted["tool:slow_lookup"] == 1
    assert "method:notifications/cancelled" not in counted  # the backend's call ran to its end
    assert client.unmatched == []  # and the cancelled leader got no reply


async def test_closing_the_leaders_connection_leaves_the_followers_answered(
    start_gateway: StartGateway,
) -> None:
    gw, dedup = await gateway(start_gateway)
    leader, follower = await gw.client(), await gw.client()
    await leader.send(call("leader", SLOW))
    await until(lambda: dedup.counts()["in_flight"] == 1)
    pending = asyncio.create_task(follower.call("tools/call", SLOW))
    await until(lambda: dedup.counts()["calls"] == 2)
    await leader.close()
    assert (await pending)["content"][0]["text"] == "k #1"
    counted = await stats(follower)
    assert counted["tool:slow_lookup"] == 1
    assert "method:notifications/cancelled" not in counted
    # The call outlived the session that started it; the backend's count of calls per session (which
    # decides where its own requests go) keeps nothing of that session.
    await until(lambda: all(n > 0 for n in gw.gateway.backends["c"]._inflight.values()))
    assert len(gw.gateway.backends["c"]._inflight) == 0


async def test_when_every_caller_has_gone_the_backend_call_is_cancelled(start_gateway: StartGateway) -> None:
    gw, dedup = await gateway(start_gateway)
    client = await gw.client()
    slow = {"name": "c_slow_lookup", "arguments": {"key": "k", "seconds": 3}}
    for i in range(3):
        await client.send(call(f"r{i}", slow))
    await until(lambda: dedup.counts()["calls"] == 3)
    for i in range(3):
        await client.notify("notifications/cancelled", {"requestId": f"r{i}"})
    await until(lambda: dedup.counts()["in_flight"] == 0)
    # The backend hears of the cancellation once, for its one call (a background send: poll for it).
    async with asyncio.timeout(5):
        while "method:notifications/cancelled" not in (counted := await stats(client)):
            await asyncio.sleep(0.05)
    assert counted["tool:slow_lookup"] == 1 and counted["method:notifications/cancelled"] == 1
    assert client.unmatched == []


async def test_callers_with_different_principals_do_not_share(start_gateway: StartGateway) -> None:
    gw, dedup = await gateway(start_gateway, authenticated=True)
    alice, bob, alice_again = [
        await gw.client(headers={"Authorization": f"Bearer {name}"}) for name in ("alice", "bob", "alice")
    ]
    await asyncio.gather(*(c.call("tools/call", SLOW) for c in (alice, bob, alice_again)))
    assert (await stats(alice))["tool:slow_lookup"] == 2  # alice's two sessions shared; bob had his own
    assert dedup.counts()["shared"] == 1


async def test_shared_backends_are_shared_between_principals(start_gateway: StartGateway) -> None:
    gw, dedup = await gateway(start_gateway, authenticated=True, shared_backends=["c"])
    alice, bob = [await gw.client(headers={"Authorization": f"Bearer {n}"}) for n in ("alice", "bob")]
    await asyncio.gather(*(c.call("tools/call", SLOW) for c in (alice, bob)))
    assert (await stats(alice))["tool:slow_lookup"] == 1
    assert dedup.counts()["shared"] == 1


async def test_bad_options_are_a_clear_config_error(start_gateway: StartGateway) -> None:
    with pytest.raises(Exception, match=r"plugins\[0\]\.options\.tool: unknown option"):
        await gateway(start_gateway, tool=["c/tool/*"])


# -- the group mechanics, through a chain -------------------------------------------------------------

READ_TOOL = Route("b", "tool", "read", "b_read", read_only=True)
WRITE_TOOL = Route("b", "tool", "write", "b_write")


class SlowBackend:
    """A terminal that answers after ``release`` is set, counting the calls that reached it."""

    def __init__(self) -> None:
        self.calls: list[Message] = []
        self.cancelled = 0
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, ctx: Context, message: Message) -> Message | None:
        self.calls.append(message)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        return {
            "jsonrpc": "2.0",
            "id": message["id"],
            "result": {"content": [{"type": "text", "text": "hi"}]},
        }


def context(route: Route | None = READ_TOOL, **kwargs: Any) -> Context:
    direction = kwargs.pop("direction", Direction.TO_BACKEND)
    return Context(FakeSession(), direction, "tools/call", route, time.monotonic() + 10, **kwargs)


def chained(backend: SlowBackend, options: DedupOptions | None = None) -> tuple[Chain, Dedup]:
    dedup = Dedup(options)
    return Chain([NamedPlugin("dedup", dedup)], backend), dedup


async def run_together(chain: Chain, backend: SlowBackend, *calls: tuple[Context, Message]) -> list[Any]:
    tasks = [asyncio.create_task(chain.dispatch(ctx, message)) for ctx, message in calls]
    await asyncio.sleep(0.01)  # every caller reaches the plugin before the backend answers
    backend.release.set()
    return await asyncio.gather(*tasks)


async def test_each_caller_gets_its_own_copy_under_its_own_id() -> None:
    backend = SlowBackend()
    chain, _ = chained(backend)
    params = {"name": "b_read", "arguments": {"a": 1, "b": 2}}
    reordered = {"arguments": {"b": 2, "a": 1}, "name": "b_read", "_meta": {"progressToken": 7}}
    one, two = await run_together(
        chain, backend, (context(), call("1", params)), (context(), call("2", reordered))
    )
    assert len(backend.calls) == 1
    assert (one["id"], two["id"]) == ("1", "2")
    one["result"]["content"][0]["text"] = "changed by a plugin further out"
    assert two["result"]["content"][0]["text"] == "hi"


async def test_errors_are_shared_each_under_its_own_id() -> None:
    backend = SlowBackend()
    backend.fail_with = BackendTimeout("too slow")
    chain, _ = chained(backend)
    replies = await run_together(
        chain, backend, *((context(), call(f"r{i}", {"name": "b_read"})) for i in range(3))
    )
    assert len(backend.calls) == 1
    assert [r["id"] for r in replies] == ["r0", "r1", "r2"]
    assert all(r["error"]["code"] == BackendTimeout.code for r in replies)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (context(), context(route=WRITE_TOOL)),  # not read-only
        (context(route=None), context(route=None)),  # no route
        (context(direction=Direction.TO_CLIENT), context(direction=Direction.TO_CLIENT)),
        (context(principal=Principal("alice")), context(principal=Principal("bob"))),
        (
            context(principal=Principal("a", credential="t1")),
            context(principal=Principal("a", credential="t2")),
        ),
    ],
    ids=["not read-only", "no route", "to the client", "other subject", "other credential"],
)
async def test_what_is_not_shared(first: Context, second: Context) -> None:
    backend = SlowBackend()
    chain, dedup = chained(backend)
    await run_together(chain, backend, (first, call("1", {"name": "x"})), (second, call("2", {"name": "x"})))
    assert len(backend.calls) == 2 and dedup.counts()["shared"] == 0


async def test_callers_under_different_policy_versions_do_not_share() -> None:
    backend = SlowBackend()
    chain, _ = chained(backend)
    old, new = context(), context()
    old.set(POLICY_VERSION, 1)
    new.set(POLICY_VERSION, 2)
    await run_together(chain, backend, (old, call("1", {"name": "x"})), (new, call("2", {"name": "x"})))
    assert len(backend.calls) == 2


async def test_a_restricted_caller_never_gets_another_callers_answer() -> None:
    backend = SlowBackend()
    chain, _ = chained(backend)
    restricted = context()
    restricted.restrict(lambda route: False)
    await run_together(
        chain, backend, (context(), call("1", {"name": "x"})), (restricted, call("2", {"name": "x"}))
    )
    assert len(backend.calls) == 2


async def test_the_tools_option_shares_named_tools_without_hints() -> None:
    backend = SlowBackend()
    chain, _ = chained(backend, DedupOptions(tools=("b/tool/wr*",)))
    await run_together(
        chain, backend, *((context(route=WRITE_TOOL), call(f"{i}", {"name": "w"})) for i in range(3))
    )
    assert len(backend.calls) == 1


async def test_session_backends_share_only_within_a_session() -> None:
    backend = SlowBackend()
    chain, _ = chained(backend, DedupOptions(session_backends=("b",)))
    here, also_here, elsewhere = context(), context(), context()
    elsewhere.session = FakeSession(id="session-2")
    calls = [(ctx, call(str(i), {"name": "x"})) for i, ctx in enumerate((here, also_here, elsewhere))]
    await run_together(chain, backend, *calls)
    assert len(backend.calls) == 2


async def test_the_call_is_cancelled_only_when_every_caller_has_gone() -> None:
    backend = SlowBackend()
    chain, dedup = chained(backend)
    tasks = [asyncio.create_task(chain.dispatch(context(), call(str(i), {"name": "x"}))) for i in range(3)]
    await asyncio.sleep(0.01)
    for task in tasks[:2]:
        task.cancel()
    await asyncio.sleep(0.01)
    assert backend.cancelled == 0 and dedup.counts()["in_flight"] == 1
    tasks[2].cancel()
    await asyncio.sleep(0.01)
    assert backend.cancelled == 1 and dedup.counts()["in_flight"] == 0
    # A newcomer after that starts a call of its own rather than joining the cancelled one.
    backend.release.set()
    reply = await chain.dispatch(context(), call("late", {"name": "x"}))
    assert reply is not None and reply["id"] == "late" and len(backend.calls) == 2


async def test_a_caller_arriving_as_the_call_ends_makes_a_call_of_its_own() -> None:
    # The newcomer is woken by the backend's answer itself, so it reaches the plugin after the call has
    # ended but before its group is forgotten: it must not take that call's reply (whose one caller may
    # already hold it as its own), but make a call of its own.
    answered = asyncio.get_running_loop().create_future()

    class AnsweringBackend(SlowBackend):
        async def __call__(self, ctx: Context, message: Message) -> Message | None:
            if not answered.done():
                answered.set_result(None)
            self.release.set()
            return await super().__call__(ctx, message)

    backend = AnsweringBackend()
    chain, dedup = chained(backend)

    async def newcomer() -> Message | None:
        await answered
        return await chain.dispatch(context(), call("late", {"name": "x"}))

    late = asyncio.create_task(newcomer())
    first = await chain.dispatch(context(), call("first", {"name": "x"}))
    second = await late
    assert first is not None and second is not None
    assert (first["id"], second["id"]) == ("first", "late")
    assert len(backend.calls) == 2 and dedup.counts()["shared"] == 0
    first["result"]["content"][0]["text"] = "changed by a plugin further out"
    assert second["result"]["content"][0]["text"] == "hi"


async def test_a_lone_caller_gets_the_reply_under_its_own_id() -> None:
    class OtherIdBackend(SlowBackend):
        async def __call__(self, ctx: Context, message: Message) -> Message | None:
            reply = await super().__call__(ctx, message)
            return None if reply is None else {**reply, "id": "the backend's own"}

    backend = OtherIdBackend()
    backend.release.set()
    chain, dedup = chained(backend)
    replies: list[Any] = [await chain.dispatch(context(), call(f"r{i}", {"name": "x"})) for i in range(2)]
    assert [r["id"] for r in replies] == ["r0", "r1"]
    assert [r["result"]["content"][0]["text"] for r in replies] == ["hi", "hi"]
    assert len(backend.calls) == 2
    assert dedup.counts() == {"calls": 2, "shared": 0, "in_flight": 0}


async def test_replies_beyond_what_json_writes_are_still_copied_for_each_caller() -> None:
    class BigNumberBackend(SlowBackend):
        async def __call__(self, ctx: Context, message: Message) -> Message | None:
            reply = await super().__call__(ctx, message)
            assert reply is not None
            reply["result"]["big"] = [2**70]
            return reply

    backend = BigNumberBackend()
    chain, _ = chained(backend)
    one, two = await run_together(
        chain, backend, *((context(), call(f"r{i}", {"name": "x"})) for i in range(2))
    )
    assert len(backend.calls) == 1 and one["result"]["big"] == two["result"]["big"] == [2**70]
    one["result"]["big"].append(1)
    assert two["result"]["big"] == [2**70]


@pytest.mark.parametrize("started", [False, True], ids=["before it started", "while it runs"])
async def test_a_shared_call_cancelled_by_something_else_fails_every_caller(started: bool) -> None:
    backend = SlowBackend()
    chain, dedup = chained(backend)
    callers = [asyncio.create_task(chain.dispatch(context(), call(f"r{i}", {"name": "x"}))) for i in range(2)]
    # One turn of the loop: both callers have reached the plugin, the shared call has not run yet.
    await asyncio.sleep(0)
    if started:
        await asyncio.sleep(0.01)
    (shared_call,) = [task for task in asyncio.all_tasks() if task.get_name() == "dedup tools/call"]
    shared_call.cancel()
    replies: list[Any] = await asyncio.gather(*callers)
    assert [r["error"]["message"] for r in replies] == ["The shared call was cancelled"] * 2
    assert [r["id"] for r in replies] == ["r0", "r1"]
    assert len(backend.calls) == (1 if started else 0) and dedup.counts()["in_flight"] == 0
