"""Per-channel FIFO queues of finished items (a :class:`QueuedMessage` or a :class:`MessageBatch`), with the
interface of the original module: an in-memory one and one backed by a Redis list.

Both offer ``put`` (tail), ``enqueue_front`` (head), ``get`` (wait for the head item), ``qsize``, ``empty``,
``clear`` and ``task_done``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, TypeVar

from protocol import keys
from protocol.codec import decode, encode
from protocol.errors import DecodeError
from protocol.values import DeadLetter, MessageBatch, Payload, QueuedMessage

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _FrontQueue(asyncio.Queue[_T]):
    """An unbounded ``asyncio.Queue`` that can also put an item at its head."""

    def _init(self, maxsize: int) -> None:
        self._queue: deque[_T] = deque()
        self._to_front = False

    def _put(self, item: _T) -> None:
        if self._to_front:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)

    def _get(self) -> _T:
        return self._queue.popleft()

    def put_front_nowait(self, item: _T) -> None:
        """Put ``item`` at the head, waking a waiting getter, with ``put_nowait``'s bookkeeping."""
        self._to_front = True
        try:
            self.put_nowait(item)
        finally:
            self._to_front = False


class InMemoryRedisQueue:
    """In-process queue with the same interface as :class:`RedisQueue`; items live as long as the process.

    ``q`` is the backing ``asyncio.Queue`` (unbounded); ``task_done`` keeps its unfinished-task count, so
    ``await q.join()`` works as usual.
    """

    def __init__(self) -> None:
        self.q: _FrontQueue[Payload] = _FrontQueue()

    async def put(self, item: Payload) -> None:
        """Append ``item`` at the tail."""
        self.q.put_nowait(item)

    async def enqueue_front(self, item: Payload) -> None:
        """Insert ``item`` at the head, so the next ``get`` returns it."""
        self.q.put_front_nowait(item)

    async def get(self) -> Payload:
        """Wait until an item is available, then remove and return the head item."""
        return await self.q.get()

    async def qsize(self) -> int:
        """The number of items waiting."""
        return self.q.qsize()

    async def empty(self) -> bool:
        """True when no item is waiting."""
        return self.q.empty()

    async def clear(self) -> int:
        """Discard every waiting item (each counts as done); return how many."""
        removed = 0
        while True:
            try:
                self.q.get_nowait()
            except asyncio.QueueEmpty:
                return removed
            self.q.task_done()
            removed += 1

    def task_done(self) -> None:
        """Mark one item returned by ``get`` as processed.

        Raises:
            ValueError: if called more times than items were returned.
        """
        self.q.task_done()


