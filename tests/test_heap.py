"""proxy.heap: the long-lived heap is frozen only when the process asks, and settling frees dropped cycles."""

from __future__ import annotations

import gc
import weakref

import pytest

from proxy import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_settle_does_nothing_unless_the_process_manages_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_managed", False)
    gc.unfreeze()
    heap.settle()
    assert gc.get_freeze_count() == 0


def test_a_cycle_dropped_after_freezing_is_freed_by_the_next_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_managed", False)
    thresholds = gc.get_threshold()
    try:
        node = Node()
        dropped = weakref.ref(node)
        heap.manage()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        # Frozen: a plain collection leaves it (what a reload's dropped plugins would be without settle).
        assert dropped() is not None
        heap.settle()
        assert dropped() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_a_managed_heap_is_collected_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_managed", False)
    thresholds = gc.get_threshold()
    try:
        heap.manage()
        assert gc.get_threshold() == heap.THRESHOLDS
        assert heap.THRESHOLDS[0] > thresholds[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
