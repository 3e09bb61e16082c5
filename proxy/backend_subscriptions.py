"""Resource subscriptions of one backend's clients.

On a shared link the backend sees one subscription per URI, however many clients asked for it; on a
per-client link each client's own. A modern backend has no ``resources/subscribe``: the URIs are the filter
of its listen stream (``proxy.backend_listen``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from proxy import jsonrpc
from proxy.backend_events import ClientIdentity
from proxy.errors import BackendUnavailable, InvalidParams
from proxy.jsonrpc import Message

if TYPE_CHECKING:
    from proxy.backend import Backend


class ResourceSubscriptions:
    """Who is subscribed to which of one backend's resources (``by_uri``: URI to session ids)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.by_uri: dict[str, set[str]] = {}

    async def subscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        backend = self._backend
        listener = backend.listener
        if listener is not None:
            if not listener.subscribable:
                raise InvalidParams(
                    f"Invalid params: backend {backend.name!r} offers no resource subscriptions"
                )
            self.by_uri.setdefault(uri, set()).add(session.id)
            await listener.watch(frozenset(self.by_uri))
            return jsonrpc.result(None, {})
        if backend.shared and self.by_uri.get(uri):
            reply = jsonrpc.result(None, {})
        else:
            reply = await backend.call(session, "resources/subscribe", {"uri": uri}, timeout)
        if "result" in reply:
            self.by_uri.setdefault(uri, set()).add(session.id)
        return reply

    async def unsubscribe(self, session: ClientIdentity, uri: str, timeout: float) -> Message:
        if not self._backend.shared:
            self.by_uri.get(uri, set()).discard(session.id)
            return await self._backend.call(session, "resources/unsubscribe", {"uri": uri}, timeout)
        await self.drop(session.id, uri)
        return jsonrpc.result(None, {})

    async def forget(self, session_id: str) -> None:
        """A session ended: drop all its subscriptions."""
        for uri in [uri for uri, ids in self.by_uri.items() if session_id in ids]:
            await self.drop(session_id, uri)

    async def drop(self, session_id: str, uri: str) -> None:
        """Unsubscribe one session; the backend hears of it once nobody is subscribed any more."""
        backend = self._backend
        subscribers = self.by_uri.get(uri, set())
        subscribers.discard(session_id)
        if subscribers:
            return
        self.by_uri.pop(uri, None)
        if backend.listener is not None:
            await backend.listener.watch(frozenset(self.by_uri))
            return
        link = backend.link_of(session_id)
        if link is not None and not link.closed:
            with contextlib.suppress(BackendUnavailable):
                await link.request(
                    "resources/unsubscribe", {"uri": uri}, timeout=backend.config.timeout_seconds
                )
