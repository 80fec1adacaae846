"""Supervisor: the system's front door, registered under the global name ``SUPERVISOR_NAME``.

It validates commands at the edge, spawns one :class:`ChannelActor` per active channel on demand, routes
each command to its channel, keeps processor registrations and per-channel settings (so a passivated channel
comes back as it was), and owns the shared :class:`Timer`. With persistence and ``config_ttl`` it is the one
place that reads the per-channel settings hash (for the asyncio API and ``serve --redis`` alike): it holds a
channel's commands while RedisPersistence reads the hash, tells its observer the settings that apply
(``ChannelSettingsApplied``), then releases them. The message ids a passivated channel still remembers
are kept in :class:`~actors.remembered.RememberedIds` for its next actor; one timer wake at a time drops those
that expired.

Its life cycle (:mod:`actors.lifecycle`): RUNNING from the start; STARTING while it restores persisted channels
(a ``ConfigureSystem`` with a ``redis_url``, until ``ChannelsLoaded`` or ``StoreFailed``), when every other
command waits in a :class:`~actors.lifecycle.StartupBuffer` and is replayed in order once the launcher has its
answer; STOPPING once asked to exit, when the exits of its children are no error. A channel's ``Passivate``
offer is accepted only if the Supervisor has sent that channel nothing since the channel made it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from thespian.actors import ActorExitRequest, ActorSystemMessage, ChildActorExited

from actors.base import Dispatcher
from actors.batching import FAILURE_COUNTS, MAX_REMEMBERED_IDS
from actors.channel import ChannelActor
from actors.internal import (
    Ack,
    AttachProcessor,
    ChannelCommand,
    ChannelInit,
    Clock,
    ConfigureSystem,
    EnqueueChecked,
    EnqueueStamped,
    Gathered,
    Passivate,
    ReleaseHeld,
    Routed,
    ScheduleWake,
    SystemConfigured,
    TimerConfig,
    Wake,
    WakeKind,
)
from actors.journal import (
    ChannelsLoaded,
    ChannelSnapshot,
    LoadChannels,
    OpenStore,
    ReadSettings,
    SettingsRead,
    StoreFailed,
    StoreOpened,
)
from actors.lifecycle import RUNNING, STARTING, STOPPING, Lifecycle, StartupBuffer, buffered
from actors.records import STOPPED, UNSET, ChannelRecords, Counters
from actors.remembered import RememberedIds
from actors.timer import Timer
from protocol.errors import InvalidInput, InvalidSettings, ProtocolViolation
from protocol.limits import validate_channel_id, validate_message_id
from protocol.messages import (
    BatchFlushed,
    BatchHeld,
    CancelCurrent,
    Cancelled,
    ChannelConfigured,
    ChannelPassivated,
    ChannelPaused,
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
    EnqueueMany,
    FlushBatch,
    GetDeadLetters,
    GetStatistics,
    HoldBatch,
    Observe,
    Observing,
    PauseChannel,
    ProcessingDone,
    ProcessingFailed,
    ProcessingStarted,
    PurgeDeadLetters,
    QueueChanged,
    Rejected,
    ReplayDeadLetters,
    ResumeChannel,
    Retract,
    Retracted,
    StartProcessing,
    Statistics,
    StopChannel,
    Taken,
    TakeWaiting,
)
from protocol.validation import validate_message, validate_payload
from protocol.values import BatchSettings, ChannelStatistics, QueuedMessage

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

log = logging.getLogger(__name__)


# The least time between two walks over the ids of passivated channels; otherwise a quarter of the longest
# dedupe_ttl among them (so an id is looked at about four times at most, and lingers at most that long).
_MIN_FORGET_GAP = 0.01

# What the Supervisor handles while STARTING (it restores persisted channels); everything else waits.
# ReleaseHeld: nothing is held for a settings read before the store is loaded, and a launcher stopping a
# system that never finished starting must not wait for it.
_STARTUP_MESSAGES = (StoreOpened, StoreFailed, ChannelsLoaded, ReleaseHeld, ActorSystemMessage)


@dataclass(slots=True)
class _Gather:
    """A scatter-gather request: statistics snapshots to merge, or (``counting``) enqueue acks to add up."""

    reply_to: ActorAddress
    remaining: int
    counting: bool = False
    snapshots: list[ChannelStatistics] = field(default_factory=list)
    count: int = 0


@dataclass(slots=True)
class _Route:
    address: ActorAddress
    sent: int = 0  # messages sent to the channel actor, for the passivation handshake


_NO_CONVERSATION: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)


def _pack_counters(
    processed: int,
    cancelled: int,
    failed: int,
    conversation: tuple[int, int, int, int, int] = _NO_CONVERSATION,
    failures: tuple[int, ...] = (),
) -> Counters | None:
    """The counters of a passivated channel as the Supervisor keeps them: ``processed`` alone when nothing else
    was counted (the common case: an int, shared when small), else ``(processed, cancelled, failed,
    duplicates, edits, retractions, interruptions, rejections, *failures)``; None when all are zero."""
    if failures:
        # attempts (the first failure count) is kept as its difference from processed + cancelled + failed,
        # which it equals when every delivery was answered once: usually 0, so most records stay an int
        failures = (failures[0] - processed - cancelled - failed, *failures[1:])
    if any(failures):
        return (processed, cancelled, failed, *conversation, *failures)
    if cancelled or failed or any(conversation):
        return (processed, cancelled, failed, *conversation)
    return processed or None


def _unpack_counters(
    counters: Counters | None,
) -> tuple[int, int, int, tuple[int, int, int, int, int], tuple[int, ...]]:
    """processed, cancelled, failed, the conversation counts and the failure counts (FAILURE_COUNTS; at least
    attempts, see _pack_counters)."""
    if counters is None:
        return (0, 0, 0, _NO_CONVERSATION, ())
    if isinstance(counters, int):
        return (counters, 0, 0, _NO_CONVERSATION, (counters,))
    processed, cancelled, failed, duplicates, edits, retractions, interruptions, rejections = counters[:8]
    stored = counters[8:]
    failures = (processed + cancelled + failed + (stored[0] if stored else 0), *stored[1:])
    return (processed, cancelled, failed, (duplicates, edits, retractions, interruptions, rejections), failures)


def _actor_key(address: ActorAddress) -> str | None:
    """A string that names the actor at ``address`` for as long as it lives, or None.

    On the simple base an address is its string, and the ``ChildActorExited`` of an actor carries that same
    string. On the TCP base the address a parent gets from ``createActor`` is a local stand-in whose string
    changes once the child is up, and the exit names the child's real address: no stable key.
    """
    details = address.addressDetails
    return details if isinstance(details, str) else None


class Supervisor(Dispatcher):
    """Routes commands by channel and keeps what must outlive a passivated ChannelActor."""

    def __init__(self) -> None:
        super().__init__()
        self._settings = BatchSettings()
        self._idle_timeout = 60.0
        self._timer: ActorAddress | None = None
        self._routes: dict[str, _Route] = {}  # live channels; changed only by _add_route and _drop_route
        self._channel_of_actor: dict[str, str] = {}  # _actor_key of a live route's address -> channel id
        self._overrides: dict[str, BatchSettings] = {}
        # per channel, beyond its actor's life: the processor named for it and its passivated actor's counters
        # (see _pack_counters)
        self._records: ChannelRecords[ActorAddress] = ChannelRecords()
        self._default_processor: ActorAddress | None = None
        self._paused: set[str] = set()  # channels whose deliveries are paused (PauseChannel)
        self._observer: ActorAddress | None = None  # gets every channel's QueueChanged facts
        self._remembered = RememberedIds()  # message ids of passivated channels, for their next actors
        self._forget_wake: float | None = None  # when the Timer wakes us to drop expired ones (None: no wake)
        self._gathers: dict[int, _Gather] = {}
        self._gather_seq = 0
        self._state = RUNNING
        self._startup: StartupBuffer | None = None  # what came while STARTING
        self._launcher: ActorAddress | None = None  # whom to answer when STARTING ends
        self._persistence: ActorAddress | None = None  # RedisPersistence, when the system persists
        self._clock: Clock = time.monotonic
        self._configure: ConfigureSystem | None = None
        # The settings hash (persistence with config_ttl): when each channel's was last read, the settings read
        # from it (over its override or the defaults), and the messages of channels waiting for a read.
        self._config_ttl: float | None = None
        self._config_read_at: dict[str, float] = {}
        self._hash_settings: dict[str, BatchSettings] = {}
        self._config_waiting: dict[str, list[object]] = {}
        self._config_stale: set[str] = set()  # channels given a new override while their hash was read

    # -- configuration -----------------------------------------------------------------------------------

    def receiveMsg_ConfigureSystem(self, msg: ConfigureSystem, sender: ActorAddress) -> None:
        try:
            _checked_settings(msg.settings)
        except InvalidSettings as exc:
            self._reject(msg, "", exc, sender)
            return
        if not msg.idle_timeout > 0:
            self._reject(msg, "", InvalidInput(f"idle_timeout must be > 0, got {msg.idle_timeout!r}"), sender)
            return
        ttl = msg.config_ttl
        if ttl is not None and not (isinstance(ttl, (int, float)) and math.isfinite(ttl) and ttl >= 0):
            self._reject(msg, "", InvalidInput(f"config_ttl must be a finite number >= 0, got {ttl!r}"), sender)
            return
        self._settings = msg.settings
        self._idle_timeout = msg.idle_timeout
        self._configure = msg
        self._config_ttl = msg.config_ttl if msg.redis_url else None
        if msg.clock is not None:
            self._clock = msg.clock
        if not msg.redis_url:
            self.send(sender, SystemConfigured())
            return
        # Persistence: answer only once every stored channel is back; hold other commands until then.
        from actors.persistence import RedisPersistence  # needs the redis extra: imported only when used

        self._state, self._launcher = STARTING, sender
        self._persistence = self.createActor(RedisPersistence)
        self.send(self._persistence, OpenStore(msg.redis_url, msg.allow_volatile_redis, io=msg.io,
                                                 metrics=msg.redis_write_seconds or
                                                 (sender if msg.report_redis_writes else None)))

    @property
    def lifecycle(self) -> Lifecycle:
        """STARTING, RUNNING or STOPPING (see the module docstring)."""
        return self._state

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        if self._state is STARTING and not isinstance(message, _STARTUP_MESSAGES):
            self._startup = buffered(self._startup, message, sender)
            return
        super().receiveMessage(message, sender)

    def receiveMsg_StoreOpened(self, msg: StoreOpened, sender: ActorAddress) -> None:
        assert self._persistence is not None
        self.send(self._persistence, LoadChannels())

    def receiveMsg_StoreFailed(self, msg: StoreFailed, sender: ActorAddress) -> None:
        launcher = self._started(msg)
        self._persistence = None
        self.send(sender, ActorExitRequest())
        log.error("persistence refused: %s", msg.reason)
        self.send(launcher, Rejected("ConfigureSystem", "", msg.error, msg.reason))
        self._replay()

    def receiveMsg_ChannelsLoaded(self, msg: ChannelsLoaded, sender: ActorAddress) -> None:
        launcher = self._started(msg)
        for snapshot in msg.snapshots:
            self._spawn(snapshot.channel_id, snapshot)
        if msg.snapshots:
            log.info("restored %d channels from Redis", len(msg.snapshots))
        self.send(launcher, SystemConfigured(len(msg.snapshots)))
        self._replay()

    def _started(self, event: object) -> ActorAddress:
        """Go from STARTING to RUNNING on ``event``, which ends the restore; return whom to answer.

        Raises:
            ProtocolViolation: if the Supervisor is not STARTING.
        """
        launcher = self._launcher
        if self._state is not STARTING or launcher is None:
            raise ProtocolViolation(f"{type(event).__name__} while {self._state.value}: no restore is under way")
        self._state, self._launcher = RUNNING, None
        return launcher

    def _replay(self) -> None:
        """Handle what came while STARTING, in order. A replayed ConfigureSystem that starts another restore
        makes the rest wait again, in a new buffer."""
        startup, self._startup = self._startup, None
        if startup is not None:
            startup.replay(self.receiveMessage)

    def receiveMsg_StartProcessing(self, msg: StartProcessing, sender: ActorAddress) -> None:
        processor = msg.processor if msg.processor is not None else sender
        if msg.channel_id == "":
            self._default_processor = processor
            for channel_id in self._routes:
                if self._records.processor(channel_id) is UNSET:
                    self._send_channel(channel_id, AttachProcessor(processor))
        else:
            if not self._valid_channel(msg, msg.channel_id, sender):
                return
            self._records.set_processor(msg.channel_id, processor)
            if msg.channel_id in self._routes:
                self._send_channel(msg.channel_id, AttachProcessor(processor))
        self.send(sender, ProcessingStarted(msg.channel_id))

    def receiveMsg_Observe(self, msg: Observe, sender: ActorAddress) -> None:
        observer = msg.observer if msg.observer is not None else sender
        self._observer = observer
        for channel_id in list(self._routes):
            self._send_channel(channel_id, Observe(observer))
        self.send(sender, Observing())

    # -- messages ----------------------------------------------------------------------------------------

    def receiveMsg_Enqueue(self, msg: Enqueue, sender: ActorAddress) -> None:
        try:
            message = validate_message(msg.message)
        except InvalidInput as exc:
            self._reject(msg, _channel_of(msg.message), exc, sender, reply=msg.ack)
            return
        # the channel answers: it may refuse the message (busy policy reject)
        self._send_channel(message.channel_id, EnqueueStamped((message,), (self._clock(),), sender, msg.ack))

    def receiveMsg_EnqueueMany(self, msg: EnqueueMany, sender: ActorAddress) -> None:
        if not isinstance(msg.messages, (tuple, list)):
            self._reject(msg, "", InvalidInput("messages must be a tuple of QueuedMessage"), sender, msg.ack)
            return
        valid = []
        for message in msg.messages:
            try:
                valid.append(validate_message(message))
            except InvalidInput as exc:
                self._reject(msg, _channel_of(message), exc, sender, reply=msg.ack)
        now = self._clock()  # they arrived together
        groups = self._route_by_channel(valid, [now] * len(valid))
        if msg.ack:
            self._ack_groups(groups, sender)

    def receiveMsg_EnqueueChecked(self, msg: EnqueueChecked, sender: ActorAddress) -> None:
        groups = self._route_by_channel(msg.messages, msg.arrived)
        if msg.ack:
            self._ack_groups(groups, sender)

    def _ack_groups(self, groups: dict[str, tuple[list[QueuedMessage], list[float]]], sender: ActorAddress) -> None:
        """Answer ``Enqueued`` with the number of messages in ``groups`` once each channel's are durable."""
        if self._persistence is None or not groups:
            self.send(sender, Enqueued(sum(len(m) for m, _ in groups.values())))
        elif len(groups) == 1:
            [(channel_id, (messages, _))] = groups.items()
            self._ack(channel_id, sender, Enqueued(len(messages)))
        else:
            gather = self._new_gather(_Gather(sender, len(groups), counting=True))
            for channel_id, (messages, _) in groups.items():
                self._ack(channel_id, self.myAddress, Gathered(gather, Enqueued(len(messages))))

    def _route_by_channel(
        self, messages: Sequence[QueuedMessage], arrived: Sequence[float]
    ) -> dict[str, tuple[list[QueuedMessage], list[float]]]:
        """Send each channel its messages, in order, with their arrival times, as one ``EnqueueStamped``;
        return them by channel."""
        groups: dict[str, tuple[list[QueuedMessage], list[float]]] = {}
        # By runs of one channel's messages: the loop driver hands them over grouped by channel already.
        count = len(messages)
        start = 0
        while start < count:
            channel_id = messages[start].channel_id
            end = start + 1
            while end < count and messages[end].channel_id == channel_id:
                end += 1
            group = groups.get(channel_id)
            if group is None:
                groups[channel_id] = (list(messages[start:end]), list(arrived[start:end]))
            else:
                group[0].extend(messages[start:end])
                group[1].extend(arrived[start:end])
            start = end
        for channel_id, (batch, times) in groups.items():
            self._send_channel(channel_id, EnqueueStamped(tuple(batch), tuple(times)))
        return groups

    def receiveMsg_EnqueueFront(self, msg: EnqueueFront, sender: ActorAddress) -> None:
        try:
            channel_id = validate_payload(msg.payload)
        except InvalidInput as exc:
            self._reject(msg, _channel_of(msg.payload), exc, sender, reply=msg.ack)
            return
        self._send_channel(channel_id, EnqueueFront(msg.payload) if msg.ack else msg)
        if msg.ack:
            self._ack(channel_id, sender, Enqueued(1))

    # -- channel commands ----------------------------------------------------------------------------------

    def receiveMsg_CancelCurrent(self, msg: CancelCurrent, sender: ActorAddress) -> None:
        self._command(msg, sender, Cancelled(msg.channel_id, False))

    def receiveMsg_Clear(self, msg: Clear, sender: ActorAddress) -> None:
        self._command(msg, sender, Cleared(msg.channel_id, 0))

    def receiveMsg_HoldBatch(self, msg: HoldBatch, sender: ActorAddress) -> None:
        self._command(msg, sender, BatchHeld(msg.channel_id, False))

    def receiveMsg_FlushBatch(self, msg: FlushBatch, sender: ActorAddress) -> None:
        self._command(msg, sender, BatchFlushed(msg.channel_id, False))

    def receiveMsg_GetDeadLetters(self, msg: GetDeadLetters, sender: ActorAddress) -> None:
        self._command(msg, sender, DeadLetters(msg.channel_id, ()))

    def receiveMsg_ReplayDeadLetters(self, msg: ReplayDeadLetters, sender: ActorAddress) -> None:
        self._command(msg, sender, DeadLettersReplayed(msg.channel_id, 0))

    def receiveMsg_PurgeDeadLetters(self, msg: PurgeDeadLetters, sender: ActorAddress) -> None:
        self._command(msg, sender, DeadLettersPurged(msg.channel_id, 0))

    def receiveMsg_PauseChannel(self, msg: PauseChannel, sender: ActorAddress) -> None:
        if self._valid_channel(msg, msg.channel_id, sender):
            self._paused.add(msg.channel_id)
            self._command(msg, sender, ChannelPaused(msg.channel_id, True))

    def receiveMsg_ResumeChannel(self, msg: ResumeChannel, sender: ActorAddress) -> None:
        if self._valid_channel(msg, msg.channel_id, sender):
            self._paused.discard(msg.channel_id)
            self._command(msg, sender, ChannelPaused(msg.channel_id, False))
    def receiveMsg_Edit(self, msg: Edit, sender: ActorAddress) -> None:
        try:
            message = validate_message(msg.message)
            validate_message_id(message.message_id)
        except InvalidInput as exc:
            self._reject(msg, _channel_of(msg.message), exc, sender)
            return
        if message.channel_id in self._routes:
            self._send_channel(message.channel_id, Routed(msg, sender))
        else:
            self.send(sender, Edited(message.channel_id, message.message_id, False))

    def receiveMsg_Retract(self, msg: Retract, sender: ActorAddress) -> None:
        try:
            validate_message_id(msg.message_id)
        except InvalidInput as exc:
            self._reject(msg, _printable(msg.channel_id), exc, sender)
            return
        self._command(msg, sender, Retracted(msg.channel_id, msg.message_id, False))

    def receiveMsg_TakeWaiting(self, msg: TakeWaiting, sender: ActorAddress) -> None:
        self._command(msg, sender, Taken(msg.channel_id, ()))

    def receiveMsg_StopChannel(self, msg: StopChannel, sender: ActorAddress) -> None:
        if not self._valid_channel(msg, msg.channel_id, sender):
            return
        self._records.set_processor(msg.channel_id, STOPPED)
        self._command(msg, sender, ChannelStopped(msg.channel_id, False))

    def receiveMsg_ConfigureChannel(self, msg: ConfigureChannel, sender: ActorAddress) -> None:
        try:
            settings = _checked_settings(msg.settings)
        except InvalidSettings as exc:
            self._reject(msg, _printable(msg.channel_id), exc, sender)
            return
        if not self._valid_channel(msg, msg.channel_id, sender):
            return
        self._overrides[msg.channel_id] = settings
        if self._config_ttl is not None:  # the hash is read again, over the new settings, by the next message
            self._config_read_at.pop(msg.channel_id, None)
            self._hash_settings.pop(msg.channel_id, None)
            if msg.channel_id in self._config_waiting:  # or now, if a read over the old ones is under way
                self._config_stale.add(msg.channel_id)
        self._command(msg, sender, ChannelConfigured(msg.channel_id))

    def receiveMsg_GetStatistics(self, msg: GetStatistics, sender: ActorAddress) -> None:
        if msg.channel_id:
            if self._valid_channel(msg, msg.channel_id, sender):  # before the idle reply looks the id up
                self._command(msg, sender, Statistics((self._idle_statistics(msg.channel_id),)))
            return
        if not self._routes:
            self.send(sender, Statistics(()))
            return
        gather = self._new_gather(_Gather(sender, len(self._routes)))
        for channel_id in self._routes:
            self._send_channel(channel_id, Routed(msg, self.myAddress, gather))

    def _new_gather(self, gather: _Gather) -> int:
        self._gather_seq += 1
        self._gathers[self._gather_seq] = gather
        return self._gather_seq

    def receiveMsg_Gathered(self, msg: Gathered, sender: ActorAddress) -> None:
        gather = self._gathers.get(msg.gather)
        if gather is None:
            log.warning("Supervisor got an answer for unknown request %d", msg.gather)
            return
        if isinstance(msg.reply, Enqueued):
            gather.count += msg.reply.count
        else:
            assert isinstance(msg.reply, Statistics)
            gather.snapshots.extend(msg.reply.channels)
        gather.remaining -= 1
        if gather.remaining == 0:
            del self._gathers[msg.gather]
            if gather.counting:
                self.send(gather.reply_to, Enqueued(gather.count))
            else:
                snapshots = sorted(gather.snapshots, key=lambda s: s.channel_id)
                self.send(gather.reply_to, Statistics(tuple(snapshots)))

    # -- processor replies sent here rather than to the channel --------------------------------------------

    def receiveMsg_ProcessingDone(self, msg: ProcessingDone, sender: ActorAddress) -> None:
        self._forward_reply(msg, sender)

    def receiveMsg_ProcessingFailed(self, msg: ProcessingFailed, sender: ActorAddress) -> None:
        self._forward_reply(msg, sender)

    def _forward_reply(self, msg: ProcessingDone | ProcessingFailed, sender: ActorAddress) -> None:
        if isinstance(msg.channel_id, str) and msg.channel_id in self._routes:
            self._send_channel(msg.channel_id, msg)
        else:
            log.warning("reply for delivery %s of idle channel %r ignored", msg.delivery_id, msg.channel_id)

    # -- channel life cycle --------------------------------------------------------------------------------

    def receiveMsg_Passivate(self, msg: Passivate, sender: ActorAddress) -> None:
        route = self._routes.get(msg.channel_id)
        if route is None or route.address != sender or route.sent != msg.received:
            return  # it has been sent more since; it will offer again when idle
        self._drop_route(msg.channel_id)
        counters = _pack_counters(msg.processed, msg.cancelled, msg.failed, msg.conversation, msg.failures)
        if counters is not None:  # a channel re-spawned without an entry starts from zero, as it should
            self._records.set_counters(msg.channel_id, counters)
        if msg.ids:
            self._keep_ids(msg.channel_id, msg.ids)
        self.send(sender, ActorExitRequest())
        if self._observer is not None:
            self.send(self._observer, ChannelPassivated(msg.channel_id))

    def _keep_ids(self, channel_id: str, ids: object) -> None:
        try:
            checked = _checked_ids(ids)
        except InvalidInput as exc:
            log.warning("channel %r passivated with message ids that are not valid; they are forgotten: %s",
                        channel_id, exc, extra={"channel": channel_id})
            return
        now = self._clock()
        ttl = self._ttl_of(channel_id)
        expires = self._remembered.keep(channel_id, checked, now, ttl)
        if expires is not None:
            self._schedule_forget(max(expires, now + max(ttl / 4, _MIN_FORGET_GAP)))

    def receiveMsg_Wake(self, msg: Wake, sender: ActorAddress) -> None:
        if msg.kind is not WakeKind.FORGET or msg.at != self._forget_wake:
            return  # replaced by an earlier wake
        self._forget_wake = None
        now = self._clock()
        next_empty = self._remembered.prune(now, self._ttl_of)
        if next_empty is not None:
            longest = max((self._settings, *self._overrides.values()), key=lambda s: s.dedupe_ttl).dedupe_ttl
            self._schedule_forget(max(next_empty, now + max(longest / 4, _MIN_FORGET_GAP)))

    def _schedule_forget(self, at: float) -> None:
        """Have the Timer wake us at ``at`` to drop expired ids, unless a wake is due no later."""
        if self._forget_wake is not None and self._forget_wake <= at:
            return
        self._forget_wake = at
        self.send(self._timer_address(), ScheduleWake(at, WakeKind.FORGET))

    def _ttl_of(self, channel_id: str) -> float:
        return self._settings_of(channel_id).dedupe_ttl

    def _settings_of(self, channel_id: str) -> BatchSettings:
        """The channel's settings: read from its settings hash, else given with ``configure``, else the
        defaults."""
        settings = self._hash_settings.get(channel_id)
        if settings is None:
            settings = self._overrides.get(channel_id, self._settings)
        return settings

    # -- the settings hash (persistence with config_ttl) ------------------------------------------------------

    def _reads_settings_first(self, channel_id: str, msg: object) -> bool:
        """Hold ``msg`` when the channel waits for a read of its settings hash, or when it is a message whose
        channel's last read is older than ``config_ttl`` (then ask for one); True when held. What the channel
        is sent meanwhile waits behind it, in order."""
        waiting = self._config_waiting.get(channel_id)
        if waiting is not None:
            waiting.append(msg)
            return True
        if type(msg) is not EnqueueStamped:
            return False
        assert self._config_ttl is not None and self._persistence is not None
        read_at = self._config_read_at.get(channel_id)
        if read_at is not None and self._clock() - read_at < self._config_ttl:
            return False
        self._config_waiting[channel_id] = [msg]
        self.send(self._persistence, ReadSettings(channel_id, self._overrides.get(channel_id, self._settings)))
        return True

    def receiveMsg_SettingsRead(self, msg: SettingsRead, sender: ActorAddress) -> None:
        channel_id = msg.channel_id
        if channel_id in self._config_stale and channel_id in self._config_waiting:
            self._config_stale.discard(channel_id)  # read over an override replaced since: read again
            assert self._persistence is not None
            self.send(self._persistence, ReadSettings(channel_id, self._overrides.get(channel_id, self._settings)))
            return
        waiting = self._config_waiting.pop(channel_id, [])
        self._config_read_at[channel_id] = self._clock()
        settings = msg.settings
        if settings is not None and settings != self._settings_of(channel_id):
            self._hash_settings[channel_id] = settings
            if channel_id in self._routes:  # a channel spawned later starts with them
                self._send_read_channel(channel_id, Routed(ConfigureChannel(channel_id, settings), self.myAddress))
        if self._observer is not None:  # before the held commands: their outcomes follow these settings
            self.send(self._observer, ChannelSettingsApplied(channel_id, self._settings_of(channel_id)))
        for held in waiting:
            self._send_read_channel(channel_id, self._read_over(channel_id, held))

    def _read_over(self, channel_id: str, held: object) -> object:
        """``held``, or if it is a ``ConfigureChannel`` routed to the channel (sent while its hash was read),
        the same with the hash read over its settings: the channel keeps the settings hash applied."""
        if type(held) is Routed and type(held.command) is ConfigureChannel:
            return replace(held, command=ConfigureChannel(channel_id, self._settings_of(channel_id)))
        return held

    def receiveMsg_ReleaseHeld(self, msg: ReleaseHeld, sender: ActorAddress) -> None:
        """Send the commands held for settings reads on, and answer ``Enqueued(count)`` once every channel that
        got some has made its work so far durable (its ``Ack``): the launcher may then stop the system."""
        waiting, self._config_waiting = self._config_waiting, {}
        self._config_stale.clear()
        if not waiting:
            self.send(sender, Enqueued(0))
            return
        gather = self._new_gather(_Gather(sender, len(waiting), counting=True))
        for channel_id, held in waiting.items():
            for command in held:
                self._send_read_channel(channel_id, command)
            self._send_read_channel(channel_id, Ack(self.myAddress, Gathered(gather, Enqueued(len(held)))))

    def receiveMsg_ChannelConfigured(self, msg: ChannelConfigured, sender: ActorAddress) -> None:
        """A channel applied settings read from its hash: nothing to answer."""

    def on_stop(self) -> None:
        self._state = STOPPING

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: ActorAddress) -> None:
        if self._state is STOPPING:
            return
        if msg.childAddress == self._persistence and self._persistence is not None:
            log.critical("RedisPersistence exited: nothing more can be persisted or acknowledged")
            return
        if msg.childAddress == self._timer:
            log.error("the Timer exited; starting a new one for channels created from now on")
            self._timer = None
            self._forget_wake = None  # it went with the Timer
            return
        channel_id = self._live_channel_of(msg.childAddress)
        if channel_id is None:
            return  # the actor of a passivated channel, which was asked to exit
        log.error("ChannelActor of %r exited unexpectedly; its in-memory work is lost", channel_id)
        self._drop_route(channel_id)
        if self._observer is not None:
            self.send(self._observer, QueueChanged(channel_id, 0, False))

    def receiveUnrecognizedMessage(self, msg: object, sender: ActorAddress) -> None:
        if isinstance(msg, ActorSystemMessage):
            return
        log.warning("Supervisor rejected an unknown %s from %s", type(msg).__name__, sender)
        self.send(sender, Rejected(type(msg).__name__, "", "UnknownMessage", "not a message_queue command"))

    # -- helpers -------------------------------------------------------------------------------------------

    def _command(self, msg: ChannelCommand, sender: ActorAddress, idle_reply: object) -> None:
        """Route ``msg`` to its live channel, or answer for an idle channel with ``idle_reply``."""
        if not self._valid_channel(msg, msg.channel_id, sender):
            return
        if msg.channel_id in self._routes:
            self._send_channel(msg.channel_id, Routed(msg, sender))
        else:
            self.send(sender, idle_reply)

    def _valid_channel(self, msg: object, channel_id: object, sender: ActorAddress) -> bool:
        try:
            validate_channel_id(channel_id)
        except InvalidInput as exc:
            self._reject(msg, _printable(channel_id), exc, sender)
            return False
        return True

    def _ack(self, channel_id: str, reply_to: ActorAddress, reply: object) -> None:
        """Send ``reply`` once the channel's work so far is durable (at once without persistence)."""
        if self._persistence is None:
            self.send(reply_to, reply)
        else:
            self._send_channel(channel_id, Ack(reply_to, reply))

    def _add_route(self, channel_id: str, address: ActorAddress) -> _Route:
        route = self._routes[channel_id] = _Route(address)
        key = _actor_key(address)
        if key is not None:
            self._channel_of_actor[key] = channel_id
        return route

    def _drop_route(self, channel_id: str) -> None:
        route = self._routes.pop(channel_id)
        if self._config_ttl is not None:  # a passivated channel's next message reads its settings hash again
            self._config_read_at.pop(channel_id, None)
            self._hash_settings.pop(channel_id, None)
        key = _actor_key(route.address)
        if key is not None:
            del self._channel_of_actor[key]

    def _live_channel_of(self, address: ActorAddress) -> str | None:
        """The live channel whose actor is at ``address``, or None: found by key in O(1); compared with every
        live route only when some of them have no key (the TCP base, where each channel is a process)."""
        key = _actor_key(address)
        if key is not None:
            channel_id = self._channel_of_actor.get(key)
            if channel_id is not None or len(self._channel_of_actor) == len(self._routes):
                return channel_id
        for channel_id, route in self._routes.items():
            if route.address == address:
                return channel_id
        return None

    def _spawn(self, channel_id: str, restore: ChannelSnapshot | None = None) -> _Route:
        route = self._add_route(channel_id, self.createActor(ChannelActor))
        processed, cancelled, failed, conversation, failures = _unpack_counters(self._records.take_counters(channel_id))
        self.send(
            route.address,
            ChannelInit(
                channel_id,
                self._settings_of(channel_id),
                self._timer_address(),
                self._processor_for(channel_id),
                self._idle_timeout,
                processed,
                cancelled,
                failed,
                self._persistence,
                restore,
                self._configure.clock if self._configure is not None else None,
                channel_id in self._paused,
                conversation,
                failures,
                self._remembered.take(channel_id),
                self._observer,
            ),
        )
        route.sent += 1
        return route

    def _send_channel(self, channel_id: str, msg: object) -> None:
        if self._config_ttl is not None and self._reads_settings_first(channel_id, msg):
            return
        self._send_read_channel(channel_id, msg)

    def _send_read_channel(self, channel_id: str, msg: object) -> None:
        """Send ``msg`` to the channel's actor (spawned if needed), its settings hash read or not read."""
        route = self._routes.get(channel_id)
        if route is None:
            route = self._spawn(channel_id)
            if isinstance(msg, Observe):
                return  # the new channel was just told the observer
        self.send(route.address, msg)
        route.sent += 1

    def _processor_for(self, channel_id: str) -> ActorAddress | None:
        processor = self._records.processor(channel_id)
        if processor is UNSET:
            return self._default_processor
        return None if processor is STOPPED else processor

    def _timer_address(self) -> ActorAddress:
        if self._timer is None:
            self._timer = self.createActor(Timer)
            configure = self._configure
            if configure is not None and (configure.clock is not None or configure.alarm is not None):
                self.send(self._timer, TimerConfig(configure.clock, configure.alarm))
        return self._timer

    def _idle_statistics(self, channel_id: str) -> ChannelStatistics:
        processed, cancelled, failed, conversation, failures = _unpack_counters(self._records.counters(channel_id))
        return ChannelStatistics(
            channel_id, 0, 0, False, processed, cancelled, failed, self._processor_for(channel_id) is not None,
            *conversation,
            **dict(zip(FAILURE_COUNTS, failures)),
        )

    def _reject(
        self, msg: object, channel_id: str, exc: Exception, sender: ActorAddress, reply: bool = True
    ) -> None:
        if reply:
            self.send(sender, Rejected(type(msg).__name__, channel_id, type(exc).__name__, str(exc)))
        else:
            log.warning("rejected %s for channel %r: %s", type(msg).__name__, channel_id, exc)


