"""``MessageQueue``: the original module's asyncio API.

``MessageQueue(...)`` is the public constructor for both modes; it holds one backend behind the
:class:`QueueBackend` protocol and forwards every call to it, with no mode branches in its methods:

* :class:`~message_queue.local.LocalQueue` (no ``event_bus``): the actor system, run on the caller's event
  loop, in memory or persisted to Redis;
* :class:`DistributedBackend` (``redis`` and ``event_bus``): batching state in Redis shared by many
  processes (:mod:`message_queue.distributed`), finished batches published to the event bus.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Iterable, Literal, Protocol

from message_queue.distributed import DistributedQueue
from message_queue.local import Callback, LocalQueue, check_callback
from message_queue.redis_url import url_of_client
from protocol.errors import InvalidSettings
from protocol.limits import check_seconds, validate_channel_id
from protocol.validation import validate_message, validate_payload
from protocol.values import BatchSettings, ChannelStatistics, DeadLetter, Payload, QueuedMessage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

    from message_queue.metrics import QueueMetrics

log = logging.getLogger(__name__)

__all__ = ["Callback", "DistributedBackend", "MessageQueue", "QueueBackend"]


class QueueBackend(Protocol):
    """What a ``MessageQueue`` runs on: each method has the contract of the ``MessageQueue`` method of the
    same name."""

    def enqueue(self, msg: QueuedMessage) -> Awaitable[None]: ...

    def enqueue_many(self, messages: Iterable[QueuedMessage]) -> Awaitable[None]: ...

    def enqueue_front(self, item: Payload) -> Awaitable[None]: ...

    def is_channel_processing(self, channel: str) -> bool: ...

    def queue_size(self, channel: str) -> int: ...

    def start_processing(self, channel: str, callback: Callback) -> Awaitable[None]: ...

    def cancel_batch_timer(self, channel: str) -> Awaitable[None]: ...

    def stop_processing(self, channel: str) -> Awaitable[None]: ...

    def clear(self, channel: str) -> Awaitable[int]: ...

    def stats(self) -> dict[str, dict[str, Any]]: ...

    def cancel_current(self, channel: str) -> bool: ...

    def statistics(self, channel: str = "") -> Awaitable[tuple[ChannelStatistics, ...]]: ...

    def close(self, drain: bool = True, timeout: float = 30.0) -> Awaitable[None]: ...

    def edit(self, msg: QueuedMessage) -> Awaitable[bool]: ...

    def retract(self, channel: str, message_id: str) -> Awaitable[bool]: ...

    def take_waiting(self, channel: str) -> Awaitable[list[QueuedMessage]]: ...

    def configure(self, channel: str, settings: dict[str, object]) -> Awaitable[None]: ...

    def dead_letters(self, channel: str) -> Awaitable[list[DeadLetter]]: ...

    def replay_dead_letters(self, channel: str) -> Awaitable[int]: ...

    def purge_dead_letters(self, channel: str) -> Awaitable[int]: ...


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
              survive a restart. ``await enqueue()`` (also ``enqueue_many``, ``enqueue_front``, ``clear``)
              returns once what it did is stored in Redis: a message whose ``enqueue`` returned is delivered
              even if the process is killed right after. When the queue's actor system starts (on first use:
              the first awaited call such as ``enqueue`` or ``start_processing``) it restores every stored
              channel. A restored
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
            * **Per-channel settings**: each channel's settings (``window``, ``disabled``, ``busy_policy``,
              ...) are read from the hash ``message_queue:config:<channel>`` (see
              :mod:`message_queue.config`) inside the actor system, in one place, as by ``serve --redis``:
              when a message arrives for the channel and the last read is older than ``config_ttl``
              seconds, the Supervisor holds the channel's commands until the hash is read, and the
              settings apply from that message on. Until the queue is told a live channel's settings, its
              ``enqueue`` calls wait for the channel's answer, so a ``reject`` rule in the hash refuses the
              very first messages.
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
        config_ttl: how long a channel's settings read from Redis are reused (seconds, default 1; 0: read
            before every message).
        idle_timeout: seconds after which a channel with no work releases its actor.
        allow_volatile_redis: with ``redis``, accept a server that may lose acknowledged writes (no AOF, or
            an evicting ``maxmemory-policy``).
        metrics_registry: a ``prometheus_client.CollectorRegistry`` to register the queue's metrics in
            (:mod:`message_queue.metrics`: counters of enqueued and delivered messages, histograms of batch
            size, lateness and processing time, gauges of the live channels refreshed every 5 seconds), so
            the application exposes them with its own. None (the default): no metrics, no cost. Not used in
            distributed mode.
        max_wait: seconds after its first message at which a batch closes however busy the channel is (None:
            no such cap).
        busy_policy: what happens to messages that arrive while the channel's callback runs: ``"queue"``
            (batched as usual), ``"collect"`` (the open batch does not close by time until the callback
            returns, then is delivered next), ``"interrupt"`` (the first one cancels the running callback,
            whose messages are put in front of the open batch; the item they are delivered in has
            ``current_item().interrupted``), ``"reject"`` (``enqueue`` raises
            :class:`~protocol.errors.ChannelBusy`).
        split_on_author: a message from another ``user_id`` closes the open batch first.
        dedupe_ttl: seconds a channel remembers the ``message_id`` of each message it accepted; a message
            with a remembered id is dropped (``enqueue`` returns normally). 0 turns it off.

        Distributed mode drops duplicates by ``dedupe_ttl`` too (inside its append script); ``busy_policy``,
        ``split_on_author``, ``edit``, ``retract``, ``take_waiting`` and ``configure`` are not available there.

    Raises:
        InvalidSettings: for a batch window < 0 or not finite, ``max_batch_size`` out of range, ``config_ttl``
            < 0 or ``idle_timeout`` <= 0; with ``redis``, an ``event_bus`` without a ``publish_inbound``
            method; or, without ``event_bus``, a ``redis`` client whose server cannot be named by a URL (a
            credential provider, Sentinel or cluster connections; see :mod:`message_queue.redis_url`).

    The queue's actors run on the event loop of its first awaited call, between the loop's other callbacks;
    there is no other thread (but one for Redis I/O with ``redis``). Using the queue from another loop
    raises ``RuntimeError``: make one queue per loop. Close it with ``await close()`` or ``async with``; a
    queue that is never closed is stopped when it is garbage collected.
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
        metrics_registry: CollectorRegistry | None = None,
        max_wait: float | None = None,
        busy_policy: str = "queue",
        split_on_author: bool = False,
        dedupe_ttl: float = 600.0,
        max_attempts: int = 1,
        retry_backoff: float = 1.0,
        processing_timeout: float | None = None,
        max_queued: int = 10_000,
        overflow: str = "reject",
        max_age: float | None = None,
    ) -> None:
        self._settings = BatchSettings(
            window=default_batch_window,
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            busy_policy=busy_policy,
            split_on_author=split_on_author,
            dedupe_ttl=dedupe_ttl,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            processing_timeout=processing_timeout,
            max_queued=max_queued,
            overflow=overflow,
            max_age=max_age,
        )
        self._config_ttl = check_seconds("config_ttl", config_ttl, positive=False)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout, positive=True)
        self._allow_volatile_redis = bool(allow_volatile_redis)
        self.default_batch_window = default_batch_window
        self.max_batch_size = max_batch_size
        self.redis = redis
        self.event_bus = event_bus
        self._queue_metrics = _metrics(metrics_registry)  # one set: a registry refuses names it holds
        self._backend: QueueBackend
        if redis is not None and event_bus is not None:
            self._backend = self._distributed(redis, event_bus)
        else:
            self._backend = LocalQueue(
                self._settings,
                redis=redis,
                redis_url=url_of_client(redis) if redis is not None else "",
                config_ttl=self._config_ttl,
                idle_timeout=self._idle_timeout,
                allow_volatile_redis=self._allow_volatile_redis,
                metrics=self._queue_metrics,
            )
        self._used = False

    def _distributed(self, redis: Redis, event_bus: object) -> DistributedBackend:
        if self._settings.busy_policy != "queue" or self._settings.split_on_author:
            raise InvalidSettings("busy_policy and split_on_author are not available in distributed mode")
        queue = DistributedQueue(redis, event_bus, self._settings, config_ttl=self._config_ttl,
                                 allow_volatile_redis=self._allow_volatile_redis)
        metrics = self._queue_metrics
        if metrics is not None:  # distributed mode feeds only the script latency histogram
            queue.on_script_seconds = metrics.script_ran
        return DistributedBackend(queue)

    # -- the original API ---------------------------------------------------------------------------------

    def set_event_bus(self, event_bus: object) -> None:
        """Attach ``event_bus``. With a Redis client this makes the queue distributed (see the class
        docstring), which must happen before its first use; without one, the bus is only stored (the queue
        delivers to the callbacks of ``start_processing``).

        Raises:
            InvalidSettings: with a Redis client, for a bus without ``publish_inbound``, or a second, different
                bus on a queue already in distributed mode.
            RuntimeError: with a Redis client, once the queue was used (its channels are held by the actor
                system of the persistence mode, and cannot move).
        """
        if self.redis is None:
            self.event_bus = event_bus
            return
        backend = self._backend
        if isinstance(backend, DistributedBackend):
            if event_bus is backend.event_bus:
                return
            raise InvalidSettings("a distributed MessageQueue keeps the event bus it was given")
        if self._used:
            raise RuntimeError("set_event_bus must be called before the MessageQueue is first used: its channels "
                               "are already held by the persistence mode's actor system")
        self._backend = self._distributed(self.redis, event_bus)
        self.event_bus = event_bus

    def enqueue(self, msg: QueuedMessage) -> Awaitable[None]:
        """Add ``msg`` to its channel's open batch. Its batching window counts from this call.

        In memory it returns at once (the actors take the message over between the loop's other callbacks).
        With ``redis`` (persistence or distributed mode) it returns once the message is stored in Redis;
        concurrent calls share one write. With the per-channel settings hash, a message that arrives once
        the channel's settings expired (``config_ttl``) waits in the actor system for one read of them;
        messages of that channel that arrive meanwhile wait behind it, in order.

        Raises:
            InvalidInput: if the message breaks a documented limit (the error names the rule and the value).
            RuntimeError: if the queue is closed, or used from another event loop than its own.
            UnsafeRedis, StoreUnavailable, StoreLocked, RedisDataLost: with ``redis``, on first use.
        """
        self._used = True
        return self._backend.enqueue(msg)

    def enqueue_many(self, messages: Iterable[QueuedMessage]) -> Awaitable[None]:
        """Add ``messages``, in order, as ``enqueue`` would one by one, with one write to Redis. Every message
        is checked first: if one breaks a limit, none is enqueued. Without ``event_bus``, when a channel may
        refuse some of them (a ``reject`` rule, or settings not known yet), each is offered to its channel
        without waiting for the answers of the others (so they keep their order among concurrent calls), and
        the first refusal is raised once all were answered; the messages not refused stay enqueued, and any
        further refusal is logged.

        Raises:
            As :meth:`enqueue`.
        """
        self._used = True
        return self._backend.enqueue_many(messages)

    def enqueue_front(self, item: Payload) -> Awaitable[None]:
        """Put a message or a batch at the head of its channel's queue, behind the item in flight; returns once
        the channel holds it (with ``redis``: once stored). In distributed mode it is published at once (held first
        while the channel is paused).

        Raises:
            InvalidInput: for an empty batch, a batch mixing channels, or a message breaking a limit.
            RuntimeError: if the queue is closed, or used from another event loop.
        """
        self._used = True
        return self._backend.enqueue_front(item)

    def is_channel_processing(self, channel: str) -> bool:
        """True while a callback for ``channel`` is running (or an item waits to start behind a cancelled
        callback that is still unwinding). Reflects every call that returned before it."""
        return self._backend.is_channel_processing(channel)

    def queue_size(self, channel: str) -> int:
        """The number of finished items of ``channel`` waiting for its callback (not the open batch, not the
        item being processed); 0 for an unknown channel, and always 0 in distributed mode (finished batches go
        to the event bus at once; see :meth:`statistics`). Reflects every call that returned before it."""
        return self._backend.queue_size(channel)

    def start_processing(self, channel: str, callback: Callback) -> Awaitable[None]:
        """Deliver ``channel``'s finished items to ``callback``, one at a time, in order. Idempotent: while
        the channel has a callback, later calls change nothing. In distributed mode the callback is only
        recorded (batches go to the event bus).

        Raises:
            InvalidInput: for an invalid channel id, or a ``callback`` that is not an async function.
        """
        validate_channel_id(channel)
        check_callback(callback)
        self._used = True
        return self._backend.start_processing(channel, callback)

    def cancel_batch_timer(self, channel: str) -> Awaitable[None]:
        """Suspend the flush of ``channel``'s open batch until its next message (it still closes when full);
        nothing happens when no batch is open."""
        self._used = True
        return self._backend.cancel_batch_timer(channel)

    def stop_processing(self, channel: str) -> Awaitable[None]:
        """Stop delivering ``channel``'s items: cancel its running callback (and wait for it to end), hold its
        open batch's timer, and detach its callback. Waiting items and the open batch are kept for the next
        ``start_processing``.

        Called from the channel's own callback, the callback is not cancelled (it ends when it returns) but
        its item is abandoned all the same.
        """
        self._used = True
        return self._backend.stop_processing(channel)

    def clear(self, channel: str) -> Awaitable[int]:
        """Discard ``channel``'s waiting items (not the open batch, not the item being processed); return
        how many."""
        self._used = True
        return self._backend.clear(channel)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per known channel: ``queue_size`` (int), ``is_processing`` and ``has_processor`` (bools), and (not in
        distributed mode) the counts of ``duplicates``, ``edits``, ``retractions``, ``interruptions`` and
        ``rejections`` (see :class:`~protocol.values.ChannelStatistics`). Known:
        channels given to ``start_processing`` and channels whose actor is alive. In distributed mode: the
        channels given to ``start_processing`` here, with ``queue_size`` 0 and ``is_processing`` False (use
        :meth:`statistics` for what Redis holds)."""
        return self._backend.stats()

    def cancel_current(self, channel: str) -> bool:
        """Cancel ``channel``'s running callback; it sees ``asyncio.CancelledError`` and the next item
        follows once it has ended. False when no callback was running.

        (If the item in flight had not started yet because a previously cancelled callback is still
        unwinding, that item is dropped without being started.)"""
        return self._backend.cancel_current(channel)

    # -- beyond the original API --------------------------------------------------------------------------

    def statistics(self, channel: str = "") -> Awaitable[tuple[ChannelStatistics, ...]]:
        """Snapshots taken by the actors themselves: one channel, or every live channel when empty.

        In distributed mode they are read from Redis in one step, whatever node holds the channel's state: one
        channel (all zeros if Redis holds nothing of it), or, when empty, every channel with an open batch (at
        most 10,000, soonest deadline first). ``open_batch_size`` is its open batch; ``processed`` counts the
        batches published on it since its state was made in Redis (from 0 again after the state of an idle
        channel expired); ``queued`` is 0 and ``in_flight`` False (published batches belong to the bus's
        consumers); ``has_processor`` says whether ``start_processing`` was called here. Empty once the queue
        is closed. See :func:`message_queue.distributed.channel_statistics`.

        Raises:
            InvalidInput: for an invalid channel id.
        """
        return self._backend.statistics(channel)

    def close(self, drain: bool = True, timeout: float = 30.0) -> Awaitable[None]:
        """Stop the queue; idempotent, and the queue cannot be used afterwards.

        In memory, with ``drain`` (the default), open batches of channels with a callback are closed at once
        and every waiting item is delivered first (for up to ``timeout`` seconds); with ``drain=False`` they
        are dropped. Anything dropped is named in one warning with its counts, never silently. Then running
        callbacks are cancelled; a callback that does not end within 5 s of its cancellation is left behind
        with a warning. With ``redis``, nothing is dropped: what the actors hold is written to Redis for the
        next queue. In distributed mode, ``close`` waits until the batches whose deadline this queue armed have
        been published.
        """
        return self._backend.close(drain, timeout)

    # -- conversations --------------------------------------------------------------------------------------

    def edit(self, msg: QueuedMessage) -> Awaitable[bool]:
        """Replace, in place, the not-yet-delivered message of ``msg.channel_id`` whose ``message_id`` is
        ``msg.message_id`` (in a waiting item or the open batch; its position and the batch's deadline do not
        change). True when replaced; False when that message was already delivered (or is being processed),
        or is unknown.

        Raises:
            InvalidInput: if ``msg`` breaks a limit or has no ``message_id``.
            NotImplementedError: in distributed mode.
        """
        self._used = True
        return self._backend.edit(msg)

    def retract(self, channel: str, message_id: str) -> Awaitable[bool]:
        """Remove the not-yet-delivered message of ``channel`` with ``message_id`` (an item left empty
        disappears). True when removed; False when already delivered or unknown.

        Raises:
            InvalidInput: for an invalid channel id or an empty or too long ``message_id``.
            NotImplementedError: in distributed mode.
        """
        self._used = True
        return self._backend.retract(channel, message_id)

    def dead_letters(self, channel: str) -> Awaitable[list[DeadLetter]]:
        """The channel's dead letters (items that failed their last attempt, ``max_attempts`` > 1), oldest
        first, at most 1,000 (``stats`` counts those dropped beyond)."""
        self._used = True
        return self._backend.dead_letters(channel)

    def replay_dead_letters(self, channel: str) -> Awaitable[int]:
        """Put the channel's dead letters back at the tail of its queue (``attempt`` 1, item ids kept) and
        forget them; return how many items went back."""
        self._used = True
        return self._backend.replay_dead_letters(channel)

    def purge_dead_letters(self, channel: str) -> Awaitable[int]:
        """Forget the channel's dead letters; return how many."""
        self._used = True
        return self._backend.purge_dead_letters(channel)

    def take_waiting(self, channel: str) -> Awaitable[list[QueuedMessage]]:
        """Remove and return, in order, every message of ``channel`` not delivered yet: the waiting items',
        then the open batch's. The item being processed is not among them.

        Raises:
            InvalidInput: for an invalid channel id.
            NotImplementedError: in distributed mode.
        """
        self._used = True
        return self._backend.take_waiting(channel)

    def configure(self, channel: str, **settings: object) -> Awaitable[None]:
        """Set ``channel``'s batching settings, from its next batch on: the queue's defaults with
        ``settings`` changed (``window``, ``max_batch_size``, ``max_wait``, ``busy_policy``,
        ``split_on_author``, ``disabled``, ``dedupe_ttl``). With no settings, the channel goes back to the
        defaults. With ``redis`` (persistence mode) they are written to the channel's settings hash
        (``message_queue:config:<channel>``, replacing what it held), so they outlive a restart.

        Raises:
            InvalidSettings: for an unknown setting or an invalid value, naming the field.
            InvalidInput: for an invalid channel id.
            NotImplementedError: in distributed mode.
        """
        self._used = True
        return self._backend.configure(channel, dict(settings))

    async def __aenter__(self) -> MessageQueue:
        return self

    async def __aexit__(self, *exc: object) -> Literal[False]:
        await self.close()
        return False


def _metrics(registry: CollectorRegistry | None) -> QueueMetrics | None:
    if registry is None:
        return None
    from message_queue.metrics import QueueMetrics  # prometheus_client, only when metrics are asked for

    return QueueMetrics(registry)


class DistributedBackend:
    """Distributed mode behind :class:`QueueBackend`: a :class:`~message_queue.distributed.DistributedQueue`,
    with the original API's answers for what belongs to the bus's consumers (nothing waits or is processed
    here)."""

    def __init__(self, queue: DistributedQueue) -> None:
        self._queue = queue
        self.event_bus = queue.event_bus
        self._callbacks: dict[str, Callback] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("this MessageQueue belongs to another event loop: use it only on the loop of its "
                               "first use (create one queue per loop)")
        if self._closed:
            raise RuntimeError("the MessageQueue is closed")

    async def enqueue(self, msg: QueuedMessage) -> None:
        validate_message(msg)
        self._check()
        await self._queue.enqueue(msg)

    async def enqueue_many(self, messages: Iterable[QueuedMessage]) -> None:
        batch = list(messages)
        for msg in batch:
            validate_message(msg)
        self._check()
        if not batch:
            return
        await self._queue.enqueue(batch[0])  # starts the node on first use
        batcher = self._queue.batcher
        assert batcher is not None
        stored = []
        for msg in batch[1:]:  # in order, written together (the batcher pipelines what is queued)
            if not batcher.has_room:
                await batcher.wait_for_room()
            stored.append(batcher.submit(msg))
        await asyncio.gather(*stored)

    async def enqueue_front(self, item: Payload) -> None:
        validate_payload(item)
        self._check()
        await self._queue.enqueue_front(item)

    def is_channel_processing(self, channel: str) -> bool:
        return False

    def queue_size(self, channel: str) -> int:
        return 0

    async def start_processing(self, channel: str, callback: Callback) -> None:
        self._check()
        if channel not in self._callbacks:
            self._callbacks[channel] = callback
            log.debug("channel %r: distributed mode publishes batches to the event bus, not to callbacks", channel)

    async def cancel_batch_timer(self, channel: str) -> None:
        validate_channel_id(channel)

    async def stop_processing(self, channel: str) -> None:
        validate_channel_id(channel)
        self._callbacks.pop(channel, None)

    async def clear(self, channel: str) -> int:
        validate_channel_id(channel)
        return 0

    def stats(self) -> dict[str, dict[str, Any]]:
        return {c: {"queue_size": 0, "is_processing": False, "has_processor": True} for c in self._callbacks}

    def cancel_current(self, channel: str) -> bool:
        return False

    async def dead_letters(self, channel: str) -> list[DeadLetter]:
        raise NotImplementedError("dead letters are not available in distributed mode")

    async def replay_dead_letters(self, channel: str) -> int:
        raise NotImplementedError("dead letters are not available in distributed mode")

    async def purge_dead_letters(self, channel: str) -> int:
        raise NotImplementedError("dead letters are not available in distributed mode")

    async def statistics(self, channel: str = "") -> tuple[ChannelStatistics, ...]:
        if channel:
            validate_channel_id(channel)
        return await self._queue.statistics(channel, set(self._callbacks))

    async def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        await self._queue.close(timeout)

    async def edit(self, msg: QueuedMessage) -> bool:
        raise NotImplementedError("edit is not available in distributed mode")

    async def retract(self, channel: str, message_id: str) -> bool:
        raise NotImplementedError("retract is not available in distributed mode")

    async def take_waiting(self, channel: str) -> list[QueuedMessage]:
        raise NotImplementedError("take_waiting is not available in distributed mode")

    async def configure(self, channel: str, settings: dict[str, object]) -> None:
        raise NotImplementedError("configure is not available in distributed mode: use the settings hash")
