"""Drive an in-process actor system from other threads.

On ``simpleSystemBase`` actors run only inside ``tell``/``ask``/``listen`` of the thread that calls them. The
:class:`InProcessDriver` gives the system one dedicated thread that does nothing else: other threads hand it
commands through a queue (never blocking), and it hands every ``BatchReady``/``CancelProcessing``/
``QueueChanged`` addressed to it to an ``on_output`` callback, on that thread, in the order the actors sent
them. Messages given to :meth:`InProcessDriver.enqueue` are checked on the caller's thread and coalesced into
one ``EnqueueChecked`` per inbox drain (at most 256), which the Supervisor routes without checking again.

Because ``simpleSystemBase`` runs every consequence of a ``tell`` before returning, the replies produced by
one command are exactly those present when its ``tell`` returns: that is how :meth:`InProcessDriver.call`
matches a reply to its command without correlation ids. Outputs produced by a command are handed to
``on_output`` before its future resolves.

Between commands the thread blocks on its inbox until the earliest pending Thespian wakeup is due, then
fires the due wakeups and runs what they send: an idle system costs no CPU and a due timer fires on time.
It runs the simple base through the API of :class:`actors.thespian_compat.LeanSimpleBase`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from actors.internal import ConfigureSystem, EnqueueChecked
from actors.io import ThreadIo
from actors.system import SIMPLE_BASE, RunningSystem, launch_system, restored_channels
from actors.thespian_compat import LeanSimpleBase, PrivateEndpoint, lean_base
from protocol.messages import (
    BatchReady,
    CancelProcessing,
    Enqueue,
    EnqueueMany,
    Observe,
    QueueChanged,
    Rejected,
    StartProcessing,
)
from protocol.validation import validate_message
from protocol.values import BatchSettings, QueuedMessage

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

log = logging.getLogger(__name__)

Output = BatchReady | CancelProcessing | QueueChanged
_OUTPUTS = (BatchReady, CancelProcessing, QueueChanged)

_MAX_COALESCED = 256  # enqueued messages merged into one EnqueueChecked; keeps Thespian's pending-send list short
_MAX_DEFERRED = 256  # fire-and-forget commands queued to the actors before they run (one run serves them all)
_IDLE_WAIT = 1.0  # longest block on the inbox when no wakeup is pending (seconds); only bounds shutdown checks


# What other threads put on the inbox of a thread that drives an actor system (this driver, and the TCP node
# of service/nodes.py): a message to enqueue, a command (with a future for its reply, or None), or STOP.


@dataclass(frozen=True, slots=True)
class Command:
    msg: object
    future: Future[object] | None
    to: ActorAddress | None = None  # None: the Supervisor


class Stop:
    """Tells the driving thread to end."""


STOP = Stop()
Inbox = QueuedMessage | Command | Stop
Accepted = tuple[QueuedMessage, float]  # a message and when it was accepted (time.monotonic)


class DriverStopped(RuntimeError):
    """The driver is not running (never started, stopped, or its thread died)."""


class InProcessDriver:
    """Owns a ``simpleSystemBase`` actor system and the one thread that runs it."""

    def __init__(
        self,
        on_output: Callable[[Output], None],
        settings: BatchSettings | None = None,
        *,
        idle_timeout: float = 60.0,
        redis_url: str = "",
        allow_volatile_redis: bool = False,
    ) -> None:
        self._on_output = on_output
        self._redis_url = redis_url
        self._allow_volatile_redis = allow_volatile_redis
        self._settings = settings or BatchSettings()
        self._idle_timeout = idle_timeout
        self._inbox: queue.SimpleQueue[Command | Stop | Accepted] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._alive = False  # the thread runs its loop (set by the thread itself; cheaper than is_alive())
        self._failure: BaseException | None = None
        self._system: RunningSystem | None = None
        self._stopping = False
        self._start_timeout = 10.0
        self._base: LeanSimpleBase | None = None
        self._callers: _Callers | None = None
        self._deferred: _DeferredTells | None = None
        self._io = ThreadIo(lambda to, msg: self._inbox.put(Command(msg, None, to)))
        # Metrics hook, set before start: called (on the system thread) with each persistence write's seconds.
        self.on_redis_write: Callable[[float], None] | None = None

    # -- any thread ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the system thread and wait until the Supervisor is configured. Idempotent.

        Raises:
            TimeoutError: if the system did not start within ``timeout`` seconds.
            Exception: whatever starting the actor system raised.
        """
        if self._thread is not None:
            return
        self._start_timeout = timeout
        self._thread = threading.Thread(target=self._run, name="message-queue-actors", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"actor system did not start within {timeout} s")
        if self._failure is not None:
            self._thread = None
            raise self._failure
        assert self._system is not None
        configure = ConfigureSystem(
            self._settings, self._idle_timeout, self._redis_url, self._allow_volatile_redis, io=self._io,
            redis_write_seconds=self.on_redis_write,
        )
        try:
            reply = self.call(configure).result(timeout)
        except FutureTimeout:
            reply = None
        try:
            self._system.restored = restored_channels(reply, timeout)
        except BaseException:
            self.stop()
            raise

    def tell(self, msg: object, to: ActorAddress | None = None) -> None:
        """Send ``msg`` to the Supervisor, or to the actor ``to`` (such as a ``BatchReady``'s ``reply_to``);
        its reply is dropped (a ``Rejected`` one is logged as a warning)."""
        self._inbox.put(Command(msg, None, to))

    def enqueue(self, message: QueuedMessage, *, checked: bool = False) -> None:
        """Fire-and-forget ``Enqueue``: the cheapest way in. ``checked``: the caller already ran
        :func:`~protocol.validation.validate_message` on it, so it is not checked again.

        Raises:
            InvalidInput: (unless ``checked``) if the message breaks a documented limit.
        """
        if not checked:
            validate_message(message)
        self._inbox.put((message, time.monotonic()))

    def call(self, msg: object) -> Future[object]:
        """Send ``msg`` to the Supervisor; the future resolves with its reply (a command without a reply, such
        as ``Enqueue`` without ack, resolves with None on the fallback path only: use :meth:`tell`).

        Each call has an endpoint of its own, so its future gets its own reply even when replies are held
        back and arrive out of order (persistence waiting for Redis). ``StartProcessing`` and ``Observe``
        naming no processor or observer register the driver itself (its outputs go to ``on_output``).

        The future fails with :class:`DriverStopped` if the driver is not running or stops first.
        """
        future: Future[object] = Future()
        if not self.running or self._stopping:
            future.set_exception(DriverStopped("the actor system driver is not running"))
            return future
        self._inbox.put(Command(msg, future))
        return future

    def request_stop(self) -> None:
        """Ask the thread to stop and shut the system down, without waiting. Safe from any thread."""
        self._stopping = True
        self._inbox.put(STOP)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and shut the actor system down, waiting up to ``timeout`` s. Idempotent.

        Called on the driver's own thread (from an output callback) it only requests the stop.
        """
        thread = self._thread
        if thread is None:
            return
        self.request_stop()
        if thread is threading.current_thread():
            return
        thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._alive

    # -- the system thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        io = self._io
        try:
            self._system = launch_system(SIMPLE_BASE)
        except BaseException as exc:  # reported to start()'s caller
            io.shutdown(wait=False)
            self._failure = exc
            self._started.set()
            return
        self._alive = True
        self._started.set()
        system = self._system
        asys, supervisor = system.asys, system.supervisor
        base = self._base = lean_base(asys)
        self._callers = _Callers(base)
        self._deferred = _DeferredTells(base)
        pending: list[Accepted] = []
        try:
            while True:
                item: Command | Stop | Accepted | None
                try:
                    item = self._inbox.get(timeout=self._wait_time(base))
                except queue.Empty:
                    item = None
                stop = False
                while item is not None:
                    if isinstance(item, tuple):
                        pending.append(item)
                        if len(pending) >= _MAX_COALESCED:
                            self._flush(asys, supervisor, pending)
                    elif isinstance(item, Stop):
                        stop = True
                        break
                    else:
                        self._flush(asys, supervisor, pending)
                        self._command(asys, supervisor if item.to is None else item.to, item.msg, item.future)
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        item = None
                self._flush(asys, supervisor, pending)
                self._run_deferred(asys)
                if stop:
                    return
                # Fire due timers (Timer's wakeup) and collect what they produced.
                base.realize_wakeups()
                base.run_sends()
                self._collect(None, None, asys)
                self._callers.resolve()
        finally:
            self._alive = False
            self._stopping = True
            self._fail_pending()
            if self._callers is not None:
                self._callers.fail_all()
            system.shutdown()
            io.shutdown(wait=False)

    @staticmethod
    def _wait_time(base: LeanSimpleBase) -> float:
        """Seconds until the earliest pending wakeup is due (at most ``_IDLE_WAIT``)."""
        due = base.next_wakeup_in()
        return _IDLE_WAIT if due is None else min(_IDLE_WAIT, max(0.0, due))

    def _fail_pending(self) -> None:
        """Fail the futures of commands that will never run."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Command) and item.future is not None:
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(DriverStopped("the actor system driver stopped"))

    def _flush(self, asys: object, supervisor: object, pending: list[Accepted]) -> None:
        if not pending:
            return
        msg = EnqueueChecked(tuple(m for m, _ in pending), tuple(at for _, at in pending))
        pending.clear()
        self._command(asys, supervisor, msg, None)

    def _command(self, asys: object, target: object, msg: object, future: Future[object] | None) -> None:
        """Send ``msg`` to ``target`` (the Supervisor or a channel); resolve ``future`` with its reply."""
        deferred = self._deferred
        if deferred is not None:
            if future is None and not isinstance(msg, (EnqueueChecked, Enqueue, EnqueueMany)):
                # Queued, not run: the replies of one inbox drain (ProcessingDone...) run together, so a
                # persisting system writes what they all caused in one Redis transaction instead of one each.
                # Enqueues are not held: they already come coalesced, and a timer must not wait behind many.
                if deferred.tell(target, msg) >= _MAX_DEFERRED:
                    self._run_deferred(asys)
                return
            self._run_deferred(asys)  # earlier commands first, and their responses are not this one's reply
        if future is not None and not future.set_running_or_notify_cancel():
            return
        callers = self._callers
        if future is not None and callers is not None:
            # Its own endpoint: a reply held back (persistence waiting for Redis) cannot be taken for the
            # reply of a later command.
            try:
                callers.send(target, msg, future)
            except Exception as exc:
                future.set_exception(exc)
                return
            self._collect(None, None, asys)  # outputs of the command before its reply
            callers.resolve()
            return
        try:
            asys.tell(target, msg)  # type: ignore[attr-defined]
        except Exception as exc:
            if future is not None:
                future.set_exception(exc)
                return
            raise
        self._collect(None, future, asys)

    def _run_deferred(self, asys: object) -> None:
        """Run the deferred tells (and all they cause) and dispatch what they produced."""
        if self._deferred is not None and self._deferred.run():
            self._collect(None, None, asys)

    def _collect(self, first: object, future: Future[object] | None, asys: object | None = None) -> None:
        """Dispatch ``first`` and, when ``asys`` is given, every response already waiting; resolve ``future``
        with the first response that is not an output."""
        reply: object = None
        response = first
        waiting = deque(self._base.take_responses()) if asys is not None and self._base is not None else None
        while True:
            if response is not None:
                if isinstance(response, _OUTPUTS):
                    self._output(response)
                elif future is not None and reply is None:
                    reply = response
                elif isinstance(response, Rejected):
                    log.warning("the Supervisor rejected a %s: %s", response.command, response.reason)
                elif future is not None:
                    log.warning("unsolicited reply %r", response)
            if asys is None:
                break
            if waiting is not None:
                if not waiting:
                    break
                response = waiting.popleft()
                continue
            response = asys.listen(0)  # type: ignore[attr-defined]
            if response is None:
                break
        if future is not None:
            future.set_result(reply)

    def _output(self, output: Output) -> None:
        try:
            self._on_output(output)
        except Exception:  # the consumer's bug must not stop the actor system
            log.exception("on_output failed on %s for channel %r", type(output).__name__, output.channel_id)


