"""The asyncio API with Redis, on a private redis-server: the Redis latency histograms of its metrics are fed
(persistence writes, distributed mode's script pipelines), and a persisting ``MessageQueue(redis=...)`` answers
admin commands sent through Redis (the control stream) as the holder of the writer lease."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis_support import RedisServer
from test_metrics_facade import value

from actors import control_stream
from message_queue import MessageQueue, QueuedMessage
from message_queue.event_bus import RedisStreamEventBus
from protocol import keys

TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id="u1", user_name="U1", text=text)


def send(url: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """What ``admin --redis`` does, from a thread: send ``payload`` to the lease holder, wait for its answer."""
    client = redis.Redis.from_url(url)
    try:
        return control_stream.send(client, payload, TIMEOUT)
    finally:
        client.close()


def test_a_persisting_queue_feeds_the_write_histogram_and_answers_admin_commands(redis_srv: RedisServer) -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        delivered: list[object] = []

        async def callback(item: object) -> None:
            delivered.append(item)

        try:
            async with MessageQueue(default_batch_window=60.0, max_batch_size=10, redis=client,
                                    metrics_registry=registry) as mq:
                await mq.start_processing("c", callback)
                answer = await asyncio.to_thread(send, redis_srv.url, {"command": "pause", "channel": "c"})
                assert answer == {"ok": True, "result": {"channel": "c", "paused": True}}
                assert await client.hget(keys.config_key("c"), "paused") == b"1"
                for i in range(3):
                    await mq.enqueue(msg("c", f"m{i}"))
                answer = await asyncio.to_thread(send, redis_srv.url, {"command": "flush", "channel": "c"})
                assert answer == {"ok": True, "result": {"channel": "c", "flushed": True}}
                assert mq.queue_size("c") == 1 and not mq.is_channel_processing("c")  # paused: kept waiting
                answer = await asyncio.to_thread(send, redis_srv.url, {"command": "bogus", "channel": "c"})
                assert answer is not None and answer["ok"] is False and "bogus" in answer["error"]
                answer = await asyncio.to_thread(send, redis_srv.url, {"command": "resume", "channel": "c"})
                assert answer == {"ok": True, "result": {"channel": "c", "paused": False}}
                for _ in range(1000):
                    if delivered:
                        break
                    await asyncio.sleep(0.01)  # the delivery runs on the loop
                assert len(delivered) == 1
        finally:
            await client.aclose()

    run(main())
    assert value(registry, "message_queue_redis_write_seconds_count") > 0
    assert value(registry, "message_queue_redis_write_seconds_sum") > 0
    assert value(registry, "message_queue_redis_script_seconds_count") == 0


def test_distributed_mode_feeds_the_script_histogram(redis_srv: RedisServer) -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            bus = RedisStreamEventBus(client, stream="gateway:inbound")
            async with MessageQueue(default_batch_window=0.05, max_batch_size=2, redis=client, event_bus=bus,
                                    metrics_registry=registry) as mq:
                for text in ("a", "b", "c"):
                    await mq.enqueue(msg("c", text))
            assert await client.xlen("gateway:inbound") == 2
        finally:
            await client.aclose()

    run(main())
    assert value(registry, "message_queue_redis_script_seconds_count") > 0
    assert value(registry, "message_queue_redis_write_seconds_count") == 0
