"""``RedisQueue`` on a private redis-server, and ``InMemoryRedisQueue``: the original module's per-channel
queues, with the loss-free ``get``/``task_done`` of the Redis one."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Coroutine

import msgpack
import pytest

from message_queue import InMemoryRedisQueue, InvalidInput, MessageBatch, QueuedMessage, RedisQueue
from protocol import keys
from protocol.codec import decode, decode_dead_letter, encode
from protocol.errors import DecodeError
from protocol.keys import queue_key
from protocol.values import DeadLetter

TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(text: str, channel: str = "c", **extra: Any) -> QueuedMessage:
    return QueuedMessage(
        platform="test",
        channel_id=channel,
        user_id="u1",
        user_name="U1",
        text=text,
        queued_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc) + timedelta(seconds=len(text)),
        extra=dict(extra),
    )


def text_of(item: QueuedMessage | MessageBatch) -> str:
    if isinstance(item, MessageBatch):
        return "+".join(m.text for m in item.messages)
    return item.text


class Clients:
    """Opens redis.asyncio clients on one server and closes them all."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[Any] = []

    def new(self) -> Any:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        self.opened.append(client)
        return client

    async def close(self) -> None:
        for client in self.opened:
            await client.aclose()


async def get_within(queue: RedisQueue | InMemoryRedisQueue, timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(queue.get(), timeout)


async def blocked_in_blmove(admin: Any) -> None:
    """Wait until some client of the server is blocked in BLMOVE."""
    while True:
        clients = await admin.client_list()
        if any(c.get("cmd") == "blmove" for c in clients):
            return
        await asyncio.sleep(0.005)  # polling the server's client list, not waiting for the queue


# -- RedisQueue ---------------------------------------------------------------------------------------------


@pytest.mark.redis
def test_items_come_out_in_fifo_order_and_enqueue_front_goes_first(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            assert q.key == "message_queue:redis:chan"
            await q.put(msg("a"))
            await q.put(msg("b"))
            batch = MessageBatch()
            batch.add(msg("f1"))
            batch.add(msg("f2"))
            await q.enqueue_front(batch)
            await q.enqueue_front(msg("g"))
            await q.put(msg("c"))
            got = []
            for _ in range(5):
                got.append(await get_within(q))
                await q.task_done()
            assert [text_of(i) for i in got] == ["g", "f1+f2", "a", "b", "c"]
            assert isinstance(got[1], MessageBatch) and got[1] == batch
            assert got[0] == msg("g")  # every field round-trips (raw is not stored)
            assert await clients.new().llen(q.processing_key) == 0
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_qsize_empty_and_clear_count_waiting_items(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            assert await q.qsize() == 0 and await q.empty()
            assert await q.clear() == 0
            for i in range(3):
                await q.put(msg(f"m{i}", k=i))
            assert await q.qsize() == 3 and not await q.empty()
            taken = await get_within(q)  # taken, not yet done: not counted, not cleared
            assert taken.text == "m0" and taken.extra == {"k": 0}
            assert await q.qsize() == 2
            assert await q.clear() == 2
            assert await q.qsize() == 0 and await q.empty()
            assert await q.clear() == 0
            await q.task_done()
            assert await clients.new().exists(q.key, q.processing_key) == 0
            offline = RedisQueue(None, "chan")  # the original's "no client bound" answers
            assert await offline.qsize() == 0 and await offline.empty() and await offline.clear() == 0
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_a_get_cancelled_while_blocked_loses_nothing(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            admin = clients.new()
            waiting = asyncio.create_task(q.get())
            await asyncio.wait_for(blocked_in_blmove(admin), TIMEOUT)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await RedisQueue(clients.new(), "chan").put(msg("x"))
            assert (await get_within(q)).text == "x"
            await q.task_done()
            assert await admin.llen(q.key) == 0 and await admin.llen(q.processing_key) == 0
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_an_item_moved_by_a_get_that_was_then_cancelled_is_returned_first(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            admin = clients.new()
            for text in ("a", "b", "c"):
                await q.put(msg(text))
            # What Redis does for a BLMOVE whose caller is cancelled before it reads the reply:
            await admin.lmove(q.key, q.processing_key, "LEFT", "RIGHT")
            got = [text_of(await get_within(q)) for _ in range(3)]
            assert got == ["a", "b", "c"]
            for _ in range(3):
                await q.task_done()
            assert await admin.llen(q.processing_key) == 0
            # concurrent gets of one object take turns: a leftover is handed out once
            for text in ("d", "e"):
                await q.put(msg(text))
            await admin.lmove(q.key, q.processing_key, "LEFT", "RIGHT")
            both = await asyncio.wait_for(asyncio.gather(q.get(), q.get()), TIMEOUT)
            assert sorted(text_of(i) for i in both) == ["d", "e"]
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_gets_that_time_out_while_items_arrive_lose_nothing(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            consumer = RedisQueue(clients.new(), "chan")
            producer = RedisQueue(clients.new(), "chan")
            total = 150
            received: list[str] = []
            timeouts = 0

            async def produce() -> None:
                for i in range(total):
                    await producer.put(msg(f"m{i:03d}"))
                    if i % 10 == 0:
                        await asyncio.sleep(0.01)  # gaps longer than the consumer's timeout

            producing = asyncio.create_task(produce())
            while len(received) < total:
                try:
                    item = await asyncio.wait_for(consumer.get(), 0.002)
                except TimeoutError:
                    timeouts += 1
                    continue
                received.append(text_of(item))
                await consumer.task_done()
            await producing
            assert received == [f"m{i:03d}" for i in range(total)]  # all, once each, in order
            assert timeouts > 0
            admin = clients.new()
            assert await admin.llen(consumer.key) == 0 and await admin.llen(consumer.processing_key) == 0
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_get_outwaits_the_clients_socket_timeout(redis_srv: Any) -> None:
    async def main() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_srv.url, socket_timeout=0.4)
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(client, "chan")

            async def later() -> None:
                await asyncio.sleep(1.0)  # longer than the socket timeout: get must keep waiting
                await RedisQueue(clients.new(), "chan").put(msg("late"))

            putter = asyncio.create_task(later())
            assert (await get_within(q)).text == "late"
            await putter
            await q.task_done()
        finally:
            await client.aclose()
            await clients.close()

    run(main())


@pytest.mark.redis
def test_an_item_not_marked_done_comes_back_after_a_restart(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            first = RedisQueue(clients.new(), "chan")
            for text in ("a", "b"):
                await first.put(msg(text))
            assert (await get_within(first)).text == "a"
            # the process "dies" here: no task_done; a new process makes a new queue object
            del first
            second = RedisQueue(clients.new(), "chan")
            assert await second.qsize() == 1
            assert (await get_within(second)).text == "a"
            await second.task_done()
            assert (await get_within(second)).text == "b"
            await second.task_done()
            admin = clients.new()
            assert await admin.llen(second.processing_key) == 0
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_an_item_survives_a_redis_restart_between_get_and_task_done(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            await q.put(msg("a"))
            await clients.new().execute_command("CONFIG", "SET", "appendfsync", "always")
            assert (await get_within(q)).text == "a"
        finally:
            await clients.close()
        redis_srv.restart()  # kill -9 and start again on the same data directory
        clients = Clients(redis_srv.url)
        try:
            again = RedisQueue(clients.new(), "chan")
            assert (await get_within(again)).text == "a"
            await again.task_done()
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_task_done_without_a_taken_item_is_an_error(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            with pytest.raises(ValueError, match="task_done"):
                q.task_done()
            await q.put(msg("a"))
            await get_within(q)
            q.task_done()  # the seed's fire-and-forget call style still works
            with pytest.raises(ValueError):
                q.task_done()
            with pytest.raises(TypeError, match="QueuedMessage or a MessageBatch"):
                await q.put("text")  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                await q.put(msg("x" * 70_000))
        finally:
            await clients.close()

    run(main())


HOSTILE = [":", "*", "{}", "{x}", "a\nb", "a\x00b", "x:processing", "redis:x", "x", "*:*", " ", "ü"]


@pytest.mark.redis
def test_hostile_channel_keys_do_not_collide(redis_srv: Any) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            client = clients.new()
            queues = {channel: RedisQueue(client, channel) for channel in HOSTILE}
            all_keys = [k for q in queues.values() for k in (q.key, q.processing_key, q.dead_letter_key)]
            assert len(set(all_keys)) == len(all_keys)
            for channel, q in queues.items():
                for i in range(2):
                    await q.put(msg(f"{channel}|{i}", channel=channel))
            for channel, q in queues.items():
                assert await q.qsize() == 2
                first = await get_within(q)
                assert (first.channel_id, first.text) == (channel, f"{channel}|0")
            assert await queues["*"].clear() == 1
            for channel, q in queues.items():
                assert await q.qsize() == (0 if channel == "*" else 1)
                await q.task_done()
            stored = {k.decode() if isinstance(k, bytes) else k async for k in client.scan_iter()}
            assert stored == {queue_key(c) for c in HOSTILE if c != "*"}
            with pytest.raises(InvalidInput):
                RedisQueue(client, "")
            with pytest.raises(InvalidInput):
                RedisQueue(client, "c" * 257)
        finally:
            await clients.close()

    run(main())


@pytest.mark.redis
def test_an_undecodable_item_goes_to_the_dead_letter_list(redis_srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            admin = clients.new()
            await admin.rpush(q.key, b"\xc1not msgpack")
            await admin.rpush(q.key, encode(msg("x")))
            truncated = encode(MessageBatch([msg("in-batch")]))[:-3]
            await admin.rpush(q.key, truncated)
            await q.put(msg("good"))
            assert (await get_within(q)).text == "x"
            assert (await get_within(q)).text == "good"
            assert await admin.llen(q.processing_key) == 2  # only the good ones wait for task_done
            await q.task_done()
            await q.task_done()
            assert await admin.llen(q.processing_key) == 0
            dead = [decode(e, DeadLetter) for e in await admin.lrange(q.dead_letter_key, 0, -1)]
            assert [d.data for d in dead] == [b"\xc1not msgpack", truncated]
            assert all(d.role == keys.QUEUE and d.reason and d.at > 0 and d.item is None for d in dead)
        finally:
            await clients.close()

    with caplog.at_level(logging.ERROR, logger="message_queue.queues"):
        run(main())
    errors = [r.getMessage() for r in caplog.records if r.name == "message_queue.queues"]
    assert len(errors) == 2 and all("dead" in e for e in errors)


@pytest.mark.redis
def test_a_value_of_an_unexpected_type_is_dead_lettered_too(redis_srv: Any) -> None:
    async def main() -> None:
        from protocol.messages import Clear

        clients = Clients(redis_srv.url)
        try:
            q = RedisQueue(clients.new(), "chan")
            admin = clients.new()
            await admin.rpush(q.key, encode(Clear("chan")))  # a valid frame, but not a queue item
            await q.put(msg("good"))
            assert (await get_within(q)).text == "good"
            (entry,) = await admin.lrange(q.dead_letter_key, 0, -1)
            dead = decode(entry, DeadLetter)
            assert "expected QueuedMessage or MessageBatch" in dead.reason
            assert decode(dead.data) == Clear("chan")
            await q.task_done()
        finally:
            await clients.close()

    run(main())


# -- InMemoryRedisQueue ---------------------------------------------------------------------------------------


def test_in_memory_queue_has_the_same_interface() -> None:
    async def main() -> None:
        q = InMemoryRedisQueue()
        assert await q.empty() and await q.qsize() == 0
        await q.put(msg("a"))
        await q.put(msg("b"))
        await q.enqueue_front(msg("front"))
        assert await q.qsize() == 3 and not await q.empty()
        assert text_of(await q.get()) == "front"
        q.task_done()
        assert text_of(await q.get()) == "a"
        q.task_done()
        assert await q.clear() == 1
        assert await q.empty()
        await asyncio.wait_for(q.q.join(), TIMEOUT)  # every item was marked done
        with pytest.raises(ValueError):
            q.task_done()

    run(main())


def test_in_memory_enqueue_front_wakes_a_waiting_getter() -> None:
    async def main() -> None:
        q = InMemoryRedisQueue()
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # let the getter park
        await q.enqueue_front(msg("urgent"))
        assert text_of(await asyncio.wait_for(getter, TIMEOUT)) == "urgent"

    run(main())


def test_a_dead_letter_redis_queue_wrote_before_it_wrote_frames_still_reads() -> None:
    legacy = msgpack.packb({"key": queue_key("chan"), "reason": "bad frame", "data": b"\xc1", "at": 12.5},
                           use_bin_type=True)
    assert decode_dead_letter(legacy) == DeadLetter(keys.QUEUE, "bad frame", b"\xc1", 12.5)
    frame = encode(DeadLetter(keys.QUEUE, "bad frame", b"\xc1", 12.5))
    assert decode_dead_letter(frame) == decode(frame, DeadLetter)
    for junk in (b"\xc1", msgpack.packb({"key": "k", "reason": 1, "data": b"", "at": 1.0}), msgpack.packb([1, 2])):
        with pytest.raises(DecodeError):
            decode_dead_letter(junk)
