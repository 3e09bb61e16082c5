"""A real `python -m proxy serve` process for tests that must see what an operator sees (stderr)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str  # ws://host:port/mcp
    stderr_path: Path
    checked: int = 0  # how much of stderr has been checked for tracebacks

    @property
    def base(self) -> str:
        """http://host:port"""
        return self.url.replace("ws://", "http://", 1).removesuffix("/mcp")

    @property
    def mcp(self) -> str:
        return self.base + "/mcp"

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size

    def stderr_mark(self) -> int:
        self.checked = self.stderr_size()
        return self.checked

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def settled_fds(self, ceiling: int | None, seconds: float = 10.0) -> int:
        """The open descriptors once they stop changing (or drop to ``ceiling``)."""
        deadline = time.monotonic() + seconds
        count = self.open_fds()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.open_fds()
            if (ceiling is not None and now <= ceiling) or (ceiling is None and now == count):
                return now
            count = now
        return count

    def stderr_since(self, since: int) -> str:
        with self.stderr_path.open("rb") as err:
            err.seek(since)
            return err.read().decode(errors="replace")

    def assert_no_traceback(self, since: int) -> None:
        """Nothing the gateway printed since ``since`` is a traceback."""
        text = self.stderr_since(since)
        self.checked = max(self.checked, since + len(text.encode(errors="replace")))
        assert "Traceback" not in text, f"the gateway printed a traceback:\n{text[-8000:]}"


@contextmanager
def serve_gateway(workdir: Path, settings: dict[str, Any]) -> Iterator[GatewayProcess]:
    """Start the gateway on a free port with ``settings``; on the way out, stop it and check that
    nothing it printed since the tests' last check (its shutdown included) is a traceback."""
    config = workdir / "portico.yaml"
    config.write_text(yaml.safe_dump(settings))
    stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
    running: GatewayProcess | None = None
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while (found := re.search(r"ws://\S+/mcp", stdout_path.read_text())) is None:
            assert process.poll() is None, f"the gateway exited: {stderr_path.read_text()}"
            assert time.monotonic() < deadline, f"no URL printed: {stderr_path.read_text()}"
            time.sleep(0.05)
        running = GatewayProcess(process, found.group(0), stderr_path)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if running is not None:
        running.assert_no_traceback(running.checked)
