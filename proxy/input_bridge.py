"""A legacy backend's questions, put to a modern client the modern way (multi-round-trip requests).

A legacy backend asks for sampling, elicitation or roots with a server-to-client request in the middle
of a call, and waits for the answer. A modern (2026-07-28) client cannot be sent requests: it must be
answered with an ``InputRequiredResult`` and it retries the call later, bringing the answers. So the
gateway keeps the backend's call running (*parks* it), answers the client with the backend's questions
and a ``requestState`` naming the parked call, and resumes the call when the retry arrives.

The ``requestState`` is the gateway's own and the specification treats it as attacker-controlled: it is
signed (HMAC-SHA256 with a server secret), bound to the principal and to the request (method and
target), and expires. A parked call nobody comes back for is cancelled upstream when its state expires.

With the ``redis`` section the state also names the instance holding the call, and a retry that reaches
another instance is carried to it and back (``proxy.parked_relay``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from proxy import jsonrpc
from proxy.chain import Context
from proxy.errors import ErrorCode, InvalidParams, PorticoError
from proxy.jsonrpc import Message
from proxy.parked_relay import ENDED, ParkedRelay
from proxy.shared_redis import SharedRedis

if TYPE_CHECKING:
    from proxy.session import Session

log = logging.getLogger("portico.input")

STATE_PREFIX = "portico1."
# After a backend's first question, how long to wait for others it sends at the same moment, so they
# reach the client together in one InputRequiredResult rather than one round each.
_GATHER_SECONDS = 0.05
# Requests whose results may be an InputRequiredResult.
RESUMABLE_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})


class StateSigner:
    """Signs and checks the claims a ``requestState`` carries; the secret never leaves the gateway."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, claims: dict[str, Any]) -> str:
        payload = _b64(orjson.dumps(claims))
        return f"{STATE_PREFIX}{payload}.{self._sign(payload)}"

    def claims(self, state: str) -> dict[str, Any]:
        """The claims of a state this gateway issued; raises InvalidParams for anything else."""
        payload, _, signature = state.removeprefix(STATE_PREFIX).partition(".")
        if not state.startswith(STATE_PREFIX) or not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidParams("Invalid params: requestState was not issued by this gateway or was altered")
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, orjson.JSONDecodeError, ValueError):
            raise InvalidParams("Invalid params: requestState is malformed") from None
        if not isinstance(claims, dict):
            raise InvalidParams("Invalid params: requestState is malformed")
        return claims

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(eq=False)
class _Ask:
    """One request of the backend's, waiting for the client's answer."""

    message: Message
    answer: asyncio.Future[Message]


@dataclass(eq=False)
class _ParkedCall:
    id: str
    session: Session
    call: asyncio.Task[Message]
    # Whom and what its states are for (the principal's subject; the request's binding).
    principal: str
    binding: str
    arrivals: asyncio.Queue[_Ask] = field(default_factory=asyncio.Queue)
    # Questions put to the client and not answered yet, by the key the client answers them under.
    outstanding: dict[str, _Ask] = field(default_factory=dict)
    keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    expiry: asyncio.TimerHandle | None = None
    # Each InputRequiredResult names its round; only the latest round's state resumes the call.
    round: int = 0
    # Set when the call cannot go on for a reason the client must hear (a capability it lacks).
    failure: asyncio.Future[PorticoError] = field(default_factory=asyncio.Future)


