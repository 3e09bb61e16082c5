"""A real redis-server for the tests: started on a free loopback port, in memory only, stopped after.

    async with RedisServer() as redis:
        redis.url          # redis://127.0.0.1:PORT/0

``tests/services/setup.sh`` (run by ``make test``) installs it from Debian's packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from types import TracebackType

from tests.ports import free_port

READY_SECONDS = 10.0


class RedisServer:
    """One redis-server process, bound to 127.0.0.1, persisting nothing."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run bash tests/services/setup.sh")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._until_ready()
        return self

    async def _until_ready(self) -> None:
        async with asyncio.timeout(READY_SECONDS):
            while True:
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"PING\r\n")
                    await writer.drain()
                    answer = await reader.readline()
                    writer.close()
                    if answer.startswith(b"+PONG"):
                        return
                await asyncio.sleep(0.05)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
