"""Drive an in-process actor system from other threads.

On ``simpleSystemBase`` actors run only inside ``tell``/``ask``/``listen`` of the thread that calls them. The
:class:`InProcessDriver` gives the system one dedicated thread that does nothing else: other threads hand it
commands through a queue (never blocking), and it hands every ``BatchReady``/``CancelProcessing`` addressed to
it to an ``on_output`` callback. Consecutive ``Enqueue`` commands are coalesced into one ``EnqueueMany``.

Because ``simpleSystemBase`` runs every consequence of a ``tell`` before returning, the replies produced by
one command are exactly those present when its ``tell`` returns: that is how :meth:`InProcessDriver.call`
matches a reply to its command without correlation ids.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Union

from actors.system import SIMPLE_BASE, RunningSystem, start_system
from protocol.messages import BatchReady, CancelProcessing, Enqueue, EnqueueMany
from protocol.values import BatchSettings, QueuedMessage

log = logging.getLogger(__name__)

Output = Union[BatchReady, CancelProcessing]

_MAX_COALESCED = 256  # Enqueues merged into one EnqueueMany; keeps Thespian's pending-send list short
_STOP = object()


class InProcessDriver:
    """Owns a ``simpleSystemBase`` actor system and the one thread that runs it.

    ``poll_interval`` bounds how late a due timer can fire while no command arrives (seconds).
    """

    def __init__(
        self,
        on_output: Callable[[Output], None],
        settings: BatchSettings | None = None,
        *,
        idle_timeout: float = 60.0,
        poll_interval: float = 0.001,
    ) -> None:
        self._on_output = on_output
        self._settings = settings or BatchSettings()
        self._idle_timeout = idle_timeout
        self._poll = poll_interval
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._system: RunningSystem | None = None

    # -- any thread ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the system thread and wait until the Supervisor is configured."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="message-queue-actors", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"actor system did not start within {timeout} s")
        if self._failure is not None:
            raise self._failure

    def tell(self, msg: object) -> None:
        """Send ``msg`` to the Supervisor; replies to it are dropped (logged if they are rejections)."""
        self._inbox.put((msg, None))

    def enqueue(self, message: QueuedMessage) -> None:
        """Fire-and-forget ``Enqueue``: the cheapest way in."""
        self._inbox.put(message)

    def call(self, msg: object) -> Future[object]:
        """Send ``msg`` to the Supervisor; the future resolves with its reply (None if it has none)."""
        future: Future[object] = Future()
        self._inbox.put((msg, future))
        return future

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and shut the actor system down. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._inbox.put(_STOP)
        thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the system thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._system = start_system(SIMPLE_BASE, self._settings, idle_timeout=self._idle_timeout)
        except BaseException as exc:  # reported to start()'s caller
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        system = self._system
        asys, supervisor = system.asys, system.supervisor
        pending: list[QueuedMessage] = []
        try:
            while True:
                try:
                    item = self._inbox.get(timeout=self._poll)
                except queue.Empty:
                    item = None
                stop = False
                while item is not None:
                    if isinstance(item, QueuedMessage):
                        pending.append(item)
                        if len(pending) >= _MAX_COALESCED:
                            self._flush(asys, supervisor, pending)
                    else:
                        self._flush(asys, supervisor, pending)
                        if item is _STOP:
                            stop = True
                            break
                        msg, future = item  # type: ignore[misc]
                        self._command(asys, supervisor, msg, future)
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        item = None
                self._flush(asys, supervisor, pending)
                if stop:
                    return
                # Fire due timers (Timer's wakeup) and collect what they produced.
                self._collect(asys.listen(self._poll / 10), None)
                self._collect(None, None, asys)
        finally:
            system.shutdown()

    def _flush(self, asys: object, supervisor: object, pending: list[QueuedMessage]) -> None:
        if not pending:
            return
        msg = Enqueue(pending[0]) if len(pending) == 1 else EnqueueMany(tuple(pending))
        pending.clear()
        self._command(asys, supervisor, msg, None)

    def _command(self, asys: object, supervisor: object, msg: object, future: Future[object] | None) -> None:
        if future is not None and not future.set_running_or_notify_cancel():
            return
        try:
            asys.tell(supervisor, msg)  # type: ignore[attr-defined]
        except Exception as exc:
            if future is not None:
                future.set_exception(exc)
                return
            raise
        self._collect(None, future, asys)

    def _collect(self, first: object, future: Future[object] | None, asys: object | None = None) -> None:
        """Dispatch ``first`` and, when ``asys`` is given, every response already waiting."""
        reply: object = None
        response = first
        while True:
            if response is not None:
                if isinstance(response, (BatchReady, CancelProcessing)):
                    self._on_output(response)
                elif future is not None and reply is None:
                    reply = response
                else:
                    log.warning("unsolicited reply %r", response)
            if asys is None:
                break
            response = asys.listen(0)  # type: ignore[attr-defined]
            if response is None:
                break
        if future is not None:
            future.set_result(reply)
