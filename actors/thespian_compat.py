"""Every use of Thespian's internals, in one module, written against the Thespian version pinned in setup.cfg
(``thespian==4.0.1``). ``tests/test_thespian_compat.py`` checks the shape of each internal used here and fails
loudly, naming it, when an upgrade changes one: upgrading Thespian means reading this module and that test.

What it holds:

* :class:`LeanSimpleBase`, a leaner message loop for the simple base, and :func:`install`, which switches a
  started simple-base system to it (raising :class:`ThespianChanged` if the base is not what it expects);
* the small API the drivers run the system through (:meth:`LeanSimpleBase.send`, :meth:`~LeanSimpleBase.run_one`,
  :meth:`~LeanSimpleBase.realize_wakeups`, :meth:`~LeanSimpleBase.next_wakeup_in`,
  :meth:`~LeanSimpleBase.add_endpoint`, :meth:`~LeanSimpleBase.take_responses`, ...);
* :func:`close_tcp_sockets_on_close`, a fix to the TCP transport's ``close``.

The lean loop. Thespian's simple base spends about 8 µs on every send between two actors that do nothing
(measured on these machines, Thespian 4.0): for each message it partitions the whole wakeup list, runs
``logging.getLogger`` to log at debug level, and checks the message against half a dozen system types; it
takes each pending send with ``list.pop(0)``, which moves the whole list (thousands of entries when the
Timer wakes every channel at once); and it inspects the signature of an actor's class on every spawn.

* ``_realizeWakeups`` returns at once unless some pending wakeup has expired (a scan of expiry times,
  without building new lists); otherwise it runs the original.
* ``_runSingleSend`` hands an ordinary message (not an ``ActorSystemMessage``) on its first attempt
  straight to the target's ``receiveMessage``, with the original's failure handling: the failure is logged,
  the attempt counted and the message queued again, so a second failure still becomes a ``PoisonMessage``
  through the original path. System messages (exit requests, child exits, wakeups, poison, dead letters,
  status), retries and unknown targets all take the original path.
* ``actor_send`` queues a slotted object without taking the base's lock; pending sends are a deque.
* A spawn of a plain actor class (no requirements, a no-argument ``__init__``) skips the signature inspection.

The same send then costs about 3 µs, and a long run of pending sends no longer takes quadratic time.

It also keeps the base's bookkeeping of actors that exit in O(1) each, so that channels can come and go by
the hundred thousand (see ``_Children``, ``_killActor`` and ``_forget_exited``): the original finds an exited
child in its parent's list of children with ``list.index`` (a scan of every live sibling, per exit), keeps a
registry entry for every actor that ever exited, and leaves each exited actor in a reference cycle with its
bound ``_receive`` and its ``ActorRef``, so that only a full collection of the garbage collector frees it
(pauses of 150-240 ms with 20,000 channels passivating).
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import time
import traceback
import types
from collections import deque
from typing import Any, Callable

from thespian.actors import ActorAddress, ActorSystemMessage, ChildActorExited
from thespian.system import isInternalActorSystemMessage, simpleSystemBase
from thespian.system.timing import currentTime

log = logging.getLogger(__name__)

_Original: Any = simpleSystemBase.ActorSystemBase


class _Send:
    """A pending send, as the base's ``PendingSend`` (same attributes), without a ``__dict__``: one object
    per send instead of two."""

    __slots__ = ("sender", "toActor", "msg", "attempts", "fail_details")

    def __init__(self, sender: Any, msg: Any, toActor: Any) -> None:
        self.sender = sender
        self.toActor = toActor
        self.msg = msg
        self.attempts = 0

    def __str__(self) -> str:
        return f"PendingSend(#{self.attempts} {self.sender} -> {self.toActor}: {self.msg})"


class _PendingSends(deque[Any]):
    """The base's pending sends, head first. Its ``_runSends`` takes each with ``pop(0)``: a list moves all the
    others each time (thousands when the Timer wakes every channel at once), this takes the head in O(1)."""

    def pop(self, index: int = -1) -> Any:
        if index == 0:
            return self.popleft()
        value = self[index]
        del self[index]
        return value


_REPLACED = (
    "_realizeWakeups", "_runSends", "_runSingleSend", "_callActorWithMessage", "actor_send", "external_clone",
)
_STATE = ("_wakeUps", "actorRegistry", "_private_lock", "_pendingSends", "procLimit", "system")


class _Children:
    """An actor's children, in creation order, for the simple base's ``ActorRef._yung`` list.

    The base appends each child, iterates the children, and removes an exited one with
    ``del children[children.index(address)]``: here each of those is O(1) per child, by the address's string
    (unique, never reused). ``index`` returns that string, which ``children[...]`` and ``del`` accept; as on a
    list, ``index`` of an address that is not there raises ``ValueError``.
    """

    __slots__ = ("_by_key",)

    def __init__(self, addresses: Any = ()) -> None:
        self._by_key: dict[str, Any] | None = None  # made with the first child: most actors never have one
        for address in addresses:
            self.append(address)

    def append(self, address: Any) -> None:
        if self._by_key is None:
            self._by_key = {}
        self._by_key[address.actorAddressString] = address

    def index(self, address: Any) -> str:
        key: str = address.actorAddressString
        if not self._by_key or key not in self._by_key:
            raise ValueError(f"{address} is not a child")
        return key

    def remove(self, address: Any) -> None:
        """Remove ``address``; nothing happens if it is not a child."""
        if self._by_key:
            self._by_key.pop(address.actorAddressString, None)

    def __getitem__(self, key: str) -> Any:
        if self._by_key is None:
            raise KeyError(key)
        return self._by_key[key]

    def __delitem__(self, key: str) -> None:
        if self._by_key is None:
            raise KeyError(key)
        del self._by_key[key]

    def __contains__(self, address: object) -> bool:
        by_key = self._by_key
        return by_key is not None and getattr(address, "actorAddressString", None) in by_key

    def __iter__(self) -> Any:
        return iter(list(self._by_key.values()) if self._by_key else [])  # a copy: a send may add a child

    def __len__(self) -> int:
        return len(self._by_key) if self._by_key else 0

    def __repr__(self) -> str:
        return f"_Children({list(self)!r})"


class _ActorRef(simpleSystemBase.ActorRef):  # type: ignore[misc]
    """The base's ``ActorRef`` whose ``removeChild`` takes one child out of its ``_Children`` in O(1) (the
    original builds a new list without it)."""

    def removeChild(self, childAddr: Any) -> None:
        self._yung.remove(childAddr)


def _track_children(ref: Any) -> None:
    """Give the base's actor reference ``ref`` a :class:`_Children` in place of its list of children."""
    if ref is not None and type(ref) is simpleSystemBase.ActorRef:
        ref._yung = _Children(ref._yung)
        ref.__class__ = _ActorRef


