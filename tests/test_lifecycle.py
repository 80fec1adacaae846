"""The life cycles of the ChannelActor and the Supervisor (actors/lifecycle.py).

The start-up buffer alone, then real actors on the simple base under the harness's fake time. In the channel
tests the test is the channel's Supervisor: it sends ``ChannelInit`` itself (the channel's offers then come to
the test) and gives the channel a Timer of its own. In the Supervisor tests the test is also its store: a
Supervisor whose RedisPersistence is whoever configured it, so the test decides when the restore ends.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Iterator

import pytest
from harness import Harness, message, start_harness, texts
from thespian.actors import ActorAddress, ActorExitRequest, ChildActorExited

from actors.channel import ChannelActor
from actors.internal import (
    ChannelInit,
    ConfigureSystem,
    EnqueueStamped,
    Passivate,
    Routed,
    SystemConfigured,
    TimerConfig,
    Wake,
    WakeKind,
)
from actors.journal import ChannelsLoaded, Durable, LoadChannels, OpenStore, Persist, ReplaceIds, StoreOpened
from actors.lifecycle import PASSIVATING, RUNNING, STARTING, STOPPING, Lifecycle, StartupBuffer, buffered
from actors.persistence import RedisPersistence
from actors.supervisor import Supervisor
from actors.system import SIMPLE_BASE
from actors.thespian_compat import lean_base
from actors.timer import Timer
from protocol.errors import ProtocolViolation
from protocol.messages import (
    Enqueue,
    Enqueued,
    GetStatistics,
    ProcessingStarted,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings

CHANNEL = "life"
IDLE = 1.0  # fake seconds idle before a channel offers to passivate
STORE_URL = "redis://store.invalid:1"  # never connected to: the test answers as the store


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = start_harness(SIMPLE_BASE)
    try:
        yield harness
    finally:
        harness.shutdown_and_verify()


def instance_of(h: Harness, address: ActorAddress) -> Any:
    """The actor object at ``address`` (the simple base runs it in this process)."""
    return h.asys._systemBase.actorRegistry[address.actorAddressString].instance


# -- the start-up buffer -------------------------------------------------------------------------------------


def test_the_states_by_name_are_the_members_of_the_enum() -> None:
    assert [STARTING, RUNNING, PASSIVATING, STOPPING] == list(Lifecycle)


def test_a_startup_buffer_is_made_by_its_first_message_and_hands_them_back_in_order_once() -> None:
    first, second = ActorAddress("/A~a~1"), ActorAddress("/A~a~2")
    buffer = buffered(None, "a", first)
    assert buffered(buffer, "b", second) is buffer
    assert buffered(buffer, "c", first) is buffer
    replayed: list[tuple[object, ActorAddress]] = []
    buffer.replay(lambda message, sender: replayed.append((message, sender)))
    assert replayed == [("a", first), ("b", second), ("c", first)]
    buffer.replay(lambda message, sender: replayed.append((message, sender)))
    assert len(replayed) == 3


def test_a_message_held_again_while_replaying_waits_in_the_next_buffer() -> None:
    buffer = buffered(buffered(None, "a", ActorAddress("/A~a~1")), "b", ActorAddress("/A~a~1"))
    taken: list[object] = []
    later: list[StartupBuffer | None] = [None]

    def receive(message: object, sender: ActorAddress) -> None:  # as an actor that went back to STARTING
        later[0] = buffered(later[0], message, sender)

    buffer.replay(receive)
    assert later[0] is not None and later[0] is not buffer
    later[0].replay(lambda message, sender: taken.append(message))
    assert taken == ["a", "b"]


# -- the ChannelActor ----------------------------------------------------------------------------------------


class LoneChannel:
    """A ChannelActor in no Supervisor's routes, with a Timer of its own on the harness's fake time."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        assert h.fake is not None
        self.timer = h.asys.createActor(Timer)
        h.asys.tell(self.timer, TimerConfig(h.fake.clock, h.fake))
        self.address = h.asys.createActor(ChannelActor)
        self.actor: ChannelActor = instance_of(h, self.address)
        self.test = lean_base(h.asys).external_address()

    def init_message(self, processor: ActorAddress | None) -> ChannelInit:
        assert self.h.fake is not None
        return ChannelInit(CHANNEL, BatchSettings(batching=False), self.timer, processor, IDLE,
                           clock=self.h.fake.clock)

    def init(self, processor: ActorAddress) -> None:
        self.h.asys.tell(self.address, self.init_message(processor))

    def enqueue(self, text: str, ack: bool = False) -> None:
        assert self.h.fake is not None
        stamped = EnqueueStamped((message(CHANNEL, text),), (self.h.fake.now,), self.test if ack else None, ack)
        self.h.asys.tell(self.address, stamped)


