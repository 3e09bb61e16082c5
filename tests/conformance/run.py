"""Run the official MCP conformance suite's server scenarios against our fixture, directly and
through the gateway, and fail when the gateway's results differ from the direct ones.

    .venv/bin/python -m tests.conformance.run [--write-docs] [--jobs N] [--path NAME ...]

Each path starts its processes once and runs the conformance CLI once per spec version (the CLI
runs all of a version's scenarios in one go); independent paths run concurrently, ``--jobs`` at a
time. Results, logs and the gateway's config and stderr are kept in ``.cache/conformance/run/``.
The exit status is 1 when a scenario fails directly without being listed in
``expected-failures.yaml``, when a listed scenario passes, when a gateway path's result differs
from the direct one without ``expected-differences.yaml`` listing that difference (only the checks
an entry names, if it names any), when a listed difference no longer occurs, or when something
could not run; 2 when the suite is not installed.
See ``docs/conformance.md`` (``--write-docs`` rewrites it from the run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from mcp import Client, StdioServerParameters

from tests.conformance.processes import (
    FIXTURE,
    PYTHON,
    ROOT,
    StartError,
    fixture_over_http,
    gateway,
    gateway_accepts,
    gateway_config,
    http_backend,
    run_bounded,
    stdio_backend,
)
from tests.conformance.report import Run, docs, terminal
from tests.conformance.results import (
    DIRECT,
    Results,
    judge,
    load_expected_differences,
    load_expected_failures,
    read_results,
)

SPEC_VERSIONS: Final = ("2025-11-25", "2026-07-28")
PATHS: Final = {
    DIRECT: "the fixture over Streamable HTTP, no gateway",
    "gateway/stdio": "gateway → the fixture as a stdio backend",
    "gateway/streamable-http": "gateway → the fixture over Streamable HTTP",
    "gateway/legacy-only": (
        "gateway → a `--legacy-only` fixture (stdio, `session: per-client`): a handshake-era backend"
    ),
    "gateway/modern": "gateway → a dual-era fixture over Streamable HTTP, declared `era: modern`",
}

INTEROP: Final = ROOT / ".cache" / "interop"
NODE: Final = INTEROP / "node-bin" / "node"
PACKAGE: Final = INTEROP / "node" / "node_modules" / "@modelcontextprotocol" / "conformance"
CLI: Final = PACKAGE / "dist" / "index.js"
SETUP: Final = ROOT / "tests" / "interop" / "setup.sh"
RUN_DIR: Final = ROOT / ".cache" / "conformance" / "run"
EXPECTED_FAILURES: Final = Path(__file__).with_name("expected-failures.yaml")
EXPECTED_DIFFERENCES: Final = Path(__file__).with_name("expected-differences.yaml")
DOCS: Final = ROOT / "docs" / "conformance.md"
CLI_TIMEOUT: Final = 150.0  # seconds for one CLI run (all scenarios of one spec version)
ERA_PROBE_TIMEOUT: Final = 30.0


class Runner:
    """One run: starts each path's processes, runs the CLI against them, collects the results."""

    def __init__(self, paths: list[str], jobs: int) -> None:
        self.paths = paths
        self.slots = asyncio.Semaphore(jobs)
        self.results: dict[tuple[str, str], Results] = {}
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.check_fixture_eras())
            # The slowest path first: per-client sessions start a backend process per modern request.
            for path in sorted(self.paths, key=lambda path: path != "gateway/legacy-only"):
                group.create_task(self.run_path(path))

    async def run_path(self, path: str) -> None:
        logs = RUN_DIR / path.replace("/", "-")
        async with self.slots:
            try:
                async with self.target(path, logs) as url:
                    for version in SPEC_VERSIONS:
                        self.results[(version, path)] = await self.run_cli(path, url, version, logs / version)
            except StartError as exc:
                self.unavailable[path] = str(exc)

    @contextlib.asynccontextmanager
    async def target(self, path: str, logs: Path) -> AsyncIterator[str]:
        """Start what ``path`` tests and yield the URL to point the conformance CLI at."""
        async with contextlib.AsyncExitStack() as stack:
            if path == DIRECT:
                yield await stack.enter_async_context(fixture_over_http(logs))
                return
            if path == "gateway/stdio":
                backend = stdio_backend()
            elif path == "gateway/legacy-only":
                backend = stdio_backend(legacy_only=True)
            elif path == "gateway/streamable-http":
                backend = http_backend(await stack.enter_async_context(fixture_over_http(logs)))
            else:  # gateway/modern
                fixture_url = await stack.enter_async_context(fixture_over_http(logs))
                backend = await self.modern_backend(fixture_url, logs)
            yield await stack.enter_async_context(gateway(gateway_config(backend), logs))

    async def modern_backend(self, url: str, logs: Path) -> dict[str, Any]:
        """The backend entry declaring ``era: modern``, or without the key if the gateway refuses it."""
        backend = http_backend(url, era="modern")
        accepted, said = await gateway_accepts(gateway_config(backend), logs)
        if accepted:
            self.notes.append("gateway/modern: `portico check` accepts the backend key `era: modern`.")
            return backend
        refusal = next((line for line in said.splitlines() if ".era:" in line), None)
        if refusal is None:
            raise StartError(f"portico check refused the config: {said}")
        self.notes.append(
            f"gateway/modern: `portico check` refuses `era: modern` ({refusal.strip()}), so this path "
            "runs without the key and the gateway detects the backend's era itself."
        )
        return http_backend(url)

    async def run_cli(self, path: str, url: str, version: str, out: Path) -> Results:
        argv = [str(NODE), str(CLI), "server", "--url", url, "--suite", "all", "--spec-version", version]
        log = out / "cli.log"
        status = await run_bounded([*argv, "-o", str(out)], log, CLI_TIMEOUT)
        if status == -1:
            self.unavailable[path] = (
                f"the conformance CLI took over {CLI_TIMEOUT:.0f} s at {version} (see {log})"
            )
        return read_results(out, log.read_text(errors="replace"))

    async def check_fixture_eras(self) -> None:
        """The premise of gateway/legacy-only: mcp's ``Client(mode="auto")`` finds 2026-07-28 on
        the fixture and 2025-11-25 on a ``--legacy-only`` one, over both transports."""
        found = {}
        for transport in ("stdio", "streamable-http"):
            for legacy_only in (False, True):
                try:
                    found[(transport, legacy_only)] = await fixture_era(transport, legacy_only)
                except Exception as exc:  # any failure to connect is the finding
                    found[(transport, legacy_only)] = f"no connection ({type(exc).__name__}: {exc})"
        wrong = [
            f"{transport}{' --legacy-only' if legacy else ''} speaks {version}"
            for (transport, legacy), version in found.items()
            if version != ("2025-11-25" if legacy else "2026-07-28")
        ]
        if wrong:
            self.unavailable["fixture era check"] = "; ".join(wrong)
        else:
            self.notes.append(
                'mcp `Client(mode="auto")` negotiates 2026-07-28 with the fixture and 2025-11-25 with a '
                "`--legacy-only` one, over stdio and Streamable HTTP (checked on every run)."
            )


