"""Conversation semantics through the asyncio API (``MessageQueue`` on the caller's loop): duplicates, edits,
retractions, take-waiting, busy policies, author boundaries and per-channel ``configure``."""

from __future__ import annotations

import asyncio

import pytest
from test_message_queue_api import QUIET, TIMEOUT, Recorder, run, texts

from message_queue import ChannelBusy, InvalidInput, InvalidSettings, MessageQueue, QueuedMessage, current_item
from protocol.values import Payload, QueueItem


def msg(channel: str, text: str, mid: str = "", user: str = "u1") -> QueuedMessage:
    return QueuedMessage("test", channel, user, user.upper(), text, message_id=mid)


async def stats_of(mq: MessageQueue, channel: str) -> tuple[int, int, int, int, int]:
    (snapshot,) = await mq.statistics(channel)
    return snapshot.duplicates, snapshot.edits, snapshot.retractions, snapshot.interruptions, snapshot.rejections


def test_a_webhook_retry_with_the_same_message_id_is_dropped() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01) as mq:
            rec = Recorder()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "hello", "m1"))
            await mq.enqueue(msg("c", "hello", "m1"))  # returns normally
            await mq.enqueue(msg("c", "again", "m2"))
            await rec.wait(lambda: len(rec.flat("c")) == 2)
            assert rec.flat("c") == ["hello", "again"]
            assert (await stats_of(mq, "c"))[0] == 1

    run(main())


def test_dedupe_ttl_zero_keeps_every_message() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, dedupe_ttl=0) as mq:
            await mq.enqueue_many([msg("c", "a", "m1"), msg("c", "a", "m1")])
            assert [m.text for m in await mq.take_waiting("c")] == ["a", "a"]

    run(main())


def test_edit_retract_and_take_waiting_change_what_is_not_delivered_yet() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=2) as mq:
            await mq.enqueue_many([msg("c", t, f"id-{t}") for t in ("a", "b", "c")])
            assert await mq.edit(msg("c", "a (edited)", "id-a"))  # in a waiting item
            assert await mq.edit(msg("c", "c (edited)", "id-c"))  # in the open batch
            assert not await mq.edit(msg("c", "?", "id-unknown"))
            assert await mq.retract("c", "id-b")
            assert not await mq.retract("c", "id-b")
            taken = await mq.take_waiting("c")
            assert [(m.text, m.message_id) for m in taken] == [("a (edited)", "id-a"), ("c (edited)", "id-c")]
            assert mq.queue_size("c") == 0
            assert (await stats_of(mq, "c"))[1:3] == (2, 1)
            with pytest.raises(InvalidInput, match="message_id must not be empty"):
                await mq.edit(msg("c", "x"))
            with pytest.raises(InvalidInput, match="message_id must not be empty"):
                await mq.retract("c", "")

    run(main())


def test_an_edit_of_a_message_being_processed_returns_false() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01) as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "a", "id-a"))
            await rec.wait_started()
            assert not await mq.edit(msg("c", "a (edited)", "id-a"))
            assert not await mq.retract("c", "id-a")
            rec.gate.set()
            await rec.wait(lambda: rec.flat("c") == ["a"])

    run(main())


def test_interrupt_cancels_the_running_callback_and_redelivers_its_messages_first() -> None:
    async def main() -> None:
        seen: list[tuple[list[str], bool]] = []
        cancelled: list[list[str]] = []
        first_started = asyncio.Event()
        done = asyncio.Event()

        async def bot(item: Payload) -> None:
            current = current_item()
            assert isinstance(current, QueueItem)
            if not seen and not cancelled:
                first_started.set()
                try:
                    await asyncio.sleep(TIMEOUT)  # a long answer, interrupted below
                except asyncio.CancelledError:
                    cancelled.append(texts(item))
                    raise
            seen.append((texts(item), current.interrupted))
            done.set()

        async with MessageQueue(default_batch_window=0.01, busy_policy="interrupt") as mq:
            await mq.start_processing("c", bot)
            await mq.enqueue(msg("c", "what is"))
            await asyncio.wait_for(first_started.wait(), TIMEOUT)
            await mq.enqueue(msg("c", "the time?"))
            await asyncio.wait_for(done.wait(), TIMEOUT)
            assert cancelled == [["what is"]]
            assert seen == [(["what is", "the time?"], True)]
            assert (await stats_of(mq, "c"))[3] == 1

    run(main())


def test_reject_raises_channel_busy_while_the_callback_runs() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01) as mq:
            await mq.configure("c", busy_policy="reject", window=0.01)
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "a"))
            await rec.wait_started()
            with pytest.raises(ChannelBusy, match="busy_policy is reject"):
                await mq.enqueue(msg("c", "b"))
            with pytest.raises(ChannelBusy):
                await mq.enqueue_many([msg("c", "c")])
            rec.gate.set()
            await rec.wait(lambda: rec.flat("c") == ["a"])
            await mq.enqueue(msg("c", "d"))  # no longer busy
            await rec.wait(lambda: rec.flat("c") == ["a", "d"])
            assert (await stats_of(mq, "c"))[4] == 2

    run(main())


