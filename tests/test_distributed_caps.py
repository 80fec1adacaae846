"""max_queued in distributed mode: the append script caps a channel's open batch (what waits on a channel in
this mode: a published batch belongs to the stream's consumers), with the same overflow policies as the core
(``MessageQueue(redis=..., event_bus=RedisStreamEventBus(...))``, each test on a private redis-server). The
rules themselves are held to the core's by tests/test_rules_differential.py."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_support import RedisServer
from test_distributed_dedupe import Stream, msg, queue, run, texts

from message_queue import QueueFull

pytestmark = pytest.mark.redis


def test_a_full_open_batch_refuses_with_queue_full_and_takes_messages_again_once_published(
    redis_srv: RedisServer,
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        try:
            async with queue(client, default_batch_window=0.05, max_batch_size=10, max_queued=2) as mq:
                await mq.enqueue(msg("a", "m1"))
                await mq.enqueue(msg("b"))
                with pytest.raises(QueueFull, match="max_queued"):
                    await mq.enqueue(msg("c", "m3"))
                assert texts(await stream.next()) == [["a", "b"]]
                await mq.enqueue(msg("c, retried", "m3"))  # a refused message's id was not remembered
                assert texts(await stream.next()) == [["c, retried"]]
                (stats,) = await mq.statistics("c")
                assert (stats.rejected_full, stats.dropped_overflow, stats.duplicates) == (1, 0, 0)
        finally:
            await client.aclose()

    run(main())


@pytest.mark.parametrize(("overflow", "kept"), [("drop_oldest", ["b", "c"]), ("drop_newest", ["a", "b"])])
def test_a_full_open_batch_drops_by_its_overflow_policy_and_counts_it(
    redis_srv: RedisServer, overflow: str, kept: list[str]
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        stream = Stream(client)
        settings: dict[str, Any] = {"max_queued": 2, "overflow": overflow}
        try:
            async with queue(client, default_batch_window=0.05, max_batch_size=10, **settings) as mq:
                for text in ("a", "b", "c"):
                    await mq.enqueue(msg(text))
                assert texts(await stream.next()) == [kept]
                (stats,) = await mq.statistics("c")
                assert (stats.rejected_full, stats.dropped_overflow) == (0, 1)
        finally:
            await client.aclose()

    run(main())
