"""The ``portico`` command, run for real as a subprocess: --version, check, serve, and clean failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy import __version__
from tests.conftest import everything
from tests.ports import free_port
from tests.rawclient import RawClient

PORTICO_SCRIPT = Path(sys.executable).parent / "portico"
COMMANDS = {"module": [sys.executable, "-m", "proxy"], "script": [str(PORTICO_SCRIPT)]}
URL_LINE = re.compile(r"listening on (ws://[^\s]+/mcp)")


def run(
    args: list[str], cwd: Path, timeout: float = 30, command: str = "module"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMANDS[command], *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def write_config(tmp_path: Path, settings: dict[str, Any], name: str = "portico.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def processes_tagged(tag: str) -> list[int]:
    """Live processes (not zombies) whose environment carries FIXTURE_TAG=tag."""
    needle = f"FIXTURE_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")


def kill_tagged(tag: str) -> None:
    for pid in processes_tagged(tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Served:
    def __init__(self, process: asyncio.subprocess.Process, url: str, stderr: Path) -> None:
        self.process = process
        self.url = url
        self.stderr = stderr


async def start_serve(
    args: list[str], cwd: Path, command: str = "module"
) -> tuple[asyncio.subprocess.Process, Path]:
    stderr = cwd / f"serve-{uuid.uuid4().hex[:6]}.stderr"
    with stderr.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *COMMANDS[command], *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=sink
        )
    return process, stderr


async def wait_url(process: asyncio.subprocess.Process, stderr: Path, timeout: float = 30) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"serve exited before printing its URL:\n{stderr.read_text()}")
            match = URL_LINE.search(line)
            if match:
                return match.group(1)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await process.wait()


@pytest.fixture
async def tag() -> AsyncIterator[str]:
    """A unique FIXTURE_TAG prefix; any backend process still carrying it afterwards is killed."""
    value = f"cli-{uuid.uuid4().hex[:10]}"
    yield value
    for suffix in ("", "-a", "-b"):
        kill_tagged(value + suffix)


# -- --version ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
def test_version(tmp_path: Path, command: str) -> None:
    done = run(["--version"], tmp_path, command=command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"portico {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


def test_no_command_prints_help_and_fails(tmp_path: Path) -> None:
    done = run([], tmp_path)
    assert done.returncode != 0
    assert "serve" in done.stdout and "check" in done.stdout


# -- check -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
def test_check_prints_backends_and_chain(tmp_path: Path, command: str) -> None:
    path = write_config(
        tmp_path,
        {
            "listen": {"port": 9123},
            "namespacing": {"separator": "__", "max_tool_name_length": 48},
            "mcpServers": {
                "weather-api": {"command": "uvx", "args": ["mcp-server-weather"]},
                "remote": {"url": "ws://127.0.0.1:9000/mcp", "session": "per-client"},
                "old-one": {"command": "node", "args": ["server.js"], "disabled": True},
            },
            "plugins": [{"name": "request_log", "options": {"level": "debug"}}, "request_log"],
        },
    )
    done = run(["check", "--config", str(path)], tmp_path, command=command)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr
    assert str(path) in out
    assert "ws://127.0.0.1:9123/mcp" in out
    assert re.search(r"weather-api: stdio.*uvx mcp-server-weather", out)
    assert re.search(r"remote: websocket, session per-client.*ws://127.0.0.1:9000/mcp", out)
    assert re.search(r"old-one: .*\(disabled\)", out)
    assert "separator '__'" in out
    assert "48" in out
    assert "chain: request_log -> request_log" in out
    # The backends are listed in config order, before the chain.
    assert out.index("weather-api") < out.index("remote:") < out.index("old-one") < out.index("chain:")


def test_check_with_no_plugins_says_the_chain_is_empty(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"mcpServers": {"a": {"command": "x"}}})
    done = run(["check", "--config", str(path)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "chain: (empty)" in done.stdout


def test_check_without_config_uses_the_bundled_demo(tmp_path: Path) -> None:
    done = run(["check"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "demo/portico.yaml" in done.stdout
    assert "weather:" in done.stdout and "notes:" in done.stdout
    # ${PORTICO_PYTHON} became the interpreter running the command.
    assert sys.executable in done.stdout


BAD_FILES: dict[str, tuple[str | bytes, str]] = {
    "missing-command": ("mcpServers:\n  weather-api:\n    args: [x]\n", "mcpServers.weather-api.command"),
    "unknown-key": ("listen:\n  prot: 1\n", "listen.prot: unknown key"),
    "bad-yaml": ("mcpServers: {a: [\n", "not valid YAML"),
    "not-a-mapping": ("- one\n- two\n", "top level must be a mapping"),
    "unset-variable": (
        "mcpServers:\n  a:\n    command: ${PORTICO_CLI_TEST_UNSET}\n",
        "PORTICO_CLI_TEST_UNSET",
    ),
    "unknown-plugin": ("plugins:\n  - no_such_plugin_xyz\n", "plugins[0]"),
    "bad-plugin-option": ("plugins:\n  - name: request_log\n    options: {level: loud}\n", "options.level"),
    "not-utf8": (b"\xff\xfe listen: {}\n", ""),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_check_on_a_bad_file_fails_with_one_clean_message(tmp_path: Path, case: str) -> None:
    content, expected = BAD_FILES[case]
    path = tmp_path / "portico.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    done = run(["check", "--config", str(path)], tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"portico: {path}: ")
    assert expected in lines[0]
    assert done.stdout == ""


def test_check_on_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    done = run(["check", "--config", str(path)], tmp_path, command="script")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == f"portico: {path}: cannot read the config file: No such file or directory"


# -- serve -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_serve_two_backends_then_sigterm_leaves_nothing_behind(
    tmp_path: Path, tag: str, command: str
) -> None:
    path = write_config(
        tmp_path,
        {
            "mcpServers": {"alpha": everything(f"{tag}-a"), "beta": everything(f"{tag}-b")},
            "plugins": ["request_log"],
        },
    )
    process, stderr = await start_serve(["serve", "--config", str(path), "--port", "0"], tmp_path, command)
    try:
        url = await wait_url(process, stderr)
        assert url.startswith("ws://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port not in (0, 8765)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}
            client = await RawClient.connect(http, url)
            try:
                init = await client.initialize()
                assert init["serverInfo"]["name"] == "portico"
                listed = await client.call("tools/list")
                names = {t["name"] for t in listed["tools"]}
                assert {"alpha_echo", "beta_echo", "alpha_whoami", "beta_whoami"} <= names
                assert not any(n in names for n in ("echo", "whoami"))
                pids = {}
                for backend, suffix in (("alpha", "a"), ("beta", "b")):
                    result = await client.call("tools/call", {"name": f"{backend}_whoami", "arguments": {}})
                    who_tag, pid, count = result["content"][0]["text"].split(":")
                    assert who_tag == f"{tag}-{suffix}"
                    assert count == "1"
                    pids[backend] = int(pid)
                    assert alive(int(pid))
                assert pids["alpha"] != pids["beta"]
                # The leftover detector used below does see the running backends.
                assert pids["alpha"] in processes_tagged(f"{tag}-a")
                assert pids["beta"] in processes_tagged(f"{tag}-b")
            finally:
                await client.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
        assert code == 0, stderr.read_text()
        assert "Traceback" not in stderr.read_text()
        # The backends are gone with the gateway: none left running, none orphaned.
        async with asyncio.timeout(5):
            while any(alive(pid) for pid in pids.values()):
                await asyncio.sleep(0.05)
        assert processes_tagged(f"{tag}-a") == []
        assert processes_tagged(f"{tag}-b") == []
    finally:
        await stop(process)


async def refused_start(process: asyncio.subprocess.Process, stderr: Path) -> list[str]:
    """Wait for a `serve` that must refuse to start: non-zero exit, never listening, no traceback, and
    exactly one `portico: ...` line, which is returned (as a one-item list)."""
    async with asyncio.timeout(60):
        assert process.stdout is not None
        out = (await process.stdout.read()).decode()
        code = await process.wait()
    text = stderr.read_text()
    assert code != 0
    assert "listening" not in out
    assert "Traceback" not in text, text
    problem = [line for line in text.splitlines() if line.startswith("portico: ")]
    assert len(problem) == 1, text
    return problem


async def test_serve_with_colliding_names_in_mode_never_fails_naming_both(tmp_path: Path, tag: str) -> None:
    path = write_config(
        tmp_path,
        {
            "namespacing": {"mode": "never"},
            "mcpServers": {"first-one": everything(f"{tag}-a"), "second-one": everything(f"{tag}-b")},
        },
    )
    process, stderr = await start_serve(["serve", "--config", str(path), "--port", "0"], tmp_path)
    try:
        problem = await refused_start(process, stderr)
        assert "'first-one'" in problem[0]
        assert "'second-one'" in problem[0]
        assert "never" in problem[0]
        assert str(path) in problem[0]
        assert processes_tagged(f"{tag}-a") == []
        assert processes_tagged(f"{tag}-b") == []
    finally:
        await stop(process)


async def test_serve_on_a_port_in_use_fails_cleanly(tmp_path: Path, tag: str) -> None:
    path = write_config(tmp_path, {"mcpServers": {"alpha": everything(f"{tag}-a")}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, stderr = await start_serve(["serve", "--config", str(path), "--port", str(port)], tmp_path)
        try:
            problem = await refused_start(process, stderr)
            assert "cannot listen" in problem[0]
            assert "in use" in problem[0].lower()
            assert processes_tagged(f"{tag}-a") == []
        finally:
            await stop(process)


async def test_serve_host_and_port_options_override_the_file(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, {"listen": {"host": "127.0.0.2", "port": 1}})
    process, stderr = await start_serve(
        ["serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port)], tmp_path, "script"
    )
    try:
        url = await wait_url(process, stderr)
        assert url == f"ws://127.0.0.1:{port}/mcp"
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
        assert code == 0, stderr.read_text()
    finally:
        await stop(process)
