"""The processes a conformance run needs: the fixture backend, the gateway in front of it, and the
conformance CLI. Every one has a deadline and is killed (its whole process group) when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[2]
FIXTURE: Final = ROOT / "tests" / "conformance" / "fixture_server.py"
PYTHON: Final = sys.executable
START_TIMEOUT: Final = 60.0  # seconds for a fixture or gateway to print its URL
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL


class StartError(RuntimeError):
    """A process needed for a path did not start; the message says what it printed."""


@dataclass
class Running:
    """A started process, with the files its output goes to."""

    name: str
    process: asyncio.subprocess.Process
    stdout: Path
    stderr: Path


async def start(name: str, argv: Sequence[str], logs: Path) -> Running:
    """Start ``argv`` in its own process group, its output going to ``logs/name.{out,err}``."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT, start_new_session=True
        )
    return Running(name, process, stdout, stderr)


async def stop(running: Running) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after ``STOP_TIMEOUT``."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if running.process.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running.process.wait(), wait)
    # Children that outlived their parent (none should) go with the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(running.process.pid, signal.SIGKILL)


async def wait_for_url(running: Running, pattern: str) -> str:
    """The first match of ``pattern`` in the process's stdout, once it appears."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while (found := re.search(pattern, running.stdout.read_text(errors="replace"))) is None:
        if running.process.returncode is not None:
            raise StartError(
                f"{running.name} exited with {running.process.returncode}: {tail(running.stderr)}"
            )
        if asyncio.get_running_loop().time() > deadline:
            raise StartError(
                f"{running.name} printed no URL in {START_TIMEOUT:.0f} s: {tail(running.stderr)}"
            )
        await asyncio.sleep(0.05)
    return found.group(0)


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.asynccontextmanager
async def fixture_over_http(logs: Path, *, legacy_only: bool = False) -> AsyncIterator[str]:
    """A fixture serving Streamable HTTP; yields its ``http://127.0.0.1:PORT/mcp`` URL."""
    argv = [PYTHON, str(FIXTURE), "--transport", "streamable-http", "--port", "0"]
    running = await start("fixture", [*argv, *(["--legacy-only"] if legacy_only else [])], logs)
    try:
        yield await wait_for_url(running, r"(?<=^LISTENING )http://\S+")
    finally:
        await stop(running)


def stdio_backend(*, legacy_only: bool = False) -> dict[str, Any]:
    """A gateway backend entry that starts the fixture over stdio.

    A ``--legacy-only`` fixture asks its questions (sampling, elicitation, roots) as requests to
    the gateway, which the gateway attributes to the right client only on ``session: per-client``
    backends (a shared link declares no ``roots`` and cannot tell whose a request is once two
    clients have calls in flight), so that is how the README says to configure such a backend. A
    dual-era fixture speaks the modern era to the gateway and asks nothing over a back-channel.
    """
    if not legacy_only:
        return {"command": PYTHON, "args": [str(FIXTURE), "--transport", "stdio"]}
    args = [str(FIXTURE), "--transport", "stdio", "--legacy-only"]
    return {"command": PYTHON, "args": args, "session": "per-client"}


def http_backend(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "type": "streamable-http", **extra}


def gateway_config(backend: dict[str, Any]) -> dict[str, Any]:
    """One backend, its names exposed unchanged, so the scenarios find ``test_simple_text`` and
    ``test://static-text`` as they are.

    ``listen.allowed_origins``/``allowed_hosts`` stay empty on purpose: dns-rebinding-protection
    sends its valid request with the URL's own ``Host``/``Origin`` (127.0.0.1:PORT), which a
    loopback gateway accepts by default, and its attack request with ``evil.example.com``, which
    the gateway must refuse. Widening either list would only weaken what is being tested.
    """
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "namespacing": {"mode": "never"},
        "mcpServers": {"fixture": backend},
    }


async def gateway_accepts(config: dict[str, Any], workdir: Path) -> tuple[bool, str]:
    """Whether ``portico check`` accepts ``config``, and what it said."""
    path = write_config(config, workdir / "check.yaml")
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "proxy", "check", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return False, "portico check timed out"
    return process.returncode == 0, output.decode(errors="replace").strip()


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def gateway(config: dict[str, Any], logs: Path) -> AsyncIterator[str]:
    """``portico serve`` on a free port; yields its Streamable HTTP URL (it prints the ws:// one)."""
    path = write_config(config, logs / "portico.yaml")
    argv = [PYTHON, "-m", "proxy", "serve", "--config", str(path), "--port", "0"]
    running = await start("gateway", argv, logs)
    try:
        url = await wait_for_url(running, r"ws://\S+/mcp")
        yield "http://" + url.removeprefix("ws://")
    finally:
        await stop(running)


async def run_bounded(argv: Sequence[str], log: Path, timeout: float) -> int:
    """Run ``argv`` to completion (output to ``log``); kill it after ``timeout`` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    running = Running(Path(argv[0]).name, process, log, log)
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with log.open("a") as out:
            out.write(f"\n[killed after {timeout:.0f} s]\n")
        return -1
    finally:
        await stop(running)
