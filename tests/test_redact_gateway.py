"""The redact plugin in a chain (both ways, replies, failing closed), under Hypothesis, in a real gateway."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.redact import Redact, RedactOptions
from plugins.redact.redactor import Redactor
from proxy.chain import Chain, Context, Direction, NamedPlugin
from proxy.errors import ErrorCode
from proxy.jsonrpc import Message
from tests.conftest import StartGateway, everything
from tests.test_aggregation import text_of
from tests.test_redact import AWS_KEY_ID, CARD, EMAIL, GITHUB, JWT, PEM, PEM_BODY, ctx_for

CANARIES = (GITHUB, AWS_KEY_ID, CARD, PEM, EMAIL, JWT)
# What must not survive anywhere: each canary, and the body of the key block on its own.
FORBIDDEN = (*CANARIES, PEM_BODY)


class Peer:
    """The chain's terminal: records what got through and answers requests with ``answer``."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.received: list[Message] = []
        self.answer = answer if answer is not None else {"ok": True}

    async def __call__(self, ctx: Context, message: Message) -> Message | None:
        self.received.append(copy.deepcopy(message))
        if "id" not in message:
            return None
        return {"jsonrpc": "2.0", "id": message["id"], "result": copy.deepcopy(self.answer)}


def chain(peer: Peer, plugin: Redact | None = None) -> Chain:
    return Chain([NamedPlugin("redact", plugin or Redact())], peer)


def request(method: str, params: dict[str, Any], request_id: int | str = 9) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def notification(method: str, params: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def leaks(*messages: object) -> list[str]:
    text = "".join(orjson.dumps(message).decode() for message in messages)
    return [value for value in FORBIDDEN if value in text or orjson.dumps(value).decode()[1:-1] in text]


# -- both directions ---------------------------------------------------------------------------------------


async def test_a_client_request_goes_on_redacted_and_its_reply_comes_back_redacted() -> None:
    peer = Peer({"content": [{"type": "text", "text": f"got it, {EMAIL}"}], "structuredContent": {GITHUB: 1}})
    call = request("tools/call", {"name": "echo", "arguments": {"text": f"key {GITHUB}"}})
    reply = await chain(peer).dispatch(ctx_for(call), call)
    assert peer.received[0]["params"]["arguments"] == {"text": "key [REDACTED:github_token]"}
    assert reply is not None and reply["id"] == 9
    assert reply["result"] == {
        "content": [{"type": "text", "text": "got it, [REDACTED:email]"}],
        "structuredContent": {"[REDACTED:github_token]": 1},
    }


async def test_a_client_notification_goes_on_redacted() -> None:
    peer = Peer()
    note = notification("notifications/roots/list_changed", {"_meta": {"who": EMAIL}})
    assert await chain(peer).dispatch(ctx_for(note), note) is None
    assert peer.received == [
        notification("notifications/roots/list_changed", {"_meta": {"who": "[REDACTED:email]"}})
    ]


@pytest.mark.parametrize(
    "note",
    [
        notification("notifications/message", {"level": "info", "logger": "x", "data": {"card": CARD}}),
        notification("notifications/progress", {"progressToken": 1, "progress": 1, "message": f"{GITHUB}"}),
        notification("notifications/resources/updated", {"uri": f"memo://{AWS_KEY_ID}"}),
    ],
)
async def test_backend_notifications_reach_the_client_redacted(note: Message) -> None:
    peer = Peer()
    await chain(peer).dispatch(ctx_for(note, Direction.TO_CLIENT), note)
    assert len(peer.received) == 1 and "[REDACTED:" in orjson.dumps(peer.received[0]).decode()
    assert not leaks(peer.received)


@pytest.mark.parametrize("method", ["sampling/createMessage", "elicitation/create"])
async def test_backend_requests_and_the_clients_replies_are_redacted(method: str) -> None:
    peer = Peer({"role": "assistant", "content": {"type": "text", "text": f"use {GITHUB}"}, "model": "m"})
    ask = request(method, {"messages": [{"role": "user", "content": {"type": "text", "text": EMAIL}}]})
    reply = await chain(peer).dispatch(ctx_for(ask, Direction.TO_CLIENT), ask)
    assert peer.received[0]["params"]["messages"][0]["content"]["text"] == "[REDACTED:email]"
    assert reply is not None and reply["result"]["content"]["text"] == "use [REDACTED:github_token]"


# -- block -------------------------------------------------------------------------------------------------

BLOCK_CARDS = RedactOptions(actions={"card_number": "block"})


async def test_a_blocked_request_never_reaches_the_peer_and_is_answered_with_an_error() -> None:
    peer = Peer()
    call = request("tools/call", {"name": "pay", "arguments": {"card": CARD}})
    reply = await chain(peer, Redact(BLOCK_CARDS)).dispatch(ctx_for(call), call)
    assert peer.received == []
    assert reply == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {
            "code": ErrorCode.REDACTION_BLOCKED,
            "message": "blocked: card_number",
            "data": {"detector": "card_number"},
        },
    }


