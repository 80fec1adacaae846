"""ChannelActor: one per active channel, a thin shell over the pure batching core.

It turns protocol messages into :class:`ChannelCore` calls and the core's effects into sends: items to the
processor, deadlines to the shared :class:`~actors.timer.Timer` (at most one pending wake per purpose), and a
``Passivate`` offer to the Supervisor once it has held no work for ``idle_timeout`` seconds. The offer carries the
message ids it still remembers for duplicate detection; the Supervisor gives them to the channel's next actor.

Its life cycle (:mod:`actors.lifecycle`): STARTING until ``ChannelInit``, holding in a
:class:`~actors.lifecycle.StartupBuffer` whatever overtook it, then replaying that in order; RUNNING; and
PASSIVATING from its offer on. The offer carries the count of messages received from the Supervisor, which
accepts it only if it has sent none since; a message from the Supervisor that comes meanwhile therefore voids
the offer and brings the channel back to RUNNING, and the channel offers again once idle again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Sequence

from thespian.actors import ActorSystemMessage

from actors.base import Dispatcher
from actors.batching import (
    FAILURE_COUNTS,
    MAX_DEAD_LETTERS,
    MAX_REMEMBERED_IDS,
    ChannelCore,
    DeadLettersCleared,
    Deliver,
    DeliveryCancelled,
    DeliveryFinished,
    Effect,
    IdRemembered,
    ItemDead,
    ItemQueued,
    MessageAdded,
    MessageRejected,
    MessagesDropped,
    QueueCleared,
    RetryScheduled,
    WaitingChanged,
)
from actors.internal import (
    Ack,
    AttachProcessor,
    ChannelInit,
    Clock,
    EnqueueStamped,
    Gathered,
    Passivate,
    Routed,
    ScheduleWake,
    Wake,
    WakeKind,
)
from actors.journal import (
    AppendIds,
    AppendOpen,
    ChannelSnapshot,
    ClearQueue,
    ClearRetry,
    Durable,
    FinishInFlight,
    Op,
    Persist,
    PushDead,
    PushHead,
    PushTail,
    RemoveDead,
    ReplaceIds,
    ReplaceWaiting,
    RetryWait,
    SetRetry,
    TakeHead,
)
from actors.lifecycle import PASSIVATING, RUNNING, STARTING, Lifecycle, StartupBuffer, buffered
from protocol.errors import ProtocolViolation
from protocol.messages import (
    BatchFlushed,
    BatchHeld,
    BatchReady,
    CancelCurrent,
    Cancelled,
    CancelProcessing,
    ChannelConfigured,
    ChannelPaused,
    ChannelStopped,
    Clear,
    Cleared,
    ConfigureChannel,
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    Edit,
    Edited,
    Enqueued,
    EnqueueFront,
    FlushBatch,
    GetDeadLetters,
    GetStatistics,
    HoldBatch,
    Observe,
    PauseChannel,
    ProcessingDone,
    ProcessingFailed,
    PurgeDeadLetters,
    QueueChanged,
    Rejected,
    ReplayDeadLetters,
    ResumeChannel,
    Retract,
    Retracted,
    Statistics,
    StopChannel,
    Taken,
    TakeWaiting,
)
from protocol.values import FlushReason, OpenEntry, SeenId

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

log = logging.getLogger(__name__)


class ChannelActor(Dispatcher):
    """Holds one channel's open batch, deadline and FIFO; keeps one item in flight to the processor."""

    # Messages that overtook ChannelInit (the TCP base): set on an actor only when one does, else read here.
    # On CPython 3.11 each attribute that every actor sets costs every live channel 8 bytes (and past 30 of them
    # each actor gets a dict of its own); on the simple base no ChannelActor ever sets this one.
    _startup: StartupBuffer | None = None

    def __init__(self) -> None:
        super().__init__()
        self.clock: Clock = time.monotonic
        self._core: ChannelCore | None = None
        self._timer: ActorAddress | None = None
        self._supervisor: ActorAddress | None = None
        self._processor: ActorAddress | None = None
        self._flight_processor: ActorAddress | None = None
        self._idle_timeout = 60.0
        self._received = 0  # messages from the Supervisor, for the passivation handshake
        self._deadline_wake: float | None = None
        self._idle_wake: float | None = None
        self._last_activity = 0.0
        self._observer: ActorAddress | None = None
        self._reported: int | None = None  # the waiting count last sent to the observer
        self._state = STARTING
        self._delivery_base = 0  # deliveries issued by this channel's earlier (passivated) actors
        self._persistence: ActorAddress | None = None
        # The messages that leave only once their operations are stored, each group with the number of the
        # Persist that carries those operations (Persist.seq), the last number given, and whether a Persist
        # without a number went out after it (its operations are covered by no number yet). None while nothing is
        # held: an empty deque costs 760 bytes.
        self._held: deque[tuple[int, tuple[tuple[ActorAddress, object], ...]]] | None = None
        self._numbered = 0
        self._unnumbered = False
        self._stored_ids = 0  # entries of the stored list of message ids: compacted when twice the bound
        # the stored list holds exactly _stored_ids entries (restored or compacted by this actor); else it may
        # hold more: ids an earlier actor stored that expired before this one started
        self._ids_exact = False

    # -- set-up ------------------------------------------------------------------------------------------

    @property
    def lifecycle(self) -> Lifecycle:
        """STARTING, RUNNING or PASSIVATING (see the module docstring)."""
        return self._state

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        if self._state is not RUNNING:
            self._receive_unless_running(message, sender)
            return
        super().receiveMessage(message, sender)

    def _receive_unless_running(self, message: object, sender: ActorAddress) -> None:
        """STARTING: hold all but ChannelInit (and system messages). PASSIVATING: handle the message, and go
        back to RUNNING if it voided the offer."""
        if self._state is STARTING:
            if isinstance(message, (ChannelInit, ActorSystemMessage)):
                super().receiveMessage(message, sender)
            else:
                # On the TCP base, ChannelInit waits until every address it carries (the Timer's, just created)
                # is usable, and the Supervisor's next messages can overtake it: keep them until it comes.
                self._startup = buffered(self._startup, message, sender)
            return
        # PASSIVATING: a message that counts as received from the Supervisor voids the offer
        received = self._received
        super().receiveMessage(message, sender)
        if self._received != received:
            self._state = RUNNING

    def receiveMsg_ChannelInit(self, msg: ChannelInit, sender: ActorAddress) -> None:
        if self._state is not STARTING:
            raise ProtocolViolation(f"ChannelInit for channel {msg.channel_id!r} while {self._state.value}")
        self._received += 1
        self._supervisor = sender
        self._timer = msg.timer
        if msg.clock is not None:
            self.clock = msg.clock
        self._idle_timeout = msg.idle_timeout
        self._core = ChannelCore(
            msg.channel_id,
            msg.settings,
            processed=msg.processed,
            cancelled=msg.cancelled,
            failed=msg.failed,
            added_effects=msg.persistence is not None,  # only the journal needs each added message
            conversation=msg.conversation,
            failures=msg.failures,
        )
        # Every delivery of an earlier actor of this channel ended done or cancelled before it passivated:
        # numbering on from there, a late reply routed by the Supervisor cannot finish a new delivery.
        self._delivery_base = msg.processed + msg.cancelled
        self._processor = msg.processor
        self._persistence = msg.persistence
        if msg.observer is not None:
            self._observer = msg.observer
            if msg.restore is None:
                self._reported = 0  # a new channel waits for nothing: the observer hears when that changes
        effects: list[Effect] = []
        if msg.remembered:  # handed over by its earlier actor: already stored when persisting
            self._core.remember_ids(msg.remembered, self.clock())
            self._stored_ids = len(msg.remembered)
        if msg.restore is not None:
            effects = self._restore(msg.restore)
        if msg.paused:
            self._core.pause()
        if msg.processor is not None:
            effects += self._core.attach(self.clock())
        self._settle(effects)
        self._state = RUNNING
        startup = self._startup
        if startup is not None:
            del self._startup
            startup.replay(self.receiveMessage)

    def _restore(self, snapshot: ChannelSnapshot) -> list[Effect]:
        """Resume the stored state; open messages keep their arrival times, so deadlines stay as they were."""
        core = self._channel
        now, wall = self.clock(), time.time()
        entries = snapshot.open_entries
        if snapshot.ids:
            core.remember_ids([(seen.message_id, now - (wall - seen.at)) for seen in snapshot.ids], now)
            self._stored_ids = len(snapshot.ids)
        self._ids_exact = True  # the snapshot holds the whole stored list
        retry = snapshot.retry
        effects = core.restore(
            snapshot.waiting,
            [(e.message, now - (wall - e.arrived_at)) for e in entries],
            now,
            None if retry is None else (retry.item_id, now - (wall - retry.due_at), retry.first_failed_at),
        )
        ops: list[Op] = []
        letters = snapshot.dead_letters
        if letters:
            core.restore_dead_letters(letters)
            if len(letters) > MAX_DEAD_LETTERS:  # the bound shrank, or entries set aside since: trim the store
                ops.append(RemoveDead(core.channel_id, letters[: len(letters) - MAX_DEAD_LETTERS]))
        if effects:
            # The cap shrank across the restart and full batches were cut from the stored open batch: store
            # them, then the stored open batch again as what is still open.
            for effect in effects:
                _journal(core.channel_id, effect, ops, wall - now)
            still_open = entries[len(entries) - (core.statistics().open_batch_size) :]
            ops.extend(AppendOpen(core.channel_id, entry) for entry in still_open)
        if ops and self._persistence is not None:
            self._persist(tuple(ops), ())
        return []

    def receiveMsg_Durable(self, msg: Durable, sender: ActorAddress) -> None:
        upto = msg.upto
        held = self._held
        while held and held[0][0] <= upto:
            for address, message in held.popleft()[1]:
                self.send(address, message)
        if not held:
            self._held = None
        self._settle([], active=False)  # re-arms the idle wake a pending Durable may have skipped

    def receiveMsg_Ack(self, msg: Ack, sender: ActorAddress) -> None:
        self._received += 1
        self._settle([], active=False, then=[(msg.reply_to, msg.reply)])

    def receiveMsg_AttachProcessor(self, msg: AttachProcessor, sender: ActorAddress) -> None:
        self._received += 1
        self._processor = msg.processor
        self._settle(self._channel.attach(self.clock()))

    def receiveMsg_Observe(self, msg: Observe, sender: ActorAddress) -> None:
        self._received += 1
        self._observer = msg.observer
        self._reported = None
        self._report()
        self._settle([], active=False)  # it may have voided a Passivate offer: re-arm the idle wake

    # -- inbound messages ----------------------------------------------------------------------------------

    def receiveMsg_EnqueueStamped(self, msg: EnqueueStamped, sender: ActorAddress) -> None:
        self._received += 1
        core = self._channel
        enqueue = core.enqueue
        effects: list[Effect] = []
        refusals = core.refusals
        # Each message at the time it was accepted: its window counts from then, however long it took to get here.
        for message, arrived in zip(msg.messages, msg.arrived):
            effects += enqueue(message, arrived)
        if core.refusals == refusals and not msg.ack:  # nothing refused, no answer asked for
            self._settle(effects)
            return
        reply_to = msg.reply_to
        then: list[tuple[ActorAddress, object]] = []
        refused = [e for e in effects if isinstance(e, MessageRejected)]
        for rejection in refused:
            message = rejection.message
            why = (
                "is busy and its busy_policy is reject"
                if rejection.error == "ChannelBusy"
                else f"holds max_queued={self._channel.settings.max_queued} messages and its overflow is reject"
            )
            reason = (
                f"channel {message.channel_id!r} {why}: message {message.message_id or message.text[:40]!r} refused"
            )
            if reply_to is not None:
                then.append((reply_to, Rejected("Enqueue", message.channel_id, rejection.error, reason)))
            else:
                log.warning("%s", reason)
        if msg.ack and reply_to is not None and not refused:
            then.append((reply_to, Enqueued(len(msg.messages))))
        self._settle(effects, then=then)

    def receiveMsg_EnqueueFront(self, msg: EnqueueFront, sender: ActorAddress) -> None:
        self._received += 1
        self._settle(self._channel.enqueue_front(msg.payload, self.clock()))

    # -- processor replies -------------------------------------------------------------------------------

    def receiveMsg_ProcessingDone(self, msg: ProcessingDone, sender: ActorAddress) -> None:
        self._finish(msg.delivery_id, None, sender)

    def receiveMsg_ProcessingFailed(self, msg: ProcessingFailed, sender: ActorAddress) -> None:
        self._finish(msg.delivery_id, msg.error or "failed", sender)

    def _finish(self, delivery_id: int, error: str | None, sender: ActorAddress) -> None:
        if sender == self._supervisor:
            self._received += 1
        effects: list[Effect] = []
        if delivery_id > self._delivery_base:  # else a late reply to a delivery of an earlier actor
            try:
                effects = self._channel.finish(delivery_id - self._delivery_base, error, self.clock())
            except ProtocolViolation as exc:
                log.warning("channel %r ignored a reply from %s: %s", self._channel.channel_id, sender, exc)
        # settled even when ignored: it may have voided a Passivate offer, and the idle wake must re-arm
        self._settle(effects, active=bool(effects))

    # -- commands routed by the Supervisor ---------------------------------------------------------------

    def receiveMsg_Routed(self, msg: Routed, sender: ActorAddress) -> None:
        self._received += 1
        core = self._channel
        command = msg.command
        effects: list[Effect] = []
        reply: object
        if isinstance(command, CancelCurrent):
            cancelled, effects = core.cancel_current(self.clock())
            reply = Cancelled(core.channel_id, cancelled)
        elif isinstance(command, Edit):
            edited, effects = core.edit(command.message)
            reply = Edited(core.channel_id, command.message.message_id, edited)
        elif isinstance(command, Retract):
            retracted, effects = core.retract(command.channel_id, command.message_id)
            reply = Retracted(core.channel_id, command.message_id, retracted)
        elif isinstance(command, TakeWaiting):
            taken, effects = core.take_waiting()
            reply = Taken(core.channel_id, tuple(taken))
        elif isinstance(command, Clear):
            removed, effects = core.clear()
            reply = Cleared(core.channel_id, removed)
        elif isinstance(command, StopChannel):
            cancelled, effects = core.stop()
            self._processor = None
            reply = ChannelStopped(core.channel_id, cancelled)
        elif isinstance(command, ConfigureChannel):
            core.configure(command.settings)
            reply = ChannelConfigured(core.channel_id)
        elif isinstance(command, GetStatistics):
            reply = Statistics((core.statistics(),))
        elif isinstance(command, HoldBatch):
            reply = BatchHeld(core.channel_id, core.hold())
        elif isinstance(command, FlushBatch):
            flushed, effects = core.flush(self.clock())
            reply = BatchFlushed(core.channel_id, flushed)
        elif isinstance(command, PauseChannel):
            core.pause()
            reply = ChannelPaused(core.channel_id, True)
        elif isinstance(command, ResumeChannel):
            _, effects = core.resume(self.clock())
            reply = ChannelPaused(core.channel_id, False)
        elif isinstance(command, GetDeadLetters):
            reply = DeadLetters(core.channel_id, core.dead_letters())
        elif isinstance(command, ReplayDeadLetters):
            count, effects = core.replay_dead_letters(self.clock())
            reply = DeadLettersReplayed(core.channel_id, count)
        elif isinstance(command, PurgeDeadLetters):
            count, effects = core.purge_dead_letters()
            reply = DeadLettersPurged(core.channel_id, count)
        else:  # pragma: no cover - Routed only carries the commands above
            raise TypeError(f"cannot route {type(command).__name__}")
        # a statistics query is not activity: polling must not keep an idle channel from passivating
        self._settle(
            effects,
            active=not isinstance(command, (GetStatistics, GetDeadLetters)),
            then=[(msg.reply_to, Gathered(msg.gather, reply) if msg.gather else reply)],
        )

    # -- time --------------------------------------------------------------------------------------------

    def receiveMsg_Wake(self, msg: Wake, sender: ActorAddress) -> None:
        now = self.clock()
        if msg.kind is WakeKind.DEADLINE:
            if msg.at == self._deadline_wake:
                self._deadline_wake = None
            self._settle(self._channel.tick(now), active=False)
            return
        if msg.at == self._idle_wake:
            self._idle_wake = None
        core = self._channel
        if not core.is_quiescent or self._held or core.dead_letters():
            return  # dead letters live here (and in Redis when persisting): the channel stays
        idle_until = self._last_activity + self._idle_timeout
        if now < idle_until:
            self._schedule_idle(idle_until)
            return
        stats = core.statistics()
        remembered = core.remembered_ids(now)  # the Supervisor keeps them for the channel's next actor
        passivate = Passivate(
            core.channel_id,
            self._received,
            stats.processed,
            stats.cancelled,
            stats.failed,
            (stats.duplicates, stats.edits, stats.retractions, stats.interruptions, stats.rejections),
            tuple(getattr(stats, name) for name in FAILURE_COUNTS),
            remembered,
        )
        assert self._supervisor is not None
        self._state = PASSIVATING  # from this offer on, even while it waits to be stored
        if self._persistence is not None and self._stored_ids and (
            not self._ids_exact or self._stored_ids != len(remembered)
        ):
            # The stored list may hold ids that expired: it becomes what is handed over before the offer goes
            # out, so that the next actor's appends follow it and a restart loads no more than that.
            wall = time.time() - now
            ids = tuple(SeenId(i, at + wall) for i, at in remembered)
            self._persist((ReplaceIds(core.channel_id, ids),), ((self._supervisor, passivate),))
            self._stored_ids, self._ids_exact = len(remembered), True
            return
        if self._unnumbered:  # the offer waits until everything this actor journalled is stored
            self._persist((), ((self._supervisor, passivate),))
            return
        self.send(self._supervisor, passivate)

    # -- effects -----------------------------------------------------------------------------------------

    @property
    def _channel(self) -> ChannelCore:
        if self._core is None:
            raise RuntimeError("ChannelActor used before ChannelInit")
        return self._core

    def _settle(
        self,
        effects: list[Effect],
        active: bool = True,
        then: Sequence[tuple[ActorAddress, object]] = (),
    ) -> None:
        """Carry out the core's effects, send ``then``, and re-arm the deadline and idle wakes as needed.

        With persistence, the operations that make the effects durable go to RedisPersistence, and every
        message that would leave (deliveries, cancels, replies) is held here until it confirms them.
        """
        core = self._core
        assert core is not None  # settled only once running
        out: list[tuple[ActorAddress, object]] = []
        ops: list[Op] | None = [] if self._persistence is not None else None
        wall = time.time() - self.clock() if ops is not None else 0.0  # wall clock = our clock + wall
        for effect in effects:
            if isinstance(effect, ItemQueued):
                pass  # the most common effect: nothing to send (journalled below)
            elif isinstance(effect, Deliver):
                processor = self._processor
                assert processor is not None
                self._flight_processor = processor
                queued = -1
                # Sent at once to a processor that also observes, the delivery reports the waiting count
                # itself (the core's, final for this settle). Not when persisting: it leaves only once durable,
                # and a later QueueChanged could overtake it.
                observer = self._observer
                if ops is None and observer is not None and (processor is observer or processor == observer):
                    queued = self._reported = core.queued
                out.append(
                    (
                        processor,
                        BatchReady(
                            core.channel_id,
                            effect.item,
                            effect.delivery_id + self._delivery_base,
                            effect.reason.value,
                            effect.lateness,
                            queued,
                            self.myAddress,
                            interrupted=effect.item.interrupted,
                        ),
                    )
                )
            elif isinstance(effect, DeliveryFinished):
                if effect.error is not None:
                    log.warning(
                        "channel %r: processor failed item %s (%d messages): %s",
                        core.channel_id,
                        effect.item.item_id,
                        effect.item.size,
                        effect.error,
                        extra={"channel": core.channel_id, "item_id": effect.item.item_id,
                               "delivery_id": effect.delivery_id + self._delivery_base,
                               "attempt": effect.item.attempt},
                    )
            elif isinstance(effect, DeliveryCancelled):
                if self._flight_processor is not None:
                    out.append(
                        (
                            self._flight_processor,
                            CancelProcessing(core.channel_id, effect.delivery_id + self._delivery_base),
                        )
                    )
            elif isinstance(effect, RetryScheduled):
                log.warning(
                    "channel %r: attempt %d of item %s failed (%s); retrying in %.3f s",
                    core.channel_id, effect.item.attempt - 1, effect.item.item_id, effect.error,
                    max(0.0, effect.due - self.clock()),
                    extra={"channel": core.channel_id, "item_id": effect.item.item_id, "attempt": effect.item.attempt},
                )
            elif isinstance(effect, ItemDead):
                letter = effect.letter
                log.error(
                    "channel %r: item %s failed its last attempt (%d) and is a dead letter: %s",
                    core.channel_id, letter.item.item_id if letter.item else "?", letter.attempts, letter.reason,
                    extra={"channel": core.channel_id, "attempt": letter.attempts},
                )
            elif isinstance(effect, MessagesDropped):
                stats = core.statistics()
                total = stats.dropped_overflow if effect.rule == "overflow" else stats.dropped_stale
                if total & (total - 1) == 0:  # a flood logs at the 1st, 2nd, 4th, 8th ... drop, not at each
                    log.warning(
                        "channel %r: %d message(s) dropped by rule %s (%d so far)",
                        core.channel_id, len(effect.messages), effect.rule, total,
                        extra={"channel": core.channel_id},
                    )
            if ops is not None:
                _journal(core.channel_id, effect, ops, wall)
                if isinstance(effect, IdRemembered):
                    self._stored_ids += 1
        if ops is not None and self._stored_ids > 2 * MAX_REMEMBERED_IDS:
            # the stored list only grows: rewrite it as the ids still remembered
            remembered = core.remembered_ids(self.clock())
            ops.append(ReplaceIds(core.channel_id, tuple(SeenId(i, at + wall) for i, at in remembered)))
            self._stored_ids, self._ids_exact = len(remembered), True
        # The observer hears of the counts before any reply this settle sends: a caller that got its reply
        # already sees what its command did.
        if self._observer is not None and effects:
            self._report()
        out.extend(then)
        if ops is not None:
            if ops or out:
                self._persist(tuple(ops), tuple(out))
        else:
            for address, message in out:
                self.send(address, message)
        deadline = core.deadline
        if deadline is not None and (self._deadline_wake is None or deadline < self._deadline_wake):
            self._deadline_wake = deadline
            self._send_timer(ScheduleWake(deadline, WakeKind.DEADLINE))
        if active:
            self._last_activity = self.clock()
        if core.is_quiescent and self._idle_wake is None:
            self._schedule_idle(self._last_activity + self._idle_timeout)

    def _persist(self, ops: tuple[Op, ...], held: tuple[tuple[ActorAddress, object], ...]) -> None:
        """Send ``ops`` to RedisPersistence; ``held``, if any, leaves once they are stored: such a Persist gets
        the next number, which RedisPersistence confirms (or a later one) with ``Durable``."""
        if held:
            seq = self._numbered = self._numbered + 1
            if self._held is None:
                self._held = deque()
            self._held.append((seq, held))
            self._unnumbered = False  # the operations before are stored once this number is confirmed
        else:
            seq = 0
            self._unnumbered = True
        self.send(self._persistence, Persist(ops, seq))

    def _report(self) -> None:
        """Tell the observer the waiting count (and the in-flight flag of that moment) if the count changed
        since last told. An item that closes and goes straight to an idle processor changes nothing."""
        core = self._channel
        queued = core.queued
        if queued != self._reported and self._observer is not None:
            self._reported = queued
            self.send(self._observer, QueueChanged(core.channel_id, queued, core.in_flight is not None))

    def _schedule_idle(self, at: float) -> None:
        self._idle_wake = at
        self._send_timer(ScheduleWake(at, WakeKind.IDLE))

    def _send_timer(self, request: ScheduleWake) -> None:
        assert self._timer is not None
        self.send(self._timer, request)


