"""How much the gateway costs: the same closed-loop client, straight to a stdio backend and through Portico.

    python -m bench.core_ws [--seconds S] [--concurrency C] [--repeats N] [--gateway-tree DIR] [--smoke]

DIRECT runs the client against a ``bench.null_backend`` child over stdio; GATEWAY runs it over WebSocket
against a ``python -m proxy serve`` child (empty plugin chain) whose only backend is that same null
backend, so the difference between the two is what the gateway adds. Each pass alternates the modes
(direct, gateway, direct, gateway, ...) with fresh processes per run and reports medians over the runs:
first at concurrency C (pipelined on one connection), then one call at a time (C=1) for the latency a
single call pays. ``--smoke`` does one short run per mode and only checks that every call succeeded.

Every child is killed at the end, on errors too; the exit status is non-zero if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import aiohttp
import orjson
import uvloop

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "portico-bench", "version": "1.0"}
# What a stdio backend inherits, mirroring what the gateway passes its own backends.
BACKEND_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR")
STARTUP_SECONDS = 30.0
# Grace after the last request is sent for the stragglers to come back before calls count as lost.
DRAIN_SECONDS = 15.0
STOP_GRACE_SECONDS = 3.0
_READY = re.compile(rb"listening on (ws://\S+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"


class BenchError(Exception):
    """A run could not be done at all (a child did not start, the handshake failed)."""


# -- processes ------------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    # Field 22 of /proc/PID/stat; with the pid it names one process even if pids are reused.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def descendants(root: int) -> list[tuple[int, str]]:
    """Every live process below ``root`` (pid and start time), found by walking /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    queue = [root]
    while queue:
        for child in children.get(queue.pop(), []):
            started = _start_time(child)
            if started is not None:
                found.append((child, started))
                queue.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent not idle, summed over all cores (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


CpuProbe = Callable[[], dict[str, float]]


def cpu_probe(pids: dict[str, Sequence[int]]) -> CpuProbe:
    """CPU seconds used so far by this client, each named group of processes, and the whole machine.

    The machine's figure shows how much else was running: on a shared box that is the first suspect
    when a run looks slow.
    """

    def probe() -> dict[str, float]:
        used = {"client": time.process_time()}
        used.update({name: sum(cpu_seconds(pid) for pid in group) for name, group in pids.items()})
        used[MACHINE] = machine_busy_seconds()
        return used

    return probe


class Children:
    """The processes this benchmark started; ``stop_all`` ends them and anything they started."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(*argv, **kwargs)
        self.processes.append(process)
        return process

    async def stop(self, process: asyncio.subprocess.Process) -> None:
        # Found before the parent goes, since afterwards orphans are re-parented and lost from view.
        below = descendants(process.pid)
        if process.returncode is None:
            # A stdio server's polite stop is the end of its input; SIGTERM and SIGKILL follow if needed.
            signals: list[signal.Signals | None] = [signal.SIGTERM, signal.SIGKILL]
            if process.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    process.stdin.close()
                signals.insert(0, None)
            for sig in signals:
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(sig)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_GRACE_SECONDS):
                        await process.wait()
                        break
        # The gateway stops its backends itself; whatever survived it is killed here.
        for pid, started in below:
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if process in self.processes:
            self.processes.remove(process)

    async def stop_all(self) -> None:
        for process in list(self.processes):
            await self.stop(process)


@contextlib.asynccontextmanager
async def children_and_workdir(prefix: str) -> AsyncIterator[tuple[Children, Path]]:
    """The processes a run starts and a fresh directory for their files: both gone at the end, on errors
    and Ctrl-C too, so no server outlives the benchmark."""
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield children, workdir
    finally:
        await children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


# -- channels: one JSON-RPC connection, stdio or WebSocket --------------------------------------------------


class Channel(ABC):
    @abstractmethod
    async def receive(self) -> list[bytes]:
        """The next message(s) that arrived, each one JSON text; an empty list when the peer is gone."""

    @abstractmethod
    async def send(self, messages: Sequence[bytes]) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class StdioChannel(Channel):
    """Newline-delimited JSON-RPC on a child's pipes, read in large chunks (one wake-up, many replies)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._pending = b""

    async def receive(self) -> list[bytes]:
        while True:
            chunk = await self._stdout.read(1 << 16)
            if not chunk:
                return []
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()
            messages = [line for line in lines if line.strip()]
            if messages:
                return messages

    async def send(self, messages: Sequence[bytes]) -> None:
        # One write for a batch is what any stdio client would do; drain only blocks on a full pipe.
        self._stdin.write(b"\n".join(messages) + b"\n")
        await self._stdin.drain()

    async def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._stdin.close()


class WebSocketChannel(Channel):
    """MCP over WebSocket: subprotocol ``mcp``, one message per text frame."""

    def __init__(
        self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse[Literal[False]]
    ) -> None:
        self._http = http
        self._ws = ws

    @classmethod
    async def connect(cls, url: str, headers: Mapping[str, str] | None = None) -> WebSocketChannel:
        """Open the WebSocket, with ``headers`` (a bearer token) on the upgrade request."""
        http = aiohttp.ClientSession()
        try:
            # decode_text=False hands text frames over as bytes: orjson reads them without a UTF-8 copy.
            ws = await http.ws_connect(
                url,
                protocols=("mcp",),
                decode_text=False,
                autoping=True,
                headers=dict(headers) if headers else None,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await http.close()
            raise BenchError(f"the WebSocket upgrade was refused: {exc.status} {exc.message}") from exc
        except BaseException:
            await http.close()
            raise
        if ws.protocol != "mcp":
            await ws.close()
            await http.close()
            raise BenchError(f"the server did not accept the mcp subprotocol (got {ws.protocol!r})")
        return cls(http, ws)

    async def receive(self) -> list[bytes]:
        while True:
            frame = await self._ws.receive()
            if frame.type is aiohttp.WSMsgType.TEXT:
                data = frame.data
                return [data if isinstance(data, bytes) else data.encode()]
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return []
            # Binary frames, pings and pongs carry no MCP messages.

    async def send(self, messages: Sequence[bytes]) -> None:
        for message in messages:
            await self._ws.send_frame(message, aiohttp.WSMsgType.TEXT)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        await self._http.close()


# -- the client ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    mode: str
    concurrency: int
    seconds: float
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    latencies_ns: list[int] = field(default_factory=list)
    # CPU used during the measured window, as a share of one core, per process ("client", "gateway", ...).
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies_ns) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile; the list is sorted once, after the run, never on the hot path."""
        if not self.latencies_ns:
            return math.nan
        index = min(len(self.latencies_ns) - 1, max(0, math.ceil(q / 100 * len(self.latencies_ns)) - 1))
        return self.latencies_ns[index] / 1e6

    def fail(self, why: str, count: int = 1) -> None:
        self.errors += count
        if not self.first_error:
            self.first_error = why[:300]


class Client:
    """A closed-loop MCP client: keeps ``concurrency`` tools/call requests in flight on one channel."""

    def __init__(self, channel: Channel, tool: str) -> None:
        self.channel = channel
        self.tool = tool
        self._ids = itertools.count(1)
        self._early: list[bytes] = []

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One request outside the measured loop (handshake, listing); returns its result or raises."""
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        await self.channel.send([orjson.dumps(message)])
        while True:
            batch = await self.channel.receive()
            if not batch:
                raise BenchError(f"the connection closed while waiting for {method}")
            for raw in batch:
                reply = orjson.loads(raw)
                if reply.get("id") != request_id:
                    continue  # notifications (list_changed, logs) are not what we wait for
                if "error" in reply:
                    raise BenchError(f"{method} failed: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def handshake(self) -> None:
        await self.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
        )
        await self.channel.send([orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})])
        tools = await self.request("tools/list", {})
        names = [tool.get("name") for tool in tools.get("tools", [])]
        if self.tool not in names:
            raise BenchError(f"tool {self.tool!r} is not listed (tools: {names})")

    def _call(self, request_id: int) -> bytes:
        return call_message(self.tool, request_id)

    async def run(
        self, mode: str, concurrency: int, warmup: float, seconds: float, probe: CpuProbe
    ) -> RunResult:
        """Warm up, then measure for ``seconds``: every reply in the window is timed and checked."""
        result = RunResult(mode, concurrency, seconds)
        sent: dict[int, int] = {}
        clock = time.perf_counter_ns
        began = clock()
        window_start = began + int(warmup * 1e9)
        window_end = window_start + int(seconds * 1e9)
        cpu_before: dict[str, float] | None = None
        latencies = result.latencies_ns

        first = [next(self._ids) for _ in range(concurrency)]
        now = clock()
        for request_id in first:
            sent[request_id] = now
        await self.channel.send([self._call(i) for i in first])
        try:
            async with asyncio.timeout(warmup + seconds + DRAIN_SECONDS):
                while sent:
                    batch = await self.channel.receive()
                    now = clock()
                    if not batch:
                        result.fail("the connection closed", len(sent))
                        sent.clear()
                        break
                    if cpu_before is None and now >= window_start:
                        cpu_before = probe()
                    measuring = window_start <= now < window_end
                    again: list[int] = []
                    for raw in batch:
                        try:
                            reply = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            result.fail(f"a reply that is not JSON: {raw[:200]!r}")
                            continue
                        if not isinstance(reply, dict):
                            result.fail(f"a reply that is not a JSON object: {raw[:200]!r}")
                            continue
                        reply_id = reply.get("id")
                        started = sent.pop(reply_id, None) if isinstance(reply_id, int) else None
                        if started is None:
                            continue  # a notification, or not one of ours
                        why = check_call_reply(reply)
                        if why:
                            result.fail(why)
                        else:
                            result.ok += 1
                            if measuring:
                                latencies.append(now - started)
                        if now < window_end:
                            again.append(next(self._ids))
                    if again:
                        now = clock()
                        for request_id in again:
                            sent[request_id] = now
                        await self.channel.send([self._call(i) for i in again])
                    elif now >= window_end and cpu_before is not None and not result.cpu:
                        # The first reply after the window closes: no new calls go out from here on.
                        result.cpu = _cpu_share(cpu_before, probe(), (now - window_start) / 1e9)
        except TimeoutError:
            result.fail(f"{len(sent)} calls got no reply within {DRAIN_SECONDS:.0f} s of the end", len(sent))
        if cpu_before is not None and not result.cpu:
            result.cpu = _cpu_share(cpu_before, probe(), (clock() - window_start) / 1e9)
        latencies.sort()
        return result


