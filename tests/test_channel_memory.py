"""What a live channel holds: the batching core keeps a FIFO of its own only while items wait, and a live channel
of the asyncio API that is not busy stays small (the Python objects it holds, counted with tracemalloc).

The process's RSS after many channels went idle is a benchmark's figure (bench/bench_idle_memory.py), not a
test's: what the allocator keeps moves with the machine. The peak a burst of new channels reaches, and so what
fragmentation can pin afterwards, is what a live channel holds times how many are live at once."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import deque

import pytest

from actors.batching import _NO_WAITING, ChannelCore, Deliver
from message_queue import MessageQueue, QueuedMessage
from protocol.values import BatchSettings, Payload

CHANNEL = "chan-1"


def message(text: str, channel: str = CHANNEL) -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id="u", user_name="U", text=text)


def new_core() -> ChannelCore:
    core = ChannelCore(CHANNEL, BatchSettings(window=1.0, max_batch_size=2))
    core.attach(0.0)
    return core


def test_a_new_channel_and_one_whose_items_went_straight_out_hold_no_fifo_of_their_own() -> None:
    core = new_core()
    assert core._fifo is _NO_WAITING
    effects = core.enqueue(message("a"), 0.0) + core.enqueue(message("b"), 0.1)  # full: delivered at once
    assert [type(e) for e in effects if isinstance(e, Deliver)] == [Deliver]
    assert core._fifo is _NO_WAITING and core.queued == 0


def test_the_fifo_is_the_channels_own_while_items_wait_and_goes_when_the_last_one_leaves() -> None:
    core = new_core()
    for n in range(6):  # item 1 in flight, items 2 and 3 waiting
        core.enqueue(message(f"m{n}"), n * 0.1)
    assert core.queued == 2
    own = core._fifo
    assert own is not _NO_WAITING and type(own) is deque
    core.finish(1, None, 1.0)  # item 2 goes out, item 3 waits
    assert core._fifo is own and core.queued == 1
    core.finish(2, None, 1.1)  # item 3 goes out: nothing waits
    assert core._fifo is _NO_WAITING and core.queued == 0
    core.enqueue_front(message("front"), 1.2)  # waits behind item 3 in flight: a new FIFO of its own
    assert core._fifo is not _NO_WAITING and core.queued == 1
    removed, _ = core.clear()
    assert removed == 1 and core._fifo is _NO_WAITING and _NO_WAITING == deque()


def test_the_shared_empty_fifo_refuses_additions_and_stays_empty() -> None:
    waiting = ChannelCore(CHANNEL)._fifo
    for add in (waiting.append, waiting.appendleft):
        with pytest.raises(TypeError, match="read-only"):
            add(None)  # type: ignore[arg-type]
    for add_all in (waiting.extend, waiting.extendleft):
        with pytest.raises(TypeError, match="read-only"):
            add_all([None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="read-only"):
        waiting.insert(0, None)  # type: ignore[arg-type]
    assert len(_NO_WAITING) == 0


LIVE_CHANNELS = 2_000
# Python objects a live channel of the asyncio API holds once its one message was delivered: its actor, batching
# core, timer entry and records (about 1.6 KB). With an empty deque in each of three places it held 3.8 KB.
MAX_BYTES_PER_LIVE_CHANNEL = 2_500


def test_a_live_channel_that_is_not_busy_holds_little() -> None:
    async def run() -> float:
        delivered = 0

        async def callback(item: Payload) -> None:
            nonlocal delivered
            delivered += 1

        async with MessageQueue(default_batch_window=0.0, max_batch_size=1, idle_timeout=600.0) as mq:
            await mq.start_processing("warm-up", callback)
            await mq.enqueue(message("x", "warm-up"))
            await mq.statistics("warm-up")
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                for n in range(LIVE_CHANNELS):
                    channel = f"chat:{n}"
                    await mq.start_processing(channel, callback)
                    await mq.enqueue(message("hello", channel))
                live = await mq.statistics()
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            assert len(live) == LIVE_CHANNELS + 1 and delivered == LIVE_CHANNELS + 1
            grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
            return grown / LIVE_CHANNELS

    per_channel = asyncio.run(run())
    assert per_channel <= MAX_BYTES_PER_LIVE_CHANNEL, f"{per_channel:.0f} bytes per live channel"