class ThespianChanged(RuntimeError):
    """An internal of Thespian this project relies on is not what the pinned version has."""


_EXTERNAL = "System:ExternalRequester"  # the simple base's endpoint of tell/ask/listen from outside


class LeanSimpleBase(_Original):  # type: ignore[misc]
    """``simpleSystemBase`` with a fast path for ordinary messages and for the no-wakeup-due case, and the
    API the drivers run it through."""

    # -- the drivers' API ---------------------------------------------------------------------------------

    def send(self, sender: ActorAddress, to: ActorAddress, msg: object) -> None:
        """Queue ``msg`` from ``sender`` to ``to``; nothing runs until the pending sends are run."""
        self._pendingSends.append(_Send(sender, msg, to))

    def run_pending(self, seconds: float | None = None) -> bool:
        """Run pending sends (and all they cause) for about ``seconds`` (None: until none is left); True when
        none is left. Wakeups are not realized here (see :meth:`realize_wakeups`)."""
        pending = self._pendingSends
        run_one = self._runSingleSend
        if seconds is None:
            while pending:
                run_one(pending.popleft())
            return True
        clock = time.perf_counter
        until = clock() + seconds
        count = 0
        while pending:
            run_one(pending.popleft())
            count += 1
            if count % 16 == 0 and clock() >= until:
                return not pending
        return True

    def realize_wakeups(self) -> None:
        """Queue a ``WakeupMessage`` for every Thespian wakeup that is due."""
        self._realizeWakeups()

    def next_wakeup_in(self) -> float | None:
        """Seconds until the earliest pending Thespian wakeup is due (None: none is pending)."""
        if not self._wakeUps:
            return None
        dues = [timer._time_to_quit for _, timer, _ in self._wakeUps if timer._time_to_quit is not None]
        return min(dues) - currentTime() if dues else None

    def add_endpoint(self, address: ActorAddress, receive: Callable[[object, ActorAddress], None]) -> None:
        """Register ``address`` as an actor whose every message (system ones included) goes to ``receive``."""
        system = self.system
        ref = simpleSystemBase.ActorRef(system, system.systemAddress, address, _Endpoint(receive))
        self.actorRegistry[address.actorAddressString] = ref

    def remove_endpoint(self, address: ActorAddress) -> None:
        self.actorRegistry.pop(address.actorAddressString, None)

    def external_address(self) -> ActorAddress:
        """The address of ``tell``/``ask`` from outside the system."""
        return self.actorRegistry[_EXTERNAL].address

    def take_responses(self) -> list[object]:
        """What actors sent the outside endpoint since the last call (system messages left out), in order,
        without a ``listen`` (and its send loop) per response. Valid once every pending send has run."""
        instance = self.actorRegistry[_EXTERNAL].instance
        responses = getattr(instance, "responses", None)
        if not responses:
            return []
        instance.responses = []
        return [r for r in responses if not isInternalActorSystemMessage(r)]

    def private_endpoint(self) -> PrivateEndpoint:
        """A new endpoint of its own (for one call's reply)."""
        return PrivateEndpoint(self.external_clone())

    def run_sends(self) -> None:
        """Run every pending send to completion (wakeups due meanwhile included), as ``tell`` does."""
        self._runSends()

    # -- the lean loop ------------------------------------------------------------------------------------

    def _realizeWakeups(self) -> None:
        wakeups = self._wakeUps
        if not wakeups:
            return
        now = currentTime()
        for _, timer, _ in wakeups:
            due = timer._time_to_quit
            if due is not None and due <= now:
                break
        else:
            return
        _Original._realizeWakeups(self)

    def actor_send(self, fromActor: Any, toActor: Any, msg: Any) -> None:
        # deque.append is atomic: no lock needed to queue a send (the original takes the base's RLock)
        self._pendingSends.append(_Send(fromActor, msg, toActor))

    def _runSingleSend(self, ps: Any) -> None:
        msg = ps.msg
        if ps.attempts == 0 and not isinstance(msg, ActorSystemMessage):
            key = ps.toActor._aaddr  # the simple base's addresses are strings: actorAddressString without the call
            target = self.actorRegistry.get(key if type(key) is str else ps.toActor.actorAddressString)
            if target is not None and target.instance is not None:
                try:
                    target.instance.receiveMessage(msg, ps.sender)
                except Exception:
                    # as the original _callActorWithMessage: logged, counted, queued for another attempt
                    logging.getLogger("Thespian").warning(
                        "Failure of Actor %s during message processing (attempt %s)",
                        target.address,
                        ps.attempts,
                        exc_info=True,
                    )
                    ps.attempts += 1
                    ps.fail_details = traceback.format_exc()
                    with self._private_lock:
                        self._pendingSends.append(ps)
                return
        self._run_system_send(ps)

    def _run_system_send(self, ps: Any) -> None:
        """The original path, then :meth:`_forget_exited` for a ``ChildActorExited``."""
        _Original._runSingleSend(self, ps)
        if isinstance(ps.msg, ChildActorExited):
            self._forget_exited(ps.msg.childAddress)

    def _forget_exited(self, address: Any) -> None:
        """Drop the registry entry of the exited actor at ``address`` once its parent was told (the original
        sets it to None and keeps it forever: one entry per actor that ever exited). A missing entry and a
        None one mean the same to the base: a dead letter."""
        key = address.actorAddressString
        if key in self.actorRegistry and self.actorRegistry[key] is None:
            del self.actorRegistry[key]

    def _killActor(self, tgt: Any, ps: Any) -> None:
        """The original, then cut the exited actor's links to the base (``_receive``, ``_myRef``), so that
        reference counting frees it at once. Nothing calls the instance after this: its reference no longer
        holds it, and later messages to its address are dead letters."""
        instance = tgt.instance
        _Original._killActor(self, tgt, ps)
        if instance is not None and tgt.instance is None:
            attributes = vars(instance)
            attributes.pop("_receive", None)
            attributes.pop("_myRef", None)

    def _newRefAndActor(
        self,
        actorSystem: Any,
        parentAddr: Any,
        actorAddr: Any,
        actorClass: Any,
        sourceHash: Any = None,
        targetActorRequirements: Any = None,
        isTopLevel: bool = False,
    ) -> Any:
        if sourceHash is None and _plain_actor_class(actorClass):
            # What the original does for such a class, without inspecting its signature on every spawn.
            try:
                actor = actorClass()
            except Exception:
                actor = None  # the original path below reports it as the base does
            if actor is not None:
                # made as an _ActorRef (not switched to one): its attributes then stay in the object, with no
                # dict for the garbage collector to track
                ref = _ActorRef(actorSystem, parentAddr, actorAddr, actor)
                ref._yung = _Children()
                actor._myRef = ref
                actor._receive = types.MethodType(simpleSystemBase.actor_base_receive, actor)
                return ref
        ref = _Original._newRefAndActor(
            self, actorSystem, parentAddr, actorAddr, actorClass, sourceHash, targetActorRequirements, isTopLevel
        )
        _track_children(ref)
        return ref