def call_message(tool: str, request_id: int) -> bytes:
    """The tools/call request ``check_call_reply`` expects an answer to."""
    # The id is in the text too, so a reply routed to the wrong request is caught, not counted.
    params = {"name": tool, "arguments": {"text": f"portico bench {request_id}"}}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def check_call_reply(reply: dict[str, Any]) -> str:
    """Why a tools/call reply is wrong, or "" if it echoed its own request's text."""
    if "error" in reply:
        return f"error reply: {reply['error']}"
    result = reply.get("result")
    if not isinstance(result, dict) or result.get("isError") is not False:
        return f"tool failed: {result!r}"
    content = result.get("content")
    expected = f"portico bench {reply.get('id')}"
    if not (isinstance(content, list) and content and content[0].get("text") == expected):
        return f"wrong echo: {content!r}, expected {expected!r}"
    return ""


def _cpu_share(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, float]:
    return {name: (after[name] - before.get(name, 0.0)) / elapsed for name in after} if elapsed > 0 else {}


# -- one run of each mode -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    concurrency: int
    warmup: float
    seconds: float
    # The source tree the gateway runs from; ``python -m proxy`` finds the package in its cwd first.
    gateway_tree: Path = REPO


def backend_env() -> dict[str, str]:
    return {name: os.environ[name] for name in BACKEND_ENV if name in os.environ}


