"""Many clients at once: id remapping, server-to-client requests, progress, cancellation, notifications."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import StartGateway, everything
from tests.rawclient import Message, RawClient
from tests.test_aggregation import text_of

SAMPLING = {"sampling": {}}


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


async def test_two_clients_with_colliding_ids_never_get_each_others_replies(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    first, second = await gw.client(), await gw.client()

    async def burst(client: RawClient, who: str) -> list[tuple[int, str]]:
        replies = await asyncio.gather(
            *(
                client.request("tools/call", call("ev_echo", text=f"{who}-{i}"), id=i, timeout=60)
                for i in range(200)
            )
        )
        return [(r["id"], text_of(r["result"])) for r in replies]

    got_first, got_second = await asyncio.gather(burst(first, "first"), burst(second, "second"))
    assert got_first == [(i, f"first-{i}") for i in range(200)]
    assert got_second == [(i, f"second-{i}") for i in range(200)]
    assert not first.unmatched and not second.unmatched


async def test_sampling_round_trip_reaches_the_calling_client(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(capabilities=SAMPLING)
    bystander = await gw.client(capabilities=SAMPLING)

    async def answer(request: Message) -> dict[str, Any]:
        prompt = request["params"]["messages"][0]["content"]["text"]
        return {
            "role": "assistant",
            "content": {"type": "text", "text": f"sampled({prompt})"},
            "model": "test-model",
            "stopReason": "endTurn",
        }

    client.handlers["sampling/createMessage"] = answer
    result = await client.call("tools/call", call("ev_sample", prompt="hello"))
    assert text_of(result) == "sampled(hello)"
    assert [r["method"] for r in client.server_requests] == ["sampling/createMessage"]
    assert bystander.server_requests == []


async def test_elicitation_round_trip(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(capabilities={"elicitation": {}})

    async def answer(request: Message) -> dict[str, Any]:
        assert request["params"]["message"] == "favourite colour?"
        return {"action": "accept", "content": {"answer": "blue"}}

    client.handlers["elicitation/create"] = answer
    result = await client.call("tools/call", call("ev_ask", question="favourite colour?"))
    assert text_of(result) == "accept:blue"


async def test_roots_reach_the_owning_client_of_a_per_client_backend(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything(session="per-client")}})
    clients = [await gw.client(capabilities={"roots": {"listChanged": True}}) for _ in range(2)]
    for index, client in enumerate(clients):

        async def answer(request: Message, index: int = index) -> dict[str, Any]:
            return {"roots": [{"uri": f"file:///client-{index}", "name": f"c{index}"}]}

        client.handlers["roots/list"] = answer
    results = await asyncio.gather(*(c.call("tools/call", call("ev_roots")) for c in clients))
    assert [text_of(r) for r in results] == ["file:///client-0", "file:///client-1"]


async def test_shared_backend_refuses_to_guess_whose_sampling_request_it_is(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    busy, asker = await gw.client(capabilities=SAMPLING), await gw.client(capabilities=SAMPLING)

    async def answer(request: Message) -> dict[str, Any]:
        return {"role": "assistant", "content": {"type": "text", "text": "leaked"}, "model": "m"}

    busy.handlers["sampling/createMessage"] = answer
    asker.handlers["sampling/createMessage"] = answer
    slow = asyncio.create_task(busy.call("tools/call", call("ev_slow", seconds=1.5, steps=1)))
    await asyncio.sleep(0.3)
    result = await asker.call("tools/call", call("ev_sample", prompt="whose?"))
    await slow
    assert result["isError"] is True
    assert "per-client" in text_of(result)
    assert busy.server_requests == [] and asker.server_requests == []


async def test_per_client_sessions_are_separate_processes_and_shared_is_one(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(
        {"mcpServers": {"shared": everything("s"), "own": everything("o", session="per-client")}}
    )
    a, b = await gw.client(), await gw.client()
    pid = lambda text: text.split(":")[1]  # noqa: E731
    shared = [pid(text_of(await c.call("tools/call", call("shared_whoami")))) for c in (a, b)]
    own = [pid(text_of(await c.call("tools/call", call("own_whoami")))) for c in (a, b)]
    assert shared[0] == shared[1]
    assert own[0] != own[1]


async def test_progress_tokens_are_remapped_per_client(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    a, b = await gw.client(), await gw.client()
    params = {**call("ev_slow", seconds=0.4, steps=3), "_meta": {"progressToken": "same-token"}}
    await asyncio.gather(a.call("tools/call", params), b.call("tools/call", params))
    for client in (a, b):
        progress = client.notifications_of("notifications/progress")
        assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
        assert {p["params"]["progressToken"] for p in progress} == {"same-token"}


async def test_cancellation_is_forwarded_upstream_and_no_reply_follows(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    before = int(text_of(await client.call("tools/call", call("ev_was_cancelled"))))
    await client.send(
        {"jsonrpc": "2.0", "id": "sleeper", "method": "tools/call", "params": call("ev_sleep_forever")}
    )
    await asyncio.sleep(0.3)
    await client.notify("notifications/cancelled", {"requestId": "sleeper", "reason": "test"})
    for _ in range(50):
        after = int(text_of(await client.call("tools/call", call("ev_was_cancelled"))))
        if after > before:
            break
        await asyncio.sleep(0.1)
    assert after == before + 1
    await asyncio.sleep(0.3)
    assert all(m.get("id") != "sleeper" for m in client.unmatched)


async def test_backend_list_changed_becomes_the_gateways_own(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    a, b = await gw.client(), await gw.client()
    await a.call("tools/call", call("ev_add_tool", name="fresh"))
    for client in (a, b):
        await client.wait_notification("notifications/tools/list_changed")
    names = {t["name"] for t in (await b.call("tools/list"))["tools"]}
    assert "ev_fresh" in names
    assert text_of(await b.call("tools/call", call("ev_fresh"))) != ""


async def test_resource_updates_reach_only_subscribers(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    subscriber, other = await gw.client(), await gw.client()
    await subscriber.call("resources/subscribe", {"uri": "portico://ev/memo://one"})
    await other.call("tools/call", call("ev_touch", uri="memo://one"))
    update = await subscriber.wait_notification("notifications/resources/updated")
    assert update["params"]["uri"] == "portico://ev/memo://one"
    await asyncio.sleep(0.2)
    assert other.notifications_of("notifications/resources/updated") == []
    await subscriber.call("resources/unsubscribe", {"uri": "portico://ev/memo://one"})
    await other.call("tools/call", call("ev_touch", uri="memo://one"))
    await asyncio.sleep(0.3)
    assert len(subscriber.notifications_of("notifications/resources/updated")) == 1


async def test_log_level_fans_out_and_messages_come_back_tagged(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    assert await client.call("logging/setLevel", {"level": "warning"}) == {}
    await client.call("tools/call", call("ev_log", level="info", message="quiet"))
    await client.call("tools/call", call("ev_log", level="error", message="loud"))
    message = await client.wait_notification("notifications/message")
    assert message["params"]["level"] == "error"
    assert message["params"]["logger"].split("/")[0] == "ev"
    assert message["params"]["_meta"]["dev.portico/backend"] == "ev"
    await asyncio.sleep(0.2)
    assert [m["params"]["level"] for m in client.notifications_of("notifications/message")] == ["error"]


async def test_set_level_opens_no_per_client_link_but_applies_when_one_opens(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"own": everything(session="per-client")}})
    client = await gw.client()
    await client.call("logging/setLevel", {"level": "error"})
    assert gw.gateway.backends["own"]._client_links == {}
    await client.call("tools/call", call("own_log", level="warning", message="quiet"))
    await client.call("tools/call", call("own_log", level="critical", message="loud"))
    message = await client.wait_notification("notifications/message")
    assert message["params"]["level"] == "critical"
    await asyncio.sleep(0.2)
    assert len(client.notifications_of("notifications/message")) == 1
