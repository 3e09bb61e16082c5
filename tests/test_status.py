"""``portico status``: a real ``portico serve`` process asked by a real ``portico status`` process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import fixture_server
from tests.gateway_process import ROOT, serve_gateway
from tests.rawclient import RawClient

BROKEN = {"command": "/nonexistent/portico-test-server", "restart": {"enabled": False}}


async def status(url: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "status",
        "--url",
        url,
        "--timeout",
        "5",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_ready_gateway_reports_its_backends_and_sessions(tmp_path: Path) -> None:
    settings = {"mcpServers": {"c": fixture_server("counting_server.py")}}
    with serve_gateway(tmp_path, settings) as gateway:
        async with aiohttp.ClientSession() as http:
            client = await RawClient.connect(http, gateway.url)
            await client.initialize()
            code, out, err = await status(gateway.base)
            await client.close()
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith(f"gateway {gateway.base}: ready")
    assert re.search(r"^  c\s+up\s+8 tools$", out, re.MULTILINE), out
    assert "sessions: 1 (websocket/legacy 1)" in out


async def test_a_gateway_short_of_ready_backends_is_not_ready(tmp_path: Path) -> None:
    settings = {
        "mcpServers": {"c": fixture_server("counting_server.py"), "broken": BROKEN},
        "listen": {"min_ready_backends": 2},
    }
    with serve_gateway(tmp_path, settings) as gateway:
        code, out, _ = await status(gateway.base + "/mcp")
    assert code == 1
    assert "NOT READY (1 backend(s) ready, at least 2 needed)" in out
    assert re.search(r"^  broken\s+down\s+0 tools$", out, re.MULTILINE), out
    assert re.search(r"^  c\s+up\s+8 tools$", out, re.MULTILINE), out


async def test_an_unreachable_gateway_is_one_line_and_exit_2(unused_tcp_port: int) -> None:
    code, out, err = await status(f"http://127.0.0.1:{unused_tcp_port}")
    assert (code, out) == (2, "")
    assert (
        err.strip()
        == f"portico: cannot reach the gateway at http://127.0.0.1:{unused_tcp_port}: Connection refused"
    )


async def test_a_server_that_is_not_portico_is_unreachable(tmp_path: Path) -> None:
    # Python's own file server: it answers HTTP, but 404 for /readyz.
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30)
        found = re.search(rb"port (\d+)", line)
        assert found, line
        code, _, err = await status(f"http://127.0.0.1:{int(found.group(1))}")
    finally:
        server.terminate()
        server.wait(10)
    assert code == 2
    assert err.count("\n") == 1 and "/readyz answered HTTP 404" in err and "Traceback" not in err
