"""One policy for every gateway instance: a change loaded on any of them is published through Redis and
put in force by all the others (the policy plugin's ``redis_url``).

In Redis, under ``redis_prefix`` (default ``portico:policy:``):

- ``current``, a hash: the published policy's ``version`` (a counter that only grows), ``model`` and
  ``policy`` (the texts), ``at`` (when that change was made, on its instance's clock) and ``origin`` (the
  instance that published it);
- ``changes``, a channel: each publication announces its version there.

Publishing is one Lua script (bump the version, store the texts, announce), so the hash always holds the
newest publication. An instance that hears of a version newer than its own reads the hash, checks the texts
exactly as it checks its own files, and puts them in force; texts it would refuse as files (broken, or
using something its Casbin does not support) are logged and the policy in force stays: a bad policy never
replaces a good one. After every (re)subscription it reads the hash again, so an announcement missed while
its connection was down is caught up on as soon as it is back.

Which change wins is decided by time ("last change wins"): a change to the files noticed while running is
the newest one (it is published, and every instance switches to it); an instance that starts, or that
follows the channel again after losing Redis, publishes its files' policy only if they were modified after
the published policy's change, and otherwise adopts the published one. So a pod started from an updated
ConfigMap brings its policy to the others, and a pod restarted with old files does not undo a newer change.
A Redis that lost its data (restarted without persistence) gets the policy in force back from the first
instance that follows it again (versions then count from 1 again, which every instance accepts).

While Redis is unreachable every instance keeps enforcing the policy in force (the last one agreed, or its
own files': refusing everything would be an outage, and the policy is never switched off); a local change
is put in force there at once and published as soon as Redis answers again, unless a newer change was
published meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from plugins.policy.engine import PolicyEngine
from plugins.policy.loader import LoadedPolicy, PolicyFileError, build_policy
from proxy.shared_redis import REDIS_ERRORS, ChannelListener, redis_client

log = logging.getLogger("portico.policy")

# KEYS: the hash, the channel; ARGV: model, policy, at, origin. Returns the new version.
PUBLISH_SCRIPT = """
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'model', ARGV[1], 'policy', ARGV[2], 'at', ARGV[3], 'origin', ARGV[4])
redis.call('PUBLISH', KEYS[2], version)
return version
"""
# How soon a lost channel is tried again: while it is down, changes reach this instance only then.
RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    version: int
    model_text: str
    policy_text: str
    at: float
    origin: str


class PolicyChannel:
    """The Redis side: publishing a policy, reading the newest one, hearing of new versions."""

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout: float,
        on_announced: Callable[[int], Awaitable[None]],
        on_subscribed: Callable[[], Awaitable[None]],
    ) -> None:
        self._hash = f"{prefix}current"
        self._channel = f"{prefix}changes"
        self._client = redis_client(url, timeout)
        self._publish = self._client.register_script(PUBLISH_SCRIPT)
        self._on_announced = on_announced
        self.listener = ChannelListener(
            url, self._channel, self._announced, on_subscribed=on_subscribed, retry_seconds=RETRY_SECONDS
        )

    async def publish(self, policy: LoadedPolicy, at: float, origin: str) -> int:
        version = await self._publish(
            keys=[self._hash, self._channel], args=[policy.model_text, policy.policy_text, repr(at), origin]
        )
        return int(version)

    async def newest(self) -> PublishedPolicy | None:
        """The published policy, or None if there is none (or what is there is not one)."""
        raw = await self._client.hgetall(self._hash)
        fields = {_text(name): _text(value) for name, value in raw.items()}
        try:
            return PublishedPolicy(
                version=int(fields["version"]),
                model_text=fields["model"],
                policy_text=fields["policy"],
                at=float(fields["at"]),
                origin=fields.get("origin", "?"),
            )
        except (KeyError, ValueError):
            if fields:
                log.error("policy: %s in Redis is not a published policy; ignoring it", self._hash)
            return None

    async def _announced(self, data: bytes) -> None:
        try:
            version = int(data)
        except ValueError:
            log.warning("policy: ignoring a malformed announcement on %s", self._channel)
            return
        await self._on_announced(version)

    def start(self) -> None:
        self.listener.start()

    async def close(self) -> None:
        await self.listener.stop()
        await self._client.aclose()


class ClusterPolicy:
    """Keeps the policy in force on this instance in step with the published one (see the module)."""

    def __init__(self, engine: PolicyEngine, url: str, prefix: str, timeout: float) -> None:
        self.engine = engine
        # Names this instance in the published hash and in logs (a fresh one per plugin instance).
        self.instance = secrets.token_hex(6)
        # The published version the policy in force corresponds to; None until this instance agreed.
        self.version: int | None = None
        # Set once this instance has read (or made) the published policy for the first time.
        self.agreed = asyncio.Event()
        # The last good policy read from this instance's own files, and when that change was made.
        self._local = engine.policy
        self._local_at = _modified_at(engine.policy)
        # When the change in force was made, once this instance agreed with the others.
        self._agreed_at = 0.0
        self._unpublished = False
        self._refused: int | None = None
        self._lock = asyncio.Lock()
        self.channel = PolicyChannel(url, prefix, timeout, self._announced, self._subscribed)

    def start(self) -> None:
        self.channel.start()

    async def close(self) -> None:
        await self.channel.close()

    async def local_change(self, policy: LoadedPolicy) -> None:
        """This instance's files changed and loaded well: in force here at once, then published."""
        async with self._lock:
            self._local, self._local_at = policy, time.time()
            if _same_texts(policy, self.engine.policy):
                # Already in force (the files caught up with a published change): nothing to tell.
                return
            self.engine.install(policy)
            self._unpublished = True
            await self._try_publish()

    async def catch_up(self) -> None:
        """Publish a local change that Redis refused earlier (called periodically)."""
        if self._unpublished:
            async with self._lock:
                if self._unpublished:
                    await self._try_publish()

    async def _try_publish(self) -> None:
        try:
            await self._publish(self._local, self._local_at)
        except REDIS_ERRORS as exc:
            log.warning(
                "policy: cannot publish the change to the other instances (%s); it is in force here and "
                "is published once Redis answers, unless a newer change was published meanwhile",
                exc,
            )

    async def _publish(self, policy: LoadedPolicy, at: float) -> None:
        """Put ``policy`` (changed at ``at``) in force and publish it, unless a newer change was published."""
        newest = await self.channel.newest()
        if newest is not None and newest.at >= at:
            # A newer change was published while this one waited: it wins.
            self._unpublished = False
            await self._adopt(newest)
            return
        if not _same_texts(policy, self.engine.policy):
            self.engine.install(policy)
        version = await self.channel.publish(policy, at, self.instance)
        self._unpublished = False
        # What the script returns is the version now current (lower than before if Redis lost its data).
        self.version, self._agreed_at = version, at
        log.info("policy: published version %d to the other instances", version)

    async def _subscribed(self) -> None:
        # After every (re)subscription: what was published while this instance was not listening.
        async with self._lock:
            newest = await self.channel.newest()
            if newest is None and self.version is not None and self._agreed_at >= self._local_at:
                # Redis lost what was published (restarted without persistence): give it back the policy
                # in force, not this instance's older files.
                await self._publish(self.engine.policy, self._agreed_at)
            elif newest is not None and (newest.at >= self._local_at or _same_texts(newest, self._local)):
                await self._adopt(newest)
            else:
                await self._publish(self._local, self._local_at)
        self.agreed.set()

    async def _announced(self, version: int) -> None:
        if version == self.version:
            return  # this instance's own publication, or one it already has
        # Any other version means "look": the hash holds the newest publication whatever order the
        # announcements came in, and a Redis that lost its data counts from 1 again.
        async with self._lock:
            newest = await self.channel.newest()
            if newest is not None and newest.version != self.version:
                await self._adopt(newest)

    async def _adopt(self, published: PublishedPolicy) -> None:
        if _same_texts(self.engine.policy, published):
            self.version, self._agreed_at = published.version, published.at
            return
        names = (f"published model v{published.version}", f"published policy v{published.version}")
        try:
            policy = await asyncio.to_thread(build_policy, published.model_text, published.policy_text, names)
        except PolicyFileError as exc:
            if self._refused != published.version:
                self._refused = published.version
                log.error(
                    "policy: refusing %s (from instance %s); the policy in force stays", exc, published.origin
                )
            return
        self.engine.install(policy)
        self.version, self._agreed_at = published.version, published.at
        log.info(
            "policy: switched to published version %d from instance %s (%d rules)",
            published.version,
            published.origin,
            policy.rule_count,
        )


def _text(value: bytes | str) -> str:
    # The texts were stored from str, so they are UTF-8; anything else was not written by a gateway.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _same_texts(one: LoadedPolicy | PublishedPolicy, other: LoadedPolicy | PublishedPolicy) -> bool:
    return one.model_text == other.model_text and one.policy_text == other.policy_text


def _modified_at(policy: LoadedPolicy) -> float:
    """When the newer of a policy's two files was last modified (0 when not known)."""
    return max((stamp[0] / 1e9 for stamp in policy.stamps if stamp is not None), default=0.0)
