"""RedisStore on a private redis-server: a value that cannot be encoded fails alone. It is set aside in its
channel's dead letters, and every other operation of the same write, of its channel and of others, is stored.

The bad values are built past the edge checks (which refuse them), as a message changed after it was checked
would be."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Iterator

import pytest
from redis_support import RedisServer

from actors.journal import AppendOpen, FinishInFlight, PushHead, PushTail, TakeHead
from actors.store import RedisStore
from protocol import codec, keys
from protocol.values import DeadLetter, MessageBatch, OpenEntry, QueuedMessage, QueueItem, payload_messages

pytestmark = pytest.mark.redis

AT = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


class Opaque:
    """A value no codec can store."""

    def __repr__(self) -> str:
        return "Opaque()"


def message(channel: str, text: str, **fields: object) -> QueuedMessage:
    return QueuedMessage("slack", channel, "u1", "Ada", text, **fields)  # type: ignore[arg-type]


def bad_message(channel: str, text: str) -> QueuedMessage:
    return message(channel, text, extra={"obj": Opaque()})


def item(item_id: str, *messages: QueuedMessage) -> QueueItem:
    return QueueItem(item_id, messages[0].channel_id, MessageBatch(list(messages), AT, AT))


@pytest.fixture
def store(redis_srv: RedisServer) -> Iterator[RedisStore]:
    s = RedisStore.from_url(redis_srv.url)
    s.check_durability(allow_volatile=False)
    s.open_epoch()
    yield s
    s.close()


def texts(items: tuple[QueueItem, ...]) -> list[list[str]]:
    out = []
    for it in items:
        payload = it.payload
        out.append([m.text for m in (payload.messages if isinstance(payload, MessageBatch) else [payload])])
    return out


def dead_letters(store: RedisStore, channel: str) -> list[DeadLetter]:
    client = store._redis  # the test reads what the store wrote, with the store's own connection
    raw: list[bytes] = client.lrange(keys.channel_key(keys.DEAD_LETTER, channel), 0, -1)  # type: ignore[assignment]
    return [codec.decode(data, DeadLetter) for data in raw]


def test_an_unencodable_open_message_is_dead_lettered_and_other_channels_are_stored(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="actors.store"):
        store.apply(
            [
                AppendOpen("good-1", OpenEntry(message("good-1", "a"), 100.0)),
                AppendOpen("bad", OpenEntry(bad_message("bad", "poison"), 100.5)),
                AppendOpen("bad", OpenEntry(message("bad", "fine"), 100.7)),
                AppendOpen("good-2", OpenEntry(message("good-2", "b", extra={"k": [1, "v"]}), 101.0)),
                PushTail("good-2", item("g2-1", message("good-2", "b0")), closes_open=False),
            ]
        )
    snapshots = {s.channel_id: s for s in store.load()}
    assert [e.message.text for e in snapshots["good-1"].open_entries] == ["a"]
    assert [e.message.text for e in snapshots["good-2"].open_entries] == ["b"]
    assert texts(snapshots["good-2"].waiting) == [["b0"]]
    # the bad channel keeps its good message; the bad one is a dead letter naming the reason
    assert [e.message.text for e in snapshots["bad"].open_entries] == ["fine"]
    [letter] = dead_letters(store, "bad")
    assert letter.role == keys.OPEN_BATCH
    assert "could not be encoded for storage" in letter.reason and "Opaque" in letter.reason
    assert b"poison" in letter.data and b"Opaque()" in letter.data
    assert dead_letters(store, "good-1") == [] and dead_letters(store, "good-2") == []
    assert any("'bad'" in r.getMessage() and "could not be encoded" in r.getMessage() for r in caplog.records)


def test_an_unencodable_item_keeps_its_place_so_later_moves_address_the_right_items(store: RedisStore) -> None:
    """The item that cannot be stored leaves a placeholder in its list: taking the head into processing and
    finishing it affect that placeholder, not the good item behind it; a restore skips the placeholder."""
    bad_time = message("c", "late", queued_at="yesterday")
    store.apply(
        [
            PushTail("c", item("i1", bad_time), closes_open=False),
            PushTail("c", item("i2", message("c", "kept")), closes_open=False),
            PushHead("other", item("o1", message("other", "front"))),
            TakeHead("c"),  # i1 goes out to the processor...
            FinishInFlight("c"),  # ...and is done: i2 must still be queued
            PushHead("c", item("i0", bad_message("c", "front-bad"))),
        ]
    )
    snapshots = {s.channel_id: s for s in store.load()}
    assert [i.item_id for i in snapshots["c"].waiting] == ["i2"]  # the placeholder of i0 is skipped
    assert [i.item_id for i in snapshots["other"].waiting] == ["o1"]
    letters = dead_letters(store, "c")
    assert [letter.role for letter in letters] == [keys.QUEUE, keys.QUEUE]
    assert "queued_at must be a datetime, got str" in letters[0].reason
    assert b"front-bad" in letters[1].data
    # the restore rewrote the list without the placeholder: a second restore is the same, no new dead letter
    [again_c] = [s for s in store.load() if s.channel_id == "c"]
    assert [i.item_id for i in again_c.waiting] == ["i2"]
    assert len(dead_letters(store, "c")) == 2


def test_a_closing_batch_with_an_unencodable_message_is_set_aside_and_its_open_list_cleared(
    store: RedisStore,
) -> None:
    poison = bad_message("c", "x")
    store.apply(
        [
            AppendOpen("c", OpenEntry(message("c", "a"), 1.0)),
            AppendOpen("c", OpenEntry(poison, 2.0)),
            PushTail("c", item("i1", message("c", "a"), poison), closes_open=True),
            AppendOpen("c", OpenEntry(message("c", "next"), 3.0)),
            AppendOpen("d", OpenEntry(message("d", "other"), 3.0)),
        ]
    )
    snapshots = {s.channel_id: s for s in store.load()}
    assert snapshots["c"].waiting == ()
    assert [e.message.text for e in snapshots["c"].open_entries] == ["next"]
    assert [e.message.text for e in snapshots["d"].open_entries] == ["other"]
    assert [letter.role for letter in dead_letters(store, "c")] == [keys.OPEN_BATCH, keys.QUEUE]


def test_a_value_whose_repr_and_error_fail_is_still_set_aside(store: RedisStore) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    store.apply(
        [
            AppendOpen("c", OpenEntry(message("c", "bad", extra={"h": Hostile()}), 1.0)),
            AppendOpen("c", OpenEntry(message("c", "\udc80 lone surrogate", extra={}), 2.0)),
            AppendOpen("c", OpenEntry(message("c", "good"), 3.0)),
        ]
    )
    [snapshot] = store.load()
    assert [e.message.text for e in snapshot.open_entries] == ["good"]
    first, second = dead_letters(store, "c")
    assert b"whose repr failed: RuntimeError" in first.data
    assert "valid UTF-8" in second.reason and b"\\udc80" in second.data


# -- the asyncio API with persistence -------------------------------------------------------------------------


def test_a_bad_queued_at_is_refused_by_enqueue_and_every_other_channel_is_stored_and_delivered(
    redis_srv: RedisServer,
) -> None:
    import asyncio

    import redis.asyncio as aioredis
    from test_message_queue_api import Recorder, msg

    from message_queue import InvalidInput, MessageQueue

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            async with MessageQueue(default_batch_window=0.05, max_batch_size=10, redis=client) as queue:
                rec = Recorder()
                for channel in ("a", "b", "c"):
                    await queue.start_processing(channel, rec)
                await queue.enqueue(msg("a", "before"))
                with pytest.raises(InvalidInput, match="queued_at must be a timezone-aware datetime, got str"):
                    await queue.enqueue(QueuedMessage("p", "c", "u", "n", "x", queued_at="yesterday"))  # type: ignore[arg-type]
                with pytest.raises(InvalidInput, match="without a UTC offset"):
                    await queue.enqueue(QueuedMessage("p", "c", "u", "n", "x", queued_at=datetime(2024, 5, 1)))
                for channel in ("a", "b", "c"):
                    await queue.enqueue(msg(channel, f"after {channel}"))
                def flat(channel: str) -> list[str]:
                    return [m.text for item in rec.items[channel] for m in payload_messages(item)]

                await rec.wait(lambda: len(flat("a")) + len(flat("b")) + len(flat("c")) == 4)
                stats = await asyncio.wait_for(queue.statistics(), 10)  # it answers: nothing is stuck
                assert {s.channel_id for s in stats} >= {"a", "b", "c"}
                assert (flat("a"), flat("b"), flat("c")) == (["before", "after a"], ["after b"], ["after c"])
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))
