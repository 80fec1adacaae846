"""Nodes: an actor system (in-process or on the TCP base) whose outputs reach a callback of this process,
which is registered as every channel's processor."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

from thespian.actors import ActorAddress

from actors.driver import STOP, Command, Inbox, InProcessDriver, Output
from actors.journal import RedisWriteTimes
from actors.system import TCP_BASE, RunningSystem, start_system
from protocol.errors import Timeout
from protocol.messages import BatchReady, CancelProcessing, Enqueue, EnqueueMany, ProcessingStarted, StartProcessing
from protocol.values import BatchSettings, QueuedMessage

log = logging.getLogger("run_system")  # log lines name the program, not this module

REPLY_TIMEOUT = 10.0  # seconds to wait for the Supervisor's answer to a command
_MAX_COALESCED = 256  # messages merged into one EnqueueMany on the TCP base

_Reply = TypeVar("_Reply")


class Node(Protocol):
    """An actor system whose outputs (``BatchReady``, ``CancelProcessing``) reach a callback; once started,
    this process is every channel's processor."""

    def start(self) -> None: ...

    def enqueue(self, message: QueuedMessage) -> None: ...

    def tell(self, msg: object, to: ActorAddress | None = None) -> None:
        """Send ``msg`` to the Supervisor, or to ``to`` (a ``BatchReady``'s ``reply_to``)."""
        ...

    def call(self, msg: object) -> Future[object]: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    @property
    def running(self) -> bool: ...

    @property
    def restored(self) -> int:
        """Channels restored from Redis when the node started (0 without persistence)."""
        ...


class InProcessNode(InProcessDriver):
    """The ``simpleSystemBase`` system of an :class:`InProcessDriver`, with this process as processor."""

    def start(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Start the system thread and register as every channel's processor.

        Raises:
            Timeout: if the Supervisor does not confirm the registration.
        """
        super().start(timeout)
        expect(self.call(StartProcessing()).result(timeout), ProcessingStarted, "StartProcessing")

    @property
    def restored(self) -> int:
        return self._system.restored if self._system is not None else 0


def expect(reply: object, expected: type[_Reply], command: str) -> _Reply:
    """``reply`` if it is an ``expected``; raises :class:`Timeout` (a missing or wrong answer) otherwise."""
    if not isinstance(reply, expected):
        raise Timeout(f"the Supervisor did not answer {command} with {expected.__name__} (got {reply!r})")
    return reply


class TcpNode:
    """A ``multiprocTCPBase`` system driven from two threads of this process.

    Thespian's ``ActorSystem`` is not thread-safe, so each thread has an endpoint of its own: the sender
    thread sends commands through ``asys.private()`` (merging consecutive enqueues into one ``EnqueueMany``),
    and the listener thread owns the main endpoint, which is registered as every channel's processor.
    """

    def __init__(
        self,
        on_output: Callable[[Output], None],
        settings: BatchSettings,
        *,
        idle_timeout: float,
        admin_port: int | None,
        redis_url: str = "",
        allow_volatile_redis: bool = False,
        on_redis_writes: Callable[[tuple[float, ...]], None] | None = None,
        config_ttl: float | None = None,
    ) -> None:
        self._on_output = on_output
        self._config_ttl = config_ttl
        self._on_redis_writes = on_redis_writes  # metrics: the seconds of persistence writes, as reported
        self._settings = settings
        self._idle_timeout = idle_timeout
        self._admin_port = admin_port
        self._redis_url = redis_url
        self._allow_volatile_redis = allow_volatile_redis
        self._restored = 0
        self._inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._system: RunningSystem | None = None

    @property
    def admin_port(self) -> int:
        """The TCP port of the Thespian admin (once started)."""
        if self._system is None:
            raise RuntimeError("TcpNode.admin_port read before start()")
        return int(self._system.asys.capabilities["Admin Port"])

    @property
    def restored(self) -> int:
        return self._restored

    def start(self) -> None:
        """Start the actor system, register this process as processor and start both threads. Call
        :meth:`stop` even when this raises: processes may have started.

        Raises:
            Timeout: if the Supervisor does not answer.
            UnsafeRedis, RedisDataLost, StoreLocked, StoreUnavailable: as :func:`actors.system.start_system`.
        """
        system = self._system = start_system(
            TCP_BASE,
            self._settings,
            idle_timeout=self._idle_timeout,
            admin_port=self._admin_port,
            redis_url=self._redis_url,
            allow_volatile_redis=self._allow_volatile_redis,
            report_redis_writes=self._on_redis_writes is not None,
            config_ttl=self._config_ttl,
        )
        self._restored = system.restored
        reply = system.asys.ask(system.supervisor, StartProcessing(), REPLY_TIMEOUT)
        expect(reply, ProcessingStarted, "StartProcessing")
        for target, name in ((self._send_loop, "mq-sender"), (self._listen_loop, "mq-listener")):
            thread = threading.Thread(target=target, args=(system,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def enqueue(self, message: QueuedMessage) -> None:
        self._inbox.put(message)

    def tell(self, msg: object, to: ActorAddress | None = None) -> None:
        self._inbox.put(Command(msg, None, to))

    def call(self, msg: object) -> Future[object]:
        future: Future[object] = Future()
        self._inbox.put(Command(msg, future))
        return future

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads and every process of the actor system. Idempotent."""
        self._stopping.set()
        self._inbox.put(STOP)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        system, self._system = self._system, None
        if system is not None:
            system.shutdown(timeout)

    def _send_loop(self, system: RunningSystem) -> None:
        with system.asys.private() as endpoint:
            while True:
                items = _drain(self._inbox)
                for command in _commands(items):
                    if command.future is None:
                        endpoint.tell(system.supervisor if command.to is None else command.to, command.msg)
                    elif command.future.set_running_or_notify_cancel():
                        command.future.set_result(endpoint.ask(system.supervisor, command.msg, REPLY_TIMEOUT))
                if STOP in items:
                    return

    def _listen_loop(self, system: RunningSystem) -> None:
        while not self._stopping.is_set():
            response = system.asys.listen(0.2)
            if isinstance(response, (BatchReady, CancelProcessing)):
                self._on_output(response)
            elif isinstance(response, RedisWriteTimes) and self._on_redis_writes is not None:
                self._on_redis_writes(response.seconds)
            elif response is not None:
                log.warning("unexpected %s ignored", type(response).__name__)


def _drain(inbox: queue.SimpleQueue[Inbox]) -> list[Inbox]:
    """Block for one item, then take whatever else is already waiting (bounded)."""
    items = [inbox.get()]
    while len(items) < _MAX_COALESCED:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            break
    return items


def _commands(items: Sequence[Inbox]) -> Iterator[Command]:
    """The commands ``items`` stand for, in order, with consecutive messages merged into one."""
    pending: list[QueuedMessage] = []
    for item in items:
        if isinstance(item, QueuedMessage):
            pending.append(item)
            continue
        if pending:
            yield _enqueue_command(pending)
            pending = []
        if isinstance(item, Command):
            yield item
    if pending:
        yield _enqueue_command(pending)


def _enqueue_command(messages: list[QueuedMessage]) -> Command:
    return Command(Enqueue(messages[0]) if len(messages) == 1 else EnqueueMany(tuple(messages)), None)
