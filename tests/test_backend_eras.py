"""Toward backends, the gateway speaks each one's own era, learnt the way the specification describes.

- a ``server/discover`` probe first; a backend that fails it in any way gets the ``initialize`` handshake;
- over HTTP, a modern request first, then the handshake, then the old HTTP+SSE transport;
- the era is remembered per backend; modern calls carry the caller's envelope in ``_meta``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from tests.conftest import FIXTURES, StartGateway, everything, listening_fixture
from tests.rawclient import Message, RawClient


def modern_fixture(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(FIXTURES / "modern_server.py")], **extra}


def legacy_only_fixture(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(FIXTURES / "legacy_only_server.py")], **extra}


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def text_of(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


async def test_each_backend_is_spoken_to_in_its_own_era(start_gateway: StartGateway) -> None:
    gw = await start_gateway(
        {
            "mcpServers": {
                "new": modern_fixture(),
                "old": legacy_only_fixture(),
                "dual": everything(era="auto"),
            }
        }
    )
    eras = {name: backend.era for name, backend in gw.gateway.backends.items()}
    assert eras == {"new": "modern", "old": "legacy", "dual": "modern"}
    client = await gw.client()
    assert text_of(await client.call("tools/call", call("new_echo", text="a"))) == "a"
    assert text_of(await client.call("tools/call", call("old_echo", text="b"))) == "b"
    # The legacy-only backend was probed once, then given the handshake, and nothing modern since.
    stats = json.loads(text_of(await client.call("tools/call", call("old_stats"))))
    assert stats["server/discover"] == 1 and stats["initialize"] == 1


async def test_a_forced_era_skips_the_probe_and_a_wrong_one_fails_clearly(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"old": legacy_only_fixture(era="legacy")}})
    client = await gw.client()
    stats = json.loads(text_of(await client.call("tools/call", call("old_stats"))))
    assert "server/discover" not in stats
    broken = await start_gateway(
        {"mcpServers": {"old": legacy_only_fixture(era="modern"), "ok": modern_fixture()}}
    )
    assert broken.gateway.backends["old"].state == "down"
    assert broken.gateway.backends["ok"].era == "modern"


async def test_modern_calls_carry_the_legacy_callers_identity(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await gw.client(capabilities={"sampling": {}, "elicitation": {}})
    # whoami reports the clientInfo name and the capability names the request's _meta carried.
    assert (
        text_of(await client.call("tools/call", call("new_whoami"))) == "portico-tests:elicitation,sampling"
    )


async def test_a_legacy_client_answers_a_modern_backends_questions_as_ordinary_requests(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await gw.client(capabilities={"sampling": {}, "elicitation": {}})

    async def elicit(request: Message) -> dict[str, Any]:
        field = next(iter(request["params"]["requestedSchema"]["properties"]))
        return {"action": "accept", "content": {field: {"name": "Ada", "city": "Lyon"}[field]}}

    async def sample(request: Message) -> dict[str, Any]:
        asked = request["params"]["messages"][0]["content"]["text"]
        return {"role": "assistant", "content": {"type": "text", "text": f"re: {asked}"}, "model": "m"}

    client.handlers["elicitation/create"] = elicit
    client.handlers["sampling/createMessage"] = sample
    assert text_of(await client.call("tools/call", call("new_greet"))) == "hello Ada"
    # Two rounds: an elicitation, then a sampling request that depends on its answer.
    assert text_of(await client.call("tools/call", call("new_plan_trip"))) == "Lyon: re: A tip for Lyon?"
    assert [r["method"] for r in client.server_requests] == [
        "elicitation/create",
        "elicitation/create",
        "sampling/createMessage",
    ]
    # A round with state only, no questions: retried at once.
    assert text_of(await client.call("tools/call", call("new_stateful"))) == "resumed"


async def test_a_client_that_cannot_answer_gets_an_error_not_a_hang(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await gw.client(capabilities={})
    reply = await client.request("tools/call", call("new_greet"), timeout=10)
    assert reply["error"]["code"] == -32051
    assert "elicitation/create" in reply["error"]["message"]


async def test_list_changes_and_resource_updates_of_a_modern_backend_reach_legacy_clients(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await gw.client()
    await client.call("tools/call", call("new_add_tool", name="fresh"))
    await client.wait_notification("notifications/tools/list_changed", timeout=10)
    assert "new_fresh" in {t["name"] for t in (await client.call("tools/list"))["tools"]}
    await client.call("resources/subscribe", {"uri": "portico://new/memo://one"})
    await client.call("tools/call", call("new_touch", uri="memo://one"))
    updated = await client.wait_notification("notifications/resources/updated", timeout=10)
    assert updated["params"]["uri"] == "portico://new/memo://one"
    assert "io.modelcontextprotocol/subscriptionId" not in updated["params"].get("_meta", {})
    # Unsubscribed, the update no longer comes.
    await client.call("resources/unsubscribe", {"uri": "portico://new/memo://one"})
    await client.call("tools/call", call("new_touch", uri="memo://one"))
    await asyncio.sleep(0.5)
    assert len(client.notifications_of("notifications/resources/updated")) == 1


async def test_a_legacy_clients_log_level_travels_with_each_modern_call(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await gw.client()
    await client.call("tools/call", call("new_log", level="warning", text="unheard"))
    await client.call("logging/setLevel", {"level": "info"})
    await client.call("tools/call", call("new_log", level="info", text="heard"))
    message = await client.wait_notification("notifications/message", timeout=10)
    assert message["params"]["data"] == "heard"
    assert [m["params"]["data"] for m in client.notifications_of("notifications/message")] == ["heard"]


async def test_cancelling_a_call_cancels_it_on_a_modern_stdio_backend(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    await cancel_and_confirm(await gw.client(), "new", {})


async def cancel_and_confirm(client: RawClient, backend: str, extra: dict[str, Any]) -> None:
    """Start sleep_forever on ``backend``, cancel it, and wait for the backend to say it was cancelled."""
    waiting = asyncio.create_task(
        client.request("tools/call", {**call(f"{backend}_sleep_forever"), **extra}, id=77)
    )
    await asyncio.sleep(0.5)
    await client.notify("notifications/cancelled", {"requestId": 77})
    seen = ""
    for _ in range(50):
        seen = text_of(await client.call("tools/call", call(f"{backend}_was_cancelled")))
        if seen == "sleep_forever":
            break
        await asyncio.sleep(0.1)
    assert seen == "sleep_forever"
    waiting.cancel()


# -- over HTTP ------------------------------------------------------------------------------------------


async def test_a_modern_http_backend_is_called_statelessly(start_gateway: StartGateway) -> None:
    async with listening_fixture(
        "http_backend.py", "--transport", "streamable-http", "--server", "modern_server"
    ) as (
        url,
        _,
    ):
        gw = await start_gateway({"mcpServers": {"web": {"url": url}}})
        backend = gw.gateway.backends["web"]
        assert backend.era == "modern"
        connector = backend._catalog_link.connector  # type: ignore[union-attr]
        assert connector.session_id is None  # type: ignore[attr-defined]
        client = await gw.client(capabilities={"elicitation": {}})

        async def elicit(request: Message) -> dict[str, Any]:
            return {"action": "accept", "content": {"name": "Grace"}}

        client.handlers["elicitation/create"] = elicit
        # The SDK server refuses modern POSTs whose Mcp-Method / Mcp-Name headers disagree with the body.
        assert text_of(await client.call("tools/call", call("web_echo", text="stateless"))) == "stateless"
        assert text_of(await client.call("tools/call", call("web_greet"))) == "hello Grace"
        read = await client.call("resources/read", {"uri": "portico://web/memo://one"})
        assert read["contents"][0]["text"] == "first memo"
        await client.call("tools/call", call("web_add_tool", name="later"))
        await client.wait_notification("notifications/tools/list_changed", timeout=10)


async def test_cancelling_a_modern_http_call_closes_its_stream(start_gateway: StartGateway) -> None:
    async with listening_fixture(
        "http_backend.py", "--transport", "streamable-http", "--server", "modern_server"
    ) as (
        url,
        _,
    ):
        gw = await start_gateway({"mcpServers": {"web": {"url": url}}})
        # With a progress token the backend answers with an SSE stream, which the gateway closes.
        await cancel_and_confirm(await gw.client(), "web", {"_meta": {"progressToken": "p"}})


async def test_a_handshake_refused_over_streamable_http_falls_back_to_http_sse(
    start_gateway: StartGateway,
) -> None:
    async with listening_fixture("http_backend.py", "--transport", "sse") as (url, _):
        gw = await start_gateway({"mcpServers": {"old": {"url": url, "type": "streamable-http"}}})
        backend = gw.gateway.backends["old"]
        assert backend.ready and backend.era == "legacy"
        assert backend._catalog_link.connector.transport == "sse"  # type: ignore[union-attr]
        client = await gw.client()
        assert text_of(await client.call("tools/call", call("old_echo", text="via sse"))) == "via sse"


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_list_caching_hints_are_the_backends_own(start_gateway: StartGateway, era: str) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture(era=era)}})
    hints = gw.gateway.backends["new"].cache_hints
    # The fixture says its tools may be cached publicly for 30 s and its resources not at all; a legacy
    # session says nothing.
    expected = {"tools/list": (30_000, "public"), "resources/list": (0, "private")}
    assert hints == (expected if era == "modern" else {})


async def test_merged_lists_are_cacheable_only_as_long_and_as_widely_as_every_part(
    start_gateway: StartGateway,
) -> None:
    envelope = {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    }
    alone = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await alone.client(initialize=False)
    tools = await client.call("tools/list", envelope)
    assert (tools["ttlMs"], tools["cacheScope"]) == (30_000, "public")
    resources = await client.call("resources/list", envelope)
    assert (resources["ttlMs"], resources["cacheScope"]) == (0, "private")
    # With a legacy backend in the merged list, which says nothing, nothing may be cached.
    mixed = await start_gateway({"mcpServers": {"new": modern_fixture(), "old": legacy_only_fixture()}})
    client = await mixed.client(initialize=False)
    tools = await client.call("tools/list", envelope)
    assert (tools["ttlMs"], tools["cacheScope"]) == (0, "private")


async def test_a_listen_stream_the_backend_ends_is_opened_again(start_gateway: StartGateway) -> None:
    args = ("--transport", "streamable-http", "--server", "modern_server")
    async with listening_fixture("http_backend.py", *args) as (url, _):
        gw = await start_gateway({"mcpServers": {"web": {"url": url}}})
        client = await gw.client()
        # The backend ends its listen streams gracefully, as one shutting down would, but stays up.
        await client.call("tools/call", call("web_end_listens"))
        await asyncio.sleep(1.5)
        await client.call("tools/call", call("web_add_tool", name="after"))
        await client.wait_notification("notifications/tools/list_changed", timeout=10)
        assert "web_after" in {t["name"] for t in (await client.call("tools/list"))["tools"]}
