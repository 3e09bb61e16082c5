"""Failure behaviour: dying backends, backends that never start, clients that leave, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from tests.conftest import StartGateway, everything
from tests.rawclient import RpcError
from tests.test_aggregation import text_of
from tests.test_bidirectional import call


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def whoami_pid(client, tool: str) -> int:  # type: ignore[no-untyped-def]
    return int(text_of(await client.call("tools/call", call(tool))).split(":")[1])


async def test_kill_9_of_a_backend_mid_call(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"doomed": everything("d"), "steady": everything("s")}})
    client = await gw.client()
    pid = await whoami_pid(client, "doomed_whoami")
    in_flight = asyncio.create_task(client.request("tools/call", call("doomed_sleep_forever")))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    reply = await in_flight
    assert time.monotonic() - killed_at < 1.0
    assert reply["error"]["code"] == -32050
    await client.wait_notification("notifications/tools/list_changed")
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert not any(n.startswith("doomed_") for n in names)
    assert "steady_echo" in names
    assert text_of(await client.call("tools/call", call("steady_echo", text="still here"))) == "still here"
    try:
        await client.call("tools/call", call("doomed_echo", text="x"))
    except RpcError as exc:
        # The backend's failure, not the client's: the name was right (never -32602 "unknown tool").
        assert exc.code == -32050
    else:
        raise AssertionError("a call to a dead backend's tool succeeded")


async def test_a_backend_that_crashes_by_itself_fails_its_callers_fast(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client, other = await gw.client(), await gw.client()
    waiting = asyncio.create_task(other.request("tools/call", call("ev_sleep_forever")))
    await asyncio.sleep(0.2)
    crash = await client.request("tools/call", call("ev_crash"))
    assert crash["error"]["code"] == -32050
    assert (await waiting)["error"]["code"] == -32050
    await other.wait_notification("notifications/tools/list_changed")


async def test_a_backend_that_fails_to_start_leaves_the_others_serving(
    start_gateway: StartGateway, caplog
) -> None:  # type: ignore[no-untyped-def]
    gw = await start_gateway(
        {
            "mcpServers": {
                "missing": {"command": "/nonexistent/portico-test-binary"},
                "exits": {"command": "python3", "args": ["-c", "import sys; sys.exit(4)"]},
                "ok": everything(),
            }
        }
    )
    client = await gw.client()
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert "ok_echo" in names and not any(n.startswith(("missing_", "exits_")) for n in names)
    failures = [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]
    assert any(m.startswith("backend missing failed to start") for m in failures)
    assert any(m.startswith("backend exits failed to start") for m in failures)


async def test_client_disconnect_cancels_its_calls_upstream(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    observer, leaver = await gw.client(), await gw.client()
    before = int(text_of(await observer.call("tools/call", call("ev_was_cancelled"))))
    await leaver.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call("ev_sleep_forever")})
    await asyncio.sleep(0.3)
    await leaver.close()
    for _ in range(50):
        after = int(text_of(await observer.call("tools/call", call("ev_was_cancelled"))))
        if after > before:
            break
        await asyncio.sleep(0.1)
    assert after == before + 1


async def test_client_disconnect_ends_its_per_client_backend_process(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"own": everything(session="per-client")}})
    client = await gw.client()
    pid = await whoami_pid(client, "own_whoami")
    assert pid_alive(pid)
    await client.close()
    assert await wait_until(lambda: not pid_alive(pid))
    assert not gw.gateway.backends["own"]._client_links


async def test_gateway_shutdown_leaves_no_backend_process(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"a": everything(), "b": everything(session="per-client")}})
    client = await gw.client()
    pids = [await whoami_pid(client, "a_whoami"), await whoami_pid(client, "b_whoami")]
    catalog_pids = [b._catalog_link.connector.pid for b in gw.gateway.backends.values()]  # type: ignore[union-attr,attr-defined]
    await client.close()
    await gw.server.close()
    for pid in {*pids, *catalog_pids}:
        assert await wait_until(lambda pid=pid: not pid_alive(pid)), (
            f"backend process {pid} outlived the gateway"
        )
