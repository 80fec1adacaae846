"""The leaner message loop of actors.thespian_compat keeps the simple base's semantics: failures are retried and
end as PoisonMessage, system messages and wakeups behave as before, dead targets swallow messages."""

from __future__ import annotations

from datetime import timedelta
from typing import Iterator

import pytest
from thespian.actors import Actor, ActorExitRequest, ActorSystem, PoisonMessage, WakeupMessage
from thespian.system import simpleSystemBase

from actors import thespian_compat as simple_base
from actors.thespian_compat import LeanSimpleBase

TIMEOUT = 5.0


class Flaky(Actor):  # type: ignore[misc]
    """Fails ``fail`` times on every "work" message, then answers with how many attempts it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0
        self.fail = 0

    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, tuple) and msg[0] == "fail":
            self.fail = msg[1]
            self.send(sender, "ok")
        elif msg == "work":
            self.attempts += 1
            if self.attempts <= self.fail:
                raise RuntimeError(f"attempt {self.attempts} fails")
            self.send(sender, ("done", self.attempts))
        elif msg == "wake":
            self.wakeupAfter(timedelta(milliseconds=30), payload=sender)
        elif isinstance(msg, WakeupMessage):
            self.send(msg.payload, "woke")
        elif isinstance(msg, ActorExitRequest):
            pass


@pytest.fixture(params=["stock", "lean"])
def asys(request: pytest.FixtureRequest) -> Iterator[ActorSystem]:
    system = ActorSystem("simpleSystemBase", logDefs=False, transientUnique=True)
    try:
        if request.param == "lean":
            assert simple_base.install(system)
            assert type(system._systemBase) is LeanSimpleBase
        else:
            assert type(system._systemBase) is simpleSystemBase.ActorSystemBase
        yield system
    finally:
        system.shutdown()


def flaky(asys: ActorSystem, fail: int) -> object:
    actor = asys.createActor(Flaky)
    assert asys.ask(actor, ("fail", fail), TIMEOUT) == "ok"
    return actor


def test_a_message_that_fails_once_is_delivered_again(asys: ActorSystem) -> None:
    actor = flaky(asys, 1)
    assert asys.ask(actor, "work", TIMEOUT) == ("done", 2)


def test_a_message_that_keeps_failing_comes_back_to_its_sender_as_poison(asys: ActorSystem) -> None:
    actor = flaky(asys, 3)
    reply = asys.ask(actor, "work", TIMEOUT)
    assert isinstance(reply, PoisonMessage)
    assert reply.poisonMessage == "work"
    assert asys.ask(actor, "work", TIMEOUT) == ("done", 4)  # three attempts failed, the next one is fine


def test_a_wakeup_fires_once_it_is_due(asys: ActorSystem) -> None:
    actor = flaky(asys, 0)
    assert asys.ask(actor, "wake", TIMEOUT) == "woke"


def test_messages_to_an_exited_actor_are_dropped(asys: ActorSystem) -> None:
    actor = flaky(asys, 0)
    asys.tell(actor, ActorExitRequest())
    asys.tell(actor, "work")  # nobody there: dropped, nothing raised
    assert asys.ask(actor, "work", 0.1) is None


class Recorder(Actor):  # type: ignore[misc]
    """Fans ("fan", n, target) out as n numbered sends to ``target``; records numbers; answers "list"."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, tuple) and msg[0] == "fan":
            for i in range(msg[1]):
                self.send(msg[2], i)
        elif isinstance(msg, int):
            self.seen.append(msg)
        elif msg == "list":
            self.send(sender, list(self.seen))


def test_a_long_run_of_sends_is_delivered_in_order(asys: ActorSystem) -> None:
    source, sink = asys.createActor(Recorder), asys.createActor(Recorder)
    asys.tell(source, ("fan", 5000, sink))
    assert asys.ask(sink, "list", TIMEOUT) == list(range(5000))


def test_install_leaves_other_bases_alone() -> None:
    class NotSimple:
        _systemBase = object()

    assert simple_base.install(NotSimple()) is False
    assert simple_base.install(object()) is False


def test_the_pending_sends_pop_like_a_list() -> None:
    pending = simple_base._PendingSends([1, 2, 3, 4])
    assert pending.pop(0) == 1  # what the simple base's send loop calls
    assert pending.pop() == 4
    assert pending.pop(1) == 3
    assert list(pending) == [2]
