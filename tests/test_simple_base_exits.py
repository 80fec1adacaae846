"""The lean simple base forgets an exited actor in O(1): its parent's children collection drops it by key, its
registry entry goes once the parent was told, and reference counting frees it (no cycle left for the
garbage collector). Real actors on simpleSystemBase."""

from __future__ import annotations

import gc
import weakref
from typing import Any, Iterator

import pytest
from thespian.actors import Actor, ActorAddress, ActorExitRequest, ActorSystem, ChildActorExited

from actors import thespian_compat as simple_base
from actors.thespian_compat import _Children

TIMEOUT = 5.0


class Parent(Actor):  # type: ignore[misc]
    """("spawn", n): creates n children, answers their addresses; ("end", address): asks it to exit, answers
    once its ChildActorExited arrived; "children": answers the addresses it was told exited, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.exited: list[Any] = []
        self.waiting: tuple[Any, Any] | None = None

    def receiveMessage(self, msg: object, sender: Any) -> None:
        if isinstance(msg, tuple) and msg[0] == "spawn":
            self.send(sender, [self.createActor(Child) for _ in range(msg[1])])
        elif isinstance(msg, tuple) and msg[0] == "end":
            self.waiting = (msg[1], sender)
            self.send(msg[1], ActorExitRequest())
        elif isinstance(msg, ChildActorExited):
            self.exited.append(msg.childAddress)
            if self.waiting is not None and self.waiting[0] == msg.childAddress:
                self.send(self.waiting[1], "ended")
                self.waiting = None
        elif msg == "exited":
            self.send(sender, list(self.exited))


class Child(Actor):  # type: ignore[misc]
    def receiveMessage(self, msg: object, sender: Any) -> None:
        if msg == "ping":
            self.send(sender, "pong")


@pytest.fixture
def asys() -> Iterator[ActorSystem]:
    system = ActorSystem("simpleSystemBase", logDefs=False, transientUnique=True)
    try:
        assert simple_base.install(system)
        yield system
    finally:
        system.shutdown()


def ref_of(asys: ActorSystem, address: ActorAddress) -> Any:
    return asys._systemBase.actorRegistry.get(address.actorAddressString)


def test_exited_children_leave_neither_a_child_entry_nor_a_registry_entry(asys: ActorSystem) -> None:
    parent = asys.createActor(Parent)
    children = asys.ask(parent, ("spawn", 300), TIMEOUT)
    registry = asys._systemBase.actorRegistry
    entries = len(registry)
    assert isinstance(ref_of(asys, parent)._yung, _Children) and len(ref_of(asys, parent)._yung) == 300
    for child in children[::2]:
        assert asys.ask(parent, ("end", child), TIMEOUT) == "ended"
    assert len(registry) == entries - 150
    assert all(ref_of(asys, child) is None for child in children[::2])
    assert list(ref_of(asys, parent)._yung) == children[1::2]  # the others, in creation order
    assert asys.ask(children[1], "ping", TIMEOUT) == "pong"
    assert asys.ask(children[0], "ping", 0.1) is None  # exited: a dead letter, as before
    assert asys.ask(parent, "exited", TIMEOUT) == children[::2]


def test_an_exited_actor_is_freed_without_the_garbage_collector(asys: ActorSystem) -> None:
    parent = asys.createActor(Parent)
    (child,) = asys.ask(parent, ("spawn", 1), TIMEOUT)
    instance = weakref.ref(ref_of(asys, child).instance)
    gc.disable()
    try:
        assert asys.ask(parent, ("end", child), TIMEOUT) == "ended"
        assert instance() is None, "the exited actor is still alive: held by a reference cycle"
    finally:
        gc.enable()


def test_a_child_that_exits_while_its_parent_lives_on_still_lets_the_parent_exit_with_its_others(
    asys: ActorSystem,
) -> None:
    parent = asys.createActor(Parent)
    first, second = asys.ask(parent, ("spawn", 2), TIMEOUT)
    assert asys.ask(parent, ("end", first), TIMEOUT) == "ended"
    asys.tell(parent, ActorExitRequest())
    assert asys.ask(second, "ping", 0.1) is None  # the parent's exit took its remaining child with it
    assert ref_of(asys, second) is None and ref_of(asys, parent) is None


def test_children_behave_as_the_list_the_base_uses() -> None:
    addresses = [ActorAddress(f"/A~a~{n}") for n in range(5)]
    children = _Children(addresses[:4])
    children.append(addresses[4])
    assert list(children) == addresses and len(children) == 5
    del children[children.index(ActorAddress("/A~a~2"))]  # what the base does on ChildActorExited
    assert list(children) == [addresses[i] for i in (0, 1, 3, 4)]
    assert addresses[3] in children and addresses[2] not in children
    with pytest.raises(ValueError, match="is not a child"):
        children.index(addresses[2])
    children.remove(addresses[0])
    children.remove(addresses[0])  # removeChild of one that is gone: nothing happens
    assert list(children) == [addresses[i] for i in (1, 3, 4)]
    for child in children:  # iterating while a child is added does not break
        children.append(ActorAddress(f"/A~b~{child.actorAddressString}"))
    assert len(children) == 6