def test_a_channel_is_starting_until_channel_init_and_then_handles_what_came_early_in_order(h: Harness) -> None:
    lone = LoneChannel(h)
    processor = h.processor()
    assert lone.actor.lifecycle is STARTING
    lone.enqueue("1")
    lone.enqueue("2", ack=True)
    h.let_pass(0)  # nothing is answered while it starts
    assert lone.actor.lifecycle is STARTING
    lone.init(processor)
    assert lone.actor.lifecycle is RUNNING
    assert h.listen_for(Enqueued) == Enqueued(1)
    assert [texts(event) for event in h.wait_for(processor, 2)] == [["1"], ["2"]]
    assert lone.actor._startup is None  # let go of once replayed


def test_a_second_channel_init_is_refused_naming_the_state(h: Harness) -> None:
    lone = LoneChannel(h)
    processor = h.processor()
    lone.init(processor)
    with pytest.raises(ProtocolViolation, match="^ChannelInit for channel 'life' while running$"):
        lone.actor.receiveMsg_ChannelInit(lone.init_message(processor), lone.test)
    assert lone.actor.lifecycle is RUNNING


def test_a_channel_is_passivating_from_its_offer_until_a_message_from_the_supervisor_voids_it(h: Harness) -> None:
    lone = LoneChannel(h)
    processor = h.processor()
    lone.init(processor)
    lone.enqueue("1")
    h.wait_for(processor, 1)
    assert lone.actor.lifecycle is RUNNING and lone.actor._startup is None  # it started in order: no buffer
    offer = h.listen_for(Passivate, timeout=2 * IDLE)
    assert (offer.channel_id, offer.received, offer.processed) == (CHANNEL, 2, 1)  # ChannelInit, one enqueue
    assert lone.actor.lifecycle is PASSIVATING

    h.asys.tell(lone.address, Wake(0.0, WakeKind.DEADLINE))  # a stale wake from the Timer: not the Supervisor
    assert lone.actor.lifecycle is PASSIVATING

    h.asys.tell(lone.address, Routed(GetStatistics(CHANNEL), lone.test))  # a query from the Supervisor
    assert lone.actor.lifecycle is RUNNING
    assert h.listen_for(Statistics).channels[0].processed == 1
    offer = h.listen_for(Passivate, timeout=2 * IDLE)
    assert offer.received == 3 and lone.actor.lifecycle is PASSIVATING

    lone.enqueue("2")  # a message after the offer
    assert lone.actor.lifecycle is RUNNING
    assert [texts(event) for event in h.wait_for(processor, 2)] == [["1"], ["2"]]
    offer = h.listen_for(Passivate, timeout=2 * IDLE)
    assert (offer.received, offer.processed) == (4, 2) and lone.actor.lifecycle is PASSIVATING


def test_a_channel_is_passivating_while_its_offer_waits_for_its_ids_to_be_stored(h: Harness) -> None:
    # The test is also the channel's RedisPersistence. The channel was handed an id by its earlier actor: the
    # stored list may hold more, so it is rewritten before the offer goes out (a Persist that carries it).
    lone = LoneChannel(h)
    assert h.fake is not None
    init = replace(lone.init_message(processor=None), persistence=lone.test, remembered=(("m-1", h.fake.now),))
    h.asys.tell(lone.address, init)
    rewrite = h.listen_for(Persist, timeout=2 * IDLE)
    assert [type(op) for op in rewrite.ops] == [ReplaceIds] and rewrite.seq == 1  # the offer waits for it
    assert lone.actor.lifecycle is PASSIVATING  # although the offer has not gone out yet

    h.asys.tell(lone.address, Routed(GetStatistics(CHANNEL), lone.test))
    assert lone.actor.lifecycle is RUNNING
    answer = h.listen_for(Persist)  # the reply waits to be durable like any other
    assert (answer.ops, answer.seq) == ((), 2)
    h.asys.tell(lone.address, Durable(rewrite.seq))
    offer = h.listen_for(Passivate)  # out at last, and void: the Supervisor has sent more since
    assert offer.received == 1
    assert lone.actor.lifecycle is RUNNING
    h.asys.tell(lone.address, Durable(answer.seq))
    assert isinstance(h.listen_for(Statistics), Statistics)

    offer = h.listen_for(Passivate, timeout=2 * IDLE)  # the stored list is exact now: offered at once
    assert offer.received == 2 and lone.actor.lifecycle is PASSIVATING


# -- the Supervisor ------------------------------------------------------------------------------------------


