"""Dead letters and retry backoffs survive a restart of a node persisting to a private redis-server (simple
base): a restarted channel lists its dead letters, replays them, and waits out the rest of a retry's backoff."""

from __future__ import annotations

import json
import time
from typing import Iterator

import msgpack
import pytest
import redis
from actor_support import FAIL
from harness import Harness, deliveries, message, texts
from redis_support import RedisServer, as_bytes

from actors.system import SIMPLE_BASE, start_system
from protocol import codec, keys
from protocol.messages import (
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    GetDeadLetters,
    PurgeDeadLetters,
    ReplayDeadLetters,
)
from protocol.values import BatchSettings, DeadLetter, QueuedMessage, QueueItem

pytestmark = pytest.mark.redis


class Node:
    """Starts and stops systems persisting to one Redis, one at a time, all with ``settings``."""

    def __init__(self, server: RedisServer, settings: BatchSettings) -> None:
        self.server = server
        self.settings = settings
        self.current: Harness | None = None

    def start(self) -> Harness:
        self.stop()
        running = start_system(SIMPLE_BASE, self.settings, redis_url=self.server.url, timeout=20)
        self.current = Harness(running, None)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.shutdown_and_verify()
            self.current = None


@pytest.fixture
def nodes(redis_srv: RedisServer) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop()


def texts_of(letter: DeadLetter) -> list[str]:
    assert letter.item is not None
    payload = letter.item.payload
    return [m.text for m in ([payload] if isinstance(payload, QueuedMessage) else payload.messages)]


def stored_letters(client: redis.Redis, channel: str) -> list[DeadLetter]:
    raws = client.lrange(keys.channel_key(keys.DEAD_LETTER, channel), 0, -1)
    return [codec.decode(as_bytes(raw), DeadLetter) for raw in raws]


def test_dead_letters_survive_a_restart_and_replay_after_it(
    redis_srv: RedisServer, nodes: list[Node], client: redis.Redis
) -> None:
    node = Node(redis_srv, BatchSettings(batching=False, max_attempts=2, retry_backoff=0.01))
    nodes.append(node)
    mq = node.start()
    proc = mq.processor(FAIL)
    mq.attach(proc, "c1")
    mq.enqueue(message("c1", "a"), message("c1", "b"))
    mq.stats_when("c1", lambda s: s.dead_lettered == 2, "both items dead-lettered")
    before = mq.ask(GetDeadLetters("c1"), DeadLetters).letters
    assert [(texts_of(letter), letter.attempts) for letter in before] == [(["a"], 2), (["b"], 2)]
    assert stored_letters(client, "c1") == list(before)  # written as the core made them
    node.stop()

    mq = node.start()
    after = mq.ask(GetDeadLetters("c1"), DeadLetters).letters
    assert after == before  # attempts, first and last failure times, items and ids kept
    assert after[0].first_failed_at <= after[0].last_failed_at
    assert mq.stats("c1").dead_letters == 2

    done = mq.processor()
    mq.attach(done, "c1")
    assert mq.ask(ReplayDeadLetters("c1"), DeadLettersReplayed).count == 2
    got = deliveries(mq.wait_for(done, count=2))
    assert [(texts(d), d.item.attempt) for d in got] == [(["a"], 1), (["b"], 1)]
    assert [d.item.item_id for d in got] == [letter.item.item_id for letter in before if letter.item]
    assert stored_letters(client, "c1") == []
    assert mq.ask(GetDeadLetters("c1"), DeadLetters).letters == ()
    node.stop()

    mq = node.start()
    assert mq.ask(GetDeadLetters("c1"), DeadLetters).letters == ()  # replayed ones stay gone


def stopped_with_a_dead_letter(server: RedisServer, nodes: list[Node]) -> Node:
    """A node (stopped) whose channel c1 dead-lettered one item, "a", after two failed attempts."""
    node = Node(server, BatchSettings(batching=False, max_attempts=2, retry_backoff=0.01))
    nodes.append(node)
    mq = node.start()
    mq.attach(mq.processor(FAIL), "c1")
    mq.enqueue(message("c1", "a"))
    mq.stats_when("c1", lambda s: s.dead_lettered == 1, "the item dead-lettered")
    node.stop()
    return node


