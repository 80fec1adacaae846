"""RedisStore against a private redis-server: operations, restore, dead letters, safety checks, the writer
lease."""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_support import RedisServer, as_bytes, redis_server

from actors.journal import AppendOpen, ClearQueue, FinishInFlight, PushHead, PushTail, TakeHead
from actors.lease import LeaseHolder
from actors.store import RedisStore
from protocol import codec, keys
from protocol.errors import RedisDataLost, StoreLocked, UnsafeRedis
from protocol.values import DeadLetter, MessageBatch, OpenEntry, QueuedMessage, QueueItem

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


def test_a_transaction_larger_than_one_push_is_applied_whole_and_in_order(store: RedisStore) -> None:
    # more values for one list, and more channels, than one RPUSH or SADD of the apply script takes
    big = [PushTail("big", item("big", f"i{n}", f"m{n}"), closes_open=False) for n in range(2_500)]
    many = [AppendOpen(f"c{n}", OpenEntry(message(f"c{n}", "x"), 1.0)) for n in range(1_500)]
    store.apply(big + many + [TakeHead("big"), FinishInFlight("big")])
    snapshots = {snap.channel_id: snap for snap in store.load()}
    assert len(snapshots) == 1_501
    assert [i.item_id for i in snapshots["big"].waiting] == [f"i{n}" for n in range(1, 2_500)]
    assert all(len(snapshots[f"c{n}"].open_entries) == 1 for n in range(1_500))


def test_a_write_can_be_sent_and_its_reply_read_later_one_at_a_time(store: RedisStore) -> None:
    pending = store.start_apply([PushTail("c", item("c", "i1", "a"), False)])
    assert pending is not None
    with pytest.raises(RuntimeError, match="pending"):
        store.start_apply([PushTail("c", item("c", "i2", "b"), False)])
    store.finish_apply(pending)
    assert store.start_apply([]) is None
    store.apply([PushTail("c", item("c", "i2", "b"), False)])
    [snap] = store.load()
    assert [i.item_id for i in snap.waiting] == ["i1", "i2"]


def test_a_server_that_forgot_the_script_gets_it_again_and_the_write_runs_once(store: RedisStore) -> None:
    store.apply([PushTail("c", item("c", "i1", "a"), False)])
    store._redis.script_flush()
    store.apply([PushTail("c", item("c", "i2", "b"), False)])
    [snap] = store.load()
    assert [i.item_id for i in snap.waiting] == ["i1", "i2"]


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
    letter = codec.decode(as_bytes(raw), DeadLetter)
    assert letter.role == keys.QUEUE and letter.data == b"\xc1 not msgpack" and "msgpack" in letter.reason
    [snap] = store.load()  # the bad entry is gone from the queue for good
    assert [i.item_id for i in snap.waiting] == ["i1", "i2"]


hostile = st.sampled_from(["*", ":", "{}", "{a}", "a\nb", "a\x00b", "x:processing", "x", "é" * 128, "z" * 256])


@settings(max_examples=25, deadline=None)
@given(st.lists(hostile, min_size=2, max_size=5, unique=True))
def test_hostile_channel_ids_never_share_keys(ids: list[str]) -> None:
    all_keys = [keys.channel_key(role, c) for c in ids for role in keys.ROLES]
    assert len(set(all_keys)) == len(all_keys)
    shared = (keys.CHANNEL_INDEX, keys.EPOCH, keys.LEASE, keys.LEASE_HOLDER, keys.writer_key("ab12"))
    assert not set(shared) & set(all_keys)


def test_hostile_channel_ids_keep_their_state_apart_in_redis(store: RedisStore) -> None:
    # the apply script's operation codes as ids too: r, l, m, d, s
    ids = ["*", ":", "{}", "a\nb", "a\x00b", "x:processing", "x", "z" * 256, "r", "l", "m", "d", "s", "1"]
    store.apply([PushTail(c, item(c, f"id-{n}", f"t{n}"), False) for n, c in enumerate(ids)])
    store.apply([op for n, c in enumerate(ids) for op in (PushTail(c, item(c, f"id2-{n}", "u"), False), TakeHead(c))])
    loaded = {s.channel_id: s for s in store.load()}
    assert set(loaded) == set(ids)
    for n, c in enumerate(ids):
        assert [(i.item_id, i.attempt) for i in loaded[c].waiting] == [(f"id-{n}", 2), (f"id2-{n}", 1)]


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


# -- the writer lease -----------------------------------------------------------------------------------------

