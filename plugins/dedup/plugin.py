"""The ``dedup`` layer: identical requests in flight at the same time become one call further down."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Hashable
from dataclasses import dataclass, field

import orjson

from plugins.dedup.identity import DedupOptions, RequestIdentity
from proxy import jsonrpc
from proxy.chain import Context, Handler, PluginCounter
from proxy.errors import BackendError, PorticoError
from proxy.jsonrpc import Message, RequestId


@dataclass(eq=False)
class CallGroup:
    """The callers waiting for one shared call, and the task that runs it."""

    task: asyncio.Task[None] = field(init=False)
    # One future per caller still waiting: a caller's cancellation cancels its own future, never the call.
    waiting: list[asyncio.Future[Message | None]] = field(default_factory=list)
    # Every caller that ever joined. Final once the call has ended, since nobody joins a finished call.
    joined: int = 0

    def answer(self, reply: Message | None) -> None:
        """Give the call's reply to everyone still waiting. The call's task does it as it ends, which
        wakes them a turn of the event loop sooner than a done callback would (``asyncio.shield``'s way)."""
        for waiter in self.waiting:
            if not waiter.done():
                waiter.set_result(reply)

    def settle(self) -> None:
        """Once the task is done, pass on how it ended to whoever ``answer`` did not reach: the task
        failed, or was cancelled (perhaps before it ever ran, when none of its own code did)."""
        pending = [waiter for waiter in self.waiting if not waiter.done()]
        if self.task.cancelled():
            for waiter in pending:
                waiter.cancel()
            return
        # Read even when nobody waits: a failure nobody asked for is not reported as "never retrieved".
        failure = self.task.exception()
        if failure is not None:
            for waiter in pending:
                waiter.set_exception(failure)


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
        # A call that has just ended keeps its group until its task's done callback: it is not counted.
        in_flight = sum(1 for group in self._groups.values() if not group.task.done())
        return {"calls": self._calls, "shared": self._shared, "in_flight": in_flight}

    def metrics(self) -> list[PluginCounter]:
        help_text = "Requests answered by an identical call already running."
        return [PluginCounter("dedup_shared", help_text, samples={(): float(self._shared)})]

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        identity = self._identity.of(ctx, message)
        if identity is None:
            return await call_next(ctx, message)
        self._calls += 1
        group = self._groups.get(identity)
        # A call that has ended (its group not yet forgotten) takes no newcomer: one arriving then makes a
        # new call, so a group's ``joined`` never grows after its reply is out.
        if group is None or group.task.done():
            group = self._start(identity, ctx, message, call_next)
        else:
            self._shared += 1
        reply = await self._wait(identity, group)
        return None if reply is None else _for_caller(reply, message["id"], alone=group.joined == 1)

    def _start(self, identity: Hashable, ctx: Context, message: Message, call_next: Handler) -> CallGroup:
        # The call runs in a task of its own, not in the first caller's: cancelling that caller (or
        # closing its connection) must not take the answer away from the others.
        group = CallGroup()
        group.task = asyncio.create_task(_run(group, ctx, message, call_next), name=f"dedup {ctx.method}")
        self._groups[identity] = group
        group.task.add_done_callback(lambda _: self._ended(identity, group))
        return group

    async def _wait(self, identity: Hashable, group: CallGroup) -> Message | None:
        waiter: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
        group.waiting.append(waiter)
        group.joined += 1
        try:
            return await waiter
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if group.task.cancelled() and (current is None or not current.cancelling()):
                # Not this caller's cancellation: it must not end this caller's task in silence.
                raise SharedCallCancelled("The shared call was cancelled") from None
            raise
        finally:
            group.waiting.remove(waiter)
            if not group.waiting and not group.task.done():
                # Everyone has gone: nobody wants the answer, so the backend is told to stop. The group
                # is forgotten at once, so a newcomer starts afresh rather than joining a dying call.
                self._forget(identity, group)
                group.task.cancel()

    def _ended(self, identity: Hashable, group: CallGroup) -> None:
        # The group ends with the call: a later identical request makes a new call (caching is not ours).
        self._forget(identity, group)
        group.settle()

    def _forget(self, identity: Hashable, group: CallGroup) -> None:
        if self._groups.get(identity) is group:
            del self._groups[identity]


async def _run(group: CallGroup, ctx: Context, message: Message, call_next: Handler) -> None:
    try:
        reply = await call_next(ctx, message)
    except PorticoError as exc:
        # A refusal or a backend's failure is what every caller would have got: it is shared as a reply,
        # and each caller gets it with its own id.
        reply = jsonrpc.error_from(message["id"], exc)
    group.answer(reply)


def _for_caller(reply: Message, request_id: RequestId, *, alone: bool) -> Message:
    if alone:
        # Nobody else ever waited for this reply: its one caller may have it as it is.
        return {**reply, "id": request_id}
    # Each caller gets its own copy: a plugin further out may change its reply in place.
    return {**_deep_copy(reply), "id": request_id}


def _deep_copy(reply: Message) -> Message:
    try:
        # A message is JSON data, and a round trip through orjson copies it many times faster than
        # copy.deepcopy. (A NaN, which JSON lacks, would come back null: how orjson writes it out anyway.)
        copied: Message = orjson.loads(orjson.dumps(reply))
    except TypeError:
        # Beyond what orjson writes (integers over 64 bits, keys that are not strings): the general way.
        return copy.deepcopy(reply)
    return copied
