"""What the gateway costs under open-loop load: latency at a fixed offered rate, and its CPU per call.

    python -m bench.open_loop [--transport ws|http|both] --rate R --seconds S [--connections N]
                              [--warmup W] [--timeout T] [--smoke]

For each transport it runs ``bench.loadgen`` twice, with fresh processes each time: DIRECT, straight
to a ``bench.null_backend`` serving that transport, and GATEWAY, to ``python -m proxy serve`` (empty
plugin chain, listening on 127.0.0.1 port 0) whose only backend is the null backend over stdio. When
``taskset`` and two CPUs are available the gateway runs on CPU 0 and everything else (this process, the
null backends) on CPU 1, so the gateway has a core of its own. Its user+system CPU time is read from
/proc/<pid>/stat when the measured window opens and once its last reply is in, which gives CPU-µs per
call. ``--smoke`` sends a low rate for 1 s through both transports and fails only if a call failed or
timed out; it asserts nothing about speed.

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
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench import loadgen
from bench.core_ws import (
    REPO,
    STARTUP_SECONDS,
    BenchError,
    Children,
    backend_env,
    cpu_seconds,
    descendants,
    machine,
    start_gateway,
)

GATEWAY_CPU = 0
LOAD_CPU = 1
_LISTENING = re.compile(rb"^LISTENING (\S+)")
# The smoke run: low enough to pass on a busy box, long enough to send a few hundred calls.
SMOKE_RATE = 200.0
SMOKE_SECONDS = 1.0
SMOKE_CONNECTIONS = 4


@dataclass(frozen=True)
class Row:
    mode: str
    result: loadgen.LoadResult
    gateway_cpu_us_per_call: float | None = None


@dataclass(frozen=True)
class Options:
    transports: tuple[str, ...]
    rate: float
    seconds: float
    warmup: float
    connections: int
    timeout: float

    def spec(self, url: str, transport: str, tool: str) -> loadgen.LoadSpec:
        return loadgen.LoadSpec(
            url, transport, tool, self.rate, self.seconds, self.connections, self.warmup, self.timeout
        )


# -- CPU placement ----------------------------------------------------------------------------------------


class Placement:
    """Gateway on one CPU, the load (this process and the backends) on another, when the box allows it."""

    def __init__(self) -> None:
        self.taskset = shutil.which("taskset")
        usable = os.sched_getaffinity(0)
        self.enabled = self.taskset is not None and {GATEWAY_CPU, LOAD_CPU} <= usable

    def describe(self) -> str:
        if not self.enabled:
            return "CPU pinning: off (needs taskset and CPUs 0 and 1)"
        return f"CPU pinning: gateway on CPU {GATEWAY_CPU}; generator and null backends on CPU {LOAD_CPU}"

    def pin_self(self) -> None:
        if self.enabled:
            os.sched_setaffinity(0, {LOAD_CPU})

    def prefix(self, cpu: int) -> list[str]:
        return [self.taskset, "-c", str(cpu)] if self.enabled and self.taskset else []

    def move_to_load_cpu(self, pids: Sequence[int]) -> None:
        # The gateway's stdio backend inherits CPU 0 from it; it belongs with the rest of the load.
        if self.enabled:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.sched_setaffinity(pid, {LOAD_CPU})


# -- one run of each mode -----------------------------------------------------------------------------------


async def start_null_backend(
    children: Children, workdir: Path, transport: str, placement: Placement
) -> tuple[asyncio.subprocess.Process, str]:
    with (workdir / f"null-{transport}.stderr").open("ab") as stderr:
        # stdin stays a pipe nobody writes to: the backend stops by itself when it closes.
        backend = await children.spawn(
            *placement.prefix(LOAD_CPU),
            sys.executable,
            "-m",
            "bench.null_backend",
            "--transport",
            transport,
            "--port",
            "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
            env=backend_env(),
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


async def run_direct(children: Children, workdir: Path, transport: str, options: Options) -> Row:
    placement = Placement()
    backend, url = await start_null_backend(children, workdir, transport, placement)
    try:
        result = await loadgen.run(options.spec(url, transport, "echo"))
    finally:
        await children.stop(backend)
    return Row(f"{transport} direct", result)


async def run_gateway(children: Children, workdir: Path, transport: str, options: Options) -> Row:
    placement = Placement()
    gateway, ws_url = await start_gateway(children, workdir, prefix=placement.prefix(GATEWAY_CPU))
    try:
        placement.move_to_load_cpu([pid for pid, _ in descendants(gateway.pid)])
        url = ws_url if transport == "ws" else "http://" + ws_url.removeprefix("ws://")
        cpu: list[float] = []
        result = await loadgen.run(
            options.spec(url, transport, "null_echo"),
            on_window_start=lambda: cpu.append(cpu_seconds(gateway.pid)),
            on_window_end=lambda: cpu.append(cpu_seconds(gateway.pid)),
        )
    finally:
        await children.stop(gateway)
    per_call = None
    if len(cpu) == 2 and result.measured_calls:
        per_call = (cpu[1] - cpu[0]) * 1e6 / result.measured_calls
    return Row(f"{transport} gateway", result, per_call)


# -- the table and the command line -------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.3f}"

    header = (
        f"  {'mode':<13}{'offered/s':>10}{'achieved/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'max ms':>9}{'errors':>8}{'gateway CPU-µs/call':>21}"
    )
    lines = [header]
    for row in rows:
        r = row.result
        cpu = "-" if row.gateway_cpu_us_per_call is None else f"{row.gateway_cpu_us_per_call:.1f}"
        lines.append(
            f"  {row.mode:<13}{r.offered_rate:>10,.0f}{r.achieved_rate:>11,.0f}{ms(r.p50_ms):>9}"
            f"{ms(r.p99_ms):>9}{ms(r.p999_ms):>10}{ms(r.max_ms):>9}{r.failed:>8}{cpu:>21}"
        )
    return "\n".join(lines)


def describe_row(row: Row) -> str:
    r = row.result
    line = (
        f"  {row.mode:<13} {r.measured_calls:,} calls measured, p90 {r.p90_ms:.3f} ms, "
        f"generator send lag p99 {r.send_lag_p99_ms:.3f} ms max {r.send_lag_max_ms:.3f} ms"
    )
    if r.failed:
        line += f"; FAILED {r.errors} errors, {r.timeouts} timeouts (first: {r.first_error})"
    return line


async def main_async(options: Options) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the run the way Ctrl-C does: through the finally below, which stops every child.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    placement = Placement()
    for line in machine():
        print(line)
    print(placement.describe())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"offered {options.rate:,.0f} calls/s for {options.warmup:g} s warm-up + {options.seconds:g} s over "
        f"{options.connections} connection(s), timeout {options.timeout:g} s",
        flush=True,
    )
    placement.pin_self()
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="portico-open-loop-"))
    rows: list[Row] = []
    try:
        for transport in options.transports:
            for runner in (run_direct, run_gateway):
                row = await runner(children, workdir, transport, options)
                rows.append(row)
                print(describe_row(row), flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        await children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    failed = sum(row.result.failed for row in rows)
    if failed or any(row.result.ok < row.result.measured_calls for row in rows):
        print(f"bench: {failed} call(s) failed or timed out", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("ws", "http", "both"), default="both")
    parser.add_argument("--rate", type=float, help="offered calls per second (required unless --smoke)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="sent but unmeasured seconds (default 1)")
    parser.add_argument("--connections", type=int, default=8, help="connections per run (default 8)")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="a call later than this (from its schedule) failed"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1 s at a low rate, both transports; fails only on failed calls"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        options = Options(("ws", "http"), SMOKE_RATE, SMOKE_SECONDS, 0.0, SMOKE_CONNECTIONS, args.timeout)
    else:
        if args.rate is None:
            parser.error("--rate is required (or --smoke)")
        transports = ("ws", "http") if args.transport == "both" else (args.transport,)
        options = Options(transports, args.rate, args.seconds, args.warmup, args.connections, args.timeout)
    if options.rate <= 0 or options.seconds <= 0 or options.connections < 1 or options.warmup < 0:
        parser.error("--rate and --seconds must be > 0, --connections >= 1, --warmup >= 0")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main_async(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
