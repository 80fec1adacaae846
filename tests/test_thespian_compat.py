"""The contract between actors/thespian_compat.py and Thespian: every internal it uses, with the shape it needs.

When a Thespian upgrade changes one of them, a test here fails naming it; the module is the one place to adapt.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import queue
from pathlib import Path
from typing import Any, Iterator

import pytest
from thespian.actors import ActorAddress, ActorSystem, WakeupMessage
from thespian.system import simpleSystemBase, timing
from thespian.system.transport import TCPTransport

from actors import thespian_compat
from actors.thespian_compat import LeanSimpleBase, ThespianChanged

PINNED = "4.0.1"


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    asys = ActorSystem("simpleSystemBase", {}, logDefs={"version": 1, "disable_existing_loggers": False},
                       transientUnique=True)
    try:
        yield asys
    finally:
        asys.shutdown()


def test_the_installed_thespian_is_the_pinned_version() -> None:
    assert importlib.metadata.version("thespian") == PINNED
    setup = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert f"thespian=={PINNED}" in setup


def test_the_simple_base_has_the_methods_the_lean_loop_replaces_or_calls() -> None:
    base = simpleSystemBase.ActorSystemBase
    expected = {
        "_realizeWakeups": ["self"],
        "_runSends": ["self", "timeout", "stop_on_available"],
        "_runSingleSend": ["self", "ps"],
        "_callActorWithMessage": ["self", "tgt", "ps", "msg", "sndr"],
        "actor_send": ["self", "fromActor", "toActor", "msg"],
        "external_clone": ["self"],
        "_killActor": ["self", "tgt", "ps"],
        "_newRefAndActor": [
            "self", "actorSystem", "parentAddr", "actorAddr", "actorClass", "sourceHash",
            "targetActorRequirements", "isTopLevel",
        ],
    }
    for name, params in expected.items():
        assert parameters(getattr(base, name)) == params, name


def test_a_started_simple_base_has_the_state_the_lean_loop_reads(system: ActorSystem) -> None:
    base = system._systemBase
    assert type(base) is simpleSystemBase.ActorSystemBase
    assert isinstance(base._wakeUps, list)
    assert isinstance(base._pendingSends, list)
    assert isinstance(base.procLimit, int)
    assert hasattr(base._private_lock, "acquire")
    assert isinstance(base.system.systemAddress, ActorAddress)
    external = base.actorRegistry["System:ExternalRequester"]
    assert isinstance(external.instance, simpleSystemBase.External)
    for ref in base.actorRegistry.values():
        assert type(ref) is simpleSystemBase.ActorRef and isinstance(ref._yung, list)


def test_actor_refs_pending_sends_and_addresses_have_the_fields_used() -> None:
    assert parameters(simpleSystemBase.ActorRef.__init__) == [
        "self", "actorSystem", "parentAddr", "addr", "inst", "mySourceHash",
    ]
    send = simpleSystemBase.PendingSend("from", "msg", "to")
    assert (send.sender, send.msg, send.toActor, send.attempts) == ("from", "msg", "to", 0)
    assert ActorAddress("System:x")._aaddr == "System:x"
    assert callable(simpleSystemBase.actor_base_receive)
    wakeup = WakeupMessage(1.0, "payload")
    assert (wakeup.delayPeriod, wakeup.payload) == (1.0, "payload")
    timer = timing.ExpirationTimer(timing.timedelta(seconds=1))
    assert isinstance(timer._time_to_quit, float) and callable(timing.currentTime)


def test_private_endpoints_have_the_inbox_the_thread_driver_reads(system: ActorSystem) -> None:
    clone = system._systemBase.external_clone()
    try:
        assert isinstance(clone.my_instance.rcvq, queue.Queue)
        assert callable(clone.tell)
    finally:
        clone.exit_context()


def test_the_tcp_transport_has_what_the_socket_fix_wraps() -> None:
    assert callable(TCPTransport.TCPTransport.close)
    assert callable(TCPTransport._safeSocketShutdown)
    assert "_openSockets" in inspect.getsource(TCPTransport.TCPTransport)


def test_install_switches_a_simple_base_and_refuses_one_of_another_shape(system: ActorSystem) -> None:
    base = thespian_compat.lean_base(system)
    assert type(base) is LeanSimpleBase
    assert thespian_compat.install(system)  # idempotent

    other = ActorSystem("simpleSystemBase", {}, logDefs={"version": 1, "disable_existing_loggers": False},
                        transientUnique=True)
    try:
        del other._systemBase._wakeUps  # a base missing state the lean loop needs
        with pytest.raises(ThespianChanged, match="_wakeUps"):
            thespian_compat.install(other)
    finally:
        other._systemBase._wakeUps = []
        other.shutdown()
