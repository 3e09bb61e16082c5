"""The ``policy`` plugin: Casbin decides who may call which tool, prompt or resource of which backend.

Options:
    model: the Casbin model file (``*.conf``), relative to the current directory (the gateway runs from
        the project root) or absolute.
    policy: the Casbin policy file (``*.csv``), likewise.
    decision_cache_size: how many decisions to remember (least recently used go first; 0 turns the cache
        off). Default 10 000.
    reload_interval_seconds: how often, at most, to look at the files' modification time and size for a
        change (default 0.25). Looks happen in the background when requests arrive; a change is put in
        force once the files have stayed the same for one interval (well within a second).
    redis_url: share policy changes with the other gateway instances through this Redis (inherited from
        the config's ``redis`` section): a change loaded on one instance is in force on all within a
        second, and with it the files are watched in the background rather than when requests arrive.
        Start-up, precedence ("last change wins") and what happens while Redis is unreachable are
        described in ``plugins/policy/broadcast.py``. ``redis_prefix`` (``portico:policy:``) names the
        keys, ``redis_timeout_seconds`` (1.0) bounds each round trip; the first request an instance serves
        waits at most that long for it to read the published policy.

What is decided, for each request a client sends (direction ``TO_BACKEND``, a message with an ``id``):

- A routed request (``tools/call``, ``prompts/get``, ``resources/read|subscribe|unsubscribe``,
  ``completion/complete``): Casbin is asked ``(subject, object, action)``, with the object
  ``backend/kind/name`` and the action the MCP method (plus the principal's tenant as the domain when the
  model has one). A deny raises ``AccessDenied``; the backend never hears of the request.
- A list (``tools/list``, ``prompts/list``, ``resources/list``, ``resources/templates/list``): the list keeps
  only the items the principal may use (``tools/call`` for a tool, ``prompts/get`` for a prompt,
  ``resources/read`` for a resource or template).
- Requests to the gateway itself (``initialize``, ``ping``, ``server/discover``, ``logging/setLevel``,
  ``subscriptions/listen``) pass, restricted the same way as lists (a listen follows only resources the
  principal may read); so does a routed request whose target does not exist: the gateway answers it as
  unknown, exactly as it would without a policy.

Notifications, and everything a backend sends the client (direction ``TO_CLIENT``), pass: a policy decides
on what a client may ask for, and a notification about something the client cannot use cannot be acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from plugins.policy.broadcast import ClusterPolicy
from plugins.policy.engine import PolicyEngine
from plugins.policy.loader import LoadedPolicy, PolicyFileError, Stamps, stamp
from proxy.chain import (
    POLICY_DECISION,
    POLICY_VERSION,
    USE_ACTIONS,
    Context,
    Direction,
    Handler,
    Principal,
    Route,
)
from proxy.errors import AccessDenied
from proxy.jsonrpc import Message
from proxy.shared_redis import checked_redis_url

log = logging.getLogger("portico.policy")


@dataclass(frozen=True)
class PolicyOptions:
    model: str
    policy: str
    decision_cache_size: Annotated[int, Field(ge=0)] = 10_000
    reload_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.25
    redis_url: Annotated[str | None, AfterValidator(checked_redis_url)] = None
    redis_prefix: Annotated[str, Field(min_length=1, max_length=100)] = "portico:policy:"
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 1.0


class Policy:
    """Enforces a Casbin policy on every client request, and picks up edits to its files while running."""

    Options = PolicyOptions

    def __init__(self, options: PolicyOptions) -> None:
        self.options = options
        # Raises PolicyFileError, which the plugin loader reports as a configuration error.
        self.engine = PolicyEngine(options.model, options.policy, cache_size=options.decision_cache_size)
        self._next_check = time.monotonic() + options.reload_interval_seconds
        self._check: asyncio.Task[None] | None = None
        # The stamps of files that failed to load, so a broken file is reported once, not at every check.
        self._broken: Stamps | None = None
        # The stamps of files seen changed at the last look, not yet loaded.
        self._settling: Stamps | None = None
        # The stamps of the files as last loaded: with several instances the policy in force may have come
        # from another one, so a change is a change of the files, not a difference from the policy in force.
        self._loaded_stamps: Stamps = self.engine.policy.stamps
        self.cluster = (
            ClusterPolicy(self.engine, options.redis_url, options.redis_prefix, options.redis_timeout_seconds)
            if options.redis_url is not None
            else None
        )
        self._watcher: asyncio.Task[None] | None = None
        self._join_deadline = 0.0

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        if ctx.direction is Direction.TO_BACKEND and "id" in message and "method" in message:
            if self.cluster is None:
                self._check_files_soon()
            elif not self.cluster.agreed.is_set():
                await self._join_cluster(self.cluster)
            self._enforce(ctx)
        return await call_next(ctx, message)

    async def start(self) -> None:
        """With Redis: follow the other instances, and watch the files, from start-up."""
        if self.cluster is not None and not self.cluster.agreed.is_set():
            await self._join_cluster(self.cluster)

    async def _join_cluster(self, cluster: ClusterPolicy) -> None:
        """At start-up (``start``), or at the first requests of a plugin that was not started, begin
        following the other instances and wait, for at most ``redis_timeout_seconds``, until the published
        policy is read: an instance that just started decides by the cluster's policy, not by its
        possibly older files."""
        if self._watcher is None:
            cluster.start()
            self._watcher = asyncio.get_running_loop().create_task(self._watch_files(cluster))
            self._join_deadline = time.monotonic() + self.options.redis_timeout_seconds
        remaining = self._join_deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cluster.agreed.wait(), remaining)

    async def _watch_files(self, cluster: ClusterPolicy) -> None:
        # In the background: an instance's change must reach the others even if no request reaches it.
        while True:
            await self.check_files()
            await cluster.catch_up()
            await asyncio.sleep(self.options.reload_interval_seconds)

    async def close(self) -> None:
        """Stop following the other instances (nothing to do without ``redis_url``)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.cluster is not None:
            await self.cluster.close()

    def _enforce(self, ctx: Context) -> None:
        ctx.set(POLICY_VERSION, self.engine.version)
        principal = ctx.principal
        route = ctx.route
        if route is None:
            # A request to the gateway itself shows only what the principal may use: a list's items, the
            # resources a modern client's subscriptions/listen may follow.
            ctx.restrict(lambda target: self.may_use(principal, target))
            return
        decision = self.engine.decide(principal, route.object, ctx.method)
        explanation = decision.explain()
        ctx.set(POLICY_DECISION, explanation)
        if not decision.allowed:
            log.info(
                "policy: %r may not %s %r (%s)", principal.subject, ctx.method, route.object, explanation
            )
            raise AccessDenied(f"Access denied: {principal.subject!r} may not {ctx.method} {route.object!r}")

    def may_use(self, principal: Principal, route: Route) -> bool:
        """Whether ``principal`` may use a listed item: the list filter's question."""
        action = USE_ACTIONS.get(route.kind)
        return action is not None and self.engine.decide(principal, route.object, action).allowed

    # -- reloading ------------------------------------------------------------------------------------------

    def _check_files_soon(self) -> None:
        """At most once per interval, look at the files in the background; the request that triggers the
        look is decided by the policy in force, and never waits for the disk."""
        now = time.monotonic()
        if now < self._next_check or (self._check is not None and not self._check.done()):
            return
        self._next_check = now + self.options.reload_interval_seconds
        self._check = asyncio.get_running_loop().create_task(self.check_files())

    async def check_files(self) -> None:
        """Reload the policy if its files changed; a broken file leaves the policy in force and is logged
        once. Never raises (it runs as a background task), except to be cancelled."""
        try:
            outcome = await asyncio.to_thread(self._read_if_changed)
            if isinstance(outcome, LoadedPolicy):
                self._loaded_stamps = outcome.stamps
                self._broken = None
                if self.cluster is None:
                    self.engine.install(outcome)
                else:
                    await self.cluster.local_change(outcome)
                log.info(
                    "policy: loaded %s and %s (version %d, %d rules)",
                    self.options.model,
                    self.options.policy,
                    self.engine.version,
                    outcome.rule_count,
                )
            elif outcome is not None:
                stamps, error = outcome
                self._broken = stamps
                log.error("policy: %s; the previous policy stays in force", error)
        except Exception:
            log.exception("policy: checking the policy files failed")

    def _read_if_changed(self) -> LoadedPolicy | tuple[Stamps, PolicyFileError] | None:
        # Runs in a worker thread: stat and read are blocking file IO.
        stamps = self._stamps()
        if stamps in (self._loaded_stamps, self._broken):
            self._settling = None
            return None
        if stamps != self._settling:
            # Changed since the last look: wait until the files stay the same for one interval, so a file
            # an editor is still writing is never put in force half-written (a policy missing its deny
            # lines would let through what the whole file forbids).
            self._settling = stamps
            return None
        try:
            loaded = self.engine.load()
        except PolicyFileError as exc:
            return stamps, exc
        after = self._stamps()
        # Written to while being read: the next look starts settling again.
        return loaded if loaded.stamps == stamps == after else None

    def _stamps(self) -> Stamps:
        return (stamp(self.options.model), stamp(self.options.policy))
