"""One node of distributed mode: the writer that pipelines its scripts, the timers of the deadlines it armed,
and the sweeper of overdue ones."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Awaitable, Callable, Final, Iterator, Sequence

from message_queue import scripts
from message_queue.distributed.clock import FIRE_SLACK, ServerClock
from message_queue.distributed.operations import (
    Append,
    Call,
    Flush,
    Names,
    Op,
    Publish,
    flush_entries,
    single,
)
from message_queue.distributed.options import NodeOptions, NodeStatistics
from message_queue.distributed.replies import connection_errors, reply_bytes, reply_int, reply_str
from message_queue.distributed.settings import ChannelSettings
from protocol import codec
from protocol.errors import QueueFull, StoreUnavailable
from protocol.keys import channel_of_tag, channel_tag, dist_node_key
from protocol.values import BatchSettings, MessageBatch, Payload, QueuedMessage

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

_DUE_LIMIT: Final = 256  # channels one sweep query returns
_APPEND_CHUNK: Final = 64  # messages per call of the append script
_FLUSH_CHUNK: Final = 128  # channels per call of the flush script


class DistributedBatcher:
    """One node of distributed mode: appends messages, flushes the deadlines it armed, sweeps for orphans.

    Use it on one event loop: ``await start()``, then :meth:`append` (or :meth:`submit`), :meth:`publish_now`,
    and finally :meth:`drain` (wait until this node's work is done) and :meth:`close`.

    Messages given to :meth:`submit`/:meth:`append` must already be checked
    (:func:`protocol.validation.validate_message`).
    """

    def __init__(self, redis: Redis, settings: BatchSettings, options: NodeOptions | None = None) -> None:
        self._redis = redis
        self.options = options or NodeOptions()
        self.node_id = self.options.node_id
        self._node_key = dist_node_key(self.node_id)
        self._idle_ms = max(1, round(self.options.idle_ttl * 1000))
        self._channel_settings = ChannelSettings(redis, settings, self.options.config_ttl, self._loop_time)
        self._names: dict[str, Names] = {}
        self._next_number = 1  # of the node's next operation (appends and publishes, in the order sent)
        self._ops: deque[Append | Publish] = deque()
        self._flushes: deque[Flush] = deque()
        self._flushing: set[str] = set()  # tags with a flush queued or under way
        self._in_flight = 0
        self._armed: dict[str, int] = {}  # tag -> latest deadline (server ms) this node armed
        self._heap: list[tuple[float, str]] = []  # (loop time to fire, tag)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._clock = ServerClock()
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
        self._duplicates = 0
        self._rejected_full = 0  # appends refused: the open batch held max_queued (overflow reject)
        self._dropped_overflow = 0  # appends dropped for the same reason (overflow drop_newest)
        self.on_progress: Callable[[], None] | None = None  # called on the loop after each answered pipeline
        # Called on the loop with the seconds each script pipeline took (metrics); None: not measured.
        self.on_script_seconds: Callable[[float], None] | None = None

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
        except connection_errors() as exc:
            raise StoreUnavailable(f"cannot reach Redis: {exc}") from exc
        self._room.set()
        self._update_idle()
        self._tasks = [
            self._loop.create_task(self._write_loop(), name=f"mq-dist-writer-{self.node_id}"),
            self._loop.create_task(self._sweep_loop(), name=f"mq-dist-sweeper-{self.node_id}"),
        ]

    async def drain(self) -> None:
        """Wait until every operation submitted so far was answered and every deadline this node armed was
        flushed (or taken over by another node).

        Each armed channel is asked once, at the start, whether its batch is still open: an admin ``flush`` or
        ``clear`` (another process's script) may have closed it, and nothing tells this node, whose timer would
        then wait out the old deadline. A channel still open and not due answers with its deadline, re-armed as
        before."""
        self._recheck_armed()
        while not self._is_idle():
            self._idle.clear()
            await self._idle.wait()

    def _recheck_armed(self) -> None:
        """Queue a flush of every armed channel no flush is under way for (see :meth:`drain`)."""
        queued = False
        for tag in self._armed:
            if tag not in self._flushing:
                self._flushing.add(tag)
                self._flushes.append(Flush(tag, "timer"))
                queued = True
        if queued:
            self._queued()

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
            duplicates=self._duplicates,
            rejected_full=self._rejected_full,
            dropped_overflow=self._dropped_overflow,
        )

    # -- operations ------------------------------------------------------------------------------------------

    def submit(self, msg: QueuedMessage) -> asyncio.Future[None]:
        """Queue ``msg`` for appending without waiting; the future resolves once it is stored in Redis.

        Raises:
            RuntimeError: if the node is closed or was never started.
        """
        loop = self._running_loop()
        channel = msg.channel_id
        names = self._names_of(channel)
        future: asyncio.Future[None] = loop.create_future()
        self._ops.append(Append(channel, names, codec.encode(msg), msg.message_id.encode("utf-8"), future))
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
        batch; return its batch id, or "" when the channel is paused: the batch is then held ahead of the
        channel's other held batches, and resume publishes it first. ``payload`` must be checked (non-empty,
        one channel, within limits)."""
        loop = self._running_loop()
        batch = payload if isinstance(payload, MessageBatch) else single(payload)
        channel = batch.messages[0].channel_id
        future: asyncio.Future[str] = loop.create_future()
        frame = codec.encode(batch)
        self._ops.append(Publish(channel, channel_tag(channel), frame, len(batch.messages), future))
        self._queued()
        return await future

    def _names_of(self, channel: str) -> Names:
        names = self._names.get(channel)
        if names is None:
            names = self._names[channel] = Names.of(channel)
        return names

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("the distributed node is closed")
        if self._loop is None:
            raise RuntimeError("the distributed node was not started")
        return self._loop

    def _loop_time(self) -> float:
        return self._running_loop().time()

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

    async def _execute(self, flushes: list[Flush], ops: list[Append | Publish]) -> None:
        from redis.exceptions import NoScriptError

        unreachable = StoreUnavailable(f"Redis was unreachable for {self.options.retry_for:g} s")
        channel_settings = self._channel_settings
        appended = [op.channel for op in ops if isinstance(op, Append)]
        cold = channel_settings.unread(appended)
        if cold and await self._with_retry(lambda: channel_settings.read(cold)) is None:
            self._fail(ops, unreachable)
            for flush in flushes:
                self._flush_failed(flush.tag)
            return
        refresh = channel_settings.stale(appended)
        calls = self._calls(flushes, ops)
        while calls:
            sending = calls
            results = await self._with_retry(lambda: self._send(sending, refresh))
            if results is None:
                for call in sending:
                    self._call_failed(call, unreachable)
                return
            channel_settings.refreshed(refresh, results[len(sending):])
            refresh = []
            retry: list[Call] = []
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

    def _number(self, call: Call) -> int:
        """Reserve operation numbers for a call's appends or publish; return the first."""
        first = self._next_number
        if call.script != scripts.FLUSH:
            self._next_number += len(call.ops)
        return first

    def _calls(self, flushes: list[Flush], ops: list[Append | Publish]) -> list[Call]:
        """The script calls of one pipeline: flushes first (they are due), then the operations in order."""
        calls: list[Call] = []
        for how in ("timer", "sweep"):
            group = [f for f in flushes if f.how == how]
            for start in range(0, len(group), _FLUSH_CHUNK):
                calls.append(Call(scripts.FLUSH, group[start:start + _FLUSH_CHUNK], how=how))
        run: list[Append] = []
        for op in ops:
            if isinstance(op, Append):
                run.append(op)
                if len(run) == _APPEND_CHUNK:
                    calls.append(Call(scripts.APPEND, run))
                    run = []
            else:
                if run:
                    calls.append(Call(scripts.APPEND, run))
                    run = []
                calls.append(Call(scripts.PUBLISH, [op]))
        if run:
            calls.append(Call(scripts.APPEND, run))
        for call in calls:
            call.first = self._number(call)
        return calls

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
            except connection_errors() as exc:
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

    async def _send(self, calls: Sequence[Call], refresh: Sequence[str]) -> list[object]:
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
                by = self._by_timer if call.how == "timer" else self._by_sweep
                keys, args = scripts.flush_call(stream, maxlen, by, idle, flush_entries(call.ops))
            else:
                (op,) = call.ops
                assert isinstance(op, Publish)
                names = self._names_of(op.channel)
                keys, args = scripts.publish_call(names.state_key, names.config_key, names.held_key, stream, maxlen,
                                                  op.channel, op.tag, op.frame, op.count, "front", self._by_front,
                                                  idle, node=(self._node_key, call.first))
            pipe.evalsha(sha, len(keys), *keys, *args)
        self._channel_settings.add_refresh(pipe, refresh)
        observe = self.on_script_seconds
        if observe is None:
            result: list[object] = await pipe.execute(raise_on_error=False)
            return result
        started = time.perf_counter()
        result = await pipe.execute(raise_on_error=False)
        observe(time.perf_counter() - started)
        return result

    def _append_entries(self, ops: Sequence[Op]) -> Iterator[scripts.AppendEntry]:
        settings = self._channel_settings
        for op in ops:
            assert isinstance(op, Append)
            names = op.names
            yield names.messages_key, names.state_key, names.ids_key, names.config_key, names.held_key, op.frame, \
                names.channel, names.tag_bytes, settings.argument(op.channel), op.message_id

    def _fail(self, ops: Sequence[Append | Publish], exc: BaseException) -> None:
        for op in ops:
            self._failed += 1
            if not op.future.done():
                op.future.set_exception(exc)

    def _call_failed(self, call: Call, exc: BaseException) -> None:
        for op in call.ops:
            if isinstance(op, Flush):
                self._flush_failed(op.tag)
            else:
                self._fail([op], exc)

    def _call_done(self, call: Call, result: object) -> None:
        if call.script == scripts.PUBLISH:
            assert isinstance(result, list), result
            (op,) = call.ops
            assert isinstance(op, Publish)
            self._published_front += 1
            if not op.future.done():
                op.future.set_result(reply_str(result[0]))
            return
        numbers = [int(n) for n in reply_bytes(result).split(b",")]
        server_now = numbers[0]
        if len(numbers) != len(call.ops) + 1:
            raise ValueError(f"the {call.script} script answered {len(numbers) - 1} results for {len(call.ops)}")
        if call.script == scripts.FLUSH:
            for op, outcome in zip(call.ops, numbers[1:]):
                assert isinstance(op, Flush)
                self._flushed(op, outcome, server_now)
            return
        for op, outcome in zip(call.ops, numbers[1:]):
            assert isinstance(op, Append)
            if outcome > 0:
                self._arm(op.tag, outcome)
            elif outcome == -1:
                self._armed.pop(op.tag, None)
                self._published_on_append += 1
            if outcome == -3:  # a duplicate: dropped, nothing stored
                self._duplicates += 1
            elif outcome == -4:  # the open batch holds max_queued messages: refused (overflow reject)
                self._rejected_full += 1
                if not op.future.done():
                    op.future.set_exception(QueueFull(
                        f"channel {op.channel!r} holds max_queued messages in its open batch (overflow reject)"))
                continue
            elif outcome == -5:  # the same, dropped (overflow drop_newest)
                self._dropped_overflow += 1
            else:
                self._appended += 1  # -2: stored by an earlier send of this call, whose answer was lost
            if not op.future.done():
                op.future.set_result(None)

    # -- timers ----------------------------------------------------------------------------------------------

    def _local_time(self, deadline_ms: int) -> float:
        return self._clock.local_time(deadline_ms)

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
            self._flushes.append(Flush(tag, "timer"))
            queued = True
        if heap:
            self._schedule(heap[0][0])
        if queued:
            self._queued()

    def _flushed(self, op: Flush, outcome: int, server_now: int) -> None:
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
            self._push(op.tag, self._running_loop().time() + remaining + FIRE_SLACK)
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
        self._clock.sample(reply_int(reply[0]), sent, received)
        return reply[1:]

    async def _sweep_loop(self) -> None:
        errors = connection_errors()
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
                tag = reply_str(raw)
                if tag in self._flushing:
                    continue
                try:
                    channel_of_tag(tag)
                except ValueError:
                    log.warning("distributed node %s: the deadline index holds %r, not a channel's tag; left "
                                "alone", self.node_id, tag[:80])
                    continue
                self._flushing.add(tag)
                self._flushes.append(Flush(tag, "sweep"))
                queued = True
            if queued:
                self._queued()
            for channel in self._channel_settings.forget_old():
                self._names.pop(channel, None)

    # -- idleness --------------------------------------------------------------------------------------------

    def _is_idle(self) -> bool:
        return not self._ops and not self._flushes and not self._in_flight and not self._armed

    def _update_idle(self) -> None:
        if self._is_idle():
            self._idle.set()