async def fixture_era(transport: str, legacy_only: bool) -> str:
    """The protocol version mcp's ``Client(mode="auto")`` negotiates with a fixture instance."""
    flags = ["--legacy-only"] if legacy_only else []
    async with asyncio.timeout(ERA_PROBE_TIMEOUT):
        if transport == "stdio":
            params = StdioServerParameters(
                command=PYTHON, args=[str(FIXTURE), "--transport", "stdio", *flags]
            )
            async with Client(params, mode="auto") as client:
                return str(client.protocol_version)
        logs = RUN_DIR / "era-probe" / ("legacy-only" if legacy_only else "dual-era")
        async with (
            fixture_over_http(logs, legacy_only=legacy_only) as url,
            Client(url, mode="auto") as client,
        ):
            return str(client.protocol_version)


def installed_version() -> tuple[str | None, str]:
    """The installed suite's version, or None and why it cannot be used (missing, or not the
    version ``tests/interop/setup.sh`` pins)."""
    if not NODE.exists() or not CLI.exists():
        return None, f"the conformance suite is not installed ({CLI.relative_to(ROOT)})"
    version = str(json.loads((PACKAGE / "package.json").read_text())["version"])
    pinned = re.search(r"@modelcontextprotocol/conformance@([^\"\s]+)", SETUP.read_text())
    if pinned is None or pinned.group(1) != version:
        return None, f"the installed conformance suite is {version}, not the version setup.sh pins"
    return version, ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite {DOCS.relative_to(ROOT)}")
    parser.add_argument("--jobs", type=int, default=2, help="paths run at once (default 2)")
    parser.add_argument("--path", action="append", choices=list(PATHS), help="run only these paths")
    args = parser.parse_args()
    if args.path and DIRECT not in args.path:
        args.path.insert(0, DIRECT)  # everything is compared with direct
    if args.write_docs and args.path and set(args.path) != set(PATHS):
        parser.error("--write-docs needs every path")
    return args


def main() -> int:
    args = parse_args()
    version, why = installed_version()
    if version is None:
        print(f"conformance: {why}; run `make interop-setup`", file=sys.stderr)
        return 2
    try:
        expected = load_expected_failures(EXPECTED_FAILURES)
        expected_differences = load_expected_differences(
            EXPECTED_DIFFERENCES, [path for path in PATHS if path != DIRECT], SPEC_VERSIONS
        )
    except ValueError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    paths = [path for path in PATHS if not args.path or path in args.path]
    runner = Runner(paths, args.jobs)
    started = time.monotonic()
    print(f"conformance {version}: {len(paths)} paths x {len(SPEC_VERSIONS)} spec versions ...", flush=True)
    asyncio.run(runner.run())
    verdict = judge(
        runner.results, SPEC_VERSIONS, paths[1:], expected, runner.unavailable, expected_differences
    )
    run = Run(
        conformance_version=version,
        spec_versions=SPEC_VERSIONS,
        paths={path: PATHS[path] for path in paths},
        results=runner.results,
        expected=expected,
        verdict=verdict,
        notes=runner.notes,
        seconds=time.monotonic() - started,
    )
    print(terminal(run))
    print(f"evidence: {RUN_DIR.relative_to(ROOT)}/")
    if args.write_docs:
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(docs(run))
        print(f"wrote {DOCS.relative_to(ROOT)}")
    return 1 if verdict.problems else 0


if __name__ == "__main__":
    sys.exit(main())
