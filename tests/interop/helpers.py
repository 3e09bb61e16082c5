"""What the interop tests share: where setup.sh installed the third-party software, how to run it
(bounded, in its own process group, in a small environment), and the reference backends' config.

Everything here is installed by `bash tests/interop/setup.sh` into .cache/interop/; when it is missing
the tests fail (they never skip) and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CACHE = ROOT / ".cache" / "interop"
NODE = CACHE / "node-bin" / "node"
MODULES = CACHE / "node" / "node_modules"
SCOPE = MODULES / "@modelcontextprotocol"
INSPECTOR = SCOPE / "inspector" / "clients" / "launcher" / "build" / "index.js"
SERVER_EVERYTHING = SCOPE / "server-everything" / "dist" / "index.js"
SERVER_MEMORY = SCOPE / "server-memory" / "dist" / "index.js"
SERVER_TIME = CACHE / "venv-time" / "bin" / "mcp-server-time"

SETUP_HINT = "run `bash tests/interop/setup.sh` (it installs the interop tools into .cache/interop/)"
PROCESS_TIMEOUT = 30.0


def require_installed(*paths: Path) -> None:
    """Fail (never skip) with the way out when setup.sh has not installed what a test needs."""
    missing = [str(p) for p in (NODE, *paths) if not p.exists()]
    if missing:
        pytest.fail(f"interop tools missing: {', '.join(missing)}; {SETUP_HINT}", pytrace=False)


def text_of(result: dict[str, Any]) -> str:
    """The text blocks of a tool result, joined."""
    return "".join(c.get("text", "") for c in result["content"])


@dataclass(frozen=True)
class Completed:
    """How a command ended: its exit status and what it printed."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.returncode}: {self.command}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


async def run_process(
    args: list[str | Path], env: dict[str, str], timeout: float = PROCESS_TIMEOUT
) -> Completed:
    """Run a command to completion (bounded: on timeout its whole process group is killed and the test
    fails) and return how it ended, whatever its exit status."""
    command = " ".join(map(str, args))
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group, so a timeout kills any children too
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        pytest.fail(f"timed out after {timeout}s: {command}", pytrace=False)
    finally:
        if proc.returncode is None:  # cancelled: leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return Completed(command, proc.returncode, out.decode(), err.decode())


async def run(args: list[str | Path], env: dict[str, str], timeout: float = PROCESS_TIMEOUT) -> str:
    """Run a command to completion (bounded), fail the test on a non-zero exit, return its stdout."""
    done = await run_process(args, env, timeout)
    assert done.returncode == 0, done.describe()
    return done.stdout


def node_env(home: Path) -> dict[str, str]:
    """A small environment: the cached Node first on PATH, and a throwaway HOME for any state files."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{NODE.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "MCP_CATALOG_PATH": str(home / "mcp.json"),
        "MCP_CLIENT_CONFIG_PATH": str(home / "client.json"),
        "NO_COLOR": "1",
        "CI": "1",
    }


def parse_json(stdout: str) -> Any:
    """The single JSON document a tool printed (ignoring blank lines around it)."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pytest.fail(f"expected one JSON document on stdout, got:\n{stdout}", pytrace=False)


def reference_backends(tmp_path: Path) -> dict[str, Any]:
    """server-everything and server-memory (Node, TS SDK) and mcp-server-time (Python) over stdio."""
    return {
        "mcpServers": {
            "everything": {"command": str(NODE), "args": [str(SERVER_EVERYTHING), "stdio"]},
            "memory": {
                "command": str(NODE),
                "args": [str(SERVER_MEMORY)],
                "env": {"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")},
            },
            "time": {"command": str(SERVER_TIME), "args": ["--local-timezone", "UTC"]},
        }
    }
