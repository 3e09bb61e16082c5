"""What makes two requests the same request: the identity under which concurrent callers share a call."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import orjson

from proxy.chain import POLICY_VERSION, Context, Direction, Principal, only_reads
from proxy.jsonrpc import Message


@dataclass(frozen=True)
class DedupOptions:
    """The ``dedup`` plugin's options.

    ``tools``: globs on ``backend/tool/name``; calls of these tools are shared even without a
    ``readOnlyHint`` (the operator vouches that they only read).
    ``shared_backends``: backends whose answers are the same for every caller, so callers with different
    principals share calls too.
    ``session_backends``: backends whose answers depend on the client session (``session: per-client``
    backends that keep per-caller state); their calls are shared only within one session.
    """

    tools: tuple[str, ...] = ()
    shared_backends: tuple[str, ...] = ()
    session_backends: tuple[str, ...] = ()


class RequestIdentity:
    """Computes the identity of a request, or None when it must not be shared with anyone."""

    def __init__(self, options: DedupOptions) -> None:
        self.options = options
        self._shared_backends = frozenset(options.shared_backends)
        self._session_backends = frozenset(options.session_backends)

    def of(self, ctx: Context, message: Message) -> Hashable | None:
        route = ctx.route
        if ctx.direction is not Direction.TO_BACKEND or route is None or "id" not in message:
            return None
        if not (only_reads(ctx.method, route) or self._allowed_tool(ctx.method, route.object)):
            return None
        # A caller that may not reach the route must get its own refusal, never another caller's answer.
        if not ctx.allows(route):
            return None
        params = _canonical_params(message)
        if params is None:
            return None
        return (
            route.object,
            ctx.method,
            params,
            self._caller(ctx, route.backend),
            # Callers decided under different policies (or speaking different eras) never share.
            ctx.get(POLICY_VERSION),
            ctx.protocol_version,
        )

    def _allowed_tool(self, method: str, route_object: str) -> bool:
        return method == "tools/call" and any(fnmatchcase(route_object, g) for g in self.options.tools)

    def _caller(self, ctx: Context, backend: str) -> Hashable:
        if backend in self._session_backends:
            return ("session", ctx.session.id)
        if backend in self._shared_backends:
            return ("everyone",)
        return _principal_identity(ctx.principal)


def _principal_identity(principal: Principal) -> Hashable:
    if principal.credential:
        return ("credential", principal.kind, principal.credential)
    return ("principal", principal.kind, principal.tenant, principal.subject)


def _canonical_params(message: Message) -> bytes | None:
    """The params as sorted-key JSON without ``_meta`` (progress tokens, trace ids: the caller's own)."""
    params = message.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return None
    if "_meta" in params:
        params = {k: v for k, v in params.items() if k != "_meta"}
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # Beyond what orjson writes (integers over 64 bits): rare enough not to be worth sharing.
        return None
