"""Distributed mode: any number of stateless nodes batch messages in one shared Redis and publish finished
batches to a stream.

Redis is the engine. Each channel's open batch lives in Redis (keys of :mod:`protocol.keys`, one hash slot per
channel); Lua scripts (:mod:`message_queue.scripts`, sources in ``message_queue/lua/``) do every state change
atomically, on Redis server time:

    * ``append``: close the channel's open batch first if its deadline has passed (no flush reached it yet),
      then push the message, slide the deadline (``min(last + window, first + max_wait)``), and publish
      the batch at once when it reaches its cap (or batching is off for the channel); otherwise record the
      deadline in the shared deadline index and return it.
    * ``flush``: publish the channel's batch if its deadline has passed. Claiming the batch and appending it to
      the stream are one script: no two nodes publish the same batch, and no node can die between the two.
    * ``due``: list the channels whose deadline passed more than a grace period ago.

The rules are those of :class:`actors.batching.ChannelCore`; ``tests/test_rules_differential.py`` runs both on
random command sequences and requires the same batches, in the same order, for the same reasons.

A node (:class:`DistributedBatcher`) sends its scripts through one pipeline at a time; one ``append`` call
carries up to 64 messages of any channels, so a round trip stores hundreds of messages. Each channel's
settings hash (``message_queue:config:<channel>``) is read before its first message and re-read, alongside
the node's work, once older than ``config_ttl``. It arms a local timer for each deadline its own appends returned and runs ``flush`` when it
fires; a sweeper asks ``due`` every ``sweep_interval`` and flushes what it finds, so the batches of a node that
died are published by the others (about ``grace`` + ``sweep_interval`` after their deadline). A node whose
timer fires for a deadline that another node's later message pushed back lets it go: that node armed the new
one.

Appends are replay-safe: each carries the node's next operation number and the script skips numbers already
applied, so a pipeline sent again after a lost connection (redis-py retries, or this node's own retry) stores
each message once. Batches are therefore published exactly once to the stream the scripts write to.

A channel's state outlives its batches only for a while: once the channel holds no open batch, its state hash
expires after ``idle_ttl`` (default 24 h, renewed by each batch published on it; no expiry while a batch is
open), so Redis holds no key for a channel that went quiet. Its batch numbers (``seq``, and the batch ids
``<tag>:<seq>``) still never go back: before a state may expire the scripts raise a shared floor
(``message_queue:dist:floor``) to its ``seq``, and a state made afresh numbers its batches from above that floor.
So a channel's numbers increase and are consecutive while its state lives; a new channel, or one whose state
expired, continues from a higher number. :func:`channel_statistics` reads channels' state in one script call.

With a custom event bus (any object with ``async publish_inbound(batch)``), the scripts write to an outbox
stream and an :class:`OutboxRelay` hands each entry to the bus, deleting it after the call returned: at
least once (a relay that dies after the call and before the delete leaves the entry for the next one).
Only the node holding a lease relays, so the bus sees each channel's batches in order.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import re
import socket
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Awaitable, Callable, Final, Iterator, Sequence, Union, cast

from actors.journal import DURABILITY_SETTINGS, refuse_unsafe
from actors.journal import durability_problems as journal_durability_problems
from message_queue import scripts
from message_queue.config import ChannelConfigReader
from message_queue.event_bus import (
    EventBus,
    RedisStreamEventBus,
    check_event_bus,
    reset_current_inbound,
    set_current_inbound,
)
from protocol import codec
from protocol.errors import DecodeError, InvalidSettings, StoreUnavailable
from protocol.keys import (
    DIST_DEAD,
    DIST_DEADLINES,
    DIST_MESSAGES,
    DIST_OUTBOX,
    DIST_RELAY_LEASE,
    DIST_STATE,
    INBOUND_STREAM,
    channel_of_tag,
    channel_tag,
    config_key,
    dist_key_affixes,
    dist_key_of_tag,
    dist_node_key,
)
from protocol.limits import check_seconds
from protocol.stream import decode_entry
from protocol.values import BatchSettings, ChannelStatistics, MessageBatch, Payload, QueuedMessage

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

_FIRE_SLACK: Final = 0.001  # a local timer fires this long after its deadline, to be past it on the server too
_DUE_LIMIT: Final = 256  # channels one sweep query returns
_GOOD_RTT: Final = 0.005  # a clock sample whose round trip took longer is not trusted to correct the offset
_APPEND_CHUNK: Final = 64  # messages per call of the append script
_FLUSH_CHUNK: Final = 128  # channels per call of the flush script
_MAX_IDLE_TTL: Final = 10 * 365 * 24 * 3600  # seconds
_STATS_LIMIT: Final = 10_000  # channels one statistics call returns for every channel with an open batch


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:32] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSettings(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """How a distributed node runs, beyond the batch settings.

    ``stream``/``maxlen``: where the scripts publish and the approximate cap of that stream (0: no trimming).
    ``sweep_interval``: seconds between two queries for overdue deadlines. ``grace``: how long past its
    deadline a batch must be before a sweeper (rather than the node that armed it) flushes it.
    ``config_ttl``: how long a channel's settings read from ``message_queue:config:<channel>`` are reused.
    ``max_pending``: operations accepted but not yet answered by Redis before :meth:`~DistributedBatcher.append`
    waits. ``max_pipeline``: scripts per round trip. ``retry_for``: how long a pipeline is retried while Redis
    cannot be reached before its operations fail with :class:`StoreUnavailable`. ``node_id``: names the node
    in published entries (``by``); default ``<host>-<pid>-<random>``. ``idle_ttl``: how long a channel's
    state stays in Redis once it holds no open batch (seconds, > 0, at most 10 years; default 24 h); each
    batch published on the channel sets it again, with the ``idle_ttl`` of the node that published it.
    """

    stream: str = INBOUND_STREAM
    maxlen: int = 0
    sweep_interval: float = 0.2
    grace: float = 0.1
    config_ttl: float = 1.0
    max_pending: int = 10_000
    max_pipeline: int = 256
    retry_for: float = 30.0
    node_id: str = field(default_factory=_default_node_id)
    idle_ttl: float = scripts.IDLE_TTL

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not self.stream:
            raise InvalidSettings(f"stream must be a non-empty str, got {self.stream!r}")
        _check_int("maxlen", self.maxlen, 0)
        check_seconds("sweep_interval", self.sweep_interval, positive=True)
        check_seconds("grace", self.grace, positive=False)
        check_seconds("config_ttl", self.config_ttl, positive=False)
        _check_int("max_pending", self.max_pending, 1)
        _check_int("max_pipeline", self.max_pipeline, 1)
        check_seconds("retry_for", self.retry_for, positive=False)
        if check_seconds("idle_ttl", self.idle_ttl, positive=True) > _MAX_IDLE_TTL:
            raise InvalidSettings(f"idle_ttl must be <= {_MAX_IDLE_TTL} seconds (10 years), got {self.idle_ttl!r}")
        try:
            dist_node_key(self.node_id)
        except ValueError as exc:
            raise InvalidSettings(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """What one node did since it started, and what it is waiting for now."""

    node_id: str
    appended: int  # messages stored in Redis, in the order submitted
    published_on_append: int  # batches published by an append (full, batching off, zero window)
    published_by_timer: int  # batches this node's timers published
    published_by_sweep: int  # overdue batches its sweeper published (usually another node's)
    published_front: int  # items of enqueue_front published at once
    failed: int  # operations that failed (Redis unreachable for retry_for, or a script error)
    pending: int  # operations accepted and not answered yet
    armed: int  # deadlines this node's timers wait for


# -- operations ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Names:
    """A channel's tag and keys, encoded once."""

    tag: str
    channel: bytes
    tag_bytes: bytes
    messages_key: bytes
    state_key: bytes

    @classmethod
    def of(cls, channel: str) -> _Names:
        tag = channel_tag(channel)
        return cls(tag, channel.encode("utf-8"), tag.encode("ascii"),
                   dist_key_of_tag(DIST_MESSAGES, tag).encode("ascii"), dist_key_of_tag(DIST_STATE, tag).encode("ascii"))

    @classmethod
    def of_tag(cls, tag: str) -> _Names:
        return cls(tag, b"", tag.encode("ascii"), dist_key_of_tag(DIST_MESSAGES, tag).encode("ascii"),
                   dist_key_of_tag(DIST_STATE, tag).encode("ascii"))


