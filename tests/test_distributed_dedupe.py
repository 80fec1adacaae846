"""Duplicates in distributed mode: a message whose ``message_id`` its channel accepted within ``dedupe_ttl`` is
dropped by the append script (``MessageQueue(redis=..., event_bus=RedisStreamEventBus(...))``, each test on a
private redis-server). The rules themselves are held to the core's by tests/test_rules_differential.py."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

import pytest
import redis.asyncio as aioredis
from redis_support import RedisServer, reply

from actors.batching import MAX_REMEMBERED_IDS
from message_queue import MessageQueue, QueuedMessage, scripts
from message_queue.event_bus import RedisStreamEventBus
from protocol import codec, keys
from protocol.stream import InboundBatch, decode_entry

pytestmark = pytest.mark.redis

TIMEOUT = 10.0
STREAM = "test:inbound"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(text: str, message_id: str = "", channel: str = "c") -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text, message_id=message_id)


class Stream:
    """Reads a stream's entries in order, waiting (XREAD BLOCK) for those not written yet."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.last = "0-0"

    async def next(self, count: int = 1) -> list[InboundBatch]:
        entries: list[InboundBatch] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while len(entries) < count:
            if loop.time() > deadline:
                raise TimeoutError(f"{len(entries)} of {count} entries in {STREAM}")
            read = reply(await self.client.xread({STREAM: self.last}, count=count - len(entries), block=100))
            for _, items in read or ():
                for entry_id, fields in items:
                    entries.append(decode_entry(fields, entry_id))
                    self.last = entry_id.decode()
        return entries


def texts(entries: list[InboundBatch]) -> list[list[str]]:
    return [[m.text for m in entry.batch.messages] for entry in entries]


def queue(client: aioredis.Redis, **settings: Any) -> MessageQueue:
    return MessageQueue(redis=client, event_bus=RedisStreamEventBus(client, stream=STREAM), **settings)


