"""When the asyncio API's enqueue waits for its channel's answer (a channel that may refuse the message: busy
policy reject, or overflow reject near max_queued) and when it hands the message over without waiting,
as a channel's settings change from the defaults to such a rule and back."""

from __future__ import annotations

import asyncio

import pytest
from test_message_queue_api import Recorder, run

from message_queue import ChannelBusy, MessageQueue, QueuedMessage, QueueFull
from message_queue.local import LocalQueue


def msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text)


def count_answered(mq: MessageQueue) -> list[str]:
    """The texts of the messages whose enqueue waited for the channel's answer (a wrapper on the local
    backend's ``_enqueue_answered``, private, for this test only)."""
    backend = mq._backend
    assert isinstance(backend, LocalQueue)
    answered: list[str] = []
    inner = backend._enqueue_answered

    async def wrapper(message: QueuedMessage) -> None:
        answered.append(message.text)
        await inner(message)

    backend._enqueue_answered = wrapper  # type: ignore[method-assign,assignment]
    return answered


def test_a_channel_switched_to_reject_and_back_waits_for_answers_only_meanwhile() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01) as mq:
            answered = count_answered(mq)
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "a"))
            await rec.wait_started()  # "a" is with the callback: the channel is busy from here on
            await mq.enqueue(msg("c", "b"))  # defaults: batched behind "a", no answer awaited
            await mq.configure("c", busy_policy="reject")
            with pytest.raises(ChannelBusy):
                await mq.enqueue(msg("c", "c"))
            await mq.configure("c")  # back to the defaults
            await mq.enqueue(msg("c", "d"))
            assert answered == ["c"]
            rec.gate.set()
            await rec.wait(lambda: rec.flat("c") == ["a", "b", "d"])

    run(main())


def test_a_channel_whose_max_queued_shrinks_waits_for_answers_and_refuses_past_the_cap() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=1) as mq:
            answered = count_answered(mq)
            for text in "ab":
                await mq.enqueue(msg("c", text))  # max_queued 10,000: far from it, no answer awaited
            assert answered == []
            await mq.configure("c", max_batch_size=1, max_queued=4)
            with pytest.raises(QueueFull, match="max_queued=4"):
                for text in "cdefgh":  # from half the cap on, each enqueue waits for its answer
                    await mq.enqueue(msg("c", text))
            assert answered == ["c", "d", "e"]  # "e" refused: a, b, c, d wait
            assert [m.text for m in await mq.take_waiting("c")] == ["a", "b", "c", "d"]
            await mq.configure("c", max_batch_size=1)  # max_queued back to 10,000
            before = len(answered)
            for text in "ij":
                await mq.enqueue(msg("c", text))
            assert len(answered) == before

    run(main())