class InputBridge:
    """Parked calls of modern clients on legacy backends; see the module docstring."""

    def __init__(
        self,
        secret: bytes | None,
        ttl_seconds: float,
        end_session: Callable[[Session], Any],
        shared: SharedRedis | None = None,
    ) -> None:
        self._signer = StateSigner(secret or secrets.token_bytes(32))
        # Retries that reach this instance for a call parked on another, and back (with ``redis``).
        self.relay = ParkedRelay(shared, self._resume_forwarded) if shared is not None else None
        self._ttl = ttl_seconds
        self._end_session = end_session
        self._parked: dict[str, _ParkedCall] = {}
        # The calls running for each session, so a backend's request finds the call it belongs to.
        self._running: dict[str, list[_ParkedCall]] = {}

    def start(self) -> None:
        if self.relay is not None:
            self.relay.start()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()

    def owns(self, state: object) -> bool:
        return isinstance(state, str) and state.startswith(STATE_PREFIX)

    async def call(
        self, ctx: Context, session: Session, start: Callable[[], Coroutine[Any, Any, Message]]
    ) -> Message:
        """Run a modern client's call on a legacy backend: its result, or the backend's questions."""
        task = asyncio.get_running_loop().create_task(start())
        parked = _ParkedCall(secrets.token_urlsafe(18), session, task, _principal(ctx), _binding(ctx))
        self._parked[parked.id] = parked
        self._running.setdefault(session.id, []).append(parked)
        session.parked += 1
        return await self._next(parked)

    async def resume(self, ctx: Context, state: str, params: dict[str, Any]) -> Message:
        """The client's retry: check its state, hand the answers to the backend, and go on waiting;
        or, for a call parked on another instance, have that instance do so."""
        principal, binding = _principal(ctx), _binding(ctx)
        claims = self._checked(state, principal, binding)
        answers = params.get("inputResponses", {})
        parked = self._parked.get(str(claims.get("call")))
        owner = claims.get("at")
        if parked is None and self.relay is not None and owner not in (None, self.relay.instance):
            return await self.relay.forward(str(owner), state, answers, principal, binding, ctx.remaining())
        return await self._resume(claims, parked, answers)

    async def _resume_forwarded(self, state: str, answers: object, principal: str, binding: str) -> Message:
        """A retry another instance forwarded: checked again here, as the relay is no authority."""
        claims = self._checked(state, principal, binding)
        return await self._resume(claims, self._parked.get(str(claims.get("call"))), answers)

    def _checked(self, state: str, principal: str, binding: str) -> dict[str, Any]:
        """The claims of a state that is genuine, in time, and for this principal and request."""
        claims = self._signer.claims(state)
        if claims.get("exp", 0) < time.time():
            raise InvalidParams("Invalid params: requestState has expired; send the request again")
        if claims.get("sub") != principal or claims.get("req") != binding:
            raise InvalidParams("Invalid params: requestState belongs to another principal or request")
        return claims

    async def _resume(self, claims: dict[str, Any], parked: _ParkedCall | None, answers: object) -> Message:
        if parked is None:
            raise InvalidParams(ENDED)
        if claims.get("round") != parked.round:
            raise InvalidParams("Invalid params: requestState is from an earlier round; use the latest one")
        if not isinstance(answers, dict):
            raise InvalidParams("Invalid params: inputResponses must be an object")
        if parked.expiry is not None:
            parked.expiry.cancel()
        for key in [k for k in parked.outstanding if k in answers]:
            ask = parked.outstanding.pop(key)
            answer = answers[key]
            if not ask.answer.done():
                ask.answer.set_result(
                    jsonrpc.result(None, answer)
                    if isinstance(answer, dict)
                    else _error("the client's answer is not an object")
                )
        return await self._next(parked)

    async def ask(self, session: Session, message: Message) -> Message:
        """A backend's request during a modern client's call: wait for the answer the retry brings."""
        running = self._running.get(session.id, [])
        if len(running) != 1:
            return _error("the gateway cannot tell which of the client's calls the request belongs to")
        ask = _Ask(message, asyncio.get_running_loop().create_future())
        running[0].arrivals.put_nowait(ask)
        return await ask.answer

    def fail(self, session: Session, failure: PorticoError) -> bool:
        """End the session's running call with an error for the client; False if there is no such call."""
        running = self._running.get(session.id, [])
        if len(running) != 1 or running[0].failure.done():
            return False
        running[0].failure.set_result(failure)
        return True

    def forget(self, session_id: str) -> None:
        """The session has closed: its parked calls end with it."""
        for parked in list(self._running.get(session_id, [])):
            self._end(parked)

    async def _next(self, parked: _ParkedCall) -> Message:
        """Wait for the call to finish or to ask something; an answer the client left out is asked again."""
        for key in [k for k, ask in parked.outstanding.items() if ask.answer.done()]:
            del parked.outstanding[key]  # the backend withdrew the question
        if not parked.outstanding and not parked.call.done():
            arrival = asyncio.ensure_future(parked.arrivals.get())
            try:
                waiters: set[asyncio.Future[Any]] = {parked.call, arrival, parked.failure}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if arrival.done():
                    self._take(parked, arrival.result())
                    await asyncio.sleep(_GATHER_SECONDS)
                else:
                    arrival.cancel()
            except asyncio.CancelledError:
                arrival.cancel()
                self._end(parked)
                raise
        if parked.failure.done():
            self._end(parked)
            raise parked.failure.result()
        if parked.call.done():
            self._end(parked)
            return parked.call.result()
        while not parked.arrivals.empty():
            self._take(parked, parked.arrivals.get_nowait())
        return self._input_required(parked)

    def _take(self, parked: _ParkedCall, ask: _Ask) -> None:
        parked.outstanding[f"{ask.message['method'].replace('/', '-')}-{next(parked.keys)}"] = ask

    def _input_required(self, parked: _ParkedCall) -> Message:
        parked.expiry = asyncio.get_running_loop().call_later(self._ttl, self._expire, parked)
        parked.round += 1
        claims: dict[str, Any] = {
            "call": parked.id,
            "round": parked.round,
            "sub": parked.principal,
            "req": parked.binding,
            "exp": int(time.time() + self._ttl),
        }
        if self.relay is not None:
            claims["at"] = self.relay.instance  # where a retry that lands elsewhere is carried
        requests = {
            key: {"method": ask.message["method"], "params": jsonrpc.params_of(ask.message)}
            for key, ask in parked.outstanding.items()
        }
        result = {
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": self._signer.issue(claims),
        }
        return jsonrpc.result(None, result)

    def _expire(self, parked: _ParkedCall) -> None:
        log.info("a parked call expired: the client did not come back with its answers in time")
        self._end(parked)

    def _end(self, parked: _ParkedCall) -> None:
        if self._parked.pop(parked.id, None) is None:
            return
        if parked.expiry is not None:
            parked.expiry.cancel()
        if not parked.call.done():
            parked.call.cancel()
        for ask in [*parked.outstanding.values(), *_drain(parked.arrivals)]:
            if not ask.answer.done():
                ask.answer.set_result(_error("the client did not come back with an answer"))
        session = parked.session
        running = self._running.get(session.id, [])
        if parked in running:
            running.remove(parked)
        if not running:
            self._running.pop(session.id, None)
        session.parked -= 1
        if session.released and not session.parked:
            self._end_session(session)


def _drain(queue: asyncio.Queue[_Ask]) -> list[_Ask]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _principal(ctx: Context) -> str:
    # The subject, not the credential: a client that refreshed its token may still come back.
    return ctx.principal.subject


def _binding(ctx: Context) -> str:
    """What a state is for: the method and the target the client named, as a digest."""
    target = ctx.route.exposed if ctx.route is not None else ""
    return hashlib.sha256(f"{ctx.method}\0{target}".encode()).hexdigest()[:32]


def _error(why: str) -> Message:
    return jsonrpc.error(None, {"code": ErrorCode.CLIENT_REQUEST_UNDELIVERABLE, "message": why})
