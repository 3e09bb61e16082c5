"""Where audit lines are written: standard output or a size-rotated file, from a thread of their own.

The event loop only puts a line on a bounded queue (``QueueHandler``); a ``QueueListener`` thread does the
writing, so a slow disk or a full pipe never stalls requests. The lines go through a private logger that is
not in the logging registry and does not propagate: they never mix into the operator's own log, and the
operator's logging configuration cannot silence them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any

from plugins.audit.options import AuditOptions

log = logging.getLogger("portico.audit")

# Lines waiting for the writer thread; beyond this many (a stalled disk) lines are dropped and counted
# rather than letting memory grow without bound or blocking the event loop.
MAX_PENDING_LINES = 100_000
# How long closing waits for the lines still queued to be written.
CLOSE_SECONDS = 10.0


class _LossyQueueHandler(QueueHandler):
    """Puts records on the queue without ever blocking; counts (and reports) those that do not fit."""

    def __init__(self, pending: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(pending)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("audit: the output is too slow; %d line(s) dropped so far", self.dropped)


class _Writer(QueueListener):
    """The writer thread. Its stop sentinel waits for room on a full queue (it runs in a worker thread,
    never in the event loop), where the base class would raise ``queue.Full``."""

    def __init__(self, pending: queue.Queue[Any], target: logging.Handler) -> None:
        super().__init__(pending, target)
        self._pending = pending

    def enqueue_sentinel(self) -> None:
        self._pending.put(getattr(self, "_sentinel", None))


class AuditSink:
    """Writes one line per ``write`` call, in order, off the event loop; ``close`` flushes and stops."""

    def __init__(self, options: AuditOptions) -> None:
        self.target = _open_target(options)
        self.target.setFormatter(logging.Formatter("%(message)s"))
        pending: queue.Queue[logging.LogRecord] = queue.Queue(MAX_PENDING_LINES)
        self._enqueue = _LossyQueueHandler(pending)
        # Built directly, not with getLogger: a logger of its own, outside the logging hierarchy.
        self._logger = logging.Logger("portico.audit.lines", logging.INFO)
        self._logger.propagate = False
        self._logger.addHandler(self._enqueue)
        self._writer = _Writer(pending, self.target)
        self._writer.start()
        self._closed = False

    @property
    def writing(self) -> bool:
        """Whether the writer thread is running (until ``close``)."""
        thread = getattr(self._writer, "_thread", None)
        return isinstance(thread, threading.Thread) and thread.is_alive()

    @property
    def dropped(self) -> int:
        return self._enqueue.dropped

    def write(self, line: str) -> None:
        if not self._closed:
            self._logger.info(line)

    async def close(self) -> None:
        """Write what is queued (for at most ``CLOSE_SECONDS``), stop the thread and close the file."""
        if self._closed:
            return
        self._closed = True
        self._logger.removeHandler(self._enqueue)
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await asyncio.to_thread(self._stop)
        except TimeoutError:
            log.warning("audit: lines still unwritten after %.0f s were abandoned", CLOSE_SECONDS)
        if self.dropped:
            log.warning("audit: %d line(s) were dropped in all (the output was too slow)", self.dropped)

    def _stop(self) -> None:
        self._writer.stop()
        self.target.close()


def _open_target(options: AuditOptions) -> logging.Handler:
    if options.file is None:
        return logging.StreamHandler(sys.stdout)
    try:
        # Like the token store, the file may live in a folder not made yet (``.portico/audit.log``).
        Path(options.file).parent.mkdir(parents=True, exist_ok=True)
        return RotatingFileHandler(
            options.file, maxBytes=options.max_bytes, backupCount=options.backups, encoding="utf-8"
        )
    except OSError as exc:
        raise OSError(f"cannot open the audit file {options.file!r}: {exc.strerror or exc}") from None
