"""The in-memory and persisted ``MessageQueue``: the actor system, run on the caller's event loop.

Everything runs on one thread, the loop's: the facade, every callback (a task per item) and the actors
(Supervisor, one ChannelActor per active channel, the Timer; RedisPersistence with ``redis=``), which an
:class:`~actors.loop_driver.LoopDriver` runs in short turns between the loop's other callbacks.

Flow:
    * ``enqueue`` checks the message (``protocol.limits``, raising ``InvalidInput``) and hands it to the driver,
      which stamps it with the time: its batching window counts from that moment, however busy the loop is.
      With ``redis=``, ``enqueue`` returns once the message is in Redis (messages accepted in the same loop
      iteration share one write).
    * The actors' outputs reach :meth:`LocalQueue._handle` during a turn: a ``BatchReady`` becomes a task
      running the channel's callback; when the task ends, ``ProcessingDone`` (or ``ProcessingFailed``) goes
      straight back to the channel's actor, which then delivers its next item.
    * Commands with a result (``clear``, ``stop_processing``, ...) await the driver's ``call``; the actors send
      a reply after the outputs its command caused, so those have been handled when the call returns.

Counts: the queue observes the actors (``Observe``): each ChannelActor reports its number of waiting items
whenever it changes, in a ``BatchReady`` or a ``QueueChanged``. ``queue_size``, ``is_channel_processing``
and ``stats`` first let the actors finish what was handed to them (``LoopDriver.sync``), so they reflect every
call that returned before them. A channel's record goes when its actor passivates (``ChannelPassivated``);
its callback registration stays.

Settings hash (with ``redis=``): the queue does not read ``message_queue:config:<channel>`` itself. Its
actor system does, in one place (the Supervisor, with ``config_ttl``; as for ``serve --redis``), and tells
the queue what applies (``ChannelSettingsApplied``) before the channel sees the messages held for the read.
Until a live channel's first such fact, the queue does not know whether the channel may refuse a message
(busy policy or overflow ``reject`` in its hash), so each of its enqueues waits for the channel's answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from actors.loop_driver import DriverStopped, LoopDriver, Output
from message_queue.config import apply_settings, write_settings_hash
from protocol.errors import ChannelBusy, InvalidInput, InvalidSettings, QueueFull, UnsafeRedis
from protocol.limits import validate_channel_id, validate_message_id
from protocol.messages import (
    BatchHeld,
    BatchReady,
    CancelCurrent,
    CancelProcessing,
    ChannelConfigured,
    ChannelPassivated,
    ChannelSettingsApplied,
    ChannelStopped,
    Clear,
    Cleared,
    ConfigureChannel,
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    Edit,
    Edited,
    Enqueue,
    Enqueued,
    EnqueueFront,
    FlushBatch,
    GetDeadLetters,
    GetStatistics,
    HoldBatch,
    Observe,
    ProcessingDone,
    ProcessingFailed,
    PurgeDeadLetters,
    QueueChanged,
    Rejected,
    ReplayDeadLetters,
    Retract,
    Retracted,
    StartProcessing,
    Statistics,
    StopChannel,
    Taken,
    TakeWaiting,
)
from protocol.validation import validate_message, validate_payload
from protocol.values import BatchSettings, ChannelStatistics, DeadLetter, Payload, QueuedMessage, QueueItem

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from thespian.actors import ActorAddress

    from message_queue.metrics import QueueMetrics

log = logging.getLogger("message_queue.facade")  # the public API's logger

Callback = Callable[[Payload], Awaitable[object]]
"""An async function called with each finished item of a channel: a MessageBatch, a QueuedMessage (batching
disabled), or whatever was put with ``enqueue_front``."""

_CURRENT_ITEM: contextvars.ContextVar[QueueItem | None] = contextvars.ContextVar("current_item", default=None)


def current_item() -> QueueItem | None:
    """Inside a callback (and the tasks it starts): the item being processed, with its ``item_id`` (stable
    across redeliveries) and ``attempt`` (above 1 when it is delivered again after a restart, with ``redis=``),
    so a callback can tell a redelivery; None elsewhere."""
    return _CURRENT_ITEM.get()


CANCEL_WAIT = 5.0
"""Seconds ``close`` waits for cancelled callbacks to end before it goes on without them (with a warning)."""


def check_callback(callback: object) -> Callback:
    """``callback`` if it is an async function (or an object whose ``__call__`` is one).

    Raises:
        InvalidInput: naming what was given instead.
    """
    call = getattr(callback, "__call__", None)  # noqa: B004 - the method itself, to ask whether it is async
    if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(call):
        return callback  # type: ignore[return-value]
    if asyncio.iscoroutinefunction(callback):  # objects marked as such (unittest.mock.AsyncMock)
        return callback
    what = type(callback).__name__ if not callable(callback) else getattr(callback, "__qualname__", repr(callback))
    raise InvalidInput(f"callback must be an async function (async def), got {what}")


@dataclass(eq=False, slots=True)
class _Delivery:
    delivery_id: int
    item: QueueItem
    reply_to: ActorAddress | None = None  # the channel actor that sent it
    task: asyncio.Task[None] | None = None
    settled: bool = False  # the actors already know it ended (cancelled): no reply is due
    delivered_at: float = 0.0  # loop time of the BatchReady (set only with metrics)


@dataclass(eq=False, slots=True)
class _Channel:
    """What the queue knows of a channel whose actor is alive."""

    active: _Delivery | None = None  # its callback task is running (maybe cancelled and unwinding)
    # Delivered while ``active`` still unwinds (rare, and short): a list, since an empty deque costs 760 bytes.
    backlog: list[_Delivery] = field(default_factory=list)
    queued: int = 0  # waiting items, from the last report
    in_flight: bool = False  # from the last report
    # Messages it may still be sent without waiting for its answer: ``base - queued * step`` at its last report
    # (see _limits), less those sent since.
    budget: int = 0
    base: int = 0  # from its settings (see _limits)
    step: int = 0
    # What the actors last said applies (ChannelSettingsApplied, with redis=): None until the settings hash
    # was read since the channel went live, or since configure.
    applied: BatchSettings | None = None

    @property
    def busy(self) -> bool:
        return self.active is not None or bool(self.backlog)


class LocalQueue:
    """The actors on the caller's loop; see the module docstring. One per ``MessageQueue`` without
    ``event_bus``."""

    def __init__(
        self,
        settings: BatchSettings,
        *,
        redis: Redis | None,
        redis_url: str,
        config_ttl: float,
        idle_timeout: float,
        allow_volatile_redis: bool,
        metrics: QueueMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._sampler: asyncio.Task[None] | None = None
        self._settings = settings
        self._redis_url = redis_url
        self._durable = bool(redis_url)
        self._allow_volatile_redis = allow_volatile_redis
        self._config_ttl = config_ttl
        self._idle_timeout = idle_timeout
        self._redis = redis  # configure writes the settings hash; the actors read it
        self._overrides: dict[str, BatchSettings] = {}  # set with configure
        self._callbacks: dict[str, Callback] = {}
        self._channels: dict[str, _Channel] = {}
        self._driver: LoopDriver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[LoopDriver] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False

    # -- messages in --------------------------------------------------------------------------------------

    async def enqueue(self, msg: QueuedMessage) -> None:
        try:
            validate_message(msg)
        except InvalidInput:
            if self._metrics is not None:
                self._metrics.rejected()
            raise
        try:
            chan = self._channels[msg.channel_id]
        except KeyError:
            chan = self._channel(msg.channel_id)
        if chan.budget > 0:
            chan.budget -= 1
        else:  # the channel may refuse it (see _refuses_when_busy)
            await self._enqueue_answered(msg)
            return
        driver = self._driver
        if driver is None or asyncio.get_running_loop() is not self._loop or not driver.running:
            driver = await self._ensure_driver()
        if self._durable:
            await driver.enqueue_acked(msg)
        else:
            driver.enqueue(msg)

    async def enqueue_many(self, messages: Iterable[QueuedMessage]) -> None:
        batch = list(messages)
        try:
            for msg in batch:
                validate_message(msg)
        except InvalidInput:
            if self._metrics is not None:
                self._metrics.rejected(len(batch))
            raise
        if not batch:
            return
        if any(self._refuses_when_busy(msg.channel_id) for msg in batch):
            await self._enqueue_many_answered(batch)
            return
        driver = await self._ensure_driver()
        acked: asyncio.Future[None] | None = None
        for msg in batch:
            if self._durable:
                acked = driver.enqueue_acked(msg)
            else:
                driver.enqueue(msg)
        if acked is not None:
            await acked

    async def enqueue_front(self, item: Payload) -> None:
        validate_payload(item)
        reply = await self._call(EnqueueFront(item, ack=True))
        assert isinstance(reply, Enqueued), reply

    def _settings_of(self, channel: str) -> BatchSettings:
        """The channel's settings, as the Supervisor's ``_settings_of``: what the actors said applies after
        reading its settings hash (over the override), else given with ``configure``, else the defaults."""
        chan = self._channels.get(channel)
        if chan is not None and chan.applied is not None:
            return chan.applied
        return self._overrides.get(channel, self._settings)

    def _limits_of(self, channel: str, chan: _Channel) -> tuple[int, int]:
        """:func:`_limits` of the channel's settings; ``(0, 0)`` (each enqueue waits for its answer) while the
        actors read the settings hash of a channel they have not said the settings of (with ``redis=``)."""
        if self._durable and chan.applied is None:
            return 0, 0
        return _limits(self._settings_of(channel))

    def _refuses_when_busy(self, channel: str) -> bool:
        """True when the channel may refuse a message, so its enqueue waits for the answer: busy policy
        reject, or overflow reject once the channel's last reported count is near ``max_queued`` (see
        :func:`_limits`). Else the message counts against the channel's budget."""
        chan = self._channel(channel)
        if chan.budget > 0:
            chan.budget -= 1
            return False
        return True

    def _settings_changed(self, channel: str) -> None:
        """The channel's settings (``_settings_of``) may have changed: its budget follows them (the messages
        sent since its last report still count)."""
        chan = self._channels.get(channel)
        if chan is not None:
            before = chan.base - chan.queued * chan.step
            chan.base, chan.step = self._limits_of(channel, chan)
            chan.budget += chan.base - chan.queued * chan.step - before

    async def _enqueue_answered(self, msg: QueuedMessage) -> None:
        """Enqueue ``msg`` and wait for its channel's answer: with busy policy reject, it may refuse it."""
        reply = await self._call(Enqueue(msg, ack=True))
        assert isinstance(reply, Enqueued), reply

    async def _enqueue_many_answered(self, batch: list[QueuedMessage]) -> None:
        """Enqueue every message of ``batch``, in order, each answered by its channel; raise the first refusal
        once all are answered (later ones are logged). None waits for another's answer, so the messages keep
        their order among those of concurrent calls."""
        driver = await self._ensure_driver()
        replies = await asyncio.gather(*(driver.call(Enqueue(msg, ack=True)) for msg in batch),
                                       return_exceptions=True)
        first: BaseException | None = None
        for msg, reply in zip(batch, replies):
            try:
                if isinstance(reply, BaseException):
                    raise reply
                answered = self._answered(reply)
                assert isinstance(answered, Enqueued), answered
            except (ChannelBusy, QueueFull) as exc:
                if first is not None:
                    log.warning("enqueue_many: channel %r refused a message too: %s", msg.channel_id, exc)
                    continue
                first = exc
        if first is not None:
            raise first

    # -- conversations ----------------------------------------------------------------------------------------

    async def edit(self, msg: QueuedMessage) -> bool:
        validate_message(msg)
        validate_message_id(msg.message_id)
        reply = await self._call(Edit(msg))
        assert isinstance(reply, Edited), reply
        return reply.edited

    async def retract(self, channel: str, message_id: str) -> bool:
        validate_channel_id(channel)
        validate_message_id(message_id)
        reply = await self._call(Retract(channel, message_id))
        assert isinstance(reply, Retracted), reply
        return reply.retracted

    async def take_waiting(self, channel: str) -> list[QueuedMessage]:
        validate_channel_id(channel)
        reply = await self._call(TakeWaiting(channel))
        assert isinstance(reply, Taken), reply
        return list(reply.messages)

    async def dead_letters(self, channel: str) -> list[DeadLetter]:
        validate_channel_id(channel)
        reply = await self._call(GetDeadLetters(channel))
        assert isinstance(reply, DeadLetters), reply
        return list(reply.letters)

    async def replay_dead_letters(self, channel: str) -> int:
        validate_channel_id(channel)
        reply = await self._call(ReplayDeadLetters(channel))
        assert isinstance(reply, DeadLettersReplayed), reply
        return reply.count

    async def purge_dead_letters(self, channel: str) -> int:
        validate_channel_id(channel)
        reply = await self._call(PurgeDeadLetters(channel))
        assert isinstance(reply, DeadLettersPurged), reply
        return reply.count

    async def configure(self, channel: str, settings: dict[str, object]) -> None:
        validate_channel_id(channel)
        chosen = apply_settings(self._settings, settings)  # raises before anything is written
        if self._redis is not None:
            await write_settings_hash(self._redis, channel, settings, SETTINGS_WRITE_TIMEOUT)  # kept across a restart
        if settings:
            self._overrides[channel] = chosen
        else:
            self._overrides.pop(channel, None)
        chan = self._channels.get(channel)
        if chan is not None:  # the actors read the hash again, over the new override, before its next message
            chan.applied = None
        self._settings_changed(channel)
        reply = await self._call(ConfigureChannel(channel, chosen))
        assert isinstance(reply, ChannelConfigured), reply

    # -- readers --------------------------------------------------------------------------------------------

    def _synced(self) -> None:
        """Let the actors finish what they were handed, when called on the queue's loop."""
        driver = self._driver
        if driver is None:
            return
        loop = asyncio._get_running_loop()
        if loop is self._loop:
            driver.sync()
        elif loop is not None:
            raise RuntimeError("this MessageQueue belongs to another event loop: use it only on the loop of its "
                               "first use (create one queue per loop)")

    def is_channel_processing(self, channel: str) -> bool:
        self._synced()
        chan = self._channels.get(channel)
        return chan is not None and chan.busy

    def queue_size(self, channel: str) -> int:
        self._synced()
        chan = self._channels.get(channel)
        return chan.queued if chan is not None else 0

    def stats(self) -> dict[str, dict[str, Any]]:
        self._synced()
        counts = self._conversation_counts()
        known = dict.fromkeys(self._channels)
        known.update(dict.fromkeys(self._callbacks))
        result: dict[str, dict[str, Any]] = {}
        for channel_id in known:
            chan = self._channels.get(channel_id)
            snapshot = counts.get(channel_id)
            result[channel_id] = {
                "queue_size": chan.queued if chan is not None else 0,
                "is_processing": chan is not None and chan.busy,
                "has_processor": channel_id in self._callbacks,
                "duplicates": snapshot.duplicates if snapshot is not None else 0,
                "edits": snapshot.edits if snapshot is not None else 0,
                "retractions": snapshot.retractions if snapshot is not None else 0,
                "interruptions": snapshot.interruptions if snapshot is not None else 0,
                "rejections": snapshot.rejections if snapshot is not None else 0,
            }
        return result

    def _conversation_counts(self) -> dict[str, ChannelStatistics]:
        """The live channels' snapshots, asked of the actors here and now (on the queue's loop, outside a turn
        of the driver; elsewhere, none: the counts read 0)."""
        driver = self._driver
        if driver is None or not driver.running or asyncio._get_running_loop() is not self._loop:
            return {}
        future = driver.call(GetStatistics())
        driver.sync()
        if not future.done() or future.cancelled() or future.exception() is not None:
            return {}
        reply = future.result()
        return {s.channel_id: s for s in reply.channels} if isinstance(reply, Statistics) else {}

    async def statistics(self, channel: str = "") -> tuple[ChannelStatistics, ...]:
        if channel:
            validate_channel_id(channel)
        if self._driver is None:
            if self._closed:
                return ()
            await self._ensure_driver()
        reply = await self._call(GetStatistics(channel))
        assert isinstance(reply, Statistics), reply
        return reply.channels

    # -- processing --------------------------------------------------------------------------------------------

    async def start_processing(self, channel: str, callback: Callback) -> None:
        validate_channel_id(channel)
        check_callback(callback)
        if channel in self._callbacks:
            await self._ensure_driver()  # the loop check
            return
        self._callbacks[channel] = callback
        try:
            await self._call(StartProcessing(channel))
        except BaseException:
            if self._callbacks.get(channel) is callback:
                del self._callbacks[channel]
            raise

    async def cancel_batch_timer(self, channel: str) -> None:
        validate_channel_id(channel)
        reply = await self._call(HoldBatch(channel))
        assert isinstance(reply, BatchHeld), reply

    async def stop_processing(self, channel: str) -> None:
        validate_channel_id(channel)
        await self._ensure_driver()
        running: asyncio.Task[None] | None = None
        self._callbacks.pop(channel, None)
        chan = self._channels.get(channel)
        if chan is not None:
            for delivery in chan.backlog:
                delivery.settled = True  # StopChannel cancels it on the actors' side
            chan.backlog.clear()
            active = chan.active
            if active is not None and active.task is not None and not active.task.done():
                if not active.settled:
                    active.settled = True  # StopChannel cancels it on the actors' side
                    if active.task is not asyncio.current_task():
                        active.task.cancel()
                running = active.task
        reply = await self._call(StopChannel(channel))
        assert isinstance(reply, ChannelStopped), reply
        await self._call(HoldBatch(channel))
        if running is not None and running is not asyncio.current_task():
            await asyncio.wait({running})

    async def clear(self, channel: str) -> int:
        validate_channel_id(channel)
        reply = await self._call(Clear(channel))
        assert isinstance(reply, Cleared), reply
        return reply.removed

    def cancel_current(self, channel: str) -> bool:
        self._synced()
        chan = self._channels.get(channel)
        driver = self._driver
        if chan is None or driver is None:
            return False
        target: _Delivery | None = None
        for delivery in reversed(chan.backlog):
            if not delivery.settled:
                target = delivery
                chan.backlog.remove(delivery)
                break
        if target is None:
            active = chan.active
            if active is None or active.settled or active.task is None or active.task.done():
                return False
            target = active
            active.task.cancel()
        target.settled = True
        # The actors still hold exactly this delivery in flight: it is only released by our reply.
        driver.tell(CancelCurrent(channel))
        return True

    # -- closing ------------------------------------------------------------------------------------------------

    async def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        if self._closed:
            return
        driver = self._driver
        if driver is not None and driver.running and asyncio.get_running_loop() is self._loop:
            if not self._durable:  # with Redis, what is left stays stored for the next queue
                await self._leave(driver, drain, timeout)
        self._closed = True
        if self._sampler is not None:
            self._sampler.cancel()
        tasks = []
        for chan in self._channels.values():
            for delivery in (chan.active, *chan.backlog):
                if delivery is not None and delivery.task is not None and not delivery.task.done():
                    delivery.settled = True
                    delivery.task.cancel()
                    tasks.append(delivery.task)
            chan.backlog.clear()
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
            if stuck:
                log.warning(
                    "close: %d callback(s) did not end within %g s of being cancelled (channels %s); "
                    "closing without them", len(stuck), CANCEL_WAIT,
                    ", ".join(sorted(repr(c) for c, chan in self._channels.items()
                                     if chan.active is not None and chan.active.task in stuck)[:10]),
                )
        starting = self._starting
        if starting is not None:
            if not starting.done():
                await asyncio.wait({starting})
            if not starting.cancelled():
                starting.exception()  # retrieved: a start that failed or was closed under it is not news
        self._driver = None
        if self._finalizer is not None:
            self._finalizer.detach()
        if driver is not None:
            driver.stop()

    async def _leave(self, driver: LoopDriver, drain: bool, timeout: float) -> None:
        """In memory: deliver what is open or waiting (``drain``), or say what is dropped; never silently."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        if drain:
            for snapshot in await self.statistics():
                if snapshot.open_batch_size and snapshot.has_processor:
                    await self._call(FlushBatch(snapshot.channel_id))
            # A callback that closes the queue cannot wait for its own channel: it is that channel's item.
            current = asyncio.current_task()
            own = {c for c, chan in self._channels.items() if chan.active is not None and chan.active.task is current}
            while True:
                left = [
                    s for s in await self.statistics()
                    if s.has_processor and (s.queued or s.in_flight) and s.channel_id not in own
                ]
                if not left or loop.time() >= until:
                    break
                await self._progress(until - loop.time())
        dropped = [s for s in await self.statistics() if s.queued or s.open_batch_size or s.in_flight]
        if dropped:
            items = sum(s.queued for s in dropped)
            opened = sum(s.open_batch_size for s in dropped)
            flying = sum(s.in_flight for s in dropped)
            why = "drain=False" if not drain else (
                f"not delivered within {timeout:g} s" if any(s.has_processor for s in dropped)
                else "no callback was started for them")
            log.warning(
                "close dropped %d waiting item(s), %d message(s) of open batches and %d item(s) in flight on "
                "%d channel(s) (%s): %s", items, opened, flying, len(dropped), why,
                ", ".join(repr(s.channel_id) for s in dropped[:10]) + (" ..." if len(dropped) > 10 else ""),
            )

    async def _progress(self, timeout: float) -> None:
        """Wait until some callback ends (or ``timeout`` seconds)."""
        tasks = {
            chan.active.task for chan in self._channels.values()
            if chan.active is not None and chan.active.task is not None and not chan.active.task.done()
        }
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(0)  # a delivery is on its way: one loop iteration

    # -- the driver ------------------------------------------------------------------------------------------

    async def _ensure_driver(self) -> LoopDriver:
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("this MessageQueue belongs to another event loop: use it only on the loop of its "
                               "first use (create one queue per loop)")
        driver = self._driver
        if driver is not None:
            if not driver.running:
                raise RuntimeError("the MessageQueue's actor system has stopped")
            return driver
        if self._closed:
            raise RuntimeError("the MessageQueue is closed")
        if self._starting is None:
            self._loop = loop
            self._starting = loop.create_task(self._start_driver(loop))
        try:
            return await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done() and (self._starting.cancelled() or self._starting.exception() is not None):
                self._starting = None
                self._loop = None if self._driver is None else self._loop
            raise

    async def _start_driver(self, loop: asyncio.AbstractEventLoop) -> LoopDriver:
        ref = weakref.ref(self)

        def on_output(output: Output) -> None:
            queue = ref()
            if queue is not None:
                queue._handle(output)

        driver = LoopDriver(
            loop,
            on_output,
            self._settings,
            idle_timeout=self._idle_timeout,
            redis_url=self._redis_url,
            allow_volatile_redis=self._allow_volatile_redis,
            config_ttl=self._config_ttl if self._durable else None,  # the Supervisor reads the settings hash
        )
        if self._metrics is not None:
            driver.on_redis_write = self._metrics.redis_written
        try:
            await driver.start()
        except UnsafeRedis as exc:
            text, flag = str(exc), "Pass --allow-volatile-redis to accept it"
            hint = "Pass allow_volatile_redis=True to MessageQueue to accept it"
            raise UnsafeRedis(text.replace(flag, hint) if flag in text else f"{text}. {hint}") from exc
        # Registered before any other command: every channel reports its counts to us from the start.
        driver.tell(Observe())
        if self._closed:
            driver.stop()
            raise RuntimeError("the MessageQueue was closed while starting")
        self._finalizer = weakref.finalize(self, _abandon, driver, loop)
        self._driver = driver
        if self._metrics is not None:
            driver.on_accepted = self._metrics.accepted
            self._sampler = loop.create_task(_sample(ref, self._metrics))
        return driver

    async def _call(self, msg: object) -> object:
        driver = await self._ensure_driver()
        return self._answered(await driver.call(msg))

    def _answered(self, reply: object) -> object:
        """``reply``, or the error it reports (a ``Rejected``) raised."""
        if isinstance(reply, Rejected):
            if self._metrics is not None:
                self._metrics.rejected()
            if reply.error == "ChannelBusy":
                raise ChannelBusy(reply.reason)
            if reply.error == "QueueFull":
                raise QueueFull(reply.reason)
            if reply.error == "InvalidSettings":
                raise InvalidSettings(reply.reason)
            raise InvalidInput(reply.reason)
        return reply

    def _channel(self, channel: str) -> _Channel:
        chan = self._channels.get(channel)
        if chan is None:
            chan = self._channels[channel] = _Channel()
            chan.base, chan.step = self._limits_of(channel, chan)
            chan.budget = chan.base
        return chan

    # -- outputs of the actors, during a turn ----------------------------------------------------------------

    def _handle(self, output: Output) -> None:
        if isinstance(output, QueueChanged):
            chan = self._channel(output.channel_id)
            chan.queued = output.queued
            chan.in_flight = output.in_flight
            chan.budget = chan.base - output.queued * chan.step
        elif isinstance(output, BatchReady):
            self._ready(output)
        elif isinstance(output, CancelProcessing):
            if self._metrics is not None:
                self._metrics.cancelled()
            self._cancelled(output)
        elif isinstance(output, ChannelPassivated):
            gone = self._channels.get(output.channel_id)
            if gone is not None:
                if not gone.busy:
                    del self._channels[output.channel_id]
                elif gone.applied is not None:  # its next message has its settings hash read again
                    gone.applied = None
                    self._settings_changed(output.channel_id)
        elif isinstance(output, ChannelSettingsApplied):
            chan = self._channel(output.channel_id)
            chan.applied = output.settings
            self._settings_changed(output.channel_id)

    def _ready(self, ready: BatchReady) -> None:
        chan = self._channel(ready.channel_id)
        if ready.queued >= 0:  # the delivery doubles as the channel's QueueChanged
            chan.queued = ready.queued
            chan.in_flight = True
            chan.budget = chan.base - ready.queued * chan.step
        callback = self._callbacks.get(ready.channel_id)
        if callback is None or self._closed:
            # Only while stop_processing (or close) is under way: its StopChannel cancels this delivery.
            log.debug("channel %r: delivery %d arrived while stopping", ready.channel_id, ready.delivery_id)
            return
        delivery = _Delivery(ready.delivery_id, ready.item, ready.reply_to)
        metrics = self._metrics
        if metrics is not None:
            metrics.delivered(ready.item, ready.reason, ready.lateness)
            assert self._loop is not None
            delivery.delivered_at = self._loop.time()
        if chan.active is None:
            self._start(ready.channel_id, chan, callback, delivery)
        else:
            chan.backlog.append(delivery)

    def _start(self, channel: str, chan: _Channel, callback: Callback, delivery: _Delivery) -> None:
        chan.active = delivery
        loop = self._loop
        assert loop is not None
        task = loop.create_task(_invoke(callback, delivery.item))
        delivery.task = task
        task.add_done_callback(lambda done: self._finished(channel, chan, delivery, done))

    def _finished(self, channel: str, chan: _Channel, delivery: _Delivery, task: asyncio.Task[None]) -> None:
        error: str | None = None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                error = f"{type(exc).__name__}: {exc}"[:1000]
                log.error(
                    "callback for channel %r raised on item %s (%d messages)",
                    channel,
                    delivery.item.item_id,
                    delivery.item.size,
                    exc_info=exc,
                    extra={"channel": channel, "item_id": delivery.item.item_id,
                           "delivery_id": delivery.delivery_id, "attempt": delivery.item.attempt},
                )
        driver = self._driver
        if self._metrics is not None and not delivery.settled and self._loop is not None:
            self._metrics.processed(self._loop.time() - delivery.delivered_at)
        if not delivery.settled and driver is not None:
            # A task cancelled by someone else counts as done: the item is abandoned, the channel moves on.
            if error is None:
                driver.tell(ProcessingDone(channel, delivery.delivery_id), delivery.reply_to)
            else:
                driver.tell(ProcessingFailed(channel, delivery.delivery_id, error), delivery.reply_to)
        if chan.active is delivery:
            chan.active = None
            callback = self._callbacks.get(channel)
            while chan.backlog and callback is not None and not self._closed:
                following = chan.backlog.pop(0)
                if not following.settled:
                    self._start(channel, chan, callback, following)
                    break

    def _cancelled(self, cancel: CancelProcessing) -> None:
        chan = self._channels.get(cancel.channel_id)
        if chan is None:
            return
        active = chan.active
        if active is not None and active.delivery_id == cancel.delivery_id and not active.settled:
            active.settled = True
            if active.task is not None:
                active.task.cancel()
            return
        for delivery in chan.backlog:
            if delivery.delivery_id == cancel.delivery_id and not delivery.settled:
                chan.backlog.remove(delivery)
                return


def _limits(settings: BatchSettings) -> tuple[int, int]:
    """``(base, step)``: a channel with ``settings`` that reported ``queued`` waiting items may be sent
    ``base - queued * step`` messages before an enqueue waits for its answer. None with busy policy reject
    (any message may be refused); no limit when overflow is not reject (none is refused). With overflow
    reject the report counts items, each up to max_batch_size messages (plus an open batch), and trails the
    messages sent since: answers are awaited once these could make half of ``max_queued``, that is from the
    first ``sent`` with ``2 * ((queued + 1) * size + sent) >= max_queued``."""
    if settings.busy_policy == "reject":
        return 0, 0
    if settings.overflow != "reject":
        return sys.maxsize, 0
    size = settings.max_batch_size if settings.batching else 1
    return (settings.max_queued + 1 - 2 * size) // 2, size


SETTINGS_WRITE_TIMEOUT = 2.0
"""Seconds ``configure`` waits for Redis to write a channel's settings hash."""