@dataclass(eq=False, slots=True)
class _Append:
    channel: str
    names: _Names
    frame: bytes
    future: asyncio.Future[None]

    @property
    def tag(self) -> str:
        return self.names.tag


@dataclass(eq=False, slots=True)
class _Publish:
    channel: str
    tag: str
    frame: bytes
    count: int
    future: asyncio.Future[str]


@dataclass(eq=False, slots=True)
class _Flush:
    tag: str
    how: str  # "timer" or "sweep"

    @property
    def names(self) -> _Names:
        return _Names.of_tag(self.tag)


_Op = Union[_Append, _Publish, _Flush]


@dataclass(eq=False, slots=True)
class _Call:
    """One script call of a pipeline and the operations it carries."""

    script: str  # scripts.APPEND, FLUSH or PUBLISH
    ops: Sequence[_Op]
    how: str = ""  # of a FLUSH: "timer" or "sweep"
    first: int = 0  # number of the first operation (APPEND, PUBLISH), fixed for every replay of the call


@dataclass(eq=False, slots=True)
class _Config:
    """A channel's settings as read from Redis, and their form as an argument of the append script."""

    settings: BatchSettings
    argument: bytes
    read_at: float  # loop time

    @classmethod
    def of(cls, settings: BatchSettings, read_at: float) -> _Config:
        return cls(settings, scripts.settings_argument(settings), read_at)


def _connection_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


def _int(value: object) -> int:
    if isinstance(value, bytes):
        return int(value)
    if isinstance(value, (int, str)):
        return int(value)
    raise TypeError(f"expected an integer reply, got {type(value).__name__}")


def _str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected a string reply, got {type(value).__name__}")


async def durability_problems(redis: Redis) -> list[str]:
    """Reasons this server could silently lose acknowledged messages (empty when it is safe)."""
    from redis.exceptions import ResponseError

    config: dict[str, str] = {}
    try:
        for name in DURABILITY_SETTINGS:
            config.update({_str(k): _str(v) for k, v in (await redis.config_get(name)).items()})
    except ResponseError as exc:
        return [f"cannot read the server's persistence settings with CONFIG GET ({exc})"]
    return journal_durability_problems(config)


async def check_durability(redis: Redis, allow_volatile: bool) -> None:
    """Refuse a server that could lose acknowledged messages, unless ``allow_volatile`` (then warn).

    Raises:
        UnsafeRedis: naming every problem found.
    """
    refuse_unsafe(await durability_problems(redis), allow_volatile, "batch in", log)


