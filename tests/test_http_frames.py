"""An exchange's frames: taken in order, one reader at a time, and none lost when a reader is cancelled
(aiohttp cancels the handler of a client that went away; the frames stay for whoever takes over)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.transports.http_channel import Frames


async def test_frames_are_taken_in_order_whether_queued_before_or_during_the_wait() -> None:
    frames = Frames(asyncio.get_running_loop())
    frames.put_nowait((b"progress", False))
    assert await frames.get() == (b"progress", False)
    reader = asyncio.create_task(frames.get())
    await asyncio.sleep(0)
    assert not reader.done()
    frames.put_nowait((b"second", False))
    frames.put_nowait((b"reply", True))
    assert await reader == (b"second", False)
    assert await frames.get() == (b"reply", True)


async def test_a_cancelled_reader_takes_nothing() -> None:
    frames = Frames(asyncio.get_running_loop())
    reader = asyncio.create_task(frames.get())
    await asyncio.sleep(0)
    frames.put_nowait((b"reply", True))
    reader.cancel()  # cancelled after the frame came, before the reader ran again
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await asyncio.wait_for(frames.get(), 1) == (b"reply", True)
