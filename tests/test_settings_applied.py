"""The asyncio API with ``redis=`` leaves the settings hash ``message_queue:config:<channel>`` to its actor
system: the Supervisor reads it (with ``config_ttl``) and tells the queue what applies with
``ChannelSettingsApplied``, before the messages held for the read reach the channel. Until the queue knows a
live channel's settings, each of its enqueues waits for the channel's answer, so a hash with ``reject`` refuses
the very first messages. Real actors on the loop, a private redis-server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_support import RedisServer
from test_message_queue_api import TIMEOUT, Recorder, run
from test_mq_answered_enqueue import count_answered

import message_queue.local
from actors.loop_driver import DriverStopped, LoopDriver, Output
from message_queue import ChannelBusy, MessageQueue, QueuedMessage, QueueFull
from message_queue.local import LocalQueue
from protocol.keys import config_key
from protocol.messages import (
    BatchReady,
    ChannelConfigured,
    ChannelPassivated,
    ChannelSettingsApplied,
    ConfigureChannel,
    Enqueue,
    Enqueued,
    FlushBatch,
    Observe,
    Rejected,
    StartProcessing,
)
from protocol.values import BatchSettings

pytestmark = pytest.mark.redis


def msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text)


def backend_of(mq: MessageQueue) -> LocalQueue:
    backend = mq._backend
    assert isinstance(backend, LocalQueue)
    return backend


def tap(mq: MessageQueue) -> tuple[list[Output], asyncio.Event]:
    """Every output the queue handles, in order, and an event set on each ``ChannelPassivated`` (a wrapper on
    the backend's ``_handle``, private, for these tests only). Call it after the queue's first use."""
    backend = backend_of(mq)
    seen: list[Output] = []
    passivated = asyncio.Event()
    inner = backend._handle

    def wrapper(output: Output) -> None:
        seen.append(output)
        inner(output)
        if isinstance(output, ChannelPassivated):
            passivated.set()

    backend._handle = wrapper  # type: ignore[method-assign]
    return seen, passivated


def test_the_queue_reads_no_settings_hash_itself() -> None:
    assert "ChannelConfigReader" not in vars(message_queue.local)
    for gone in ("_refresh_config", "_enqueue_configured", "_config_states"):
        assert not hasattr(LocalQueue, gone), gone


@pytest.mark.parametrize(
    ("fields", "read", "error"),
    [  # with busy_policy, "a" is in flight when "b" arrives; with overflow, no callback: "a" waits
        ({"busy_policy": "reject", "disabled": "1"}, {"busy_policy": "reject", "batching": False}, ChannelBusy),
        ({"overflow": "reject", "max_queued": "1", "disabled": "1"},
         {"overflow": "reject", "max_queued": 1, "batching": False}, QueueFull),
    ],
    ids=["busy_policy", "overflow"],
)
def test_a_hash_with_reject_refuses_the_first_messages_of_a_fresh_channel(
    redis_srv: RedisServer, fields: dict[str, str], read: dict[str, object], error: type[Exception]
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            await client.hset(config_key("c"), mapping=fields)  # type: ignore[arg-type]
            async with MessageQueue(default_batch_window=60.0, redis=client, config_ttl=3600.0) as mq:
                rec = Recorder()
                rec.gate = asyncio.Event()
                if error is ChannelBusy:
                    await mq.start_processing("c", rec)
                # Both before any read of the hash: the queue cannot know yet that "c" may refuse.
                first, second = await asyncio.gather(mq.enqueue(msg("c", "a")), mq.enqueue(msg("c", "b")),
                                                     return_exceptions=True)
                assert first is None
                assert isinstance(second, error), second
                with pytest.raises(error):  # and so on, now that the queue knows
                    await mq.enqueue_many([msg("c", "c")])
                applied = backend_of(mq)._channels["c"].applied  # the hash, as the actors read it
                assert applied is not None and {name: getattr(applied, name) for name in read} == read
                rec.gate.set()
        finally:
            await client.aclose()

    run(main())


def test_enqueue_many_on_a_fresh_channel_with_reject_raises_once_every_message_was_answered(
    redis_srv: RedisServer,
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            await client.hset(config_key("c"), mapping={"overflow": "reject", "max_queued": "1", "disabled": "1"})
            async with MessageQueue(default_batch_window=60.0, redis=client, config_ttl=3600.0) as mq:
                with pytest.raises(QueueFull):
                    await mq.enqueue_many([msg("c", "a"), msg("d", "x"), msg("c", "b"), msg("d", "y")])
                assert [m.text for m in await mq.take_waiting("c")] == ["a"]
                (stats,) = await mq.statistics("d")
                assert stats.open_batch_size == 2  # the other channel's messages were all enqueued
        finally:
            await client.aclose()

    run(main())


def test_a_fresh_channel_waits_for_answers_only_until_its_settings_are_known(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            async with MessageQueue(default_batch_window=60.0, redis=client, config_ttl=3600.0) as mq:
                answered = count_answered(mq)
                for text in "abc":
                    await mq.enqueue(msg("c", text))
                assert answered == ["a"]  # the defaults refuse nothing: after the first read, no more waits
                (stats,) = await mq.statistics("c")
                assert stats.open_batch_size == 3
        finally:
            await client.aclose()

    run(main())


def test_a_changed_hash_applies_once_config_ttl_has_passed(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            await client.hset(config_key("c"), "disabled", "1")
            # config_ttl 0: every message is behind a fresh read of the hash (no waiting for time to pass).
            async with MessageQueue(default_batch_window=60.0, redis=client, config_ttl=0.0) as mq:
                answered = count_answered(mq)
                rec = Recorder()
                rec.gate = asyncio.Event()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "a"))
                await rec.wait_started()  # "a" is in flight
                await client.hset(config_key("c"), "busy_policy", "reject")
                await mq.enqueue(msg("c", "b"))  # the queue still knew "queue": refused by the actors, logged
                assert backend_of(mq)._settings_of("c").busy_policy == "reject"  # told before "b" was stored
                with pytest.raises(ChannelBusy):
                    await mq.enqueue(msg("c", "c"))
                await client.hdel(config_key("c"), "busy_policy")
                await mq.enqueue(msg("c", "d"))  # answered (the queue knew "reject"); read before it: "queue"
                await mq.enqueue(msg("c", "e"))  # and the queue knows it: handed over without an answer
                assert answered == ["a", "c", "d"]
                rec.gate.set()
                await rec.wait(lambda: rec.flat("c") == ["a", "d", "e"])
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING):
        run(main())
    assert any("busy_policy is reject" in r.getMessage() for r in caplog.records), caplog.text


def test_the_applied_settings_reach_the_queue_and_go_when_the_channel_passivates(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            await client.hset(config_key("c"), "window", "0.01")
            async with MessageQueue(default_batch_window=60.0, redis=client, config_ttl=3600.0,
                                    idle_timeout=0.05) as mq:
                await mq.statistics()  # started
                seen, passivated = tap(mq)
                rec = Recorder()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "a"))
                backend = backend_of(mq)
                read = replace(backend._settings, window=0.01)
                facts = [o for o in seen if isinstance(o, ChannelSettingsApplied)]
                assert facts == [ChannelSettingsApplied("c", read)]
                assert backend._channels["c"].applied == read
                await rec.wait(lambda: rec.flat("c") == ["a"])
                await asyncio.wait_for(passivated.wait(), TIMEOUT)
                assert "c" not in backend._channels
                assert backend._settings_of("c") == backend._settings  # unknown again: the defaults
                # Its next message has the hash read again, and the queue waits for answers until told.
                await client.hset(config_key("c"), mapping={"busy_policy": "reject", "disabled": "1"})
                rec.gate = asyncio.Event()
                first, second = await asyncio.gather(mq.enqueue(msg("c", "b")), mq.enqueue(msg("c", "c")),
                                                     return_exceptions=True)
                assert first is None and isinstance(second, ChannelBusy), (first, second)
                rec.gate.set()
                await rec.wait(lambda: rec.flat("c") == ["a", "b"])
        finally:
            await client.aclose()

    run(main())


def test_configure_is_applied_through_the_actors_from_the_next_message(redis_srv: RedisServer) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            async with MessageQueue(default_batch_window=60.0, max_batch_size=1, redis=client,
                                    config_ttl=3600.0) as mq:
                rec = Recorder()
                rec.gate = asyncio.Event()
                await mq.start_processing("c", rec)
                await mq.enqueue(msg("c", "a"))  # the defaults are known from here on
                await rec.wait_started()  # a full batch: "a" is in flight
                backend = backend_of(mq)
                assert backend._channels["c"].applied == backend._settings
                await mq.configure("c", busy_policy="reject")
                assert backend._channels["c"].applied is None  # the actors read the hash again first
                with pytest.raises(ChannelBusy):  # so the queue waited for the answer
                    await mq.enqueue(msg("c", "b"))
                chosen = replace(backend._settings, busy_policy="reject")
                assert backend._channels["c"].applied == chosen  # its hash, written by configure, read back
                rec.gate.set()
                await rec.wait(lambda: rec.flat("c") == ["a"])
        finally:
            await client.aclose()

    run(main())


async def observing_driver(url: str, field: str, value: str, outputs: list[Any]) -> LoopDriver:
    """A started loop driver persisting to ``url`` (settings read once an hour), observing and processing
    channel ``c`` into ``outputs`` (it never answers a delivery); ``c``'s hash holds ``field`` = ``value``."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.hset(config_key("c"), field, value)
    finally:
        await client.aclose()
    driver = LoopDriver(asyncio.get_running_loop(), outputs.append, BatchSettings(window=60.0),
                        redis_url=url, config_ttl=3600.0)
    await driver.start()
    await driver.call(Observe())
    await driver.call(StartProcessing("c"))
    return driver


def test_the_fact_comes_before_the_outcomes_of_the_held_messages(redis_srv: RedisServer) -> None:
    async def main() -> None:
        outputs: list[Any] = []
        driver = await observing_driver(redis_srv.url, "disabled", "1", outputs)
        try:
            assert await driver.call(Enqueue(msg("c", "a"), ack=True)) == Enqueued(1)
            kinds = [type(o) for o in outputs]
            assert kinds[0] is ChannelSettingsApplied and BatchReady in kinds, kinds  # "a" went out at once
            assert outputs[0] == ChannelSettingsApplied("c", BatchSettings(window=60.0, batching=False))
        finally:
            driver.stop()

    run(main())


def test_in_memory_the_queue_is_told_no_settings() -> None:
    async def main() -> None:
        async with MessageQueue(default_batch_window=60.0) as mq:
            await mq.statistics()
            seen, _ = tap(mq)
            answered = count_answered(mq)
            await mq.enqueue(msg("c", "a"))
            await mq.enqueue_many([msg("c", "b")])
            assert [m.text for m in await mq.take_waiting("c")] == ["a", "b"]
            assert answered == []  # no wait for a read: nothing is read
            assert not any(isinstance(o, ChannelSettingsApplied) for o in seen)

    run(main())


@pytest.mark.parametrize("live", [False, True], ids=["new_channel", "live_channel"])
def test_configure_while_the_hash_is_read_applies_the_hash_over_the_new_override(
    redis_srv: RedisServer, live: bool
) -> None:
    async def main() -> None:
        outputs: list[Any] = []
        driver = await observing_driver(redis_srv.url, "busy_policy", "reject", outputs)
        try:
            if live:
                assert await driver.call(Enqueue(msg("c", "a0"), ack=True)) == Enqueued(1)  # opens a batch
                # An override (the defaults again) has the hash read again by the channel's next message.
                await driver.call(ConfigureChannel("c", BatchSettings(window=60.0)))
            # Handed over in one turn: the override arrives while the read for "a" is under way.
            driver.tell(Enqueue(msg("c", "a")))
            override = BatchSettings(window=60.0, max_batch_size=1)
            assert await driver.call(ConfigureChannel("c", override)) == ChannelConfigured("c")
            # The open batch keeps the settings it opened with: flushed, it is in flight (a new channel's "a"
            # went out at once: max_batch_size 1). Then "b" is refused: the hash's busy_policy applies over
            # the new override.
            await driver.call(FlushBatch("c"))
            refused = await driver.call(Enqueue(msg("c", "b"), ack=True))
            assert isinstance(refused, Rejected) and refused.error == "ChannelBusy", refused
            effective = replace(override, busy_policy="reject")
            facts = [o for o in outputs if isinstance(o, ChannelSettingsApplied)]
            assert facts[-1] == ChannelSettingsApplied("c", effective), facts
        finally:
            driver.stop()

    run(main())


def test_a_queue_closed_while_its_actors_read_a_settings_hash_stores_the_messages_held_for_it(
    redis_srv: RedisServer,
) -> None:
    """Redis is paused, so the actors' read of a new channel's settings hash waits, and the channel's message
    with it; the queue is closed meanwhile. The held message goes to its channel and is stored before the
    actors stop (its enqueue was not acknowledged, so it fails), and the next queue delivers it."""

    async def main() -> None:
        admin = aioredis.Redis.from_url(redis_srv.url)
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            mq = MessageQueue(redis=client, default_batch_window=0.05)
            await mq.statistics()  # started: its store is open
            await admin.client_pause(1000)  # the settings read waits this long
            pending = asyncio.ensure_future(mq.enqueue(msg("c", "held")))
            await asyncio.sleep(0)  # accepted, and held by the Supervisor for the read
            await mq.close(drain=False)
            with pytest.raises(DriverStopped):  # not acknowledged: the queue stopped before the write
                await pending

            recorder = Recorder()
            async with MessageQueue(redis=client, default_batch_window=0.05) as again:
                await again.start_processing("c", recorder)
                await recorder.wait(lambda: bool(recorder.items["c"]))
            assert recorder.texts("c") == [["held"]]
        finally:
            await admin.aclose()
            await client.aclose()

    run(main())
