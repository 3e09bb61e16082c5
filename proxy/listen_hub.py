"""``subscriptions/listen`` for modern clients: the aggregate's list changes and resource updates.

A modern client opens a long-lived ``subscriptions/listen`` request with a filter; the gateway
acknowledges the part of it that it can honour, then sends the matching notifications on that request's
stream, each tagged with the subscription's id (the request's own id), until the client cancels it or
the gateway shuts down (then a final result closes it gracefully).

List changes are the gateway's own (its catalog changes whichever era the backend speaks). Resource
updates are subscribed at the owning backend: ``resources/subscribe`` on a legacy one, a listen stream
of the gateway's own on a modern one (``Backend.subscribe`` hides the difference).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy import eras, jsonrpc
from proxy.chain import Context, Direction, Route
from proxy.errors import InvalidParams, PorticoError
from proxy.jsonrpc import Message, RequestId

if TYPE_CHECKING:
    from proxy.gateway import Gateway
    from proxy.session import Session

log = logging.getLogger("portico.listen")

# Filter flag -> (the capability that must be offered, the notification it asks for).
LIST_FLAGS = {
    "toolsListChanged": ("tools", "notifications/tools/list_changed"),
    "promptsListChanged": ("prompts", "notifications/prompts/list_changed"),
    "resourcesListChanged": ("resources", "notifications/resources/list_changed"),
}
_SHUTDOWN_SECONDS = 1.0


@dataclass(eq=False)
class _Listener:
    session: Session
    subscription_id: RequestId
    methods: frozenset[str]
    # Exposed URI -> (backend, the backend's own URI).
    resources: dict[str, tuple[str, str]]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # The session's task for the listen request: it is done once the final result has been sent.
    task: asyncio.Task[Any] | None = None


class ListenHub:
    """Every open listen stream of every modern client; see the module docstring."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._by_session: dict[str, list[_Listener]] = collections.defaultdict(list)

    async def serve(self, ctx: Context, session: Session, message: Message) -> Message:
        """Run one listen request until it ends; returns its final (graceful) result."""
        wanted = _parse_filter(jsonrpc.params_of(message))
        listener = _Listener(session, message["id"], frozenset(), {}, task=asyncio.current_task())
        honoured = await self._honour(ctx, listener, wanted)
        acknowledgement = jsonrpc.notification(
            "notifications/subscriptions/acknowledged",
            {"_meta": {eras.SUBSCRIPTION_ID_KEY: listener.subscription_id}, "notifications": honoured},
        )
        self._by_session[session.id].append(listener)
        try:
            self._post(listener, acknowledgement)
            await listener.ended.wait()
        finally:
            await self._close(listener)
        return jsonrpc.result(
            message["id"],
            {"resultType": "complete", "_meta": {eras.SUBSCRIPTION_ID_KEY: listener.subscription_id}},
        )

    def listening(self, session: Session) -> bool:
        return bool(self._by_session.get(session.id))

    def list_changed(self, session: Session, method: str) -> None:
        for listener in self._by_session.get(session.id, ()):
            if method in listener.methods:
                self._post(listener, jsonrpc.notification(method))

    def resource_updated(self, session: Session, message: Message) -> None:
        """Deliver a backend's resources/updated (already carrying the exposed URI) to the listeners."""
        uri = jsonrpc.params_of(message).get("uri")
        for listener in self._by_session.get(session.id, ()):
            if uri in listener.resources:
                self._post(listener, message)

    async def shut_down(self) -> None:
        """End every stream gracefully, each with its final result, before the sessions close."""
        listeners = [listener for group in self._by_session.values() for listener in group]
        for listener in listeners:
            listener.ended.set()
        tasks = [listener.task for listener in listeners if listener.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_SHUTDOWN_SECONDS)

    async def _honour(self, ctx: Context, listener: _Listener, wanted: dict[str, Any]) -> dict[str, Any]:
        """Take what the gateway can do of the filter; what it cannot is left out of the acknowledgement."""
        offered = self.gateway.capabilities()
        honoured: dict[str, Any] = {}
        methods = set()
        for flag, (capability, method) in LIST_FLAGS.items():
            if wanted.get(flag) and capability in offered:
                honoured[flag] = True
                methods.add(method)
        listener.methods = frozenset(methods)
        uris = wanted.get("resourceSubscriptions", [])
        if uris:
            listener.methods |= {"notifications/resources/updated"}
            honoured["resourceSubscriptions"] = [
                uri for uri in dict.fromkeys(uris) if await self._subscribe(ctx, listener, uri)
            ]
        return honoured

    async def _subscribe(self, ctx: Context, listener: _Listener, uri: str) -> bool:
        route = self.gateway.catalog.route_uri(uri)
        backend = self.gateway.backends.get(route.backend) if route is not None else None
        if route is None or backend is None or not backend.ready or not ctx.allows(route):
            return False
        already = any(uri in other.resources for other in self._by_session.get(listener.session.id, ()))
        try:
            if not already:
                reply = await backend.subscribe(listener.session, route.name, ctx.remaining())
                if "error" in reply:
                    return False
        except PorticoError as exc:
            log.info("listen: %s could not subscribe to %s: %s", backend.name, route.name, exc.message)
            return False
        listener.resources[uri] = (backend.name, route.name)
        return True

    async def _close(self, listener: _Listener) -> None:
        group = self._by_session.get(listener.session.id, [])
        if listener in group:
            group.remove(listener)
        if not group:
            self._by_session.pop(listener.session.id, None)
        for uri, (name, own_uri) in listener.resources.items():
            backend = self.gateway.backends.get(name)
            if backend is None or any(uri in other.resources for other in group):
                continue
            with contextlib.suppress(PorticoError):
                await backend.unsubscribe(listener.session, own_uri, backend.config.timeout_seconds)

    def _post(self, listener: _Listener, notification: Message) -> None:
        params = jsonrpc.params_of(notification)
        meta = params.get("_meta")
        tagged_meta = {
            **(meta if isinstance(meta, dict) else {}),
            eras.SUBSCRIPTION_ID_KEY: listener.subscription_id,
        }
        tagged = {**notification, "params": {**params, "_meta": tagged_meta}}
        route = Route("", "gateway", tagged["method"], tagged["method"])
        ctx = self.gateway.context(listener.session, tagged, Direction.TO_CLIENT, route)
        listener.session.post(ctx, tagged)


def _parse_filter(params: dict[str, Any]) -> dict[str, Any]:
    wanted = params.get("notifications", {})
    if not isinstance(wanted, dict):
        raise InvalidParams("Invalid params: notifications must be an object")
    for flag in LIST_FLAGS:
        if flag in wanted and not isinstance(wanted[flag], bool):
            raise InvalidParams(f"Invalid params: notifications.{flag} must be a boolean")
    uris = wanted.get("resourceSubscriptions", [])
    if not isinstance(uris, list) or not all(isinstance(uri, str) for uri in uris):
        raise InvalidParams("Invalid params: notifications.resourceSubscriptions must be a list of URIs")
    return wanted