HOST = socket.gethostname()


def lease_of(client: redis.Redis) -> LeaseHolder | None:
    raw = client.get(keys.LEASE)
    assert raw is None or isinstance(raw, bytes)
    return LeaseHolder.decode(raw) if raw is not None else None


def plant_lease(client: redis.Redis, holder: LeaseHolder, ms: int = 60_000) -> bytes:
    """Store ``holder`` as the lease's holder, as a node that took the lease would have."""
    value = holder.encode()
    client.set(keys.LEASE, value, px=ms)
    client.set(keys.LEASE_HOLDER, value)
    return value


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)  # polling Redis for a condition, with a deadline


def test_the_lease_value_names_the_holder_and_reads_back(client: redis.Redis, store: RedisStore) -> None:
    holder = lease_of(client)
    assert holder is not None and (holder.host, holder.pid) == (HOST, os.getpid())
    assert abs(holder.taken - time.time()) < 60
    raw = client.get(keys.LEASE)
    assert isinstance(raw, bytes) and raw.startswith(f"host={HOST} pid={os.getpid()} taken=".encode())
    assert client.get(keys.LEASE_HOLDER) == raw
    assert 0 < client.pttl(keys.LEASE) <= 15_000
    odd = LeaseHolder("a b=c", 7, 1718000000.25, None, "t0k")
    assert LeaseHolder.decode(odd.encode()) == odd
    assert LeaseHolder.decode(b"not a lease") is None and LeaseHolder.decode(b"host=h pid=0 taken=x token=t") is None


def test_a_second_store_on_the_same_database_is_refused_naming_the_holder(
    redis_srv: RedisServer, store: RedisStore
) -> None:
    second = RedisStore.from_url(redis_srv.url)
    try:
        with pytest.raises(StoreLocked) as refused:
            second.open_epoch()
        text = str(refused.value)
        assert f"host {HOST!r}, pid {os.getpid()}, lease taken at 20" in text
        assert "the lease expires in 1" in text and "stop that node, or give this one another database" in text
    finally:
        second.close()
    store.apply([PushTail("c", item("c", "i1", "a"), False)])  # the holder is undisturbed
    [snap] = store.load()
    assert [i.item_id for i in snap.waiting] == ["i1"]


