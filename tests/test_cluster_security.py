"""Security decisions in a real cluster (tests/cluster.py): three gateway processes on one Redis behind nginx
round-robin, each with a workdir of its own, as separate pods have. A gateway token revoked with the real
``portico token`` command fails on every instance within a second, sessions it opened included; a change to
one instance's policy files is in force on every instance within a second, and a broken policy file
written afterwards changes nothing anywhere.

Every check asks each instance on its own address (so none is skipped by chance) and then nginx, which
hands three requests in a row to the three instances.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from proxy.errors import ErrorCode
from tests.cluster import Cluster, Instance, Settings, gateway_cluster
from tests.rawclient import RawClient, RpcError
from tests.test_cluster import call_tool, text_of
from tests.test_http_transport import Endpoint, eventually, tool_call
from tests.test_policy_broadcast import BOTH, ECHO_ONLY, policy_files, published_version
from tests.test_shared_tokens import OK, REVOKED, TOKEN_KEY

WITHIN_SECONDS = 1.0
POLICY_BROKEN = "the previous policy stays in force"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def until_everywhere(
    cluster: Cluster, holds: Callable[[Instance], Awaitable[bool]], since: float, what: str
) -> None:
    """Ask every instance, on its own address, until ``holds`` is true of all of them; fail if that takes
    longer than WITHIN_SECONDS after ``since``. An instance found in the new state is asked again at the
    end, so one that went back would be caught too."""
    pending = list(cluster.instances)
    while pending:
        pending = [instance for instance in pending if not await holds(instance)]
        late = time.monotonic() - since
        still = [instance.index for instance in pending]
        assert not still or late < WITHIN_SECONDS, f"{what}: instances {still} still not after {late:.2f} s"
        await asyncio.sleep(0.02)
    for instance in cluster.instances:
        assert await holds(instance), f"{what}: instance {instance.index} went back"


# -- a revoked token fails on every instance ---------------------------------------------------------------


def tokens_in_redis(settings: Settings, workdir: Path) -> None:
    """The auth plugin, gateway tokens inherited into Redis: the same hashing key on every instance (as
    they must have), and each its own SQLite path, never created: only Redis can carry the tokens."""
    options = {"token_key": TOKEN_KEY, "token_store": str(workdir / "tokens.sqlite")}
    settings["plugins"] = [{"name": "auth", "options": options}]


def config_of(instance: Instance) -> Path:
    return instance.workdir / "portico.yaml"  # where serve_gateway wrote it


async def portico_token(instance: Instance, *args: str) -> str:
    """``portico token ARGS --config <that instance's config>``, as its own process; its stdout."""
    command, *rest = args
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "token", command, "--config", str(config_of(instance)), *rest],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def create_token(instance: Instance, user: str) -> dict[str, Any]:
    created: dict[str, Any] = orjson.loads(await portico_token(instance, "create", "--user", user, "--json"))
    return created


async def verdict(http: aiohttp.ClientSession, url: str, token: str) -> tuple[str, Mapping[str, str]]:
    """``ok`` if a stateless tools/call with ``token`` is answered, else the 401's reason; the headers."""
    status, reply, headers = await call_tool(http, url, 1, "ev_echo", who=token, text="let me in")
    if status == 200:
        assert text_of(reply) == "let me in"
        return OK, headers
    assert status == 401, (status, reply)
    return str(reply["error"]["message"]), headers


async def everywhere(http: aiohttp.ClientSession, cluster: Cluster, token: str, wanted: str) -> None:
    """Each instance on its own address, then three requests through nginx (one to each), say ``wanted``."""
    for instance in cluster.instances:
        found, _ = await verdict(http, instance.mcp, token)
        assert found == wanted, f"instance {instance.index}: {found!r}, not {wanted!r}"
    answered = set()
    for _ in cluster.instances:
        found, headers = await verdict(http, cluster.mcp, token)
        answered.add(cluster.answered_by(headers).index)
        assert found == wanted, f"through nginx, instance {answered}: {found!r}, not {wanted!r}"
    assert answered == {0, 1, 2}


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['token']}"}


async def echo(client: RawClient, text: str) -> str:
    result = await client.call("tools/call", {"name": "ev_echo", "arguments": {"text": text}})
    return "".join(part["text"] for part in result["content"])


