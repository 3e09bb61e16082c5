"""The ``portico`` command: ``serve``, ``check``, ``status``, ``token``, ``policy`` and ``--version``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from plugins.auth.cli import add_token_commands, run_token_command
from plugins.policy.cli import add_policy_commands, run_policy_command
from proxy import __version__, config, heap
from proxy.app import build_app
from proxy.errors import ConfigError
from proxy.gateway import Gateway
from proxy.plugin_loader import build_plugins, plugin_options
from proxy.reload import Reloader
from proxy.status import UNREACHABLE, run_status
from proxy.transports.app_keys import RELOADER

DEMO_CONFIG = Path(__file__).parent / "demo" / "portico.yaml"
log = logging.getLogger("portico")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "status":
        return _status_command(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command in ("token", "policy"):
        return _plugin_command(args)
    try:
        cfg = config.load(args.config)
        plugins = build_plugins(cfg)
        if args.command == "check":
            print(_describe(cfg, [p.name for p in plugins]))
            return 0
        if args.host:
            cfg = cfg.model_copy(update={"listen": cfg.listen.model_copy(update={"host": args.host})})
        if args.port is not None:
            cfg = cfg.model_copy(update={"listen": cfg.listen.model_copy(update={"port": args.port})})
        _run(Gateway(cfg, plugins))
    except ConfigError as exc:
        print(f"portico: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"portico: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _status_command(args: argparse.Namespace) -> int:
    code, text = run_status(args.url, args.timeout)
    print(text, file=sys.stderr if code == UNREACHABLE else sys.stdout)
    return code


def _plugin_command(args: argparse.Namespace) -> int:
    """``token`` and ``policy``: they work with the auth and policy plugins' files, as configured."""
    try:
        cfg = config.load(args.config)
        if args.command == "token":
            _check_backends(cfg, getattr(args, "backends", None))
            return run_token_command(args, plugin_options(cfg, "auth"))
        return run_policy_command(args, plugin_options(cfg, "policy"))
    except ConfigError as exc:
        print(f"portico: {exc.message}", file=sys.stderr)
        return 2


def _check_backends(cfg: config.GatewayConfig, backends: tuple[str, ...] | None) -> None:
    unknown = [name for name in backends or () if name not in cfg.mcpServers]
    if unknown:
        raise ConfigError(f"{cfg.source} has no backend named {', '.join(map(repr, unknown))}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portico", description="A WebSocket-first MCP gateway.")
    parser.add_argument("--version", action="version", version=f"portico {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=str(DEMO_CONFIG), help="YAML or JSON file (default: the bundled demo)"
    )
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command")
    for name, text in (
        ("serve", "run the gateway"),
        ("check", "validate a config and show what it resolves to"),
    ):
        sub = commands.add_parser(name, help=text, parents=[common])
        if name == "serve":
            sub.add_argument("--host", help="address to listen on (overrides listen.host)")
            sub.add_argument(
                "--port", type=int, help="port to listen on, 0 for any free one (overrides listen.port)"
            )
    status = commands.add_parser(
        "status", help="ask a running gateway: backends up or down, tools, sessions (exit 1: not ready)"
    )
    status.add_argument("--url", required=True, help="the gateway's base URL, http://HOST:PORT")
    status.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for each answer")
    add_token_commands(commands, parents=[common])
    add_policy_commands(commands, parents=[common])
    return parser


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _describe(cfg: config.GatewayConfig, plugin_names: list[str]) -> str:
    lines = [f"config: {cfg.source}", f"listen: ws://{cfg.listen.host}:{cfg.listen.port}/mcp", "backends:"]
    for name, backend in cfg.mcpServers.items():
        state = " (disabled)" if backend.disabled else ""
        # Header and environment values are secrets: only their names are shown.
        if isinstance(backend, config.StdioBackendConfig):
            target = " ".join([backend.command, *backend.args])
            if backend.replicas > 1:
                target += f" (x{backend.replicas})"
            env = f" (env: {', '.join(backend.env)})" if backend.env else ""
            lines.append(f"  {name}: stdio, session {backend.session}{state}: {target}{env}")
        else:
            extras = [f"headers: {', '.join(backend.headers)}"] if backend.headers else []
            if backend.auth is not None:
                extras.append(f"auth: {backend.auth.type} at {backend.auth.token_url}")
            shown = f" ({'; '.join(extras)})" if extras else ""
            where = ", ".join(backend.urls or (backend.url,))
            lines.append(f"  {name}: {backend.transport}, session {backend.session}{state}: {where}{shown}")
    rules = cfg.namespacing
    lines.append(
        f"namespacing: mode {rules.mode}, separator {rules.separator!r}, "
        f"tool names <= {rules.max_tool_name_length} characters"
    )
    lines.append("chain: " + (" -> ".join(plugin_names) if plugin_names else "(empty)"))
    return "\n".join(lines)


def _run(gateway: Gateway) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(gateway))


async def _serve(gateway: Gateway) -> None:
    app = build_app(gateway)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    listen = gateway.config.listen
    site = web.TCPSite(runner, listen.host, listen.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # Started, backends and all: what lives now lives as long as the process (proxy.heap).
    heap.manage()
    port = _bound_port(runner, listen.port)
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    live = ", ".join(f"{b.name} ({len(b.lists.tools)} tools)" for b in gateway.live_backends()) or "none"
    print(f"Portico {__version__} listening on ws://{host}:{port}/mcp  (backends: {live})", flush=True)
    if gateway.config.admin.enabled and gateway.config.admin.console:
        print(f"Web console: http://{host}:{port}/console/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: read the config file again and apply its backends, as operators expect of a daemon.
    reloads: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGHUP, _reload_soon, app[RELOADER], reloads)
    try:
        await stop.wait()
    finally:
        # cleanup() closes the listener first, then runs the app's on_shutdown: the drain of the calls
        # in flight (listen.drain_seconds), the 1001 close of every WebSocket, then the backends stop.
        log.info(
            "shutting down: no new connections; calls in flight have %.0f s to finish",
            listen.drain_seconds,
        )
        await runner.cleanup()


def _reload_soon(reloader: Reloader, running: set[asyncio.Task[None]]) -> None:
    task = asyncio.get_running_loop().create_task(reloader.reload_logged("SIGHUP"))
    running.add(task)
    task.add_done_callback(running.discard)


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        with contextlib.suppress(TypeError, IndexError):
            return int(address[1])
    return configured
