"""The web console (/console, proxy/console/), in headless Chromium against a real gateway.

The page is driven as an operator would: it must list the backends from the admin API, show traffic and
the audit plugin's latest records, and its playground must connect over a WebSocket with a chosen token
and call a tool. The first test runs the shipped demo config (what ``make run`` serves); with
``PORTICO_CONSOLE_SCREENSHOT=<file.png>`` it also saves the screenshot the README shows.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import yaml
from playwright.async_api import Page, expect

from proxy.console import SECURITY_HEADERS
from tests.browser import chromium
from tests.conftest import RunningGateway, StartGateway
from tests.test_security_gateway import auth_options, token

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "proxy" / "demo" / "portico.yaml"
POLICIES = ROOT / "policies"
# Long enough for a busy CI machine; the page polls every two seconds.
WAIT_MS = 20_000
MILLISECONDS = re.compile(r"^\d+(\.\d+)? ms$")


def demo_settings(tmp_path: Path) -> dict[str, Any]:
    """The shipped demo config, its audit file moved into the test's folder."""
    settings: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
    for plugin in settings["plugins"]:
        if plugin["name"] == "audit":
            plugin["options"]["file"] = str(tmp_path / "audit.log")
    settings["reload"] = {"watch_seconds": 0}
    return settings


def console_url(gw: RunningGateway) -> str:
    return str(gw.server.make_url("/console"))


