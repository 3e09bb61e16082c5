"""Two scale scenarios: many idle WebSocket sessions (memory per session) and one big aggregated tools/list.

    python -m bench.scale [--sessions N] [--backends B] [--tools T] [--lists K] [--hold S] [--smoke]

IDLE SESSIONS. Opens N WebSocket sessions (subprotocol ``mcp``, ``initialize`` then
``notifications/initialized`` on each, in batches so the listener's accept queue is never flooded) and
keeps them open and idle for ``--hold`` seconds (past one of the gateway's 20 s heartbeats). The server's
VmRSS (/proc/<pid>/status) is read before, and after that once it has settled; the difference over N is
its memory per session (its peak, VmHWM, is printed too). A sample of sessions must then still answer
``ping`` and none may have been closed. DIRECT runs this against ``bench.null_backend --transport ws``;
GATEWAY against ``python -m proxy serve`` (empty chain, one stdio null backend), where only the gateway
process is measured. This client's own RSS is printed too, to show the generator was not what ran out.
RLIMIT_NOFILE is raised first for this process, which its children inherit.

AGGREGATED TOOLS/LIST. GATEWAY: Portico with B stdio null backends of ``--tools T`` each (B*T tools). After
a few unmeasured lists, one client times K lists in a row, each one following ``nextCursor`` to the end;
every list must hold B*T distinct tools. DIRECT: the same number of tools from ONE
``bench.null_backend --transport ws --tools B*T`` (which does not paginate), same client, same run.

``--smoke`` (200 sessions; 5 backends x 10 tools) fails only when something is wrong (a session that does
not answer or was closed, a wrong tool count); it asserts nothing about size or speed. Load goes to
127.0.0.1 only, every phase is bounded in time, and every child is killed on every way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from bench.core_ws import (
    CLIENT_INFO,
    PROTOCOL_VERSION,
    REPO,
    BenchError,
    Children,
    RunResult,
    children_and_workdir,
    describe_tree,
    machine,
    run_until_interrupted,
    start_gateway,
)
from bench.open_loop import start_null_backend

# Sessions whose handshakes are in flight at once: well under the listener's backlog (aiohttp's 128).
OPEN_BATCH = 100
# Bounds, so that a stuck server ends the run instead of hanging it.
BATCH_SECONDS = 60.0
REQUEST_SECONDS = 30.0
IDLE_MODE_SECONDS = 600.0
LIST_MODE_SECONDS = 300.0
# RSS counts as settled when SETTLE_READINGS readings SETTLE_INTERVAL apart stay within SETTLE_SPREAD.
SETTLE_INTERVAL = 0.5
SETTLE_READINGS = 5
SETTLE_SPREAD = 0.005
SETTLE_MAX_SECONDS = 30.0
PING_SAMPLE = 20
WARM_LISTS = 5
# File descriptors beyond the sessions: backends' pipes, the listener, logs, the interpreter's own.
SPARE_FILES = 4096
SMOKE: dict[str, Any] = {"sessions": 200, "backends": 5, "tools": 10, "lists": 20, "hold": 0.0}


# -- memory and limits --------------------------------------------------------------------------------------


def vm_rss_kib(pid: int | Literal["self"], field: str = "VmRSS") -> int:
    """Resident memory of a process in KiB (``VmRSS``, or ``VmHWM`` for its peak), or 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


async def settled_rss_kib(pid: int) -> tuple[int, float]:
    """VmRSS once it stops moving (or after SETTLE_MAX_SECONDS), and how long that took."""
    started = time.monotonic()
    readings: list[int] = []
    while True:
        readings.append(vm_rss_kib(pid))
        recent = readings[-SETTLE_READINGS:]
        waited = time.monotonic() - started
        if len(recent) == SETTLE_READINGS and max(recent) - min(recent) <= max(recent) * SETTLE_SPREAD:
            return recent[-1], waited
        if waited >= SETTLE_MAX_SECONDS:
            return recent[-1], waited
        await asyncio.sleep(SETTLE_INTERVAL)