async def channel_statistics(redis: Redis, channel: str = "",
                             processors: AbstractSet[str] = frozenset()) -> tuple[ChannelStatistics, ...]:
    """Snapshots of distributed channels, read in one script call (so all of them at one moment).

    ``channel`` given: its snapshot, all zeros for a channel Redis holds nothing of. Empty: one snapshot per
    channel with an open batch (the deadline index), on any node, soonest deadline first, at most 10,000.

    Fields: ``open_batch_size``, the messages of the channel's open batch; ``processed``, the batches published
    on the channel since its state was made in Redis (``enqueue_front`` and an event bus's own batches
    included; it counts from 0 again for a channel whose state expired, see :class:`NodeOptions`
    ``idle_ttl``); ``has_processor``, whether the channel is in ``processors``; ``queued``, ``cancelled`` and
    ``failed`` are 0 and ``in_flight`` False: published batches belong to the event bus's consumers.

    Raises:
        InvalidInput: for an invalid channel id.
    """
    if channel:
        tag = channel_tag(channel)
        reply = await scripts.run(redis, scripts.STATS, [dist_key_of_tag(DIST_MESSAGES, tag),
                                                         dist_key_of_tag(DIST_STATE, tag)], [tag])
    else:
        affixes = (*dist_key_affixes(DIST_MESSAGES), *dist_key_affixes(DIST_STATE))
        reply = await scripts.run(redis, scripts.STATS, [DIST_DEADLINES], [*affixes, _STATS_LIMIT])
    if not isinstance(reply, list) or len(reply) % 4:
        raise ValueError(f"the stats script answered {reply!r:.200}")
    snapshots = []
    for i in range(0, len(reply), 4):
        if channel:
            channel_id = channel
        else:
            try:
                channel_id = channel_of_tag(_str(reply[i]))
            except ValueError as exc:
                log.warning("deadline index %s holds a member that is no channel tag (%s)", DIST_DEADLINES, exc)
                continue
        size, seq, base = _int(reply[i + 1]), _int(reply[i + 2]), _int(reply[i + 3])
        snapshots.append(ChannelStatistics(
            channel_id=channel_id, queued=0, open_batch_size=size, in_flight=False, processed=max(0, seq - base),
            cancelled=0, failed=0, has_processor=channel_id in processors,
        ))
    return tuple(snapshots)


# -- the node --------------------------------------------------------------------------------------------


