"""Peer MCP gateways side by side with Portico: same stdio backend, same open-loop load, one run.

    python -m bench.peers [--rate R | --rates R1 R2 ...] [--seconds S] [--warmup W] [--connections N]
                          [--only NAME ...] [--smoke]

Each peer (installed by ``bench/peers_setup.sh`` into bench/.peers/) is started in front of the stdio
``bench/null_backend.py`` and serves Streamable HTTP on 127.0.0.1; ``bench.loadgen`` drives it at each
offered rate with fresh processes per run, as ``bench.open_loop`` drives Portico. Portico (``python -m
proxy serve``, empty chain) then runs the same way over Streamable HTTP and over WebSocket. With
``taskset`` the system under test starts on CPU 0 and its null backends are moved to CPU 1, where the
generator runs (``open_loop.Placement``). Over HTTP every system gets the same client
(``PeerHttpConnection``: loadgen's, with a handshake that also takes a peer minting no session). The tool's
name is whatever the peer lists (tools/list), since some peers rename tools. CPU-µs/call is the
user+system time of the whole process tree *except* the null backends (the proxy's own cost), over the
measured window, divided by the calls offered in it; the table shows it only for runs that kept up.

A peer that is not installed, does not start, or fails its handshake is reported with the reason, never
skipped. Rates run from low to high, and a system that answers less than half of a rate is not offered the
higher ones (it says so): past that point runs only pile up timeouts. Results are printed as a table and
written to bench/out/peers.json. The exit status is 1 only if a run could not be done (a system that falls
behind or answers wrongly is a result, shown in the table); ``--smoke`` runs 1 s at a low rate and also
fails if any call failed. Every child and everything it started is killed on every exit path
(``Children.stop`` walks the process tree), on SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import itertools
import math
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import loadgen
from bench.core_ws import (
    REPO,
    STARTUP_SECONDS,
    BenchError,
    Children,
    backend_env,
    children_and_workdir,
    cpu_seconds,
    descendants,
    describe_tree,
    machine,
    run_until_interrupted,
    start_gateway,
    write_config,
)
from bench.loadgen import LoadSettings
from bench.open_loop import GATEWAY_CPU, Placement

PEERS_DIR = REPO / "bench" / ".peers"
OUT = REPO / "bench" / "out" / "peers.json"
# Run by path, so it needs no cwd; the project's interpreter has orjson.
NULL_BACKEND = (sys.executable, str(REPO / "bench" / "null_backend.py"))
PEER_TRANSPORT = "peer-http"
SMOKE_RATE = 50.0
_POLL_SECONDS = 0.1


# -- the peers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A system under test that is up: its top processes, where to load it, what every request carries."""

    processes: tuple[asyncio.subprocess.Process, ...]
    url: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


# Starts the system under test, pinned by the placement.
Starter = Callable[[Children, Path, Placement], Awaitable[Started]]


@dataclass(frozen=True)
class Peer:
    name: str
    # What must exist for the peer to count as installed.
    entry: Path
    version: Callable[[], str]
    start: Starter
    note: str = ""


def _python_version(venv: str, distribution: str) -> Callable[[], str]:
    def version() -> str:
        for site in (PEERS_DIR / venv / "lib").glob("python*/site-packages"):
            for found in importlib.metadata.distributions(name=distribution, path=[str(site)]):
                return f"{distribution} {found.version}"
        return f"{distribution} (not installed)"

    return version


def _npm_version() -> str:
    package = PEERS_DIR / "node" / "node_modules" / "supergateway" / "package.json"
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        return f"supergateway {orjson.loads(package.read_bytes())['version']}"
    return "supergateway (not installed)"


