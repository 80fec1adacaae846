"""The durable watermark: a persisting channel holds its outgoing messages itself, each group behind the number
of the Persist that carries its operations, and sends them, in order, only once RedisPersistence confirms that
number (``Durable(upto)``, one per channel and write); a failed write confirms nothing.

The channel tests stand a recording actor in for RedisPersistence, the Timer and the processor, and play
RedisPersistence's part by hand; the persistence test drives a RedisPersistence on a real redis-server."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
import redis
from harness import message
from redis_support import RedisServer, as_bytes
from thespian.actors import Actor, ActorAddress, ActorSystem

from actors.channel import ChannelActor
from actors.internal import ChannelInit, EnqueueStamped, Passivate, Wake, WakeKind
from actors.journal import AppendOpen, Durable, OpenStore, Persist, StoreOpened
from actors.persistence import RedisPersistence
from actors.system import SIMPLE_BASE, RunningSystem, start_system
from protocol import codec, keys
from protocol.messages import BatchReady, Enqueued, ProcessingDone
from protocol.values import BatchSettings, OpenEntry

ASK = 5.0


class Drain:
    """Test -> Inbox: reply with everything received since the last Drain, in order."""


class Inbox(Actor):  # type: ignore[misc]
    """Records every message it gets; answers ``Drain`` with them."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[object] = []

    def receiveMessage(self, msg: object, sender: ActorAddress) -> None:
        if isinstance(msg, Drain):
            self.send(sender, tuple(self.got))
            self.got.clear()
        else:
            self.got.append(msg)


@pytest.fixture
def running() -> Iterator[RunningSystem]:
    system = start_system(SIMPLE_BASE)
    try:
        yield system
    finally:
        system.shutdown()


def drain(asys: ActorSystem, inbox: ActorAddress) -> tuple[object, ...]:
    got = asys.ask(inbox, Drain(), ASK)
    assert isinstance(got, tuple)
    return got


def start_channel(asys: ActorSystem, inbox: ActorAddress, idle_timeout: float = 60.0) -> ActorAddress:
    """A persisting channel whose RedisPersistence, Timer and processor are ``inbox``; its Supervisor is the
    test (the sender of ChannelInit)."""
    channel = asys.createActor(ChannelActor)
    settings = BatchSettings(batching=False)
    asys.tell(channel, ChannelInit("c", settings, inbox, inbox, idle_timeout, persistence=inbox))
    return channel


def of_type(messages: tuple[object, ...], kind: type) -> list[object]:
    return [m for m in messages if isinstance(m, kind)]


def test_held_messages_leave_in_order_and_only_up_to_the_confirmed_number(running: RunningSystem) -> None:
    asys = running.asys
    inbox = asys.createActor(Inbox)
    channel = asys.createActor(ChannelActor)
    asys.tell(channel, ChannelInit("c", BatchSettings(window=30.0), inbox, None, 60.0, persistence=inbox))
    for size in (1, 2, 3):  # each call's acknowledgement names its size: their order shows
        batch = tuple(message("c", f"{size}.{i}") for i in range(size))
        asys.tell(channel, EnqueueStamped(batch, (time.monotonic(),) * size, reply_to=inbox, ack=True))
    asys.tell(channel, EnqueueStamped((message("c", "quiet"),), (time.monotonic(),)))  # no answer asked

    got = drain(asys, inbox)
    persists = of_type(got, Persist)
    assert [p.seq for p in persists if isinstance(p, Persist)] == [1, 2, 3, 0]
    assert all(p.ops for p in persists if isinstance(p, Persist))
    assert of_type(got, Enqueued) == []  # nothing leaves before its operations are stored

    asys.tell(channel, Durable(2))
    assert of_type(drain(asys, inbox), Enqueued) == [Enqueued(1), Enqueued(2)]
    asys.tell(channel, Durable(3))
    assert of_type(drain(asys, inbox), Enqueued) == [Enqueued(3)]
    asys.tell(channel, Durable(3))  # a number already confirmed releases nothing twice
    assert of_type(drain(asys, inbox), Enqueued) == []


def test_a_channel_whose_last_operations_are_unconfirmed_offers_to_passivate_only_once_they_are_stored(
    running: RunningSystem,
) -> None:
    asys = running.asys
    inbox = asys.createActor(Inbox)
    channel = start_channel(asys, inbox, idle_timeout=0.0)
    asys.tell(channel, EnqueueStamped((message("c", "a"),), (time.monotonic(),)))
    (delivering,) = [p for p in of_type(drain(asys, inbox), Persist) if isinstance(p, Persist)]
    assert delivering.seq == 1
    asys.tell(channel, Durable(1))
    (ready,) = of_type(drain(asys, inbox), BatchReady)
    assert isinstance(ready, BatchReady)
    asys.tell(channel, ProcessingDone("c", ready.delivery_id))  # its FinishInFlight needs no answer
    (finished,) = [p for p in of_type(drain(asys, inbox), Persist) if isinstance(p, Persist)]
    assert finished.seq == 0 and finished.ops

    asys.tell(channel, Wake(time.monotonic(), WakeKind.IDLE))
    (offer_held,) = [p for p in of_type(drain(asys, inbox), Persist) if isinstance(p, Persist)]
    assert offer_held == Persist((), 2)  # the offer waits behind a number covering the FinishInFlight
    assert asys.listen(0.05) is None
    asys.tell(channel, Durable(2))
    assert isinstance(asys.listen(ASK), Passivate)


def stored_open(client: redis.Redis, channel: str) -> list[str]:
    entries = [codec.decode(as_bytes(raw)) for raw in client.lrange(keys.channel_key(keys.OPEN_BATCH, channel), 0, -1)]
    return [e.message.text for e in entries if isinstance(e, OpenEntry)]


@pytest.mark.redis
def test_a_failed_write_confirms_nothing_and_its_retry_confirms_the_highest_number_once(
    running: RunningSystem, redis_srv: RedisServer, client: redis.Redis
) -> None:
    asys = running.asys
    persistence = asys.createActor(RedisPersistence)
    assert isinstance(asys.ask(persistence, OpenStore(redis_srv.url), 10), StoreOpened)
    redis_srv.kill()
    for seq, text in ((1, "a"), (0, "b"), (2, "c")):
        asys.tell(persistence, Persist((AppendOpen("c", OpenEntry(message("c", text), time.time())),), seq))
    assert asys.listen(0.5) is None  # Redis is down: every write fails, nothing is confirmed
    redis_srv.start()
    assert asys.listen(15) == Durable(2)
    assert stored_open(client, "c") == ["a", "b", "c"]
    assert asys.listen(0.3) is None  # one answer for all of this channel's Persists in that write
