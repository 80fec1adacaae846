"""The asyncio API's failure and flood settings: retries, processing timeout, dead letters, max_queued with
its overflow policies, max_age."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from test_message_queue_api import TIMEOUT, run

from message_queue import DeadLetter, InvalidSettings, MessageQueue, QueuedMessage, QueueFull, current_item
from protocol.values import Payload, payload_messages


def msg(channel: str, text: str, age: float = 0.0) -> QueuedMessage:
    at = datetime.now(timezone.utc) - timedelta(seconds=age)
    return QueuedMessage("test", channel, "u1", "U1", text, queued_at=at)


async def until(condition: object, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


def test_a_callback_that_raises_is_retried_then_its_item_is_a_dead_letter_and_can_be_replayed() -> None:
    async def main() -> None:
        attempts: list[tuple[str, int]] = []
        fail = True

        async def callback(payload: Payload) -> None:
            item = current_item()
            assert item is not None
            (text,) = [m.text for m in payload_messages(payload)]
            attempts.append((text, item.attempt))
            if fail:
                raise RuntimeError(f"cannot handle {text}")

        async with MessageQueue(default_batch_window=0.0, max_batch_size=1, max_attempts=3,
                                retry_backoff=0.01) as mq:
            await mq.start_processing("c", callback)
            await mq.enqueue(msg("c", "a"))
            await mq.enqueue(msg("c", "b"))
            await until(lambda: len(attempts) == 6, "six attempts")
            assert attempts == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]
            letters: list[DeadLetter] = []

            async def two_letters() -> bool:
                letters[:] = await mq.dead_letters("c")
                return len(letters) == 2

            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while not await two_letters():
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.005)
            assert letters[0].reason.endswith("cannot handle a") and letters[0].attempts == 3
            (stats,) = await mq.statistics("c")
            assert (stats.attempts, stats.retries, stats.dead_letters) == (6, 4, 2)
            fail = False
            assert await mq.replay_dead_letters("c") == 2
            await until(lambda: attempts[6:] == [("a", 1), ("b", 1)], "the replayed items")
            assert await mq.purge_dead_letters("c") == 0

    run(main())


def test_a_callback_past_processing_timeout_is_cancelled() -> None:
    async def main() -> None:
        cancelled: list[int] = []

        async def callback(payload: Payload) -> None:
            item = current_item()
            assert item is not None
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(item.attempt)
                raise

        async with MessageQueue(default_batch_window=0.0, max_attempts=2, retry_backoff=0.0,
                                processing_timeout=0.05) as mq:
            await mq.start_processing("c", callback)
            await mq.enqueue(msg("c", "slow"))
            await until(lambda: cancelled == [1, 2], "both attempts cancelled")
            letters: list[DeadLetter] = []
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while not letters:
                letters = await mq.dead_letters("c")
                assert asyncio.get_running_loop().time() < deadline
            assert "processing_timeout" in letters[0].reason
            (stats,) = await mq.statistics("c")
            assert stats.timeouts == 2

    run(main())


def test_enqueue_into_a_full_channel_raises_queue_full() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=1, max_queued=3) as mq:
            for text in "abc":
                await mq.enqueue(msg("c", text))
            with pytest.raises(QueueFull, match="max_queued=3"):
                for text in "defgh":  # the reports may trail: at the latest the answer comes at half the cap
                    await mq.enqueue(msg("c", text))
            (stats,) = await mq.statistics("c")
            assert stats.rejected_full >= 1 and [m.text for m in await mq.take_waiting("c")] == ["a", "b", "c"]

    run(main())


@pytest.mark.parametrize(("overflow", "kept"), [("drop_oldest", ["c", "d"]), ("drop_newest", ["a", "b"])])
def test_overflow_drops_and_counts(overflow: str, kept: list[str]) -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=1, max_queued=2,
                                overflow=overflow) as mq:
            await mq.enqueue_many([msg("c", t) for t in "abcd"])
            assert [m.text for m in await mq.take_waiting("c")] == kept
            (stats,) = await mq.statistics("c")
            assert stats.dropped_overflow == 2

    run(main())


def test_stale_messages_are_dropped_at_delivery_and_configure_takes_the_settings() -> None:
    async def main() -> None:
        got: list[str] = []

        async def callback(payload: Payload) -> None:
            got.extend(m.text for m in payload_messages(payload))

        async with MessageQueue(default_batch_window=0.0, max_batch_size=1) as mq:
            await mq.configure("c", max_age=5.0, max_attempts=2, overflow="drop_newest")
            with pytest.raises(InvalidSettings, match="max_age"):
                await mq.configure("c", max_age=-1.0)
            await mq.enqueue_many([msg("c", "old", age=6.0), msg("c", "new")])
            await mq.start_processing("c", callback)
            await until(lambda: got == ["new"], "the fresh message")
            (stats,) = await mq.statistics("c")
            assert stats.dropped_stale == 1

    run(main())


def test_bad_failure_settings_are_refused_by_the_constructor() -> None:
    with pytest.raises(InvalidSettings, match="overflow"):
        MessageQueue(overflow="drop_everything")
    with pytest.raises(InvalidSettings, match="max_attempts"):
        MessageQueue(max_attempts=0)