def _mcp_proxy(port: int, workdir: Path) -> list[str]:
    binary = str(PEERS_DIR / "mcp-proxy" / "bin" / "mcp-proxy")
    return [binary, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", "--", *NULL_BACKEND]


def _fastmcp(port: int, workdir: Path) -> list[str]:
    # FastMCP proxies the servers of an MCPConfig file; --skip-env keeps it from reaching for uv.
    config = workdir / "fastmcp-mcp.json"
    server = {"command": NULL_BACKEND[0], "args": list(NULL_BACKEND[1:])}
    config.write_bytes(orjson.dumps({"mcpServers": {"null": server}}))
    binary = str(PEERS_DIR / "fastmcp" / "bin" / "fastmcp")
    return [
        *(binary, "run", str(config), "--transport", "http", "--host", "127.0.0.1", "--port", str(port)),
        *("--no-banner", "--log-level", "WARNING", "--skip-env"),
    ]


def _contextforge_translate(port: int, workdir: Path) -> list[str]:
    python = str(PEERS_DIR / "contextforge" / "bin" / "python")
    return [
        *(python, "-m", "mcpgateway.translate", "--stdio", shlex.join(NULL_BACKEND)),
        *("--expose-streamable-http", "--host", "127.0.0.1", "--port", str(port), "--logLevel", "warning"),
    ]


def _contextforge_env() -> dict[str, str]:
    # Its settings refuse to load with the placeholder secrets; throwaway ones for this run only.
    return {"JWT_SECRET_KEY": secrets.token_hex(32), "AUTH_ENCRYPTION_SECRET": secrets.token_hex(32)}


def _supergateway(port: int, workdir: Path) -> list[str]:
    # --stateful: the default stateless mode starts a new backend for every request.
    binary = str(PEERS_DIR / "node" / "node_modules" / ".bin" / "supergateway")
    return [
        *(binary, "--stdio", shlex.join(NULL_BACKEND), "--outputTransport", "streamableHttp", "--stateful"),
        *("--port", str(port), "--logLevel", "none"),
    ]


# -- the client side ----------------------------------------------------------------------------------------


class PeerHttpConnection(loadgen.HttpConnection):
    """loadgen's Streamable HTTP connection, with a handshake that also takes a peer minting no session.

    ContextForge's translate bridge answers ``initialize`` without ``Mcp-Session-Id`` and forwards each
    POST to the backend as is; every other peer, and Portico, mint one. Calls go out exactly as loadgen's.
    """

    session_required = False
    notification_statuses = (200, 202)
    # Handshake ids unique across connections (and below the calls' 1, 2, ...): ContextForge's bridge
    # matches replies to POSTs by id alone, so two connections' concurrent "id": 0 could swap replies.
    _handshake_ids = itertools.count(-1, -1)

    def handshake_id(self) -> int:
        return next(self._handshake_ids)


loadgen.CONNECTIONS[PEER_TRANSPORT] = PeerHttpConnection


async def discover_echo_tool(url: str, headers: dict[str, str]) -> str:
    """The name the peer lists the backend's ``echo`` tool under (some add a prefix)."""
    spec = loadgen.LoadSpec(url, PEER_TRANSPORT, "", 1.0, 1.0, headers=headers)
    connection = PeerHttpConnection(spec, loadgen.Recorder(spec))
    try:
        async with asyncio.timeout(STARTUP_SECONDS):
            await connection.open()
    finally:
        await connection.close()
    matches = [name for name in connection.tools if name == "echo" or name.endswith(("_echo", "-echo"))]
    if len(matches) != 1:
        raise BenchError(f"no single echo tool among {list(connection.tools)}")
    return matches[0]


# -- the process tree's CPU ------------------------------------------------------------------------------


def _backend_kind(pid: int) -> str:
    """What a process is: "backend" (a null backend), "wrapper" (a shell running one, as supergateway
    starts them) or "" (part of the proxy, even when its own arguments name the backend's command)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    program = Path(argv[0].decode(errors="replace")).name
    runs_backend = len(argv) > 1 and argv[1].endswith(b"null_backend.py")
    if program.startswith("python") and runs_backend:
        return "backend"
    if program in ("sh", "bash", "dash") and any(b"null_backend.py" in arg for arg in argv):
        return "wrapper"
    return ""


class TreeCpu:
    """CPU time of a process tree minus its null backends, between window start and end.

    The tree is walked every 0.1 s until the window opens (peers start backends lazily, supergateway one
    per session), so opening the window only reads a few /proc files; new backends go to the load CPU.
    """

    def __init__(self, roots: Sequence[int], placement: Placement) -> None:
        self.roots = tuple(roots)
        self.placement = placement
        self.proxy: set[int] = set(roots)
        self.backends: set[int] = set()
        self.real_backends = 0
        self.before: dict[int, float] = {}
        self.after: dict[int, float] = {}
        self.opened = False

    def refresh(self) -> None:
        for pid, _ in (found for root in self.roots for found in descendants(root)):
            if pid in self.proxy or pid in self.backends:
                continue
            kind = _backend_kind(pid)
            if kind:
                # The backend side (and a shell wrapping it) is the same for every system: not counted.
                self.backends.add(pid)
                self.real_backends += kind == "backend"
                self.placement.move_to_load_cpu([pid])
            else:
                self.proxy.add(pid)

    async def track(self) -> None:
        while not self.opened:
            self.refresh()
            await asyncio.sleep(_POLL_SECONDS)

    def window_start(self) -> None:
        self.opened = True
        self.before = {pid: cpu_seconds(pid) for pid in self.proxy}

    def window_end(self) -> None:
        self.refresh()
        self.after = {pid: cpu_seconds(pid) for pid in self.proxy}

    def used_seconds(self) -> float:
        # A process that started inside the window counts from 0; one gone by the end reads 0 (lost).
        return sum(max(0.0, after - self.before.get(pid, 0.0)) for pid, after in self.after.items())


# -- runs ---------------------------------------------------------------------------------------------------


@dataclass
class PeerRow:
    system: str
    transport: str
    version: str
    rate: float
    result: loadgen.LoadResult | None = None
    cpu_us_per_call: float | None = None
    processes: str = ""
    failure: str = ""
    note: str = ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_listening(process: asyncio.subprocess.Process, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.returncode is not None:
            break
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    why = f"exited with {process.returncode}" if process.returncode is not None else "never listened"
    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-1500:].strip()
    raise BenchError(f"{why} on port {port}: {tail}")


async def measure(
    children: Children, workdir: Path, row: PeerRow, start: Starter, transport: str, options: LoadSettings
) -> PeerRow:
    """Start the system, find its echo tool, load it, and stop it (and everything it started)."""
    placement = Placement()
    started: Started | None = None
    tracker: asyncio.Task[None] | None = None
    try:
        started = await start(children, workdir, placement)
        url = started.url
        tool = "null_echo" if transport == "ws" else await discover_echo_tool(url, started.headers)
        tree = TreeCpu([process.pid for process in started.processes], placement)
        tracker = asyncio.create_task(tree.track())
        row.result = await loadgen.run(
            options.spec(url, transport, tool, headers=started.headers),
            on_window_start=tree.window_start,
            on_window_end=tree.window_end,
        )
        if row.result.measured_calls and tree.after:
            row.cpu_us_per_call = tree.used_seconds() * 1e6 / row.result.measured_calls
        row.processes = f"{len(tree.proxy)} proxy + {tree.real_backends} backend"
    except (BenchError, aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
        row.failure = f"{type(exc).__name__}: {exc}"[:600]
    finally:
        if tracker is not None:
            tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tracker
        if started is not None:
            for process in started.processes:
                await children.stop(process)
    return row


async def _serve(
    children: Children,
    placement: Placement,
    workdir: Path,
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
) -> asyncio.subprocess.Process:
    """Start one server process on the system-under-test CPU, its output to ``workdir/name.log``, and wait
    until its port (the one in ``argv`` after ``--port``) accepts."""
    with (workdir / f"{name}.log").open("ab") as output:
        process = await children.spawn(
            *placement.prefix(GATEWAY_CPU),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            cwd=workdir,  # fresh and empty: no stray .env or config file gets picked up
            env=env,
        )
    port = int(argv[list(argv).index("--port") + 1])
    try:
        await _wait_listening(process, port, workdir / f"{name}.log")
        placement.check(process.pid, GATEWAY_CPU)
    except BaseException:
        await children.stop(process)
        raise
    return process


def _fresh_dir(workdir: Path, name: str) -> Path:
    # Every run starts clean: ContextForge's SQLite database must not remember the last run's bridge.
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))


def simple_starter(
    name: str, argv: Callable[[int, Path], list[str]], extra_env: Callable[[], dict[str, str]] = dict
) -> Starter:
    """A peer that is one command line serving Streamable HTTP at http://127.0.0.1:port/mcp."""

    async def start(children: Children, workdir: Path, placement: Placement) -> Started:
        port = _free_port()
        peer_dir = _fresh_dir(workdir, name)
        env = {**backend_env(), **extra_env()}
        process = await _serve(children, placement, peer_dir, name, argv(port, peer_dir), env)
        return Started((process,), f"http://127.0.0.1:{port}/mcp")

    return start


async def _start_contextforge_gateway(children: Children, workdir: Path, placement: Placement) -> Started:
    """ContextForge as documented for a stdio server: its translate bridge exposes the server over
    Streamable HTTP, the gateway registers the bridge (admin API, JWT) and serves MCP at /mcp."""
    peer_dir = _fresh_dir(workdir, "contextforge-gateway")
    env = {
        **backend_env(),
        **_contextforge_env(),
        "DATABASE_URL": f"sqlite:///{peer_dir}/mcp.db",
        "SSRF_ALLOW_LOCALHOST": "true",  # the bridge listens on 127.0.0.1, which it refuses by default
        "MCPGATEWAY_ADMIN_API_ENABLED": "true",  # POST /gateways registers the bridge
        "RATE_LIMITING_ENABLED": "false",  # on by default: 100 MCP requests a minute
        "TOOL_RATE_LIMIT": "1000000000",
        "LOG_LEVEL": "WARNING",
    }
    processes: list[asyncio.subprocess.Process] = []
    try:
        bridge_port = _free_port()
        bridge_argv = _contextforge_translate(bridge_port, peer_dir)
        processes.append(await _serve(children, placement, peer_dir, "translate", bridge_argv, env))
        port = _free_port()
        gateway_argv = [str(PEERS_DIR / "contextforge" / "bin" / "mcpgateway"), "--host", "127.0.0.1"]
        gateway_argv += ["--port", str(port)]
        processes.append(await _serve(children, placement, peer_dir, "gateway", gateway_argv, env))
        headers = {"Authorization": f"Bearer {await _contextforge_token(env)}"}
        bridge = {"name": "null", "url": f"http://127.0.0.1:{bridge_port}/mcp", "transport": "STREAMABLEHTTP"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(f"http://127.0.0.1:{port}/gateways", json=bridge) as response,
        ):
            if response.status not in (200, 201):
                raise BenchError(
                    f"registering the bridge: {response.status} {(await response.read())[:300]!r}"
                )
    except BaseException:
        for process in processes:
            await children.stop(process)
        raise
    return Started(tuple(processes), f"http://127.0.0.1:{port}/mcp", headers)


async def _contextforge_token(env: dict[str, str]) -> str:
    """An admin JWT from ContextForge's own tool, signed with this run's throwaway secret."""
    python = str(PEERS_DIR / "contextforge" / "bin" / "python")
    argv = ["-m", "mcpgateway.utils.create_jwt_token", "-u", "admin@example.com", "--admin", "--exp", "60"]
    tool = await asyncio.create_subprocess_exec(
        python, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    try:
        async with asyncio.timeout(STARTUP_SECONDS):
            out, _ = await tool.communicate()
    finally:
        if tool.returncode is None:
            tool.kill()
            await tool.wait()
    lines = out.decode(errors="replace").split()
    if tool.returncode != 0 or not lines:
        raise BenchError(f"create_jwt_token failed ({tool.returncode})")
    return lines[-1]


PEERS = (
    Peer(
        "mcp-proxy",
        PEERS_DIR / "mcp-proxy" / "bin" / "mcp-proxy",
        _python_version("mcp-proxy", "mcp-proxy"),
        simple_starter("mcp-proxy", _mcp_proxy),
    ),
    Peer(
        "fastmcp",
        PEERS_DIR / "fastmcp" / "bin" / "fastmcp",
        _python_version("fastmcp", "fastmcp"),
        simple_starter("fastmcp", _fastmcp),
        note="fastmcp run <MCPConfig> --transport http",
    ),
    Peer(
        "contextforge-gateway",
        PEERS_DIR / "contextforge" / "bin" / "mcpgateway",
        _python_version("contextforge", "mcp-contextforge-gateway"),
        _start_contextforge_gateway,
        note="gateway (uvicorn, SQLite, JWT) -> its translate bridge -> stdio",
    ),
    Peer(
        "contextforge-translate",
        PEERS_DIR / "contextforge" / "bin" / "python",
        _python_version("contextforge", "mcp-contextforge-gateway"),
        simple_starter("contextforge-translate", _contextforge_translate, _contextforge_env),
        note="mcpgateway.translate alone: a raw stdio bridge, no MCP session",
    ),
    Peer(
        "supergateway",
        PEERS_DIR / "node" / "node_modules" / ".bin" / "supergateway",
        _npm_version,
        simple_starter("supergateway", _supergateway),
        note="--stateful: one backend per session; binds all interfaces (no host option)",
    ),
)


def portico_starter(transport: str) -> Starter:
    async def start(children: Children, workdir: Path, placement: Placement) -> Started:
        # The peers' backend command exactly, so that it is known as the backend: moved to the generator's
        # CPU and left out of the proxy's CPU time, as theirs are.
        config = write_config(workdir, NULL_BACKEND)
        prefix = placement.prefix(GATEWAY_CPU)
        process, ws_url = await start_gateway(children, workdir, prefix=prefix, config=config)
        placement.check(process.pid, GATEWAY_CPU)
        return Started((process,), ws_url if transport == "ws" else "http://" + ws_url.removeprefix("ws://"))

    return start


async def run_peer(children: Children, workdir: Path, peer: Peer, options: LoadSettings) -> PeerRow:
    row = PeerRow(peer.name, "streamable http", peer.version(), options.rate, note=peer.note)
    if not peer.entry.exists():
        row.failure = f"not installed ({peer.entry} missing): run bench/peers_setup.sh"
        return row
    return await measure(children, workdir, row, peer.start, PEER_TRANSPORT, options)


async def run_portico(children: Children, workdir: Path, transport: str, options: LoadSettings) -> PeerRow:
    name = "streamable http" if transport == "http" else "websocket"
    row = PeerRow("portico", name, _portico_version(), options.rate)
    # Over HTTP the same client as the peers (PeerHttpConnection); over WebSocket loadgen's own.
    return await measure(
        children,
        workdir,
        row,
        portico_starter(transport),
        PEER_TRANSPORT if transport == "http" else "ws",
        options,
    )


def _portico_version() -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return f"mcp-portico {importlib.metadata.version('mcp-portico')} (this tree)"
    return "portico (this tree)"


# -- output -------------------------------------------------------------------------------------------------


def table(rows: Sequence[PeerRow]) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    lines = [
        f"  {'system':<24}{'transport':<17}{'offered/s':>10}{'achieved/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'errors':>8}{'CPU-µs/call':>13}  processes"
    ]
    for row in rows:
        head = f"  {row.system:<24}{row.transport:<17}{row.rate:>10,.0f}"
        if row.result is None:
            lines.append(f"{head}  FAILED: {row.failure.splitlines()[0] if row.failure else '?'}")
            continue
        r = row.result
        # Behind schedule, CPU per offered call says little (work is cut short); the JSON keeps it.
        kept_up = not r.failed and r.achieved_rate >= 0.98 * r.offered_rate
        cpu = f"{row.cpu_us_per_call:,.0f}" if row.cpu_us_per_call is not None and kept_up else "-"
        lines.append(
            f"{head}{r.achieved_rate:>11,.0f}{ms(r.p50_ms):>9}{ms(r.p99_ms):>9}{ms(r.max_ms):>9}"
            f"{r.failed:>8}{cpu:>13}  {row.processes}"
        )
    return "\n".join(lines)


def write_json(rows: Sequence[PeerRow], header: Sequence[str], options: LoadSettings) -> None:
    def encode(row: PeerRow) -> dict[str, Any]:
        data = dataclasses.asdict(row)
        data["result"] = None if row.result is None else dataclasses.asdict(row.result)
        return data

    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": list(header),
        "options": dataclasses.asdict(options),
        "rows": [encode(row) for row in rows],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # orjson writes NaN (no successful call) as null.
    OUT.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


# -- the command line ----------------------------------------------------------------------------------------


async def main_async(
    rates: Sequence[float], options: LoadSettings, only: Sequence[str], strict: bool = False
) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the run the way Ctrl-C does: through children_and_workdir, which stops every child.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    placement = Placement()
    header = [*machine(), placement.describe(), f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    header.append(f"portico: {describe_tree(REPO)}")
    header.append(
        f"rates {', '.join(f'{rate:,.0f}' for rate in rates)} calls/s, {options.warmup:g} s warm-up + "
        f"{options.seconds:g} s over {options.connections} connection(s), timeout {options.timeout:g} s"
    )
    print("\n".join(header), flush=True)
    placement.pin_self()
    peers = [peer for peer in PEERS if not only or peer.name in only]
    rows: list[PeerRow] = []
    overwhelmed: set[tuple[str, str]] = set()
    async with children_and_workdir("portico-peers-") as (children, workdir):
        for rate in sorted(rates):
            at_rate = dataclasses.replace(options, rate=rate)
            runs: list[tuple[str, str, Callable[[], Awaitable[PeerRow]]]] = [
                (peer.name, "streamable http", functools.partial(run_peer, children, workdir, peer, at_rate))
                for peer in peers
            ]
            if not only or "portico" in only:
                runs += [
                    ("portico", name, functools.partial(run_portico, children, workdir, transport, at_rate))
                    for transport, name in (("http", "streamable http"), ("ws", "websocket"))
                ]
            for system, transport, run in runs:
                if (system, transport) in overwhelmed:
                    continue
                row = await run()
                _record(rows, row)
                if _overwhelmed(row):
                    overwhelmed.add((system, transport))
                    print(f"  {system} over {transport}: not offered more than {rate:,.0f}/s", flush=True)
    print(table(rows))
    write_json(rows, header, options)
    print(f"wrote {OUT}")
    bad = [row for row in rows if row.result is None or (strict and row.result.failed)]
    return 1 if bad else 0


def _overwhelmed(row: PeerRow) -> bool:
    """Answered less than half of what was offered: higher rates would only pile up timeouts, and cost
    minutes of waiting for them, so the system is not offered more."""
    return row.result is not None and row.result.achieved_rate < row.rate / 2


def _record(rows: list[PeerRow], row: PeerRow) -> None:
    rows.append(row)
    print(describe(row), flush=True)


def describe(row: PeerRow) -> str:
    line = f"  {row.system} over {row.transport} at {row.rate:,.0f}/s ({row.version})"
    if row.result is None:
        return f"{line}: FAILED: {row.failure}"
    r = row.result
    line += (
        f": {r.achieved_rate:,.0f}/s achieved, p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, "
        f"send lag p99 {r.send_lag_p99_ms:.3f} ms"
    )
    if r.failed:
        line += f"; {r.errors} errors, {r.timeouts} timeouts (first: {r.first_error[:200]})"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, help="one offered rate, calls/s")
    parser.add_argument("--rates", type=float, nargs="+", help="several offered rates, each a fresh run")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="sent but unmeasured seconds (default 1)")
    parser.add_argument("--connections", type=int, default=8, help="connections per run (default 8)")
    parser.add_argument("--timeout", type=float, default=5.0, help="a call later than this failed (s)")
    names = [peer.name for peer in PEERS] + ["portico"]
    parser.add_argument("--only", nargs="+", choices=names, default=[], help="run just these systems")
    parser.add_argument("--smoke", action="store_true", help="1 s at a low rate; fails only on failures")
    args = parser.parse_args(argv)
    if args.smoke:
        rates = [SMOKE_RATE]
        options = LoadSettings(SMOKE_RATE, 1.0, 0.0, 2, args.timeout)
    else:
        rates = args.rates or ([args.rate] if args.rate else [])
        if not rates:
            parser.error("--rate or --rates is required (or --smoke)")
        options = LoadSettings(rates[0], args.seconds, args.warmup, args.connections, args.timeout)
    if min(rates) <= 0 or options.seconds <= 0 or options.connections < 1 or options.warmup < 0:
        parser.error("rates and --seconds must be > 0, --connections >= 1, --warmup >= 0")
    return run_until_interrupted(main_async(rates, options, args.only, strict=args.smoke))


if __name__ == "__main__":
    sys.exit(main())