class _Callers:
    """One private endpoint per :meth:`InProcessDriver.call`, polled for its reply; the driver's own endpoint
    stays the processor and observer."""

    def __init__(self, base: LeanSimpleBase) -> None:
        self._base = base
        self._own = base.external_address()
        self._waiting: list[tuple[PrivateEndpoint, Future[object]]] = []

    def send(self, target: ActorAddress, msg: object, future: Future[object]) -> None:
        if isinstance(msg, StartProcessing) and msg.processor is None:
            msg = replace(msg, processor=self._own)
        elif isinstance(msg, Observe) and msg.observer is None:
            msg = replace(msg, observer=self._own)
        caller = self._base.private_endpoint()
        self._waiting.append((caller, future))
        caller.tell(target, msg)
        self._base.run_sends()

    def resolve(self) -> None:
        """Resolve every call whose reply has arrived."""
        still = []
        for caller, future in self._waiting:
            reply = caller.reply()
            if reply is None:
                still.append((caller, future))
                continue
            caller.close()
            future.set_result(reply)
        self._waiting = still

    def fail_all(self) -> None:
        for caller, future in self._waiting:
            caller.close()
            future.set_exception(DriverStopped("the actor system driver stopped before the reply came"))
        self._waiting = []


class _DeferredTells:
    """Fire-and-forget tells queued from the driver's endpoint without running them (``tell`` runs every send
    to completion at once); :meth:`run` runs them all."""

    def __init__(self, base: LeanSimpleBase) -> None:
        self._base = base
        self._own = base.external_address()
        self._count = 0

    def tell(self, target: ActorAddress, msg: object) -> int:
        """Queue ``msg`` to ``target``; return how many are queued."""
        self._base.realize_wakeups()  # as tell does: due wakeups go before this message
        self._base.send(self._own, target, msg)
        self._count += 1
        return self._count

    def run(self) -> bool:
        """Run every queued tell to completion; False when none was queued."""
        if not self._count:
            return False
        self._count = 0
        self._base.run_sends()
        return True
