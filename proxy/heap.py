"""Keeping the garbage collector's full passes off the objects the gateway keeps for its whole life.

After start-up the heap holds tens of thousands of long-lived objects (imported modules, the config, the
plugin chain, backend catalogs). CPython's full collections rescan them all, which under load measured
about 30 ms per pass and ~1.2x lower throughput at 32 calls in flight. ``gc.freeze`` moves the survivors
into a permanent generation that collections skip. What is frozen is never collected as a cycle, so after
a change that drops long-lived objects (a reload, a deregistered backend) the heap is collected and frozen
anew: rare, and a pause of tens of milliseconds then is fine.

The collector also runs too often for a server under load. Its first generation is collected every 700
net allocations of container objects; a call's own objects die by reference counting and never count, but
whatever is in flight does. When calls queue up (a burst, a rate near the gateway's limit) the live backlog
triggers collection after collection, promotes itself into the older generations and makes every full pass
scan it: bench/RESULTS.md records 3 s of a 5 s run spent collecting at 6,000 calls/s offered, and the
gateway falling behind for good where, with ``THRESHOLDS``, the same run kept up at 115 µs per call. The
price is that unreachable cycles wait longer to be freed (up to ``THRESHOLDS[0]`` new objects' worth).

The collector is the whole process's, so this is the process's choice: ``portico serve`` turns it on with
``manage()``; a program that embeds gateways (the tests run hundreds in one process) leaves it off, and
``settle()`` then does nothing.
"""

from __future__ import annotations

import gc

_managed = False

# gc.set_threshold's three thresholds while managed (CPython's defaults are 700, 10, 10).
THRESHOLDS = (50_000, 20, 100)


def manage() -> None:
    """Collect less often under load, let ``settle`` freeze the heap from now on, and settle it now."""
    global _managed
    _managed = True
    gc.set_threshold(*THRESHOLDS)
    settle()


def settle() -> None:
    """Collect everything (frozen objects included), then freeze what survived; only when managed."""
    if not _managed:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