def _checked_settings(settings: object) -> BatchSettings:
    """``settings`` checked again, field by field: a ``BatchSettings`` that crossed a process boundary was
    rebuilt by pickle without its checks, and its fields may hold anything.

    Raises:
        InvalidSettings: naming the field and the value.
    """
    if not isinstance(settings, BatchSettings):
        raise InvalidSettings(f"settings must be a BatchSettings, got {type(settings).__name__}")
    try:
        return replace(settings)  # runs the constructor's checks on every field
    except TypeError as exc:  # a field missing or unknown: not a BatchSettings of this version
        raise InvalidSettings(f"settings must be a BatchSettings: {exc}") from exc


def _checked_ids(ids: object) -> tuple[tuple[str, float], ...]:
    """``ids`` checked to be what ``Passivate.ids`` holds: it may have crossed a process boundary.

    Raises:
        InvalidInput: naming the rule and the value.
    """
    if not isinstance(ids, tuple) or len(ids) > MAX_REMEMBERED_IDS:
        raise InvalidInput(f"ids must be a tuple of at most {MAX_REMEMBERED_IDS} pairs, got {type(ids).__name__}"
                           f"{f' of {len(ids)}' if isinstance(ids, tuple) else ''}")
    for pair in ids:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise InvalidInput(f"each of ids must be a (message_id, time) pair, got {pair!r:.80}")
        validate_message_id(pair[0])
        at = pair[1]
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise InvalidInput(f"the time of message id {pair[0]!r} must be a finite number, got {at!r:.40}")
    return ids


def _printable(channel_id: object) -> str:
    return channel_id[:256] if isinstance(channel_id, str) else ""


def _channel_of(value: object) -> str:
    try:
        return _printable(getattr(value, "channel_id", ""))
    except Exception:  # a malformed payload (an empty batch, messages that are no list) names no channel
        return ""