class RedisQueue:
    """FIFO of one channel's items in a Redis list, safe against losing an item between ``get`` and
    ``task_done``.

    Keys (from :mod:`protocol.keys`; no channel id can make two channels share one):
        * ``message_queue:redis:<channel>`` (:attr:`key`): the waiting items, head at the left. ``put`` is an
          RPUSH, ``enqueue_front`` an LPUSH. Items are :mod:`protocol.codec` frames; ``QueuedMessage.raw`` is
          not stored (it comes back as None).
        * ``message_queue:processing:<channel>`` (:attr:`processing_key`): items taken by ``get`` and not yet
          acknowledged by ``task_done``, oldest at the left.
        * ``message_queue:dead:<channel>`` (:attr:`dead_letter_key`): stored items that could not be decoded.

    How no item is lost:
        * ``get`` moves the head item atomically from the queue list to the processing list (``BLMOVE
          ... LEFT RIGHT``) and only then decodes and returns it. The item stays in the processing list
          until ``task_done`` removes it (``LREM``). So a ``get`` that is cancelled or times out (e.g. in
          ``asyncio.wait_for``) after Redis moved the item, or a process that dies before ``task_done``,
          leaves the item in the processing list, never nowhere.
        * Every ``get`` first looks in the processing list (``LRANGE``) for an item that this object has
          not handed out (or is not acknowledging right now) and returns the oldest such one before taking
          a new item: what a cancelled ``get`` or a previous process left behind is delivered again, before
          anything newer. Delivery is therefore at least once, and in order.
        * ``task_done`` acknowledges the oldest item handed out and not yet acknowledged (one consumer per
          channel calls ``get`` then ``task_done`` for each item, as with ``asyncio.Queue``).

    Only one consumer (one ``RedisQueue`` object, in one process) may serve a channel at a time: a second
    one would take over the first one's unacknowledged items. Producers may be anywhere.

    An item that fails to decode is moved, in one transaction, from the processing list to the dead-letter
    list as a :class:`~protocol.values.DeadLetter` frame (role ``"redis"``, the error, the stored bytes, Unix
    seconds: the format every writer of that list uses, read with :func:`protocol.codec.decode_dead_letter`),
    logged as an error, and ``get`` goes on with the next item.

    The Redis client must return bytes (``decode_responses=False``, the default). It is not closed here.
    ``get`` blocks in BLMOVE without a limit, or, if the client has a ``socket_timeout``, for at most half of
    it at a time (so that the read does not time out), looping until an item comes. Redis ends a blocking
    command up to ~100 ms late, so a ``socket_timeout`` under ~0.3 s can still make ``get`` time out.
    """

    def __init__(self, redis: Redis | None, channel_key: str) -> None:
        """Bind the queue to a client and a channel.

        Raises:
            InvalidInput: if ``channel_key`` breaks the channel id limits (empty, over 256 bytes, not text).
        """
        self._redis = redis
        self.channel_key = channel_key
        self.key = keys.queue_key(channel_key)
        self.processing_key = keys.channel_key(keys.PROCESSING, channel_key)
        self.dead_letter_key = keys.channel_key(keys.DEAD_LETTER, channel_key)
        self._block = _block_seconds(redis)
        self._taken: deque[bytes] = deque()  # handed out by get(), not yet acknowledged, oldest first
        self._acking: Counter[bytes] = Counter()  # acknowledged, their LREM not yet done
        self._acks: set[asyncio.Task[None]] = set()
        self._getting = asyncio.Lock()  # concurrent gets of one object take turns: no leftover twice

    def _client(self) -> Redis:
        if self._redis is None:
            raise RuntimeError(f"RedisQueue for {self.channel_key!r} has no Redis client")
        return self._redis

    async def put(self, item: Payload) -> None:
        """Append ``item`` at the tail (RPUSH).

        Raises:
            InvalidInput: if the item breaks a limit of the codec.
            TypeError: if it is neither a QueuedMessage nor a MessageBatch.
        """
        await self._client().rpush(self.key, _encode_item(item))

    async def enqueue_front(self, item: Payload) -> None:
        """Insert ``item`` at the head (LPUSH), so the next ``get`` returns it after any leftover in the
        processing list."""
        await self._client().lpush(self.key, _encode_item(item))

    async def get(self) -> Payload:
        """Wait until an item is available and return it; it stays in the processing list until
        ``task_done``.

        A leftover of the processing list (from a cancelled ``get`` or an earlier process) comes first.
        Undecodable items are moved to the dead-letter list and skipped.
        """
        redis = self._client()
        async with self._getting:
            return await self._get(redis)

    async def _get(self, redis: Redis) -> Payload:
        while True:
            raw = await self._leftover(redis)
            if raw is None:
                moved = await redis.blmove(
                    self.key, self.processing_key, self._block, "LEFT", "RIGHT"  # type: ignore[arg-type]
                )
                if moved is None:
                    continue  # the server-side block ended (a client with socket_timeout): wait again
                raw = _as_bytes(moved)
            # No await between the move and this line: once handed out, the item is tracked.
            self._taken.append(raw)
            try:
                return decode(raw, (QueuedMessage, MessageBatch))  # type: ignore[return-value]
            except DecodeError as exc:
                self._taken.pop()
                await self._dead_letter(redis, raw, exc)

    async def qsize(self) -> int:
        """The number of waiting items (LLEN of the queue list; items taken by ``get`` and not yet
        acknowledged are not counted). 0 without a client."""
        if self._redis is None:
            return 0
        return int(await self._redis.llen(self.key))

    async def empty(self) -> bool:
        """True when no item is waiting (or there is no client)."""
        return await self.qsize() == 0

    async def clear(self) -> int:
        """Delete the queue list, atomically with counting it; return how many items it held (0 without a
        client). Items taken by ``get`` and not yet acknowledged are kept."""
        if self._redis is None:
            return 0
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.llen(self.key)
            pipe.delete(self.key)
            length, _ = await pipe.execute()
        return int(length)

    def task_done(self) -> asyncio.Task[None]:
        """Acknowledge the oldest item handed out by ``get``: remove it from the processing list.

        The removal is started at once, on the running event loop; the returned task completes when Redis
        has done it (awaiting it is optional). A Redis error is logged, never raised: the item then stays in
        the processing list and a later ``get`` delivers it again.

        Raises:
            ValueError: if no item handed out by ``get`` is waiting for acknowledgement.
            RuntimeError: if no event loop is running.
        """
        if not self._taken:
            raise ValueError("task_done() called more times than get() returned items")
        loop = asyncio.get_running_loop()
        raw = self._taken.popleft()
        self._acking[raw] += 1
        task = loop.create_task(self._acknowledge(self._client(), raw))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        return task

    # -- internals ---------------------------------------------------------------------------------------

    async def _leftover(self, redis: Redis) -> bytes | None:
        """The oldest processing-list item this object has not handed out or is not acknowledging."""
        entries = await redis.lrange(self.processing_key, 0, -1)
        if not entries:
            return None
        busy = Counter(self._taken) + self._acking
        for entry in entries:
            raw = _as_bytes(entry)
            if busy[raw] > 0:
                busy[raw] -= 1
                continue
            return raw
        return None

    async def _acknowledge(self, redis: Redis, raw: bytes) -> None:
        try:
            await redis.lrem(self.processing_key, 1, raw)  # type: ignore[arg-type]  # bytes are fine
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a connection error must not go unnoticed, nor kill the caller
            log.error(
                "RedisQueue %r: could not remove an acknowledged item from %r (%s); it will be delivered again",
                self.channel_key,
                self.processing_key,
                exc,
            )
        finally:
            self._acking[raw] -= 1
            if self._acking[raw] <= 0:
                del self._acking[raw]

    async def _dead_letter(self, redis: Redis, raw: bytes, exc: DecodeError) -> None:
        entry = encode(DeadLetter(keys.QUEUE, str(exc)[:4096], raw, time.time()))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.dead_letter_key, entry)
            pipe.lrem(self.processing_key, 1, raw)  # type: ignore[arg-type]  # bytes are fine
            await pipe.execute()
        log.error(
            "RedisQueue %r: moved an undecodable item (%d bytes) to %r: %s",
            self.channel_key,
            len(raw),
            self.dead_letter_key,
            exc,
        )


def _block_seconds(redis: Redis | None) -> float:
    """How long one BLMOVE may block: forever (0) unless the client's socket timeout forbids it."""
    pool = getattr(redis, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    timeout = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        return 0
    # Redis >= 6 takes fractional seconds, but ends a blocking command only on its next cron tick (every
    # 100 ms at the default hz 10): leave that much room before the socket timeout.
    return max(0.01, min(timeout / 2, timeout - 0.15))


def _encode_item(item: Payload) -> bytes:
    if not isinstance(item, (QueuedMessage, MessageBatch)):
        raise TypeError(f"a queue item must be a QueuedMessage or a MessageBatch, got {type(item).__name__}")
    return encode(item)


def _as_bytes(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    raise TypeError("RedisQueue needs a Redis client created with decode_responses=False (it got str)")
