"""Distributed mode in one process: nodes (``DistributedBatcher``), the scripts, the event buses, the relay and
``MessageQueue(redis=..., event_bus=...)``, each on a private redis-server.

Waits for behaviour are ``XREAD BLOCK`` polls of the stream, or polls of a condition, with timeouts; no sleeps.
Several "nodes" here are batchers on one event loop with clients of their own: to Redis they are as separate as
processes (the multi-process tests are in ``test_distributed_nodes.py``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any, Awaitable, Callable, Coroutine

import pytest
import redis
import redis.asyncio as aioredis
from redis_support import RedisServer, redis_server, reply

from message_queue import InvalidSettings, MessageBatch, MessageQueue, QueuedMessage, UnsafeRedis, scripts
from message_queue.distributed import (
    DistributedBatcher,
    DistributedQueue,
    NodeOptions,
    OutboxRelay,
    channel_statistics,
)
from message_queue.event_bus import RedisStreamEventBus, current_inbound
from protocol import keys
from protocol.errors import InvalidInput
from protocol.stream import InboundBatch, decode_entry
from protocol.values import BatchSettings, ChannelStatistics
from service import admin_distributed

pytestmark = pytest.mark.redis

TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id="u1", user_name="U1", text=text)


def texts(entry: InboundBatch) -> list[str]:
    return [m.text for m in entry.batch.messages]


class Cluster:
    """Clients and nodes on one server, all closed on exit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stack = AsyncExitStack()

    async def __aenter__(self) -> Cluster:
        await self.stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.__aexit__(None, None, None)

    def client(self, **options: Any) -> aioredis.Redis:
        client = aioredis.Redis.from_url(self.url, **options)
        self.stack.push_async_callback(client.aclose)
        return client

    async def node(self, settings: BatchSettings, name: str, **options: Any) -> DistributedBatcher:
        batcher = DistributedBatcher(self.client(), settings, NodeOptions(node_id=name, **options))
        await batcher.start()
        self.stack.push_async_callback(batcher.close)
        return batcher


async def read_stream(client: aioredis.Redis, count: int, stream: str = keys.INBOUND_STREAM,
                      timeout: float = TIMEOUT) -> list[InboundBatch]:
    """Every entry of ``stream`` once it holds at least ``count`` (XREAD BLOCK polls)."""
    entries: list[InboundBatch] = []
    last = "0-0"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(entries) < count:
        if loop.time() > deadline:
            raise TimeoutError(f"{len(entries)} of {count} entries in {stream}")
        read = reply(await client.xread({stream: last}, count=1000, block=100))
        for _, items in read or ():
            for entry_id, fields in items:
                entries.append(decode_entry(fields, entry_id))
                last = entry_id.decode()
    return entries


# -- batching in Redis -----------------------------------------------------------------------------------


def test_messages_within_the_window_form_one_batch_published_once_the_window_is_quiet(
    redis_srv: RedisServer,
) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.1, max_batch_size=10), "n1")
            for text in ("hey", "can you", "fix the build?"):
                await node.append(msg("slack:#dev", text))
            (entry,) = await read_stream(cluster.client(), 1)
            assert texts(entry) == ["hey", "can you", "fix the build?"]
            assert (entry.reason, entry.seq, entry.by) == ("window", 1, "n1/timer")
            assert entry.batch_id == f"{keys.channel_tag('slack:#dev')}:1"
            assert entry.batch.first_at <= entry.batch.last_at
            assert entry.batch.first_at.utcoffset() is not None
            assert entry.lateness_ms is not None and 0 <= entry.lateness_ms < 1000
            await node.drain()
            stats = node.statistics()
            assert (stats.appended, stats.published_by_timer, stats.armed, stats.pending) == (3, 1, 0, 0)
            admin = cluster.client()
            assert await admin.zcard(keys.DIST_DEADLINES) == 0
            assert await admin.exists(keys.dist_key(keys.DIST_MESSAGES, "slack:#dev")) == 0

    run(main())


