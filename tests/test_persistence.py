"""Persistence mode on real actor systems and a private redis-server: what is acknowledged is in Redis, and a
restarted system resumes every channel where the last one stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Iterator

import pytest
import redis
from actor_support import HOLD
from harness import Harness, message, texts
from redis_support import RedisServer, as_bytes

from actors.journal import OpenStore, StoreOpened
from actors.lease import LeaseHolder
from actors.system import SIMPLE_BASE, TCP_BASE, free_port, start_system
from protocol import codec, keys
from protocol.errors import RedisDataLost, StoreLocked, UnsafeRedis
from protocol.messages import BatchReady, Clear, Cleared, Enqueued, EnqueueFront, EnqueueMany
from protocol.values import BatchSettings, DeadLetter, MessageBatch, OpenEntry, QueueItem, SeenId

pytestmark = pytest.mark.redis

BASES = [
    pytest.param(SIMPLE_BASE, id="simple"),
    pytest.param(TCP_BASE, id="tcp", marks=pytest.mark.tcp),
]


class Node:
    """Starts and stops systems persisting to one Redis, one at a time."""

    def __init__(self, base: str, server: RedisServer) -> None:
        self.base = base
        self.server = server
        self.current: Harness | None = None

    def start(self, window: float = 30.0, max_batch_size: int = 10, idle_timeout: float = 60.0) -> Harness:
        self.stop()
        port = free_port() if self.base == TCP_BASE else None
        running = start_system(
            self.base,
            BatchSettings(window=window, max_batch_size=max_batch_size),
            idle_timeout=idle_timeout,
            admin_port=port,
            redis_url=self.server.url,
            timeout=20,
        )
        self.current = Harness(running, port)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.shutdown_and_verify()
            self.current = None


@pytest.fixture(params=BASES)
def node(request: pytest.FixtureRequest, redis_srv: RedisServer) -> Iterator[Node]:
    n = Node(str(request.param), redis_srv)
    yield n
    n.stop()


def stored(client: redis.Redis, role: str, channel: str) -> list[object]:
    return [codec.decode(as_bytes(raw)) for raw in client.lrange(keys.channel_key(role, channel), 0, -1)]


def test_an_acknowledged_enqueue_is_already_in_redis(node: Node, client: redis.Redis) -> None:
    h = node.start()
    h.enqueue(message("c1", "a"), message("c2", "b"), message("c1", "c"))
    opened = stored(client, keys.OPEN_BATCH, "c1")
    assert [e.message.text for e in opened if isinstance(e, OpenEntry)] == ["a", "c"]
    assert len(stored(client, keys.OPEN_BATCH, "c2")) == 1


def test_the_item_in_flight_is_held_in_its_processing_record_until_the_processor_answers(
    node: Node, client: redis.Redis
) -> None:
    h = node.start(max_batch_size=2)
    p = h.processor(HOLD)
    h.attach(p)
    h.enqueue(*(message("c", t) for t in "abcd"))
    [first] = h.wait_for(p, count=1)
    assert isinstance(first, BatchReady) and texts(first) == ["a", "b"]
    [in_flight] = stored(client, keys.PROCESSING, "c")
    assert isinstance(in_flight, QueueItem) and in_flight.item_id == first.item.item_id
    assert [i.item_id for i in stored(client, keys.QUEUE, "c") if isinstance(i, QueueItem)] != []
    h.release(p)
    events = h.wait_for(p, count=2)
    second = events[1]
    assert isinstance(second, BatchReady) and texts(second) == ["c", "d"]
    [now_in_flight] = stored(client, keys.PROCESSING, "c")
    assert isinstance(now_in_flight, QueueItem) and now_in_flight.item_id == second.item.item_id
    assert stored(client, keys.QUEUE, "c") == []


def test_a_restart_redelivers_the_item_in_flight_with_the_same_id_and_a_higher_attempt(node: Node) -> None:
    h = node.start(max_batch_size=2)
    p = h.processor(HOLD)
    h.attach(p)
    h.enqueue(*(message("c", t) for t in "abcde"))
    [first] = h.wait_for(p, count=1)
    assert isinstance(first, BatchReady) and first.item.attempt == 1
    h = node.start(max_batch_size=2)  # the old system stops with the item unanswered
    p = h.processor()
    h.attach(p)
    events = [e for e in h.wait_for(p, count=2) if isinstance(e, BatchReady)]
    assert [texts(e) for e in events] == [["a", "b"], ["c", "d"]]
    assert (events[0].item.item_id, events[0].item.attempt) == (first.item.item_id, 2)
    assert events[1].item.attempt == 1
    assert h.stats("c").open_batch_size == 1  # "e" is still collecting, under its original window


def test_an_open_batch_keeps_its_original_deadline_across_a_restart(node: Node) -> None:
    window = 1.5
    h = node.start(window=window)
    opened = time.monotonic()
    h.enqueue(message("c", "a"), message("c", "b"))
    h = node.start(window=window)
    restarted = time.monotonic()
    p = h.processor()
    h.attach(p)
    [ready] = h.wait_for(p, count=1, timeout=10)
    flushed = time.monotonic()
    assert isinstance(ready, BatchReady) and texts(ready) == ["a", "b"] and ready.reason == "window"
    # the window ran from the last message, not from the restart
    assert flushed - opened >= window - 0.05
    assert flushed < restarted + window, (flushed - opened, restarted - opened)


def test_front_items_and_clears_are_persisted(node: Node) -> None:
    h = node.start(max_batch_size=1)
    h.enqueue(message("c", "a"), message("c", "b"), message("c", "c"))
    assert h.ask(EnqueueFront(message("c", "urgent"), ack=True), Enqueued) == Enqueued(1)
    h = node.start(max_batch_size=1)
    assert h.ask(Clear("c"), Cleared) == Cleared("c", 4)
    h.enqueue(message("c", "after"))
    h = node.start(max_batch_size=1)
    p = h.processor()
    h.attach(p)
    [ready] = h.wait_for(p, count=1)
    assert isinstance(ready, BatchReady) and texts(ready) == ["after"]
    assert h.stats("c").queued == 0


def test_front_insertion_survives_a_restart_at_the_head(node: Node) -> None:
    h = node.start(max_batch_size=1)
    h.enqueue(message("c", "a"), message("c", "b"))
    batch = MessageBatch([message("c", "x"), message("c", "y")])
    assert h.ask(EnqueueFront(batch, ack=True), Enqueued) == Enqueued(1)
    h = node.start(max_batch_size=1)
    p = h.processor()
    h.attach(p)
    events = [e for e in h.wait_for(p, count=3) if isinstance(e, BatchReady)]
    assert [texts(e) for e in events] == [["x", "y"], ["a"], ["b"]]


def test_an_undecodable_stored_item_goes_to_dead_letters_and_the_channel_carries_on(
    node: Node, client: redis.Redis
) -> None:
    h = node.start(max_batch_size=1)
    h.enqueue(message("c", "a"))
    client.rpush(keys.queue_key("c"), b"\x92\xa4item\xc0")
    h.enqueue(message("c", "b"))
    h = node.start(max_batch_size=1)
    p = h.processor()
    h.attach(p)
    events = [e for e in h.wait_for(p, count=2) if isinstance(e, BatchReady)]
    assert [texts(e) for e in events] == [["a"], ["b"]]
    [letter] = stored(client, keys.DEAD_LETTER, "c")
    assert isinstance(letter, DeadLetter) and letter.role == keys.QUEUE and letter.data == b"\x92\xa4item\xc0"


def test_a_redis_without_aof_is_refused_unless_allowed(volatile_redis: RedisServer) -> None:
    with pytest.raises(UnsafeRedis, match=r"appendonly is 'no'.*--allow-volatile-redis"):
        start_system(SIMPLE_BASE, redis_url=volatile_redis.url)
    running = start_system(SIMPLE_BASE, redis_url=volatile_redis.url, allow_volatile_redis=True)
    running.shutdown()


def test_a_redis_that_lost_part_of_its_data_is_reported_at_start(
    redis_srv: RedisServer, client: redis.Redis
) -> None:
    client.sadd(keys.CHANNEL_INDEX, "c")
    with pytest.raises(RedisDataLost, match="lost part of its data"):
        start_system(SIMPLE_BASE, redis_url=redis_srv.url)


def test_a_call_gets_its_own_reply_while_an_earlier_acknowledgement_waits_for_redis(
    redis_srv: RedisServer,
) -> None:
    from actors.driver import InProcessDriver
    from protocol.messages import EnqueueMany, GetStatistics, Statistics

    driver = InProcessDriver(lambda output: None, BatchSettings(window=30.0), redis_url=redis_srv.url)
    driver.start()
    try:
        assert driver.call(EnqueueMany((message("c", "a"),), ack=True)).result(5) == Enqueued(1)
        redis_srv.kill()
        held = driver.call(EnqueueMany((message("c", "b"), message("c", "c")), ack=True))
        stats = driver.call(GetStatistics("idle-channel")).result(5)
        assert isinstance(stats, Statistics) and stats.channels[0].channel_id == "idle-channel"
        assert not held.done()  # Redis is down: the acknowledgement waits for the write
        redis_srv.start()
        assert held.result(15) == Enqueued(2)
    finally:
        driver.stop()



# -- one persisting node per database: the writer lease ---------------------------------------------------------


def lease_of(client: redis.Redis) -> LeaseHolder | None:
    raw = client.get(keys.LEASE)
    assert raw is None or isinstance(raw, bytes)
    return LeaseHolder.decode(raw) if raw is not None else None


def test_a_second_node_on_the_same_database_is_refused_naming_the_holder(
    node: Node, client: redis.Redis, redis_srv: RedisServer
) -> None:
    from actors.driver import InProcessDriver

    h = node.start()
    holder = lease_of(client)
    assert holder is not None and holder.host == socket.gethostname()
    if node.base == SIMPLE_BASE:
        assert holder.pid == os.getpid()  # every actor runs in this process
    else:
        assert holder.pid in h.running.processes()  # RedisPersistence's own process
    named = rf"another node persists to this Redis database \(host '{holder.host}', pid {holder.pid}, .*expires in"
    with pytest.raises(StoreLocked, match=named):
        start_system(SIMPLE_BASE, redis_url=redis_srv.url)
    driver = InProcessDriver(lambda output: None, redis_url=redis_srv.url)
    with pytest.raises(StoreLocked, match=named):
        driver.start()
    h.enqueue(message("c", "a"))  # the node holding the lease carries on
    assert lease_of(client) == holder


def test_the_first_use_of_a_message_queue_on_a_database_in_use_raises_store_locked(
    node: Node, redis_srv: RedisServer
) -> None:
    import redis.asyncio as aioredis

    from message_queue import MessageQueue, QueuedMessage

    node.start()

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            async with MessageQueue(redis=client) as mq:
                with pytest.raises(StoreLocked, match="another node persists to this Redis database"):
                    await mq.enqueue(QueuedMessage("slack", "c", "u1", "Ada", "hi"))
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_clean_shutdown_releases_the_lease(node: Node, client: redis.Redis) -> None:
    node.start()
    assert client.exists(keys.LEASE, keys.LEASE_HOLDER) == 2
    node.stop()
    assert client.exists(keys.LEASE, keys.LEASE_HOLDER) == 0
    node.start()  # and the next node starts at once
    assert lease_of(client) is not None


def test_a_node_whose_lease_was_taken_acknowledges_nothing_more(
    redis_srv: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    n = Node(SIMPLE_BASE, redis_srv)  # one process: its log is ours to read
    try:
        h = n.start()
        h.enqueue(message("c", "a"))
        thief = LeaseHolder("elsewhere.example", 4242, time.time(), None, "thief").encode()
        client.set(keys.LEASE, thief, px=60_000)  # another node took the lease after ours expired
        client.set(keys.LEASE_HOLDER, thief)
        with caplog.at_level(logging.CRITICAL, logger="actors.persistence"):
            assert h.asys.ask(h.supervisor, EnqueueMany((message("c", "b"),), ack=True), 1.0) is None
            assert h.asys.ask(h.supervisor, EnqueueFront(message("c", "c"), ack=True), 0.5) is None
        assert "lost the writer lease" in caplog.text and "'elsewhere.example', pid 4242" in caplog.text
        opened = stored(client, keys.OPEN_BATCH, "c")
        assert [e.message.text for e in opened if isinstance(e, OpenEntry)] == ["a"]
        assert client.llen(keys.queue_key("c")) == 0
    finally:
        n.stop()
    assert client.get(keys.LEASE) == thief  # the node's exit gave back nothing that was not its own


def test_the_lease_is_renewed_past_its_initial_expiry_and_released_at_exit(
    redis_srv: RedisServer, client: redis.Redis
) -> None:
    from thespian.actors import ActorExitRequest

    from actors.persistence import RedisPersistence

    lease = 0.3
    running = start_system(SIMPLE_BASE)  # no persistence of its own: a RedisPersistence driven by this test
    try:
        asys = running.asys
        persistence = asys.createActor(RedisPersistence)
        assert isinstance(asys.ask(persistence, OpenStore(redis_srv.url, lease_seconds=lease), 10), StoreOpened)
        held = client.get(keys.LEASE)
        assert held is not None
        # The simple base runs the actor (and its renewal wakeups) only inside listen: let it run for five
        # lease lengths, checking between every two looks that the lease never lapsed.
        until = time.monotonic() + 5 * lease
        while time.monotonic() < until:
            assert asys.listen(0.02) is None
            assert client.get(keys.LEASE) == held, "the lease lapsed or changed hands"
        assert 0 < client.pttl(keys.LEASE) <= lease * 1000
        asys.tell(persistence, ActorExitRequest())
        assert client.exists(keys.LEASE, keys.LEASE_HOLDER) == 0
    finally:
        running.shutdown()


# -- remembered message ids across passivation ---------------------------------------------------------------


def stored_ids(client: redis.Redis, channel: str) -> list[str]:
    return [s.message_id for s in stored(client, keys.SEEN_IDS, channel) if isinstance(s, SeenId)]


def test_a_passivated_channels_stored_ids_are_neither_lost_nor_stored_twice(node: Node, client: redis.Redis) -> None:
    h = node.start(window=0.01, idle_timeout=0.1)
    p = h.processor()
    h.attach(p)
    h.enqueue(message("c", "a", message_id="m1"), message("c", "b", message_id="m2"))
    h.wait_for(p, count=1)
    h.eventually(lambda: "c" not in h.live_channels(), "the channel passivated holding its ids")
    assert stored_ids(client, "c") == ["m1", "m2"]
    # its next actor got them back from the Supervisor: it drops the duplicate and stores only the new id
    h.enqueue(message("c", "a (retry)", message_id="m1"), message("c", "c", message_id="m3"))
    h.wait_for(p, count=2)
    assert h.stats("c").duplicates == 1
    h.eventually(lambda: "c" not in h.live_channels(), "the channel passivated again")
    assert stored_ids(client, "c") == ["m1", "m2", "m3"]
    h = node.start(window=0.01)  # a restart loads them from Redis
    p = h.processor()
    h.attach(p)
    h.enqueue(message("c", "b (retry)", message_id="m2"), message("c", "d", message_id="m4"))
    events = [e for e in h.wait_for(p, count=1) if isinstance(e, BatchReady)]
    assert [texts(e) for e in events] == [["d"]]
    assert h.stats("c").duplicates == 1
    assert stored_ids(client, "c") == ["m1", "m2", "m3", "m4"]