async def spawn_null_backend(
    children: Children, stderr: IO[bytes], *args: str, prefix: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    """Start ``python -m bench.null_backend args`` (after ``prefix``, e.g. ``taskset -c 1``), stdin and
    stdout piped, with the environment a gateway's backend would get."""
    return await children.spawn(
        *prefix,
        sys.executable,
        "-m",
        "bench.null_backend",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
        env=backend_env(),
    )


async def run_direct(children: Children, workdir: Path, settings: Settings) -> RunResult:
    with (workdir / "direct.stderr").open("ab") as stderr:
        backend = await spawn_null_backend(children, stderr)
    channel = StdioChannel(backend)
    try:
        client = Client(channel, "echo")
        async with asyncio.timeout(STARTUP_SECONDS):
            await client.handshake()

        probe = cpu_probe({"backend": [backend.pid]})
        return await client.run("direct", settings.concurrency, settings.warmup, settings.seconds, probe)
    finally:
        await channel.close()
        await children.stop(backend)


NULL_BACKEND_MODULE = (sys.executable, "-m", "bench.null_backend")


def write_config(workdir: Path, backend: Sequence[str] = NULL_BACKEND_MODULE) -> Path:
    """A gateway config with one stdio backend, the null backend unless ``backend`` (argv) says otherwise."""
    # JSON is valid YAML, and needs no YAML library here; cwd makes ``-m bench.null_backend`` importable.
    command, *args = backend
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "mcpServers": {"null": {"command": command, "args": args, "cwd": str(REPO)}},
        "plugins": [],
    }
    path = workdir / "portico.yaml"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


