"""The admin commands of distributed mode (``message_queue/lua/admin.lua`` through
:mod:`service.admin_distributed`) and the pause rules of the batching scripts, on a private redis-server: the
stream a flush or resume publishes to, the re-read when the channel's streams changed meanwhile, enqueue-front
and ``publish_inbound`` on a paused channel, a flag deleted by hand, a paused channel's deadlines, clear.
The batching rules under pause are held to the core's by tests/test_rules_differential.py."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis_support import RedisServer, reply

from message_queue import scripts
from message_queue.distributed import DistributedBatcher, NodeOptions, channel_statistics
from message_queue.distributed.operations import Names
from message_queue.event_bus import RedisStreamEventBus
from protocol import codec, keys
from protocol.stream import InboundBatch, decode_entry
from protocol.values import BatchSettings, MessageBatch, QueuedMessage
from service import admin_distributed

pytestmark = pytest.mark.redis

START = 1_700_000_000_000  # the fake clock of the script calls (ms)
WINDOW = b"100:0:3:1:0:10000:r"  # window 100 ms, cap 3 (no dedupe, max_queued 10000, reject)


@pytest.fixture
def client(redis_srv: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_srv.url)
    try:
        yield connection
    finally:
        connection.close()


def msg(text: str, channel: str = "c") -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text)


class Node:
    """Calls the batching scripts as a node does, with a fake clock."""

    def __init__(self, client: redis.Redis, stream: str = keys.INBOUND_STREAM, name: str = "n") -> None:
        self.client = client
        self.stream = stream
        self.name = name
        self.op = 1

    def append(self, now: int, *texts: str, channel: str = "c") -> list[int]:
        names = Names.of(channel)
        entries = [(names.messages_key, names.state_key, names.ids_key, names.config_key, names.held_key,
                    codec.encode(msg(text, channel)), channel, names.tag, WINDOW, "") for text in texts]
        call_keys, args = scripts.append_call(self.stream, keys.dist_node_key(self.name), 0, f"{self.name}/append",
                                              self.op, 60_000, entries, now_ms=now)
        self.op += len(entries)
        answer = self.client.evalsha(scripts.SCRIPTS[scripts.APPEND].sha, len(call_keys), *call_keys, *args)
        return [int(n) for n in reply(answer).split(b",")[1:]]

    def flush_due(self, now: int, channel: str = "c") -> int:
        names = Names.of(channel)
        call_keys, args = scripts.flush_call(self.stream, 0, f"{self.name}/timer", 60_000,
                                             [(names.messages_key, names.state_key, names.config_key,
                                               names.held_key, names.tag)], now_ms=now)
        answer = self.client.evalsha(scripts.SCRIPTS[scripts.FLUSH].sha, len(call_keys), *call_keys, *args)
        return int(reply(answer).split(b",")[1])


def entries(client: redis.Redis, stream: str = keys.INBOUND_STREAM) -> list[InboundBatch]:
    return [decode_entry(fields, entry_id) for entry_id, fields in reply(client.xrange(stream))]


def texts(batches: list[InboundBatch]) -> list[list[str]]:
    return [[m.text for m in batch.batch.messages] for batch in batches]


def load(client: redis.Redis) -> None:
    for script in scripts.SCRIPTS.values():
        client.script_load(script.source)


def test_flush_publishes_to_the_stream_of_the_node_that_opened_the_batch(client: redis.Redis) -> None:
    load(client)
    node = Node(client, stream="custom:inbound")
    assert node.append(START, "a", "b")[-1] == START + 100
    assert admin_distributed.flush(client, "c", now_ms=START + 10) == {"channel": "c", "flushed": True}
    (entry,) = entries(client, "custom:inbound")
    assert (texts([entry]), entry.reason, entry.deadline_ms, entry.published_ms, entry.by) == \
        ([["a", "b"]], "flushed", 0, START + 10, "admin/flush")
    assert client.exists(keys.INBOUND_STREAM) == 0
    assert client.zcard(keys.DIST_DEADLINES) == 0
    assert node.flush_due(START + 200) == -2  # the node's timer finds nothing left to publish
    assert admin_distributed.flush(client, "c") == {"channel": "c", "flushed": False}


def test_a_flush_whose_stream_changed_meanwhile_is_refused_by_the_script_and_read_again(
        client: redis.Redis) -> None:
    load(client)
    Node(client, stream="custom:inbound").append(START, "a")
    names = Names.of("c")
    assert admin_distributed._call(client, "flush", names, (keys.INBOUND_STREAM,), b"0:" + keys.INBOUND_STREAM.encode(),
                                   now_ms=START) == -1
    assert client.llen(names.messages_key) == 1 and client.exists(keys.INBOUND_STREAM) == 0  # nothing done
    assert admin_distributed.flush(client, "c", now_ms=START)["flushed"] is True
    assert texts(entries(client, "custom:inbound")) == [["a"]]


def test_resume_publishes_held_batches_to_the_streams_they_were_closed_for(client: redis.Redis) -> None:
    load(client)
    one, other = Node(client, name="one"), Node(client, stream="custom:inbound", name="other")
    assert admin_distributed.pause(client, "c", now_ms=START) == {"channel": "c", "paused": True}
    assert one.append(START, "a", "b", "c") == [START + 100, START + 100, -1]  # full: held
    assert other.append(START + 1, "d") == [START + 101]
    assert other.flush_due(START + 101) == -1  # due: held, and its deadline is gone
    names = Names.of("c")
    assert client.llen(names.held_key) == 2 and client.zcard(keys.DIST_DEADLINES) == 0
    assert client.exists(keys.INBOUND_STREAM, "custom:inbound") == 0

    # a resume that does not name every stream a held batch needs changes nothing
    assert admin_distributed._call(client, "resume", names, (keys.INBOUND_STREAM,), now_ms=START + 500) == -1
    assert client.llen(names.held_key) == 2 and client.hget(names.config_key, "paused") == b"1"

    assert admin_distributed.resume(client, "c", now_ms=START + 500) == {"channel": "c", "paused": False,
                                                                           "published": 2}
    (full,) = entries(client)
    (window,) = entries(client, "custom:inbound")
    assert (texts([full]), full.reason, full.seq, full.by) == ([["a", "b", "c"]], "full", 1, "admin/resume")
    assert (texts([window]), window.reason, window.seq, window.lateness_ms) == ([["d"]], "window", 2, 399)
    assert client.exists(names.held_key, names.config_key) == 0
    assert not client.sismember(keys.DIST_PAUSED, names.tag)
    assert one.append(START + 600, "e", "f", "g")[-1] == -1  # published again as usual
    assert texts(entries(client))[-1] == ["e", "f", "g"]


def test_a_flag_deleted_by_hand_keeps_the_held_batches_ahead_until_resume(client: redis.Redis) -> None:
    load(client)
    node = Node(client)
    admin_distributed.pause(client, "c")
    node.append(START, "a", "b", "c")
    client.hdel(keys.config_key("c"), "paused")
    assert node.append(START + 1, "d", "e", "f")[-1] == -1
    assert client.exists(keys.INBOUND_STREAM) == 0  # held behind the first: order first
    row = admin_distributed.channel_row(client, "c")
    assert row is not None and (row["paused"], row["waiting"]) == (False, 2)
    assert admin_distributed.resume(client, "c")["published"] == 2
    assert texts(entries(client)) == [["a", "b", "c"], ["d", "e", "f"]]


def test_clear_discards_the_open_batch_and_the_held_ones_and_keeps_the_pause(client: redis.Redis) -> None:
    load(client)
    node = Node(client)
    node.append(START, "a", "b", "c", "d", "e", "f", "g")  # two full batches published, "g" open
    admin_distributed.pause(client, "c")
    node.append(START + 1, "h", "i", "j", "k")  # "g", "h", "i" held (full), "j", "k" open
    assert admin_distributed.clear(client, "c") == {"channel": "c", "removed": 5}
    names = Names.of("c")
    assert client.exists(names.messages_key, names.held_key) == 0 and client.zcard(keys.DIST_DEADLINES) == 0
    assert texts(entries(client)) == [["a", "b", "c"], ["d", "e", "f"]]  # published batches stay
    row = admin_distributed.channel_row(client, "c")
    assert row is not None and (row["paused"], row["waiting"], row["open_batch_size"]) == (True, 0, 0)
    assert admin_distributed.clear(client, "c") == {"channel": "c", "removed": 0}
    assert admin_distributed.resume(client, "c")["published"] == 0
    assert admin_distributed.channel_row(client, "c") is not None  # its state lives on (seq), unpaused
    node.append(START + 2, "l", "m", "n")
    assert [e.seq for e in entries(client)] == [1, 2, 3]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_a_node_holds_enqueue_front_and_bus_batches_first_and_drains_while_paused(redis_srv: RedisServer) -> None:
    sync = redis.Redis.from_url(redis_srv.url)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        node = DistributedBatcher(client, BatchSettings(window=0.02, max_batch_size=10), NodeOptions(node_id="n"))
        await node.start()
        try:
            await node.append(msg("first"))
            await node.drain()
            admin_distributed.pause(sync, "c")
            await node.append(msg("open"))
            await node.drain()  # the deadline closed the batch into the held list: nothing left armed
            assert node.statistics().armed == 0 and await client.zcard(keys.DIST_DEADLINES) == 0
            assert await node.publish_now(MessageBatch([msg("front")])) == ""
            bus = RedisStreamEventBus(client)
            assert await bus.publish_inbound(MessageBatch([msg("bus")])) == ""
            assert await client.llen(keys.dist_key(keys.DIST_HELD, "c")) == 3
            assert await client.xlen(keys.INBOUND_STREAM) == 1
            (stats,) = await channel_statistics(client, "c")
            assert (stats.queued, stats.processed, stats.open_batch_size) == (3, 1, 0)
        finally:
            await node.close()
            await client.aclose()

    try:
        run(main())
        assert admin_distributed.resume(sync, "c")["published"] == 3
        published = entries(sync)
        assert texts(published) == [["first"], ["bus"], ["front"], ["open"]]  # the last put in front first
        assert [e.reason for e in published] == ["window", "published", "front", "window"]
        assert [e.seq for e in published] == [1, 2, 3, 4]
    finally:
        sync.close()


def test_resume_refuses_a_held_list_it_cannot_read_and_publishes_nothing(client: redis.Redis) -> None:
    load(client)
    admin_distributed.pause(client, "c")
    Node(client).append(START, "a", "b", "c")
    client.rpush(keys.dist_key(keys.DIST_HELD, "c"), b"\xc1")  # 0xc1: never valid msgpack
    with pytest.raises(admin_distributed.Refused, match="a held batch of channel 'c' cannot be read"):
        admin_distributed.resume(client, "c")
    assert client.exists(keys.INBOUND_STREAM) == 0
    assert client.hget(keys.config_key("c"), "paused") == b"1"
