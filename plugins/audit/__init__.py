"""The audit log: one JSON line per request a client sends, written after its reply (config name: ``audit``).

Put ``- name: audit`` first in ``plugins:`` so it is the outermost layer: it sees every request, including
those a later plugin refuses, and the reply exactly as the client gets it (after redaction). Only requests
from clients are recorded (direction ``TO_BACKEND``, messages with an ``id``); notifications and everything a
backend sends the client make no line. A refusal raised further in (``AccessDenied``, ``RateLimited``, ...)
is recorded with its code and raised on unchanged.

The line format is a stable interface. Keys appear in this order; those marked * are only present when
they apply, and no other key is ever written::

    time        when the request arrived: RFC 3339, UTC, milliseconds ("2026-05-01T12:34:56.789Z")
    request_id  the JSON-RPC id the client chose (a number or a string)
    session     the client session's id
    transport   the client's transport: "websocket", "streamable-http" or "sse"
    principal   who asked: {"subject", "kind", "tenant"*}; never the credential, never the token's claims
    method      the JSON-RPC method ("tools/call", "resources/read", "tools/list", ...)
    backend*    the backend a routed request addresses
    tool* | prompt* | resource*
                the backend's own name (or URI) of what a routed request addresses; one of the three
    decision*   how the policy plugin decided: "allow by: p, <rule>", "deny by: p, <rule>",
                "deny: no rule matched (default deny)"; absent when no policy decided this request
    outcome     "ok", "tool_error" (a result with isError), "error <code>" (an error reply or a refusal),
                "cancelled" (the client left or the session ended first) or "no_reply"
    error_code* the JSON-RPC error code, when the outcome is an error
    ms          milliseconds from the request's arrival to its reply (or failure), 3 decimals
    bytes_in    the request's serialized size in bytes (null in the rare case it cannot be re-serialized)
    bytes_out   the reply's serialized size in bytes (0 when there was none; for a refusal, the error reply)
    redactions* replacements per detector in the request and its reply ({} when redact found nothing);
                absent when no redact plugin ran on this request (none in the chain, or the request
                was refused before it reached redact)
    params*     only with include_payloads: the request's params as the redact plugin passed them on
    result*     only with include_payloads, and only for a result reply: the result the client got

The gateway's admin API (``proxy.admin``) hands each of its calls to ``Audit.record_admin``, which writes
it to the same output as a line of its own kind: ``time``, ``event`` ("admin"), ``principal``
({"subject", "kind"}, or null when the call was refused before anyone was identified), ``remote``,
``method`` (the HTTP method), ``path`` and ``status`` (the HTTP status answered).

Arguments and results are never recorded unless ``include_payloads`` is true, and then only as redacted:
when no redact plugin ran on the request, ``params`` and ``result`` are the text
``"[not logged: no redaction in the chain]"``.

Options (``AuditOptions``):
    file: append lines to this file instead of standard output (the default).
    max_bytes: rotate the file when it would grow past this size (default 10 MiB, at least 1024).
    backups: rotated files kept, ``<file>.1`` the newest (default 5, at least 1).
    include_payloads: also record params and results, redacted (default false).
    recent: how many of the latest records are also kept in memory for the web console's list
            (default 200; 0 keeps none).

Lines are written by a thread of their own (a queue in between), so a slow disk never stalls requests;
if the queue fills up (100 000 lines), lines are dropped and the operator's log says how many. The lines
go through a private logger that does not propagate: they never mix into the operator's log.
"""

from __future__ import annotations

from plugins.audit.options import AuditOptions
from plugins.audit.plugin import Audit
from plugins.audit.record import NOT_LOGGED

__all__ = ["NOT_LOGGED", "Audit", "AuditOptions", "plugin"]

plugin = Audit