def test_a_stored_undecodable_entry_stays_listed_and_purge_removes_it(
    redis_srv: RedisServer, nodes: list[Node], client: redis.Redis
) -> None:
    node = stopped_with_a_dead_letter(redis_srv, nodes)
    client.lpush(keys.queue_key("c1"), b"\xc1 not a frame")  # damaged: set aside as a dead letter on load

    mq = node.start()
    letters = mq.ask(GetDeadLetters("c1"), DeadLetters).letters
    assert [(letter.role, letter.item is None) for letter in letters] == [("item", False), (keys.QUEUE, True)]
    assert letters[1].data == b"\xc1 not a frame"
    assert len(stored_letters(client, "c1")) == 2
    assert mq.ask(PurgeDeadLetters("c1"), DeadLettersPurged).count == 2
    assert stored_letters(client, "c1") == []
    node.stop()

    mq = node.start()
    assert mq.ask(GetDeadLetters("c1"), DeadLetters).letters == ()


def test_a_dead_letter_in_the_former_redis_queue_format_is_listed_rewritten_and_purged(
    redis_srv: RedisServer, nodes: list[Node], client: redis.Redis
) -> None:
    node = stopped_with_a_dead_letter(redis_srv, nodes)
    legacy = {"key": keys.queue_key("c1"), "reason": "undecodable", "data": b"\xc1", "at": 12.5}
    client.rpush(keys.channel_key(keys.DEAD_LETTER, "c1"), msgpack.packb(legacy, use_bin_type=True))

    mq = node.start()
    letters = mq.ask(GetDeadLetters("c1"), DeadLetters).letters
    assert letters[1] == DeadLetter(keys.QUEUE, "undecodable", b"\xc1", 12.5)
    assert stored_letters(client, "c1") == list(letters)  # stored again as frames
    assert mq.ask(PurgeDeadLetters("c1"), DeadLettersPurged).count == 2
    assert stored_letters(client, "c1") == []


def test_a_retry_waits_out_the_rest_of_its_backoff_after_a_restart(
    redis_srv: RedisServer, nodes: list[Node], client: redis.Redis
) -> None:
    node = Node(redis_srv, BatchSettings(batching=False, max_attempts=3, retry_backoff=30.0))
    nodes.append(node)
    mq = node.start()
    mq.attach(mq.processor(FAIL), "c1")
    mq.enqueue(message("c1", "a"))
    mq.stats_when("c1", lambda s: s.failed == 1, "the first attempt failed")
    stored = json.loads(as_bytes(client.get(keys.channel_key(keys.RETRY, "c1"))))
    (head,) = [codec.decode(as_bytes(raw), QueueItem) for raw in client.lrange(keys.queue_key("c1"), 0, -1)]
    assert stored["item_id"] == head.item_id and head.attempt == 2
    assert stored["first_failed_at"] <= time.time() < stored["due_at"] + 1e-3
    node.stop()  # a clean stop while the item waits out its backoff

    # The backoff is a random draw up to 30 s: pin the rest of it to 1.5 s from now for a short test.
    due = time.time() + 1.5
    client.set(keys.channel_key(keys.RETRY, "c1"), json.dumps({**stored, "due_at": due}))
    mq = node.start()
    done = mq.processor()
    mq.attach(done, "c1")
    early = deliveries(mq.wait_for(done, count=0))
    looked = time.time()
    assert looked < due, "the restart took longer than the pinned backoff: nothing was checked"
    assert early == []  # not delivered at once
    (got,) = deliveries(mq.wait_for(done, count=1))
    assert time.time() >= due - 0.05
    assert (texts(got), got.item.attempt, got.item.item_id, got.reason) == (["a"], 2, stored["item_id"], "retry")
    # Answered: the stored wait goes with it (written with the answer, so a stats read after it sees it gone).
    mq.stats_when("c1", lambda s: s.processed == 1, "the retry was answered")
    assert not client.exists(keys.channel_key(keys.RETRY, "c1"))
