"""A call to a name whose backend is away (crashed, restarting, breaker open) is the backend's failure."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import StartGateway, everything, fixture_server
from tests.rawclient import RpcError
from tests.test_backend_restart import list_changes, pid_of, tool_names


async def test_a_withdrawn_backends_names_get_backend_unavailable_not_unknown(
    start_gateway: StartGateway,
) -> None:
    entry = fixture_server("counting_server.py", restart={"enabled": False})
    gw = await start_gateway({"mcpServers": {"c": entry, "ev": everything()}})
    client = await gw.client()
    os.kill(pid_of(gw.gateway.backends["c"]), signal.SIGKILL)
    await list_changes(client, 1)
    assert not any(name.startswith("c_") for name in await tool_names(client))
    with pytest.raises(RpcError) as away:
        await client.call("tools/call", {"name": "c_lookup", "arguments": {"key": "k"}})
    assert away.value.code == -32050 and "'c'" in away.value.error["message"]
    with pytest.raises(RpcError) as away_read:
        await client.call("resources/read", {"uri": "portico://c/data://fixed"})
    assert away_read.value.code == -32050
    # A name no backend ever offered is still the client's mistake.
    with pytest.raises(RpcError) as unknown:
        await client.call("tools/call", {"name": "c_never_was", "arguments": {}})
    assert unknown.value.code == -32602
    # The other backend serves on.
    assert (await client.call("tools/call", {"name": "ev_echo", "arguments": {"text": "on"}}))["content"]
