"""Sharing of identical concurrent requests (config name: ``dedup``).

While a request is in flight, an identical one (same backend and target, same method, same params apart
from ``_meta``, same caller, same policy version, same protocol version) does not make a second call: it
waits for the first one's answer and gets a copy under its own id. Errors are shared the same way. Only
what only reads is shared: ``resources/read``, ``prompts/get``, ``completion/complete`` and calls of tools
annotated ``readOnlyHint``, plus the tools the ``tools`` option names. Once the call ends the group ends:
keeping answers is the cache plugin's job.

The call runs in a task owned by its group: cancelling the caller that started it, or closing that
caller's connection, leaves the others answered; only when every caller has gone is the call cancelled
(and the backend told). Progress notifications go to the first caller only (the backend knows only its
``progressToken``); the callers that joined later receive none.

Place it after ``auth`` and ``policy`` (every caller is authorized for itself) and before plugins whose
work should be shared; plugins after it do not run for the callers that joined.

Options (see ``DedupOptions``): ``tools`` (globs on ``backend/tool/name``), ``shared_backends`` (answers are
the same for every principal), ``session_backends`` (share only within one client session).
Counts: ``Dedup.counts()``.
"""

from __future__ import annotations

from plugins.dedup.identity import DedupOptions, RequestIdentity
from plugins.dedup.plugin import CallGroup, Dedup, SharedCallCancelled

__all__ = ["CallGroup", "Dedup", "DedupOptions", "RequestIdentity", "SharedCallCancelled", "plugin"]

plugin = Dedup
