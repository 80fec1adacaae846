"""The original module's asyncio API (``message_queue.MessageQueue``) on a real actor system.

No sleeps wait for behaviour: tests wait on asyncio conditions with ``asyncio.wait_for`` timeouts, and use
``await mq.statistics(...)`` as a barrier (the driver keeps command order, and a command's outputs reach the
loop before its reply). A fixed wait appears only where a test shows that something does *not* happen.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import defaultdict
from typing import Any, Coroutine

import pytest
from mq_support import Waitable

import message_queue
from message_queue import InvalidInput, MessageBatch, MessageQueue, QueuedMessage
from protocol.errors import InvalidSettings
from protocol.keys import config_key
from protocol.values import Payload

WINDOW = 0.05
TIMEOUT = 10.0
# stats() also counts each channel's conversation events (none in these tests)
NO_COUNTS = {"duplicates": 0, "edits": 0, "retractions": 0, "interruptions": 0, "rejections": 0}
# How long a test watches for something that must not happen (several windows).
QUIET = WINDOW * 4


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(channel: str, text: str, user: str = "u1") -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id=user, user_name=user.upper(), text=text)


def texts(item: Payload) -> list[str]:
    if isinstance(item, MessageBatch):
        return [m.text for m in item.messages]
    return [item.text]


def driver_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "message-queue-actors" and t.is_alive())


async def settle(mq: MessageQueue, channel: str) -> None:
    """Let finished callbacks report back (their done-callbacks run on the next loop iterations), then wait
    until the actors have handled every command sent so far."""
    for _ in range(1000):
        if not mq.is_channel_processing(channel):
            break
        await asyncio.sleep(0)  # one loop iteration, not a timed wait
    assert not mq.is_channel_processing(channel)
    await mq.statistics(channel)


class Recorder(Waitable):
    """A callback that records items per channel and lets tests wait for a condition on them.

    ``gate`` (when set) is awaited inside the callback, so a test can keep an item in flight.
    """

    def __init__(self) -> None:
        super().__init__(TIMEOUT)
        self.items: dict[str, list[Payload]] = defaultdict(list)
        self.cancelled: list[Payload] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.active: dict[str, int] = defaultdict(int)
        self.max_active = 0

    async def __call__(self, item: Payload) -> None:
        channel = item.channel_id
        self.active[channel] += 1
        self.max_active = max(self.max_active, self.active[channel])
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.items[channel].append(item)
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.active[channel] -= 1
            self._notify()  # synchronous: no await after the callback's work is done

    def texts(self, channel: str) -> list[list[str]]:
        return [texts(item) for item in self.items[channel]]

    def flat(self, channel: str) -> list[str]:
        return [t for item in self.items[channel] for t in texts(item)]

    async def wait_started(self) -> None:
        await asyncio.wait_for(self.started.wait(), TIMEOUT)
        self.started.clear()


# -- batching and delivery ----------------------------------------------------------------------------------


def test_rapid_messages_are_delivered_as_one_batch_in_order() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW) as mq:
            rec = Recorder()
            await mq.start_processing("c", rec)
            for i in range(5):
                await mq.enqueue(msg("c", f"m{i}"))
            await rec.wait(lambda: len(rec.items["c"]) == 1)
            (batch,) = rec.items["c"]
            assert isinstance(batch, MessageBatch)
            assert texts(batch) == ["m0", "m1", "m2", "m3", "m4"]
            assert batch.channel_id == "c"

    run(main())


def test_a_full_batch_closes_at_once_and_the_rest_waits_for_the_window() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=3) as mq:
            rec = Recorder()
            await mq.start_processing("c", rec)
            for i in range(7):
                await mq.enqueue(msg("c", f"m{i}"))
            await rec.wait(lambda: len(rec.items["c"]) == 3)
            assert rec.texts("c") == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]

    run(main())


def test_items_are_delivered_one_at_a_time_and_waiting_items_are_counted() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            for i in range(3):
                await mq.enqueue(msg("c", f"m{i}"))
            await rec.wait_started()
            await mq.statistics("c")  # barrier: every enqueue above was handled, its counts reported
            assert mq.is_channel_processing("c")
            assert mq.queue_size("c") == 2
            assert mq.stats() == {
                "c": {"queue_size": 2, "is_processing": True, "has_processor": True, **NO_COUNTS}
            }
            rec.gate.set()
            await rec.wait(lambda: len(rec.items["c"]) == 3)
            await settle(mq, "c")
            assert rec.flat("c") == ["m0", "m1", "m2"]
            assert rec.max_active == 1
            assert mq.queue_size("c") == 0
            assert not mq.is_channel_processing("c")

    run(main())


def test_queue_size_does_not_count_the_open_batch() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=30.0, max_batch_size=2) as mq:
            for i in range(5):  # two full batches wait (no processor), one message stays open
                await mq.enqueue(msg("c", f"m{i}"))
            (snapshot,) = await mq.statistics("c")
            assert (snapshot.queued, snapshot.open_batch_size) == (2, 1)
            assert mq.queue_size("c") == 2
            assert mq.stats()["c"] == {"queue_size": 2, "is_processing": False, "has_processor": False, **NO_COUNTS}
            assert mq.queue_size("unknown") == 0

    run(main())


def test_channels_are_independent() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            slow, fast = Recorder(), Recorder()
            slow.gate = asyncio.Event()
            await mq.start_processing("slow", slow)
            await mq.start_processing("fast", fast)
            await mq.enqueue(msg("slow", "s0"))
            await slow.wait_started()
            for i in range(3):
                await mq.enqueue(msg("fast", f"f{i}"))
            await fast.wait(lambda: len(fast.items["fast"]) == 3)
            assert mq.is_channel_processing("slow") and not mq.is_channel_processing("fast")
            slow.gate.set()
            await slow.wait(lambda: len(slow.items["slow"]) == 1)

    run(main())


def test_start_processing_is_idempotent() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            first, second = Recorder(), Recorder()
            await mq.start_processing("c", first)
            await mq.start_processing("c", second)
            await mq.enqueue(msg("c", "m0"))
            await first.wait(lambda: len(first.items["c"]) == 1)
            await mq.statistics("c")
            assert not second.items

    run(main())


def test_items_waiting_before_start_processing_are_delivered_when_it_starts() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=2) as mq:
            for i in range(4):
                await mq.enqueue(msg("c", f"m{i}"))
            await mq.statistics("c")
            assert mq.queue_size("c") == 2
            rec = Recorder()
            await mq.start_processing("c", rec)
            await rec.wait(lambda: len(rec.items["c"]) == 2)
            assert rec.texts("c") == [["m0", "m1"], ["m2", "m3"]]

    run(main())


# -- enqueue_front ----------------------------------------------------------------------------------------


def test_enqueue_front_goes_before_waiting_items() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            await mq.enqueue(msg("c", "m0"))
            await mq.enqueue(msg("c", "m1"))
            front = MessageBatch()
            front.add(msg("c", "f0"))
            front.add(msg("c", "f1"))
            await mq.enqueue_front(front)
            await mq.enqueue_front(msg("c", "g"))
            await mq.statistics("c")
            assert mq.queue_size("c") == 4
            rec = Recorder()
            await mq.start_processing("c", rec)
            await rec.wait(lambda: len(rec.items["c"]) == 4)
            assert rec.texts("c") == [["g"], ["f0", "f1"], ["m0"], ["m1"]]
            assert isinstance(rec.items["c"][0], QueuedMessage)  # delivered as it was put
            assert isinstance(rec.items["c"][1], MessageBatch)

    run(main())


def test_enqueue_front_goes_behind_the_item_in_flight() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "a"))
            await rec.wait_started()
            await mq.enqueue(msg("c", "b"))
            await mq.enqueue_front(msg("c", "front"))
            await mq.statistics("c")
            rec.gate.set()
            await rec.wait(lambda: len(rec.items["c"]) == 3)
            assert rec.flat("c") == ["a", "front", "b"]

    run(main())


def test_enqueue_front_rejects_bad_items() -> None:
    async def main() -> None:
        async with MessageQueue() as mq:
            with pytest.raises(InvalidInput, match="must not be empty"):
                await mq.enqueue_front(MessageBatch())
            mixed = MessageBatch([msg("a", "x"), msg("b", "y")])
            with pytest.raises(InvalidInput, match="one channel"):
                await mq.enqueue_front(mixed)
            with pytest.raises(InvalidInput, match="QueuedMessage or a MessageBatch"):
                await mq.enqueue_front("text")  # type: ignore[arg-type]

    run(main())


# -- validation at the edge -----------------------------------------------------------------------------


def test_enqueue_rejects_invalid_messages_synchronously() -> None:
    async def main() -> None:
        async with MessageQueue() as mq:
            with pytest.raises(InvalidInput, match="channel_id must not be empty"):
                await mq.enqueue(msg("", "x"))
            with pytest.raises(InvalidInput, match="text must be at most 65536 bytes"):
                await mq.enqueue(msg("c", "x" * 70_000))
            with pytest.raises(InvalidInput, match="channel_id must be at most 256 bytes"):
                await mq.enqueue(msg("c" * 300, "x"))
            with pytest.raises(InvalidInput, match="message must be a QueuedMessage"):
                await mq.enqueue("hello")  # type: ignore[arg-type]
            bad_extra = msg("c", "x")
            bad_extra.extra = {"when": object()}
            with pytest.raises(InvalidInput, match="extra values"):
                await mq.enqueue(bad_extra)
            assert driver_threads() == 0  # nothing was handed to the actors

    run(main())


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(InvalidSettings, match=r"max_batch_size must be .*got 0"):
        MessageQueue(max_batch_size=0)
    with pytest.raises(InvalidSettings, match="window must be >= 0"):
        MessageQueue(default_batch_window=-1)
    with pytest.raises(InvalidSettings, match="config_ttl must be >= 0, got -1"):
        MessageQueue(config_ttl=-1)
    with pytest.raises(InvalidSettings, match="idle_timeout must be > 0, got 0"):
        MessageQueue(idle_timeout=0)


def test_enqueue_does_not_wait_for_the_actors() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=30.0, max_batch_size=10) as mq:
            await mq.enqueue(msg("warm", "x"))  # starts the actor thread
            samples = []
            for i in range(2000):
                t0 = time.perf_counter()
                await mq.enqueue(msg(f"c{i % 50}", f"m{i}"))
                samples.append(time.perf_counter() - t0)
            samples.sort()
            # The median is a few microseconds; 1 ms leaves room for a loaded CI machine.
            assert samples[len(samples) // 2] < 0.001
            assert samples[int(len(samples) * 0.99)] < 0.005

    run(main())


# -- failures and cancellation ------------------------------------------------------------------------------


def test_a_callback_that_raises_is_logged_with_channel_and_item_and_the_next_item_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            seen: list[str] = []
            done = asyncio.Event()

            async def callback(item: Payload) -> None:
                seen.extend(texts(item))
                if texts(item) == ["boom"]:
                    raise RuntimeError("callback exploded")
                if len(seen) == 2:
                    done.set()

            await mq.start_processing("chan-x", callback)
            await mq.enqueue(msg("chan-x", "boom"))
            await mq.enqueue(msg("chan-x", "after"))
            await asyncio.wait_for(done.wait(), TIMEOUT)
            assert seen == ["boom", "after"]
            await settle(mq, "chan-x")
            (snapshot,) = await mq.statistics("chan-x")
            assert (snapshot.processed, snapshot.failed) == (2, 1)

    with caplog.at_level(logging.WARNING):
        run(main())
    records = [r for r in caplog.records if r.name == "message_queue.facade"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    assert re.search(r"channel 'chan-x' raised on item [0-9a-f]{32}", record.getMessage())
    assert record.exc_info is not None and "callback exploded" in str(record.exc_info[1])


def test_cancel_current_cancels_the_running_callback_and_the_next_item_follows() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            assert mq.cancel_current("c") is False  # nothing running
            await mq.enqueue(msg("c", "slow"))
            await mq.enqueue(msg("c", "next"))
            await rec.wait_started()
            assert mq.cancel_current("c") is True
            await rec.wait(lambda: len(rec.cancelled) == 1)
            assert texts(rec.cancelled[0]) == ["slow"]
            await rec.wait_started()  # "next" is delivered without any other action
            rec.gate.set()
            await rec.wait(lambda: len(rec.items["c"]) == 1)
            assert rec.flat("c") == ["next"]
            await settle(mq, "c")
            (snapshot,) = await mq.statistics("c")
            assert (snapshot.processed, snapshot.cancelled) == (1, 1)
            assert mq.cancel_current("c") is False
            assert mq.cancel_current("unknown") is False

    run(main())


def test_cancel_current_waits_for_a_callback_that_unwinds_slowly() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            release = asyncio.Event()
            b_started = asyncio.Event()
            log: list[str] = []
            active = 0

            async def callback(item: Payload) -> None:
                nonlocal active
                active += 1
                assert active == 1, "two callbacks of one channel overlapped"
                log.append("start " + texts(item)[0])
                if texts(item) == ["b"]:
                    b_started.set()
                try:
                    if texts(item) == ["a"]:
                        await asyncio.Event().wait()
                except asyncio.CancelledError:
                    await release.wait()  # cleanup that takes a while
                    log.append("unwound a")
                    raise
                finally:
                    active -= 1

            await mq.start_processing("c", callback)
            await mq.enqueue(msg("c", "a"))
            await mq.enqueue(msg("c", "b"))
            await mq.statistics("c")
            assert mq.cancel_current("c") is True
            await mq.statistics("c")  # the actors already delivered "b"; it must wait for "a" to unwind
            assert mq.is_channel_processing("c")
            release.set()
            await asyncio.wait_for(b_started.wait(), TIMEOUT)
            assert log == ["start a", "unwound a", "start b"]

    run(main())


def test_stop_processing_cancels_holds_the_timer_and_keeps_items() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=2) as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "a0"))
            await mq.enqueue(msg("c", "a1"))  # full: in flight
            await rec.wait_started()
            await mq.enqueue(msg("c", "b0"))
            await mq.enqueue(msg("c", "b1"))  # full: waits
            await mq.enqueue(msg("c", "c0"))  # open batch
            await mq.stop_processing("c")
            assert [texts(i) for i in rec.cancelled] == [["a0", "a1"]]  # stop waited for the callback
            assert not mq.is_channel_processing("c")
            assert mq.stats()["c"] == {"queue_size": 1, "is_processing": False, "has_processor": False, **NO_COUNTS}
            await asyncio.sleep(QUIET)  # the held batch must not close while nothing arrives
            (snapshot,) = await mq.statistics("c")
            assert (snapshot.queued, snapshot.open_batch_size, snapshot.has_processor) == (1, 1, False)
            assert not rec.items
            rec.gate.set()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "c1"))  # restarts the held batch's window; full anyway
            await rec.wait(lambda: len(rec.items["c"]) == 2)
            assert rec.texts("c") == [["b0", "b1"], ["c0", "c1"]]

    run(main())


def test_stop_processing_of_an_idle_or_unknown_channel_is_harmless() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW) as mq:
            await mq.stop_processing("never-seen")  # no actor thread needed for this
            assert driver_threads() == 0
            rec = Recorder()
            await mq.start_processing("c", rec)
            await mq.stop_processing("c")
            await mq.stop_processing("c")
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "x"))
            await rec.wait(lambda: len(rec.items["c"]) == 1)

    run(main())


def test_a_callback_may_stop_its_own_channel() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            seen: list[str] = []
            stopped = asyncio.Event()

            async def callback(item: Payload) -> None:
                seen.extend(texts(item))
                if texts(item) == ["stop"]:
                    await mq.stop_processing("c")
                    stopped.set()

            await mq.start_processing("c", callback)
            for text in ("stop", "later"):
                await mq.enqueue(msg("c", text))
            await asyncio.wait_for(stopped.wait(), TIMEOUT)
            await settle(mq, "c")
            assert seen == ["stop"] and mq.queue_size("c") == 1
            assert mq.stats()["c"]["has_processor"] is False
            rec = Recorder()
            await mq.start_processing("c", rec)
            await rec.wait(lambda: rec.flat("c") == ["later"])

    run(main())


def test_cancel_batch_timer_holds_the_open_batch_until_the_next_message() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW) as mq:
            rec = Recorder()
            await mq.start_processing("c", rec)
            await mq.cancel_batch_timer("c")  # no batch open: nothing to hold
            await mq.enqueue(msg("c", "m0"))
            await mq.cancel_batch_timer("c")
            await asyncio.sleep(QUIET)  # held: must not flush while nothing arrives
            assert not rec.items
            await mq.enqueue(msg("c", "m1"))  # the window runs again from here
            await rec.wait(lambda: len(rec.items["c"]) == 1)
            assert rec.texts("c") == [["m0", "m1"]]

    run(main())


def test_clear_discards_waiting_items_and_returns_their_number() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            assert await mq.clear("c") == 0  # before anything started
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            for i in range(4):
                await mq.enqueue(msg("c", f"m{i}"))
            await rec.wait_started()
            assert await mq.clear("c") == 3
            assert mq.queue_size("c") == 0  # already reported when clear returns
            assert await mq.clear("c") == 0
            await mq.enqueue(msg("c", "after"))
            rec.gate.set()
            await rec.wait(lambda: len(rec.items["c"]) == 2)
            assert rec.flat("c") == ["m0", "after"]
            with pytest.raises(InvalidInput):
                await mq.clear("")

    run(main())


# -- life cycle and modes ---------------------------------------------------------------------------------


def test_the_actors_run_on_the_callers_loop_start_lazily_and_close_stops_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        threads = threading.active_count()
        mq = MessageQueue(default_batch_window=WINDOW)
        assert mq.stats() == {} and not mq.is_channel_processing("c")
        assert mq._backend._driver is None  # type: ignore[attr-defined]
        rec = Recorder()
        rec.gate = asyncio.Event()
        seen_threads: list[int] = []

        async def callback(item: Payload) -> None:
            seen_threads.append(threading.get_ident())
            await rec(item)

        await mq.start_processing("c", callback)
        driver = mq._backend._driver  # type: ignore[attr-defined]
        assert driver is not None and driver.running
        await mq.enqueue(msg("c", "x"))
        await mq.enqueue(msg("c", "y"))
        await rec.wait_started()
        assert seen_threads == [threading.get_ident()]
        assert threading.active_count() == threads  # no thread beside the loop's
        await mq.close(drain=False)
        assert [texts(i) for i in rec.cancelled] == [["x", "y"]]  # close cancels running callbacks
        assert not driver.running
        await mq.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await mq.enqueue(msg("c", "z"))

    with caplog.at_level(logging.WARNING):
        run(main())
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "message_queue.facade"]
    assert "close dropped 0 waiting item(s), 0 message(s) of open batches and 1 item(s) in flight" in warning
    assert "drain=False" in warning and "'c'" in warning


def test_a_queue_that_is_never_closed_stops_its_actors_when_collected() -> None:
    drivers = []

    async def main() -> None:
        mq = MessageQueue(default_batch_window=WINDOW)
        await mq.enqueue(msg("c", "x"))
        drivers.append(mq._backend._driver)  # type: ignore[attr-defined]
        assert drivers[0].running
        del mq

    import gc

    run(main())
    gc.collect()
    assert not drivers[0].running


def test_redis_and_an_event_bus_make_a_distributed_queue_without_connecting() -> None:
    """Distributed mode itself is tested in test_distributed.py; here: the constructor and set_event_bus."""

    class Bus:
        async def publish_inbound(self, batch: MessageBatch) -> None: ...

    async def main() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis(host="127.0.0.1", port=1)  # never connected
        try:
            bus = Bus()
            distributed = MessageQueue(redis=client, event_bus=bus)
            assert distributed.event_bus is bus
            with pytest.raises(InvalidSettings, match="event_bus must have an async publish_inbound"):
                MessageQueue(redis=client, event_bus=object())
            mq = MessageQueue(redis=client)
            with pytest.raises(InvalidSettings, match="event_bus must have an async publish_inbound"):
                mq.set_event_bus(object())
            mq.set_event_bus(bus)
            assert mq.event_bus is bus
            await mq.close()
            await distributed.close()
            anything = object()
            plain = MessageQueue()
            plain.set_event_bus(anything)  # without Redis a bus is only stored
            assert plain.event_bus is anything
        finally:
            await client.aclose()

    run(main())


def test_the_package_exports_the_original_names() -> None:
    for name in ("MessageQueue", "QueuedMessage", "MessageBatch", "RedisQueue", "InMemoryRedisQueue"):
        assert hasattr(message_queue, name), name
    from protocol import values

    assert message_queue.QueuedMessage is values.QueuedMessage
    assert message_queue.MessageBatch is values.MessageBatch


# -- per-channel settings from Redis -----------------------------------------------------------------------


async def _redis(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url)


@pytest.mark.redis
def test_batching_disabled_in_redis_takes_effect_for_the_next_batch(redis_srv: Any) -> None:
    async def main() -> None:
        client = await _redis(redis_srv.url)
        try:
            async with MessageQueue(default_batch_window=WINDOW, redis=client, config_ttl=0) as mq:
                rec = Recorder()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "a0"))
                await mq.enqueue(msg("c", "a1"))
                await rec.wait(lambda: len(rec.items["c"]) == 1)
                await client.hset(config_key("c"), "disabled", "1")
                await mq.enqueue(msg("c", "b0"))
                await mq.enqueue(msg("c", "b1"))
                await rec.wait(lambda: len(rec.items["c"]) == 3)
                await client.hset(config_key("c"), "disabled", "0")
                await mq.enqueue(msg("c", "c0"))
                await mq.enqueue(msg("c", "c1"))
                await rec.wait(lambda: len(rec.items["c"]) == 4)
                items = rec.items["c"]
                assert isinstance(items[0], MessageBatch) and texts(items[0]) == ["a0", "a1"]
                assert isinstance(items[1], QueuedMessage) and items[1].text == "b0"
                assert isinstance(items[2], QueuedMessage) and items[2].text == "b1"
                assert isinstance(items[3], MessageBatch) and texts(items[3]) == ["c0", "c1"]
                other = Recorder()  # a channel without a hash keeps the defaults
                await mq.start_processing("d", other)
                await mq.enqueue(msg("d", "d0"))
                await mq.enqueue(msg("d", "d1"))
                await other.wait(lambda: len(other.items["d"]) == 1)
                assert isinstance(other.items["d"][0], MessageBatch)
        finally:
            await client.aclose()

    run(main())


@pytest.mark.redis
def test_the_window_is_read_from_redis_and_cached_for_config_ttl(redis_srv: Any) -> None:
    async def main() -> None:
        client = await _redis(redis_srv.url)
        try:
            await client.hset(config_key("c"), "window", "0.02")
            # The default window (60 s) would make this test time out: the Redis one must be used.
            async with MessageQueue(default_batch_window=60.0, redis=client, config_ttl=3600) as mq:
                rec = Recorder()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "m0"))
                await mq.enqueue(msg("c", "m1"))
                await rec.wait(lambda: len(rec.items["c"]) == 1)
                assert rec.texts("c") == [["m0", "m1"]]
                await client.hset(config_key("c"), "disabled", "1")  # not read again within the ttl
                await mq.enqueue(msg("c", "m2"))
                await mq.enqueue(msg("c", "m3"))
                await rec.wait(lambda: len(rec.items["c"]) == 2)
                assert rec.texts("c")[1] == ["m2", "m3"]
        finally:
            await client.aclose()

    run(main())


@pytest.mark.redis
def test_invalid_settings_in_redis_are_warned_about_and_the_defaults_kept(
    redis_srv: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        client = await _redis(redis_srv.url)
        try:
            await client.hset(config_key("c:1"), mapping={"window": "soon", "disabled": "maybe"})
            await client.hset(config_key("c:2"), "window", "-3")
            async with MessageQueue(default_batch_window=WINDOW, redis=client, config_ttl=0) as mq:
                rec = Recorder()
                for channel in ("c:1", "c:2"):
                    await mq.start_processing(channel, rec)
                    await mq.enqueue(msg(channel, "m0"))
                    await mq.enqueue(msg(channel, "m1"))
                await rec.wait(lambda: len(rec.items["c:1"]) == 1 and len(rec.items["c:2"]) == 1)
                assert rec.texts("c:1") == [["m0", "m1"]]  # batching stayed on, default window
                assert rec.texts("c:2") == [["m0", "m1"]]
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="message_queue.config"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.name == "message_queue.config"]
    # once per distinct bad value, although the hash was read for every message
    assert len(warnings) == 3, warnings
    assert any("'message_queue:config:c:1'" in w and "'window'" in w and "'soon'" in w for w in warnings)
    assert any("'message_queue:config:c:1'" in w and "'disabled'" in w and "'maybe'" in w for w in warnings)
    assert any("'message_queue:config:c:2'" in w and "'window'" in w and "'-3'" in w for w in warnings)


@pytest.mark.redis
def test_an_unreachable_redis_keeps_the_default_settings(redis_srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    # (With redis=, MessageQueue also persists there, so it cannot start without the server: that refusal is
    # tested in test_mq_persistence.py. Distributed mode's settings reader alone keeps the defaults.)
    from message_queue.config import ChannelConfigReader
    from protocol.values import BatchSettings

    async def main() -> None:
        client = await _redis(redis_srv.url)
        redis_srv.stop()
        try:
            reader = ChannelConfigReader(client, BatchSettings(window=WINDOW))
            assert await reader.read("c") is None  # None: the caller keeps what it has
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="message_queue.config"):
        run(main())
    assert any("could not read batch settings" in r.getMessage() for r in caplog.records)

