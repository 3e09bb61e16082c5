"""What a backend sends on its own: server-to-client requests, notifications, and progress tokens.

Server-to-client requests arriving on a per-client link belong to that link's client. On a shared link
they belong to the one client with calls in flight to this backend; when several have, no one can tell
whose it is, and the backend gets an error saying to use ``session: per-client`` rather than a guess that
could show one client's data to another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any

from proxy import eras, jsonrpc
from proxy.backend_lists import LIST_CHANGED
from proxy.errors import ErrorCode
from proxy.jsonrpc import Message
from proxy.upstream import UpstreamLink

if TYPE_CHECKING:
    from proxy.backend import Backend

log = logging.getLogger("portico.backend")


class ServerTraffic:
    """Routes one backend's own requests and notifications to the clients they belong to.

    It reads the backend's calls in flight, subscriptions and listen stream, which the backend owns."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._progress: dict[int, tuple[str, Any]] = {}
        self._progress_ids = itertools.count(1)
        # Server-to-client requests being relayed, by (link, the backend's request id).
        self._relays: dict[tuple[int, Any], asyncio.Task[Any]] = {}

    # -- progress tokens ----------------------------------------------------------------------------------

    def remap_progress(self, session_id: str, params: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """Progress tokens are chosen by clients and may collide; the backend sees the gateway's own.
        Returns the params to send (a copy only when a token was swapped: ``params`` stays as it was, for
        a retry) and the gateway's token, to ``forget_progress`` afterwards."""
        meta = params.get("_meta")
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return params, None
        progress_id = next(self._progress_ids)
        self._progress[progress_id] = (session_id, meta["progressToken"])
        return {**params, "_meta": {**meta, "progressToken": progress_id}}, progress_id

    def forget_progress(self, progress_id: int) -> None:
        self._progress.pop(progress_id, None)

    # -- requests -----------------------------------------------------------------------------------------

    def on_server_request(self, link: UpstreamLink, message: Message) -> None:
        backend = self._backend
        owner = link.owner or backend.only_caller()
        if owner is None:
            log.warning(
                "backend %s sent %s while %d clients had calls in flight; it cannot be attributed to one "
                "client. Set `session: per-client` for this backend.",
                backend.name,
                message["method"],
                backend.callers(),
            )
            reply = jsonrpc.error(
                message["id"],
                {
                    "code": ErrorCode.CLIENT_REQUEST_UNDELIVERABLE,
                    "message": f"The gateway cannot tell which client {message['method']} is for "
                    "(this backend is shared; configure it with session: per-client)",
                },
            )
            backend.spawn(link.respond(reply))
            return
        key = (id(link), message["id"])
        task = backend.spawn(self._relay(link, owner, message))
        self._relays[key] = task
        task.add_done_callback(lambda _: self._relays.pop(key, None))

    async def _relay(self, link: UpstreamLink, session_id: str, message: Message) -> None:
        reply = await self._backend.events.relay_request(self._backend, session_id, message)
        await link.respond({**reply, "id": message["id"]})

    # -- notifications ------------------------------------------------------------------------------------

    def on_server_notification(self, link: UpstreamLink, message: Message) -> None:
        backend = self._backend
        events = backend.events
        method = message["method"]
        params = jsonrpc.params_of(message)
        if link.modern:
            # Listen-stream notifications are tagged with the gateway's own subscription id upstream,
            # which means nothing to clients.
            subscription = _pop_meta(params, eras.SUBSCRIPTION_ID_KEY)
            if method == "notifications/subscriptions/acknowledged":
                if backend.listener is not None:
                    backend.listener.acknowledged(subscription)
                return
            message = {**message, "params": params}
        if method == "notifications/progress":
            target = self._progress.get(params.get("progressToken"))  # type: ignore[arg-type]
            if target is not None:
                session_id, token = target
                forwarded = {**message, "params": {**params, "progressToken": token}}
                events.deliver_notification(backend, [session_id], forwarded)
        elif method in LIST_CHANGED:
            backend.spawn(backend.refresh_and_announce(LIST_CHANGED[method]))
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            subscribers = backend.subscribers_of(uri) if isinstance(uri, str) else set()
            targets = [s for s in subscribers if link.owner in (None, s)]
            # Delivered even to no one: what the gateway keeps of the resource (a cache) must hear it.
            events.deliver_notification(backend, targets, message)
        elif method == "notifications/cancelled":
            # The backend gave up on a request it sent: stop relaying it (the client is told).
            relay = self._relays.get((id(link), params.get("requestId")))
            if relay is not None:
                relay.cancel()
        elif method == "notifications/message":
            events.deliver_notification(backend, [link.owner] if link.owner else None, message)
        else:
            events.deliver_notification(backend, [link.owner] if link.owner else [], message)


def _pop_meta(params: dict[str, Any], key: str) -> Any:
    """Remove one key from ``params["_meta"]`` in place (dropping an emptied ``_meta``); return its value."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or key not in meta:
        return None
    rest = {k: v for k, v in meta.items() if k != key}
    if rest:
        params["_meta"] = rest
    else:
        del params["_meta"]
    return meta[key]
