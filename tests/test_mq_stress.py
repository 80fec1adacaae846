"""``MessageQueue`` under load and under commands racing with timer flushes, on a real actor system."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any, Coroutine

from mq_support import Waitable
from test_message_queue_api import NO_COUNTS

from message_queue import MessageBatch, MessageQueue, QueuedMessage
from protocol.values import Payload

TIMEOUT = 40.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(channel: str, seq: int) -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id="u", user_name="U", text=str(seq))


def seqs(item: Payload) -> list[int]:
    messages = item.messages if isinstance(item, MessageBatch) else [item]
    return [int(m.text) for m in messages]


class Tally(Waitable):
    """A callback recording every delivery, checking that a channel never runs two callbacks at once."""

    def __init__(self, yields: int = 1) -> None:
        super().__init__(TIMEOUT)
        self.delivered: dict[str, list[int]] = defaultdict(list)  # message seqs of completed callbacks
        self.started: dict[str, list[int]] = defaultdict(list)  # message seqs of every callback started
        self.active: dict[str, int] = defaultdict(int)
        self.max_active = 0
        self.completed = 0
        self.cancelled = 0
        self.messages_done = 0
        self._yields = yields

    async def __call__(self, item: Payload) -> None:
        channel = item.channel_id
        self.active[channel] += 1
        self.max_active = max(self.max_active, self.active[channel])
        self.started[channel] += seqs(item)
        try:
            for _ in range(self._yields):
                await asyncio.sleep(0)  # give other tasks (and cancellations) a chance to interleave
            self.delivered[channel] += seqs(item)
            self.completed += 1
            self.messages_done += len(seqs(item))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active[channel] -= 1
            self._notify()  # synchronous: no await after the callback's work is done


def test_a_thousand_channels_of_twenty_rapid_messages_arrive_complete_and_in_order() -> None:
    channels = [f"chan-{i}" for i in range(1000)]
    per_channel = 20

    async def main() -> None:
        async with MessageQueue(default_batch_window=0.05, max_batch_size=10) as mq:
            tally = Tally()
            for channel in channels:
                await mq.start_processing(channel, tally)
            for seq in range(per_channel):
                for channel in channels:
                    await mq.enqueue(msg(channel, seq))
            total = len(channels) * per_channel
            await tally.wait(lambda: tally.messages_done == total)
            assert tally.max_active == 1
            for channel in channels:
                assert tally.delivered[channel] == list(range(per_channel)), channel
            stats = await mq.statistics()
            assert len(stats) == len(channels)
            assert all(s.queued == 0 and s.open_batch_size == 0 for s in stats)
            assert all(v["queue_size"] == 0 for v in mq.stats().values())

    run(main())


def test_cancel_clear_and_stop_racing_with_flushes_keep_the_invariants() -> None:
    """Many channels flushing by timer and by size while random cancels, clears and stop/starts land.

    Invariants: no message is handed to a callback twice; each channel's messages are handed over in order
    (a subsequence, since cleared and cancelled ones drop out); every item is accounted for exactly once by
    the actors (processed + cancelled + cleared = closed); the facade's counts match the actors' snapshot;
    and after the chaos every channel still delivers.
    """
    rng = random.Random(1234)
    channels = [f"r{i}" for i in range(60)]
    rounds = 40

    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01, max_batch_size=3) as mq:
            tally = Tally(yields=3)
            for channel in channels:
                await mq.start_processing(channel, tally)
            next_seq: dict[str, int] = defaultdict(int)
            cleared = 0
            stopped: set[str] = set()
            for _ in range(rounds):
                for channel in rng.sample(channels, 20):
                    for _ in range(rng.randint(1, 4)):
                        await mq.enqueue(msg(channel, next_seq[channel]))
                        next_seq[channel] += 1
                for _ in range(8):
                    channel = rng.choice(channels)
                    action = rng.random()
                    if action < 0.4:
                        mq.cancel_current(channel)
                    elif action < 0.7:
                        cleared += await mq.clear(channel)
                    elif action < 0.85:
                        await mq.stop_processing(channel)
                        stopped.add(channel)
                    elif action < 0.9:
                        await mq.cancel_batch_timer(channel)
                    else:
                        await mq.start_processing(channel, tally)
                        stopped.discard(channel)
                await asyncio.sleep(rng.choice((0, 0, 0.005, 0.02)))  # let timers fire mid-chaos
            for channel in stopped:
                await mq.start_processing(channel, tally)
            # Liveness: a final message per channel (its batch resumes if it was held) gets through.
            for channel in channels:
                await mq.enqueue(msg(channel, next_seq[channel]))
            await tally.wait(lambda: all(tally.delivered[c][-1:] == [next_seq[c]] for c in channels))

            for channel in channels:
                started = tally.started[channel]
                assert len(started) == len(set(started)), f"{channel}: a message was handed over twice"
                assert started == sorted(started), f"{channel}: order broken"
                delivered = tally.delivered[channel]
                assert delivered == sorted(delivered) and set(delivered) <= set(started)
            assert tally.max_active == 1
            for _ in range(1000):  # let the last done-callbacks report (loop iterations, not timed)
                if not any(mq.is_channel_processing(c) for c in channels):
                    break
                await asyncio.sleep(0)
            stats = {s.channel_id: s for s in await mq.statistics()}
            assert all(not s.in_flight and s.queued == 0 and s.open_batch_size == 0 for s in stats.values())
            for channel in channels:
                assert mq.queue_size(channel) == stats[channel].queued == 0
                assert mq.stats()[channel] == {
                    "queue_size": 0, "is_processing": False, "has_processor": True, **NO_COUNTS
                }
            processed = sum(s.processed for s in stats.values())
            cancelled = sum(s.cancelled for s in stats.values())
            assert processed == tally.completed  # every completed callback was reported exactly once
            assert tally.cancelled <= cancelled
            # Every item the actors closed ended exactly one way. Items are at most 3 messages, and every
            # message is in exactly one item: so the items cover all messages sent.
            total_messages = sum(next_seq[c] + 1 for c in channels)
            items = processed + cancelled + cleared
            assert items * 3 >= total_messages
            handed = sum(len(tally.started[c]) for c in channels)
            assert handed <= total_messages

    run(main())