def test_a_webhook_retry_within_the_ttl_is_published_once(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        try:
            async with queue(client, default_batch_window=0.05, max_batch_size=10) as mq:
                # a retry into the open batch
                for m in (msg("hello", "m1"), msg("hello again", "m1"), msg("next", "m2")):
                    await mq.enqueue(m)
                assert texts(await stream.next()) == [["hello", "next"]]
                # a retry after its batch was published (the ttl is 600 s by default)
                await mq.enqueue(msg("hello, third time", "m1"))
                await mq.enqueue(msg("later", "m3"))
                assert texts(await stream.next()) == [["later"]]
                (stats,) = await mq.statistics("c")
                assert stats.duplicates == 2
                # ids are per channel: the same id on another channel is another message
                await mq.enqueue(msg("elsewhere", "m1", channel="d"))
                assert texts(await stream.next()) == [["elsewhere"]]
                (other,) = await mq.statistics("d")
                assert other.duplicates == 0
            assert await client.xlen(STREAM) == 3
        finally:
            await client.aclose()

    run(main())


def test_a_retry_after_the_ttl_is_accepted_again(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        ids_key = keys.dist_key(keys.DIST_IDS, "c")
        try:
            async with queue(client, default_batch_window=0.01, dedupe_ttl=0.3) as mq:
                await mq.enqueue(msg("first", "m1"))
                assert texts(await stream.next()) == [["first"]]
                assert 0 < await client.pttl(ids_key) <= 300
                # Redis forgets the ids with the key, dedupe_ttl after the newest
                loop = asyncio.get_running_loop()
                deadline = loop.time() + TIMEOUT
                while await client.exists(ids_key):
                    assert loop.time() < deadline, "the ids key never expired"
                    await asyncio.sleep(0.02)
                await mq.enqueue(msg("retried late", "m1"))
                assert texts(await stream.next()) == [["retried late"]]
                (stats,) = await mq.statistics("c")
                assert stats.duplicates == 0
        finally:
            await client.aclose()

    run(main())


def test_dedupe_ttl_zero_keeps_every_message(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        try:
            async with queue(client, default_batch_window=0.05, max_batch_size=10, dedupe_ttl=0) as mq:
                for text in ("a", "b", "c"):
                    await mq.enqueue(msg(text, "same"))
                assert texts(await stream.next()) == [["a", "b", "c"]]
                (stats,) = await mq.statistics("c")
                assert stats.duplicates == 0
            assert await client.exists(keys.dist_key(keys.DIST_IDS, "c")) == 0
        finally:
            await client.aclose()

    run(main())


def test_messages_without_an_id_are_never_duplicates(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        try:
            async with queue(client, default_batch_window=0.05, max_batch_size=10) as mq:
                for text in ("same", "same"):
                    await mq.enqueue(msg(text))
                assert texts(await stream.next()) == [["same", "same"]]
            assert await client.exists(keys.dist_key(keys.DIST_IDS, "c")) == 0
        finally:
            await client.aclose()

    run(main())


def test_a_channel_remembers_at_most_the_cores_bound_oldest_forgotten_first(redis_srv: RedisServer) -> None:
    """The append script on a fake clock (one ms per message): the 1,001st id forgets the first only."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        tag = keys.channel_tag("c")
        msgs_key, state_key, ids_key = (keys.dist_key_of_tag(role, tag)
                                        for role in (keys.DIST_MESSAGES, keys.DIST_STATE, keys.DIST_IDS))
        settings = b"0:0:10:0:600000:10000:r"  # batching off: each message is published alone
        start = 1_700_000_000_000
        op = 1

        async def append(message_ids: list[str], now: int) -> list[int]:
            nonlocal op
            entries = [(msgs_key, state_key, ids_key, keys.config_key("c"), keys.dist_key_of_tag(keys.DIST_HELD, tag),
                        codec.encode(msg(i, i)), "c", tag, settings, i)
                       for i in message_ids]
            call_keys, args = scripts.append_call(STREAM, keys.dist_node_key("n"), 0, "n/append", op, 60_000,
                                                  entries, now_ms=now)
            op += len(entries)
            answer = await scripts.run(client, scripts.APPEND, call_keys, args)
            assert isinstance(answer, bytes)
            return [int(n) for n in answer.split(b",")[1:]]

        try:
            ids = [f"id{n}" for n in range(MAX_REMEMBERED_IDS + 1)]
            for n in range(0, len(ids), 100):
                for k, i in enumerate(ids[n:n + 100]):
                    assert await append([i], start + n + k) == [-1]
            assert await client.zcard(ids_key) == MAX_REMEMBERED_IDS
            now = start + len(ids)
            assert await append([ids[1], ids[-1]], now) == [-3, -3]
            assert await append([ids[0]], now) == [-1]  # forgotten: accepted again (and forgets ids[1])
            assert await append([ids[1]], now + 1) == [-1]
            assert await client.hget(state_key, "d") == b"2"
            # a duplicate counted on a channel with nothing open leaves its state to expire
            assert await client.pttl(state_key) > 0
            assert await client.xlen(STREAM) == MAX_REMEMBERED_IDS + 3
        finally:
            await client.aclose()

    run(main())


def test_a_duplicate_alone_does_not_keep_a_channel_state_forever(redis_srv: RedisServer) -> None:
    """The count of a duplicate may be the first thing written to a channel's state (its state expired
    before its ids did): the state still expires."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        state_key = keys.dist_key(keys.DIST_STATE, "c")
        try:
            async with queue(client, default_batch_window=0.01) as mq:
                await mq.enqueue(msg("first", "m1"))
                assert texts(await stream.next()) == [["first"]]
                await client.delete(state_key)  # as if it expired
                await mq.enqueue(msg("retry", "m1"))
                assert await client.hget(state_key, "d") == b"1"
                assert await client.pttl(state_key) > 0
        finally:
            await client.aclose()

    run(main())
