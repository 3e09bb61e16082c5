"""The Streamable HTTP sessions of one gateway instance: made, found, continued, swept, ended.

In memory by default. With the ``redis`` section, sessions are shared by every instance (see
``proxy.transports.shared_sessions``): this instance's ``clients`` are then its local copies, made on
``initialize`` or on the first request that reaches it, and a copy that idles here is let go without
ending the session, which lives on as long as any instance keeps it in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import orjson
from aiohttp import web

from proxy.gateway import Gateway
from proxy.jsonrpc import Kind, classify
from proxy.session import Session, new_session_id
from proxy.transports.authentication import Admission
from proxy.transports.http_channel import HttpChannel
from proxy.transports.shared_sessions import (
    News,
    SessionDirectory,
    SessionRecord,
    SharedStoreUnavailable,
)
from proxy.transports.sse import EventStore

log = logging.getLogger("portico.http")

Client = tuple[Session, HttpChannel]


class HttpSessions:
    """Every open Streamable HTTP session of one gateway instance, by id."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.clients: dict[str, Client] = {}
        self._sweeper: asyncio.Task[None] | None = None
        listen = gateway.config.listen
        self.directory = (
            SessionDirectory(
                gateway.shared,
                listen.session_idle_seconds,
                listen.event_store_size,
                self._heard,
                self._resync,
            )
            if gateway.shared is not None
            else None
        )
        # When each shared session's record was last kept alive from here.
        self._touched: dict[str, float] = {}
        # What was last written of each shared session's record, so it is written again only on change.
        self._saved: dict[str, SessionRecord] = {}

    @property
    def shared(self) -> bool:
        return self.directory is not None

    def create(self, remote: str, admission: Admission) -> Client:
        return self._add(new_session_id(), remote, admission, None)

    def _add(
        self, session_id: str, remote: str, admission: Admission, record: SessionRecord | None
    ) -> Client:
        store = (
            self.directory.events_of(session_id)
            if self.directory is not None
            else EventStore(self.gateway.config.listen.event_store_size)
        )
        channel = HttpChannel(store)
        if self.directory is not None:
            channel.hand_over = functools.partial(self._hand_over, session_id)
        session = Session(
            self.gateway,
            "streamable-http",
            channel,
            remote=remote,
            view=admission.view,
            session_id=session_id,
        )
        if record is not None:
            record.restore(session)
            self._saved[session_id] = record
            self._touched[session_id] = time.monotonic()
            # Unrelated messages keep going out where the session's GET stream is, until one opens here.
            channel.keeps_unrelated = False
        session.authenticated(admission.principal)
        self.clients[session_id] = (session, channel)
        return session, channel

    async def adopt(self, session_id: str, remote: str, admission: Admission) -> Client | None:
        """A local copy of a session another instance made, if Redis has it and it is this caller's."""
        if self.directory is None:
            return None
        record = await self.directory.load(session_id)
        if record is None or record.subject != admission.principal.subject:
            return None
        if record.view != (admission.view.name if admission.view is not None else None):
            return None
        # Another request of the session may have made the copy while this one read the record.
        existing = self.clients.get(session_id)
        if existing is not None:
            return existing
        log.info("session %s continued on this instance", session_id)
        return self._add(session_id, remote, admission, record)

    async def saw(self, session: Session) -> None:
        """A request of ``session`` was handled here: write its record if it changed, keep it alive."""
        if self.directory is None or session.protocol_version is None or session.closed:
            return
        record = SessionRecord.of(session)
        now = time.monotonic()
        try:
            if self._saved.get(session.id) != record:
                await self.directory.save(session.id, record)
                self._saved[session.id] = record
                self._touched[session.id] = now
            elif now - self._touched.get(session.id, 0.0) > _touch_interval(self.directory.idle_seconds):
                await self.directory.touch(session.id)
                self._touched[session.id] = now
        except SharedStoreUnavailable as exc:
            # The session goes on here; only continuing it on another instance may fail meanwhile.
            log.warning("could not keep session %s in Redis (%s)", session.id, exc)

    async def opened_stream(self, session_id: str, channel: HttpChannel) -> None:
        """A GET stream opened here: the session's unrelated messages go out here from now on."""
        channel.keeps_unrelated = True
        if self.directory is not None:
            with contextlib.suppress(SharedStoreUnavailable):
                await self.directory.announce(News(session_id, "stream"))

    async def relay(self, session_id: str, message: dict[str, object]) -> None:
        """A client's response or notification POSTed here reaches the session's other copies too (the
        request it answers or cancels may be waiting on another instance)."""
        if self.directory is None:
            return
        try:
            await self.directory.announce(News(session_id, "message", message))
        except SharedStoreUnavailable as exc:
            log.warning("could not pass a message of session %s to other instances (%s)", session_id, exc)

    async def _hand_over(self, session_id: str, frame: bytes) -> None:
        """A message for the client that this copy does not send: to the copy holding the GET stream."""
        assert self.directory is not None  # noqa: S101 - set only on shared sessions
        message = orjson.loads(frame)
        if str(message.get("method", "")).endswith("/list_changed"):
            return  # the holder's own backends tell it; handed over too, the client would hear it twice
        try:
            await self.directory.announce(News(session_id, "unrelated", message))
        except SharedStoreUnavailable as exc:
            log.warning("could not pass a message to session %s's stream elsewhere (%s)", session_id, exc)

    async def end(self, session_id: str) -> None:
        """End the session, everywhere."""
        await self._let_go(session_id)
        if self.directory is not None:
            try:
                await self.directory.remove(session_id)
            except SharedStoreUnavailable as exc:
                log.warning("session %s ended here; Redis did not hear of it (%s)", session_id, exc)

    async def _let_go(self, session_id: str) -> None:
        """End the local copy only."""
        self._touched.pop(session_id, None)
        self._saved.pop(session_id, None)
        client = self.clients.pop(session_id, None)
        if client is not None:
            session, channel = client
            channel.ended.set()
            await asyncio.shield(self.gateway.end_session(session))

    async def _heard(self, news: News) -> None:
        client = self.clients.get(news.session)
        if client is None:
            return
        session, channel = client
        if news.event == "ended":
            await self._let_go(news.session)
        elif news.event == "stream":
            channel.keeps_unrelated = False
            if channel.standalone is not None:
                # The client opened its stream elsewhere; this one is stale.
                channel.standalone.alive = False
        elif news.event == "unrelated" and news.message is not None:
            if channel.keeps_unrelated:
                await channel.send(orjson.dumps(news.message), None)
        elif news.message is not None and classify(news.message) in (Kind.RESPONSE, Kind.NOTIFICATION):
            await session.receive_parsed(news.message)

    async def _resync(self) -> None:
        # After the channel was lost: a session ended meanwhile has no record any more.
        if self.directory is None:
            return
        for session_id in list(self.clients):
            with contextlib.suppress(SharedStoreUnavailable):
                if await self.directory.load(session_id) is None:
                    await self._let_go(session_id)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        if self.directory is not None:
            self.directory.listener.start()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.directory is not None:
            await self.directory.listener.stop()
        for session_id in list(self.clients):
            # Shutting down one instance ends only its copies: the sessions live on elsewhere.
            await (self._let_go(session_id) if self.shared else self.end(session_id))

    async def _sweep(self) -> None:
        idle_seconds = self.gateway.config.listen.session_idle_seconds
        while True:
            await asyncio.sleep(min(60.0, idle_seconds / 2))
            cutoff = time.monotonic() - idle_seconds
            for session_id, (_, channel) in list(self.clients.items()):
                if channel.idle() and channel.last_active < cutoff:
                    log.info("session %s ended after %.0f s idle here", session_id, idle_seconds)
                    # Shared: another instance may be using it; its record expires by itself if not.
                    await (self._let_go(session_id) if self.shared else self.end(session_id))


def _touch_interval(idle_seconds: float) -> float:
    # Often enough that a session in use never expires, rarely enough to cost nothing per request.
    return min(60.0, idle_seconds / 10)


HTTP_SESSIONS = web.AppKey("http_sessions", HttpSessions)