async def test_a_blocked_reply_is_replaced_by_an_error_for_the_request_id() -> None:
    peer = Peer({"content": [{"type": "text", "text": f"your card: {CARD}"}]})
    call = request("tools/call", {"name": "wallet"}, request_id=41)
    reply = await chain(peer, Redact(BLOCK_CARDS)).dispatch(ctx_for(call), call)
    assert len(peer.received) == 1
    assert reply is not None and reply["id"] == 41 and reply["error"]["code"] == -32064
    assert not leaks(reply)


async def test_a_blocked_notification_is_dropped_and_logged_without_the_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = Peer()
    note = notification("notifications/message", {"level": "info", "data": f"paid with {CARD}"})
    assert await chain(peer, Redact(BLOCK_CARDS)).dispatch(ctx_for(note, Direction.TO_CLIENT), note) is None
    assert peer.received == []
    assert "card_number" in caplog.text and CARD not in caplog.text


# -- fail closed -------------------------------------------------------------------------------------------


def failing_redactor(monkeypatch: pytest.MonkeyPatch, fail_on_call: int) -> list[int]:
    """Make the ``fail_on_call``-th redaction (1-based) raise; returns the calls made."""
    calls: list[int] = []
    real = Redactor.redact

    def redact(self: Redactor, message: Message, limit: float = float("inf")) -> Any:
        calls.append(len(calls) + 1)
        if len(calls) == fail_on_call:
            raise RuntimeError(f"scanner bug while looking at {GITHUB}")
        return real(self, message, limit)

    monkeypatch.setattr(Redactor, "redact", redact)
    return calls


async def test_a_request_is_refused_when_redaction_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failing_redactor(monkeypatch, fail_on_call=1)
    peer = Peer()
    call = request("tools/call", {"arguments": {"text": GITHUB}})
    reply = await chain(peer).dispatch(ctx_for(call), call)
    assert peer.received == []
    assert reply is not None and reply["error"]["code"] == -32064
    assert reply["error"]["message"] == "blocked: redaction failed"
    assert "RuntimeError" in caplog.text and GITHUB not in caplog.text


async def test_a_reply_is_replaced_when_its_redaction_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    failing_redactor(monkeypatch, fail_on_call=2)
    peer = Peer({"content": [{"type": "text", "text": GITHUB}]})
    call = request("tools/call", {"name": "x"}, request_id="abc")
    reply = await chain(peer).dispatch(ctx_for(call), call)
    assert len(peer.received) == 1
    assert (
        reply is not None
        and reply["id"] == "abc"
        and reply["error"]["message"] == "blocked: redaction failed"
    )


async def test_a_notification_is_dropped_when_its_redaction_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    failing_redactor(monkeypatch, fail_on_call=1)
    peer = Peer()
    note = notification("notifications/message", {"level": "info", "data": GITHUB})
    assert await chain(peer).dispatch(ctx_for(note, Direction.TO_CLIENT), note) is None
    assert peer.received == []


