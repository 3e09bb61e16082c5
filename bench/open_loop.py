"""What the gateway costs under load: latency at offered rates per plugin chain, and at fixed concurrency.

    python -m bench.open_loop [--scenario empty|full|cache-hit|all] [--transport ws|http|both]
                              (--rate R | --rates R1,R2,...) [--seconds S] [--connections N]
                              [--warmup W] [--timeout T] [--concurrency C1,C2,...] [--name NAME]
    python -m bench.open_loop --sweep     # every scenario at DEFAULT_RATES, then C = 1, 64, 1024
    python -m bench.open_loop --smoke     # a few hundred calls per mode; fails only on failed calls

OPEN LOOP (``--rate``/``--rates``): for each scenario, transport and rate it runs ``bench.loadgen``
twice, with fresh processes each time: DIRECT, straight to a ``bench.null_backend`` serving that
transport, and GATEWAY, to ``python -m proxy serve`` (127.0.0.1, port 0) with the scenario's plugin
chain (``bench.scenarios``: empty; full = auth + policy + redact + cache miss + dedup; cache-hit) whose
only backend is the null backend over stdio. CLOSED LOOP (``--concurrency``): over WebSocket, empty
chain, one connection keeps C calls in flight (``bench.core_ws.Client``), direct and gateway; this
gives calls/s and p50/p99 at 1, 64 and 1024 in flight.

When ``taskset`` and two CPUs are available the gateway runs on CPU 0 and everything else (this process,
the null backends) on CPU 1, so the gateway has a core of its own. Its user+system CPU time is read from
/proc/<pid>/stat when the measured window opens and once its last reply is in, which gives CPU-µs per
call. Every run's results go to ``bench/out/<name>.json`` (``python -m bench.report`` plots them).
``--smoke`` asserts nothing about speed.

Every child is killed at the end, on errors and SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from bench import loadgen
from bench.core_ws import (
    REPO,
    STARTUP_SECONDS,
    BenchError,
    Children,
    Client,
    RunResult,
    WebSocketChannel,
    children_and_workdir,
    cpu_probe,
    cpu_seconds,
    descendants,
    machine,
    run_until_interrupted,
    spawn_null_backend,
)
from bench.loadgen import LoadSettings
from bench.scenarios import SCENARIOS, Gateway, Scenario, chain_counters, start_gateway

EMPTY = SCENARIOS["empty"]

GATEWAY_CPU = 0
LOAD_CPU = 1
OUT_DIR = REPO / "bench" / "out"
_LISTENING = re.compile(rb"^LISTENING (\S+)")
# The smoke run: low enough to pass on a busy box, long enough to send a few hundred calls.
SMOKE_RATE = 200.0
SMOKE_SECONDS = 1.0
SMOKE_CONNECTIONS = 4
# What ``--sweep`` (make bench) offers: from well below the full chain's target (5,000/s) to past it;
# 2,500/s is where the latency target applies (half the target rate).
DEFAULT_RATES = (500.0, 1000.0, 2500.0, 5000.0, 7500.0)
DEFAULT_CONCURRENCY = (1, 64, 1024)
SWEEP_SECONDS = 3.0


@dataclass(frozen=True)
class Row:
    """One open-loop run of one mode (``bench.peers`` uses this, ``run_direct`` and ``run_gateway``)."""

    mode: str
    result: loadgen.LoadResult
    gateway_cpu_us_per_call: float | None = None
    scenario: str = "empty"
    # The gateway's chain counters after the run (cache hits and misses, dedup shares, denials).
    chain: dict[str, float] | None = None


@dataclass(frozen=True)
class Measurement:
    """One run as printed and saved: open loop (``offered_rate``) or closed loop (``concurrency``)."""

    scenario: str
    transport: str
    system: str  # "direct" or "portico"
    achieved_rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    measured_calls: int
    errors: int
    timeouts: int
    first_error: str = ""
    offered_rate: float | None = None
    concurrency: int | None = None
    gateway_cpu_us_per_call: float | None = None
    send_lag_p99_ms: float | None = None
    send_lag_max_ms: float | None = None
    chain: dict[str, float] | None = None

    @property
    def mode(self) -> str:
        return f"{self.transport} {self.system}"

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts

    def as_json(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in self.__dataclass_fields__}
        row["load"] = "open" if self.concurrency is None else "closed"
        # JSON has no NaN: a run with no good reply has no percentiles.
        return {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in row.items()}


def measured_open(row: Row) -> Measurement:
    result = row.result
    return Measurement(
        row.scenario,
        result.transport,
        row.mode.split()[-1].replace("gateway", "portico"),
        result.achieved_rate,
        result.p50_ms,
        result.p90_ms,
        result.p99_ms,
        result.p999_ms,
        result.max_ms,
        result.measured_calls,
        result.errors,
        result.timeouts,
        result.first_error,
        offered_rate=result.offered_rate,
        gateway_cpu_us_per_call=row.gateway_cpu_us_per_call,
        send_lag_p99_ms=result.send_lag_p99_ms,
        send_lag_max_ms=result.send_lag_max_ms,
        chain=row.chain,
    )


def measured_closed(system: str, run: RunResult) -> Measurement:
    gateway_share = run.cpu.get("gateway")
    cpu_us = gateway_share / run.rate * 1e6 if gateway_share is not None and run.rate else None
    return Measurement(
        "empty",
        "ws",
        system,
        run.rate,
        run.percentile_ms(50),
        run.percentile_ms(90),
        run.percentile_ms(99),
        run.percentile_ms(99.9),
        run.percentile_ms(100),
        len(run.latencies_ns),
        run.errors,
        0,
        run.first_error,
        concurrency=run.concurrency,
        gateway_cpu_us_per_call=cpu_us,
    )


@dataclass(frozen=True)
class Sweep:
    """Everything one invocation runs: scenarios x transports x rates, then the concurrency levels."""

    scenarios: tuple[Scenario, ...]
    transports: tuple[str, ...]
    rates: tuple[float, ...]
    concurrency: tuple[int, ...]
    seconds: float
    warmup: float
    connections: int
    timeout: float
    name: str
    # The smoke run puts the plugin chains through the gateway only, over fewer runs, to stay short.
    smoke: bool = False

    def at(self, rate: float) -> LoadSettings:
        return LoadSettings(rate, self.seconds, self.warmup, self.connections, self.timeout)


# -- CPU placement ----------------------------------------------------------------------------------------


# The CPUs this process may use when it starts. Read once, here: ``pin_self`` narrows the process's own
# affinity to the load CPU, and a Placement made after that must still know the machine has both.
_STARTING_CPUS = frozenset(os.sched_getaffinity(0))


class Placement:
    """Gateway on one CPU, the load (this process and the backends) on another, when the box allows it."""

    def __init__(self) -> None:
        self.taskset = shutil.which("taskset")
        self.enabled = self.taskset is not None and {GATEWAY_CPU, LOAD_CPU} <= _STARTING_CPUS

    def describe(self) -> str:
        if not self.enabled:
            return "CPU pinning: off (needs taskset and CPUs 0 and 1)"
        return f"CPU pinning: gateway on CPU {GATEWAY_CPU}; generator and null backends on CPU {LOAD_CPU}"

    def pin_self(self) -> None:
        if self.enabled:
            os.sched_setaffinity(0, {LOAD_CPU})

    def prefix(self, cpu: int) -> list[str]:
        return [self.taskset, "-c", str(cpu)] if self.enabled and self.taskset else []

    def check(self, pid: int, cpu: int) -> None:
        """Raise unless ``pid`` runs on ``cpu`` alone (when pinning is on): figures taken with the gateway
        sharing the load's CPU would measure something else."""
        cpus = os.sched_getaffinity(pid)
        if self.enabled and cpus != {cpu}:
            raise BenchError(f"process {pid} is on CPUs {sorted(cpus)}, not on CPU {cpu} alone")

    def move_to_load_cpu(self, pids: Sequence[int]) -> None:
        # The gateway's stdio backend inherits CPU 0 from it; it belongs with the rest of the load.
        if self.enabled:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.sched_setaffinity(pid, {LOAD_CPU})


