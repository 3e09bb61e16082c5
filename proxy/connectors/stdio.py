"""Backends run as child processes speaking newline-delimited JSON-RPC on stdin/stdout.

The child gets its own process group (so shutdown reaches anything it started) and, on Linux, dies with
the gateway even if the gateway is killed outright. Its environment holds only a short list of variables
every program needs plus what the config names, so the gateway's own secrets never leak into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from proxy.config import StdioBackendConfig
from proxy.connectors.base import Connector
from proxy.errors import BackendUnavailable
from proxy.write_batch import WriteBatch

# Variables passed through from the gateway's environment; everything else must be configured.
INHERITED_VARIABLES = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR")
_GRACE_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1


class StdioConnector(Connector):
    transport = "stdio"

    def __init__(self, backend: str, config: StdioBackendConfig, base_dir: Path) -> None:
        super().__init__(backend)
        self.config = config
        self.base_dir = base_dir
        self.process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._batch: WriteBatch | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def _open(self) -> None:
        cwd = self.base_dir / self.config.cwd if self.config.cwd else None
        env = {k: os.environ[k] for k in INHERITED_VARIABLES if k in os.environ} | dict(self.config.env)
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.config.command,
                *self.config.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                limit=self.config.max_message_bytes,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"cannot start {self.config.command!r}: {exc}") from None
        self._batch = WriteBatch(self._writer_to(self.process))
        self._tasks = [
            asyncio.create_task(self._read_stdout(self.process), name=f"{self.backend}-stdout"),
            asyncio.create_task(self._read_stderr(self.process), name=f"{self.backend}-stderr"),
        ]

    async def _read_stdout(self, process: asyncio.subprocess.Process) -> None:
        stdout = process.stdout
        if stdout is None:  # pragma: no cover - created with stdout=PIPE
            return
        while True:
            try:
                line = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    self._received(exc.partial)
                break
            except asyncio.LimitOverrunError:
                await self._skip_oversized_line(stdout)
                continue
            except (ConnectionError, ValueError):
                break
            if line.strip():
                self._received(line)
        code = await _wait_exit(process)
        self._report_closed(f"process exited with code {code}" if code is not None else "stdout closed")

    async def _skip_oversized_line(self, stdout: asyncio.StreamReader) -> None:
        # A message larger than the limit is dropped whole rather than forwarded truncated; the request
        # it answered then fails by its deadline.
        self.log.error("dropped a message larger than %d bytes", self.config.max_message_bytes)
        while True:
            try:
                await stdout.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await stdout.readexactly(exc.consumed)
            except (asyncio.IncompleteReadError, ConnectionError):
                return

    async def _read_stderr(self, process: asyncio.subprocess.Process) -> None:
        stderr = process.stderr
        while stderr is not None:
            try:
                line = await stderr.readline()
            except (ValueError, ConnectionError):
                # A line longer than the stream limit: the rest is still logged, in pieces.
                continue
            if not line:
                return
            self.log.info("%s", line.decode(errors="replace").rstrip())

    def _writer_to(self, process: asyncio.subprocess.Process) -> Callable[[bytes], None]:
        """What writes a batch of lines to ``process`` (this child only, should it be replaced)."""
        stdin = process.stdin

        def write(lines: bytes) -> None:
            if stdin is None:  # pragma: no cover - created with stdin=PIPE
                return
            try:
                stdin.write(lines)
            except (ConnectionError, RuntimeError) as exc:
                # The child is gone; its stdout closing fails whatever was waiting for a reply.
                self.log.debug("could not write to the backend: %s", exc)

        return write

    def sends_at_once(self) -> bool:
        # send() waits only to drain a pipe that holds unwritten bytes (see below).
        process = self.process
        stdin = process.stdin if process is not None else None
        return stdin is not None and not stdin.transport.get_write_buffer_size()

    async def send(self, data: bytes) -> None:
        process, batch = self.process, self._batch
        if process is None or process.stdin is None or process.returncode is not None or batch is None:
            raise BackendUnavailable(f"backend {self.backend!r} is not running")
        stdin = process.stdin
        transport = stdin.transport
        if transport.is_closing():
            raise BackendUnavailable(f"backend {self.backend!r} stopped accepting input")
        # Whole lines only, in order: the batch joins this turn's messages into one write().
        batch.add(data)
        batch.add(b"\n")
        # drain() waits only while the pipe's buffer is above its high-water mark (a child that does not
        # read); otherwise it would return at once, so the usual call skips its two coroutine layers.
        if transport.get_write_buffer_size():
            try:
                await stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise BackendUnavailable(f"backend {self.backend!r} stopped accepting input: {exc}") from None

    async def close(self) -> None:
        """Stop the child as the MCP specification asks: close its input, then SIGTERM, then SIGKILL."""
        process = self.process
        if self._batch is not None:
            self._batch.flush()  # the last messages (a cancellation, say) still go before stdin closes
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    process.stdin.close()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    _signal_group(process.pid, sig)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_GRACE_SECONDS):
                        await process.wait()
                        break
        if process is not None:
            # Whatever the child started in its own group goes too.
            _signal_group(process.pid, signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._report_closed("closed by the gateway")


async def _wait_exit(process: asyncio.subprocess.Process) -> int | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_GRACE_SECONDS):
            return await process.wait()
    return None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when the gateway dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