def test_collect_delivers_what_arrived_during_the_callback_as_one_batch() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01, busy_policy="collect") as mq:
            rec = Recorder()
            rec.gate = asyncio.Event()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "a"))
            await rec.wait_started()
            await mq.enqueue(msg("c", "b"))
            await asyncio.sleep(QUIET)  # several windows pass while the callback runs: the batch stays open
            await mq.enqueue(msg("c", "c"))
            ((snapshot,)) = await mq.statistics("c")
            assert snapshot.open_batch_size == 2
            rec.gate.set()
            await rec.wait(lambda: len(rec.items["c"]) == 2)
            assert rec.texts("c") == [["a"], ["b", "c"]]

    run(main())


def test_split_on_author_starts_a_new_batch_for_another_author() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, split_on_author=True) as mq:
            await mq.enqueue_many([msg("c", "a1", user="ann"), msg("c", "a2", user="ann"), msg("c", "b1", user="bob")])
            assert mq.queue_size("c") == 1
            assert [m.text for m in await mq.take_waiting("c")] == ["a1", "a2", "b1"]

    run(main())


def test_configure_sets_one_channel_and_goes_back_to_the_defaults() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0, max_batch_size=10) as mq:
            await mq.configure("c", max_batch_size=2, disabled=False)
            await mq.enqueue_many([msg("c", "1"), msg("c", "2"), msg("other", "1"), msg("other", "2")])
            assert (mq.queue_size("c"), mq.queue_size("other")) == (1, 0)
            await mq.configure("c")
            await mq.enqueue_many([msg("c", "3"), msg("c", "4")])
            assert mq.queue_size("c") == 1
            await mq.configure("c", disabled=True)
            await mq.enqueue(msg("c", "5"))
            assert mq.queue_size("c") == 3  # the open batch [3, 4] closed, then 5 became an item of its own

    run(main())


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"busy_policy": "ignore"}, "busy_policy must be one of queue, collect, interrupt, reject, got 'ignore'"),
        ({"window": -1}, "window must be >= 0 and finite, got -1"),
        ({"dedupe_ttl": "soon"}, "dedupe_ttl must be a number of seconds, got 'soon'"),
        ({"disabled": "yes"}, "disabled must be a bool, got 'yes'"),
        ({"colour": "red"}, "unknown setting 'colour'"),
    ],
)
def test_configure_refuses_an_invalid_setting_naming_the_field(settings: dict[str, object], error: str) -> None:
    async def main() -> None:
        async with MessageQueue() as mq:
            with pytest.raises(InvalidSettings) as caught:
                await mq.configure("c", **settings)
            assert error in str(caught.value)

    run(main())


def test_the_constructor_refuses_an_invalid_busy_policy() -> None:
    with pytest.raises(InvalidSettings, match="busy_policy must be one of"):
        MessageQueue(busy_policy="drop")


def test_the_settings_hash_accepts_the_fields_of_configure(caplog: pytest.LogCaptureFixture) -> None:
    from message_queue.config import ChannelConfigReader
    from protocol.values import BatchSettings

    reader = ChannelConfigReader(None, BatchSettings())  # type: ignore[arg-type]  # parse reads no Redis
    fields = {
        "window": "2.5", "max_batch_size": "3", "max_wait": "9", "busy_policy": "interrupt",
        "split_on_author": "1", "dedupe_ttl": "0", "disabled": "0",
    }
    assert reader.parse("c", "key", fields) == BatchSettings(
        window=2.5, max_batch_size=3, max_wait=9.0, busy_policy="interrupt", split_on_author=True, dedupe_ttl=0.0
    )
    bad = reader.parse("c", "key", {"busy_policy": "drop", "max_batch_size": "0", "window": "1"})
    assert bad == BatchSettings(window=1.0)
    warned = caplog.text
    assert "field 'busy_policy' value 'drop'" in warned and "field 'max_batch_size' value '0'" in warned


def test_stats_counts_each_channels_conversation_events() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=10.0) as mq:
            await mq.enqueue_many([msg("c", "a", "m1"), msg("c", "a", "m1"), msg("c", "b", "m2")])
            await mq.edit(msg("c", "B", "m2"))
            await mq.retract("c", "m1")
            counts = mq.stats()["c"]
            assert {k: counts[k] for k in ("duplicates", "edits", "retractions", "interruptions", "rejections")} == {
                "duplicates": 1, "edits": 1, "retractions": 1, "interruptions": 0, "rejections": 0
            }

    run(main())


def test_a_webhook_retry_after_its_channel_passivated_is_still_dropped() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=0.0, max_batch_size=1, idle_timeout=0.05) as mq:
            rec = Recorder()
            await mq.start_processing("c", rec)
            await mq.enqueue(msg("c", "hello", "m1"))
            await rec.wait(lambda: len(rec.flat("c")) == 1)
            for _ in range(int(TIMEOUT / 0.05)):
                if not await mq.statistics():  # the channel actor passivated, its id unexpired (600 s)
                    break
                await asyncio.sleep(0.05)
            assert await mq.statistics() == ()
            await mq.enqueue(msg("c", "hello (retry)", "m1"))
            await mq.enqueue(msg("c", "next", "m2"))
            await rec.wait(lambda: len(rec.flat("c")) == 2)
            assert rec.flat("c") == ["hello", "next"]
            assert (await stats_of(mq, "c"))[0] == 1

    run(main())
