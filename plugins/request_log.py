"""A structured request log: one JSON line per message through the gateway, with outcome and timing.

Options:
    level: the logging level of the lines (default ``info``).
    notifications: also log notifications, not only requests (default false).
    logger: the logger name to write to (default ``portico.requests``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.chain import Context, Handler
from proxy.jsonrpc import Message


@dataclass(frozen=True)
class RequestLogOptions:
    level: Literal["debug", "info", "warning"] = "info"
    notifications: bool = False
    logger: str = "portico.requests"


class RequestLog:
    """Logs each request after its reply (or failure), so the line carries the outcome."""

    Options = RequestLogOptions

    def __init__(self, options: RequestLogOptions) -> None:
        self.options = options
        self.log = logging.getLogger(options.logger)
        self.level = logging.getLevelName(options.level.upper())

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        is_request = "id" in message
        if not (is_request or self.options.notifications) or not self.log.isEnabledFor(self.level):
            return await call_next(ctx, message)
        started = time.perf_counter()
        outcome = "error"
        try:
            reply = await call_next(ctx, message)
            outcome = _outcome(reply)
            return reply
        finally:
            self.log.log(
                self.level, "%s", orjson.dumps(self._record(ctx, message, outcome, started)).decode()
            )

    def _record(self, ctx: Context, message: Message, outcome: str, started: float) -> dict[str, Any]:
        record: dict[str, Any] = {
            "session": ctx.session.id,
            "direction": ctx.direction.value,
            "method": ctx.method,
            "outcome": outcome,
            "ms": round(1000 * (time.perf_counter() - started), 3),
        }
        if "id" in message:
            record["id"] = message["id"]
        if ctx.route is not None:
            record["backend"] = ctx.route.backend
            record[ctx.route.kind] = ctx.route.name
        return record


def _outcome(reply: Message | None) -> str:
    if reply is None:
        return "sent"
    if "error" in reply:
        return f"error {reply['error'].get('code')}"
    result = reply.get("result")
    if isinstance(result, dict) and result.get("isError"):
        return "tool error"
    return "ok"


plugin = RequestLog
