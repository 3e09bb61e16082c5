"""The audit plugin's chain layer: one record per client request, written after its reply or failure."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from plugins.audit.options import AuditOptions
from plugins.audit.record import Arrival, Ending, audit_record, to_line
from plugins.audit.sink import AuditSink
from proxy.chain import Context, Direction, Handler
from proxy.jsonrpc import Message

log = logging.getLogger("portico.audit")


class Audit:
    """Records every request a client sends, with the reply it got, as one JSON line.

    Put it first in ``plugins:`` (outermost): it then sees the request before any plugin can refuse it
    and the reply exactly as the client gets it, after redaction. A refusal raised further in is
    recorded with its code and raised on unchanged; the plugin itself never refuses anything.
    """

    Options = AuditOptions

    def __init__(self, options: AuditOptions | None = None) -> None:
        self.options = options or AuditOptions()
        self.sink = AuditSink(self.options)
        # The latest records as written, newest last (the admin API's overview shows them).
        self._recent: deque[dict[str, Any]] = deque(maxlen=self.options.recent)

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        if ctx.direction is not Direction.TO_BACKEND or "id" not in message or "method" not in message:
            return await call_next(ctx, message)
        arrival = Arrival.of(message)
        try:
            reply = await call_next(ctx, message)
        except asyncio.CancelledError:
            # The client went away or the session ended: recorded, and the cancellation goes on.
            self._write(ctx, message, arrival, Ending.cancelled())
            raise
        except Exception as exc:
            self._write(ctx, message, arrival, Ending.raised(message, exc))
            raise
        self._write(ctx, message, arrival, Ending.replied(reply))
        return reply

    def _write(self, ctx: Context, message: Message, arrival: Arrival, ending: Ending) -> None:
        try:
            record = audit_record(
                ctx, message, arrival, ending, include_payloads=self.options.include_payloads
            )
            self.sink.write(to_line(record))
            self._recent.append(record)
        except Exception:
            # A bug in building the record must not change what the client gets (nor hide a refusal).
            log.exception("audit: could not record a %s request", ctx.method)

    def record_admin(self, entry: Mapping[str, Any]) -> None:
        """Write one call of the gateway's admin API (an ``"event": "admin"`` line) to the same output."""
        try:
            self.sink.write(to_line(dict(entry)))
            self._recent.append(dict(entry))
        except Exception:
            log.exception("audit: could not record an admin call")

    def recent_records(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` of the latest records (requests and admin calls), newest first: exactly what
        was written, so never a payload unless ``include_payloads`` let it into the line."""
        return list(itertools.islice(reversed(self._recent), max(limit, 0)))

    async def close(self) -> None:
        """Write the lines still queued and stop the writer thread (the gateway calls it when it stops)."""
        await self.sink.close()