def test_drain_does_not_wait_out_deadlines_an_admin_flush_or_clear_removed(redis_srv: RedisServer) -> None:
    """A batch flushed or cleared by the admin script (another process) leaves this node's timer armed for the
    old deadline; drain asks each armed channel once instead of waiting it out, and keeps waiting for one
    still open."""

    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=30.0, max_batch_size=10), "n1")
            for channel in ("a", "b", "c"):
                await node.append(msg(channel, f"{channel}0"))
            admin = redis.Redis.from_url(redis_srv.url)
            try:
                assert admin_distributed.flush(admin, "a")["flushed"] is True
                assert admin_distributed.clear(admin, "c")["removed"] == 1
                with pytest.raises(TimeoutError):  # b is open for 30 s more: drain must keep waiting for it
                    await asyncio.wait_for(asyncio.shield(node.drain()), 0.5)
                assert node.statistics().armed == 1  # b, re-armed with its deadline; a and c let go
                assert admin_distributed.flush(admin, "b")["flushed"] is True
            finally:
                admin.close()
            await asyncio.wait_for(node.drain(), TIMEOUT)  # long before the 30 s window
            entries = await read_stream(cluster.client(), 2)
            assert [(e.channel_id, texts(e), e.by) for e in entries] == \
                [("a", ["a0"], "admin/flush"), ("b", ["b0"], "admin/flush")]
            assert node.statistics().armed == 0

    run(main())


def test_a_full_batch_is_published_by_the_append_that_fills_it(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.1, max_batch_size=3), "n1")
            await asyncio.gather(*(node.append(msg("c", f"m{i}")) for i in range(7)))
            entries = await read_stream(cluster.client(), 3)
            assert [texts(e) for e in entries] == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]
            assert [(e.reason, e.seq, e.by) for e in entries] == [
                ("full", 1, "n1/append"), ("full", 2, "n1/append"), ("window", 3, "n1/timer")]
            assert entries[0].deadline_ms == 0 and entries[0].lateness_ms is None

    run(main())


def test_max_wait_closes_a_batch_that_keeps_growing(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=30.0, max_batch_size=10, max_wait=0.1), "n1")
            await node.append(msg("c", "a"))
            await node.append(msg("c", "b"))
            (entry,) = await read_stream(cluster.client(), 1)
            assert texts(entry) == ["a", "b"] and entry.reason == "max_wait"

    run(main())


