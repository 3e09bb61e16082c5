"""The admin API under /admin (proxy.admin), through a real gateway with the auth and audit plugins.

Callers present HS256 JWTs as on /mcp; the ``roles`` claim decides who is an administrator. Backends are
real stdio subprocesses (tests/fixtures/counting_server.py), clients real WebSockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from proxy import config
from proxy.app import build_app
from proxy.errors import ConfigError
from proxy.gateway import Gateway
from proxy.plugin_loader import build_plugins
from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.rawclient import RawClient, RpcError
from tests.test_audit import read_lines, wait_for_lines
from tests.test_security_gateway import auth_options, token

COUNTING = fixture_server("counting_server.py")
LIST_CHANGED = "notifications/tools/list_changed"


class Admin:
    """A gateway with audit (to a file) and auth in its chain, and the admin API enabled."""

    def __init__(self, gw: RunningGateway, audit_file: Path) -> None:
        self.gw = gw
        self.audit_file = audit_file
        self.resource = str(gw.server.make_url("/mcp"))

    def jwt(self, sub: str = "root", roles: list[str] | None = None) -> str:
        return token(sub, roles=roles, aud=self.resource)

    @property
    def admin_token(self) -> str:
        return self.jwt(roles=["admin"])

    async def call(
        self, method: str, path: str, bearer: str | None = None, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        url = self.gw.server.make_url(path)
        async with self.gw.http.request(method, url, headers=headers, data=data) as response:
            text = await response.text()
            body = orjson.loads(text) if response.content_type == "application/json" else text
            return response.status, body, response

    async def client(self) -> RawClient:
        return await self.gw.client(headers={"Authorization": f"Bearer {self.admin_token}"})


async def start_admin(
    start_gateway: StartGateway, tmp_path: Path, admin: dict[str, Any] | None = None
) -> Admin:
    audit_file = tmp_path / "audit.log"
    plugins = [
        {"name": "audit", "options": {"file": str(audit_file)}},
        {"name": "auth", "options": auth_options(tmp_path)},
    ]
    # The tests drive reloads themselves; the file watcher would race them.
    settings: dict[str, Any] = {
        "mcpServers": {"first": COUNTING},
        "plugins": plugins,
        "reload": {"watch_seconds": 0},
    }
    if admin is not None:
        settings["admin"] = admin
    return Admin(await start_gateway(settings), audit_file)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


def tool_names(tools: list[dict[str, Any]]) -> set[str]:
    return {tool["name"] for tool in tools}


# -- who may call it -----------------------------------------------------------------------------------------


async def test_callers_need_a_valid_token_and_the_admin_role(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    status, body, response = await admin.call("GET", "/admin/backends")
    assert status == 401
    assert "resource_metadata=" in response.headers["WWW-Authenticate"]
    status, _, _ = await admin.call("GET", "/admin/backends", bearer="not-a-jwt")
    assert status == 401
    status, body, _ = await admin.call("GET", "/admin/backends", bearer=admin.jwt(roles=["reader"]))
    assert status == 403
    assert "admin" in body["error"]
    status, body, _ = await admin.call("GET", "/admin/backends", bearer=admin.admin_token)
    assert status == 200
    [first] = body["backends"]
    assert first["name"] == "first"
    assert first["transport"] == "stdio"
    assert first["ready"] is True
    assert first["state"] == "ready"
    assert first["tools"] == 8
    assert first["resources"] == 1
    assert first["resource_templates"] == 1
    assert first["instances"] == [{"name": "first", "state": "ready", "breaker": "closed", "restarts": 0}]


async def test_a_custom_role_is_the_one_required(start_gateway: StartGateway, tmp_path: Path) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True, "role": "operator"})
    status, _, _ = await admin.call("GET", "/admin/sessions", bearer=admin.admin_token)
    assert status == 403
    status, _, _ = await admin.call("GET", "/admin/sessions", bearer=admin.jwt(roles=["operator"]))
    assert status == 200


async def test_a_disabled_admin_api_is_not_there(start_gateway: StartGateway, tmp_path: Path) -> None:
    admin = await start_admin(start_gateway, tmp_path)
    for method, path in (("GET", "/admin/backends"), ("GET", "/admin/sessions"), ("POST", "/admin/reload")):
        status, _, _ = await admin.call(method, path, bearer=admin.admin_token)
        assert status == 404, path


async def test_enabling_it_without_an_authenticator_is_refused_unless_explicitly_anonymous(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "open.yaml"
    path.write_text("admin: {enabled: true}\n")
    cfg = config.load(path)
    with pytest.raises(ConfigError, match="allow_anonymous_admin"):
        build_app(Gateway(cfg, build_plugins(cfg)))
    gw = await start_gateway({"admin": {"enabled": True, "allow_anonymous_admin": True}})
    async with gw.http.get(gw.server.make_url("/admin/backends")) as response:
        assert response.status == 200
        assert await response.json() == {"backends": []}


# Only written into configs: nothing binds to these (the check refuses before any listener exists).
EVERYWHERE = "0.0.0.0"  # noqa: S104


@pytest.mark.parametrize("host", [EVERYWHERE, "::", "192.0.2.10", "gateway.example"])
def test_anonymous_admin_is_refused_on_an_address_others_can_reach(tmp_path: Path, host: str) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(f"listen: {{host: '{host}'}}\nadmin: {{enabled: true, allow_anonymous_admin: true}}\n")
    cfg = config.load(path)
    with pytest.raises(ConfigError, match="allow_anonymous_admin is for local use"):
        build_app(Gateway(cfg, build_plugins(cfg)))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_anonymous_admin_is_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(f"listen: {{host: '{host}'}}\nadmin: {{enabled: true, allow_anonymous_admin: true}}\n")
    cfg = config.load(path)
    app = build_app(Gateway(cfg, build_plugins(cfg)))
    assert any(
        route.resource and route.resource.canonical == "/admin/overview" for route in app.router.routes()
    )


async def test_a_page_on_another_origin_or_host_cannot_use_the_admin_api(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """DNS rebinding: a web page the operator visits must not reach a local (anonymous) admin API."""
    audit_file = tmp_path / "audit.log"
    gw = await start_gateway(
        {
            "admin": {"enabled": True, "allow_anonymous_admin": True},
            "plugins": [{"name": "audit", "options": {"file": str(audit_file)}}],
        }
    )
    own = f"127.0.0.1:{gw.server.port}"
    entry = {"name": "planted", "config": COUNTING}
    for headers in ({"Origin": "http://evil.example"}, {"Host": f"evil.example:{gw.server.port}"}):
        async with gw.http.post(
            gw.server.make_url("/admin/backends"), json=entry, headers=headers
        ) as response:
            assert response.status == 403, headers
            assert "is not allowed" in (await response.json())["error"]
    assert "planted" not in gw.gateway.backends
    # The gateway's own pages (the console) are same-origin, and local names are fine.
    for origin in (f"http://{own}", "http://localhost:3000"):
        async with gw.http.get(gw.server.make_url("/admin/backends"), headers={"Origin": origin}) as response:
            assert response.status == 200, origin
    refused = await wait_for_lines(
        lambda: [line for line in read_lines(audit_file) if line.get("status") == 403],
        lambda lines: len(lines) == 2,
    )
    assert {line["path"] for line in refused} == {"/admin/backends"}


async def test_the_overview_shows_gateway_traffic_sessions_backends_and_recent_audit_records(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    client = await admin.client()
    await client.call("tools/call", {"name": "first_lookup", "arguments": {"key": "k"}})
    with pytest.raises(RpcError):
        await client.call("tools/call", {"name": "first_nonexistent", "arguments": {}})
    status, _, _ = await admin.call("GET", "/admin/sessions", admin.admin_token)
    assert status == 200

    status, body, response = await admin.call("GET", "/admin/overview?audit=3", admin.admin_token)
    assert status == 200 and response.headers["Cache-Control"] == "no-store"
    assert body["gateway"]["ready"] is True and body["gateway"]["not_ready"] == []
    assert body["gateway"]["version"] and body["gateway"]["uptime_seconds"] > 0
    traffic = body["traffic"]
    # initialize, the call, the unknown tool (an error), all timed.
    assert traffic["requests"] == 3 and traffic["errors"] == 1 and traffic["in_flight"] == 0
    latency = traffic["latency"]
    assert latency["count"] == 3 and latency["sum_seconds"] > 0
    assert len(latency["counts"]) == len(latency["buckets"])
    assert latency["counts"] == sorted(latency["counts"]) and latency["counts"][-1] <= 3
    assert body["sessions"] == {"total": 1, "by_transport": {"websocket": 1}}
    [first] = body["backends"]
    assert first["tool_names"] == sorted(first["tool_names"]) and "lookup" in first["tool_names"]
    assert len(first["tool_names"]) == first["tools"] == 8
    audit = body["audit"]
    assert audit["enabled"] is True
    # Newest first: the admin call, then the two tool calls (never their arguments; the unknown name
    # routes nowhere, so it names no tool).
    assert [(e.get("event"), e.get("tool"), e.get("outcome")) for e in audit["entries"]] == [
        ("admin", None, None),
        (None, None, "error -32602"),
        (None, "lookup", "ok"),
    ]
    assert all("params" not in e and "arguments" not in e for e in audit["entries"])

    status, body, _ = await admin.call("GET", "/admin/overview?audit=many", admin.admin_token)
    assert status == 400 and "audit" in body["error"]


async def test_the_overview_says_when_no_plugin_keeps_audit_records(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"admin": {"enabled": True, "allow_anonymous_admin": True}})
    async with gw.http.get(gw.server.make_url("/admin/overview")) as response:
        body = await response.json()
    assert body["audit"] == {"enabled": False, "entries": []}
    assert body["traffic"]["requests"] == 0 and body["sessions"]["total"] == 0


# -- backends ------------------------------------------------------------------------------------------------


async def test_a_registered_backend_reaches_connected_clients_and_leaves_them_on_deregistration(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    client = await admin.client()
    assert "second_lookup" not in tool_names(await client.list_all("tools/list", "tools"))

    status, body, _ = await admin.call(
        "POST", "/admin/backends", admin.admin_token, {"name": "second", "config": COUNTING}
    )
    assert status == 201, body
    assert (body["name"], body["ready"], body["tools"]) == ("second", True, 8)
    await client.wait_notification(LIST_CHANGED)
    assert "second_lookup" in tool_names(await client.list_all("tools/list", "tools"))
    result = await client.call("tools/call", {"name": "second_lookup", "arguments": {"key": "k"}})
    assert result["content"][0]["text"] == "k #1"
    _, listing, _ = await admin.call("GET", "/admin/backends", admin.admin_token)
    assert [b["name"] for b in listing["backends"]] == ["first", "second"]

    status, body, _ = await admin.call("DELETE", "/admin/backends/second", admin.admin_token)
    assert (status, body) == (200, {"removed": "second"})
    await until(lambda: len(client.notifications_of(LIST_CHANGED)) >= 2, "a second list_changed")
    tools = tool_names(await client.list_all("tools/list", "tools"))
    assert "second_lookup" not in tools
    assert "first_lookup" in tools
    with pytest.raises(RpcError):
        await client.call("tools/call", {"name": "second_lookup", "arguments": {"key": "k"}})
    assert "second" not in admin.gw.gateway.backends
    status, _, _ = await admin.call("DELETE", "/admin/backends/second", admin.admin_token)
    assert status == 404


async def test_bad_and_duplicate_registrations_are_refused_and_leave_nothing_behind(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    bearer = admin.admin_token
    refused = [
        ({"name": "x", "config": {"command": ""}}, 400, "mcpServers.x.command"),
        ({"name": "x", "config": {**COUNTING, "colour": "red"}}, 400, "colour: unknown key"),
        ({"name": "bad name!", "config": COUNTING}, 400, "backend name"),
        ({"name": "x", "config": {"url": "ftp://example.test"}}, 400, "URL"),
        ({"name": "x"}, 400, "the body must be"),
        ([1, 2], 400, "JSON object"),
        ({"name": "first", "config": COUNTING}, 409, "already exists"),
        ({"name": "x", "config": {**COUNTING, "args": ["/no/such/server.py"]}}, 502, "did not start"),
    ]
    for body, expected, words in refused:
        status, answer, _ = await admin.call("POST", "/admin/backends", bearer, body)
        assert status == expected, (body, answer)
        assert words in answer["error"], answer
    status, answer, _ = await admin.call("POST", "/admin/backends", bearer, raw=b"{not json")
    assert (status, answer) == (400, {"error": "the body is not valid JSON"})
    assert list(admin.gw.gateway.backends) == ["first"]
    assert list(admin.gw.gateway.config.mcpServers) == ["first"]


# -- sessions and reload -------------------------------------------------------------------------------------


async def test_sessions_are_listed_and_an_administrator_can_end_one(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    headers = {"Authorization": f"Bearer {admin.jwt('alice')}"}
    ws = await admin.gw.http.ws_connect(admin.gw.url, protocols=("mcp",), headers=headers)
    try:
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        await ws.send_str(
            orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}).decode()
        )
        assert "result" in orjson.loads((await ws.receive(timeout=10)).data)
        status, body, _ = await admin.call("GET", "/admin/sessions", admin.admin_token)
        assert status == 200
        [session] = body["sessions"]
        assert (session["transport"], session["era"], session["principal"]) == (
            "websocket",
            "legacy",
            "alice",
        )
        assert session["calls_in_flight"] == 0

        status, body, _ = await admin.call("DELETE", f"/admin/sessions/{session['id']}", admin.admin_token)
        assert (status, body) == (200, {"ended": session["id"]})
        closing = await ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert (closing.data, closing.extra) == (1008, "ended by an administrator")
    finally:
        await ws.close()
    await until(lambda: not admin.gw.gateway.sessions, "the session is gone")
    status, _, _ = await admin.call("DELETE", f"/admin/sessions/{session['id']}", admin.admin_token)
    assert status == 404


async def test_reload_applies_the_backends_of_the_config_file(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    client = await admin.client()
    source = Path(admin.gw.gateway.config.source)
    settings = yaml.safe_load(source.read_text())

    source.write_text("mcpServers: [not, a, mapping]\n")
    status, body, _ = await admin.call("POST", "/admin/reload", admin.admin_token)
    assert status == 400
    assert "not reloaded" in body["error"]
    assert list(admin.gw.gateway.backends) == ["first"]

    settings["mcpServers"] = {"second": COUNTING}
    source.write_text(yaml.safe_dump(settings))
    status, body, _ = await admin.call("POST", "/admin/reload", admin.admin_token)
    assert status == 200, body
    assert (body["added"], body["removed"], body["changed"], body["failed"]) == (
        ["second"],
        ["first"],
        [],
        {},
    )
    await client.wait_notification(LIST_CHANGED)
    tools = tool_names(await client.list_all("tools/list", "tools"))
    assert "second_lookup" in tools
    assert "first_lookup" not in tools
    status, body, _ = await admin.call("POST", "/admin/reload", admin.admin_token)
    assert (body["added"], body["removed"], body["changed"]) == ([], [], [])


# -- the audit trail -----------------------------------------------------------------------------------------


async def test_every_admin_call_is_audited_refused_or_not(
    start_gateway: StartGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portico.admin")
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    await admin.call("GET", "/admin/backends")
    await admin.call("GET", "/admin/sessions", admin.jwt("mallory", roles=[]))
    await admin.call("DELETE", "/admin/backends/nothing", admin.admin_token)
    await admin.call("DELETE", "/admin/sessions/nobody", admin.admin_token)
    expected = [
        (None, "GET", "/admin/backends", 401),
        ({"subject": "mallory", "kind": "jwt"}, "GET", "/admin/sessions", 403),
        ({"subject": "root", "kind": "jwt"}, "DELETE", "/admin/backends/nothing", 404),
        ({"subject": "root", "kind": "jwt"}, "DELETE", "/admin/sessions/nobody", 404),
    ]

    def admin_lines() -> list[dict[str, Any]]:
        return [line for line in read_lines(admin.audit_file) if line.get("event") == "admin"]

    in_file = await wait_for_lines(admin_lines, lambda lines: len(lines) >= len(expected))
    logged = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "portico.admin"]
    for lines in (in_file, logged):
        assert [(x["principal"], x["method"], x["path"], x["status"]) for x in lines] == expected
        assert list(lines[0]) == ["time", "event", "principal", "remote", "method", "path", "status"]
        assert lines[0]["time"].endswith("Z")


async def test_successful_reads_are_logged_at_debug_and_still_audited(
    start_gateway: StartGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="portico.admin")
    admin = await start_admin(start_gateway, tmp_path, {"enabled": True})
    await admin.call("GET", "/admin/overview", admin.admin_token)
    await admin.call("DELETE", "/admin/sessions/nobody", admin.admin_token)
    levels = [
        (orjson.loads(r.getMessage())["path"], r.levelname)
        for r in caplog.records
        if r.name == "portico.admin"
    ]
    assert levels == [("/admin/overview", "DEBUG"), ("/admin/sessions/nobody", "INFO")]
    lines = await wait_for_lines(
        lambda: [line for line in read_lines(admin.audit_file) if line.get("event") == "admin"],
        lambda lines: len(lines) >= 2,
    )
    assert [line["path"] for line in lines] == ["/admin/overview", "/admin/sessions/nobody"]
