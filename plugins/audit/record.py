"""One audit record: what a client asked, who asked, what was decided, and how it ended.

The field list and its meaning are the ``plugins.audit`` docstring: a stable interface, pinned by tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy import jsonrpc
from proxy.chain import POLICY_DECISION, REDACTED_REQUEST, REDACTIONS, Context
from proxy.errors import ErrorCode, PorticoError
from proxy.jsonrpc import Message

# What stands in for the params and the result when nothing redacted them: an audit log must never become
# the one place a secret is kept in clear.
NOT_LOGGED = "[not logged: no redaction in the chain]"
# The record's key for what a route addresses, by the route's kind (a resource read through a template
# still names a resource).
ROUTE_KEYS = {"tool": "tool", "prompt": "prompt", "resource": "resource", "template": "resource"}


@dataclass(frozen=True, slots=True)
class Arrival:
    """What is known of a request when it comes in: when, and how big."""

    epoch: float
    started: float
    bytes_in: int | None

    @classmethod
    def of(cls, message: Message) -> Arrival:
        return cls(time.time(), time.perf_counter(), size_of(message))


@dataclass(frozen=True, slots=True)
class Ending:
    """How a request ended: its outcome, the error code if it failed, and the reply the client got."""

    outcome: str
    error_code: int | None = None
    # The reply as the client receives it (None when the request was cancelled or had no reply).
    reply: Message | None = None

    @classmethod
    def replied(cls, reply: Message | None) -> Ending:
        if reply is None:
            return cls("no_reply")
        error = reply.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return cls(f"error {code}", code if isinstance(code, int) else None, reply)
        result = reply.get("result")
        if isinstance(result, dict) and result.get("isError") is True:
            return cls("tool_error", reply=reply)
        return cls("ok", reply=reply)

    @classmethod
    def raised(cls, message: Message, exc: Exception) -> Ending:
        """A refusal or failure raised further in; the reply is the one the chain's boundary will send."""
        error = exc if isinstance(exc, PorticoError) else PorticoError("Internal error")
        code = error.code if isinstance(exc, PorticoError) else ErrorCode.INTERNAL_ERROR
        return cls(f"error {code}", code, jsonrpc.error_from(message["id"], error))

    @classmethod
    def cancelled(cls) -> Ending:
        return cls("cancelled")


def audit_record(
    ctx: Context, message: Message, arrival: Arrival, ending: Ending, *, include_payloads: bool
) -> dict[str, Any]:
    """The record of one client request, in the documented field order."""
    record: dict[str, Any] = {
        "time": rfc3339(arrival.epoch),
        "request_id": message["id"],
        "session": ctx.session.id,
        "transport": ctx.session.transport,
        "principal": principal_of(ctx),
        "method": ctx.method,
    }
    if ctx.route is not None:
        record["backend"] = ctx.route.backend
        key = ROUTE_KEYS.get(ctx.route.kind)
        if key is not None:
            record[key] = ctx.route.name
    decision = ctx.get(POLICY_DECISION)
    if decision is not None:
        record["decision"] = decision
    record["outcome"] = ending.outcome
    if ending.error_code is not None:
        record["error_code"] = ending.error_code
    record["ms"] = round(1000 * (time.perf_counter() - arrival.started), 3)
    record["bytes_in"] = arrival.bytes_in
    record["bytes_out"] = size_of(ending.reply) if ending.reply is not None else 0
    redactions = ctx.get(REDACTIONS)
    if redactions is not None:
        record["redactions"] = dict(redactions)
    if include_payloads:
        record.update(payloads(ctx, ending.reply))
    return record


def payloads(ctx: Context, reply: Message | None) -> dict[str, Any]:
    """The params as the redact plugin forwarded them and the result as it came back through it, or
    ``NOT_LOGGED`` for both when no redaction ran on this request."""
    redacted = ctx.get(REDACTED_REQUEST)
    has_result = reply is not None and "result" in reply
    if redacted is None:
        return {"params": NOT_LOGGED, **({"result": NOT_LOGGED} if has_result else {})}
    shown: dict[str, Any] = {"params": redacted.get("params")}
    if reply is not None and has_result:
        shown["result"] = reply["result"]
    return shown


def principal_of(ctx: Context) -> dict[str, str]:
    """Who asked: never the credential, nor the token's claims."""
    principal = ctx.principal
    shown = {"subject": principal.subject, "kind": principal.kind}
    if principal.tenant is not None:
        shown["tenant"] = principal.tenant
    return shown


def rfc3339(epoch: float) -> str:
    """``2026-05-01T12:34:56.789Z``: UTC, milliseconds."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def size_of(message: Message) -> int | None:
    """The serialized size in bytes (None for what orjson cannot serialize, such as a huge integer)."""
    try:
        return len(orjson.dumps(message))
    except TypeError:
        return None


def to_line(record: dict[str, Any]) -> str:
    """The record as one JSON line; payloads that cannot be serialized are replaced, not the record lost."""
    try:
        return orjson.dumps(record).decode()
    except TypeError:
        for key in ("params", "result"):
            if key in record:
                record[key] = "[not logged: not serializable]"
        return orjson.dumps(record, default=repr).decode()
