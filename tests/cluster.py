"""A real cluster for the tests: one redis-server, three ``python -m proxy serve`` instances sharing it
(the same config but for the port), and nginx in front of them, round-robin, as an operator runs several
gateways behind a load balancer (README, "Running several instances").

    async with gateway_cluster(tmp_path, plugins=[HEADER_AUTH, {"name": "ratelimit", ...}]) as cluster:
        cluster.mcp                       # http://127.0.0.1:PORT/mcp, through nginx
        cluster.ws                        # ws://127.0.0.1:PORT/mcp, through nginx
        cluster.instances[0].mcp          # one instance's own endpoint, bypassing nginx
        cluster.answered_by(response.headers)   # the instance nginx gave that request to
        await cluster.kill(0)             # SIGKILL; cluster.stop(0) sends SIGTERM and waits

``configure(settings, workdir)`` may change an instance's settings before it starts (each instance has a
workdir of its own for its files; ``cluster.shared`` is a directory for files every instance reads).
redis-server and nginx come from Debian's packages: ``bash tests/services/setup.sh`` installs them.
Everything is bounded in time and stopped on the way out (the instances' stdio backends included).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.conftest import everything
from tests.gateway_process import GatewayProcess, serve_gateway
from tests.ports import free_port
from tests.redis_server import RedisServer

SETUP_HINT = "run bash tests/services/setup.sh"
# nginx adds the address of the instance that answered to every response (a test-only convenience: a
# production load balancer has no reason to tell clients which instance served them).
UPSTREAM_HEADER = "X-Portico-Upstream"
NGINX_READY_SECONDS = 10.0
STOP_SECONDS = 15.0
# An instance stopped with SIGTERM waits this long for calls in flight (listen.drain_seconds).
DRAIN_SECONDS = 2.0

Settings = dict[str, Any]
Configure = Callable[[Settings, Path], None]


def nginx_binary() -> str:
    """The nginx program (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(f"nginx is not installed: {SETUP_HINT}")
    return found


def base_settings(redis_url: str, plugins: Sequence[str | Mapping[str, Any]]) -> Settings:
    """What every instance runs: the shared Redis, the everything fixture as its stdio backend (``ev``),
    and the plugins the test asks for."""
    return {
        "listen": {"host": "127.0.0.1", "drain_seconds": DRAIN_SECONDS},
        "redis": {"url": redis_url},
        "mcpServers": {"ev": everything("cluster")},
        "plugins": [copy.deepcopy(plugin) for plugin in plugins],
    }


@dataclass
class Instance:
    """One gateway process of the cluster."""

    index: int
    workdir: Path
    gateway: GatewayProcess
    # Its stdio backends as seen while it ran ({pid: command line}), so none outlives the cluster.
    seen_children: dict[int, bytes] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """host:port, as nginx's $upstream_addr names it."""
        return self.gateway.base.removeprefix("http://")

    @property
    def base(self) -> str:
        return self.gateway.base

    @property
    def mcp(self) -> str:
        return self.gateway.mcp

    @property
    def ws(self) -> str:
        return self.gateway.url

    @property
    def pid(self) -> int:
        return self.gateway.process.pid

    @property
    def running(self) -> bool:
        return self.gateway.process.poll() is None

    def children(self) -> dict[int, bytes]:
        """The processes this instance started (its stdio backends), by pid, with their command lines."""
        found: dict[int, bytes] = {}
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                text = Path(f"/proc/{self.pid}/task/{task}/children").read_text()
                for pid in map(int, text.split()):
                    with contextlib.suppress(OSError):
                        found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
        self.seen_children.update(found)
        return found


class Nginx:
    """nginx in the foreground with a config of its own in ``directory``: round-robin over ``upstreams``
    on a free loopback port, HTTP/1.1 keep-alive to them, WebSocket upgrades passed through, responses
    unbuffered (SSE)."""

    def __init__(self, directory: Path, upstreams: Sequence[str]) -> None:
        self.directory = directory
        self.upstreams = list(upstreams)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"
        self._process: asyncio.subprocess.Process | None = None

    def config(self, balancer: str | None = None) -> str:
        """The whole nginx.conf: this directory's paths around ``balancer`` (the http block's directives
        that balance; by default the harness's own, below)."""
        root = self.directory
        # Running as root, nginx would hand its workers to "nobody", who cannot reach a private temp dir.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        return f"""
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {self.error_log} notice;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr '
                        'upstream_status=$upstream_status time=$request_time';
    access_log {self.access_log} upstream;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{self.balancer() if balancer is None else balancer}
}}
"""

    def balancer(self) -> str:
        servers = "\n".join(
            f"    server {address} max_fails=1 fail_timeout=10s;" for address in self.upstreams
        )
        return f"""
# "Connection: upgrade" only for a WebSocket handshake; otherwise none, so upstream keep-alive works.
map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      '';
}}

upstream portico {{
{servers}
    keepalive 16;
}}

