"""``MessageQueue`` on its own event loop: read-your-writes, the loop it belongs to, callbacks, closing,
records of passivated channels.

No sleeps wait for behaviour: tests wait on conditions with timeouts (``Recorder.wait``), and the synchronous
readers are exact the moment a call returns.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any, Awaitable

import pytest
from test_message_queue_api import NO_COUNTS, TIMEOUT, WINDOW, Recorder, msg, run, texts

import message_queue.local
from message_queue import InvalidInput, MessageBatch, MessageQueue
from protocol.values import Payload


async def _awaited(awaitable: Awaitable[object]) -> None:
    await awaitable


# -- read your writes -----------------------------------------------------------------------------------------


def test_counters_reflect_every_call_that_returned_before_them() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=2) as mq:
            await mq.enqueue(msg("c", "1"))
            await mq.enqueue(msg("c", "2"))  # a full batch, and no callback: it waits
            assert mq.queue_size("c") == 1
            await mq.enqueue_front(msg("c", "urgent"))
            assert mq.queue_size("c") == 2
            await mq.enqueue_front(MessageBatch([msg("c", "a"), msg("c", "b")]))
            assert mq.queue_size("c") == 3
            assert await mq.clear("c") == 3
            assert mq.queue_size("c") == 0
            assert mq.stats()["c"] == {
                "queue_size": 0, "is_processing": False, "has_processor": False, **NO_COUNTS
            }

    run(main())


def test_a_delivery_is_seen_by_is_channel_processing_as_soon_as_enqueue_returns() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=1) as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "x"))  # a full batch of one: delivered at once
            assert mq.is_channel_processing("c")
            await mq.enqueue(msg("c", "y"))
            assert mq.queue_size("c") == 1  # waits behind the one in flight
            rec.gate.set()
            await rec.wait(lambda: len(rec.items["c"]) == 2)

    run(main())


def test_enqueue_many_keeps_order_and_rejects_all_when_one_is_invalid() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=100) as mq:
            rec = Recorder()
            await mq.start_processing("c", rec)
            bad = msg("c", "x" * (64 * 1024 + 1))
            with pytest.raises(InvalidInput, match="text must be at most"):
                await mq.enqueue_many([msg("c", "never"), bad])
            await mq.enqueue_many(msg("c", f"m{i}") for i in range(30))
            await rec.wait(lambda: len(rec.flat("c")) == 30)
            assert rec.flat("c") == [f"m{i}" for i in range(30)]
            assert len(rec.items["c"]) == 1

    run(main())


# -- the loop a queue belongs to ------------------------------------------------------------------------------


def test_a_queue_used_from_a_second_loop_raises_runtime_error() -> None:
    mq = MessageQueue(default_batch_window=WINDOW)
    rec_items: list[Payload] = []

    async def use() -> None:
        async def callback(item: Payload) -> None:
            rec_items.append(item)

        await mq.start_processing("c", callback)
        await mq.enqueue(msg("c", "x"))

    run(use())
    with pytest.raises(RuntimeError, match="belongs to another event loop"):
        run(use())
    with pytest.raises(RuntimeError, match="belongs to another event loop"):
        run(_awaited(mq.enqueue(msg("c", "y"))))


def test_a_queue_read_from_another_running_loop_raises_runtime_error() -> None:
    errors: list[BaseException] = []
    ready = threading.Event()
    release = threading.Event()

    async def owner() -> None:
        async with MessageQueue(default_batch_window=WINDOW) as mq:
            await mq.enqueue(msg("c", "x"))
            holder.append(mq)
            ready.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    holder: list[MessageQueue] = []
    thread = threading.Thread(target=lambda: run(owner()))
    thread.start()
    try:
        assert ready.wait(TIMEOUT)

        async def intruder() -> None:
            mq = holder[0]
            for call in (lambda: mq.queue_size("c"), lambda: mq.stats()):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(exc)
            try:
                await mq.enqueue(msg("c", "y"))
            except RuntimeError as exc:
                errors.append(exc)

        run(intruder())
    finally:
        release.set()
        thread.join(TIMEOUT)
    assert len(errors) == 3 and all("another event loop" in str(e) for e in errors)


# -- callbacks ----------------------------------------------------------------------------------------------


def test_a_callback_that_is_not_an_async_function_is_refused_at_once() -> None:
    async def fine(item: Payload) -> None: ...

    class Callable_:
        async def __call__(self, item: Payload) -> None: ...

    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW) as mq:
            for bad in (lambda item: None, print, object(), None):
                with pytest.raises(InvalidInput, match="callback must be an async function"):
                    await mq.start_processing("c", bad)  # type: ignore[arg-type]
            assert mq.stats() == {}
            await mq.start_processing("a", fine)
            await mq.start_processing("b", Callable_())
            await mq.start_processing("d", functools.partial(fine))
            assert {c for c, s in mq.stats().items() if s["has_processor"]} == {"a", "b", "d"}

    run(main())


def test_callbacks_may_call_back_into_the_queue() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW, max_batch_size=1) as mq:
            rec = Recorder()
            seen: list[str] = []

            async def callback(item: Payload) -> None:
                (text,) = texts(item)
                seen.append(text)
                if text == "first":
                    await mq.enqueue(msg("c", "from-callback"))
                    await mq.enqueue(msg("c", "cleared"))
                    assert mq.queue_size("c") == 2
                    assert await mq.clear("c") == 2
                    await mq.enqueue(msg("c", "second"))
                    assert mq.cancel_current("c")  # cancels this very callback
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError:
                        rec.cancelled.append(item)
                        raise
                await rec(item)

            await mq.start_processing("c", callback)
            await mq.enqueue(msg("c", "first"))
            await rec.wait(lambda: rec.flat("c") == ["second"])
            assert seen == ["first", "second"]
            assert [texts(i) for i in rec.cancelled] == [["first"]]

    run(main())


def test_close_from_inside_a_callback_returns_and_stops_the_queue() -> None:
    async def main() -> None:
        mq = MessageQueue(default_batch_window=WINDOW, max_batch_size=1)
        closed = asyncio.Event()

        async def callback(item: Payload) -> None:
            await mq.close()
            closed.set()

        await mq.start_processing("c", callback)
        await mq.enqueue(msg("c", "x"))
        await asyncio.wait_for(closed.wait(), TIMEOUT)
        with pytest.raises(RuntimeError, match="closed"):
            await mq.enqueue(msg("c", "y"))

    run(main())


def test_two_queues_on_one_loop_are_independent() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=WINDOW) as one, MessageQueue(default_batch_window=WINDOW) as two:
            a, b = Recorder(), Recorder()
            await one.start_processing("c", a)
            await two.start_processing("c", b)
            await one.enqueue(msg("c", "for-one"))
            await two.enqueue(msg("c", "for-two"))
            await a.wait(lambda: a.flat("c") == ["for-one"])
            await b.wait(lambda: b.flat("c") == ["for-two"])
            await one.close()
            await two.enqueue(msg("c", "still"))
            await b.wait(lambda: b.flat("c") == ["for-two", "still"])
            assert a.flat("c") == ["for-one"]

    run(main())


# -- closing ----------------------------------------------------------------------------------------------------


def test_close_delivers_open_batches_and_waiting_items_first() -> None:
    async def main() -> None:
        mq = MessageQueue(default_batch_window=60.0, max_batch_size=2)
        rec = Recorder()
        await mq.start_processing("c", rec)
        for text in ("1", "2", "3", "4", "5"):
            await mq.enqueue(msg("c", text))  # [1 2] [3 4] closed, [5] open for a minute
        await mq.close()
        assert rec.texts("c") == [["1", "2"], ["3", "4"], ["5"]]

    run(main())


def test_close_without_drain_names_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        mq = MessageQueue(default_batch_window=60.0, max_batch_size=2)
        for text in ("1", "2", "3"):
            await mq.enqueue(msg("c", text))  # no callback: [1 2] waits, [3] is open
        await mq.enqueue(msg("d", "x"))
        await mq.close(drain=False)

    with caplog.at_level(logging.WARNING):
        run(main())
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "message_queue.facade"]
    assert "close dropped 1 waiting item(s), 2 message(s) of open batches and 0 item(s) in flight on 2 channel(s)" \
        in warning
    assert "drain=False" in warning


def test_close_with_drain_names_what_has_no_callback_to_go_to(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        mq = MessageQueue(default_batch_window=60.0, max_batch_size=1)
        await mq.enqueue(msg("nobody-listens", "x"))
        await mq.close()

    with caplog.at_level(logging.WARNING):
        run(main())
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "message_queue.facade"]
    assert "close dropped 1 waiting item(s)" in warning and "no callback was started for them" in warning


def test_a_callback_that_swallows_its_cancellation_does_not_hang_close(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(message_queue.local, "CANCEL_WAIT", 0.2)
    release = asyncio.Event()

    async def main() -> None:
        mq = MessageQueue(default_batch_window=WINDOW, max_batch_size=1)
        started = asyncio.Event()

        async def stubborn(item: Payload) -> None:
            started.set()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass  # swallowed

        await mq.start_processing("c", stubborn)
        await mq.enqueue(msg("c", "x"))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await asyncio.wait_for(mq.close(drain=True, timeout=0.2), TIMEOUT)
        release.set()

    with caplog.at_level(logging.WARNING):
        run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "message_queue.facade"]
    assert any("did not end within 0.2 s of being cancelled" in m and "'c'" in m for m in messages), messages


# -- memory ---------------------------------------------------------------------------------------------------


def test_the_records_of_passivated_channels_go_and_their_callbacks_stay() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.0, max_batch_size=1, idle_timeout=0.05) as mq:
            rec = Recorder()
            channels = [f"c{i}" for i in range(200)]
            for channel in channels:
                await mq.start_processing(channel, rec)
                await mq.enqueue(msg(channel, "x"))
            await rec.wait(lambda: sum(len(v) for v in rec.items.values()) == 200)
            backend: Any = mq._backend
            for _ in range(int(TIMEOUT / 0.05)):
                if not await mq.statistics():  # every channel actor has passivated
                    break
                await asyncio.sleep(0.05)
            assert await mq.statistics() == ()
            assert backend._channels == {}
            assert set(mq.stats()) == set(channels)  # registered callbacks are still known
            await mq.enqueue(msg("c7", "again"))  # and still used
            await rec.wait(lambda: len(rec.items["c7"]) == 2)
            (snapshot,) = await mq.statistics("c7")
            assert snapshot.processed == 2  # counters survived the passivation

    run(main())
