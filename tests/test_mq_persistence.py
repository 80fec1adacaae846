"""``MessageQueue(redis=client)``: items survive a restart, on a private redis-server.

No sleeps wait for behaviour: tests wait on callbacks with ``asyncio.wait_for`` timeouts and use ``await
mq.statistics(...)`` as a barrier (a command's outputs reach the loop before its reply).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Coroutine

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.connection import parse_url
from redis_support import RedisServer
from test_message_queue_api import Recorder, msg

from actors.system import free_port
from message_queue import MessageQueue, StoreUnavailable, UnsafeRedis
from message_queue.redis_url import url_of_client
from protocol import keys
from protocol.errors import InvalidSettings

WINDOW = 0.05


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client:
    """An async client, closed on leaving."""

    def __init__(self, url: str = "", **kwargs: Any) -> None:
        self.redis = aioredis.Redis.from_url(url) if url else aioredis.Redis(**kwargs)

    async def __aenter__(self) -> aioredis.Redis:
        return self.redis

    async def __aexit__(self, *exc: object) -> None:
        await self.redis.aclose()


# -- surviving a restart ------------------------------------------------------------------------------------


@pytest.mark.redis
def test_items_enqueued_before_close_are_delivered_in_order_by_the_next_queue_once_their_channel_starts(
    redis_srv: RedisServer,
) -> None:
    async def main() -> None:
        async with Client(redis_srv.url) as client:
            # A window of a minute: a's and b's last messages are still in open batches when the queue closes.
            async with MessageQueue(default_batch_window=60.0, max_batch_size=2, redis=client) as first:
                for i in range(5):
                    await first.enqueue(msg("a", f"a{i}"))
                for i in range(3):
                    await first.enqueue(msg("b", f"b{i}"))
                a, b = await first.statistics()
                assert (a.queued, a.open_batch_size, b.queued, b.open_batch_size) == (2, 1, 1, 1)

            async with MessageQueue(default_batch_window=WINDOW, max_batch_size=2, redis=client) as second:
                rec = Recorder()
                await second.start_processing("a", rec)
                await rec.wait(lambda: len(rec.items["a"]) == 3)
                assert rec.texts("a") == [["a0", "a1"], ["a2", "a3"], ["a4"]]
                # b was restored too, but has no callback: its items wait once the open one closed on its window
                [b] = await second.statistics("b")
                while b.open_batch_size:  # each look is an answered command: no sleep, bounded by run()'s timeout
                    [b] = await second.statistics("b")
                assert (b.queued, b.in_flight) == (2, False)
                assert second.queue_size("b") == 2
                assert rec.items["b"] == []

            async with MessageQueue(default_batch_window=WINDOW, max_batch_size=2, redis=client) as third:
                rec = Recorder()
                await third.start_processing("b", rec)
                await rec.wait(lambda: len(rec.items["b"]) == 2)
                assert rec.texts("b") == [["b0", "b1"], ["b2"]]
                [a] = await third.statistics("a")  # a's items were acknowledged: not restored again
                assert (a.queued, a.open_batch_size, a.in_flight) == (0, 0, False)
                await third.start_processing("a", rec)
                await rec.wait(lambda: not third.is_channel_processing("b"))
            for channel in ("a", "b"):
                for role in (keys.QUEUE, keys.PROCESSING, keys.OPEN_BATCH):
                    assert await client.llen(keys.channel_key(role, channel)) == 0, (role, channel)
            assert rec.items["a"] == []

    run(main())


@pytest.mark.redis
def test_an_item_whose_callback_was_cut_short_by_close_is_delivered_again(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Client(redis_srv.url) as client:
            async with MessageQueue(default_batch_window=WINDOW, redis=client) as first:
                rec = Recorder()
                rec.gate = asyncio.Event()  # never set: the callback is still running at close
                await first.start_processing("c", rec)
                await first.enqueue(msg("c", "m0"))
                await first.enqueue(msg("c", "m1"))
                await rec.wait_started()
            assert [[m.text for m in item.messages] for item in rec.cancelled] == [["m0", "m1"]]  # type: ignore[union-attr]

            async with MessageQueue(default_batch_window=WINDOW, redis=client) as second:
                again = Recorder()
                await second.start_processing("c", again)
                await again.wait(lambda: len(again.items["c"]) == 1)
                assert again.texts("c") == [["m0", "m1"]]

    run(main())


@pytest.mark.redis
def test_the_actor_system_persists_to_the_clients_database(redis_srv: RedisServer) -> None:
    async def main() -> None:
        async with Client(host="127.0.0.1", port=redis_srv.port, db=3) as client:
            async with MessageQueue(default_batch_window=60.0, redis=client) as mq:
                await mq.enqueue(msg("c", "kept"))
                await mq.statistics("c")
        direct = redis.Redis(host="127.0.0.1", port=redis_srv.port, db=3)
        try:
            assert direct.llen(keys.channel_key(keys.OPEN_BATCH, "c")) == 1
            assert direct.dbsize() > 0
        finally:
            direct.close()
        other = redis.Redis(host="127.0.0.1", port=redis_srv.port, db=0)
        try:
            assert other.dbsize() == 0
        finally:
            other.close()

    run(main())


# -- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.redis
def test_a_redis_without_aof_is_refused_with_unsafe_redis_unless_allowed(
    volatile_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Client(volatile_redis.url) as client:
            mq = MessageQueue(default_batch_window=WINDOW, redis=client)
            with pytest.raises(UnsafeRedis, match=r"appendonly is 'no'.*allow_volatile_redis=True"):
                await mq.start_processing("c", Recorder())
            await mq.close()

            async with MessageQueue(default_batch_window=WINDOW, redis=client, allow_volatile_redis=True) as mq:
                rec = Recorder()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "m0"))
                await rec.wait(lambda: len(rec.items["c"]) == 1)

    with caplog.at_level(logging.WARNING, logger="actors.store"):
        run(main())
    assert any("may lose data" in r.getMessage() for r in caplog.records)


def test_an_unreachable_redis_is_refused_with_store_unavailable() -> None:
    async def main() -> None:
        async with Client(f"redis://127.0.0.1:{free_port()}/0") as client:
            mq = MessageQueue(default_batch_window=WINDOW, redis=client)
            with pytest.raises(StoreUnavailable):
                await mq.enqueue(msg("c", "m0"))
            await mq.close()

    run(main())


# -- the URL of a client ------------------------------------------------------------------------------------


def test_the_url_of_a_client_names_the_same_server() -> None:
    async def main() -> None:
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            (dict(host="10.1.2.3", port=6380, db=2), dict(host="10.1.2.3", port=6380, db=2)),
            (dict(host="h", username="ann", password="p@ss:/ w?rd%"),
             dict(host="h", port=6379, db=0, username="ann", password="p@ss:/ w?rd%")),
            (dict(host="h", password="only"), dict(host="h", password="only")),
            (dict(host="::1", port=7000), dict(host="::1", port=7000)),
            (dict(unix_socket_path="/run/redis 1/redis.sock", db=5, password="pw"),
             dict(path="/run/redis 1/redis.sock", db=5, password="pw")),
            (dict(host="h", ssl=True, ssl_cert_reqs=ssl.CERT_NONE, ssl_check_hostname=False,
                  ssl_ca_certs="/ca.pem", ssl_certfile="/c.pem", ssl_keyfile="/k.pem"),
             dict(host="h", ssl_cert_reqs="none", ssl_check_hostname=False, ssl_ca_certs="/ca.pem",
                  ssl_certfile="/c.pem", ssl_keyfile="/k.pem")),
        ]
        for given, expected in cases:
            async with Client(**given) as client:
                url = url_of_client(client)
            parsed = parse_url(url)  # type: ignore[no-untyped-call]
            for name, value in expected.items():
                assert parsed.get(name, {"port": 6379, "db": 0}.get(name)) == value, (given, url, name)
            scheme = "rediss" if given.get("ssl") else "unix" if "unix_socket_path" in given else "redis"
            assert url.startswith(f"{scheme}://"), url
        async with Client("rediss://u:p@example.org:6390/4?ssl_cert_reqs=optional") as client:
            assert parse_url(url_of_client(client)) == parse_url(  # type: ignore[no-untyped-call]
                "rediss://u:p@example.org:6390/4?ssl_cert_reqs=optional&ssl_check_hostname=true"
            )

    run(main())


def test_a_client_whose_server_a_url_cannot_name_is_refused_at_construction() -> None:
    async def main() -> None:
        from redis.credentials import UsernamePasswordCredentialProvider

        provider = UsernamePasswordCredentialProvider("ann", "pw")
        async with Client(host="h", credential_provider=provider) as client:
            with pytest.raises(InvalidSettings, match="credential_provider"):
                MessageQueue(redis=client)
        sentinel = Sentinel([("127.0.0.1", 1)])
        managed = sentinel.master_for("mymaster")
        try:
            with pytest.raises(InvalidSettings, match="Sentinel"):
                MessageQueue(redis=managed)
        finally:
            await managed.aclose()
        with pytest.raises(InvalidSettings, match="redis.asyncio.Redis client"):
            MessageQueue(redis=object())  # type: ignore[arg-type]

    run(main())
