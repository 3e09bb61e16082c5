"""The ``dedup`` layer: identical requests in flight at the same time become one call further down."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Hashable
from dataclasses import dataclass

from plugins.dedup.identity import DedupOptions, RequestIdentity
from proxy import jsonrpc
from proxy.chain import Context, Handler, PluginCounter
from proxy.errors import BackendError, PorticoError
from proxy.jsonrpc import Message, RequestId


@dataclass(eq=False)
class CallGroup:
    """The callers waiting for one shared call, and the task that runs it."""

    task: asyncio.Task[Message | None]
    callers: int = 0


class SharedCallCancelled(BackendError):
    """The shared call was cancelled by something other than its callers (the gateway shutting down)."""


class Dedup:
    """Shares one call among identical concurrent requests; see the package docstring."""

    Options = DedupOptions

    def __init__(self, options: DedupOptions | None = None) -> None:
        self.options = options or DedupOptions()
        self._identity = RequestIdentity(self.options)
        self._groups: dict[Hashable, CallGroup] = {}
        self._calls = 0
        self._shared = 0

    def counts(self) -> dict[str, int]:
        """``calls``: requests that could be shared; ``shared``: those answered by another's call;
        ``in_flight``: shared calls running now."""
        return {"calls": self._calls, "shared": self._shared, "in_flight": len(self._groups)}

    def metrics(self) -> list[PluginCounter]:
        help_text = "Requests answered by an identical call already running."
        return [PluginCounter("dedup_shared", help_text, samples={(): float(self._shared)})]

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        identity = self._identity.of(ctx, message)
        if identity is None:
            return await call_next(ctx, message)
        self._calls += 1
        group = self._groups.get(identity)
        if group is None:
            group = self._start(identity, ctx, message, call_next)
        else:
            self._shared += 1
        reply = await self._wait(identity, group)
        return None if reply is None else _for_caller(reply, message["id"])

    def _start(self, identity: Hashable, ctx: Context, message: Message, call_next: Handler) -> CallGroup:
        # The call runs in a task of its own, not in the first caller's: cancelling that caller (or
        # closing its connection) must not take the answer away from the others.
        task = asyncio.create_task(_run(ctx, message, call_next), name=f"dedup {ctx.method}")
        group = CallGroup(task)
        self._groups[identity] = group
        # The group ends with the call: a later identical request makes a new call (caching is not ours).
        task.add_done_callback(lambda _: self._forget(identity, group))
        return group

    async def _wait(self, identity: Hashable, group: CallGroup) -> Message | None:
        group.callers += 1
        try:
            return await asyncio.shield(group.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if group.task.cancelled() and (current is None or not current.cancelling()):
                # Not this caller's cancellation: it must not end this caller's task in silence.
                raise SharedCallCancelled("The shared call was cancelled") from None
            raise
        finally:
            group.callers -= 1
            if group.callers == 0 and not group.task.done():
                # Everyone has gone: nobody wants the answer, so the backend is told to stop. The group
                # is forgotten at once, so a newcomer starts afresh rather than joining a dying call.
                self._forget(identity, group)
                group.task.cancel()

    def _forget(self, identity: Hashable, group: CallGroup) -> None:
        if self._groups.get(identity) is group:
            del self._groups[identity]


async def _run(ctx: Context, message: Message, call_next: Handler) -> Message | None:
    try:
        return await call_next(ctx, message)
    except PorticoError as exc:
        # A refusal or a backend's failure is what every caller would have got: it is shared as a reply,
        # and each caller gets it with its own id.
        return jsonrpc.error_from(message["id"], exc)


def _for_caller(reply: Message, request_id: RequestId) -> Message:
    # Each caller gets its own copy: a plugin further out may change its reply in place.
    return {**copy.deepcopy(reply), "id": request_id}