class DistributedBatcher:
    """One node of distributed mode: appends messages, flushes the deadlines it armed, sweeps for orphans.

    Use it on one event loop: ``await start()``, then :meth:`append` (or :meth:`submit`), :meth:`publish_now`,
    and finally :meth:`drain` (wait until this node's work is done) and :meth:`close`.

    Messages given to :meth:`submit`/:meth:`append` must already be checked
    (:func:`protocol.limits.validate_message`).
    """

    def __init__(self, redis: Redis, settings: BatchSettings, options: NodeOptions | None = None) -> None:
        self._redis = redis
        self._settings = settings
        self.options = options or NodeOptions()
        self.node_id = self.options.node_id
        self._node_key = dist_node_key(self.node_id)
        self._idle_ms = max(1, round(self.options.idle_ttl * 1000))
        self._config_reader = ChannelConfigReader(redis, settings)
        self._configs: dict[str, _Config] = {}
        self._names: dict[str, _Names] = {}
        self._next_number = 1  # of the node's next operation (appends and publishes, in the order sent)
        self._ops: deque[_Append | _Publish] = deque()
        self._flushes: deque[_Flush] = deque()
        self._flushing: set[str] = set()  # tags with a flush queued or under way
        self._in_flight = 0
        self._armed: dict[str, int] = {}  # tag -> latest deadline (server ms) this node armed
        self._heap: list[tuple[float, str]] = []  # (loop time to fire, tag)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._offset = 0.0  # server seconds minus loop seconds
        self._offset_rtt = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._by_append = f"{self.node_id}/append"
        self._by_timer = f"{self.node_id}/timer"
        self._by_sweep = f"{self.node_id}/sweep"
        self._by_front = f"{self.node_id}/front"
        self._appended = 0
        self._published_on_append = 0
        self._published_by_timer = 0
        self._published_by_sweep = 0
        self._published_front = 0
        self._failed = 0
        self.on_progress: Callable[[], None] | None = None  # called on the loop after each answered pipeline

    # -- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the scripts, estimate the offset to Redis server time, and start the writer and sweeper.

        Raises:
            StoreUnavailable: if Redis cannot be reached.
        """
        self._loop = asyncio.get_running_loop()
        try:
            await scripts.load_all(self._redis)
            for _ in range(3):
                await self._sample_clock()
        except _connection_errors() as exc:
            raise StoreUnavailable(f"cannot reach Redis: {exc}") from exc
        self._room.set()
        self._update_idle()
        self._tasks = [
            self._loop.create_task(self._write_loop(), name=f"mq-dist-writer-{self.node_id}"),
            self._loop.create_task(self._sweep_loop(), name=f"mq-dist-sweeper-{self.node_id}"),
        ]

    async def drain(self) -> None:
        """Wait until every operation submitted so far was answered and every deadline this node armed was
        flushed (or taken over by another node)."""
        while not self._is_idle():
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """Stop the timers, the writer and the sweeper. Operations still pending fail with RuntimeError;
        batches still open stay in Redis, where other nodes' sweepers (or this node's next start) publish
        them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("distributed node %s: %s ended with an error", self.node_id, task.get_name(),
                          exc_info=task.exception())
        closed = RuntimeError("the distributed node is closed")
        while self._ops:
            op = self._ops.popleft()
            if not op.future.done():
                op.future.set_exception(closed)
        self._flushes.clear()
        self._armed.clear()
        self._idle.set()

    def statistics(self) -> NodeStatistics:
        return NodeStatistics(
            node_id=self.node_id,
            appended=self._appended,
            published_on_append=self._published_on_append,
            published_by_timer=self._published_by_timer,
            published_by_sweep=self._published_by_sweep,
            published_front=self._published_front,
            failed=self._failed,
            pending=len(self._ops) + self._in_flight,
            armed=len(self._armed),
        )

    # -- operations ------------------------------------------------------------------------------------------

    def submit(self, msg: QueuedMessage) -> asyncio.Future[None]:
        """Queue ``msg`` for appending without waiting; the future resolves once it is stored in Redis.

        Raises:
            RuntimeError: if the node is closed or was never started.
        """
        loop = self._running_loop()
        channel = msg.channel_id
        names = self._names.get(channel)
        if names is None:
            names = self._names[channel] = _Names.of(channel)
        future: asyncio.Future[None] = loop.create_future()
        self._ops.append(_Append(channel, names, codec.encode(msg), future))
        self._queued()
        return future

    @property
    def has_room(self) -> bool:
        """False while ``max_pending`` operations wait for Redis."""
        return len(self._ops) + self._in_flight < self.options.max_pending

    async def wait_for_room(self) -> None:
        """Return once fewer than ``max_pending`` operations wait for Redis."""
        while not self.has_room:
            self._room.clear()
            await self._room.wait()

    async def append(self, msg: QueuedMessage) -> None:
        """Append ``msg`` to its channel's open batch in Redis; return once it is stored.

        Raises:
            StoreUnavailable: if Redis could not be reached for ``retry_for`` seconds (the message may or may
                not be stored: the connection can break after Redis ran the script).
            RuntimeError: if the node is closed.
        """
        await self.wait_for_room()
        await self.submit(msg)

    async def publish_now(self, payload: Payload) -> str:
        """Publish ``payload`` at once as a batch of its own (reason ``front``), ahead of the channel's open
        batch; return its batch id. ``payload`` must be checked (non-empty, one channel, within limits)."""
        loop = self._running_loop()
        batch = payload if isinstance(payload, MessageBatch) else _single(payload)
        channel = batch.messages[0].channel_id
        future: asyncio.Future[str] = loop.create_future()
        frame = codec.encode(batch)
        self._ops.append(_Publish(channel, channel_tag(channel), frame, len(batch.messages), future))
        self._queued()
        return await future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("the distributed node is closed")
        if self._loop is None:
            raise RuntimeError("the distributed node was not started")
        return self._loop

    def _queued(self) -> None:
        self._idle.clear()
        self._work.set()

    # -- writer ----------------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            if not self._ops and not self._flushes:
                self._update_idle()
                self._work.clear()
                await self._work.wait()
                continue
            limit = self.options.max_pipeline
            flushes = [self._flushes.popleft() for _ in range(min(limit, len(self._flushes)))]
            ops = [self._ops.popleft() for _ in range(min(max(limit - len(flushes), 1), len(self._ops)))]
            self._in_flight = len(ops)
            try:
                await self._execute(flushes, ops)
            except asyncio.CancelledError:
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(RuntimeError("the distributed node is closed"))
                raise
            except Exception as exc:  # a bug or an unexpected reply: fail these operations, keep the node up
                if self._closed:
                    raise asyncio.CancelledError() from exc
                log.exception("distributed node %s: a pipeline failed", self.node_id)
                self._fail([op for op in ops if not op.future.done()], exc)
                for flush in flushes:
                    if flush.tag in self._flushing:
                        self._flush_failed(flush.tag)
            finally:
                self._in_flight = 0
            if self.has_room:
                self._room.set()
            if self.on_progress is not None:
                self.on_progress()

    async def _execute(self, flushes: list[_Flush], ops: list[_Append | _Publish]) -> None:
        from redis.exceptions import NoScriptError

        unreachable = StoreUnavailable(f"Redis was unreachable for {self.options.retry_for:g} s")
        cold = {op.channel for op in ops if isinstance(op, _Append) and op.channel not in self._configs}
        if cold and await self._with_retry(lambda: self._read_configs(sorted(cold))) is None:
            self._fail(ops, unreachable)
            for flush in flushes:
                self._flush_failed(flush.tag)
            return
        refresh = self._stale_configs(ops)
        calls = self._calls(flushes, ops)
        while calls:
            sending = calls
            results = await self._with_retry(lambda: self._send(sending, refresh))
            if results is None:
                for call in sending:
                    self._call_failed(call, unreachable)
                return
            self._refreshed(refresh, results[len(sending):])
            refresh = []
            retry: list[_Call] = []
            for call, result in zip(sending, results):
                if isinstance(result, NoScriptError):
                    retry.append(call)
                elif isinstance(result, Exception):
                    log.error("distributed node %s: %s script failed: %s", self.node_id, call.script, result)
                    self._call_failed(call, result)
                else:
                    self._call_done(call, result)
            if retry:
                await scripts.load_all(self._redis)
                for call in retry:  # refused with NOSCRIPT, so not applied: new operation numbers are safe
                    call.first = self._number(call)
            calls = retry

    def _number(self, call: _Call) -> int:
        """Reserve operation numbers for a call's appends or publish; return the first."""
        first = self._next_number
        if call.script != scripts.FLUSH:
            self._next_number += len(call.ops)
        return first

    def _calls(self, flushes: list[_Flush], ops: list[_Append | _Publish]) -> list[_Call]:
        """The script calls of one pipeline: flushes first (they are due), then the operations in order."""
        calls: list[_Call] = []
        for how in ("timer", "sweep"):
            group = [f for f in flushes if f.how == how]
            for start in range(0, len(group), _FLUSH_CHUNK):
                calls.append(_Call(scripts.FLUSH, group[start:start + _FLUSH_CHUNK], how=how))
        run: list[_Append] = []
        for op in ops:
            if isinstance(op, _Append):
                run.append(op)
                if len(run) == _APPEND_CHUNK:
                    calls.append(_Call(scripts.APPEND, run))
                    run = []
            else:
                if run:
                    calls.append(_Call(scripts.APPEND, run))
                    run = []
                calls.append(_Call(scripts.PUBLISH, [op]))
        if run:
            calls.append(_Call(scripts.APPEND, run))
        for call in calls:
            call.first = self._number(call)
        return calls

    def _stale_configs(self, ops: list[_Append | _Publish]) -> list[str]:
        """Channels whose settings are older than ``config_ttl``: re-read in the same pipeline, used from the
        next one on (so a setting changes at most ``config_ttl`` plus one round trip late)."""
        now = self._running_loop().time()
        ttl = self.options.config_ttl
        stale: list[str] = []
        for op in ops:
            if isinstance(op, _Append):
                config = self._configs[op.channel]
                if now - config.read_at >= ttl and len(stale) < 64:
                    stale.append(op.channel)
                    config.read_at = now  # one refresh at a time per channel
        return stale

    async def _with_retry(self, send: Callable[[], Awaitable[list[object]]]) -> list[object] | None:
        """Run ``send`` until it succeeds; None once Redis was unreachable for ``retry_for`` seconds.
        Replaying is safe: appends skip operation numbers already applied, flushes are idempotent."""
        loop = self._running_loop()
        started = loop.time()
        delay = 0.05
        warned = False
        while True:
            try:
                result = await send()
                if warned:
                    log.warning("distributed node %s: Redis is reachable again", self.node_id)
                return result
            except _connection_errors() as exc:
                if self._closed:  # redis-py may turn the cancellation of a read into a connection error
                    raise asyncio.CancelledError() from exc
                if loop.time() - started >= self.options.retry_for:
                    log.error("distributed node %s: Redis unreachable for %.1f s (%s: %s); failing the "
                              "operations", self.node_id, loop.time() - started, type(exc).__name__, exc)
                    return None
                if not warned:
                    log.warning("distributed node %s: Redis unreachable (%s: %s); retrying", self.node_id,
                                type(exc).__name__, exc)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _send(self, calls: Sequence[_Call], refresh: Sequence[str]) -> list[object]:
        stream = self.options.stream
        maxlen = self.options.maxlen
        idle = self._idle_ms
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            sha = scripts.SCRIPTS[call.script].sha
            if call.script == scripts.APPEND:
                keys, args = scripts.append_call(stream, self._node_key, maxlen, self._by_append, call.first, idle,
                                                 self._append_entries(call.ops))
            elif call.script == scripts.FLUSH:
                keys, args = scripts.flush_call(stream, maxlen, self._by_timer if call.how == "timer" else self._by_sweep,
                                                idle, _flush_entries(call.ops))
            else:
                (op,) = call.ops
                assert isinstance(op, _Publish)
                keys, args = scripts.publish_call(dist_key_of_tag(DIST_STATE, op.tag), stream, maxlen, op.channel, op.tag,
                                                  op.frame, op.count, "front", self._by_front, idle,
                                                  node=(self._node_key, call.first))
            pipe.evalsha(sha, len(keys), *keys, *args)
        if refresh:
            config_keys = [config_key(channel) for channel in refresh]
            pipe.evalsha(scripts.SCRIPTS[scripts.CONFIGS].sha, len(config_keys), *config_keys)
        result: list[object] = await pipe.execute(raise_on_error=False)
        return result

    def _append_entries(self, ops: Sequence[_Op]) -> Iterator[scripts.AppendEntry]:
        configs = self._configs
        for op in ops:
            assert isinstance(op, _Append)
            names = op.names
            yield names.messages_key, names.state_key, op.frame, names.channel, names.tag_bytes, \
                configs[op.channel].argument

    async def _read_configs(self, channels: Sequence[str]) -> list[object]:
        config_keys = [config_key(channel) for channel in channels]
        reply = await scripts.run(self._redis, scripts.CONFIGS, config_keys, [])
        now = self._running_loop().time()
        for channel, settings in zip(channels, self._parse_configs(channels, reply, None)):
            self._configs[channel] = _Config.of(settings, now)
        return [reply]

    def _refreshed(self, channels: Sequence[str], results: Sequence[object]) -> None:
        if not channels:
            return
        previous = [self._configs[channel].settings for channel in channels]
        for channel, settings in zip(channels, self._parse_configs(channels, results[0], previous)):
            config = self._configs.get(channel)
            if config is not None and config.settings != settings:
                self._configs[channel] = _Config.of(settings, config.read_at)

    def _parse_configs(self, channels: Sequence[str], reply: object,
                       previous: Sequence[BatchSettings] | None) -> list[BatchSettings]:
        """The settings of ``channels`` from the configs script's reply (window, disabled per channel)."""
        if not isinstance(reply, list) or len(reply) != 2 * len(channels):
            log.warning("could not read batch settings of %d channels (%s); keeping the current ones",
                        len(channels), reply if isinstance(reply, Exception) else type(reply).__name__)
            return list(previous) if previous is not None else [self._settings] * len(channels)
        out = []
        for i, channel in enumerate(channels):
            window, disabled = reply[2 * i], reply[2 * i + 1]
            if window is None and disabled is None:
                out.append(self._settings)
                continue
            fields = {name: _str(value) for name, value in (("window", window), ("disabled", disabled))
                      if value is not None}
            out.append(self._config_reader.parse(channel, config_key(channel), fields))
        return out

    def _fail(self, ops: Sequence[_Append | _Publish], exc: BaseException) -> None:
        for op in ops:
            self._failed += 1
            if not op.future.done():
                op.future.set_exception(exc)

    def _call_failed(self, call: _Call, exc: BaseException) -> None:
        for op in call.ops:
            if isinstance(op, _Flush):
                self._flush_failed(op.tag)
            else:
                self._fail([op], exc)

    def _call_done(self, call: _Call, result: object) -> None:
        if call.script == scripts.PUBLISH:
            assert isinstance(result, list), result
            (op,) = call.ops
            assert isinstance(op, _Publish)
            self._published_front += 1
            if not op.future.done():
                op.future.set_result(_str(result[0]))
            return
        numbers = [int(n) for n in _bytes(result).split(b",")]
        server_now = numbers[0]
        if len(numbers) != len(call.ops) + 1:
            raise ValueError(f"the {call.script} script answered {len(numbers) - 1} results for {len(call.ops)}")
        if call.script == scripts.FLUSH:
            for op, outcome in zip(call.ops, numbers[1:]):
                assert isinstance(op, _Flush)
                self._flushed(op, outcome, server_now)
            return
        for op, outcome in zip(call.ops, numbers[1:]):
            assert isinstance(op, _Append)
            if outcome > 0:
                self._arm(op.tag, outcome)
            elif outcome == -1:
                self._armed.pop(op.tag, None)
                self._published_on_append += 1
            self._appended += 1  # -2: stored by an earlier send of this call, whose answer was lost
            if not op.future.done():
                op.future.set_result(None)

    # -- timers ----------------------------------------------------------------------------------------------

    def _local_time(self, deadline_ms: int) -> float:
        return deadline_ms / 1000 - self._offset + _FIRE_SLACK

    def _arm(self, tag: str, deadline: int) -> None:
        previous = self._armed.get(tag)
        self._armed[tag] = deadline
        # One heap entry per armed channel is enough: when it fires early (the window slid), it is pushed
        # again for the latest deadline.
        if previous is None or deadline < previous:
            self._push(tag, self._local_time(deadline))

    def _push(self, tag: str, at: float) -> None:
        heapq.heappush(self._heap, (at, tag))
        if at < self._timer_at - 0.0002:
            self._schedule(at)

    def _schedule(self, at: float) -> None:
        loop = self._running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        loop = self._running_loop()
        now = loop.time()
        heap = self._heap
        queued = False
        while heap and heap[0][0] <= now:
            _, tag = heapq.heappop(heap)
            deadline = self._armed.get(tag)
            if deadline is None or tag in self._flushing:
                continue  # flushed meanwhile, or a flush under way pushes it again if needed
            at = self._local_time(deadline)
            if at > now + 0.0002:  # the window slid since this entry was pushed
                heapq.heappush(heap, (at, tag))
                continue
            self._flushing.add(tag)
            self._flushes.append(_Flush(tag, "timer"))
            queued = True
        if heap:
            self._schedule(heap[0][0])
        if queued:
            self._queued()

    def _flushed(self, op: _Flush, outcome: int, server_now: int) -> None:
        self._flushing.discard(op.tag)
        if outcome == -1:
            if op.how == "timer":
                self._published_by_timer += 1
            else:
                self._published_by_sweep += 1
        mine = self._armed.get(op.tag)
        if mine is None:
            return
        if outcome > 0 and mine >= outcome:
            # Not due yet and the deadline is ours (our clock ran ahead): try again when the server says.
            remaining = (outcome - server_now) / 1000
            self._push(op.tag, self._running_loop().time() + remaining + _FIRE_SLACK)
            return
        # Published (by us or another node), or a later message on another node moved the deadline: that
        # node armed it. Either way this node has nothing left to wait for on this channel.
        del self._armed[op.tag]
        self._update_idle()

    def _flush_failed(self, tag: str) -> None:
        """A flush could not run: try again shortly if this node still waits for the channel (the sweepers
        would publish it anyway)."""
        self._flushing.discard(tag)
        if tag in self._armed and not self._closed:
            self._push(tag, self._running_loop().time() + 0.1)

    # -- sweeper ---------------------------------------------------------------------------------------------

    async def _sample_clock(self) -> list[object]:
        loop = self._running_loop()
        grace_ms = round(self.options.grace * 1000)
        sent = loop.time()
        reply = await scripts.run(self._redis, scripts.DUE, *scripts.due_call(grace_ms, _DUE_LIMIT))
        received = loop.time()
        assert isinstance(reply, list) and reply, reply
        rtt = received - sent
        offset = _int(reply[0]) / 1000 - (sent + received) / 2
        # Keep the estimate of the fastest recent round trip; a slow one only replaces it when it is far off.
        if rtt <= max(self._offset_rtt * 1.5, _GOOD_RTT) or abs(offset - self._offset) > rtt:
            self._offset = offset
            self._offset_rtt = rtt
        return reply[1:]

    async def _sweep_loop(self) -> None:
        errors = _connection_errors()
        while not self._closed:
            await asyncio.sleep(self.options.sweep_interval)
            try:
                due = await self._sample_clock()
            except errors as exc:
                if self._closed:  # redis-py may turn the cancellation of a read into a connection error
                    return
                log.warning("distributed node %s: sweep failed (%s: %s)", self.node_id, type(exc).__name__, exc)
                continue
            queued = False
            for raw in due:
                tag = _str(raw)
                if tag in self._flushing:
                    continue
                self._flushing.add(tag)
                self._flushes.append(_Flush(tag, "sweep"))
                queued = True
            if queued:
                self._queued()
            self._forget_old_configs()

    def _forget_old_configs(self) -> None:
        now = self._running_loop().time()
        horizon = max(self.options.config_ttl * 10, 60.0)
        if len(self._configs) > 10_000:
            for channel in [c for c, config in self._configs.items() if now - config.read_at > horizon]:
                del self._configs[channel]
                self._names.pop(channel, None)

    # -- idleness --------------------------------------------------------------------------------------------

    def _is_idle(self) -> bool:
        return not self._ops and not self._flushes and not self._in_flight and not self._armed

    def _update_idle(self) -> None:
        if self._is_idle():
            self._idle.set()