# -- one run of each mode -----------------------------------------------------------------------------------


async def start_null_backend(
    children: Children,
    workdir: Path,
    transport: str,
    placement: Placement | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``bench.null_backend`` on ``transport`` (pinned when ``placement`` says so, with
    ``extra_args`` such as ``--tools N``); its process and URL."""
    with (workdir / f"null-{transport}.stderr").open("ab") as stderr:
        # stdin stays a pipe nobody writes to: the backend stops by itself when it closes.
        backend = await spawn_null_backend(
            children,
            stderr,
            "--transport",
            transport,
            "--port",
            "0",
            *extra_args,
            prefix=placement.prefix(LOAD_CPU) if placement is not None else (),
        )
    assert backend.stdout is not None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STARTUP_SECONDS):
            line = await backend.stdout.readline()
            found = _LISTENING.match(line)
            if found is not None:
                return backend, found.group(1).decode()
    await children.stop(backend)
    log = (workdir / f"null-{transport}.stderr").read_text(errors="replace")[-2000:]
    raise BenchError(f"the null backend ({transport}) did not come up\n{log}")


async def run_direct(
    children: Children, workdir: Path, transport: str, options: LoadSettings, scenario: Scenario = EMPTY
) -> Row:
    placement = Placement()
    backend, url = await start_null_backend(children, workdir, transport, placement, scenario.backend_args)
    try:
        result = await loadgen.run(options.spec(url, transport, "echo", fixed_text=scenario.fixed_text))
    finally:
        await children.stop(backend)
    return Row(f"{transport} direct", result, scenario=scenario.name)


async def start_placed_gateway(children: Children, workdir: Path, scenario: Scenario) -> Gateway:
    placement = Placement()
    gateway = await start_gateway(children, workdir, scenario, prefix=placement.prefix(GATEWAY_CPU))
    placement.move_to_load_cpu([pid for pid, _ in descendants(gateway.process.pid)])
    placement.check(gateway.process.pid, GATEWAY_CPU)
    return gateway


async def run_gateway(
    children: Children, workdir: Path, transport: str, options: LoadSettings, scenario: Scenario = EMPTY
) -> Row:
    gateway = await start_placed_gateway(children, workdir, scenario)
    pid = gateway.process.pid
    try:
        url = gateway.ws_url if transport == "ws" else gateway.http_url
        spec = options.spec(
            url, transport, "null_echo", headers=gateway.headers, fixed_text=scenario.fixed_text
        )
        cpu: list[float] = []
        result = await loadgen.run(
            spec,
            on_window_start=lambda: cpu.append(cpu_seconds(pid)),
            on_window_end=lambda: cpu.append(cpu_seconds(pid)),
        )
        chain = await chain_counters(gateway) if scenario.plugins else None
    finally:
        await children.stop(gateway.process)
    per_call = None
    if len(cpu) == 2 and result.measured_calls:
        per_call = (cpu[1] - cpu[0]) * 1e6 / result.measured_calls
    return Row(f"{transport} gateway", result, per_call, scenario.name, chain)


async def run_closed(
    children: Children, workdir: Path, system: str, concurrency: int, sweep: Sweep
) -> Measurement:
    """One connection (WebSocket, empty chain) keeping ``concurrency`` calls in flight."""
    if system == "direct":
        backend, url = await start_null_backend(children, workdir, "ws", Placement(), ())
        process, tool = backend, "echo"
        watched: dict[str, Sequence[int]] = {}
    else:
        gateway = await start_placed_gateway(children, workdir, EMPTY)
        process, url, tool = gateway.process, gateway.ws_url, "null_echo"
        watched = {"gateway": [gateway.process.pid]}
    channel: WebSocketChannel | None = None
    try:
        async with asyncio.timeout(STARTUP_SECONDS):
            channel = await WebSocketChannel.connect(url)
            client = Client(channel, tool)
            await client.handshake()
        run = await client.run(system, concurrency, sweep.warmup, sweep.seconds, cpu_probe(watched))
    finally:
        if channel is not None:
            await channel.close()
        await children.stop(process)
    return measured_closed(system, run)


# -- the plan, the table, the JSON file and the command line ---------------------------------------------

Step = Callable[[Children, Path], Awaitable[Measurement]]


def _open_step(
    runner: Callable[..., Awaitable[Row]], transport: str, options: LoadSettings, scenario: Scenario
) -> Step:
    async def step(children: Children, workdir: Path) -> Measurement:
        return measured_open(await runner(children, workdir, transport, options, scenario))

    return step


def plan(sweep: Sweep) -> list[Step]:
    """Every run in order; direct and gateway alternate so slow drifts in the machine hit both alike."""
    steps: list[Step] = []
    for scenario in sweep.scenarios:
        for transport in sweep.transports:
            if sweep.smoke and scenario.fixed_text is not None and transport != "ws":
                continue  # the smoke run is short: the full chain covers HTTP with a token
            for rate in sweep.rates:
                if not (sweep.smoke and scenario.plugins):
                    steps.append(_open_step(run_direct, transport, sweep.at(rate), scenario))
                steps.append(_open_step(run_gateway, transport, sweep.at(rate), scenario))
    for concurrency in sweep.concurrency:
        for system in ("direct", "portico"):
            steps.append(partial(run_closed, system=system, concurrency=concurrency, sweep=sweep))
    return steps


def table(rows: Sequence[Measurement]) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.3f}"

    header = (
        f"  {'scenario':<10}{'mode':<13}{'load':>10}{'achieved/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99.9 ms':>10}{'max ms':>9}{'errors':>8}{'gateway CPU-µs/call':>21}"
    )
    lines = [header]
    for row in rows:
        load = f"{row.offered_rate:,.0f}/s" if row.offered_rate is not None else f"C={row.concurrency}"
        cpu = "-" if row.gateway_cpu_us_per_call is None else f"{row.gateway_cpu_us_per_call:.1f}"
        lines.append(
            f"  {row.scenario:<10}{row.mode:<13}{load:>10}{row.achieved_rate:>11,.0f}{ms(row.p50_ms):>9}"
            f"{ms(row.p99_ms):>9}{ms(row.p999_ms):>10}{ms(row.max_ms):>9}{row.failed:>8}{cpu:>21}"
        )
    return "\n".join(lines)


def describe_row(row: Measurement) -> str:
    load = f"{row.offered_rate:,.0f}/s offered" if row.offered_rate is not None else f"C={row.concurrency}"
    line = (
        f"  {row.scenario:<10}{row.mode:<13} {load}: {row.achieved_rate:,.0f}/s, "
        f"{row.measured_calls:,} calls measured, p50 {row.p50_ms:.3f} ms, p99 {row.p99_ms:.3f} ms"
    )
    if row.send_lag_p99_ms is not None:
        line += f", send lag p99 {row.send_lag_p99_ms:.3f} ms max {row.send_lag_max_ms:.3f} ms"
    if row.chain:
        line += "; " + ", ".join(f"{name} {value:,.0f}" for name, value in row.chain.items())
    if row.failed:
        line += f"; FAILED {row.errors} errors, {row.timeouts} timeouts (first: {row.first_error})"
    return line


def _commit() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(REPO), "status", "--porcelain", "--", "proxy", "plugins"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + (" + uncommitted changes in proxy/ or plugins/" if dirty else "")
    return "unknown"


def write_results(options: Sweep, context: list[str], rows: Sequence[Measurement]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{options.name}.json"
    document = {
        "name": options.name,
        "context": context,
        "load_average_after": list(os.getloadavg()),
        "settings": {
            "seconds": options.seconds,
            "warmup": options.warmup,
            "connections": options.connections,
            "timeout": options.timeout,
        },
        "scenarios": {s.name: s.description for s in options.scenarios},
        "rows": [row.as_json() for row in rows],
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


async def main_async(options: Sweep) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the run the way Ctrl-C does: through children_and_workdir, which stops every child.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    placement = Placement()
    context = [
        *machine(),
        placement.describe(),
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"gateway: {REPO} at {_commit()}",
    ]
    for line in context:
        print(line)
    if options.rates:
        print(
            f"open loop: scenarios {', '.join(s.name for s in options.scenarios)}; rates "
            f"{', '.join(f'{r:g}' for r in options.rates)} calls/s; {options.warmup:g} s warm-up + "
            f"{options.seconds:g} s over {options.connections} connection(s), timeout {options.timeout:g} s"
        )
    if options.concurrency:
        print(f"closed loop (ws, empty chain): C = {', '.join(map(str, options.concurrency))}")
    sys.stdout.flush()
    placement.pin_self()
    rows: list[Measurement] = []
    try:
        async with children_and_workdir("portico-open-loop-") as (children, workdir):
            for step in plan(options):
                row = await step(children, workdir)
                rows.append(row)
                print(describe_row(row), flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if rows:
            print(f"results: {write_results(options, context, rows)}")
    print(table(rows))
    failed = sum(row.failed for row in rows)
    # Past saturation timeouts are the measurement, not a fault; only the smoke run insists on none.
    if options.smoke and (failed or any(row.measured_calls == 0 for row in rows)):
        print(f"bench: {failed} call(s) failed or timed out", file=sys.stderr)
        return 1
    if options.smoke and any(
        row.chain is not None and not row.chain.get("cache_hits")
        for row in rows
        if row.scenario == "cache-hit"
    ):
        print("bench: the cache-hit scenario got no cache hits", file=sys.stderr)
        return 1
    if any(row.errors for row in rows):
        print(f"bench: {sum(row.errors for row in rows)} call(s) got a wrong answer", file=sys.stderr)
        return 1
    return 0


def _numbers(kind: type[float] | type[int]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
        return values

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="empty")
    parser.add_argument("--transport", choices=("ws", "http", "both"), default="both")
    parser.add_argument("--rate", type=float, help="offered calls per second")
    parser.add_argument("--rates", type=_numbers(float), help="several offered rates, e.g. 500,1000,2000")
    parser.add_argument(
        "--concurrency", type=_numbers(int), default=(), help="closed loop over ws, e.g. 1,64,1024"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="sent but unmeasured seconds (default 1)")
    parser.add_argument(
        "--connections", type=int, default=8, help="connections per open-loop run (default 8)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="a call later than this (from its schedule) failed"
    )
    parser.add_argument("--name", help="results go to bench/out/NAME.json (default: from the date)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"every scenario, rates {','.join(f'{r:g}' for r in DEFAULT_RATES)}, both transports, "
        f"{SWEEP_SECONDS:g} s each, then C={','.join(map(str, DEFAULT_CONCURRENCY))} (what make bench runs)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 s at a low rate per mode and chain; fails only on failed calls",
    )
    args = parser.parse_args(argv)
    scenarios = tuple(SCENARIOS.values()) if args.scenario == "all" else (SCENARIOS[args.scenario],)
    transports = ("ws", "http") if args.transport == "both" else (args.transport,)
    name = args.name or time.strftime("open-loop-%Y%m%d-%H%M%S")
    if args.smoke:
        # Empty chain direct and through the gateway, then every chain once through the gateway.
        options = Sweep(
            tuple(SCENARIOS.values()),
            ("ws", "http"),
            (SMOKE_RATE,),
            (),
            SMOKE_SECONDS,
            0.0,
            SMOKE_CONNECTIONS,
            args.timeout,
            args.name or "smoke",
            smoke=True,
        )
    elif args.sweep:
        options = Sweep(
            tuple(SCENARIOS.values()),
            ("ws", "http"),
            DEFAULT_RATES,
            DEFAULT_CONCURRENCY,
            SWEEP_SECONDS,
            args.warmup,
            args.connections,
            args.timeout,
            args.name or "sweep",
        )
    else:
        rates = args.rates or ((args.rate,) if args.rate is not None else ())
        if not rates and not args.concurrency:
            parser.error("give --rate, --rates or --concurrency (or --sweep, or --smoke)")
        options = Sweep(
            scenarios,
            transports,
            rates,
            args.concurrency,
            args.seconds,
            args.warmup,
            args.connections,
            args.timeout,
            name,
        )
    if (
        any(r <= 0 for r in options.rates)
        or options.seconds <= 0
        or options.connections < 1
        or options.warmup < 0
    ):
        parser.error("rates and --seconds must be > 0, --connections >= 1, --warmup >= 0")
    return run_until_interrupted(main_async(options))


if __name__ == "__main__":
    sys.exit(main())