server {{
    listen 127.0.0.1:{self.port};
    location / {{
        proxy_pass http://portico;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        # SSE: every event reaches the client when the gateway writes it.
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_connect_timeout 2s;
        # Above the gateway's WebSocket heartbeat (listen.heartbeat_seconds, 20 s by default).
        proxy_read_timeout 60s;
        proxy_send_timeout 60s;
        # Another instance is tried when one cannot be reached; a POST that reached an instance is not
        # sent again (no non_idempotent): a tools/call may have done its work before the instance died.
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries 3;
        add_header {UPSTREAM_HEADER} $upstream_addr always;
    }}
}}
"""

    def check(self, balancer: str) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on a config with ``balancer`` in its http block (e.g. the README's example)."""
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config(balancer))
        return subprocess.run(
            [nginx_binary(), "-t", *self._paths(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def _paths(self, conf: Path) -> list[str]:
        return ["-p", f"{self.directory}/", "-e", str(self.error_log), "-c", str(conf)]

    async def __aenter__(self) -> Nginx:
        binary = nginx_binary()
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        self._process = await asyncio.create_subprocess_exec(
            binary,
            *self._paths(conf),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group, so its worker can be ended with it if it will not stop.
            start_new_session=True,
        )
        try:
            await self._until_listening()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _until_listening(self) -> None:
        assert self._process is not None
        async with asyncio.timeout(NGINX_READY_SECONDS):
            while True:
                if self._process.returncode is not None:
                    log = self.error_log.read_text() if self.error_log.exists() else ""
                    raise RuntimeError(f"nginx exited ({self._process.returncode}): {log[-2000:]}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()  # nginx's fast shutdown
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


@dataclass
class Cluster:
    redis: RedisServer
    nginx: Nginx
    instances: list[Instance]
    shared: Path

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, nginx."""
        return self.nginx.url

    @property
    def mcp(self) -> str:
        return self.nginx.url + "/mcp"

    @property
    def ws(self) -> str:
        return self.mcp.replace("http://", "ws://", 1)

    def answered_by(self, headers: Mapping[str, str]) -> Instance:
        """The instance that answered, from the header nginx adds (the last address it tried)."""
        tried = headers.get(UPSTREAM_HEADER)
        assert tried, f"nginx did not say which instance answered: {dict(headers)}"
        return self.at(tried.replace(" : ", ", ").split(", ")[-1])

    def at(self, address: str) -> Instance:
        for instance in self.instances:
            if instance.address == address:
                return instance
        raise AssertionError(f"{address} is no instance of this cluster")

    def serving_backend(self, backend_pid: int) -> Instance:
        """The instance whose stdio backend has this pid (the everything fixture's ``whoami`` names it),
        which tells which instance serves a WebSocket connection."""
        for instance in self.instances:
            if backend_pid in instance.children():
                return instance
        raise AssertionError(f"no running instance has a backend with pid {backend_pid}")

    async def kill(self, index: int) -> None:
        """SIGKILL instance ``index``, as a crash would end it; returns once it is gone."""
        instance = self.instances[index]
        instance.children()  # remembered, so the orphaned backends are ended with the cluster
        instance.gateway.process.kill()
        await _exited(instance.gateway)

    async def stop(self, index: int) -> None:
        """SIGTERM instance ``index`` (it drains, then exits); returns once it is gone."""
        instance = self.instances[index]
        instance.children()
        instance.gateway.process.terminate()
        await _exited(instance.gateway)


async def _exited(gateway: GatewayProcess) -> None:
    async with asyncio.timeout(STOP_SECONDS):
        while gateway.process.poll() is None:
            await asyncio.sleep(0.02)


def _end_orphans(instances: Sequence[Instance]) -> None:
    """A killed instance's stdio backends see their stdin close and exit by themselves; any still there
    (the same pid with the same command line) is killed."""
    for instance in instances:
        for pid, command in instance.seen_children.items():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == command:
                    os.kill(pid, signal.SIGKILL)


async def _start_instances(
    stacks: list[ExitStack], directory: Path, settings: Settings, count: int, configure: Configure | None
) -> list[Instance]:
    """Start ``count`` gateways at once (serve_gateway waits in a thread each), each with its own workdir."""

    def start(index: int) -> Instance:
        workdir = directory / f"instance-{index}"
        workdir.mkdir()
        mine = copy.deepcopy(settings)
        if configure is not None:
            configure(mine, workdir)
        gateway = stacks[index].enter_context(serve_gateway(workdir, mine))
        return Instance(index, workdir, gateway)

    # Every start is let finish (or fail) before any failure is raised, so none is left starting.
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(start, index) for index in range(count)), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if isinstance(outcome, Instance)]


async def _stop_instances(stacks: list[ExitStack], instances: Sequence[Instance]) -> None:
    """SIGTERM every instance still running, in parallel; then end whatever a killed one left behind.
    serve_gateway's own check (no traceback on stderr) fails the test if an instance printed one."""
    for instance in instances:
        if instance.running:
            instance.children()
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(stack.close) for stack in stacks), return_exceptions=True
    )
    _end_orphans(instances)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


@asynccontextmanager
async def gateway_cluster(
    directory: Path,
    plugins: Sequence[str | Mapping[str, Any]] = (),
    *,
    instances: int = 3,
    configure: Configure | None = None,
) -> AsyncIterator[Cluster]:
    """Redis, ``instances`` gateways on it, nginx in front; all stopped on the way out."""
    nginx_binary()  # refuse before starting anything
    if shutil.which("redis-server") is None:
        raise RuntimeError(f"redis-server is not installed: {SETUP_HINT}")
    shared = directory / "shared"
    shared.mkdir(parents=True)
    async with AsyncExitStack() as resources:
        redis = await resources.enter_async_context(RedisServer())
        stacks = [ExitStack() for _ in range(instances)]
        started: list[Instance] = []

        async def stop_gateways() -> None:
            await _stop_instances(stacks, started)

        resources.push_async_callback(stop_gateways)
        started += await _start_instances(
            stacks, directory, base_settings(redis.url, plugins), instances, configure
        )
        balancer = directory / "nginx"
        balancer.mkdir()
        nginx = await resources.enter_async_context(Nginx(balancer, [i.address for i in started]))
        yield Cluster(redis, nginx, started, shared)
