"""Run the actor system on an asyncio event loop's own thread: no second thread, no lock, no hand-over.

On ``simpleSystemBase`` an actor runs only when its driver runs the system's pending sends. The
:class:`LoopDriver` runs them on the loop that owns it, in *turns* scheduled with ``loop.call_soon``:

* **Messages are stamped when accepted.** :meth:`LoopDriver.enqueue` appends the message and the clock's
  reading to a list and schedules a turn; nothing else happens on the caller's path. The stamp travels with the
  message (``EnqueueChecked.arrived``) and the channel's batching core uses it as the message's time, so a
  message's window counts from its ``enqueue``, however long the actors take to reach it.
* **A turn** hands every accepted message to the Supervisor first (in ``EnqueueChecked`` chunks), then fires
  what is due (the Timer's alarm as ``Tick(now)``, Thespian's own wakeups), then runs pending sends until
  none is left or the turn has used its time budget (``turn_seconds``); the rest waits for the next turn, so
  the loop keeps serving other callbacks. While the actors keep up (the last turn ran every pending send), a
  turn is put off by one loop step at a time as long as the producer keeps adding messages, up to
  ``gather_seconds`` (1 ms) after the first of them: a producer that sends bursts between its own awaits gets
  one hand-over (one Supervisor message, one Timer ``Tick``) for many bursts instead of one each. The stamps
  keep every window exact meanwhile; a turn due for a deadline is never put off. The Timer wakes only
  deadlines up to the ``now`` of its ``Tick``,
  read after the messages accepted before it were handed over: a batch never closes by time while a message
  of its channel accepted before its deadline is still on its way (both go through one hop in FIFO order).
* **Time** is one ``loop.call_at`` for the earliest of the Timer's alarm and Thespian's pending wakeups.
* **Outputs** (``BatchReady``, ``CancelProcessing``, ``QueueChanged``, ``ChannelPassivated``, and with
  ``config_ttl`` and Redis ``ChannelSettingsApplied``) addressed to the driver are handed to ``on_output`` as
  the send loop reaches them, synchronously.
* **Replies**: each :meth:`call` gets an endpoint of its own, whose first message resolves its future; the
  actors send a command's reply after the outputs it caused, so those were handed over first.
* **Blocking I/O** (persistence's Redis calls) runs on an :class:`~actors.io.ThreadIo` thread; outcomes are
  posted back with ``loop.call_soon_threadsafe``.

It runs the simple base through the API of :class:`actors.thespian_compat.LeanSimpleBase`, the one place that
reads Thespian's internals.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Callable, Iterator

from thespian.actors import ActorAddress, ActorExitRequest, ActorSystemMessage

from actors.internal import Clock, ConfigureSystem, EnqueueChecked, ReleaseHeld, Tick
from actors.io import ThreadIo
from actors.system import SIMPLE_BASE, RunningSystem, launch_system, restored_channels
from actors.thespian_compat import LeanSimpleBase, lean_base
from protocol.messages import (
    BatchReady,
    CancelProcessing,
    ChannelPassivated,
    ChannelSettingsApplied,
    Observe,
    QueueChanged,
    Rejected,
    StartProcessing,
)
from protocol.values import BatchSettings, QueuedMessage

log = logging.getLogger(__name__)

Output = BatchReady | CancelProcessing | QueueChanged | ChannelPassivated | ChannelSettingsApplied
_OUTPUTS = (BatchReady, CancelProcessing, QueueChanged, ChannelPassivated, ChannelSettingsApplied)

_CHUNK_CHANNELS = 256  # channels per EnqueueChecked: the Supervisor sends each one EnqueueStamped
_CHUNK_MESSAGES = 2048  # messages per EnqueueChecked: bounds the work of one handler
_TURN_SECONDS = 0.002  # a turn runs sends for about this long, then lets the loop serve others
# A turn is put off while the producer keeps adding messages, up to this long after the first of them.
_GATHER_SECONDS = 0.001


class DriverStopped(RuntimeError):
    """The driver is not running (not started yet, or stopped)."""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class LoopDriver:
    """Owns a ``simpleSystemBase`` actor system and runs it on ``loop``, the loop of whoever calls it.

    Every method must be called on ``loop``'s thread, except :meth:`post`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_output: Callable[[Output], None],
        settings: BatchSettings | None = None,
        *,
        idle_timeout: float = 60.0,
        redis_url: str = "",
        allow_volatile_redis: bool = False,
        clock: Clock = time.monotonic,
        turn_seconds: float = _TURN_SECONDS,
        gather_seconds: float = _GATHER_SECONDS,
        config_ttl: float | None = None,
    ) -> None:
        self._loop = loop
        self._config_ttl = config_ttl  # with redis_url: the settings hash is read (see ConfigureSystem)
        self._on_output = on_output
        self._settings = settings or BatchSettings()
        self._idle_timeout = idle_timeout
        self._redis_url = redis_url
        self._allow_volatile_redis = allow_volatile_redis
        self._clock = clock
        self._turn_seconds = turn_seconds
        self._gather_seconds = gather_seconds
        self._state = _State.NEW
        # True exactly while the state is RUNNING: an attribute, since every enqueue reads it
        self.running = False
        self._system: RunningSystem | None = None
        self._base: LeanSimpleBase | None = None
        self._address = ActorAddress("System:LoopDriver")
        self._supervisor: ActorAddress | None = None
        self._io: ThreadIo | None = ThreadIo(self.post) if redis_url else None
        self._accepted: list[QueuedMessage] = []
        self._stamps: list[float] = []
        self._acked: asyncio.Future[None] | None = None  # resolves once the accepted messages are durable
        self._scheduled = False
        self._gathered = 0  # accepted messages when the pending turn was scheduled
        self._caught_up = True  # the last turn ran every pending send: a turn may wait for the producer
        self._in_turn = False
        self._calls: dict[str, asyncio.Future[object]] = {}
        self._call_seq = 0
        self._alarm_at: float | None = None  # the Timer's next deadline
        self._timer: ActorAddress | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_alarm: float | None = None  # the alarm ``_handle`` was armed for
        self.restored = 0
        # Metrics hook: called with the number of messages handed over in a turn (None: no metrics).
        self.on_accepted: Callable[[int], None] | None = None
        # Metrics hook, set before start: called with the seconds each persistence write took on Redis.
        self.on_redis_write: Callable[[float], None] | None = None

    # -- life cycle -------------------------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Start the actor system and configure it (restoring persisted channels first, with Redis).

        Raises:
            InvalidSettings, UnsafeRedis, RedisDataLost, StoreLocked, StoreUnavailable: as the Supervisor
                reports (the system is stopped again).
            Timeout: if the Supervisor does not answer within ``timeout`` seconds.
            ThespianChanged: if Thespian's simple base is not what actors.thespian_compat was written for.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"LoopDriver.start in state {self._state.value}")
        system = self._system = launch_system(SIMPLE_BASE)
        base = self._base = lean_base(system.asys)
        self._supervisor = system.supervisor
        base.add_endpoint(self._address, self._received)
        self._enter(_State.RUNNING)
        configure = ConfigureSystem(
            self._settings,
            self._idle_timeout,
            self._redis_url,
            self._allow_volatile_redis,
            clock=self._clock,
            alarm=self,
            io=self._io,
            redis_write_seconds=self.on_redis_write,
            config_ttl=self._config_ttl,
        )
        reply: object = None
        try:
            reply = await asyncio.wait_for(self.call(configure), timeout)
        except TimeoutError:
            pass
        try:
            self.restored = restored_channels(reply, timeout)
        except BaseException:
            self.stop()
            raise

    def _enter(self, state: _State) -> None:
        self._state = state
        self.running = state is _State.RUNNING

    def stop(self) -> None:
        """Hand over what was accepted, run the system until nothing is pending, stop every actor (persistence
        writes what it holds), and fail the calls still waiting with :class:`DriverStopped`. Idempotent.

        Called from inside a turn (an output handler, a finalizer), it is deferred to its own loop callback.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        if self._in_turn:
            self._loop.call_soon(self.stop)
            return
        system = self._system
        if system is None or self._state is _State.NEW:
            self._enter(_State.STOPPED)
            return
        self._enter(_State.STOPPING)
        try:
            base = self._required_base()
            self._inject()
            base.run_pending()
            # The commands held for a read of a settings hash go to their channels, which journal them; asked
            # to exit, the Supervisor's children (channels, RedisPersistence) then run their exit hooks.
            self._send(system.supervisor, ReleaseHeld())
            base.run_pending()
            self._send(system.supervisor, ActorExitRequest())
            base.run_pending()
            system.asys.shutdown()
        finally:
            self._enter(_State.STOPPED)
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            if self._io is not None:
                self._io.shutdown(wait=False)
            calls, self._calls = self._calls, {}
            for future in calls.values():
                if not future.done():
                    future.set_exception(DriverStopped("the actor system stopped before the reply came"))
            if self._acked is not None and not self._acked.done():
                self._acked.set_exception(DriverStopped("the actor system stopped before the write"))

    def abandon(self) -> None:
        """Give the system up without running it again (its loop is closed): the actors are left to the garbage
        collector and the I/O thread ends; waiting calls are not resolved (their loop is gone)."""
        self._enter(_State.STOPPED)
        self._calls.clear()
        if self._io is not None:
            self._io.shutdown(wait=False)

    # -- what callers hand over -----------------------------------------------------------------------------

    def enqueue(self, message: QueuedMessage) -> None:
        """Accept ``message`` (already checked with :func:`~protocol.validation.validate_message`) now: stamped
        with the clock, handed to the actors on the next turn."""
        self._accepted.append(message)
        self._stamps.append(self._clock())
        if not self._scheduled:
            self._schedule()

    def enqueue_acked(self, message: QueuedMessage) -> asyncio.Future[None]:
        """As :meth:`enqueue`; the future resolves once the message is durable (at once without persistence).
        Messages accepted in one loop iteration share one acknowledgement (and, with Redis, one write)."""
        self.enqueue(message)
        acked = self._acked
        if acked is None:
            acked = self._acked = self._loop.create_future()
        return acked

    def tell(self, msg: object, to: ActorAddress | None = None) -> None:
        """Send ``msg`` to the Supervisor, or to ``to``; a reply is dropped (a rejection is logged)."""
        if self._state is not _State.RUNNING:
            return
        self._inject()  # after the messages accepted before it
        self._send(self._target(to), msg)
        if not self._scheduled:
            self._schedule()

    def call(self, msg: object, to: ActorAddress | None = None) -> asyncio.Future[object]:
        """Send ``msg`` to the Supervisor (or ``to``); the future resolves with the first reply.

        ``StartProcessing`` and ``Observe`` naming no processor or observer register the driver itself (its
        outputs go to ``on_output``). The future fails with :class:`DriverStopped` if the driver stops first.
        """
        future: asyncio.Future[object] = self._loop.create_future()
        if self._state is not _State.RUNNING:
            future.set_exception(DriverStopped("the actor system driver is not running"))
            return future
        if isinstance(msg, StartProcessing) and msg.processor is None:
            msg = StartProcessing(msg.channel_id, self._address)
        elif isinstance(msg, Observe) and msg.observer is None:
            msg = Observe(self._address)
        self._inject()
        self._send(self._target(to), msg, sender=self._endpoint_for(future))
        if not self._scheduled:
            self._schedule()
        return future

    def post(self, to: ActorAddress, msg: object) -> None:
        """Thread-safe: send ``msg`` to ``to`` on the loop (from the driver's address). Dropped once stopped."""
        try:
            self._loop.call_soon_threadsafe(self._posted, to, msg)
        except RuntimeError:  # the loop is closed: nobody is left to deliver to
            log.debug("dropped %s posted after the loop closed", type(msg).__name__)

    def sync(self) -> None:
        """Run the actors until nothing is pending, here and now, so that what was accepted or told so far has
        had all its effects (a reader sees every call that returned before it). Does nothing inside a turn."""
        if self._state is not _State.RUNNING or self._in_turn:
            return
        self._in_turn = True
        try:
            self._inject()
            self._required_base().run_pending()
        finally:
            self._in_turn = False
        self._arm()

    # -- the Timer's alarm (actors.internal.Alarm) --------------------------------------------------------------

    def arm(self, at: float, timer: ActorAddress) -> None:
        self._timer = timer
        if self._alarm_at is None or at < self._alarm_at:
            self._alarm_at = at
            if not self._in_turn:
                self._arm()

    # -- turns --------------------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        self._scheduled = True
        self._gathered = len(self._accepted)
        self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        if self._state is not _State.RUNNING:
            return
        accepted = len(self._accepted)
        if (
            self._caught_up
            and accepted > self._gathered
            and accepted < _CHUNK_MESSAGES
            and self._clock() - self._stamps[0] < self._gather_seconds
        ):
            # Messages were accepted since this turn was scheduled: the producer is still at it. Let it run one
            # more step first, so that one hand-over (and one Supervisor message) serves them all. Only while the
            # actors keep up: behind, they get every turn, so a producer cannot pile up work ahead of them.
            self._schedule()
            return
        base = self._required_base()
        self._in_turn = True
        try:
            self._inject()
            if self._alarm_at is not None:
                now = self._clock()
                if self._alarm_at <= now:
                    self._alarm_at = None
                    assert self._timer is not None
                    self._send(self._timer, Tick(now))
            base.realize_wakeups()
            done = self._caught_up = base.run_pending(self._turn_seconds)
        finally:
            self._in_turn = False
        if not done and not self._scheduled:
            self._schedule()
        self._arm()

    def _fired(self) -> None:
        self._handle = None
        if not self._scheduled:
            self._gathered = len(self._accepted)  # a deadline is due: no putting off
            self._turn()

    def _arm(self) -> None:
        """One loop.call_at for the earliest of the Timer's alarm and Thespian's pending wakeups."""
        if self._state is not _State.RUNNING:
            return
        base = self._base
        assert base is not None  # running
        thespian = base.next_wakeup_in()
        if thespian is None and self._alarm_at == self._armed_alarm and self._handle is not None:
            return  # nothing changed since the last arming
        self._armed_alarm = self._alarm_at
        delay: float | None = None
        if self._alarm_at is not None:
            delay = self._alarm_at - self._clock()
        if thespian is not None:
            delay = thespian if delay is None else min(delay, thespian)
        if delay is None:
            return
        at = self._loop.time() + max(0.0, delay)
        handle = self._handle
        if handle is not None:
            if handle.when() <= at + 1e-4:
                return  # one armed already serves it
            handle.cancel()
        self._handle = self._loop.call_at(at, self._fired)

    def _inject(self) -> None:
        """Hand every accepted message to the Supervisor: grouped by channel (each channel's in order), in
        chunks of at most ``_CHUNK_CHANNELS`` channels and ``_CHUNK_MESSAGES`` messages, so the Supervisor
        sends a channel one ``EnqueueStamped`` for all its messages of a chunk, and no handler holds the loop
        for long."""
        accepted = self._accepted
        if not accepted:
            return
        stamps = self._stamps
        self._accepted, self._stamps = [], []
        if self.on_accepted is not None:
            self.on_accepted(len(accepted))
        acked, self._acked = self._acked, None
        chunks = list(_chunks(accepted, stamps))
        supervisor = self._supervisor
        assert supervisor is not None
        if acked is None:
            for messages, arrived in chunks:
                self._send(supervisor, EnqueueChecked(messages, arrived))
            return
        waiting = [len(chunks)]

        def one_acked(reply: asyncio.Future[object]) -> None:
            if acked.done():
                return
            if reply.cancelled() or reply.exception() is not None:
                acked.set_exception(reply.exception() or DriverStopped("acknowledgement cancelled"))
                return
            waiting[0] -= 1
            if waiting[0] == 0:
                acked.set_result(None)

        for messages, arrived in chunks:
            reply: asyncio.Future[object] = self._loop.create_future()
            reply.add_done_callback(one_acked)
            self._send(supervisor, EnqueueChecked(messages, arrived, ack=True), sender=self._endpoint_for(reply))

    # -- the system's side ---------------------------------------------------------------------------------

    def _target(self, to: ActorAddress | None) -> ActorAddress:
        if to is not None:
            return to
        assert self._supervisor is not None
        return self._supervisor

    def _required_base(self) -> LeanSimpleBase:
        if self._base is None:
            raise DriverStopped("the actor system driver is not running")
        return self._base

    def _send(self, to: ActorAddress, msg: object, sender: ActorAddress | None = None) -> None:
        base = self._base
        if base is None:
            raise DriverStopped("the actor system driver is not running")
        base.send(sender or self._address, to, msg)

    def _posted(self, to: ActorAddress, msg: object) -> None:
        if self._state is not _State.RUNNING:
            log.debug("dropped %s posted while the driver is %s", type(msg).__name__, self._state.value)
            return
        self._send(to, msg)
        if not self._scheduled:
            self._schedule()

    def _endpoint_for(self, future: asyncio.Future[object]) -> ActorAddress:
        """An address whose first reply resolves ``future``; it is gone from the registry after that."""
        self._call_seq += 1
        name = f"System:LoopCall:{self._call_seq}"
        address = ActorAddress(name)
        base = self._required_base()
        self._calls[name] = future

        def receive(msg: object, sender: ActorAddress) -> None:
            if isinstance(msg, ActorSystemMessage):
                return
            base.remove_endpoint(address)
            waiting = self._calls.pop(name, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(msg)

        base.add_endpoint(address, receive)
        return address

    def _received(self, msg: object, sender: ActorAddress) -> None:
        """The driver's own endpoint: the processor and observer of the facade."""
        if isinstance(msg, _OUTPUTS):
            try:
                self._on_output(msg)
            except Exception:  # the consumer's bug must not stop the actor system
                log.exception("on_output failed on %s for channel %r", type(msg).__name__, msg.channel_id)
        elif isinstance(msg, Rejected):
            log.warning("the Supervisor rejected a %s: %s", msg.command, msg.reason)
        elif not isinstance(msg, ActorSystemMessage):  # the reply to a told command: dropped
            log.debug("the loop driver dropped a %s from %s", type(msg).__name__, sender)


def _chunks(
    accepted: list[QueuedMessage], stamps: list[float]
) -> Iterator[tuple[tuple[QueuedMessage, ...], tuple[float, ...]]]:
    """``accepted`` (with their ``stamps``) grouped by channel, each channel's messages in order, cut into
    chunks of at most ``_CHUNK_CHANNELS`` channels and ``_CHUNK_MESSAGES`` messages (a channel's messages may
    be split between consecutive chunks: they still reach it in order)."""
    groups: dict[str, list[int]] = {}
    for index, message in enumerate(accepted):
        group = groups.get(message.channel_id)
        if group is None:
            groups[message.channel_id] = [index]
        else:
            group.append(index)
    messages: list[QueuedMessage] = []
    arrived: list[float] = []
    channels = 0
    for indexes in groups.values():
        if channels == _CHUNK_CHANNELS:
            yield tuple(messages), tuple(arrived)
            messages, arrived, channels = [], [], 0
        channels += 1
        for index in indexes:
            if len(messages) == _CHUNK_MESSAGES:
                yield tuple(messages), tuple(arrived)
                messages, arrived, channels = [], [], 1
            messages.append(accepted[index])
            arrived.append(stamps[index])
    if messages:
        yield tuple(messages), tuple(arrived)
