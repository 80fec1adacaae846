"""Passivation at scale: many channels go idle, passivate and come back with their counters; the Supervisor
finds an exited channel actor by its address; nothing is left behind for a passivated channel but its
counters (and not even those when they are all zero).

Integration tests run real actors on simpleSystemBase and wait through ``ask`` and ``listen``; the unit tests
call the Supervisor's ``ChildActorExited`` handler directly."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

import pytest
from actor_support import DONE, FAIL, HOLD, Behave, Behaving, Recorded, RecordingProcessor, WaitFor
from thespian.actors import ActorAddress, ActorExitRequest, ChildActorExited

from actors.supervisor import Supervisor
from actors.system import SIMPLE_BASE, RunningSystem, start_system
from protocol.messages import (
    CancelCurrent,
    Cancelled,
    ChannelStopped,
    Clear,
    Cleared,
    Enqueue,
    EnqueueMany,
    GetStatistics,
    ProcessingStarted,
    StartProcessing,
    Statistics,
    StopChannel,
)
from protocol.values import BatchSettings, ChannelStatistics, QueuedMessage

TIMEOUT = 30.0
IDLE = 0.2
CHANNELS = 2000


def message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text)


def with_id(channel: str, text: str, message_id: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text, message_id=message_id)


class Node:
    """A simple-base system whose channels passivate after ``IDLE`` seconds, with a recording processor."""

    def __init__(self, running: RunningSystem) -> None:
        self.running = running
        self.asys = running.asys
        self.processor = self.asys.createActor(RecordingProcessor)
        self.ask(StartProcessing(processor=self.processor), ProcessingStarted)

    def ask(self, command: object, expected: type) -> Any:
        reply = self.asys.ask(self.running.supervisor, command, TIMEOUT)
        assert isinstance(reply, expected), reply
        return reply

    def tell(self, command: object) -> None:
        self.asys.tell(self.running.supervisor, command)

    def enqueue(self, channels: list[str], text: str) -> None:
        for start in range(0, len(channels), 500):
            self.tell(EnqueueMany(tuple(message(c, text) for c in channels[start : start + 500])))

    def behave(self, mode: str) -> None:
        assert isinstance(self.asys.ask(self.processor, Behave(mode), TIMEOUT), Behaving)

    def wait_for(self, count: int) -> Recorded:
        recorded = self.asys.ask(self.processor, WaitFor(count=count), TIMEOUT)
        assert isinstance(recorded, Recorded), f"fewer than {count} deliveries within {TIMEOUT} s"
        return recorded

    def stats(self, channel: str) -> ChannelStatistics:
        (snapshot,) = self.ask(GetStatistics(channel), Statistics).channels
        assert isinstance(snapshot, ChannelStatistics)
        return snapshot

    def live(self) -> tuple[ChannelStatistics, ...]:
        return self.ask(GetStatistics(), Statistics).channels  # type: ignore[no-any-return]

    def eventually(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached within {TIMEOUT} s")
            self.asys.listen(0.05)  # the simple base runs due timers only inside listen and ask

    @property
    def supervisor(self) -> Supervisor:
        """The Supervisor object itself (the simple base runs it in this process)."""
        ref = self.asys._systemBase.actorRegistry[self.running.supervisor.actorAddressString]
        instance = ref.instance
        assert isinstance(instance, Supervisor)
        return instance


@pytest.fixture
def node() -> Iterator[Node]:
    running = start_system(SIMPLE_BASE, BatchSettings(batching=False), idle_timeout=IDLE)
    try:
        yield Node(running)
    finally:
        running.shutdown()


# -- many channels ----------------------------------------------------------------------------------------


def test_two_thousand_channels_passivate_and_come_back_with_their_counters(node: Node) -> None:
    channels = [f"many:{n:04d}" for n in range(CHANNELS)]
    registry = node.asys._systemBase.actorRegistry
    node.ask(GetStatistics("many:0000"), Statistics)
    entries_before = len(registry)
    node.enqueue(channels, "1")
    node.wait_for(CHANNELS)
    node.eventually(lambda: node.live() == (), "every channel passivated")

    assert all(node.stats(c) == ChannelStatistics(c, 0, 0, False, 1, 0, 0, True, attempts=1) for c in channels)
    timer = 1  # the Supervisor's one other child, created with the first channel
    assert len(registry) == entries_before + timer, "the base kept entries of exited channel actors"
    children = registry[node.running.supervisor.actorAddressString]._yung
    assert len(children) == timer, "the base still lists exited channel actors as the Supervisor's children"

    node.enqueue(channels, "2")
    node.wait_for(2 * CHANNELS)
    # re-spawned, each counted on from where it stopped (live, or passivated again by now: the same answer)
    assert [c for c in channels if node.stats(c).processed != 2] == []


def test_channels_with_message_ids_passivate_and_the_supervisor_forgets_the_ids_once_they_expire() -> None:
    ttl = 2.0
    node = Node(start_system(SIMPLE_BASE, BatchSettings(batching=False, dedupe_ttl=ttl), idle_timeout=IDLE))
    try:
        channels = [f"ids:{n:03d}" for n in range(300)]
        sent = time.monotonic()
        for start in range(0, len(channels), 100):
            node.tell(EnqueueMany(tuple(with_id(c, "1", f"{c}/m1") for c in channels[start : start + 100])))
        node.wait_for(len(channels))
        node.eventually(lambda: node.live() == (), "every channel passivated, its id unexpired")
        kept = node.supervisor._remembered
        assert time.monotonic() - sent < ttl, "too slow to see the ids before they expire"
        assert (len(kept), kept.ids) == (300, 300)
        # a duplicate re-spawns its channel, which drops it: it got its id back
        node.tell(Enqueue(with_id("ids:000", "1 (retry)", "ids:000/m1")))
        assert node.stats("ids:000").duplicates == 1
        assert (len(kept), kept.ids) == (299, 299)
        # the Supervisor's timer wake drops the rest once expired, with no message coming
        node.eventually(lambda: len(kept) == 0, "the expired ids forgotten")
        assert kept.ids == 0
        assert time.monotonic() - sent >= ttl
        node.tell(Enqueue(with_id("ids:001", "1 (after expiry)", "ids:001/m1")))
        node.wait_for(len(channels) + 1)
        assert node.stats("ids:001").duplicates == 0
    finally:
        node.running.shutdown()


def test_cancelled_and_failed_counts_survive_passivation(node: Node) -> None:
    node.behave(FAIL)
    node.tell(Enqueue(message("fails", "x")))
    node.wait_for(1)
    node.behave(HOLD)
    node.tell(Enqueue(message("cancels", "y")))
    node.wait_for(2)
    assert node.ask(CancelCurrent("cancels"), Cancelled).cancelled
    node.eventually(lambda: node.live() == (), "both channels passivated")
    # a failure is processed
    assert node.stats("fails") == ChannelStatistics("fails", 0, 0, False, 1, 0, 1, True, attempts=1)
    assert node.stats("cancels") == ChannelStatistics("cancels", 0, 0, False, 0, 1, 0, True, attempts=1)

    node.behave(DONE)
    node.tell(Enqueue(message("fails", "z")))
    node.wait_for(3)
    node.eventually(lambda: node.stats("fails").processed == 2, "the re-spawned channel processed its item")
    assert node.stats("fails") == ChannelStatistics("fails", 0, 0, False, 2, 0, 1, True, attempts=2)


def test_a_channel_that_counted_nothing_keeps_no_record_once_passivated(node: Node) -> None:
    node.ask(StopChannel("quiet"), ChannelStopped)  # no processor: its message waits, then is cleared
    node.tell(Enqueue(message("quiet", "never delivered")))
    assert node.ask(Clear("quiet"), Cleared).removed == 1
    node.eventually(lambda: node.live() == (), "the channel passivated")
    assert node.supervisor._records.counters("quiet") is None
    assert node.stats("quiet") == ChannelStatistics("quiet", 0, 0, False, 0, 0, 0, False)


def test_a_channel_actor_that_exits_unexpectedly_is_dropped_and_comes_back_on_the_next_message(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    node.tell(Enqueue(message("doomed", "1")))
    node.tell(Enqueue(message("kept", "1")))
    node.wait_for(2)
    doomed = node.supervisor._routes["doomed"].address
    with caplog.at_level(logging.ERROR, logger="actors.supervisor"):
        node.asys.tell(doomed, ActorExitRequest())
        node.eventually(lambda: [s.channel_id for s in node.live()] == ["kept"], "the exited channel dropped")
    assert any("'doomed' exited unexpectedly" in r.getMessage() for r in caplog.records)
    node.tell(Enqueue(message("doomed", "2")))
    node.wait_for(3)
    assert sorted(s.channel_id for s in node.live()) == ["doomed", "kept"]


# -- the Supervisor's lookup of an exited actor, unit level ------------------------------------------------


@pytest.fixture
def supervisor() -> Supervisor:
    return Supervisor()  # not in a system: only handlers that send nothing may run


def test_an_exited_channel_actor_is_found_by_its_address(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(1000):
        supervisor._add_route(f"c{n}", ActorAddress(f"/A~a~{n}"))
    with caplog.at_level(logging.ERROR, logger="actors.supervisor"):
        # an equal address, not the same object: as a message that crossed the system carries it
        supervisor.receiveMsg_ChildActorExited(ChildActorExited(ActorAddress("/A~a~500")), ActorAddress("sys"))
    assert "c500" not in supervisor._routes and len(supervisor._routes) == 999
    assert "/A~a~500" not in supervisor._channel_of_actor and len(supervisor._channel_of_actor) == 999
    assert [r.getMessage() for r in caplog.records] == [
        "ChannelActor of 'c500' exited unexpectedly; its in-memory work is lost"
    ]


def test_the_exit_of_a_passivated_channels_actor_changes_nothing(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor._add_route("live", ActorAddress("/A~a~1"))
    supervisor._add_route("idle", ActorAddress("/A~a~2"))
    supervisor._drop_route("idle")  # what Passivate does before it asks the actor to exit
    with caplog.at_level(logging.ERROR, logger="actors.supervisor"):
        supervisor.receiveMsg_ChildActorExited(ChildActorExited(ActorAddress("/A~a~2")), ActorAddress("sys"))
    assert list(supervisor._routes) == ["live"] and supervisor._channel_of_actor == {"/A~a~1": "live"}
    assert caplog.records == []


def test_addresses_without_a_stable_string_are_compared_with_every_live_route(supervisor: Supervisor) -> None:
    # as on the TCP base, where an address's details are an object, not the string that names it
    supervisor._add_route("c1", ActorAddress(("127.0.0.1", 5001)))
    supervisor._add_route("c2", ActorAddress(("127.0.0.1", 5002)))
    exited = ChildActorExited(ActorAddress(("127.0.0.1", 5002)))
    supervisor.receiveMsg_ChildActorExited(exited, ActorAddress("sys"))
    assert list(supervisor._routes) == ["c1"] and supervisor._channel_of_actor == {}
