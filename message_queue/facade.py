"""``MessageQueue``: the original module's asyncio API, running on the actor system.

Threads:
    * The caller's event loop runs the facade and every callback (as a task per item).
    * One daemon thread (:class:`actors.driver.InProcessDriver`) runs a ``simpleSystemBase`` actor system:
      Supervisor, one ChannelActor per active channel, the shared Timer. It starts on first use.

Flow:
    * ``enqueue`` checks the message (``protocol.limits``, raising ``InvalidInput``) and puts it on the
      driver's inbox (a ``SimpleQueue.put``): nothing waits for the actors.
    * The driver hands ``BatchReady`` / ``CancelProcessing`` / ``QueueChanged`` to a bridge that queues them
      and wakes the loop with one ``call_soon_threadsafe`` per burst. On the loop, a ``BatchReady`` becomes a
      task running the channel's callback; when the task ends, ``ProcessingDone`` (or ``ProcessingFailed``)
      is told back to the actors, which then deliver the channel's next item.
    * Commands with a result (``clear``, ``stop_processing``, ``cancel_batch_timer``, ``start_processing``)
      await ``asyncio.wrap_future(driver.call(...))``.

Counts: the facade registers as the actors' observer (``Observe``); each ChannelActor reports its number of
waiting items whenever it changes (not when a message merely joins the open batch): in the ``BatchReady`` of a
delivery (its ``queued``), otherwise with a ``QueueChanged``. ``queue_size`` and ``stats`` read the last
values received: cheap, synchronous, and never ahead of the actors. Replies go straight to the channel actor
named by the ``BatchReady`` (its ``reply_to``), not through the Supervisor. Outputs of a command reach the
loop before the command's own reply, so after ``await clear(c)`` ``queue_size(c)`` is already 0.

Persistence (``redis=`` given): the driver's actor system also runs RedisPersistence, which journals every
channel's state to that Redis before anything leaves the actors, and restores the stored channels when the
driver starts. A restored channel delivers to the loop once ``start_processing`` registers its callback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

from actors.driver import InProcessDriver, Output
from protocol.errors import UnsafeRedis
from message_queue.config import ChannelConfigReader
from message_queue.distributed import DistributedQueue
from message_queue.redis_url import url_of_client
from protocol.errors import InvalidInput, InvalidSettings
from protocol.limits import check_seconds, validate_channel_id, validate_message, validate_payload
from protocol.messages import (
    BatchHeld,
    BatchReady,
    CancelCurrent,
    CancelProcessing,
    ChannelStopped,
    Clear,
    Cleared,
    ConfigureChannel,
    EnqueueFront,
    GetStatistics,
    HoldBatch,
    Observe,
    ProcessingDone,
    ProcessingFailed,
    QueueChanged,
    Rejected,
    StartProcessing,
    Statistics,
    StopChannel,
)
from protocol.values import BatchSettings, ChannelStatistics, Payload, QueuedMessage, QueueItem

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from thespian.actors import ActorAddress

log = logging.getLogger(__name__)

Callback = Callable[[Payload], Awaitable[object]]
"""An async function called with each finished item of a channel: a MessageBatch, a QueuedMessage (batching
disabled), or whatever was put with ``enqueue_front``."""


@dataclass(eq=False, slots=True)
class _Delivery:
    delivery_id: int
    item: QueueItem
    reply_to: ActorAddress | None = None  # the channel actor that sent it
    task: asyncio.Task[None] | None = None
    settled: bool = False  # the actors already know it ended (cancelled): no reply is due


@dataclass(eq=False, slots=True)
class _Channel:
    callback: Callback | None = None
    active: _Delivery | None = None  # its callback task is running (maybe cancelled and unwinding)
    backlog: deque[_Delivery] = field(default_factory=deque)  # delivered while ``active`` still unwinds
    queued: int = 0  # waiting items, from the last QueueChanged
    in_flight: bool = False  # from the last QueueChanged


@dataclass(eq=False, slots=True)
class _ConfigState:
    settings: BatchSettings  # what the Supervisor was last told for this channel
    read_at: float = -math.inf  # loop time of the last read
    refresh: asyncio.Task[None] | None = None
    waiting: list[QueuedMessage] = field(default_factory=list)  # enqueued while a read is under way


_DRAIN_BUDGET = 500  # outputs handled per loop callback, so a burst does not hold the loop for long


class _Bridge:
    """Carries driver outputs to the event loop: a deque filled on the driver thread, drained on the loop,
    with at most one ``call_soon_threadsafe`` pending. Holds the facade weakly so it can be collected."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: MessageQueue) -> None:
        self._loop = loop
        self._target = weakref.ref(target)
        self._pending: deque[Output] = deque()
        self._scheduled = False
        self._dead = False

    def __call__(self, output: Output) -> None:  # on the driver thread
        if self._dead:
            return
        self._pending.append(output)
        if self._scheduled:
            return
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is left to deliver to
            self._dead = True
            self._pending.clear()

    def _drain(self) -> None:  # on the loop
        # Cleared before popping: an output appended after this line schedules a new drain.
        self._scheduled = False
        if not self.drain_now(_DRAIN_BUDGET):
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def drain_now(self, budget: int | None = None) -> bool:
        """Handle pending outputs on the loop (at most ``budget``); True when none is left."""
        target = self._target()
        pending = self._pending
        handled = 0
        while pending:
            if budget is not None and handled >= budget:
                return False
            output = pending.popleft()
            handled += 1
            if target is None:
                continue
            try:
                target._handle(output)
            except Exception:
                log.exception("message_queue: failed to handle %r", output)
        return True


