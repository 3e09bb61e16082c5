"""The redact plugin: every message, both ways, leaves with its secrets and personal data replaced."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Mapping

from plugins.redact.detectors import BUILTIN, Detector
from plugins.redact.options import RedactOptions
from plugins.redact.redactor import Blocked, Redactor
from proxy import jsonrpc
from proxy.chain import REDACTED_REQUEST, REDACTIONS, Context, Direction, Handler, PluginCounter
from proxy.errors import ErrorCode, Rejection
from proxy.jsonrpc import Message

log = logging.getLogger("portico.redact")

# The hash action's key when the options give none: drawn once per process, so equal values hash alike
# across every redact instance of this gateway process (and differently after a restart).
_PROCESS_HASH_KEY = secrets.token_bytes(32)


class RedactionBlocked(Rejection):
    """A message was refused because of what it contains; the message names the detector, never the value."""

    code = ErrorCode.REDACTION_BLOCKED


class Redact:
    """Replaces what the detectors find in every string of every message, in both directions.

    On the way in (before ``call_next``) the message is redacted; on the way back, the reply. A message
    that cannot be redacted (a ``block`` detector fired, the redaction failed or ran out of time) is never
    forwarded: a request is refused with ``RedactionBlocked``, a notification is dropped, and a reply is
    replaced by an error reply for the request's id.
    """

    Options = RedactOptions

    def __init__(self, options: RedactOptions | None = None) -> None:
        self.options = options or RedactOptions()
        detectors = build_detectors(self.options)
        actions = {d.name: self.options.action_for(d.name, d.category) for d in detectors}
        key = self.options.hash_key
        hash_key = key.get_secret_value().encode() if key is not None else _PROCESS_HASH_KEY
        self.redactor = Redactor(detectors, actions, hash_key)
        self._totals: Counter[str] = Counter()

    def counts(self) -> dict[str, int]:
        """Replacements (and blocks) per detector since the plugin started."""
        return dict(self._totals)

    def metrics(self) -> list[PluginCounter]:
        found: dict[tuple[str, ...], float] = {
            (detector,): float(count) for detector, count in sorted(self._totals.items())
        }
        help_text = "Values replaced (or blocked) by the redact plugin."
        return [PluginCounter("redactions", help_text, ("detector",), found)]

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        try:
            outgoing = await self._redacted(ctx, message, "message")
        except RedactionBlocked as exc:
            if "id" in message:
                raise
            # A notification cannot be answered; it is dropped, and the log names the detector only.
            log.info("dropped %s (%s): %s", ctx.method, ctx.direction.value, exc.message)
            return None
        if ctx.direction is Direction.TO_BACKEND and "id" in message and "method" in message:
            # What an audit record further out may show of a client's request: what went on, never what
            # came in. (No copy: the gateway never changes a message in place; the forwarder copies.)
            ctx.set(REDACTED_REQUEST, outgoing)
        reply = await call_next(ctx, outgoing)
        if reply is None:
            return None
        try:
            return await self._redacted(ctx, reply, "reply")
        except RedactionBlocked as exc:
            log.info("replaced the reply to %s (%s): %s", ctx.method, ctx.direction.value, exc.message)
            return jsonrpc.error_from(message.get("id"), exc)

    async def _redacted(self, ctx: Context, message: Message, what: str) -> Message:
        try:
            outcome = self._redact_inline(message)
            if outcome is None:
                outcome = await self._redact_in_thread(message)
        except Blocked as exc:
            self._record(ctx, Counter({exc.detector: 1}), what)
            raise RedactionBlocked(f"blocked: {exc.detector}", data={"detector": exc.detector}) from None
        except Exception as exc:
            # Only the exception's type: its message might quote the text being scanned.
            log.warning("redaction of a %s %s failed (%s); blocked", ctx.method, what, type(exc).__name__)
            raise RedactionBlocked("blocked: redaction failed") from None
        redacted, counts = outcome
        if counts:
            self._record(ctx, counts, what)
        elif ctx.get(REDACTIONS) is None:
            ctx.set(REDACTIONS, {})
        return redacted

    def _redact_inline(self, message: Message) -> tuple[Message, Mapping[str, int]] | None:
        """A small message, redacted inline (a thread hop costs more than the scan); None at once for a big
        one, which goes to ``_redact_in_thread``. Either way a redaction over budget blocks the message.

        A plain function, not a coroutine: the usual, small message costs no coroutine of its own."""
        started = time.monotonic()
        outcome = self.redactor.redact(message, self.options.thread_above_bytes)
        if outcome is not None and time.monotonic() - started > self.options.timeout_seconds:
            raise TimeoutError
        return outcome

    async def _redact_in_thread(self, message: Message) -> tuple[Message, Mapping[str, int]]:
        """A big message, redacted in a worker thread under the time budget."""
        async with asyncio.timeout(self.options.timeout_seconds):
            outcome = await asyncio.to_thread(self.redactor.redact, message)
        if outcome is None:
            raise RuntimeError("the redactor declined a message without a size limit")
        return outcome

    def _record(self, ctx: Context, counts: Mapping[str, int], what: str) -> None:
        self._totals.update(counts)
        combined: Counter[str] = Counter(ctx.get(REDACTIONS, {}))
        combined.update(counts)
        ctx.set(REDACTIONS, dict(combined))
        if log.isEnabledFor(logging.DEBUG):
            summary = ", ".join(f"{name}={count}" for name, count in sorted(counts.items()))
            log.debug("redacted %s %s (%s): %s", ctx.method, what, ctx.direction.value, summary)


def build_detectors(options: RedactOptions) -> list[Detector]:
    """The enabled detectors in order: the built-in ones, then the operator's own patterns."""
    custom = [
        # Multi-line: the scanner joins strings with newlines, and ^ and $ must still hold at their edges.
        Detector(pattern.name, "custom", pattern.regex, flags=re.MULTILINE)
        for pattern in options.patterns
    ]
    disabled = set(options.disabled)
    return [detector for detector in (*BUILTIN, *custom) if detector.name not in disabled]