def test_a_lease_left_by_a_process_that_died_on_this_host_is_taken_over_at_once(
    redis_srv: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gone = LeaseHolder(HOST, dead_pid(), time.time() - 1, None, "crashed")
    plant_lease(client, gone)
    s = RedisStore.from_url(redis_srv.url)
    try:
        with caplog.at_level(logging.WARNING, logger="actors.store"):
            s.open_epoch()
        holder = lease_of(client)
        assert holder is not None and holder.pid == os.getpid() and holder.token != "crashed"
        assert client.get(keys.LEASE_HOLDER) == holder.encode()
        assert f"pid {gone.pid}, lease taken at" in caplog.text and "no longer runs" in caplog.text
        s.apply([PushTail("c", item("c", "i1", "a"), False)])
    finally:
        s.close()


def test_a_holder_is_gone_when_its_pid_is_a_zombie_or_another_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = pathlib.Path(f"/proc/{proc.pid}/stat")
        wait_until(lambda: stat.read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z",
                   "the child exits (a zombie until reaped)")
        assert LeaseHolder(HOST, proc.pid, time.time(), None, "z").gone()
    finally:
        proc.wait()
    me = LeaseHolder.of_this_process()
    assert not me.gone()  # another store of this very process: alive
    assert LeaseHolder(HOST, os.getpid(), time.time(), (me.started or 0) + 1, "reused").gone()  # pid reused
    assert not LeaseHolder("elsewhere.example", dead_pid(), time.time(), None, "far").gone()  # not ours to judge


@pytest.mark.parametrize("where", ["live process on this host", "another host"])
def test_a_lease_held_by_a_live_process_or_another_host_blocks_until_it_expires(
    redis_srv: RedisServer, client: redis.Redis, where: str
) -> None:
    if where == "another host":
        holder = LeaseHolder("elsewhere.example", dead_pid(), time.time(), None, "far")
    else:
        holder = LeaseHolder.of_this_process()  # this process, with another token: another store, alive
    plant_lease(client, holder, ms=400)
    s = RedisStore.from_url(redis_srv.url)
    try:
        with pytest.raises(StoreLocked, match=f"host {holder.host!r}, pid {holder.pid},.*expires in 0"):
            s.open_epoch()
        refused_at = time.monotonic()

        def opened() -> bool:
            try:
                s.open_epoch()
            except StoreLocked:
                return False
            return True

        wait_until(opened, "the store opens once the lease expired")
        holder_now = lease_of(client)
        assert holder_now is not None and holder_now.token != holder.token
        assert time.monotonic() - refused_at < 5
    finally:
        s.close()


def test_a_store_whose_lease_was_taken_writes_nothing_more(
    redis_srv: RedisServer, client: redis.Redis, store: RedisStore
) -> None:
    store.apply([PushTail("c", item("c", "i1", "a"), False)])
    other = LeaseHolder("elsewhere.example", 4242, time.time(), None, "thief")
    client.set(keys.LEASE, other.encode(), px=60_000)  # another node took the lease after ours expired
    with pytest.raises(StoreLocked, match="lost the writer lease .*host 'elsewhere.example', pid 4242"):
        store.apply([PushTail("c", item("c", "i2", "b"), False), TakeHead("c")])
    with pytest.raises(StoreLocked):
        store.apply([PushTail("c", item("c", "i2", "b"), False), TakeHead("c")])  # for good
    with pytest.raises(StoreLocked):
        store.renew_lease()
    stored = client.lrange(keys.queue_key("c"), 0, -1)
    assert [codec.decode(as_bytes(raw), QueueItem).item_id for raw in stored] == ["i1"]
    assert client.llen(keys.channel_key(keys.PROCESSING, "c")) == 0
    store.close()  # releases nothing that is not its own
    assert client.get(keys.LEASE) == other.encode()


def test_a_load_after_the_lease_was_taken_writes_no_repairs(
    redis_srv: RedisServer, client: redis.Redis, store: RedisStore
) -> None:
    store.apply([PushTail("c", item("c", "i1", "a"), False), TakeHead("c")])
    client.set(keys.LEASE, LeaseHolder("elsewhere.example", 4242, time.time(), None, "thief").encode(), px=60_000)
    with pytest.raises(StoreLocked, match="lost the writer lease"):
        store.load()  # would move the item in flight back to the queue's head
    assert client.llen(keys.channel_key(keys.PROCESSING, "c")) == 1 and client.llen(keys.queue_key("c")) == 0


def test_after_a_stall_longer_than_the_lease_a_store_writes_again_only_if_no_other_node_took_it(
    redis_srv: RedisServer, client: redis.Redis
) -> None:
    first = RedisStore.from_url(redis_srv.url, lease_seconds=0.2)
    second = RedisStore.from_url(redis_srv.url, lease_seconds=0.2)
    try:
        first.open_epoch()
        wait_until(lambda: not client.exists(keys.LEASE), "the unrenewed lease expires")
        first.apply([PushTail("c", item("c", "i1", "a"), False)])  # nobody took it: taken back, written
        assert lease_of(client) == LeaseHolder.decode(as_bytes(client.get(keys.LEASE_HOLDER) or b""))
        wait_until(lambda: not client.exists(keys.LEASE), "the unrenewed lease expires again")
        second.open_epoch()  # another node takes the free lease
        with pytest.raises(StoreLocked, match="lost the writer lease"):
            first.apply([PushTail("c", item("c", "i2", "b"), False)])
        second.apply([PushTail("c", item("c", "i3", "c"), False)])
        [snap] = second.load()
        assert [i.item_id for i in snap.waiting] == ["i1", "i3"]
    finally:
        first.close()
        second.close()


def test_renewing_extends_the_lease_and_takes_an_expired_one_back(redis_srv: RedisServer, client: redis.Redis) -> None:
    s = RedisStore.from_url(redis_srv.url, lease_seconds=5)
    try:
        s.open_epoch()
        client.pexpire(keys.LEASE, 100)
        s.renew_lease()
        assert client.pttl(keys.LEASE) > 4_000
        client.delete(keys.LEASE)  # expired, nobody took it
        s.renew_lease()
        assert client.pttl(keys.LEASE) > 4_000 and client.get(keys.LEASE) == client.get(keys.LEASE_HOLDER)
    finally:
        s.close()


def test_closing_the_store_releases_the_lease_for_the_next_one(redis_srv: RedisServer, client: redis.Redis) -> None:
    s = RedisStore.from_url(redis_srv.url)
    s.open_epoch()
    s.close()
    assert client.exists(keys.LEASE, keys.LEASE_HOLDER) == 0
    again = RedisStore.from_url(redis_srv.url)
    try:
        again.open_epoch()
    finally:
        again.close()