@functools.cache
def _plain_actor_class(actor_class: Any) -> bool:
    """True for an actor class (not a name) without capability requirements whose ``__init__`` takes no
    argument: the simple base would create it with ``actor_class()`` after inspecting its signature."""
    if not isinstance(actor_class, type) or hasattr(actor_class, "actorSystemCapabilityCheck"):
        return False
    try:
        parameters = list(inspect.signature(actor_class.__init__).parameters)  # type: ignore[misc]
    except (TypeError, ValueError):
        return False
    return parameters == ["self"]


class _Endpoint:
    """Stands in the simple base's registry as an actor whose messages go to ``receive``."""

    def __init__(self, receive: Callable[[object, ActorAddress], None]) -> None:
        self.receiveMessage = receive
        self._receive = receive  # the base's path for system messages


class PrivateEndpoint:
    """An endpoint of its own in a simple-base system (Thespian's ``ActorSystemPrivate``)."""

    def __init__(self, clone: Any) -> None:
        self._clone = clone

    def tell(self, to: ActorAddress, msg: object) -> None:
        """Queue ``msg`` to ``to`` and run the pending sends."""
        self._clone.tell(to, msg)

    def reply(self) -> object:
        """The first message this endpoint got that is not a system message, or None (without waiting)."""
        inbox = self._clone.my_instance.rcvq
        while True:
            try:
                message = inbox.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(message, ActorSystemMessage):
                return message

    def close(self) -> None:
        self._clone.exit_context()


