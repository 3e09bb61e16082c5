"""Requests that go to one backend: find the route, speak the backend's own names, map the reply back.

The client uses exposed names (``weather-api_get_weather``, ``portico://notes/notes://a``); the backend
must see its own (``get_weather``, ``notes://a``). Both directions are table look-ups on the catalog.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from proxy import eras, jsonrpc
from proxy.chain import Context, Route, safe_to_repeat
from proxy.errors import BackendUnavailable, InvalidParams, PorticoError
from proxy.input_bridge import RESUMABLE_METHODS
from proxy.jsonrpc import Message
from proxy.router import Catalog

if TYPE_CHECKING:
    from proxy.backend import Backend
    from proxy.gateway import Gateway
    from proxy.session import Session


class ResourceNotFound(PorticoError):
    code = eras.LEGACY_RESOURCE_NOT_FOUND


class Forwarder:
    """Routes the methods that address one backend's tool, prompt or resource."""

    routed_methods = frozenset(
        {
            "tools/call",
            "prompts/get",
            "resources/read",
            "resources/subscribe",
            "resources/unsubscribe",
            "completion/complete",
        }
    )

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._metrics = gateway.metrics
        self._tracing = gateway.tracing

    def resolve(self, catalog: Catalog, method: str, params: dict[str, Any]) -> Route | None:
        if method == "tools/call":
            return catalog.route_name("tool", params.get("name"))
        if method == "prompts/get":
            return catalog.route_name("prompt", params.get("name"))
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            return catalog.route_uri(params.get("uri"))
        if method == "completion/complete":
            ref = params.get("ref")
            if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
                return catalog.route_name("prompt", ref.get("name"))
            if isinstance(ref, dict) and ref.get("type") == "ref/resource":
                return catalog.route_uri(ref.get("uri"), kind="template")
        return None

    async def forward(
        self, ctx: Context, session: Session, message: Message, params: dict[str, Any]
    ) -> Message:
        route = ctx.route
        if route is None:
            gone = self.gateway.withdrawn_route(ctx.method, params)
            if gone is not None and ctx.allows(gone):
                # The backend's failure, never the client's: the name is right, its backend is away.
                raise BackendUnavailable(
                    f"Backend {gone.backend!r} is unavailable right now (down or recovering); try again later"
                )
        # What a restricted client may not reach does not exist for it, exactly like a name never listed.
        if route is None or not ctx.allows(route):
            raise _unknown_target(ctx.method, params)
        backend = self.gateway.backends[route.backend]
        own_params = _with_own_name(ctx.method, params, route)
        timeout = ctx.remaining()
        # Only what is safe to send twice may be retried after a link failure; the rest at most once.
        retryable = safe_to_repeat(ctx.method, route)
        started = time.perf_counter()
        try:
            if self._tracing.enabled:
                call = functools.partial(
                    self._call, ctx, session, backend, route.name, timeout=timeout, retryable=retryable
                )
                reply = await self._tracing.trace_backend_call(ctx, message, route, own_params, call)
            else:
                reply = await self._call(ctx, session, backend, route.name, own_params, timeout, retryable)
        finally:
            # Failed and cancelled calls took the backend's time too.
            self._metrics.backend_done(route.backend, ctx.method, time.perf_counter() - started)
        if "result" in reply and isinstance(reply["result"], dict):
            return jsonrpc.result(message["id"], self._expose_result(ctx.method, route, reply["result"]))
        return {**reply, "id": message["id"], "jsonrpc": "2.0"}

    def _call(
        self,
        ctx: Context,
        session: Session,
        backend: Backend,
        own_name: str,
        params: dict[str, Any],
        timeout: float,
        retryable: bool,
    ) -> Awaitable[Message]:
        # Picks the call and hands it back unawaited: one coroutine layer less on every forwarded call.
        if ctx.method == "resources/subscribe":
            return backend.subscribe(session, own_name, timeout)
        if ctx.method == "resources/unsubscribe":
            return backend.unsubscribe(session, own_name, timeout)
        if ctx.method in RESUMABLE_METHODS and self._bridges_input(ctx, backend):
            return self._call_with_input_bridge(ctx, session, backend, params, timeout, retryable)
        return backend.call(session, ctx.method, params, timeout, retryable=retryable)

    @staticmethod
    def _bridges_input(ctx: Context, backend: Backend) -> bool:
        """A modern client calling a legacy backend: the backend's questions need the input bridge."""
        return ctx.protocol_version in eras.MODERN_VERSIONS and not backend.modern

    async def _call_with_input_bridge(
        self,
        ctx: Context,
        session: Session,
        backend: Backend,
        params: dict[str, Any],
        timeout: float,
        retryable: bool,
    ) -> Message:
        inputs = self.gateway.inputs
        state = params.get("requestState")
        if state is not None:
            if not inputs.owns(state):
                raise InvalidParams("Invalid params: requestState was not issued by this gateway")
            return await inputs.resume(ctx, state, params)
        params = {key: value for key, value in params.items() if key not in eras.RETRY_KEYS}
        return await inputs.call(
            ctx,
            session,
            lambda: backend.call(session, ctx.method, params, timeout, retryable=retryable),
        )

    def _expose_result(self, method: str, route: Route, result: dict[str, Any]) -> dict[str, Any]:
        # URIs a backend puts in results must work through the gateway, so they get the exposed form.
        catalog = self.gateway.catalog
        if method == "resources/read" and isinstance(result.get("contents"), list):
            return {
                **result,
                "contents": [_expose_uri_of(catalog, route.backend, c) for c in result["contents"]],
            }
        if method == "tools/call" and isinstance(result.get("content"), list):
            return {
                **result,
                "content": [_expose_content(catalog, route.backend, c) for c in result["content"]],
            }
        if method == "prompts/get" and isinstance(result.get("messages"), list):
            return {
                **result,
                "messages": [_expose_message(catalog, route.backend, m) for m in result["messages"]],
            }
        return result

    def expose_notification_uri(self, backend: str, message: Message) -> Message:
        params = jsonrpc.params_of(message)
        if isinstance(params.get("uri"), str):
            params = {**params, "uri": self.gateway.catalog.expose_uri(backend, params["uri"])}
        return {**message, "params": params}


