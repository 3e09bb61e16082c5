"""A modern client's retry that reaches another instance than the one holding its parked call.

Behind a load balancer the retry that brings a client's answers (``proxy.input_bridge``) seldom reaches
the instance that parked the call: the call runs there, on a backend connection of that instance's, and
cannot move. So the retry is carried to it, through the shared Redis (the ``redis`` section). Every
instance follows a channel of its own, ``{prefix}:instance:{id}``, and names its id in the signed
``requestState`` it issues. An instance that meets a state naming another first checks it in full (it
shares the signing secret), so nothing unauthenticated ever travels; then it publishes the retry on the
owner's channel with a correlation id, and waits on its own channel for the outcome: the call's result,
its next round of questions, or an error, which becomes the answer to the client's retry.

The wait is bounded by the retry's deadline, and the owner bounds its work by the same time. A retry the
client gives up on (or whose deadline passes) is cancelled on the owner too, as a local one would be.
An owner that is gone is noticed at once when nobody hears the publication, and within a second when it
dies during the wait (its channel loses its subscriber): the client is told the call has ended. Only
retries that need another instance touch Redis; ordinary calls never do.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.errors import BackendTimeout, ErrorCode, InvalidParams, PorticoError
from proxy.jsonrpc import Message
from proxy.shared_redis import REDIS_ERRORS, ChannelListener, SharedRedis

log = logging.getLogger("portico.input")

# Runs a retry on the instance that holds its call: (state, answers, principal, binding) -> outcome.
ResumeHere = Callable[[str, object, str, str], Awaitable[Message]]

ENDED = "Invalid params: the call this requestState resumes has ended; send it again"
# While waiting, how often to check that the instance holding the call is still there.
_PRESENCE_SECONDS = 1.0


class RelayUnavailable(PorticoError):
    """The shared Redis could not carry the retry: the call cannot be reached from this instance now."""

    code = ErrorCode.BACKEND_UNAVAILABLE

    def __init__(self, why: str) -> None:
        super().__init__(
            f"the gateway instance holding the call this requestState resumes cannot be reached ({why}); "
            "send the request again"
        )


class ParkedRelay:
    """This instance's end of the relay: it forwards retries to others and runs those forwarded to it."""

    def __init__(self, shared: SharedRedis, resume_here: ResumeHere) -> None:
        self.instance = secrets.token_urlsafe(12)
        self._shared = shared
        self._resume_here = resume_here
        self.listener = ChannelListener(shared.url, self._channel_of(self.instance), self._heard)
        # Retries this instance forwarded, waiting for their outcome, by correlation id.
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Retries forwarded to this instance, running here, by correlation id.
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancels: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        for task in [*self._running.values(), *self._cancels]:
            task.cancel()
        await asyncio.gather(*self._running.values(), *self._cancels, return_exceptions=True)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(RelayUnavailable("this instance is stopping"))

    async def forward(
        self, owner: str, state: str, answers: object, principal: str, binding: str, seconds: float
    ) -> Message:
        """Run a retry (already checked here) on ``owner``, the instance holding its call; its outcome."""
        correlation = secrets.token_urlsafe(12)
        outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = outcome
        request = {
            "kind": "resume",
            "id": correlation,
            "reply_to": self.instance,
            "state": state,
            "answers": answers,
            "principal": principal,
            "binding": binding,
            "seconds": seconds,
        }
        asked = False
        try:
            async with asyncio.timeout(seconds):
                await self._following()
                asked = await self._publish(owner, request)
                if not asked:
                    raise InvalidParams(ENDED)  # nobody follows the owner's channel: it has stopped
                return _unpacked(await self._until_answered(owner, outcome))
        except TimeoutError:
            raise BackendTimeout(
                "the call this requestState resumes did not answer before the request's deadline"
            ) from None
        finally:
            del self._waiting[correlation]
            if asked and not outcome.done():
                self._cancel_later(owner, correlation)

    async def _following(self) -> None:
        """The outcome comes on this instance's channel: it must be followed before anything is asked
        (waiting a little for it, as an instance that has just started may not have subscribed yet)."""
        try:
            async with asyncio.timeout(self._shared.timeout):
                await self.listener.subscribed.wait()
        except TimeoutError:
            raise RelayUnavailable("this instance has lost its Redis channel") from None

    async def _until_answered(self, owner: str, outcome: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        while True:
            done, _ = await asyncio.wait({outcome}, timeout=_PRESENCE_SECONDS)
            if done:
                return outcome.result()
            try:
                async with asyncio.timeout(self._shared.timeout):
                    present = await self._shared.client.pubsub_numsub(self._channel_of(owner))
            except REDIS_ERRORS:
                continue  # cannot tell now; the deadline still bounds the wait
            if not present or not present[0][1]:
                raise InvalidParams(ENDED)

    def _cancel_later(self, owner: str, correlation: str) -> None:
        """Tell the owner to stop a retry nobody waits for; in a task, as the caller may be cancelled."""
        task = asyncio.get_running_loop().create_task(
            self._publish(owner, {"kind": "cancel", "id": correlation}, quietly=True)
        )
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _heard(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            kind, correlation = message["kind"], message["id"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            correlation = None
        if not isinstance(correlation, str):
            log.warning("ignored a malformed message on %s", self.listener.channel)
            return
        if kind == "outcome":
            waiter = self._waiting.get(correlation)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        elif kind == "cancel":
            task = self._running.get(correlation)
            if task is not None:
                task.cancel()
        elif kind == "resume" and correlation not in self._running:
            task = asyncio.get_running_loop().create_task(self._serve(message))
            self._running[correlation] = task
            task.add_done_callback(lambda _: self._running.pop(correlation, None))

    async def _serve(self, request: dict[str, Any]) -> None:
        """Run a retry another instance forwarded, and publish its outcome on that instance's channel."""
        try:
            state, principal, binding, reply_to = (
                request["state"],
                request["principal"],
                request["binding"],
                request["reply_to"],
            )
            seconds = float(request["seconds"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignored a malformed retry on %s", self.listener.channel)
            return
        if not all(isinstance(value, str) for value in (state, principal, binding, reply_to)):
            log.warning("ignored a malformed retry on %s", self.listener.channel)
            return
        outcome: dict[str, Any]
        try:
            async with asyncio.timeout(seconds):
                reply = await self._resume_here(state, request.get("answers"), principal, binding)
            outcome = {"reply": reply}
        except TimeoutError:
            outcome = {"error": BackendTimeout("the parked call did not answer in time").to_error()}
        except PorticoError as exc:
            outcome = {"error": exc.to_error()}
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the retry was cancelled: nobody waits for its outcome
            outcome = {"error": InvalidParams(ENDED).to_error()}  # the call ended under it
        except Exception:
            log.exception("resuming a parked call for another instance failed")
            outcome = {"error": PorticoError("Internal error in the gateway").to_error()}
        await self._publish(reply_to, {"kind": "outcome", "id": request["id"], **outcome}, quietly=True)

    async def _publish(self, instance: str, message: dict[str, Any], quietly: bool = False) -> bool:
        """Publish on ``instance``'s channel; whether anybody heard it."""
        try:
            async with asyncio.timeout(self._shared.timeout):
                heard = await self._shared.client.publish(self._channel_of(instance), orjson.dumps(message))
        except REDIS_ERRORS as exc:
            if quietly:
                log.warning("could not reach another gateway instance through Redis (%s)", exc)
                return False
            raise RelayUnavailable(f"Redis: {type(exc).__name__}") from None
        return bool(heard)

    def _channel_of(self, instance: str) -> str:
        return self._shared.key("instance", instance)


def _unpacked(outcome: dict[str, Any]) -> Message:
    """The owner's outcome as the retry's own: its reply, or its error raised again."""
    reply = outcome.get("reply")
    if isinstance(reply, dict):
        return reply
    error = outcome.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        raise PorticoError(str(error.get("message", "")), code=error["code"], data=error.get("data"))
    raise PorticoError("Internal error in the gateway: a malformed answer from another instance")