class SupervisorWithTestStore(Supervisor):
    """A Supervisor whose RedisPersistence is whoever configured it."""

    def receiveMsg_ConfigureSystem(self, msg: ConfigureSystem, sender: ActorAddress) -> None:
        self.store = sender
        super().receiveMsg_ConfigureSystem(msg, sender)

    def createActor(self, actorClass: Any, *args: Any, **kwargs: Any) -> ActorAddress:
        if actorClass is RedisPersistence:
            return self.store
        return super().createActor(actorClass, *args, **kwargs)


def configure(h: Harness, redis_url: str = STORE_URL) -> ConfigureSystem:
    assert h.fake is not None
    return ConfigureSystem(BatchSettings(batching=False), IDLE, redis_url, clock=h.fake.clock, alarm=h.fake)


def start_restoring(h: Harness) -> tuple[ActorAddress, SupervisorWithTestStore]:
    """A SupervisorWithTestStore that was configured to persist and asked its store to open."""
    address = h.asys.createActor(SupervisorWithTestStore)
    supervisor: SupervisorWithTestStore = instance_of(h, address)
    assert supervisor.lifecycle is RUNNING
    h.asys.tell(address, configure(h))
    assert h.listen_for(OpenStore).url == STORE_URL
    assert supervisor.lifecycle is STARTING
    return address, supervisor


def end_restore(h: Harness, address: ActorAddress) -> None:
    """Answer as the store: opened, and no channel stored."""
    h.asys.tell(address, StoreOpened())
    h.listen_for(LoadChannels)
    h.asys.tell(address, ChannelsLoaded(()))


def replies(h: Harness, count: int) -> list[object]:
    return [h.listen_for(object) for _ in range(count)]


def test_the_supervisor_holds_commands_while_the_store_loads_and_replays_them_in_order(h: Harness) -> None:
    address, supervisor = start_restoring(h)
    h.asys.tell(address, StartProcessing("a"))
    h.asys.tell(address, GetStatistics())
    h.asys.tell(address, StartProcessing("b"))
    h.let_pass(0)  # nothing answered yet
    h.asys.tell(address, StoreOpened())
    h.listen_for(LoadChannels)
    assert supervisor.lifecycle is STARTING
    h.asys.tell(address, ChannelsLoaded(()))
    assert supervisor.lifecycle is RUNNING
    # the launcher hears first that the restore is over
    assert replies(h, 4) == [SystemConfigured(0), ProcessingStarted("a"), Statistics(()), ProcessingStarted("b")]
    assert supervisor._startup is None


def test_a_replayed_configure_system_makes_the_rest_wait_for_its_own_restore(h: Harness) -> None:
    address, supervisor = start_restoring(h)
    h.asys.tell(address, StartProcessing("a"))
    h.asys.tell(address, configure(h))
    h.asys.tell(address, StartProcessing("b"))
    end_restore(h, address)
    assert replies(h, 3) == [SystemConfigured(0), ProcessingStarted("a"), OpenStore(STORE_URL)]
    assert supervisor.lifecycle is STARTING
    end_restore(h, address)
    assert replies(h, 2) == [SystemConfigured(0), ProcessingStarted("b")]
    assert supervisor.lifecycle is RUNNING


def test_a_restore_that_ends_while_running_is_refused_naming_the_state(h: Harness) -> None:
    supervisor: Supervisor = instance_of(h, h.supervisor)
    with pytest.raises(ProtocolViolation, match="^ChannelsLoaded while running: no restore is under way$"):
        supervisor.receiveMsg_ChannelsLoaded(ChannelsLoaded(()), h.supervisor)
    assert supervisor.lifecycle is RUNNING


def test_a_supervisor_asked_to_exit_is_stopping_and_the_exit_of_a_channel_is_no_error(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    address = h.asys.createActor(Supervisor)
    supervisor: Supervisor = instance_of(h, address)
    h.asys.tell(address, configure(h, redis_url=""))
    assert h.listen_for(SystemConfigured) == SystemConfigured(0)
    processor = h.processor()
    h.asys.tell(address, StartProcessing("", processor))
    h.listen_for(ProcessingStarted)
    h.asys.tell(address, Enqueue(message(CHANNEL, "1")))
    h.wait_for(processor, 1)
    channel = supervisor._routes[CHANNEL].address
    with caplog.at_level(logging.ERROR, logger="actors.supervisor"):
        h.asys.tell(address, ActorExitRequest())
        assert supervisor.lifecycle is STOPPING
        supervisor.receiveMsg_ChildActorExited(ChildActorExited(channel), address)
    assert CHANNEL in supervisor._routes  # not dropped as a channel that died
    assert caplog.records == []