async def test_a_revoked_token_fails_on_every_instance(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with gateway_cluster(tmp_path, configure=tokens_in_redis) as cluster, AsyncExitStack() as stack:
        first, second, third = cluster.instances
        alice = await create_token(first, "alice")
        bob = await create_token(second, "bob")
        await everywhere(http, cluster, alice["token"], OK)
        await everywhere(http, cluster, bob["token"], OK)

        # Sessions open before the revocation: a WebSocket session of each token on each instance, and a
        # legacy Streamable HTTP session of alice's through nginx (continued by whichever instance).
        sessions: dict[str, list[RawClient]] = {"alice": [], "bob": []}
        for instance in cluster.instances:
            for name, token in (("alice", alice), ("bob", bob)):
                client = await RawClient.connect(http, instance.ws, headers=bearer(token))
                stack.push_async_callback(client.close)
                await client.initialize()
                assert await echo(client, f"{name} on {instance.index}") == f"{name} on {instance.index}"
                sessions[name].append(client)
        alice_http = await stack.enter_async_context(aiohttp.ClientSession(headers=bearer(alice)))
        legacy = Endpoint(alice_http, URL(cluster.mcp))
        legacy_session = await legacy.open_session()
        _, reply = await legacy.call(legacy_session, tool_call("ev_echo", text="legacy"))
        assert text_of(reply) == "legacy"

        # Revoked through another instance's config than the one that created it: the command writes to
        # Redis, which every instance follows. The second is counted from the command's exit.
        await portico_token(third, "revoke", alice["id"])
        revoked_at = time.monotonic()

        async def refuses_alice(instance: Instance) -> bool:
            return (await verdict(http, instance.mcp, alice["token"]))[0] == REVOKED

        await until_everywhere(cluster, refuses_alice, revoked_at, "alice's token refused")
        await everywhere(http, cluster, alice["token"], REVOKED)

        # Each WebSocket session of alice's is refused on its next message, then closed (1008).
        for index, client in enumerate(sessions["alice"]):
            with pytest.raises(RpcError) as caught:
                await echo(client, "still here?")
            assert caught.value.code == ErrorCode.UNAUTHENTICATED, (index, caught.value.error)
            assert caught.value.error["message"] == REVOKED
            await eventually(lambda ws=client.ws: ws.closed, what=f"alice's session on {index} to close")
            assert client.ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION, index
        # The legacy session's next requests are refused by every instance that gets them.
        answered = set()
        for _ in cluster.instances:
            response = await legacy.post(tool_call("ev_echo", text="after"), legacy_session)
            assert response.status == 401, await response.text()
            assert (await response.json())["error"]["message"] == REVOKED
            answered.add(cluster.answered_by(response.headers).index)
        assert answered == {0, 1, 2}

        # Bob's token, and his sessions, go on everywhere.
        await everywhere(http, cluster, bob["token"], OK)
        for index, client in enumerate(sessions["bob"]):
            assert await echo(client, f"bob still on {index}") == f"bob still on {index}"
        for instance in cluster.instances:
            assert not (instance.workdir / "tokens.sqlite").exists()


# -- a policy change reaches every instance -----------------------------------------------------------------


def policy_dir(instance: Instance) -> Path:
    return instance.workdir / "policy"


def own_policy_files(settings: Settings, workdir: Path) -> None:
    """The policy plugin on this instance's own copy of the files (echo and add allowed to everyone)."""
    folder = policy_files(workdir / "policy", BOTH)
    options = {"model": str(folder / "model.conf"), "policy": str(folder / "policy.csv")}
    settings["plugins"] = [{"name": "policy", "options": options}]


async def may_add(http: aiohttp.ClientSession, url: str) -> tuple[bool, Mapping[str, str]]:
    """Whether the policy lets a stateless tools/call of ``add`` through at ``url``; the headers."""
    status, reply, headers = await call_tool(http, url, 1, "ev_add", a=1, b=2)
    if "error" in reply:
        assert reply["error"]["code"] == ErrorCode.ACCESS_DENIED, (status, reply)
        return False, headers
    assert status == 200 and text_of(reply) == "3", (status, reply)
    return True, headers


async def decisions(http: aiohttp.ClientSession, cluster: Cluster, add: bool) -> None:
    """On each instance's own address and through nginx (to each instance in turn): ``add`` allowed or
    not, as ``add`` says, and echo allowed."""
    for instance in cluster.instances:
        allowed, _ = await may_add(http, instance.mcp)
        assert allowed == add, f"instance {instance.index}: add allowed {allowed}"
        status, reply, _ = await call_tool(http, instance.mcp, 2, "ev_echo", text="echo")
        assert status == 200 and text_of(reply) == "echo", (instance.index, status, reply)
    answered = set()
    for _ in cluster.instances:
        allowed, headers = await may_add(http, cluster.mcp)
        answered.add(cluster.answered_by(headers).index)
        assert allowed == add, f"through nginx, instance {answered}: add allowed {allowed}"
    assert answered == {0, 1, 2}
    status, reply, _ = await call_tool(http, cluster.mcp, 3, "ev_echo", text="through")
    assert status == 200 and text_of(reply) == "through", (status, reply)


async def test_a_policy_change_reaches_every_instance_within_a_second(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path, configure=own_policy_files) as cluster:
        await decisions(http, cluster, add=True)

        # Only instance 1's files change; the others' stay as they were.
        changed, other, last = cluster.instances[1], cluster.instances[0], cluster.instances[2]
        untouched = {i.index: (policy_dir(i) / "policy.csv").read_text() for i in (other, last)}
        (policy_dir(changed) / "policy.csv").write_text(ECHO_ONLY)
        written_at = time.monotonic()

        async def denies_add(instance: Instance) -> bool:
            return not (await may_add(http, instance.mcp))[0]

        await until_everywhere(cluster, denies_add, written_at, "add denied")
        await decisions(http, cluster, add=False)
        assert {i.index: (policy_dir(i) / "policy.csv").read_text() for i in (other, last)} == untouched
        version = await published_version(cluster.redis.url)
        assert version is not None

        # A broken file on another instance: it would allow add again, were it taken even in part.
        marks = {i.index: i.gateway.stderr_mark() for i in cluster.instances}
        (policy_dir(last) / "policy.csv").write_text(BOTH + "p, *, ev/tool/other, tools/call, maybe\n")
        started = time.monotonic()
        while POLICY_BROKEN not in last.gateway.stderr_since(marks[last.index]):
            assert time.monotonic() - started < 2.0, "instance 2 never looked at its broken file"
            await asyncio.sleep(0.02)
        # Nothing is to happen, so there is nothing to poll for: wait what a broadcast, or a second look at
        # the same file (every 0.25 s), would take, then check that neither happened.
        await asyncio.sleep(0.6)
        await decisions(http, cluster, add=False)
        assert await published_version(cluster.redis.url) == version
        for instance in cluster.instances:
            printed = instance.gateway.stderr_since(marks[instance.index])
            errors = [line for line in printed.splitlines() if " ERROR " in line]
            if instance is last:
                assert len(errors) == 1 and POLICY_BROKEN in errors[0], printed
            else:
                assert errors == [], printed
            assert "Traceback" not in printed, printed
