"""RedisPersistence: the one actor that talks to Redis when persistence is on.

Channels send it ``Persist``: operations only. The messages that may leave only once those operations are
durable (deliveries to processors, acknowledgements to producers, command replies) stay with the channel,
behind the number (``Persist.seq``, counted by each channel actor from 1) of the Persist that carries their
operations; a Persist that no message waits for has number 0. It buffers what arrives and writes everything in
one atomic script call on a zero-delay wakeup, which fires once the messages already queued to it have been
handled: one Redis round trip serves many channels. While a write runs, what arrives goes into the next one,
started as soon as the write's outcome is in (group commit). Only after a write succeeds does each channel
that had numbered Persists in it get one ``Durable(upto)``, the highest of its numbers in the write (writes
follow arrival order, so that number covers every earlier Persist of the channel), and send what it held up
to it, in order. If Redis cannot be reached the buffer is kept and retried with backoff; nothing is confirmed
meanwhile. The watermark replaced sending every held message here and back inside ``Persist`` and
``Durable``: measured no slower (``bench/bench_watermark.py``), and with the TCP base the messages are no longer
pickled through this actor's process twice.

Where the Redis calls run: given an :class:`~actors.internal.Io` (``OpenStore.io``; the in-process drivers
give one, :class:`actors.io.ThreadIo`), every call runs on its I/O thread and its outcome comes back as a
message, so the actors (and the event loop that runs them) never wait for Redis. Without one (the TCP base,
where this actor has a process of its own) the calls run inline and their outcomes are sent to itself.

Opening the store takes the database's writer lease (:mod:`actors.store`): one node persists to a database at
a time. The lease lasts ``OpenStore.lease_seconds`` (:data:`~actors.journal.LEASE_SECONDS`, 15 s) and is
renewed every third of that on a wakeup of its own, off the write path; it is released when the actor stops.
If another node takes the lease (this one stalled, or could not reach Redis, for longer than the lease), every
later write fails instead of writing: like a Redis that lost our data, that is logged as critical, and the
operations stay buffered and are never confirmed, so the channels never send what they hold for them.

Admin commands through Redis (:mod:`actors.control_stream`): once the channels are restored, the actor polls
the control stream every :data:`CONTROL_POLL_SECONDS` on a wakeup of its own (a non-blocking ``XREAD`` on the
I/O thread, off the write path), hands each request to the Supervisor as its actor message (``PauseChannel``,
``ResumeChannel``, ``FlushBatch``, ``Clear``; ``dead-letters``: ``GetDeadLetters``, ``ReplayDeadLetters`` or
``PurgeDeadLetters``), one at a time, and pushes the answer onto the request's reply
list once the Supervisor replies. Pauses are stored with the answer, and re-applied when the store is loaded:
the Supervisor gets a ``PauseChannel`` for each stored pause before ``ChannelsLoaded``, so a restored channel
is paused before anything else reaches it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import redis
from thespian.actors import ActorAddress, WakeupMessage

from actors import control_stream
from actors.base import Dispatcher
from actors.control_stream import ControlRequest
from actors.internal import Io, Outcome, Submission
from actors.journal import (
    MAX_REPORTED_WRITES,
    ChannelsLoaded,
    Durable,
    LoadChannels,
    Op,
    OpenStore,
    Persist,
    ReadSettings,
    RedisWriteTimes,
    SettingsRead,
    StoreFailed,
    StoreOpened,
)
from actors.store import RedisStore
from protocol.errors import InvalidInput, RedisDataLost, StoreLocked
from protocol.keys import config_key
from protocol.limits import validate_channel_id
from protocol.messages import (
    BatchFlushed,
    ChannelPaused,
    Clear,
    Cleared,
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    FlushBatch,
    PauseChannel,
    Rejected,
    ResumeChannel,
)
from protocol.settings_hash import SettingsHash, text_of
from protocol.values import BatchSettings

log = logging.getLogger(__name__)

_FLUSH = "flush"
_RENEW = "renew the writer lease"
_POLL = "poll the control stream"
CONTROL_POLL_SECONDS = 0.5  # how often the lease holder looks for admin commands
CONTROL_REPLY_SECONDS = 5.0  # how long a command may wait for the Supervisor before it is answered as failed
_MAX_BACKOFF = 2.0
_LOGGED_CHANNELS = 20  # channel ids a log line of a write names at most


def ops_context(ops: Sequence[Op]) -> dict[str, object]:
    """The log context of a write of ``ops``: ``channels`` (the first few distinct channel ids, in order)
    and ``channel`` when they are all of one channel."""
    channels = list(dict.fromkeys(op.channel_id for op in ops))
    context: dict[str, object] = {"channels": channels[:_LOGGED_CHANNELS]}
    if len(channels) == 1:
        context["channel"] = channels[0]
    return context


# What its Redis calls hand back to the actor (to itself).


@dataclass(frozen=True, slots=True)
class _Opened:
    outcome: Outcome  # the open RedisStore


@dataclass(frozen=True, slots=True)
class _Loaded:
    outcome: Outcome  # the list of ChannelSnapshot


@dataclass(frozen=True, slots=True)
class _Written:
    outcome: Outcome  # of the write in RedisPersistence._writing


@dataclass(frozen=True, slots=True)
class _Renewed:
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _Polled:
    outcome: Outcome  # (list of ControlRequest, the id to read after)


@dataclass(frozen=True, slots=True)
class _Answered:
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _SettingsFields:
    outcome: Outcome  # the settings hash's fields, as text
    request: ReadSettings
    reply_to: ActorAddress


_Answers = dict[object, tuple[ActorAddress, int]]
"""The channels that asked for ``Durable``: each one's address and the highest number it asked for, keyed by
the address's ``addressDetails`` (an address itself is not hashable)."""