async def start_gateway(
    children: Children,
    workdir: Path,
    tree: Path = REPO,
    prefix: Sequence[str] = (),
    config: Path | None = None,
    ready_marker: bytes = b"null (1 tools)",
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``python -m proxy serve`` (after ``prefix``, e.g. ``taskset -c 0``); its process and ws URL.

    ``config`` defaults to ``write_config``'s one null backend; the start counts only once the ready line
    holds ``ready_marker`` (a backend that came up with its tools).
    """
    if config is None:
        config = write_config(workdir)
    log_path = workdir / "gateway.stderr"
    # stderr goes to a file: an unread pipe would fill up and stall the gateway mid-run.
    with log_path.open("ab") as stderr:
        gateway = await children.spawn(
            *prefix,
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            "--log-level",
            "warning",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=tree,
        )
    assert gateway.stdout is not None
    try:
        async with asyncio.timeout(STARTUP_SECONDS):
            line = await gateway.stdout.readline()
    except TimeoutError:
        line = b""
    found = _READY.search(line)
    if found is None or ready_marker not in line:
        await children.stop(gateway)
        log = log_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"the gateway did not come up: {line!r}\n{log}")
    return gateway, found.group(1).decode()


async def run_gateway(children: Children, workdir: Path, settings: Settings) -> RunResult:
    gateway, url = await start_gateway(children, workdir, settings.gateway_tree)
    channel: WebSocketChannel | None = None
    try:
        backends = [pid for pid, _ in descendants(gateway.pid)]
        async with asyncio.timeout(STARTUP_SECONDS):
            channel = await WebSocketChannel.connect(url)
            client = Client(channel, "null_echo")
            await client.handshake()

        probe = cpu_probe({"gateway": [gateway.pid], "backend": backends})
        return await client.run("gateway", settings.concurrency, settings.warmup, settings.seconds, probe)
    finally:
        if channel is not None:
            await channel.close()
        await children.stop(gateway)


# -- passes, summary and the command line ----------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    rate: float
    p50: float
    p99: float


def summarize(runs: Sequence[RunResult]) -> Summary:
    """Medians over the repetitions, each metric on its own."""
    return Summary(
        statistics.median(r.rate for r in runs),
        statistics.median(r.percentile_ms(50) for r in runs),
        statistics.median(r.percentile_ms(99) for r in runs),
    )


def describe_run(index: int, run: RunResult) -> str:
    shares = dict(run.cpu)
    machine = shares.pop(MACHINE, 0.0)
    cpu = " ".join(f"{name} {share:.2f}" for name, share in shares.items())
    if shares:
        # Busy time nobody here used: other programs, plus interrupts and the kernel's network work.
        cpu += f" | rest of machine {max(0.0, machine - sum(shares.values())):.2f}"
    line = (
        f"  run {index} {run.mode:<7} {run.rate:>9,.0f} calls/s  p50 {run.percentile_ms(50):6.3f} ms  "
        f"p99 {run.percentile_ms(99):6.3f} ms  max {run.percentile_ms(100):7.3f} ms  cores: {cpu}"
    )
    if run.errors:
        line += f"  ERRORS {run.errors} (first: {run.first_error})"
    return line


def table(direct: Summary, gateway: Summary) -> str:
    rows = [
        f"  {'':<9}{'calls/s':>11}{'p50 ms':>10}{'p99 ms':>10}",
        f"  {'direct':<9}{direct.rate:>11,.0f}{direct.p50:>10.3f}{direct.p99:>10.3f}",
        f"  {'gateway':<9}{gateway.rate:>11,.0f}{gateway.p50:>10.3f}{gateway.p99:>10.3f}",
        f"  gateway/direct throughput {gateway.rate / direct.rate:.2f}x; "
        f"added latency p50 {gateway.p50 - direct.p50:+.3f} ms, p99 {gateway.p99 - direct.p99:+.3f} ms",
    ]
    return "\n".join(rows)


async def run_pass(children: Children, workdir: Path, settings: Settings, repeats: int) -> list[RunResult]:
    print(
        f"\npass: concurrency {settings.concurrency}, {repeats} x (direct, gateway), "
        f"{settings.warmup:g} s warm-up + {settings.seconds:g} s each",
        flush=True,
    )
    runs: list[RunResult] = []
    for index in range(1, repeats + 1):
        # Alternating modes spreads slow drifts (thermal, other load) evenly over both.
        for runner in (run_direct, run_gateway):
            run = await runner(children, workdir, settings)
            runs.append(run)
            print(describe_run(index, run), flush=True)
    direct = summarize([r for r in runs if r.mode == "direct"])
    gateway = summarize([r for r in runs if r.mode == "gateway"])
    print(f"medians over {repeats} run(s) per mode:\n{table(direct, gateway)}", flush=True)
    return runs


def machine() -> Iterator[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    yield f"machine: {os.cpu_count()} CPUs ({usable} usable), {model}, {platform.platform()}"
    # Other work on the box skews every figure below; the load average says whether there was any.
    yield "load average before the runs: " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("uvloop", "aiohttp", "orjson")
    )
    yield f"python {platform.python_version()} ({platform.python_implementation()}), {versions}"


def describe_tree(tree: Path) -> str:
    """The tree and, when it is a git checkout, its commit and whether proxy/ has local changes."""
    git = shutil.which("git")
    if git is None:
        return str(tree)
    try:
        commit = subprocess.run(
            [git, "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(tree), "status", "--porcelain", "--", "proxy"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(tree)
    if not commit:
        return f"{tree} (not a git checkout)"
    return f"{tree} at {commit}" + (" + uncommitted changes in proxy/" if dirty else "")


async def main_async(args: argparse.Namespace) -> int:
    for line in machine():
        print(line)
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"gateway: {describe_tree(args.gateway_tree)}", flush=True)
    runs: list[RunResult] = []
    started = time.monotonic()
    try:
        async with children_and_workdir("portico-bench-") as (children, workdir):
            if args.smoke:
                smoke = Settings(args.concurrency, 0.25, 1.0, args.gateway_tree)
                runs += await run_pass(children, workdir, smoke, 1)
            else:
                main_pass = Settings(args.concurrency, args.warmup, args.seconds, args.gateway_tree)
                runs += await run_pass(children, workdir, main_pass, args.repeats)
                if args.concurrency != 1:
                    serial = Settings(1, args.warmup, args.seconds, args.gateway_tree)
                    runs += await run_pass(children, workdir, serial, args.repeats)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    errors = sum(r.errors for r in runs)
    ok = sum(r.ok for r in runs)
    print(f"\n{ok:,} calls succeeded, {errors} failed, {time.monotonic() - started:.1f} s in all")
    if errors or not all(r.ok for r in runs):
        print("bench: some calls failed (see ERRORS above)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core_ws", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests kept in flight (default 32)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per mode and pass, interleaved (default 2)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument(
        "--smoke", action="store_true", help="one ~1 s run per mode; fails only on failed calls"
    )
    parser.add_argument(
        "--gateway-tree",
        type=Path,
        default=REPO,
        help="run the gateway from this source tree, e.g. a `git worktree` of another commit "
        "(default: this repository)",
    )
    args = parser.parse_args(argv)
    args.gateway_tree = args.gateway_tree.resolve()
    if not (args.gateway_tree / "proxy" / "__main__.py").is_file():
        parser.error(f"--gateway-tree {args.gateway_tree} has no proxy/__main__.py")
    if args.seconds <= 0 or args.concurrency < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--seconds must be > 0, --concurrency and --repeats >= 1, --warmup >= 0")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


def run_until_interrupted(main: Coroutine[Any, Any, int]) -> int:
    """Run a bench's ``main_async`` on uvloop; Ctrl-C ends it with status 1 and one line, no traceback."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
