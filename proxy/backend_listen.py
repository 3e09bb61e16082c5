"""The ``subscriptions/listen`` stream the gateway keeps open to a modern backend.

A modern (2026-07-28) backend announces list changes and resource updates only on a listen stream, and
only what the stream's filter asked for. The gateway keeps one stream per modern backend, on the catalog
link: it asks for the list changes of every kind the backend offers, and for updates of the resources
that clients have subscribed to. A stream's filter is fixed when it opens, so a new set of resources
opens a new stream and closes the old one only once the new one is acknowledged: no update falls into
the gap. A stream the backend ends (gracefully, or by breaking it) while the link lives on is opened
again after a moment; one it refuses (an error reply) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from proxy.errors import BackendUnavailable
from proxy.upstream import UpstreamLink

log = logging.getLogger("portico.backend")

# How long a new stream may take to be acknowledged before the old one is closed anyway.
_ACK_SECONDS = 5.0
# How long to wait before listening again when the backend ended the stream while the link lives on.
_RELISTEN_SECONDS = 1.0
_LIST_FILTERS = {
    "tools": "toolsListChanged",
    "prompts": "promptsListChanged",
    "resources": "resourcesListChanged",
}


class UpstreamListener:
    """One backend's listen stream; see the module docstring."""

    def __init__(self, backend: str, link: UpstreamLink, capabilities: dict[str, Any]) -> None:
        self._backend = backend
        self._link = link
        self._lists = {flag: True for kind, flag in _LIST_FILTERS.items() if kind in capabilities}
        resources = capabilities.get("resources")
        self.subscribable = isinstance(resources, dict) and bool(resources.get("subscribe"))
        self._uris: frozenset[str] = frozenset()
        self._stream: asyncio.Task[None] | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._relisten: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reopen()

    async def watch(self, uris: frozenset[str]) -> None:
        """Listen for updates of exactly these resources (and the list changes, as ever)."""
        if uris != self._uris:
            self._uris = uris
            await self._reopen()

    def acknowledged(self, subscription_id: object) -> None:
        ack = self._acks.get(subscription_id) if isinstance(subscription_id, int) else None
        if ack is not None and not ack.done():
            ack.set_result(None)

    async def close(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream

    async def _reopen(self) -> None:
        async with self._lock:
            notifications: dict[str, Any] = dict(self._lists)
            if self._uris and self.subscribable:
                notifications["resourceSubscriptions"] = sorted(self._uris)
            old, self._stream = self._stream, None
            if notifications:
                request_id = self._link.new_id()
                ack = asyncio.get_running_loop().create_future()
                self._acks[request_id] = ack
                self._stream = asyncio.get_running_loop().create_task(
                    self._listen(request_id, {"notifications": notifications}, ack)
                )
                try:
                    await asyncio.wait_for(asyncio.shield(ack), _ACK_SECONDS)
                except TimeoutError:
                    log.warning("backend %s did not acknowledge subscriptions/listen in time", self._backend)
                finally:
                    self._acks.pop(request_id, None)
            if old is not None:
                old.cancel()

    async def _listen(self, request_id: int, params: dict[str, Any], ack: asyncio.Future[None]) -> None:
        try:
            reply = await self._link.request(
                "subscriptions/listen", params, timeout=None, request_id=request_id
            )
        except BackendUnavailable:
            reply = {}
        finally:
            if not ack.done():
                ack.set_result(None)
        if "error" in reply:
            log.warning(
                "backend %s refused subscriptions/listen: %s", self._backend, reply["error"].get("message")
            )
            return
        if self._link.closed or self._stream is not asyncio.current_task():
            return
        log.info("backend %s ended its listen stream; listening again", self._backend)
        await asyncio.sleep(_RELISTEN_SECONDS)
        if self._stream is asyncio.current_task() and not self._link.closed:
            self._relisten = asyncio.get_running_loop().create_task(self._reopen())