@dataclass(slots=True)
class _Writing:
    """A write on its way: the first ``op_count`` buffered operations, and the channels that wait for it."""

    submitted: Submission
    op_count: int
    answers: _Answers


@dataclass(slots=True)
class _Pending:
    """The admin request at the Supervisor: what it asked, which reply answers it, and since when."""

    request: ControlRequest
    command: str
    channel: str
    since: float


@dataclass(frozen=True, slots=True)
class _Done:
    """An outcome that is already in (inline calls)."""

    value: Outcome

    def outcome(self, timeout: float | None = None) -> Outcome:
        return self.value


@dataclass(frozen=True, slots=True)
class _InlineReplies:
    """To itself, after an inline call: handle the replies kept for it (they hold values, such as the store,
    that cannot cross a process boundary, so they never travel in a message)."""


@dataclass(frozen=True, slots=True)
class _Discarded:
    """The outcome of a call nobody waits for as a message (closing the store)."""

    outcome: Outcome




class RedisPersistence(Dispatcher):
    """Write-ahead of every channel's state changes to Redis, batched per flush."""

    def __init__(self) -> None:
        super().__init__()
        self._store: RedisStore | None = None
        self._io: Io | None = None
        self._launcher: ActorAddress | None = None
        self._ops: list[Op] = []
        self._answers: _Answers = {}  # the channels that asked for Durable since the last write began
        self._flush_armed = False
        self._backoff = 0.0
        self._writing: _Writing | None = None
        self._inline: list[object] = []  # replies of inline calls, handled in order on _InlineReplies
        self._metrics: Callable[[float], None] | ActorAddress | None = None
        self._write_times: list[float] = []  # to report to the address in _metrics
        self._poll_control = True
        self._control_after = b"0-0"  # the control stream's id read up to
        self._polling = False  # a poll is on its way
        self._requests: deque[ControlRequest] = deque()  # admin requests waiting for the Supervisor
        self._settings_hash = SettingsHash(BatchSettings())  # parses settings hashes (warns once per bad value)
        self._pending: _Pending | None = None  # ... and the one at the Supervisor
        self._restoring = 0  # PauseChannel replies still due for the stored pauses

    # -- opening and loading -------------------------------------------------------------------------------

    def receiveMsg_OpenStore(self, msg: OpenStore, sender: ActorAddress) -> None:
        self._io = msg.io
        self._launcher = sender
        self._metrics = msg.metrics
        self._poll_control = msg.poll_control

        def open_store() -> RedisStore:
            store = RedisStore.from_url(msg.url, msg.lease_seconds)
            try:
                store.check_durability(msg.allow_volatile)
                store.open_epoch()
            except BaseException:
                store.close()  # gives back the lease if it was taken
                raise
            return store

        self._submit(open_store, _Opened)

    def receiveMsg__Opened(self, msg: _Opened, sender: ActorAddress) -> None:
        assert self._launcher is not None
        exc = msg.outcome.error
        if exc is not None:
            self.send(self._launcher, StoreFailed(type(exc).__name__, str(exc)))
            return
        self._store = msg.outcome.value
        self._arm_renewal()
        self.send(self._launcher, StoreOpened())

    def receiveMsg_LoadChannels(self, msg: LoadChannels, sender: ActorAddress) -> None:
        self._launcher = sender
        store = self._required_store()
        poll = self._poll_control

        def load() -> tuple[list[Any], list[str], bytes]:
            snapshots = store.load()
            if not poll:
                return snapshots, [], b"0-0"
            return snapshots, control_stream.paused_channels(store.client), control_stream.last_id(store.client)

        self._submit(load, _Loaded)

    def receiveMsg__Loaded(self, msg: _Loaded, sender: ActorAddress) -> None:
        assert self._launcher is not None
        exc = msg.outcome.error
        if exc is not None:  # the lease taken meanwhile, Redis gone...
            store, self._store = self._required_store(), None
            self._submit(store.close, _Discarded)
            self.send(self._launcher, StoreFailed(type(exc).__name__, str(exc)))
            return
        snapshots, paused, self._control_after = msg.outcome.value
        # Before ChannelsLoaded: the Supervisor holds these until the channels are back, then pauses them first.
        for channel in paused:
            self.send(self._launcher, PauseChannel(channel))
        self._restoring = len(paused)
        if paused:
            log.info("re-applied %d stored pauses", len(paused))
        self.send(self._launcher, ChannelsLoaded(tuple(snapshots)))
        if self._poll_control and not paused:
            self._arm_poll()

    # -- writing -------------------------------------------------------------------------------------------

    def receiveMsg_Persist(self, msg: Persist, sender: ActorAddress) -> None:
        self._ops.extend(msg.ops)
        if msg.seq:  # a channel's numbers only grow: the last one covers the earlier ones
            self._answers[sender.addressDetails] = (sender, msg.seq)
        self._arm_flush()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        if msg.payload == _FLUSH:
            self._flush_armed = False
            self._flush()
        elif msg.payload == _RENEW:
            store = self._store
            if store is not None:
                self._submit(store.renew_lease, _Renewed)
        elif msg.payload == _POLL:
            self._poll()

    def _arm_flush(self) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            # Fires once the messages queued meanwhile are handled: they go into the same write.
            self.wakeupAfter(timedelta(seconds=self._backoff), payload=_FLUSH)

    def _flush(self) -> None:
        """Write everything buffered, unless a write is on its way (its outcome starts the next)."""
        if self._writing is not None or not (self._ops or self._answers):
            return
        store = self._required_store()
        ops, answers, self._answers = list(self._ops), self._answers, {}
        if not ops:  # nothing written since the last write was confirmed: what they asked for is stored
            self._released(0, answers)
            return

        def write() -> float:
            started = time.perf_counter()
            store.apply(ops)
            return time.perf_counter() - started

        self._writing = _Writing(self._submit(write, _Written), len(ops), answers)

    def receiveMsg__Written(self, msg: _Written, sender: ActorAddress) -> None:
        writing, self._writing = self._writing, None
        assert writing is not None
        exc = msg.outcome.error
        if exc is not None:
            self._unwritten(writing)
            self._failed(exc, len(self._ops))
            return
        metrics = self._metrics
        if isinstance(metrics, ActorAddress):
            if len(self._write_times) < MAX_REPORTED_WRITES:
                self._write_times.append(msg.outcome.value)
        elif metrics is not None:
            metrics(msg.outcome.value)
        self._released(writing.op_count, writing.answers)
        if self._ops or self._answers:
            self._arm_flush()

    def _released(self, op_count: int, answers: _Answers) -> None:
        """The first ``op_count`` buffered operations are stored: tell each channel in ``answers`` up to which
        number its operations are."""
        del self._ops[:op_count]
        self._backoff = 0.0
        for address, upto in answers.values():
            self.send(address, Durable(upto))

    def _unwritten(self, writing: _Writing) -> None:
        """``writing`` failed: its channels wait for the next write, which begins with its operations (still
        buffered), with the numbers asked for since, which are higher."""
        self._answers = writing.answers | self._answers

    def _failed(self, exc: BaseException, op_count: int) -> None:
        """A write failed: keep every operation and unanswered channel, and try again after a backoff. The retry begins
        with the same operations, as :meth:`RedisStore.apply` requires."""
        context = ops_context(self._ops[:op_count])
        if isinstance(exc, (RedisDataLost, StoreLocked)):
            log.critical("%s; holding %d operations and every acknowledgement until an operator acts", exc,
                         op_count, extra=context)
        elif isinstance(exc, redis.RedisError):
            log.error("Redis write of %d operations failed (%s); retrying in %.2f s", op_count, exc,
                      self._next_backoff(), extra=context)
        else:
            log.error("write of %d operations failed; retrying in %.2f s", op_count, self._next_backoff(),
                      exc_info=exc, extra=context)
        self._backoff = self._next_backoff()
        self._arm_flush()

    # -- the writer lease ---------------------------------------------------------------------------------

    def receiveMsg__Discarded(self, msg: _Discarded, sender: ActorAddress) -> None:
        if msg.outcome.error is not None:
            log.warning("closing the Redis store failed: %s", msg.outcome.error)

    def receiveMsg__Renewed(self, msg: _Renewed, sender: ActorAddress) -> None:
        store = self._store
        exc = msg.outcome.error
        if store is None:
            return  # closed after a failed load
        if isinstance(exc, StoreLocked):
            log.critical("%s", exc)
            return  # nothing to renew any more
        if exc is not None:
            log.warning("could not renew the writer lease (%s); trying again in %g s", exc,
                        store.lease_seconds / 3)
        self._arm_renewal()

    def _arm_renewal(self) -> None:
        self.wakeupAfter(timedelta(seconds=self._required_store().lease_seconds / 3), payload=_RENEW)

    # -- admin commands through Redis ----------------------------------------------------------------------

    def _arm_poll(self) -> None:
        self.wakeupAfter(timedelta(seconds=CONTROL_POLL_SECONDS), payload=_POLL)

    def _poll(self) -> None:
        store = self._store
        if store is None:
            return  # closed: polling ends
        if self._write_times and isinstance(self._metrics, ActorAddress):
            self.send(self._metrics, RedisWriteTimes(tuple(self._write_times)))
            self._write_times.clear()
        pending = self._pending
        if pending is not None and time.monotonic() - pending.since > CONTROL_REPLY_SECONDS:
            self._pending = None
            self._answer(pending.request, {"ok": False, "error": f"the actors did not answer {pending.command} "
                                           f"within {CONTROL_REPLY_SECONDS:g} s"})
            self._next_request()
        if self._polling:
            self._arm_poll()
            return
        self._polling = True
        after = self._control_after
        self._submit(lambda: control_stream.poll(store.client, after), _Polled)

    def receiveMsg__Polled(self, msg: _Polled, sender: ActorAddress) -> None:
        self._polling = False
        if self._store is None:
            return
        exc = msg.outcome.error
        if exc is not None:
            log.debug("could not read admin commands from Redis: %s", exc)
        else:
            requests, self._control_after = msg.outcome.value
            self._requests.extend(requests)
            self._next_request()
        self._arm_poll()

    def _next_request(self) -> None:
        """Hand the next admin request to the Supervisor, unless one is there already."""
        while self._pending is None and self._requests:
            request = self._requests.popleft()
            try:
                command, channel, message = _command_of(request)
            except InvalidInput as exc:
                self._answer(request, {"ok": False, "error": str(exc)})
                continue
            assert self._launcher is not None
            self._pending = _Pending(request, command, channel, time.monotonic())
            self.send(self._launcher, message)

    def _reply(self, channel: str, commands: tuple[str, ...], result: dict[str, Any] | None, error: str = "",
               paused: bool | None = None) -> None:
        """The Supervisor answered a command on ``channel``: answer the pending request it belongs to."""
        pending = self._pending
        if pending is None or pending.channel != channel or pending.command not in commands:
            log.debug("a reply for %r that no pending admin command waits for, ignored", channel)
            return
        self._pending = None
        reply = {"ok": True, "result": result} if result is not None else {"ok": False, "error": error}
        self._answer(pending.request, reply, None if paused is None else (channel, paused))
        self._next_request()

    def _answer(self, request: ControlRequest, reply: dict[str, Any], paused: tuple[str, bool] | None = None) -> None:
        store = self._store
        if store is None:
            return
        self._submit(lambda: control_stream.answer(store.client, request.request_id, reply, paused), _Answered)

    def receiveMsg__Answered(self, msg: _Answered, sender: ActorAddress) -> None:
        if msg.outcome.error is not None:
            log.warning("could not answer an admin command through Redis: %s", msg.outcome.error)

    def receiveMsg_ChannelPaused(self, msg: ChannelPaused, sender: ActorAddress) -> None:
        if self._restoring > 0:  # a stored pause re-applied
            self._restoring -= 1
            if self._restoring == 0:
                self._arm_poll()
            return
        self._reply(msg.channel_id, ("pause", "resume"), {"channel": msg.channel_id, "paused": msg.paused},
                    paused=msg.paused)

    def receiveMsg_BatchFlushed(self, msg: BatchFlushed, sender: ActorAddress) -> None:
        self._reply(msg.channel_id, ("flush",), {"channel": msg.channel_id, "flushed": msg.flushed})

    def receiveMsg_Cleared(self, msg: Cleared, sender: ActorAddress) -> None:
        self._reply(msg.channel_id, ("clear",), {"channel": msg.channel_id, "removed": msg.removed})

    def receiveMsg_DeadLetters(self, msg: DeadLetters, sender: ActorAddress) -> None:
        pending = self._pending  # the request's limit was checked when it was read (_command_of)
        limit = control_stream.listing_limit(pending.request.payload) if pending is not None else None
        self._reply(msg.channel_id, (control_stream.DEAD_LETTER_ACTIONS["list"],),
                    control_stream.dead_letters_result(msg, "node", limit))

    def receiveMsg_DeadLettersReplayed(self, msg: DeadLettersReplayed, sender: ActorAddress) -> None:
        self._reply(msg.channel_id, (control_stream.DEAD_LETTER_ACTIONS["replay"],),
                    control_stream.dead_letters_result(msg, "node"))

    def receiveMsg_DeadLettersPurged(self, msg: DeadLettersPurged, sender: ActorAddress) -> None:
        self._reply(msg.channel_id, (control_stream.DEAD_LETTER_ACTIONS["purge"],),
                    control_stream.dead_letters_result(msg, "node"))

    def receiveMsg_Rejected(self, msg: Rejected, sender: ActorAddress) -> None:
        if self._restoring > 0 and msg.command == "PauseChannel":
            log.warning("a stored pause of %r was refused: %s", msg.channel_id, msg.reason,
                        extra={"channel": msg.channel_id})
            self.receiveMsg_ChannelPaused(ChannelPaused(msg.channel_id, False), sender)
            return
        self._reply(msg.channel_id, _NODE_COMMANDS_OF.get(msg.command, ()), None, error=msg.reason)

    # -- the settings hash --------------------------------------------------------------------------------

    def receiveMsg_ReadSettings(self, msg: ReadSettings, sender: ActorAddress) -> None:
        store = self._store
        if store is None:
            self.send(sender, SettingsRead(msg.channel_id, None))
            return
        key = config_key(msg.channel_id)

        def read() -> dict[str, str]:
            raw: dict[Any, Any] = store.client.hgetall(key)
            return {text_of(name): text_of(value) for name, value in raw.items()}

        self._submit(read, lambda outcome: _SettingsFields(outcome, msg, sender))

    def receiveMsg__SettingsFields(self, msg: _SettingsFields, sender: ActorAddress) -> None:
        channel = msg.request.channel_id
        exc = msg.outcome.error
        if exc is not None:
            log.warning("could not read the settings of %r from %r (%s: %s); it keeps the current ones", channel,
                        config_key(channel), type(exc).__name__, exc, extra={"channel": channel})
            self.send(msg.reply_to, SettingsRead(channel, None))
            return
        settings = self._settings_hash.parse(channel, config_key(channel), msg.outcome.value, msg.request.base)
        self.send(msg.reply_to, SettingsRead(channel, settings))

    # -- helpers ------------------------------------------------------------------------------------------

    def _submit(self, call: Callable[[], Any], reply: Callable[[Outcome], object]) -> Submission:
        """Run ``call`` on the I/O thread (inline without one); ``reply(outcome)`` comes back to this actor."""
        if self._io is not None:
            return self._io.submit(call, self.myAddress, reply)
        outcome = Outcome.of(call)
        self._inline.append(reply(outcome))
        self.send(self.myAddress, _InlineReplies())
        return _Done(outcome)

    def receiveMsg__InlineReplies(self, msg: _InlineReplies, sender: ActorAddress) -> None:
        if self._inline:
            self.receiveMessage(self._inline.pop(0), self.myAddress)

    def _next_backoff(self) -> float:
        return min(_MAX_BACKOFF, max(0.05, self._backoff * 2))

    def _required_store(self) -> RedisStore:
        if self._store is None:
            raise RuntimeError("RedisPersistence used before OpenStore")
        return self._store

    def on_stop(self) -> None:
        """Write what is still held (after the write on its way), send what that made durable, and close the
        store; blocking, on the I/O thread when there is one."""
        store, self._store = self._store, None
        if store is None:
            return
        writing, self._writing = self._writing, None
        if writing is not None:  # its _Written will not be handled any more: release or keep here
            if writing.submitted.outcome().error is None:
                self._released(writing.op_count, writing.answers)
            else:
                self._unwritten(writing)
        ops, answers = list(self._ops), self._answers

        def final() -> None:
            try:
                if ops:
                    store.apply(ops)
            finally:
                store.close()

        outcome = self._submit(final, _Discarded).outcome()
        if outcome.error is not None:
            log.error("could not write %d operations at exit: %s", len(ops), outcome.error)
            return
        self._released(0, answers)