def test_batching_disabled_in_redis_publishes_each_message_alone(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            await admin.hset(keys.config_key("quiet"), mapping={"disabled": "1"})
            node = await cluster.node(BatchSettings(window=30.0), "n1")
            for text in ("a", "b"):
                await node.append(msg("quiet", text))
            entries = await read_stream(admin, 2)
            assert [(texts(e), e.reason, e.seq) for e in entries] == [(["a"], "unbatched", 1), (["b"], "unbatched", 2)]
            assert await admin.zcard(keys.DIST_DEADLINES) == 0

    run(main())


def test_turning_batching_off_publishes_the_open_batch_first(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            node = await cluster.node(BatchSettings(window=30.0), "n1", config_ttl=0.0)
            await node.append(msg("c", "a"))
            await node.append(msg("c", "b"))
            await admin.hset(keys.config_key("c"), "disabled", "1")
            # A setting is re-read alongside a message and applies from the next one on.
            await node.append(msg("c", "c"))
            await node.append(msg("c", "d"))
            entries = await read_stream(admin, 2)
            assert [(texts(e), e.reason) for e in entries] == [(["a", "b", "c"], "settings"), (["d"], "unbatched")]

    run(main())


def test_a_window_set_in_redis_applies_to_its_channel(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            await admin.hset(keys.config_key("fast"), "window", "0.05")
            node = await cluster.node(BatchSettings(window=30.0), "n1")
            await node.append(msg("slow", "s"))
            await node.append(msg("fast", "f"))
            (entry,) = await read_stream(admin, 1)
            assert entry.channel_id == "fast" and entry.reason == "window"
            assert await admin.zscore(keys.DIST_DEADLINES, keys.channel_tag("slow")) is not None

    run(main())


def test_publish_now_goes_ahead_of_the_open_batch(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.1), "n1")
            await node.append(msg("c", "open"))
            batch_id = await node.publish_now(msg("c", "urgent"))
            entries = await read_stream(cluster.client(), 2)
            assert [(texts(e), e.reason, e.batch_id) for e in entries] == [
                (["urgent"], "front", batch_id), (["open"], "window", f"{keys.channel_tag('c')}:2")]
            assert entries[0].by == "n1/front"

    run(main())


def test_hostile_channel_ids_keep_their_batches_apart(redis_srv: RedisServer) -> None:
    hostile = ["a}b{c", "{", "}", "x:state", "*", "\n", "\x00", "🙂", "message_queue:dist:{YQ}:msgs", "é" * 128]

    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            node = await cluster.node(BatchSettings(window=0.05), "n1")
            for round_no in range(2):
                await asyncio.gather(*(node.append(msg(c, f"{i}/{round_no}")) for i, c in enumerate(hostile)))
            seen = {e.channel_id: texts(e) for e in await read_stream(admin, len(hostile))}
            assert seen == {c: [f"{i}/0", f"{i}/1"] for i, c in enumerate(hostile)}
            for key in await admin.keys(f"{keys.PREFIX}:{keys.DIST}:{{*"):
                tag = reply(key).decode().split("{", 1)[1].split("}", 1)[0]
                assert keys.channel_of_tag(tag) in hostile

    run(main())


# -- several nodes ---------------------------------------------------------------------------------------


def test_two_nodes_batch_one_channel_together_and_publish_it_once(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            settings = BatchSettings(window=0.15, max_batch_size=10)
            a = await cluster.node(settings, "node-a")
            b = await cluster.node(settings, "node-b")
            for i in range(6):
                await (a if i % 2 == 0 else b).append(msg("shared", f"m{i}"))
            (entry,) = await read_stream(cluster.client(), 1)
            assert texts(entry) == [f"m{i}" for i in range(6)]
            assert entry.by in ("node-a/timer", "node-b/timer")  # whichever timer found the deadline passed
            await asyncio.gather(a.drain(), b.drain())
            assert a.statistics().published_by_timer + b.statistics().published_by_timer == 1
            assert a.statistics().armed == b.statistics().armed == 0

    run(main())


def test_a_dead_nodes_batch_is_published_by_another_nodes_sweeper(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            settings = BatchSettings(window=0.05)
            dead = await cluster.node(settings, "dead")
            await dead.append(msg("c", "orphan"))
            await dead.close()  # its timer goes with it; the batch stays in Redis
            await cluster.node(settings, "alive", sweep_interval=0.05, grace=0.05)
            (entry,) = await read_stream(cluster.client(), 1)
            assert texts(entry) == ["orphan"] and entry.by == "alive/sweep" and entry.reason == "window"
            assert entry.lateness_ms is not None and entry.lateness_ms >= 50

    run(main())


def test_racing_flushes_publish_a_batch_once(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.05), "n1", sweep_interval=60.0)
            await node.append(msg("c", "x"))
            await node.close()
            admin = cluster.client()
            tag = keys.channel_tag("c")
            flush_keys = [keys.DIST_DEADLINES, keys.INBOUND_STREAM, keys.DIST_SEQ_FLOOR,
                          keys.dist_key_of_tag(keys.DIST_MESSAGES, tag), keys.dist_key_of_tag(keys.DIST_STATE, tag),
                          keys.config_key("c"), keys.dist_key_of_tag(keys.DIST_HELD, tag)]
            deadline = await admin.zscore(keys.DIST_DEADLINES, tag)
            assert deadline is not None
            while True:  # poll the server's clock (not the batch) until every racer will find the batch due
                seconds, micros = await admin.time()
                if seconds * 1000 + micros // 1000 > deadline:
                    break
            answers = await asyncio.gather(*(
                scripts.run(cluster.client(), scripts.FLUSH, flush_keys, [0, f"racer{i}/timer", 60_000, tag])
                for i in range(4)
            ))
            outcomes = sorted(int(reply(a).split(b",")[1]) for a in answers)
            assert outcomes == [-2, -2, -2, -1]
            assert await admin.xlen(keys.INBOUND_STREAM) == 1

    run(main())


def test_a_replayed_append_is_applied_once(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            tag = keys.channel_tag("c")
            from protocol import codec

            entry = (keys.dist_key_of_tag(keys.DIST_MESSAGES, tag), keys.dist_key_of_tag(keys.DIST_STATE, tag),
                     keys.dist_key_of_tag(keys.DIST_IDS, tag), keys.config_key("c"),
                     keys.dist_key_of_tag(keys.DIST_HELD, tag), codec.encode(msg("c", "once")), "c", tag,
                     "30000:0:10:1:0:10000:r", "")
            call_keys, args = scripts.append_call(keys.INBOUND_STREAM, keys.dist_node_key("n1"), 0, "n1/append", 7,
                                                  60_000, [entry])
            first = reply(await scripts.run(admin, scripts.APPEND, call_keys, args))
            again = reply(await scripts.run(admin, scripts.APPEND, call_keys, args))
            assert int(first.split(b",")[1]) > 0
            assert again.split(b",")[1] == b"-2"
            assert await admin.llen(keys.dist_key(keys.DIST_MESSAGES, "c")) == 1

    run(main())


def test_a_node_reloads_its_scripts_after_script_flush(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.05, max_batch_size=2), "n1")
            await node.append(msg("c", "a"))
            await cluster.client().script_flush()
            await node.append(msg("c", "b"))
            (entry,) = await read_stream(cluster.client(), 1)
            assert texts(entry) == ["a", "b"] and entry.reason == "full"

    run(main())


def test_a_node_waits_for_redis_to_come_back(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.05), "n1")
            await node.append(msg("c", "before"))
            redis_srv.restart()  # kill -9 and start again on the same append-only file: the scripts are gone
            await node.append(msg("c", "after"))
            entries = await read_stream(cluster.client(), 1)
            if len(entries[0].batch.messages) == 1:  # "before" was published before the restart
                entries = await read_stream(cluster.client(), 2)
            assert [m for e in entries for m in texts(e)] == ["before", "after"]

    run(main())


# -- event buses and the relay ---------------------------------------------------------------------------


class RecordingBus:
    """A custom event bus: records each batch with the entry the relay says it is."""

    def __init__(self, failures: int = 0) -> None:
        self.got: list[tuple[list[str], str]] = []
        self.calls = 0
        self.failures = failures
        self.changed = asyncio.Event()

    async def publish_inbound(self, batch: MessageBatch) -> None:
        self.calls += 1
        inbound = current_inbound()
        assert inbound is not None and inbound.batch.messages == batch.messages
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the bus is down")
        self.got.append(([m.text for m in batch.messages], inbound.batch_id))
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT)


def test_message_queue_publishes_to_a_redis_stream_bus_exactly_once(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            bus = RedisStreamEventBus(client, stream="gateway:inbound")
            delivered: list[object] = []

            async def callback(item: object) -> None:
                delivered.append(item)

            async with MessageQueue(default_batch_window=0.05, max_batch_size=2, redis=client, event_bus=bus) as mq:
                await mq.start_processing("c", callback)
                for text in ("a", "b", "c"):
                    await mq.enqueue(msg("c", text))
                await mq.enqueue_front(MessageBatch([msg("d", "x"), msg("d", "y")]))
                assert mq.queue_size("c") == 0 and not mq.is_channel_processing("c")
                assert await mq.clear("c") == 0 and mq.cancel_current("c") is False
            # close() waited for the batch whose deadline it armed
            entries = await read_stream(client, 3, stream="gateway:inbound", timeout=1)
            assert sorted((e.channel_id, texts(e), e.reason) for e in entries) == [
                ("c", ["a", "b"], "full"), ("c", ["c"], "window"), ("d", ["x", "y"], "front")]
            assert delivered == []  # distributed mode publishes to the bus, not to callbacks
            assert await client.exists(keys.DIST_OUTBOX) == 0
        finally:
            await client.aclose()

    run(main())


def test_a_custom_bus_gets_every_batch_in_channel_order_with_its_batch_id(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        bus = RecordingBus(failures=1)  # the first call fails: the relay retries it, keeping the order
        try:
            async with MessageQueue(default_batch_window=0.05, max_batch_size=2, redis=client, event_bus=bus) as mq:
                for i in range(6):
                    await mq.enqueue(msg("c", f"m{i}"))
                await bus.wait_for(3)
            assert [g[0] for g in bus.got] == [["m0", "m1"], ["m2", "m3"], ["m4", "m5"]]
            assert [g[1] for g in bus.got] == [f"{keys.channel_tag('c')}:{n}" for n in (1, 2, 3)]
            assert bus.calls == 4
            assert await client.xlen(keys.DIST_OUTBOX) == 0
            assert await client.exists(keys.DIST_RELAY_LEASE) == 0  # given up on close
        finally:
            await client.aclose()

    run(main())


def test_a_relay_that_dies_mid_publish_leaves_the_batch_to_the_next_relay(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.05, max_batch_size=1), "n1", stream=keys.DIST_OUTBOX)
            stuck = asyncio.Event()
            calls: list[str] = []

            class StuckBus:
                async def publish_inbound(self, batch: MessageBatch) -> None:
                    inbound = current_inbound()
                    assert inbound is not None
                    calls.append(inbound.batch_id)
                    stuck.set()
                    await asyncio.Event().wait()  # never returns: the relay "dies" in here

            first = OutboxRelay(cluster.client(), StuckBus(), "relay-1", lease=0.3, block=0.05)
            first.start()
            await node.append(msg("c", "x"))
            await asyncio.wait_for(stuck.wait(), TIMEOUT)
            assert first._task is not None
            first._task.cancel()  # gone without releasing its lease
            bus = RecordingBus()
            second = OutboxRelay(cluster.client(), bus, "relay-2", lease=0.3, block=0.05)
            second.start()
            await bus.wait_for(1)
            await second.close()
            assert calls == [bus.got[0][1]] == [f"{keys.channel_tag('c')}:1"]  # the same batch, again
            assert await cluster.client().xlen(keys.DIST_OUTBOX) == 0

    run(main())


def test_redis_stream_bus_publishes_directly_and_trims(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
        binary = aioredis.Redis.from_url(redis_srv.url)
        try:
            bus = RedisStreamEventBus(client, stream="s", maxlen=10)
            first = await bus.publish_inbound(MessageBatch([msg("c", "a")]))
            assert first == f"{keys.channel_tag('c')}:1"
            for i in range(300):
                await bus.publish_inbound(MessageBatch([msg("c", f"m{i}")]))
            assert await binary.xlen("s") <= 10 + 100  # approximate: whole macro nodes are trimmed
            last = reply(await binary.xrevrange("s", count=1))
            entry = decode_entry(last[0][1], last[0][0])
            assert (entry.reason, entry.seq, texts(entry)) == ("published", 301, ["m299"])
            with pytest.raises(InvalidSettings, match="maxlen must be an int >= 0"):
                RedisStreamEventBus(client, maxlen=-1)
        finally:
            await client.aclose()
            await binary.aclose()

    run(main())


def test_set_event_bus_turns_a_redis_queue_distributed_before_first_use(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
        try:
            bus = RedisStreamEventBus(client)
            async with MessageQueue(default_batch_window=0.05, redis=client) as mq:
                mq.set_event_bus(bus)
                mq.set_event_bus(bus)  # the same bus again: nothing changes
                with pytest.raises(InvalidSettings, match="keeps the event bus it was given"):
                    mq.set_event_bus(RecordingBus())
                await mq.enqueue(msg("c", "a"))
            assert await client.xlen(keys.INBOUND_STREAM) == 1
            async with MessageQueue(default_batch_window=0.05, redis=client) as persisted:
                await persisted.enqueue(msg("p", "a"))  # persistence mode: its actor system holds channels now
                with pytest.raises(RuntimeError, match="before the MessageQueue is first used"):
                    persisted.set_event_bus(bus)
            with pytest.raises(InvalidSettings, match="event_bus must have an async publish_inbound"):
                MessageQueue(redis=client, event_bus=object())
        finally:
            await client.aclose()

    run(main())


def test_distributed_mode_refuses_a_redis_that_may_lose_messages(volatile_redis: RedisServer) -> None:
    async def main(url: str) -> None:
        client = aioredis.Redis.from_url(url)
        try:
            bus = RedisStreamEventBus(client)
            async with MessageQueue(redis=client, event_bus=bus) as mq:
                with pytest.raises(UnsafeRedis, match="appendonly is 'no'"):
                    await mq.enqueue(msg("c", "a"))
            async with MessageQueue(max_batch_size=1, redis=client, event_bus=bus, allow_volatile_redis=True) as mq:
                await mq.enqueue(msg("c", "a"))
            assert await client.xlen(keys.INBOUND_STREAM) == 1
        finally:
            await client.aclose()

    run(main(volatile_redis.url))


def test_node_options_are_checked() -> None:
    with pytest.raises(InvalidSettings, match="sweep_interval must be > 0, got 0"):
        NodeOptions(sweep_interval=0)
    with pytest.raises(InvalidSettings, match="node id must be 1-64 characters"):
        NodeOptions(node_id="a:b")
    with pytest.raises(InvalidSettings, match="max_pipeline must be an int >= 1"):
        NodeOptions(max_pipeline=0)
    with pytest.raises(InvalidSettings, match="idle_ttl must be > 0, got 0"):
        NodeOptions(idle_ttl=0)
    with pytest.raises(InvalidSettings, match="idle_ttl must be <= 315360000 seconds"):
        NodeOptions(idle_ttl=1e12)


def test_the_example_consumer_reads_the_stream_with_a_group_and_acks(redis_srv: RedisServer) -> None:
    from examples.stream_consumer import consume

    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            node = await cluster.node(BatchSettings(window=0.05, max_batch_size=2), "n1")
            for i in range(5):
                await node.append(msg(f"c{i % 2}", f"m{i}"))
            seen: list[tuple[str, list[str]]] = []

            async def handle(inbound: InboundBatch) -> None:
                seen.append((inbound.channel_id, texts(inbound)))

            reader = cluster.client()
            assert await consume(reader, handle, max_batches=3) == 3
            assert sorted(seen) == [("c0", ["m0", "m2"]), ("c0", ["m4"]), ("c1", ["m1", "m3"])]
            pending = await reader.xpending(keys.INBOUND_STREAM, "agents")
            assert pending["pending"] == 0  # every entry acknowledged

    run(main())


def test_a_redis_stream_bus_on_another_server_gets_the_batches_with_their_ids(redis_srv: RedisServer) -> None:
    async def main(other_url: str) -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        other = aioredis.Redis.from_url(other_url)
        try:
            bus = RedisStreamEventBus(other, stream="elsewhere")
            async with MessageQueue(default_batch_window=0.05, max_batch_size=2, redis=client, event_bus=bus) as mq:
                for text in ("a", "b", "c"):
                    await mq.enqueue(msg("c", text))
                entries = await read_stream(other, 2, stream="elsewhere")
            assert [(texts(e), e.batch_id, e.reason) for e in entries] == [
                (["a", "b"], f"{keys.channel_tag('c')}:1", "full"), (["c"], f"{keys.channel_tag('c')}:2", "window")]
            assert await client.xlen(keys.DIST_OUTBOX) == 0  # relayed from the outbox of the batching server
        finally:
            await client.aclose()
            await other.aclose()

    with redis_server() as other_server:
        run(main(other_server.url))


def test_an_outbox_entry_that_cannot_be_decoded_is_set_aside(redis_srv: RedisServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            await admin.xadd(keys.DIST_OUTBOX, {"id": "junk"})
            node = await cluster.node(BatchSettings(window=0.05, max_batch_size=1), "n1", stream=keys.DIST_OUTBOX)
            await node.append(msg("c", "after"))
            bus = RecordingBus()
            relay = OutboxRelay(cluster.client(), bus, "relay", lease=1.0, block=0.05)
            relay.start()
            await bus.wait_for(1)
            await relay.close()
            assert bus.got == [(["after"], f"{keys.channel_tag('c')}:1")]
            (dead,) = reply(await admin.xrange(keys.DIST_DEAD))
            assert b"lacks field(s)" in dead[1][b"error"] and dead[1][b"field:id"] == b"junk"

    with caplog.at_level(logging.ERROR, logger="message_queue.distributed"):
        run(main())
    assert "cannot be decoded" in caplog.text


# -- statistics and the expiry of idle channels ------------------------------------------------------------------


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def snapshot(channel: str, open_batch_size: int = 0, processed: int = 0, has_processor: bool = False
             ) -> ChannelStatistics:
    return ChannelStatistics(channel, queued=0, open_batch_size=open_batch_size, in_flight=False,
                             processed=processed, cancelled=0, failed=0, has_processor=has_processor)


def state_key(channel: str) -> str:
    return keys.dist_key(keys.DIST_STATE, channel)


def msgs_key(channel: str) -> str:
    return keys.dist_key(keys.DIST_MESSAGES, channel)


def test_statistics_show_the_open_batch_then_the_published_batches(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            bus = RedisStreamEventBus(client)

            async def callback(item: object) -> None:
                raise AssertionError("distributed mode does not call back")

            async with MessageQueue(default_batch_window=30.0, max_batch_size=3, redis=client, event_bus=bus) as mq:
                assert await mq.statistics("c") == (snapshot("c"),)  # before first use: Redis knows nothing of it
                await mq.start_processing("c", callback)
                await mq.enqueue(msg("c", "a"))
                await mq.enqueue(msg("c", "b"))
                assert await mq.statistics("c") == (snapshot("c", open_batch_size=2, has_processor=True),)
                await mq.enqueue(msg("c", "c"))  # fills the batch: published at once
                assert await mq.statistics("c") == (snapshot("c", processed=1, has_processor=True),)
                await mq.enqueue(msg("c", "d"))
                assert await mq.statistics("c") == (snapshot("c", open_batch_size=1, processed=1, has_processor=True),)
                # queue_size and stats keep their meaning: nothing waits here, published batches are the bus's.
                assert mq.queue_size("c") == 0
                assert mq.stats() == {"c": {"queue_size": 0, "is_processing": False, "has_processor": True}}
                assert await mq.statistics("never-seen") == (snapshot("never-seen"),)
                with pytest.raises(InvalidInput, match="channel_id must be at most 256 bytes"):
                    await mq.statistics("x" * 257)
                await mq.stop_processing("c")
                assert await mq.statistics("c") == (snapshot("c", open_batch_size=1, processed=1),)
                await mq.enqueue(msg("c", "e"))
                await mq.enqueue(msg("c", "f"))
                assert await mq.statistics("c") == (snapshot("c", processed=2),)
            assert await mq.statistics("c") == ()  # closed
        finally:
            await client.aclose()

    run(main())


def test_statistics_of_every_channel_list_the_open_batches_of_all_nodes(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            a, b, c = [await cluster.node(BatchSettings(window=window, max_batch_size=2), f"node-{window}")
                       for window in (10.0, 20.0, 30.0)]
            admin = cluster.client(decode_responses=True)  # a str-decoding client reads them as well
            assert await channel_statistics(admin) == ()
            await b.append(msg("late", "1"))
            await a.append(msg("soon", "1"))
            for text in ("1", "2", "3"):
                await c.append(msg("done", text))  # one batch published, one message open
            await a.append(msg("gone", "1"))
            await b.append(msg("gone", "2"))  # published: nothing open
            assert await channel_statistics(admin, "", {"soon", "gone"}) == (  # soonest deadline first
                snapshot("soon", 1, has_processor=True), snapshot("late", 1), snapshot("done", 1, processed=1))
            assert await channel_statistics(admin, "gone", {"soon", "gone"}) == (
                snapshot("gone", processed=1, has_processor=True),)

            bus = RedisStreamEventBus(cluster.client())
            async with MessageQueue(redis=cluster.client(), event_bus=bus) as mq:
                assert [s.channel_id for s in await mq.statistics()] == ["soon", "late", "done"]

    run(main())


def test_an_idle_channels_state_expires_while_an_active_ones_stays(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            node = await cluster.node(BatchSettings(window=30.0, max_batch_size=2), "n1", idle_ttl=1.0)
            for text in ("a", "b"):
                await node.append(msg("idle", text))  # full: published, nothing left open
            await node.append(msg("busy", "x"))  # open for 30 s
            assert 0 < await admin.pttl(state_key("idle")) <= 1000
            assert await admin.exists(msgs_key("idle")) == 0
            assert await admin.pttl(state_key("busy")) == -1 and await admin.pttl(msgs_key("busy")) == -1
            await node.publish_now(msg("busy", "urgent"))  # ahead of the open batch, which keeps it unexpiring
            assert await admin.pttl(state_key("busy")) == -1

            await until(lambda: gone(admin, "idle"), "the idle channel's keys expired")
            assert await admin.pttl(state_key("busy")) == -1 and await admin.llen(msgs_key("busy")) == 1
            assert await channel_statistics(admin, "idle") == (snapshot("idle"),)
            assert await channel_statistics(admin, "busy") == (snapshot("busy", open_batch_size=1, processed=1),)
            assert int(reply(await admin.get(keys.DIST_SEQ_FLOOR))) == 1  # the idle channel's last batch number

    run(main())


async def gone(client: aioredis.Redis, channel: str) -> bool:
    """True when Redis holds no key of ``channel``'s distributed state."""
    return int(await client.exists(state_key(channel), msgs_key(channel))) == 0


def test_a_channel_whose_state_expired_starts_cleanly_with_higher_batch_numbers(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            settings = BatchSettings(window=0.05, max_batch_size=3)
            node = await cluster.node(settings, "n1", idle_ttl=0.3)
            for text in ("a", "b", "c", "d"):
                await node.append(msg("c", text))  # one full batch (append), then one closed by the timer
            first = await read_stream(admin, 2)
            assert [(texts(e), e.reason, e.seq) for e in first] == [(["a", "b", "c"], "full", 1), (["d"], "window", 2)]
            await until(lambda: gone(admin, "c"), "channel c expired")
            assert await channel_statistics(admin, "c") == (snapshot("c"),)

            # A second node (any node) takes the channel up again: same batching, numbers above the old ones.
            other = await cluster.node(settings, "n2", idle_ttl=0.3)
            for text in ("e", "f", "g", "h"):
                await other.append(msg("c", text))
            entries = await read_stream(admin, 4)
            assert [(texts(e), e.reason, e.seq) for e in entries[2:]] == [
                (["e", "f", "g"], "full", 3), (["h"], "window", 4)]
            assert len({e.batch_id for e in entries}) == 4
            assert [m for e in entries for m in texts(e)] == list("abcdefgh")
            await other.drain()
            assert await channel_statistics(admin, "c") == (snapshot("c", processed=2),)  # since it started again
            assert 0 < await admin.pttl(state_key("c")) <= 300

            # A channel never seen before also numbers from above the floor: no number is ever used twice.
            await other.append(msg("new", "x"))
            (*_, fresh) = await read_stream(admin, 5)
            assert (fresh.channel_id, fresh.seq) == ("new", 5)

    run(main())


def test_no_key_is_left_without_expiry_once_every_channel_is_idle(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            await admin.hset(keys.config_key("unbatched"), "disabled", "1")
            settings = BatchSettings(window=0.05, max_batch_size=2)
            ttl = 60.0  # long enough to look at every key before any expires
            node = await cluster.node(settings, "n1", idle_ttl=ttl, sweep_interval=0.05, grace=0.05)
            dead = await cluster.node(settings, "dead", idle_ttl=ttl, sweep_interval=60.0)
            await dead.append(msg("orphan", "o"))
            await dead.close()  # its batch is published by n1's sweeper
            await node.append(msg("full", "1"))
            await node.append(msg("full", "2"))  # published by the append
            await node.append(msg("timer", "t"))  # published by n1's timer
            await node.append(msg("unbatched", "u"))  # published alone (batching off)
            await node.publish_now(msg("front", "f"))  # enqueue_front on a channel with nothing open
            await RedisStreamEventBus(admin).publish_inbound(MessageBatch([msg("bus", "b")]))  # the bus's own
            await read_stream(admin, 6)
            await node.drain()
            await until(lambda: no_deadlines(admin), "every batch published")

            untimed: list[Any] = []
            timed: list[Any] = []
            async for raw in admin.scan_iter(count=1000):
                key = raw.decode()
                (timed if await admin.pttl(key) > 0 else untimed).append(key)
            # The stream is the output and the floor one shared number; the settings hash is the user's own.
            assert sorted(untimed) == sorted([keys.INBOUND_STREAM, keys.DIST_SEQ_FLOOR, keys.config_key("unbatched")])
            channels = ["orphan", "full", "timer", "unbatched", "front", "bus"]
            assert sorted(timed) == sorted([state_key(c) for c in channels]
                                           + [keys.dist_node_key("n1"), keys.dist_node_key("dead")])
            for channel in channels[:-1]:
                assert ttl * 1000 - 10_000 < await admin.pttl(state_key(channel)) <= ttl * 1000
            assert 0 < await admin.pttl(state_key("bus")) <= scripts.IDLE_TTL * 1000
            assert await channel_statistics(admin) == ()

    run(main())


async def no_deadlines(client: aioredis.Redis) -> bool:
    return int(await client.zcard(keys.DIST_DEADLINES)) == 0


def test_a_channel_state_written_before_expiry_existed_keeps_its_numbers_and_gets_an_expiry(
    redis_srv: RedisServer,
) -> None:
    async def main() -> None:
        async with Cluster(redis_srv.url) as cluster:
            admin = cluster.client()
            await admin.hset(state_key("old"), mapping={"ch": "old", "seq": "41"})  # no expiry, no floor
            node = await cluster.node(BatchSettings(window=30.0, max_batch_size=1), "n1", idle_ttl=0.3)
            await node.append(msg("old", "a"))
            await node.append(msg("young", "b"))
            entries = await read_stream(admin, 2)
            assert [(e.channel_id, e.seq) for e in entries] == [("old", 42), ("young", 43)]
            assert int(reply(await admin.get(keys.DIST_SEQ_FLOOR))) == 43
            assert 0 < await admin.pttl(state_key("old")) <= 300
            assert await channel_statistics(admin, "old") == (snapshot("old", processed=42),)

    run(main())


def test_a_distributed_queue_passes_its_idle_ttl_to_the_scripts(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        queue = DistributedQueue(client, RedisStreamEventBus(client), BatchSettings(max_batch_size=1),
                                 options=NodeOptions(idle_ttl=5.0))
        try:
            await queue.enqueue(msg("c", "a"))
            assert 0 < await client.pttl(state_key("c")) <= 5000
            assert await queue.statistics("c", {"c"}) == (snapshot("c", processed=1, has_processor=True),)
        finally:
            await queue.close()
            await client.aclose()

    run(main())
