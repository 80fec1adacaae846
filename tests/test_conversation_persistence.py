"""Conversation state across a restart with Redis (real actors on the simple base, a private redis-server;
and the asyncio API): remembered message ids, edits, retractions and takes, and interrupted items."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest
import redis
from actor_support import HOLD
from redis_support import RedisServer, as_bytes
from test_message_queue_api import Recorder, run
from test_persistence import Node

from actors.system import SIMPLE_BASE
from message_queue import MessageQueue
from protocol import codec, keys
from protocol.messages import (
    BatchReady,
    ChannelConfigured,
    ConfigureChannel,
    Edit,
    Edited,
    Enqueue,
    Enqueued,
    Retract,
    Retracted,
    Taken,
    TakeWaiting,
)
from protocol.values import BatchSettings, OpenEntry, QueuedMessage, QueueItem, SeenId

pytestmark = pytest.mark.redis


@pytest.fixture
def node(redis_srv: RedisServer) -> Iterator[Node]:
    n = Node(SIMPLE_BASE, redis_srv)
    yield n
    n.stop()


def msg(channel: str, text: str, mid: str = "") -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text, message_id=mid)


def stored(client: redis.Redis, role: str, channel: str) -> list[object]:
    return [codec.decode(as_bytes(raw)) for raw in client.lrange(keys.channel_key(role, channel), 0, -1)]


def test_remembered_ids_survive_a_restart(node: Node, client: redis.Redis) -> None:
    h = node.start(window=0.01)
    p = h.processor()
    h.attach(p)
    h.enqueue(msg("c", "hello", "m1"))
    h.wait_for(p, count=1)
    assert [s.message_id for s in stored(client, keys.SEEN_IDS, "c") if isinstance(s, SeenId)] == ["m1"]
    h = node.start(window=0.01)  # nothing waits in "c": it comes back for its ids alone
    p = h.processor()
    h.attach(p)
    assert h.ask(Enqueue(msg("c", "hello (retry)", "m1"), ack=True), Enqueued) == Enqueued(1)
    h.enqueue(msg("c", "next", "m2"))
    events = [e for e in h.wait_for(p, count=1) if isinstance(e, BatchReady)]
    assert [[m.text for m in e.item.payload.messages] for e in events] == [["next"]]  # type: ignore[union-attr]
    assert h.stats("c").duplicates == 1


def stored_ids(client: redis.Redis, channel: str) -> list[str]:
    return [s.message_id for s in stored(client, keys.SEEN_IDS, channel) if isinstance(s, SeenId)]


def test_a_passivating_channel_leaves_only_its_unexpired_ids_in_redis(node: Node, client: redis.Redis) -> None:
    h = node.start(window=0.01, idle_timeout=0.1)
    assert h.ask(ConfigureChannel("c", BatchSettings(window=0.01, dedupe_ttl=0.3)), ChannelConfigured)
    p = h.processor()
    h.attach(p)
    h.enqueue(msg("c", "a", "m1"))
    h.wait_for(p, count=1)
    h.let_pass(0.3)  # m1's dedupe_ttl
    h.enqueue(msg("c", "b", "m2"))
    h.wait_for(p, count=2)
    assert stored_ids(client, "c") == ["m1", "m2"]
    h.eventually(lambda: "c" not in h.live_channels(), "the channel passivated")
    assert stored_ids(client, "c") == ["m2"]
    h.let_pass(0.3)  # m2's dedupe_ttl
    h.enqueue(msg("c", "c", "m3"))  # its actor got no ids back (m2 expired), and may not know what is stored
    h.wait_for(p, count=3)
    assert stored_ids(client, "c") == ["m2", "m3"]
    h.eventually(lambda: "c" not in h.live_channels(), "the channel passivated again")
    assert stored_ids(client, "c") == ["m3"]


def test_edits_retractions_and_takes_are_in_redis_and_survive_a_restart(node: Node, client: redis.Redis) -> None:
    h = node.start(window=30.0, max_batch_size=2)
    h.enqueue(*(msg("c", t, f"id-{t}") for t in "abcde"))  # items [a, b], [c, d]; open [e]
    assert h.ask(Edit(msg("c", "B", "id-b")), Edited).edited
    assert h.ask(Edit(msg("c", "E", "id-e")), Edited).edited
    assert h.ask(Retract("c", "id-c"), Retracted).retracted
    waiting = [i for i in stored(client, keys.QUEUE, "c") if isinstance(i, QueueItem)]
    assert [[m.text for m in i.payload.messages] for i in waiting] == [["a", "B"], ["d"]]  # type: ignore[union-attr]
    assert [e.message.text for e in stored(client, keys.OPEN_BATCH, "c") if isinstance(e, OpenEntry)] == ["E"]
    h = node.start(window=30.0, max_batch_size=2)
    taken = h.ask(TakeWaiting("c"), Taken)
    assert [m.text for m in taken.messages] == ["a", "B", "d", "E"]
    assert stored(client, keys.QUEUE, "c") == [] and stored(client, keys.OPEN_BATCH, "c") == []
    h = node.start(window=30.0, max_batch_size=2)
    assert h.stats("c").open_batch_size == 0 and h.stats("c").queued == 0


def test_an_interrupted_item_is_stored_with_its_flag(node: Node, client: redis.Redis) -> None:
    h = node.start(window=0.01)
    assert h.ask(ConfigureChannel("c", BatchSettings(window=0.01, max_batch_size=3, busy_policy="interrupt")),
                 ChannelConfigured)
    p = h.processor(HOLD)
    h.attach(p)
    h.enqueue(msg("c", "a"))
    h.wait_for(p, count=1)
    h.enqueue(msg("c", "b"), msg("c", "c"))  # interrupts: [a, b, c] is full at once and delivered
    events = [e for e in h.wait_for(p, count=3) if isinstance(e, BatchReady)]
    assert events[-1].item.interrupted
    [in_flight] = stored(client, keys.PROCESSING, "c")
    assert isinstance(in_flight, QueueItem) and in_flight.interrupted
    h = node.start(window=0.01)
    p = h.processor()
    h.attach(p)
    [again] = [e for e in h.wait_for(p, count=1) if isinstance(e, BatchReady)]
    assert again.item.interrupted and again.item.attempt == 2


def test_the_asyncio_api_drops_a_duplicate_after_a_restart(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_srv.url)
        try:
            async with MessageQueue(default_batch_window=0.01, redis=client) as mq:
                rec = Recorder()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "hello", "m1"))
                await rec.wait(lambda: rec.flat("c") == ["hello"])
            async with MessageQueue(default_batch_window=0.01, redis=client) as mq:
                rec = Recorder()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "hello", "m1"))
                await mq.enqueue(msg("c", "bye", "m2"))
                await rec.wait(lambda: rec.flat("c") == ["bye"])
                (snapshot,) = await mq.statistics("c")
                assert snapshot.duplicates == 1
        finally:
            await client.aclose()

    run(main())


def test_the_stored_ids_are_compacted_to_those_remembered(
    node: Node, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actors.batching
    import actors.channel

    monkeypatch.setattr(actors.batching, "MAX_REMEMBERED_IDS", 5)
    monkeypatch.setattr(actors.channel, "MAX_REMEMBERED_IDS", 5)
    h = node.start(window=30.0, max_batch_size=100)
    for i in range(12):
        h.enqueue(msg("c", str(i), f"m{i}"))
    ids = [s.message_id for s in stored(client, keys.SEEN_IDS, "c") if isinstance(s, SeenId)]
    assert len(ids) <= 2 * 5 and ids[-5:] == [f"m{i}" for i in range(7, 12)]
    h = node.start(window=30.0, max_batch_size=100)
    h.enqueue(msg("c", "again", "m0"), msg("c", "again", "m11"))  # m0 was forgotten, m11 was not
    stats = h.stats("c")
    assert (stats.duplicates, stats.open_batch_size) == (1, 13)


def test_settings_given_with_configure_hold_after_a_restart(redis_srv: RedisServer) -> None:
    from message_queue import ChannelBusy

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_srv.url)
        try:
            async with MessageQueue(default_batch_window=0.01, redis=client) as mq:
                await mq.configure("c", busy_policy="reject", window=0.01)
                await mq.configure("d", busy_policy="reject")
                await mq.configure("d")  # back to the defaults: its hash is gone
            assert await client.hgetall(keys.config_key("c")) == {b"busy_policy": b"reject", b"window": b"0.01"}
            assert await client.exists(keys.config_key("d")) == 0
            async with MessageQueue(default_batch_window=0.01, redis=client) as mq:
                rec = Recorder()
                rec.gate = asyncio.Event()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "a"))
                await rec.wait_started()
                with pytest.raises(ChannelBusy):
                    await mq.enqueue(msg("c", "b"))
                rec.gate.set()
                await rec.wait(lambda: rec.flat("c") == ["a"])
        finally:
            await client.aclose()

    run(main())