_NODE_COMMANDS_OF = {"PauseChannel": ("pause",), "ResumeChannel": ("resume",), "FlushBatch": ("flush",),
                     "Clear": ("clear",), "GetDeadLetters": (control_stream.DEAD_LETTER_ACTIONS["list"],),
                     "ReplayDeadLetters": (control_stream.DEAD_LETTER_ACTIONS["replay"],),
                     "PurgeDeadLetters": (control_stream.DEAD_LETTER_ACTIONS["purge"],)}


def _command_of(request: ControlRequest) -> tuple[str, str, object]:
    """The command (for ``dead-letters``, with its action: ``dead-letters --replay``...), channel and actor
    message of an admin request.

    Raises:
        InvalidInput: naming what is wrong with the request.
    """
    if request.payload is None:
        raise InvalidInput(request.problem)
    command = request.payload.get("command")
    channel = request.payload.get("channel")
    messages = {"pause": PauseChannel, "resume": ResumeChannel, "flush": FlushBatch, "clear": Clear}
    if command not in messages and command != "dead-letters":
        raise InvalidInput(f"command must be one of {', '.join(control_stream.NODE_COMMANDS)} through Redis, "
                           f"got {command!r:.80}")
    try:
        validate_channel_id(channel)
    except InvalidInput as exc:
        raise InvalidInput(f"{command}: {exc}") from exc
    assert isinstance(command, str) and isinstance(channel, str)
    if command == "dead-letters":
        message = control_stream.dead_letters_message(channel, request.payload)
        return control_stream.dead_letters_action(message), channel, message
    return command, channel, messages[command](channel)