def _journal(channel_id: str, effect: Effect, ops: list[Op], wall: float) -> None:
    """Append the store operations that make ``effect`` durable; ``wall`` turns the channel's clock into Unix
    time (it is added)."""
    if isinstance(effect, MessageAdded):
        ops.append(AppendOpen(channel_id, OpenEntry(effect.message, effect.at + wall)))
    elif isinstance(effect, ItemQueued):
        if effect.reason is FlushReason.FRONT:
            ops.append(PushHead(channel_id, effect.item))
        else:
            # an unbatched or replayed item joins the tail without closing the open batch
            closes = effect.reason is not FlushReason.UNBATCHED and effect.reason is not FlushReason.REPLAYED
            ops.append(PushTail(channel_id, effect.item, closes_open=closes))
    elif isinstance(effect, Deliver):
        ops.append(TakeHead(channel_id))
    elif isinstance(effect, (DeliveryFinished, DeliveryCancelled)):
        ops.append(FinishInFlight(channel_id))
        if effect.item.attempt > 1:  # a retried item may have a stored wait (a RetryScheduled after sets it again)
            ops.append(ClearRetry(channel_id))
    elif isinstance(effect, QueueCleared):
        ops.append(ClearQueue(channel_id))
    elif isinstance(effect, IdRemembered):
        ops.append(AppendIds(channel_id, (SeenId(effect.message_id, effect.at + wall),)))
    elif isinstance(effect, RetryScheduled):
        ops.append(PushHead(channel_id, effect.item))
        # a restarted channel waits out the rest of the backoff; a wait whose item is gone is ignored
        ops.append(SetRetry(channel_id, RetryWait(effect.item.item_id, effect.due + wall, effect.first_failed_at)))
    elif isinstance(effect, ItemDead):
        ops.append(PushDead(channel_id, effect.letter))
        if effect.dropped is not None:
            ops.append(RemoveDead(channel_id, (effect.dropped,)))
    elif isinstance(effect, DeadLettersCleared):
        ops.append(RemoveDead(channel_id, effect.letters))
    elif isinstance(effect, MessagesDropped):
        if effect.head and effect.rule == "stale":  # skipped at delivery: nothing is in flight
            assert effect.rest is None
            ops.append(TakeHead(channel_id))
            ops.append(FinishInFlight(channel_id))
    elif isinstance(effect, WaitingChanged):
        # the open batch keeps its deadline across a restart: its first message opened it, its last slid it
        messages = effect.open_messages
        times = [effect.opened_at] + [effect.last_at] * (len(messages) - 1)
        entries = tuple(OpenEntry(m, at + wall) for m, at in zip(messages, times))
        ops.append(ReplaceWaiting(channel_id, effect.items, entries))
