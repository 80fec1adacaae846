"""RedisStore against a private redis-server: operations, restore, dead letters, safety checks."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.journal import AppendOpen, ClearQueue, FinishInFlight, PushHead, PushTail, TakeHead
from actors.store import RedisStore
from protocol.errors import RedisDataLost, UnsafeRedis
from protocol import codec, keys
from protocol.values import DeadLetter, MessageBatch, OpenEntry, QueuedMessage, QueueItem
from redis_support import RedisServer, redis_server

pytestmark = pytest.mark.redis


def message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("slack", channel, "u1", "Ada", text)


def item(channel: str, item_id: str, *texts: str) -> QueueItem:
    return QueueItem(item_id, channel, MessageBatch([message(channel, t) for t in texts]))


@pytest.fixture
def store(redis_srv: RedisServer) -> Iterator[RedisStore]:
    s = RedisStore.from_url(redis_srv.url)
    s.check_durability(allow_volatile=False)
    s.open_epoch()
    yield s
    s.close()


def texts(snapshot_items: tuple[QueueItem, ...]) -> list[list[str]]:
    result = []
    for it in snapshot_items:
        payload = it.payload
        msgs = payload.messages if isinstance(payload, MessageBatch) else [payload]
        result.append([m.text for m in msgs])
    return result


def test_operations_are_mirrored_and_load_restores_queue_open_batch_and_in_flight(store: RedisStore) -> None:
    store.apply(
        [
            AppendOpen("c", OpenEntry(message("c", "a"), 100.0)),
            AppendOpen("c", OpenEntry(message("c", "b"), 101.0)),
            PushTail("c", item("c", "i1", "a", "b"), closes_open=True),
            PushTail("c", item("c", "i2", "c"), closes_open=False),
            PushHead("c", item("c", "i0", "front")),
            TakeHead("c"),
            AppendOpen("c", OpenEntry(message("c", "d"), 102.0)),
        ]
    )
    [snap] = store.load()
    assert snap.channel_id == "c"
    assert [i.item_id for i in snap.waiting] == ["i0", "i1", "i2"]
    assert [i.attempt for i in snap.waiting] == [2, 1, 1]  # i0 was in flight: redelivered, attempt raised
    assert texts(snap.waiting) == [["front"], ["a", "b"], ["c"]]
    assert [(e.message.text, e.arrived_at) for e in snap.open_entries] == [("d", 102.0)]
    # the redelivery is itself stored: a second crash raises the attempt again
    [again] = store.load()
    assert [i.attempt for i in again.waiting] == [2, 1, 1]


def test_finished_and_cleared_items_are_not_restored(store: RedisStore) -> None:
    store.apply([PushTail("c", item("c", "i1", "a"), False), TakeHead("c"), FinishInFlight("c")])
    store.apply([PushTail("d", item("d", "j1", "x"), False), ClearQueue("d")])
    assert store.load() == []
    assert store._redis.scard(keys.CHANNEL_INDEX) == 0  # empty channels leave the index


def test_an_undecodable_entry_goes_to_dead_letters_and_the_rest_keeps_its_order(store: RedisStore) -> None:
    store.apply([PushTail("c", item("c", "i1", "a"), False)])
    store._redis.rpush(keys.queue_key("c"), b"\xc1 not msgpack")
    store.apply([PushTail("c", item("c", "i2", "b"), False)])
    [snap] = store.load()
    assert [i.item_id for i in snap.waiting] == ["i1", "i2"]
    [raw] = store._redis.lrange(keys.channel_key(keys.DEAD_LETTER, "c"), 0, -1)
    letter = codec.decode(raw, DeadLetter)
    assert letter.role == keys.QUEUE and letter.data == b"\xc1 not msgpack" and "msgpack" in letter.reason
    [snap] = store.load()  # the bad entry is gone from the queue for good
    assert [i.item_id for i in snap.waiting] == ["i1", "i2"]


hostile = st.sampled_from(["*", ":", "{}", "{a}", "a\nb", "a\x00b", "x:processing", "x", "é" * 128, "z" * 256])


@settings(max_examples=25, deadline=None)
@given(st.lists(hostile, min_size=2, max_size=5, unique=True))
def test_hostile_channel_ids_never_share_keys(ids: list[str]) -> None:
    all_keys = [keys.channel_key(role, c) for c in ids for role in keys.ROLES]
    assert len(set(all_keys)) == len(all_keys)
    assert keys.CHANNEL_INDEX not in all_keys and keys.EPOCH not in all_keys


def test_hostile_channel_ids_keep_their_state_apart_in_redis(store: RedisStore) -> None:
    ids = ["*", ":", "{}", "a\nb", "a\x00b", "x:processing", "x", "z" * 256]
    store.apply([PushTail(c, item(c, f"id-{n}", f"t{n}"), False) for n, c in enumerate(ids)])
    loaded = {s.channel_id: s for s in store.load()}
    assert set(loaded) == set(ids)
    for n, c in enumerate(ids):
        assert [i.item_id for i in loaded[c].waiting] == [f"id-{n}"]


def test_a_server_without_aof_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    with redis_server(appendonly=False, maxmemory_policy="allkeys-lru") as server:
        s = RedisStore.from_url(server.url)
        try:
            with pytest.raises(UnsafeRedis, match="appendonly is 'no'.*maxmemory-policy is 'allkeys-lru'"):
                s.check_durability(allow_volatile=False)
            s.check_durability(allow_volatile=True)
            assert "may lose data" in caplog.text
        finally:
            s.close()


def test_a_redis_that_lost_its_data_is_detected(redis_srv: RedisServer) -> None:
    s = RedisStore.from_url(redis_srv.url)
    try:
        s.open_epoch()
        s.apply([PushTail("c", item("c", "i1", "a"), False)])
        s._redis.flushall()
        with pytest.raises(RedisDataLost, match="epoch"):
            s.apply([PushTail("c", item("c", "i2", "b"), False)])
    finally:
        s.close()


def test_an_index_without_epoch_is_reported_at_start(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    client.sadd(keys.CHANNEL_INDEX, "c")
    client.close()
    s = RedisStore.from_url(redis_srv.url)
    try:
        with pytest.raises(RedisDataLost, match="lost part of its data"):
            s.open_epoch()
    finally:
        s.close()


def test_acknowledged_writes_survive_kill_9_of_redis(redis_srv: RedisServer) -> None:
    s = RedisStore.from_url(redis_srv.url)
    s.open_epoch()
    for n in range(200):
        s.apply([PushTail("c", item("c", f"i{n}", str(n)), False)])
    s.close()
    redis_srv.restart()  # SIGKILL, then start on the same directory (AOF, everysec)
    s = RedisStore.from_url(redis_srv.url)
    try:
        s.open_epoch()
        [snap] = s.load()
        assert [i.item_id for i in snap.waiting] == [f"i{n}" for n in range(200)]
    finally:
        s.close()