def lean_base(asys: object) -> LeanSimpleBase:
    """The :class:`LeanSimpleBase` of ``asys``, a started simple-base ``ActorSystem`` (installed if needed).

    Raises:
        ThespianChanged: if its base is not the simple base this module was written against.
    """
    if not install(asys):
        raise ThespianChanged("the actor system does not run Thespian's simpleSystemBase")
    base: LeanSimpleBase = asys._systemBase  # type: ignore[attr-defined]
    return base


def install(asys: object) -> bool:
    """Switch ``asys`` (a started ``ActorSystem``) to :class:`LeanSimpleBase` if it runs Thespian's simple
    base; True when it now does, False for any other base.

    Raises:
        ThespianChanged: if its simple base does not have the shape of the pinned Thespian version.
    """
    base = getattr(asys, "_systemBase", None)
    if base is None:
        return False
    if type(base) is LeanSimpleBase:
        return True
    if type(base) is not _Original:
        return False
    missing = [name for name in _REPLACED if not callable(getattr(base, name, None))]
    missing += [name for name in _STATE if not hasattr(base, name)]
    if missing or not _bookkeeping_replaceable(base):
        raise ThespianChanged(
            f"Thespian's simple base changed shape (missing or different: {', '.join(missing) or 'ActorRef'}): "
            "actors/thespian_compat.py is written for the version pinned in setup.cfg"
        )
    with base._private_lock:
        base._pendingSends = _PendingSends(base._pendingSends)
        _install_children(base)
        base.__class__ = LeanSimpleBase
    return True


def _bookkeeping_replaceable(base: Any) -> bool:
    """True if the base has the methods that ``LeanSimpleBase`` extends to keep its bookkeeping of exited
    actors O(1), and keeps children as :class:`_Children` can replace them: ``ActorRef._yung`` lists."""
    refs = [ref for ref in base.actorRegistry.values() if ref is not None]
    hooks = ("_newRefAndActor", "_killActor")
    return all(callable(getattr(base, name, None)) for name in hooks) and all(
        type(ref) is simpleSystemBase.ActorRef and isinstance(getattr(ref, "_yung", None), list) for ref in refs
    )


def _install_children(base: Any) -> None:
    for ref in base.actorRegistry.values():
        _track_children(ref)


def close_tcp_sockets_on_close() -> None:
    """Make Thespian's ``TCPTransport.close`` close the sockets it holds. Idempotent.

    In Thespian 4.0.1, ``close`` forgets the connections it keeps open for reuse, and the static
    ``_safeSocketShutdown`` it calls for its listening socket never closes it (its guard
    ``isinstance(socket.error, Exception)`` is always False). So every external ``createActor`` and every
    ``ActorSystem.shutdown()`` left sockets for the garbage collector to close, each with a
    ``ResourceWarning``. The module's function of the same name does the job right.
    """
    from thespian.system.transport import TCPTransport as tcp

    transport = tcp.TCPTransport
    if getattr(transport.close, "closes_sockets", False):
        return
    original = transport.close

    def close(self: Any) -> None:
        kept = getattr(self, "_openSockets", {})
        for idle in list(kept.values()):
            tcp._safeSocketShutdown(idle)
        kept.clear()
        original(self)

    close.closes_sockets = True  # type: ignore[attr-defined]
    transport.close = close
    transport._safeSocketShutdown = staticmethod(tcp._safeSocketShutdown)
