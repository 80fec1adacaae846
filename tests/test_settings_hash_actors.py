"""The settings hash ``message_queue:config:<channel>`` is read inside the actor system, by the persistence
actor for the Supervisor, before a channel's first message and again once the last read is older than
``config_ttl``, for a persisting node (``serve --redis``, an actor system started with ``redis_url``) and the
asyncio API alike (see tests/test_settings_applied.py). Each test on a private redis-server."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest
import redis
from harness import LONG, Harness, deliveries, message, texts
from redis_support import RedisServer
from test_run_system import batches_of, run
from test_run_system import message as line_message
from test_serve_redis import lines_of

from actors.system import SIMPLE_BASE, start_system
from protocol import keys
from protocol.values import BatchSettings

pytestmark = pytest.mark.redis


@pytest.fixture
def node(redis_srv: RedisServer) -> Iterator[Harness]:
    running = start_system(SIMPLE_BASE, BatchSettings(window=LONG, max_batch_size=10), redis_url=redis_srv.url,
                           config_ttl=0.0, timeout=20)
    harness = Harness(running, None)
    yield harness
    harness.shutdown_and_verify()


def test_a_channels_hash_applies_from_its_first_message_and_other_channels_keep_the_defaults(
    node: Harness, client: redis.Redis
) -> None:
    client.hset(keys.config_key("c1"), mapping={"max_batch_size": "2"})
    proc = node.processor()
    node.attach(proc)
    node.enqueue(message("c1", "a"), message("c1", "b"), message("c1", "c"), message("c2", "x"), message("c2", "y"))
    (first,) = deliveries(node.wait_for(proc, count=1))
    assert (first.channel_id, texts(first), first.reason) == ("c1", ["a", "b"], "full")
    assert node.stats("c1").open_batch_size == 1
    assert node.stats("c2").open_batch_size == 2  # the defaults: cap 10, a window no test waits for


def test_a_changed_hash_applies_to_the_next_message_read_after_it(node: Harness, client: redis.Redis) -> None:
    proc = node.processor()
    node.attach(proc)
    node.enqueue(message("c1", "a"))
    assert node.stats("c1").open_batch_size == 1
    client.hset(keys.config_key("c1"), mapping={"disabled": "1"})  # batching off from the next message on
    node.enqueue(message("c1", "b"))
    events = deliveries(node.wait_for(proc, count=2))
    assert [(texts(e), e.reason) for e in events] == [(["a"], "settings"), (["b"], "unbatched")]


def test_a_bad_value_in_the_hash_is_warned_about_and_the_rest_applies(
    node: Harness, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client.hset(keys.config_key("c1"), mapping={"max_batch_size": "lots", "disabled": "1"})
    proc = node.processor()
    node.attach(proc)
    with caplog.at_level(logging.WARNING):
        node.enqueue(message("c1", "a"))
        (ready,) = deliveries(node.wait_for(proc, count=1))
    assert (texts(ready), ready.reason) == (["a"], "unbatched")
    assert any("max_batch_size" in r.getMessage() and "'lots'" in r.getMessage() for r in caplog.records)


def test_serve_with_redis_honours_the_settings_hash(redis_srv: RedisServer, client: redis.Redis) -> None:
    client.hset(keys.config_key("slack:#ops"), mapping={"disabled": "1"})
    stdin = lines_of(*(line_message(channel, text) for channel in ("slack:#ops", "slack:#dev")
                       for text in ("one", "two", "three")))
    done = run("serve", "--redis", redis_srv.url, "--window", "30", "--max-batch-size", "10", stdin=stdin)
    assert done.returncode == 0, done.stderr
    by_channel: dict[str, list[list[str]]] = {}
    for batch in batches_of(done.stdout):
        by_channel.setdefault(batch["channel_id"], []).append([m["text"] for m in batch["messages"]])
    assert by_channel == {"slack:#ops": [["one"], ["two"], ["three"]], "slack:#dev": [["one", "two", "three"]]}