async def open_console(page: Page, gw: RunningGateway) -> list[str]:
    """Open the console; returns the list the page's errors are collected in."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(console_url(gw))
    return errors


async def call_tool(page: Page, name: str, arguments: str) -> None:
    await page.select_option("#tool", name)
    await page.fill("#arguments", arguments)
    await page.click("#call")


# -- the demo config: what `make run` serves ---------------------------------------------------------------


async def test_the_console_lists_backends_shows_traffic_and_a_playground_call_succeeds(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(demo_settings(tmp_path))
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors = await open_console(page, gw)

        # The backends, from the admin API, with their health and tools.
        for backend, tools in (("weather", "2 tools"), ("notes", "3 tools")):
            row = page.locator(f"#backends tr[data-backend={backend}]")
            await expect(row).to_contain_text("ready", timeout=WAIT_MS)
            await expect(row).to_contain_text(tools)
        await page.click("#backends tr[data-backend=weather] summary")
        await expect(page.locator("#backends tr[data-backend=weather] ul.names")).to_have_text(
            "get_forecastget_weather"
        )
        await expect(page.locator("#gateway-state")).to_have_text("ready")

        # The playground: connect anonymously, list the tools, call one.
        await page.click("#connect")
        await expect(page.locator("#connection")).to_contain_text("Connected", timeout=WAIT_MS)
        options = await page.locator("#tool option").all_text_contents()
        assert set(options[1:]) == {
            "weather_get_weather",
            "weather_get_forecast",
            "notes_add_note",
            "notes_list_notes",
            "notes_read_note",
        }
        await page.select_option("#tool", "weather_get_weather")
        # The arguments start as the tool's required ones, empty.
        assert (await page.input_value("#arguments")).replace(" ", "").replace("\n", "") == '{"city":""}'
        await call_tool(page, "weather_get_weather", '{"city": "Paris"}')
        await expect(page.locator("#call-status")).to_have_text("ok", timeout=WAIT_MS)
        await expect(page.locator("#call-result")).to_contain_text('"city": "Paris"')

        # A tool's own failure and a refused call are shown as such.
        await call_tool(page, "notes_read_note", '{"title": "never written"}')
        await expect(page.locator("#call-status")).to_have_text("tool error", timeout=WAIT_MS)
        await call_tool(page, "weather_get_weather", '{"city": 7')
        await expect(page.locator("#call-status")).to_have_text("invalid arguments")

        # The call reached the audit log and the traffic figures.
        audit_row = page.locator("#audit tbody tr", has_text="weather / get_weather")
        await expect(audit_row.first).to_contain_text("tools/call", timeout=WAIT_MS)
        await expect(audit_row.first).to_contain_text("anonymous")
        await expect(page.locator("#audit tbody")).to_contain_text("tool_error")
        await expect(page.locator("#sessions")).to_have_text("1")
        # Requests per second and latency are worked out between two polls: keep calls coming.
        for _ in range(3):
            await call_tool(page, "notes_list_notes", "{}")
            await expect(page.locator("#call-status")).to_have_text("ok", timeout=WAIT_MS)
            await asyncio.sleep(0.7)
        await expect(page.locator("#p50")).to_have_text(MILLISECONDS, timeout=WAIT_MS)
        await expect(page.locator("#rate")).not_to_have_text("0.0", timeout=WAIT_MS)

        screenshot = os.environ.get("PORTICO_CONSOLE_SCREENSHOT")
        if screenshot:
            await page.screenshot(path=screenshot, full_page=True)
        assert errors == []


# -- with authentication and a policy: the playground calls as the chosen token -----------------------------


async def test_the_playground_sees_and_calls_only_what_the_chosen_token_may(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    settings = demo_settings(tmp_path)
    settings["plugins"] = [
        {"name": "audit", "options": {"file": str(tmp_path / "audit.log")}},
        {"name": "auth", "options": auth_options(tmp_path, role_prefix="role:")},
        {
            "name": "policy",
            "options": {
                "model": str(POLICIES / "rbac_model.conf"),
                "policy": str(POLICIES / "rbac_policy.csv"),
            },
        },
    ]
    settings["admin"] = {"enabled": True, "role": "role:admin"}
    gw = await start_gateway(settings)
    resource = str(gw.server.make_url("/mcp"))
    admin_token = token("root", roles=["admin"], aud=resource)
    # A subject that is markup: the page must show it as text, never build elements from it.
    viewer = '<b id="injected">mallory</b>'
    viewer_token = token(viewer, roles=["viewer"], aud=resource)

    async with chromium() as browser:
        page = await browser.new_page()
        errors = await open_console(page, gw)
        # Without the admin token the admin API refuses, and the page says so.
        await expect(page.locator("#problem")).to_contain_text("401", timeout=WAIT_MS)
        await page.fill("#admin-token", admin_token)
        await page.click("#admin-token-form button")
        await expect(page.locator("#backends tr[data-backend=notes]")).to_contain_text(
            "ready", timeout=WAIT_MS
        )
        await expect(page.locator("#problem")).to_be_hidden()

        # No token: the gateway refuses the WebSocket.
        await page.click("#connect")
        await expect(page.locator("#connection")).to_contain_text("refused", timeout=WAIT_MS)

        # The viewer's token: only what rbac_policy.csv lets viewers call is listed, and it works.
        await page.fill("#playground-token", viewer_token)
        await page.click("#connect")
        await expect(page.locator("#connection")).to_contain_text("Connected", timeout=WAIT_MS)
        options = await page.locator("#tool option").all_text_contents()
        assert set(options[1:]) == {"weather_get_weather", "notes_list_notes"}
        await call_tool(page, "notes_list_notes", "{}")
        await expect(page.locator("#call-status")).to_have_text("ok", timeout=WAIT_MS)

        # The audit list names the viewer, literally.
        await expect(page.locator("#audit tbody")).to_contain_text(viewer, timeout=WAIT_MS)
        assert await page.locator("#injected").count() == 0
        assert errors == []


# -- what is served, and when (no browser needed) ----------------------------------------------------------


async def test_the_console_is_served_with_a_strict_policy_and_nothing_else_under_its_path(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(demo_settings(tmp_path))
    async with gw.http.get(gw.server.make_url("/console"), allow_redirects=False) as response:
        assert response.status == 308 and response.headers["Location"] == "/console/"
    async with gw.http.get(gw.server.make_url("/console/")) as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert '<script src="console.js"' in await response.text()
        for header, value in SECURITY_HEADERS.items():
            assert response.headers[header] == value
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        async with gw.http.get(gw.server.make_url(f"/console/{name}")) as response:
            assert response.status == 200 and response.content_type == kind
    for path in ("/console/__init__.py", "/console/static", "/console/..%2F__init__.py", "/console/x.js"):
        async with gw.http.get(gw.server.make_url(path)) as response:
            assert response.status == 404, path


async def test_no_console_without_the_admin_api_or_when_turned_off(start_gateway: StartGateway) -> None:
    for admin in ({}, {"enabled": True, "allow_anonymous_admin": True, "console": False}):
        gw = await start_gateway({"admin": admin})
        async with gw.http.get(gw.server.make_url("/console/")) as response:
            assert response.status == 404, admin


async def test_a_page_from_the_gateway_itself_may_open_sessions_a_foreign_one_may_not(
    start_gateway: StartGateway,
) -> None:
    """A gateway reachable by name (listening beyond loopback) serves its console under that name: the
    page's Origin is the request's own Host. A page from any other origin is still refused."""
    # The test server itself binds 127.0.0.1; the config's host only decides which Host names are let in.
    gw = await start_gateway({"listen": {"host": "0.0.0.0"}})  # noqa: S104
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    own = {"Host": "gateway.example:8765", "Accept": "application/json, text/event-stream"}
    cases = (
        ("http://gateway.example:8765", 200),
        ("https://GATEWAY.example:8765", 200),
        ("http://gateway.example:9999", 403),
        ("http://evil.example", 403),
    )
    for origin, status in cases:
        headers = {**own, "Origin": origin}
        async with gw.http.post(gw.server.make_url("/mcp"), json=initialize, headers=headers) as response:
            assert response.status == status, origin