def _with_own_name(method: str, params: dict[str, Any], route: Route) -> dict[str, Any]:
    # A copy: the client's message stays as it was for plugins that look at it on the way back.
    own = dict(params)
    if method in ("tools/call", "prompts/get"):
        own["name"] = route.name
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        own["uri"] = route.name
    elif method == "completion/complete":
        ref = dict(params["ref"])
        ref["name" if ref.get("type") == "ref/prompt" else "uri"] = route.name
        own["ref"] = ref
    return own


def _expose_message(catalog: Catalog, backend: str, message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("content"), dict):
        return {**message, "content": _expose_content(catalog, backend, message["content"])}
    return message


def _expose_content(catalog: Catalog, backend: str, item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    if item.get("type") == "resource_link":
        return _expose_uri_of(catalog, backend, item)
    if item.get("type") == "resource" and isinstance(item.get("resource"), dict):
        return {**item, "resource": _expose_uri_of(catalog, backend, item["resource"])}
    return item


def _expose_uri_of(catalog: Catalog, backend: str, item: Any) -> Any:
    if isinstance(item, dict) and isinstance(item.get("uri"), str):
        return {**item, "uri": catalog.expose_uri(backend, item["uri"])}
    return item


def _unknown_target(method: str, params: dict[str, Any]) -> PorticoError:
    if method == "tools/call":
        return InvalidParams(f"Unknown tool: {params.get('name')!r}")
    if method == "prompts/get":
        return InvalidParams(f"Unknown prompt: {params.get('name')!r}")
    if method == "completion/complete":
        return InvalidParams("Invalid params: the completion reference names no known prompt or resource")
    return ResourceNotFound("Resource not found", data={"uri": params.get("uri")})
