"""``enqueue_many`` in distributed mode: every message stored, in order, and published in batches."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis_support import RedisServer
from test_distributed import read_stream, texts

from message_queue import MessageQueue, QueuedMessage
from message_queue.event_bus import RedisStreamEventBus


def test_enqueue_many_stores_every_message_in_order_and_they_are_batched(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            bus = RedisStreamEventBus(client, stream="gateway:inbound")
            async with MessageQueue(default_batch_window=0.05, max_batch_size=10, redis=client, event_bus=bus) as mq:
                await mq.enqueue_many(QueuedMessage("p", "c", "u", "n", f"m{i}") for i in range(25))
            entries = await read_stream(client, 3, stream="gateway:inbound", timeout=1)
            assert [texts(e) for e in entries] == [
                [f"m{i}" for i in range(0, 10)], [f"m{i}" for i in range(10, 20)], [f"m{i}" for i in range(20, 25)]
            ]
            assert [e.reason for e in entries] == ["full", "full", "window"]
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))