def raise_open_files(needed: int) -> str:
    """Lift RLIMIT_NOFILE to ``needed`` (children started afterwards inherit it); what it ended at."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"open files: {soft:,} (enough)"
    if hard < needed:
        # Only a privileged process may raise the hard limit; otherwise the soft limit stops at it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return f"open files: raised to {needed:,}"
    target = min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    note = "" if target >= needed else f" (short of the {needed:,} wanted: sessions will fail to open)"
    return f"open files: raised to {target:,}{note}"


# -- one MCP session over WebSocket ------------------------------------------------------------------------


class McpSession:
    """One WebSocket MCP session with a reader task of its own.

    The task matters for idle sessions: aiohttp answers the server's heartbeat pings only inside
    ``receive()``, so a session nobody reads from would be dropped by the gateway as dead.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> None:
        self.ws = ws
        self.closed_by_peer = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str) -> McpSession:
        ws = await http.ws_connect(url, protocols=("mcp",), decode_text=False, autoping=True)
        if ws.protocol != "mcp":
            await ws.close()
            raise BenchError(f"the server did not accept the mcp subprotocol (got {ws.protocol!r})")
        session = cls(ws)
        try:
            await session.request(
                "initialize",
                {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
            )
            message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await ws.send_frame(orjson.dumps(message), aiohttp.WSMsgType.TEXT)
        except BaseException:
            await session.abandon()
            raise
        return session

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.ws.receive()
                if frame.type is aiohttp.WSMsgType.TEXT:
                    reply = orjson.loads(frame.data)
                    # Server-initiated messages (notifications, requests) carry no id of ours: ignored.
                    reply_id = reply.get("id") if isinstance(reply, dict) else None
                    waiter = self._waiting.pop(reply_id, None) if isinstance(reply_id, int) else None
                    if waiter is not None and not waiter.done():
                        waiter.set_result(reply)
                elif frame.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    self.closed_by_peer = True
                    return
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(BenchError("the session closed before its reply came"))
            self._waiting.clear()

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One request; its result, or BenchError for an error reply, a closed session or no reply in time."""
        if self._reader.done():
            raise BenchError(f"{method}: the session is closed")
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                await self.ws.send_frame(orjson.dumps(message), aiohttp.WSMsgType.TEXT)
                reply = await waiter
        except TimeoutError:
            raise BenchError(f"{method}: no reply within {REQUEST_SECONDS:.0f} s") from None
        finally:
            self._waiting.pop(request_id, None)
        if "error" in reply:
            raise BenchError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def abandon(self) -> None:
        """Stop reading; the socket itself goes when the shared ClientSession closes (no close handshake:
        saying goodbye 10,000 times is not what is measured)."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def client_session() -> aiohttp.ClientSession:
    # One connector for every session, with no cap: its default (100 connections) would queue the rest.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


# -- idle sessions ------------------------------------------------------------------------------------------


@dataclass
class IdleResult:
    mode: str
    wanted: int
    opened: int = 0
    open_failures: int = 0
    open_seconds: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    rss_peak_kib: int = 0
    settle_seconds: float = 0.0
    pings_ok: int = 0
    pings_sent: int = 0
    closed_early: int = 0
    client_rss_kib: int = 0
    first_error: str = ""

    @property
    def kib_per_session(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.opened if self.opened else 0.0

    @property
    def failed(self) -> bool:
        return (
            self.opened < self.wanted
            or self.closed_early > 0
            or self.pings_ok < self.pings_sent
            or self.pings_sent == 0
        )

    def note(self, why: object) -> None:
        if not self.first_error:
            self.first_error = str(why)[:300]


async def open_sessions(
    http: aiohttp.ClientSession, url: str, count: int, result: IdleResult
) -> list[McpSession]:
    sessions: list[McpSession] = []
    started = time.monotonic()
    for first in range(0, count, OPEN_BATCH):
        size = min(OPEN_BATCH, count - first)
        try:
            async with asyncio.timeout(BATCH_SECONDS):
                outcomes = await asyncio.gather(
                    *(McpSession.open(http, url) for _ in range(size)), return_exceptions=True
                )
        except TimeoutError:
            result.open_failures += size
            result.note(f"a batch of {size} sessions did not open within {BATCH_SECONDS:.0f} s")
            break
        for outcome in outcomes:
            if isinstance(outcome, McpSession):
                sessions.append(outcome)
            elif isinstance(outcome, Exception):
                result.open_failures += 1
                result.note(f"opening a session: {outcome!r}")
            else:
                raise outcome
        if result.open_failures:
            break  # out of ports or files, or a server refusing: more of the same tells nothing new
    result.opened = len(sessions)
    result.open_seconds = time.monotonic() - started
    return sessions


async def ping_sample(sessions: Sequence[McpSession], result: IdleResult) -> None:
    """Ping sessions spread evenly over the list (the first, the last and ones between)."""
    if not sessions:
        return
    step = max(1, len(sessions) // PING_SAMPLE)
    sample = list(sessions[::step])[:PING_SAMPLE]
    if sessions[-1] not in sample:
        sample.append(sessions[-1])
    outcomes = await asyncio.gather(*(s.request("ping", {}) for s in sample), return_exceptions=True)
    result.pings_sent = len(outcomes)
    for outcome in outcomes:
        if isinstance(outcome, dict):
            result.pings_ok += 1
        else:
            result.note(f"ping: {outcome!r}")


async def measure_idle(mode: str, server_pid: int, url: str, count: int, hold: float) -> IdleResult:
    result = IdleResult(mode, count)
    async with client_session() as http:
        # One session opened and closed first, so code paths run once (lazy imports, caches, the
        # session machinery's first allocations) are not charged to the N measured ones.
        warm = await McpSession.open(http, url)
        await warm.request("ping", {})
        await warm.ws.close()
        await warm.abandon()
        result.rss_before_kib, _ = await settled_rss_kib(server_pid)
        sessions = await open_sessions(http, url, count, result)
        try:
            # Idle for a while first: the gateway pings every session each heartbeat (20 s by default),
            # and what that costs belongs in an idle session's figure.
            await asyncio.sleep(hold)
            result.rss_after_kib, result.settle_seconds = await settled_rss_kib(server_pid)
            result.rss_peak_kib = vm_rss_kib(server_pid, "VmHWM")
            result.client_rss_kib = vm_rss_kib("self")
            await ping_sample(sessions, result)
            result.closed_early = sum(s.closed_by_peer for s in sessions)
        finally:
            await asyncio.gather(*(s.abandon() for s in sessions))
    return result


async def idle_direct(children: Children, workdir: Path, count: int, hold: float) -> IdleResult:
    backend, url = await start_null_backend(children, workdir, "ws")
    try:
        async with asyncio.timeout(IDLE_MODE_SECONDS):
            return await measure_idle("direct", backend.pid, url, count, hold)
    finally:
        await children.stop(backend)


async def idle_gateway(children: Children, workdir: Path, count: int, hold: float) -> IdleResult:
    gateway, url = await start_gateway(children, workdir)
    try:
        async with asyncio.timeout(IDLE_MODE_SECONDS):
            return await measure_idle("gateway", gateway.pid, url, count, hold)
    finally:
        await children.stop(gateway)


# -- the aggregated tools/list -----------------------------------------------------------------------------


@dataclass
class ListResult:
    mode: str
    servers: int
    expected_tools: int
    timing: RunResult
    tools_seen: list[int] = field(default_factory=list)
    pages: int = 0

    @property
    def failed(self) -> bool:
        return (
            self.timing.errors > 0
            or not self.tools_seen
            or any(n != self.expected_tools for n in self.tools_seen)
        )


async def list_all_tools(session: McpSession) -> tuple[int, int]:
    """One whole tools/list, every page; how many distinct tools it held and how many pages it took."""
    names: set[str] = set()
    listed = 0
    pages = 0
    params: dict[str, Any] = {}
    while True:
        page = await session.request("tools/list", params)
        pages += 1
        tools = page.get("tools", [])
        listed += len(tools)
        names.update(tool["name"] for tool in tools)
        cursor = page.get("nextCursor")
        if cursor is None:
            break
        params = {"cursor": cursor}
    if len(names) != listed:
        raise BenchError(f"tools/list repeated names: {listed} listed, {len(names)} distinct")
    return listed, pages


async def measure_lists(result: ListResult, url: str, lists: int) -> None:
    timing = result.timing
    async with client_session() as http:
        session = await McpSession.open(http, url)
        try:
            for _ in range(WARM_LISTS):
                await list_all_tools(session)
            clock = time.perf_counter_ns
            began = clock()
            for _ in range(lists):
                started = clock()
                try:
                    seen, result.pages = await list_all_tools(session)
                except BenchError as exc:
                    timing.fail(str(exc))
                    continue
                timing.latencies_ns.append(clock() - started)
                result.tools_seen.append(seen)
                if seen == result.expected_tools:
                    timing.ok += 1
                else:
                    timing.fail(f"a list held {seen} tools, not {result.expected_tools}")
            timing.seconds = (clock() - began) / 1e9
            timing.latencies_ns.sort()
        finally:
            await session.abandon()


def aggregate_config(workdir: Path, backends: int, tools: int) -> Path:
    """B stdio null backends of T tools each; JSON is YAML too. cwd makes ``-m bench.null_backend`` work."""
    servers = {
        f"b{index:02d}": {
            "command": sys.executable,
            "args": ["-m", "bench.null_backend", "--tools", str(tools)],
            "cwd": str(REPO),
        }
        for index in range(backends)
    }
    config = {"listen": {"host": "127.0.0.1", "port": 0}, "mcpServers": servers, "plugins": []}
    path = workdir / "portico-aggregate.yaml"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


async def list_direct(children: Children, workdir: Path, backends: int, tools: int, lists: int) -> ListResult:
    total = backends * tools
    backend, url = await start_null_backend(children, workdir, "ws", extra_args=("--tools", str(total)))
    result = ListResult("direct", 1, total, RunResult("direct", 1, 0.0))
    return await _lists_then_stop(children, backend, result, url, lists)


async def list_gateway(
    children: Children, workdir: Path, backends: int, tools: int, lists: int
) -> ListResult:
    config = aggregate_config(workdir, backends, tools)
    # The ready line names every live backend; the last one listed with its tools means all were started.
    marker = f"b{backends - 1:02d} ({tools} tools)".encode()
    gateway, url = await start_gateway(children, workdir, config=config, ready_marker=marker)
    result = ListResult("gateway", backends, backends * tools, RunResult("gateway", 1, 0.0))
    return await _lists_then_stop(children, gateway, result, url, lists)


async def _lists_then_stop(
    children: Children, server: asyncio.subprocess.Process, result: ListResult, url: str, lists: int
) -> ListResult:
    """Time ``lists`` whole lists at ``url`` into ``result`` (bounded); stop ``server`` come what may."""
    try:
        async with asyncio.timeout(LIST_MODE_SECONDS):
            await measure_lists(result, url, lists)
    finally:
        await children.stop(server)
    return result


# -- tables and the command line ----------------------------------------------------------------------------


def idle_table(rows: Sequence[IdleResult]) -> str:
    lines = [
        f"  {'mode':<9}{'sessions':>9}{'open s':>8}{'server RSS MiB before':>23}{'after':>8}"
        f"{'KiB/session':>13}{'pings ok':>10}{'closed':>8}{'client RSS MiB':>16}"
    ]
    for r in rows:
        lines.append(
            f"  {r.mode:<9}{r.opened:>9,}{r.open_seconds:>8.1f}{r.rss_before_kib / 1024:>23.1f}"
            f"{r.rss_after_kib / 1024:>8.1f}{r.kib_per_session:>13.1f}{f'{r.pings_ok}/{r.pings_sent}':>10}"
            f"{r.closed_early:>8}{r.client_rss_kib / 1024:>16.1f}"
        )
    return "\n".join(lines)


def list_table(rows: Sequence[ListResult]) -> str:
    lines = [
        f"  {'mode':<9}{'servers':>8}{'tools seen':>11}{'pages':>7}{'lists':>7}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
    ]
    for r in rows:
        t = r.timing
        seen = ",".join(f"{n:,}" for n in sorted(set(r.tools_seen))) or "-"
        lines.append(
            f"  {r.mode:<9}{r.servers:>8}{seen:>11}{r.pages:>7}{len(t.latencies_ns):>7}"
            f"{t.percentile_ms(50):>9.3f}{t.percentile_ms(99):>9.3f}{t.percentile_ms(100):>9.3f}{t.errors:>8}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Options:
    sessions: int
    backends: int
    tools: int
    lists: int
    hold: float


async def main_async(options: Options) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the run the way Ctrl-C does: through children_and_workdir, which stops every child.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    for line in machine():
        print(line)
    print(raise_open_files(options.sessions + SPARE_FILES))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"gateway: {describe_tree(REPO)}", flush=True)
    idle: list[IdleResult] = []
    lists: list[ListResult] = []
    started = time.monotonic()
    try:
        async with children_and_workdir("portico-scale-") as (children, workdir):
            print(
                f"\nidle WebSocket sessions: {options.sessions:,} per mode, opened {OPEN_BATCH} at a time, "
                f"then idle {options.hold:g} s before RSS is read"
            )
            for idle_runner in (idle_direct, idle_gateway):
                row = await idle_runner(children, workdir, options.sessions, options.hold)
                idle.append(row)
                print(
                    f"  {row.mode}: {row.opened:,} open in {row.open_seconds:.1f} s, RSS settled "
                    f"{row.settle_seconds:.1f} s after the idle time, "
                    f"peak (VmHWM) {row.rss_peak_kib / 1024:.1f} MiB"
                    + (f"; FIRST ERROR: {row.first_error}" if row.first_error else ""),
                    flush=True,
                )
            print(idle_table(idle), flush=True)
            print(
                f"\naggregated tools/list: {options.backends} backends x {options.tools} tools, "
                f"{WARM_LISTS} warm-up lists then {options.lists} timed "
                "(each following nextCursor to the end)"
            )
            for list_runner in (list_direct, list_gateway):
                result = await list_runner(children, workdir, options.backends, options.tools, options.lists)
                lists.append(result)
                if result.timing.first_error:
                    print(f"  {result.mode}: FIRST ERROR: {result.timing.first_error}", flush=True)
            print(list_table(lists), flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(f"\n{time.monotonic() - started:.1f} s in all")
    failed = [r.mode for r in idle if r.failed] + [f"tools/list {r.mode}" for r in lists if r.failed]
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions per mode (default 10000)")
    parser.add_argument("--backends", type=int, default=50, help="backends behind the gateway (default 50)")
    parser.add_argument("--tools", type=int, default=40, help="tools per backend (default 40)")
    parser.add_argument("--lists", type=int, default=200, help="timed whole lists per mode (default 200)")
    parser.add_argument(
        "--hold",
        type=float,
        default=25.0,
        help="seconds the sessions stay idle before RSS is read (default 25: past one 20 s heartbeat)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE['sessions']} sessions, {SMOKE['backends']} x {SMOKE['tools']} tools; "
        "fails only on errors",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        options = Options(**SMOKE)
    else:
        options = Options(args.sessions, args.backends, args.tools, args.lists, args.hold)
    if min(options.sessions, options.backends, options.tools, options.lists) < 1 or options.hold < 0:
        parser.error("--sessions, --backends, --tools and --lists must be >= 1, --hold >= 0")
    return run_until_interrupted(main_async(options))


if __name__ == "__main__":
    sys.exit(main())