def slow_redactor(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> list[str]:
    """Redaction that takes until ``release`` is set (at most 5 s); returns the threads it ran on."""
    threads: list[str] = []

    def redact(self: Redactor, message: Message, limit: float = float("inf")) -> Any:
        threads.append(threading.current_thread().name)
        release.wait(5)
        return message, Counter()

    monkeypatch.setattr(Redactor, "redact", redact)
    return threads


async def test_a_small_message_over_its_time_budget_inline_is_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    threading.Timer(0.3, release.set).start()
    threads = slow_redactor(monkeypatch, release)
    peer = Peer()
    call = request("tools/call", {"arguments": {"text": GITHUB}})
    reply = await chain(peer, Redact(RedactOptions(timeout_seconds=0.05))).dispatch(ctx_for(call), call)
    assert threads == [threading.current_thread().name]  # inline, on the event loop's thread
    assert (
        peer.received == [] and reply is not None and reply["error"]["message"] == "blocked: redaction failed"
    )


async def test_a_big_message_over_its_time_budget_in_a_thread_is_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    threads = slow_redactor(monkeypatch, release)
    peer = Peer()
    plugin = Redact(RedactOptions(timeout_seconds=0.1, thread_above_bytes=0))
    call = request("tools/call", {"arguments": {"text": GITHUB}})
    # The first, inline attempt only measures the size and hands over; the thread then overruns.
    real = Redactor.__dict__["redact"]
    monkeypatch.setattr(
        Redactor, "redact", lambda self, m, limit=float("inf"): None if limit == 0 else real(self, m)
    )
    try:
        reply = await chain(peer, plugin).dispatch(ctx_for(call), call)
    finally:
        release.set()
    assert threads and threads[0] != threading.current_thread().name
    assert (
        peer.received == [] and reply is not None and reply["error"]["message"] == "blocked: redaction failed"
    )


async def test_big_messages_are_redacted_in_a_worker_thread() -> None:
    peer = Peer()
    plugin = Redact(RedactOptions(thread_above_bytes=1000))
    call = request("tools/call", {"arguments": {"text": "x " * 2000 + GITHUB}})
    await chain(peer, plugin).dispatch(ctx_for(call), call)
    assert peer.received[0]["params"]["arguments"]["text"].endswith("[REDACTED:github_token]")


# -- Hypothesis: canaries hidden anywhere never get through -----------------------------------------------

SEPARATORS = (" ", "\n", "\t", ", ", " = ", ": ", '"', "(", ") ", "'")
plain = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
hidden = st.builds(
    lambda before, left, canary, right, after: f"{before}{left}{canary}{right}{after}",
    plain,
    st.sampled_from(SEPARATORS),
    st.sampled_from(CANARIES),
    st.sampled_from(SEPARATORS),
    plain,
)
strings = st.one_of(plain, hidden, st.sampled_from(CANARIES))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(strings, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=json_values, answer=json_values, logged=json_values, sampled=json_values)
def test_no_canary_gets_through_in_any_direction(
    arguments: Any, answer: Any, logged: Any, sampled: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    plugin = Redact()
    to_backend, to_client = Peer({"data": answer}), Peer({"model": "m", "content": sampled})
    call = request("tools/call", {"name": "t", "arguments": arguments})
    log_note = notification("notifications/message", {"level": "info", "data": logged})
    ask = request("sampling/createMessage", {"messages": [logged], "meta": arguments})

    async def run() -> list[Message | None]:
        return [
            await chain(to_backend, plugin).dispatch(ctx_for(call), call),
            await chain(to_client, plugin).dispatch(ctx_for(log_note, Direction.TO_CLIENT), log_note),
            await chain(to_client, plugin).dispatch(ctx_for(ask, Direction.TO_CLIENT), ask),
        ]

    replies = asyncio.run(run())
    assert leaks(to_backend.received, to_client.received, replies) == []
    assert not [value for value in FORBIDDEN if value in caplog.text]


# -- a real gateway ----------------------------------------------------------------------------------------


def ev_call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"name": f"ev_{tool}", "arguments": arguments}


async def test_through_a_real_gateway_a_secret_is_masked_both_ways_and_never_logged(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start_gateway({"mcpServers": {"ev": everything()}, "plugins": [{"name": "redact"}]})
    client = await gw.client()
    result = await client.call("tools/call", ev_call("echo", text=f"deploy with {GITHUB} now"))
    assert text_of(result) == "deploy with [REDACTED:github_token] now"
    await client.call("tools/call", ev_call("log", level="warning", message=f"leaked {GITHUB}"))
    note = await client.wait_notification("notifications/message")
    assert note["params"]["data"] == "leaked [REDACTED:github_token]"
    # A secret the backend makes up itself (two integers, never scanned, add up to a card number).
    result = await client.call("tools/call", ev_call("add", a=4111111111111110, b=1))
    assert text_of(result) == "[REDACTED:card_number]"
    assert (
        not leaks(client.notifications)
        and GITHUB not in caplog.text
        and "4111111111111111" not in caplog.text
    )


# The backend echoes what it got; a placeholder it got back is masked again under another name. So
# "[REDACTED:relayed]" proves the backend received the placeholder (the raw token would come back as
# "[REDACTED:github_token]"), and that the message on its way back was scanned too.
RELAYED = {
    "name": "redact",
    "options": {"patterns": [{"name": "relayed", "regex": r"\[REDACTED:github_token\]"}]},
}


async def test_through_a_real_gateway_the_backend_gets_the_masked_value(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start_gateway({"mcpServers": {"ev": everything()}, "plugins": [RELAYED]})
    client = await gw.client(capabilities={"sampling": {}})

    async def sample(message: Message) -> dict[str, Any]:
        return {"role": "assistant", "content": {"type": "text", "text": f"try {GITHUB}"}, "model": "m"}

    client.handlers["sampling/createMessage"] = sample
    echoed = await client.call("tools/call", ev_call("echo", text=GITHUB))
    assert text_of(echoed) == "[REDACTED:relayed]"
    # A backend log notification: the backend logged the placeholder, and the notification was scanned.
    await client.call("tools/call", ev_call("log", level="info", message=f"token {GITHUB}"))
    note = await client.wait_notification("notifications/message")
    assert note["params"]["data"] == "token [REDACTED:relayed]"
    # The client's reply to the backend's sampling request reached the backend masked.
    sampled = await client.call("tools/call", ev_call("sample", prompt="which key?"))
    assert text_of(sampled) == "try [REDACTED:relayed]"
    assert GITHUB not in caplog.text