class MessageQueue:
    """Per-channel queue that batches rapid-succession messages and delivers them in order, one item at a
    time per channel, to the callback given to :meth:`start_processing`.

    Args:
        default_batch_window: seconds of quiet after which an open batch closes (the window slides with each
            message).
        max_batch_size: a batch closes at once when it holds this many messages.
        redis: an async Redis client (``redis.asyncio.Redis``), without ``event_bus``. Two uses:

            * **Persistence**: every channel's open batch, waiting items and item in flight are kept in that
              Redis (the actor system opens its own connection to the same server, with a URL derived from
              the client's host, port, db, username, password, Unix socket path and TLS settings), so items
              survive a restart. When the queue's actor system starts (on first use: the first awaited call
              such as ``enqueue`` or ``start_processing``) it restores every stored channel. A restored
              channel's items are delivered, in order, once ``start_processing`` is called for that channel;
              until then they wait, and a channel never started keeps its items in Redis for a later queue.
              Open batches keep their messages' arrival times, so their windows run from before the
              restart. Delivery is at least once: an item whose callback had not finished when the queue
              was closed or the process died is delivered again after the restart, so a callback may see
              the same messages twice. Use one queue per Redis database at a time: a writer lease
              enforces it, and a second queue (or node) on the database raises
              :class:`~protocol.errors.StoreLocked` on first use. The server must not
              lose acknowledged writes (``appendonly yes``, ``maxmemory-policy noeviction``): otherwise
              the first use raises
              :class:`~actors.store.UnsafeRedis`, unless ``allow_volatile_redis`` is True (then a warning is
              logged). A server that cannot be reached raises :class:`~actors.store.StoreUnavailable`; one
              that lost data written by an earlier run raises :class:`~actors.store.RedisDataLost`.
            * **Per-channel settings**: each channel's ``window`` and ``disabled`` are read from the hash
              ``message_queue:config:<channel>`` (see :mod:`message_queue.config`). A channel's hash is read
              when a message arrives for it and the last read is older than ``config_ttl`` seconds; changed
              settings are sent to the actors before that message, and apply from the channel's next batch
              on.
        event_bus: with ``redis``, switches the queue to **distributed mode** (see
            :mod:`message_queue.distributed`): batching state lives in that Redis, shared by every process
            running a queue on it, and each finished batch is published with ``await
            event_bus.publish_inbound(batch)`` (always a ``MessageBatch``). ``enqueue`` returns once the
            message is stored in Redis; the per-channel settings hash applies (``config_ttl``). A
            :class:`~message_queue.event_bus.RedisStreamEventBus` on the same server gets each batch exactly
            once, appended to its stream by the script that closes the batch; any other bus is called by a
            relay, at least once (:func:`~message_queue.event_bus.current_inbound` gives the batch id to
            deduplicate). ``start_processing`` callbacks are not used for delivery (as in the original);
            ``enqueue_front`` publishes its item at once as a batch of its own, ahead of the channel's open
            batch; ``clear`` and ``cancel_current`` find nothing to act on (published batches belong to the
            bus's consumers); ``close`` waits until the batches whose deadline this queue armed have been
            published. Without ``redis``, ``event_bus`` is only stored (``set_event_bus``).
        config_ttl: how long a channel's settings read from Redis are reused (seconds, default 1).
        idle_timeout: seconds after which a channel with no work releases its actor.
        allow_volatile_redis: with ``redis``, accept a server that may lose acknowledged writes (no AOF, or
            an evicting ``maxmemory-policy``).

    Raises:
        InvalidSettings: for a batch window < 0 or not finite, ``max_batch_size`` out of range, ``config_ttl``
            < 0 or ``idle_timeout`` <= 0; with ``redis``, an ``event_bus`` without a ``publish_inbound``
            method; or, without ``event_bus``, a ``redis`` client whose server cannot be named by a URL (a
            credential provider, Sentinel or cluster connections; see :mod:`message_queue.redis_url`).

    Use it on one event loop (the one of its first awaited call). Close it with ``await close()`` or
    ``async with``; if it is never closed, its actor thread is a daemon and is stopped when the object is
    collected. With ``redis``, ``close`` writes what the actors hold to Redis before it returns.
    """

    def __init__(
        self,
        default_batch_window: float = 5.0,
        max_batch_size: int = 10,
        redis: Redis | None = None,
        event_bus: object | None = None,
        *,
        config_ttl: float = 1.0,
        idle_timeout: float = 60.0,
        allow_volatile_redis: bool = False,
    ) -> None:
        self._allow_volatile_redis = bool(allow_volatile_redis)
        self._settings = BatchSettings(window=default_batch_window, max_batch_size=max_batch_size)
        check_seconds("config_ttl", config_ttl, positive=False)
        check_seconds("idle_timeout", idle_timeout, positive=True)
        self._distributed: DistributedQueue | None = None
        if redis is not None and event_bus is not None:
            self._distributed = DistributedQueue(redis, event_bus, self._settings, config_ttl=float(config_ttl),
                                                 allow_volatile_redis=self._allow_volatile_redis)
        self._redis_url = url_of_client(redis) if redis is not None and self._distributed is None else ""
        self.default_batch_window = default_batch_window
        self.max_batch_size = max_batch_size
        self.redis = redis
        self.event_bus = event_bus
        self._config_ttl = float(config_ttl)
        self._idle_timeout = idle_timeout
        self._config = (
            ChannelConfigReader(redis, self._settings) if redis is not None and self._distributed is None else None
        )
        self._config_states: dict[str, _ConfigState] = {}
        self._channels: dict[str, _Channel] = {}
        self._driver: InProcessDriver | None = None
        self._bridge: _Bridge | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[InProcessDriver] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False

    # -- the original API ---------------------------------------------------------------------------------

    def set_event_bus(self, event_bus: object) -> None:
        """Attach ``event_bus``. With a Redis client this upgrades the queue to distributed mode (see the
        class docstring); without one, the bus is only stored (the in-memory mode delivers to the callbacks of
        ``start_processing``).

        Raises:
            InvalidSettings: with a Redis client, for a bus without ``publish_inbound``, or a second, different
                bus on a queue already in distributed mode.
            RuntimeError: with a Redis client, once the queue was used in persistence mode (its actor system
                holds channels that cannot move).
        """
        if self.redis is None:
            self.event_bus = event_bus
            return
        if self._distributed is not None:
            if event_bus is self._distributed.event_bus:
                return
            raise InvalidSettings("a distributed MessageQueue keeps the event bus it was given")
        if self._driver is not None or self._starting is not None or self._closed:
            raise RuntimeError("set_event_bus must be called before the MessageQueue is first used: its channels "
                               "are already held by the persistence mode's actor system")
        self._distributed = DistributedQueue(self.redis, event_bus, self._settings, config_ttl=self._config_ttl,
                                             allow_volatile_redis=self._allow_volatile_redis)
        self._config = None
        self.event_bus = event_bus

    async def enqueue(self, msg: QueuedMessage) -> None:
        """Add ``msg`` to its channel's open batch.

        The message is checked here and handed to the actor thread without waiting for it. With ``redis``,
        the first message after the channel's settings expire (``config_ttl``) waits for one read of them;
        messages of that channel that arrive meanwhile wait too and keep their order. If the caller is
        cancelled during that wait, the message is still enqueued. In distributed mode it returns once the
        message is stored in Redis (a caller cancelled while waiting may still see it stored).

        Raises:
            InvalidInput: if the message breaks a documented limit (the error names the rule and the value).
            RuntimeError: if the queue is closed.
            UnsafeRedis, StoreUnavailable: in distributed mode, on first use, for a Redis that may lose
                messages or cannot be reached; StoreUnavailable also when Redis stayed unreachable for 30 s.
        """
        validate_message(msg)
        if self._distributed is not None:
            if self._closed:
                raise RuntimeError("the MessageQueue is closed")
            await self._distributed.enqueue(msg)
            return
        driver = self._driver
        if driver is None or not driver.running:
            driver = await self._ensure_driver()
        if self._config is None:
            driver.enqueue(msg, checked=True)
            return
        await self._enqueue_configured(driver, msg)

    async def enqueue_front(self, item: Payload) -> None:
        """Put a message or a batch at the head of its channel's queue, behind the item in flight.

        Raises:
            InvalidInput: for an empty batch, a batch mixing channels, or a message breaking a limit.
            RuntimeError: if the queue is closed.
        """
        validate_payload(item)
        if self._distributed is not None:
            if self._closed:
                raise RuntimeError("the MessageQueue is closed")
            await self._distributed.enqueue_front(item)
            return
        driver = await self._ensure_driver()
        driver.tell(EnqueueFront(item))

    def is_channel_processing(self, channel: str) -> bool:
        """True while a callback for ``channel`` is running (or an item waits to start behind a cancelled
        callback that is still unwinding)."""
        chan = self._channels.get(channel)
        return chan is not None and (chan.active is not None or bool(chan.backlog))

    def queue_size(self, channel: str) -> int:
        """The number of finished items of ``channel`` waiting for its callback (not the open batch, not the
        item being processed), as last reported by the actors; 0 for an unknown channel, and always 0 in
        distributed mode (finished batches go to the event bus at once; see :meth:`statistics`)."""
        chan = self._channels.get(channel)
        return chan.queued if chan is not None else 0

    async def start_processing(self, channel: str, callback: Callback) -> None:
        """Deliver ``channel``'s finished items to ``callback``, one at a time, in order. Idempotent: while
        the channel has a callback, later calls change nothing.

        Raises:
            InvalidInput: for an invalid channel id.
            TypeError: if ``callback`` is not callable.
        """
        validate_channel_id(channel)
        if not callable(callback):
            raise TypeError(f"callback must be an async function, got {type(callback).__name__}")
        chan = self._channel(channel)
        if chan.callback is not None:
            return
        chan.callback = callback
        if self._distributed is not None:
            log.debug("channel %r: distributed mode publishes batches to the event bus, not to callbacks", channel)
            return
        try:
            await self._call(StartProcessing(channel))
        except BaseException:
            if chan.callback is callback:
                chan.callback = None
            raise

    async def cancel_batch_timer(self, channel: str) -> None:
        """Suspend the flush of ``channel``'s open batch until its next message (it still closes when full);
        nothing happens when no batch is open."""
        validate_channel_id(channel)
        if self._driver is None:
            return
        reply = await self._call(HoldBatch(channel))
        assert isinstance(reply, BatchHeld), reply

    async def stop_processing(self, channel: str) -> None:
        """Stop delivering ``channel``'s items: cancel its running callback (and wait for it to end), hold its
        open batch's timer, and detach its callback. Waiting items and the open batch are kept for the next
        ``start_processing``.

        Called from the channel's own callback, the callback is not cancelled (it ends when it returns) but
        its item is abandoned all the same.
        """
        validate_channel_id(channel)
        running: asyncio.Task[None] | None = None
        chan = self._channels.get(channel)
        if chan is not None:
            chan.callback = None
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
        if self._driver is not None:
            reply = await self._call(StopChannel(channel))
            assert isinstance(reply, ChannelStopped), reply
            await self._call(HoldBatch(channel))
        if running is not None and running is not asyncio.current_task():
            await asyncio.wait({running})

    async def clear(self, channel: str) -> int:
        """Discard ``channel``'s waiting items (not the open batch, not the item being processed); return
        how many."""
        validate_channel_id(channel)
        if self._driver is None:
            return 0
        reply = await self._call(Clear(channel))
        assert isinstance(reply, Cleared), reply
        return reply.removed

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per known channel: ``queue_size`` (int), ``is_processing`` and ``has_processor`` (bools). In
        distributed mode: the channels given to ``start_processing`` here, with ``queue_size`` 0 and
        ``is_processing`` False (use :meth:`statistics` for what Redis holds)."""
        return {
            channel_id: {
                "queue_size": chan.queued,
                "is_processing": chan.active is not None or bool(chan.backlog),
                "has_processor": chan.callback is not None,
            }
            for channel_id, chan in self._channels.items()
        }

    def cancel_current(self, channel: str) -> bool:
        """Cancel ``channel``'s running callback; it sees ``asyncio.CancelledError`` and the next item
        follows once it has ended. False when no callback was running.

        (If the item in flight had not started yet because a previously cancelled callback is still
        unwinding, that item is dropped without being started.)"""
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

    # -- beyond the original API --------------------------------------------------------------------------

    async def statistics(self, channel: str = "") -> tuple[ChannelStatistics, ...]:
        """Snapshots taken by the actors themselves: one channel, or every live channel when empty.

        In distributed mode they are read from Redis in one step, whatever node holds the channel's state: one
        channel (all zeros if Redis holds nothing of it), or, when empty, every channel with an open batch (at
        most 10,000, soonest deadline first). ``open_batch_size`` is its open batch; ``processed`` counts the
        batches published on it since its state was made in Redis (from 0 again after the state of an idle
        channel expired); ``queued`` is 0 and ``in_flight`` False (published batches belong to the bus's
        consumers), as ``queue_size`` is 0 and ``stats()`` lists the channels given to ``start_processing``;
        ``has_processor`` says whether ``start_processing`` was called here. Empty once the queue is closed.
        See :func:`message_queue.distributed.channel_statistics`.

        Raises:
            InvalidInput: for an invalid channel id.
        """
        if channel:
            validate_channel_id(channel)
        if self._distributed is not None:
            processors = {c for c, chan in self._channels.items() if chan.callback is not None}
            return await self._distributed.statistics(channel, processors)
        if self._driver is None:
            return ()
        reply = await self._call(GetStatistics(channel))
        assert isinstance(reply, Statistics), reply
        return reply.channels

    async def close(self) -> None:
        """Cancel running callbacks, finish pending settings reads, and stop the actor thread. Idempotent;
        the queue cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._distributed is not None:
            await self._distributed.close()
        refreshes = [s.refresh for s in self._config_states.values() if s.refresh is not None]
        if refreshes:
            await asyncio.wait(refreshes)
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
            await asyncio.wait(tasks)
        starting = self._starting
        if starting is not None:
            if not starting.done():
                await asyncio.wait({starting})
            if not starting.cancelled():
                starting.exception()  # retrieved: a start that failed or was closed under it is not news
        driver, self._driver = self._driver, None
        if self._finalizer is not None:
            self._finalizer.detach()
        if driver is not None:
            await asyncio.to_thread(driver.stop)

    async def __aenter__(self) -> MessageQueue:
        return self

    async def __aexit__(self, *exc: object) -> Literal[False]:
        await self.close()
        return False

    # -- driver --------------------------------------------------------------------------------------------

    async def _ensure_driver(self) -> InProcessDriver:
        driver = self._driver
        if driver is not None:
            if not driver.running:
                raise RuntimeError("the MessageQueue's actor thread has stopped")
            return driver
        if self._closed:
            raise RuntimeError("the MessageQueue is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("a MessageQueue is bound to the event loop of its first use")
        if self._starting is None:
            self._loop = loop
            self._starting = loop.create_task(self._start_driver(loop))
        try:
            return await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done() and (self._starting.cancelled() or self._starting.exception() is not None):
                self._starting = None
            raise

    async def _start_driver(self, loop: asyncio.AbstractEventLoop) -> InProcessDriver:
        self._bridge = _Bridge(loop, self)
        driver = InProcessDriver(
            self._bridge,
            self._settings,
            idle_timeout=self._idle_timeout,
            redis_url=self._redis_url,
            allow_volatile_redis=self._allow_volatile_redis,
        )
        try:
            await asyncio.to_thread(driver.start)
        except UnsafeRedis as exc:
            text, flag = str(exc), "Pass --allow-volatile-redis to accept it"
            hint = "Pass allow_volatile_redis=True to MessageQueue to accept it"
            raise UnsafeRedis(text.replace(flag, hint) if flag in text else f"{text}. {hint}") from exc
        # Registered before any other command: every channel reports its counts to us from the start.
        driver.tell(Observe())
        if self._closed:
            await asyncio.to_thread(driver.stop)
            raise RuntimeError("the MessageQueue was closed while starting")
        self._finalizer = weakref.finalize(self, _stop_driver, driver)
        self._driver = driver
        return driver

    async def _call(self, msg: object) -> object:
        driver = await self._ensure_driver()
        reply = await asyncio.wrap_future(driver.call(msg))
        # Outputs the command produced were queued before its reply: handle any still pending (a large burst
        # is drained in slices), so the caller sees their effect (e.g. queue_size after clear).
        if self._bridge is not None:
            self._bridge.drain_now()
        if isinstance(reply, Rejected):
            raise InvalidInput(reply.reason)
        return reply

    def _channel(self, channel: str) -> _Channel:
        chan = self._channels.get(channel)
        if chan is None:
            chan = self._channels[channel] = _Channel()
        return chan

    # -- outputs of the actors, on the loop ------------------------------------------------------------------

    def _handle(self, output: Output) -> None:
        if isinstance(output, QueueChanged):
            chan = self._channel(output.channel_id)
            chan.queued = output.queued
            chan.in_flight = output.in_flight
        elif isinstance(output, BatchReady):
            self._ready(output)
        elif isinstance(output, CancelProcessing):
            self._cancelled(output)

    def _ready(self, ready: BatchReady) -> None:
        chan = self._channel(ready.channel_id)
        if ready.queued >= 0:  # the delivery doubles as the channel's QueueChanged
            chan.queued = ready.queued
            chan.in_flight = True
        if chan.callback is None or self._closed:
            # Only while stop_processing (or close) is under way: its StopChannel cancels this delivery.
            log.debug("channel %r: delivery %d arrived while stopping", ready.channel_id, ready.delivery_id)
            return
        delivery = _Delivery(ready.delivery_id, ready.item, ready.reply_to)
        if chan.active is None:
            self._start(ready.channel_id, chan, delivery)
        else:
            chan.backlog.append(delivery)

    def _start(self, channel: str, chan: _Channel, delivery: _Delivery) -> None:
        assert chan.callback is not None
        chan.active = delivery
        loop = self._loop
        assert loop is not None
        task = loop.create_task(_invoke(chan.callback, delivery.item.payload))
        delivery.task = task
        task.add_done_callback(lambda done: self._finished(channel, chan, delivery, done))

    def _finished(self, channel: str, chan: _Channel, delivery: _Delivery, task: asyncio.Task[None]) -> None:
        error: str | None = None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                error = f"{type(exc).__name__}: {exc}"[:1000]
                log.error(
                    "message_queue: callback for channel %r raised on item %s (%d messages)",
                    channel,
                    delivery.item.item_id,
                    delivery.item.size,
                    exc_info=exc,
                )
        driver = self._driver
        if not delivery.settled and driver is not None:
            # A task cancelled by someone else counts as done: the item is abandoned, the channel moves on.
            if error is None:
                driver.tell(ProcessingDone(channel, delivery.delivery_id), delivery.reply_to)
            else:
                driver.tell(ProcessingFailed(channel, delivery.delivery_id, error), delivery.reply_to)
        if chan.active is delivery:
            chan.active = None
            while chan.backlog and chan.callback is not None and not self._closed:
                following = chan.backlog.popleft()
                if not following.settled:
                    self._start(channel, chan, following)
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

    # -- settings from Redis -----------------------------------------------------------------------------------

    async def _enqueue_configured(self, driver: InProcessDriver, msg: QueuedMessage) -> None:
        channel = msg.channel_id
        state = self._config_states.get(channel)
        if state is None:
            state = self._config_states[channel] = _ConfigState(self._settings)
        loop = asyncio.get_running_loop()
        if state.refresh is None:
            if loop.time() - state.read_at < self._config_ttl:
                driver.enqueue(msg, checked=True)
                return
            state.refresh = loop.create_task(self._refresh_config(channel, state))
        state.waiting.append(msg)
        await asyncio.shield(state.refresh)

    async def _refresh_config(self, channel: str, state: _ConfigState) -> None:
        assert self._config is not None
        settings: BatchSettings | None = None
        try:
            settings = await self._config.read(channel)
        finally:
            # Whatever happened, the waiting messages go in, in order, behind the new settings if any.
            loop = asyncio.get_running_loop()
            driver = self._driver
            if driver is not None:
                if settings is not None and settings != state.settings:
                    driver.tell(ConfigureChannel(channel, settings))
                    state.settings = settings
                for waiting in state.waiting:
                    driver.enqueue(waiting, checked=True)
            state.waiting.clear()
            state.read_at = loop.time()
            state.refresh = None


async def _invoke(callback: Callback, payload: Payload) -> None:
    await callback(payload)


def _stop_driver(driver: InProcessDriver) -> None:
    """Finalizer of a MessageQueue that was never closed (also run at interpreter exit)."""
    driver.stop(timeout=2.0)