METRICS_SAMPLE_INTERVAL = 5.0
"""Seconds between two snapshots of the live channels that set the metrics' gauges (with a registry)."""


async def _sample(ref: weakref.ReferenceType[LocalQueue], metrics: QueueMetrics) -> None:
    """Set the gauges from a snapshot of the live channels every ``METRICS_SAMPLE_INTERVAL`` seconds, until
    the queue is closed or gone (holds no strong reference to it between snapshots)."""
    while True:
        queue = ref()
        if queue is None or queue._closed:
            return
        try:
            snapshots = await queue.statistics()
        except (DriverStopped, RuntimeError):
            return
        metrics.observe_statistics(snapshots)
        del queue
        await asyncio.sleep(METRICS_SAMPLE_INTERVAL)


async def _invoke(callback: Callback, item: QueueItem) -> None:
    _CURRENT_ITEM.set(item)  # in this task's own context
    await callback(item.payload)


def _abandon(driver: LoopDriver, loop: asyncio.AbstractEventLoop) -> None:
    """Finalizer of a queue that was never closed (also run at interpreter exit): stop its actors on their
    loop, or just let them go if the loop is gone."""
    if loop.is_closed():
        driver.abandon()
        return
    try:
        loop.call_soon_threadsafe(driver.stop)
    except RuntimeError:  # closed meanwhile
        driver.abandon()