def _flush_entries(ops: Sequence[_Op]) -> Iterator[tuple[bytes, bytes, bytes]]:
    for op in ops:
        assert isinstance(op, _Flush)
        names = op.names
        yield names.messages_key, names.state_key, names.tag_bytes


def _single(message: QueuedMessage) -> MessageBatch:
    """A batch holding one message, stamped with its queue time."""
    return MessageBatch([message], message.queued_at, message.queued_at)


# -- relay to a custom event bus ---------------------------------------------------------------------------


class OutboxRelay:
    """Hands the entries of the outbox stream to a custom event bus, in order, deleting each after
    ``publish_inbound`` returned (at least once: a relay stopped between the two publishes it again).

    Only the holder of a lease (``message_queue:dist:relay``, ``lease`` seconds, renewed while it runs)
    relays; the others wait for it to lapse. A new holder starts from the oldest entry. While the bus's call
    runs, :func:`message_queue.event_bus.current_inbound` gives the entry (its stable ``batch_id``). A call
    that raises is retried, with growing pauses, until it succeeds (the channel order would break
    otherwise). An entry that cannot be decoded moves to ``message_queue:dist:dead`` with the reason.
    """

    def __init__(self, redis: Redis, bus: EventBus, node_id: str, *, lease: float = 2.0, block: float = 0.2,
                 outbox: str = DIST_OUTBOX) -> None:
        self._redis = redis
        self._bus = bus
        self._node_id = node_id
        self._lease_ms = round(check_seconds("lease", lease, positive=True) * 1000)
        self._block_ms = max(1, round(check_seconds("block", block, positive=True) * 1000))
        self._outbox = outbox
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.relayed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mq-dist-relay-{self._node_id}")

    async def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to be empty (relayed by this node or another)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self._redis.xlen(self._outbox) == 0:
                return True
            if loop.time() >= deadline or self._task is None or self._task.done():
                return False
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop relaying and give up the lease (entries left are relayed by another node, or the next)."""
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.error("relay of node %s ended with an error", self._node_id, exc_info=task.exception())
        try:
            await scripts.run(self._redis, scripts.RELEASE, [DIST_RELAY_LEASE], [self._node_id])
        except _connection_errors() as exc:
            log.warning("relay of node %s could not release its lease (%s); it lapses by itself", self._node_id,
                        exc)

    async def _hold(self) -> bool:
        reply = await scripts.run(self._redis, scripts.LEASE, [DIST_RELAY_LEASE], [self._node_id, self._lease_ms])
        return _int(reply) == 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        errors = _connection_errors()
        held = False
        last = "0-0"
        renewed = 0.0
        while not self._stopping:
            try:
                if not held or loop.time() - renewed > self._lease_ms / 4000:
                    was_held = held
                    held = await self._hold()
                    renewed = loop.time()
                    if not held:
                        await asyncio.sleep(self._lease_ms / 4000)
                        continue
                    if not was_held:
                        last = "0-0"  # a new holder starts from the oldest entry left
                reply = cast(
                    "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                    await self._redis.xread({self._outbox: last}, count=64, block=self._block_ms),
                )
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        if not await self._relay(_str(entry_id), fields):
                            held = False
                            break
                        last = _str(entry_id)
                        if loop.time() - renewed > self._lease_ms / 4000:
                            held = await self._hold()
                            renewed = loop.time()
                            if not held:
                                break
            except errors as exc:
                if self._stopping:  # redis-py may turn the cancellation of a read into a connection error
                    return
                log.warning("relay of node %s: Redis unreachable (%s); retrying", self._node_id, exc)
                held = False
                await asyncio.sleep(0.2)

    async def _relay(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        """Publish one entry and delete it; False if the lease was lost meanwhile."""
        try:
            inbound = decode_entry(fields, entry_id)
        except DecodeError as exc:
            log.error("relay: outbox entry %s cannot be decoded (%s); moved to %s", entry_id, exc, DIST_DEAD)
            dead: dict[bytes, bytes] = {b"entry": entry_id.encode(), b"error": str(exc)[:1000].encode()}
            dead.update({b"field:" + k: v for k, v in fields.items()})
            await self._redis.xadd(DIST_DEAD, dead)  # type: ignore[arg-type]
            await self._redis.xdel(self._outbox, entry_id)
            return True
        delay = 0.1
        while not self._stopping:
            token = set_current_inbound(inbound)
            try:
                await self._bus.publish_inbound(inbound.batch)
                break
            except Exception:
                log.exception("relay: publish_inbound failed for batch %s of channel %r; retrying in %.1f s",
                              inbound.batch_id, inbound.channel_id, delay)
            finally:
                reset_current_inbound(token)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if not await self._hold():
                return False
        else:
            return False
        await self._redis.xdel(self._outbox, entry_id)
        self.relayed += 1
        return True


# -- MessageQueue's distributed mode -------------------------------------------------------------------------


def same_server(a: Redis, b: Redis) -> bool:
    """True when two clients certainly reach the same Redis database (same pool, or same connection
    settings)."""
    if a is b or a.connection_pool is b.connection_pool:
        return True
    keys = ("host", "port", "db", "path", "username")
    ka, kb = a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs
    return (
        a.connection_pool.connection_class is b.connection_pool.connection_class
        and all(ka.get(k) == kb.get(k) for k in keys)
    )


def binary_client(redis: Redis) -> tuple[Redis, bool]:
    """``redis`` itself, or a client of the same server that returns bytes (when ``redis`` decodes replies
    to str); the flag says whether a new client was made (its owner closes it)."""
    if not redis.connection_pool.connection_kwargs.get("decode_responses"):
        return redis, False
    from redis.asyncio import ConnectionPool
    from redis.asyncio import Redis as AsyncRedis

    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    # from_pool: the new client owns its pool, so closing the client closes its connections.
    return AsyncRedis.from_pool(ConnectionPool(connection_class=pool.connection_class, **kwargs)), True


class DistributedQueue:
    """What ``MessageQueue(redis=..., event_bus=...)`` runs: a :class:`DistributedBatcher` writing to the
    bus's stream (a :class:`RedisStreamEventBus` on the same server) or to the outbox, then an
    :class:`OutboxRelay` to the bus. Starts on first use, on the caller's event loop.
    """

    def __init__(self, redis: Redis, event_bus: object, settings: BatchSettings, *, config_ttl: float = 1.0,
                 allow_volatile_redis: bool = False, options: NodeOptions | None = None) -> None:
        self.event_bus = check_event_bus(event_bus)
        self._given = redis
        self._settings = settings
        self._allow_volatile = allow_volatile_redis
        base = options or NodeOptions(config_ttl=config_ttl)
        direct = isinstance(event_bus, RedisStreamEventBus) and same_server(event_bus.redis, redis)
        if direct:
            assert isinstance(event_bus, RedisStreamEventBus)
            stream, maxlen = event_bus.stream, event_bus.maxlen
        else:
            stream, maxlen = DIST_OUTBOX, 0
        self.options = NodeOptions(
            stream=stream, maxlen=maxlen, sweep_interval=base.sweep_interval, grace=base.grace,
            config_ttl=base.config_ttl, max_pending=base.max_pending, max_pipeline=base.max_pipeline,
            retry_for=base.retry_for, node_id=base.node_id, idle_ttl=base.idle_ttl,
        )
        self.relays = not direct
        self._client: Redis | None = None
        self._owns_client = False
        self._batcher: DistributedBatcher | None = None
        self._relay: OutboxRelay | None = None
        self._starting: asyncio.Task[DistributedBatcher] | None = None
        self._closed = False

    @property
    def batcher(self) -> DistributedBatcher | None:
        return self._batcher

    async def enqueue(self, msg: QueuedMessage) -> None:
        batcher = self._batcher or await self._start()
        await batcher.append(msg)

    async def enqueue_front(self, payload: Payload) -> str:
        batcher = self._batcher or await self._start()
        return await batcher.publish_now(payload)

    async def statistics(self, channel: str, processors: AbstractSet[str]) -> tuple[ChannelStatistics, ...]:
        """:func:`channel_statistics` read from this queue's Redis (the queue need not be started); () once
        the queue is closed."""
        if self._closed:
            return ()
        return await channel_statistics(self._client or self._given, channel, processors)

    async def _start(self) -> DistributedBatcher:
        if self._closed:
            raise RuntimeError("the MessageQueue is closed")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done() and (self._starting.cancelled() or self._starting.exception() is not None):
                self._starting = None
            raise

    async def _open(self) -> DistributedBatcher:
        client, owned = binary_client(self._given)
        try:
            await check_durability(client, self._allow_volatile)
            batcher = DistributedBatcher(client, self._settings, self.options)
            await batcher.start()
        except BaseException:
            if owned:
                await client.aclose()
            raise
        self._client, self._owns_client = client, owned
        if self.relays:
            self._relay = OutboxRelay(client, self.event_bus, self.options.node_id)
            self._relay.start()
        self._batcher = batcher
        return batcher

    async def close(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout`` seconds) until this node's open deadlines are flushed and, with a custom
        bus, the outbox is relayed; then stop. What is left stays in Redis for the other nodes."""
        if self._closed:
            return
        self._closed = True
        starting = self._starting
        if starting is not None and not starting.done():
            await asyncio.wait({starting})
        batcher = self._batcher
        if batcher is not None:
            try:
                await asyncio.wait_for(batcher.drain(), timeout)
            except asyncio.TimeoutError:
                log.warning("distributed node %s: closing with deadlines still armed; other nodes' sweepers "
                            "will publish them", batcher.node_id)
            if self._relay is not None:
                await self._relay.wait_empty(min(timeout, 5.0))
                await self._relay.close()
            await batcher.close()
        if self._client is not None and self._owns_client:
            await self._client.aclose()


def batch_of(payload: Payload) -> MessageBatch:
    """``payload`` as a batch (a single message becomes a batch of one)."""
    return payload if isinstance(payload, MessageBatch) else _single(payload)

