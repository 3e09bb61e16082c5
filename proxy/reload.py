"""Hot reload: the config file read again and its backends applied while the gateway serves.

Three things ask for it: a change of the file (``ConfigWatcher`` looks at its modification time and size,
every ``reload.watch_seconds``), SIGHUP, and ``POST /admin/reload``. A file that does not load keeps the
running config and is logged with its reason. What changes is ``mcpServers``: backends the file no longer
has, or has changed, are stopped; new and changed ones are started; sessions are never dropped, and a
session's calls to an untouched backend never notice. A changed ``plugins`` list (plugins added, removed,
reordered, or with other options) is built anew and put in force for the next message; the old plugins
are closed once the calls in flight at the switch have ended (their state, such as cache entries, starts
afresh). Other sections (listen, virtual servers, ...) take effect after a restart, and a reload that
sees them changed says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from proxy import heap
from proxy.chain import NamedPlugin
from proxy.config import GatewayConfig, load
from proxy.errors import BackendUnavailable, ConfigError
from proxy.gateway import Gateway, close_plugins, start_plugins
from proxy.plugin_loader import build_plugins

log = logging.getLogger("portico.reload")

# How long retired plugins wait for the calls that were in flight when the chain was replaced.
_RETIRE_SECONDS = 60.0

_RESTART_SECTIONS = (
    "listen",
    "namespacing",
    "request_state",
    "virtual_servers",
    "tracing",
    "admin",
    "redis",
)


class Reloader:
    """Applies the config file to one running gateway, one reload at a time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def source(self) -> str | None:
        source = self.gateway.config.source
        return None if source == "<memory>" else source

    async def reload(self) -> dict[str, Any]:
        """Read the file and apply it; raises ``ConfigError`` (the running config stays) if it is bad."""
        if self.source is None:
            raise ConfigError("the gateway was not started from a config file, so there is nothing to reload")
        fresh = await asyncio.to_thread(load, self.source)
        async with self._lock:
            # Built before anything changes: a plugin that cannot be built leaves all as it was.
            plugins = build_plugins(fresh) if fresh.plugins != self.gateway.config.plugins else None
            outcome = await apply_backends(self.gateway, fresh)
            outcome["plugins_replaced"] = plugins is not None
            if plugins is not None:
                await start_plugins(plugins)
                self._put_in_force(plugins, fresh)
        outcome["restart_needed"] = [
            section
            for section in _RESTART_SECTIONS
            if getattr(fresh, section) != getattr(self.gateway.config, section)
        ]
        if plugins is None:
            # Once per reload, after every removed backend stopped; replaced plugins settle it when
            # they have been retired (``_retire``), which frees both.
            heap.settle()
        log.info("config reloaded from %s: %s", self.source, outcome)
        return outcome

    def _put_in_force(self, plugins: list[NamedPlugin], fresh: GatewayConfig) -> None:
        old = self.gateway.replace_plugins(plugins)
        self.gateway.config = self.gateway.config.model_copy(update={"plugins": fresh.plugins})
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, plugins: list[NamedPlugin]) -> None:
        # Calls in flight at the switch may still be inside the old plugins: let them end first.
        try:
            await self.gateway.drain(_RETIRE_SECONDS)
        finally:
            # Also when the gateway stops meanwhile (close() cancels this): they are closed either way.
            await asyncio.shield(close_plugins(plugins))
        heap.settle()

    async def close(self) -> None:
        """The gateway stops: retired plugins still waiting are closed now."""
        tasks = list(self._retiring)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reload_logged(self, why: str) -> None:
        """A reload nobody waits for (a signal, a file change): problems are logged, never raised."""
        try:
            log.info("reloading the config (%s)", why)
            await self.reload()
        except ConfigError as exc:
            log.error("the config was not reloaded, the running one stays: %s", exc.message)
        except Exception:
            log.exception("reloading the config failed; the running one stays")


async def apply_backends(gateway: Gateway, fresh: GatewayConfig) -> dict[str, Any]:
    """Stop the backends the file no longer has (or has changed), start those it has anew. The file is the
    truth: backends registered at run time and absent from it are removed."""
    wanted = fresh.enabled_backends()
    running = {name: backend.config for name, backend in gateway.backends.items()}
    changed = [name for name in running if name in wanted and wanted[name] != running[name]]
    removed = [name for name in running if name not in wanted]
    added = [name for name in wanted if name not in running]
    failed: dict[str, str] = {}
    for name in (*removed, *changed):
        with contextlib.suppress(KeyError):  # deregistered meanwhile
            await gateway.remove_backend(name)
    for name in (*changed, *added):
        try:
            await gateway.add_backend(name, wanted[name])
        except KeyError:
            failed[name] = "registered meanwhile"
        except (BackendUnavailable, ConfigError) as exc:
            failed[name] = exc.message
    return {"added": added, "removed": removed, "changed": changed, "failed": failed}


class ConfigWatcher:
    """Reloads when the config file's modification time or size changes (looked at every ``seconds``)."""

    def __init__(self, reloader: Reloader, seconds: float) -> None:
        self.reloader = reloader
        self.seconds = seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.reloader.source is not None and self.seconds > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch(self.reloader.source))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, path: str) -> None:
        seen = await asyncio.to_thread(_stamp, path)
        while True:
            await asyncio.sleep(self.seconds)
            stamp = await asyncio.to_thread(_stamp, path)
            if stamp != seen and stamp is not None:
                seen = stamp
                await self.reloader.reload_logged("the config file changed")


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None  # being replaced (editors write a new file and rename it): look again next time
    return status.st_mtime_ns, status.st_size
