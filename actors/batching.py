"""The batching rules of one channel, as a pure state machine.

No Thespian, Redis or clock inside: every method that depends on time takes ``now`` (seconds on any
monotonic clock) and returns the effects the caller must carry out. The shell (``ChannelActor``, tests)
reads :attr:`ChannelCore.deadline` after each call and calls :meth:`ChannelCore.tick` when it is reached.

Rules:
    * Messages join the channel's open batch. A batch closes when no message arrived for ``window`` seconds
      (the window slides with each message), when it holds ``max_batch_size`` messages (at once), or when
      its first message is ``max_wait`` seconds old (if set). Settings are fixed when a batch opens.
    * With batching off, each message becomes its own item (after the open batch, if any, is closed).
    * Closed batches join a FIFO. With a processor attached, exactly one item is in flight at a time; the
      next is delivered only after the processor's done/failed reply or a cancel.
    * Enqueue-front puts an item at the head of the FIFO, behind the item in flight.
    * Cancel abandons the in-flight item and delivers the next; clear discards the FIFO (not the open batch,
      not the item in flight); stop cancels the in-flight item and detaches the processor.
    * Hold suspends the open batch's deadline: it keeps collecting and closes only by size, or by time again
      once the next message restarts its window.
    * Pause stops deliveries: a paused channel keeps accepting and batching (batches close and join the FIFO
      as usual) and its item in flight may finish, but nothing is delivered until it is resumed.

Conversation rules (settings of the channel's current ``BatchSettings``):
    * Duplicates: a message whose non-empty ``message_id`` the channel accepted less than ``dedupe_ttl``
      seconds ago is dropped (counted in ``duplicates``). The channel remembers at most
      :data:`MAX_REMEMBERED_IDS` ids, oldest forgotten first.
    * Edit and retract find the first not-yet-delivered message with a ``message_id`` (waiting items head
      first, then the open batch) and replace it in place or remove it; positions, item ids and deadlines do
      not change; an item or open batch left empty disappears. The item in flight is never touched.
    * Busy policies, for a message that arrives while an item is in flight: ``queue`` batches it as usual;
      ``collect`` keeps the open batch from closing by time while an item is in flight, and closes it
      (``collected``) when the processor answers or the item is cancelled; ``interrupt`` cancels the item in
      flight and puts its messages, in order, in front of the open batch (the item they close into is
      ``interrupted``); ``reject`` refuses it (``MessageRejected``, counted in ``rejections``).
    * ``split_on_author`` closes the open batch (``author``) before a message from another ``user_id``.
    * Take-waiting removes and returns every message not delivered yet: waiting items, then the open batch.

Failure and flood rules (settings of the channel's current ``BatchSettings``; ``now`` is monotonic, the
injected ``wall`` clock gives Unix time for message ages and dead letters):
    * Retries: an attempt fails when the processor answers with an error or does not answer within
      ``processing_timeout`` (the delivery is then cancelled, counted in ``timeouts``). With attempts left
      (``item.attempt < max_attempts``) the item goes back to the head of the FIFO with ``attempt + 1``, same
      ``item_id``, and nothing is delivered until its backoff has passed: a delay drawn (by the injected
      ``uniform``) from ``0 .. min(MAX_RETRY_DELAY, retry_backoff * 2 ** (attempt - 1))``. The backoff and
      the processing timeout are deadlines like the open batch's: :attr:`ChannelCore.deadline` is the
      earliest of the three and :meth:`ChannelCore.tick` acts on each. Only enqueue-front can put an item
      before a waiting retry. Cancel, stop and an interrupt abandon an item without failing it.
    * Dead letters: with ``max_attempts`` > 1, an item whose last attempt failed becomes a ``DeadLetter``
      (last error, attempts, first and last failure times), kept in memory, at most
      :data:`MAX_DEAD_LETTERS` per channel (oldest dropped first, counted in ``dead_letters_dropped``).
      Replay puts them back at the tail of the FIFO with ``attempt`` 1 and their ids; purge forgets them.
      With ``max_attempts`` 1 a failure is counted in ``failed`` and the channel moves on.
    * Caps: a channel holds at most ``max_queued`` messages waiting (FIFO plus open batch; the item in
      flight does not count). A message beyond it is refused (``overflow="reject"``: ``MessageRejected``
      with error ``QueueFull``, counted in ``rejected_full``), or the oldest waiting message
      (``"drop_oldest"``, the head item's first message, else the open batch's) or the new one
      (``"drop_newest"``) is dropped, counted in ``dropped_overflow``. Enqueue-front, restore, a returned
      interrupted item and replay are not refused.
    * Stale messages: when an item is about to be delivered, its messages whose ``queued_at`` is more than
      ``max_age`` seconds before the wall clock are dropped (``dropped_stale``); an item left empty is
      skipped.
"""

from __future__ import annotations

import enum
import itertools
import os
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from protocol.errors import InvalidInput, ProtocolViolation
from protocol.values import (
    MAX_RETRY_DELAY,
    BatchSettings,
    ChannelStatistics,
    DeadLetter,
    FlushReason,
    MessageBatch,
    Payload,
    QueuedMessage,
    QueueItem,
    payload_messages,
)

MAX_REMEMBERED_IDS = 1000
"""Most message ids one channel remembers for duplicate detection; beyond it the oldest is forgotten first."""

MAX_DEAD_LETTERS = 1000
"""Most dead letters one channel keeps; beyond it the oldest is dropped first (counted)."""

FAILURE_COUNTS = (
    "attempts",
    "retries",
    "timeouts",
    "dead_lettered",
    "dead_letters_dropped",
    "dropped_stale",
    "dropped_overflow",
    "rejected_full",
)
"""The failure and flood counts a core starts from (``failures=``), in this order: ``ChannelStatistics``
fields of the same names."""

_NO_COUNTS = dict.fromkeys(FAILURE_COUNTS[1:], 0)  # the failure counts but attempts, all zero: never changed


_NO_IDS: Mapping[str, float] = MappingProxyType({})  # the remembered ids of a channel that has none

class ChannelState(enum.Enum):
    """Where the channel stands towards its processor."""

    DETACHED = "detached"  # no processor: finished items wait
    IDLE = "idle"  # a processor is attached and nothing is in flight
    BUSY = "busy"  # one item is with the processor


# -- effects ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageAdded:
    """A message joined the open batch (which now holds ``batch_size`` messages) at time ``at``."""

    message: QueuedMessage
    batch_size: int
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class ItemQueued:
    """An item entered the FIFO: at its tail (a closed batch or unbatched message) or at its head (front)."""

    item: QueueItem
    reason: FlushReason
    lateness: float


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand ``item`` to the processor under ``delivery_id``."""

    item: QueueItem
    delivery_id: int
    reason: FlushReason
    lateness: float


@dataclass(frozen=True, slots=True)
class DeliveryCancelled:
    """The in-flight delivery was abandoned; tell the processor."""

    item: QueueItem
    delivery_id: int


@dataclass(frozen=True, slots=True)
class DeliveryFinished:
    """The processor answered the delivery; ``error`` is None on success."""

    item: QueueItem
    delivery_id: int
    error: str | None


@dataclass(frozen=True, slots=True)
class QueueCleared:
    """The waiting items were discarded."""

    items: tuple[QueueItem, ...]


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """``message`` was refused: it arrived while an item was in flight and the busy policy is ``reject``
    (``error`` ``ChannelBusy``), or the channel held ``max_queued`` messages and overflow is ``reject``
    (``error`` ``QueueFull``)."""

    message: QueuedMessage
    error: str = "ChannelBusy"


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """Attempt ``item.attempt - 1`` of ``item`` failed with ``error``: ``item`` (``attempt`` + 1) is at the
    head of the FIFO and is delivered once ``due`` (the core's clock) has passed; its first attempt failed
    at ``first_failed_at`` (Unix seconds)."""

    item: QueueItem
    error: str
    due: float
    first_failed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ItemDead:
    """An item failed its last attempt and became ``letter``; ``dropped`` is the oldest kept letter dropped
    to make room (None if none was)."""

    letter: DeadLetter
    dropped: DeadLetter | None = None


@dataclass(frozen=True, slots=True)
class DeadLettersCleared:
    """Every dead letter the channel kept was replayed or purged."""

    letters: tuple[DeadLetter, ...]


@dataclass(frozen=True, slots=True)
class MessagesDropped:
    """``messages`` were dropped by ``rule``: ``"overflow"`` (max_queued with drop_oldest / drop_newest) or
    ``"stale"`` (max_age). ``head``: they came off the head item of the FIFO, which is now ``rest`` (None:
    it was left empty and is gone); else from the open batch or (drop_newest) never joined."""

    messages: tuple[QueuedMessage, ...]
    rule: str
    head: bool = False
    rest: QueueItem | None = None


@dataclass(frozen=True, slots=True)
class WaitingChanged:
    """A not-yet-delivered message was edited, retracted or taken: ``items`` are the waiting items now (head
    first) and ``open_messages`` the open batch's messages now, which opened at ``opened_at`` and last slid
    at ``last_at`` (0.0 when none is open); the owner replaces what it keeps of both."""

    items: tuple[QueueItem, ...]
    open_messages: tuple[QueuedMessage, ...]
    opened_at: float = 0.0
    last_at: float = 0.0


@dataclass(frozen=True, slots=True)
class IdRemembered:
    """The channel accepted a message with ``message_id`` at ``at`` and remembers it for ``dedupe_ttl``
    (reported only to an owner that asked for ``added_effects``: it journals them)."""

    message_id: str
    at: float


Effect = (
    MessageAdded |
    ItemQueued |
    Deliver |
    DeliveryCancelled |
    DeliveryFinished |
    QueueCleared |
    MessageRejected |
    WaitingChanged |
    IdRemembered |
    RetryScheduled |
    ItemDead |
    DeadLettersCleared |
    MessagesDropped
)


@dataclass(slots=True)
class _Waiting:
    item: QueueItem
    reason: FlushReason
    lateness: float
    first_failed: float = 0.0  # wall time of its first failed attempt (0.0: none failed)


class _NoWaiting(deque[_Waiting]):
    """The FIFO of a channel that has no waiting item: one shared, empty deque that refuses additions.

    An empty deque costs 760 bytes, most of what a live channel that is not busy holds: a channel holds a deque
    of its own only while items wait (:meth:`ChannelCore._own_fifo` makes it at the first addition), and lets it
    go when its last item is delivered or removed.
    """

    __slots__ = ()

    def append(self, item: _Waiting, /) -> None:
        raise TypeError("the shared empty FIFO is read-only: add through ChannelCore._own_fifo")

    appendleft = append

    def extend(self, items: object, /) -> None:
        raise TypeError("the shared empty FIFO is read-only: add through ChannelCore._own_fifo")

    extendleft = extend

    def insert(self, index: int, item: _Waiting, /) -> None:
        raise TypeError("the shared empty FIFO is read-only: add through ChannelCore._own_fifo")


_NO_WAITING = _NoWaiting()


@dataclass(slots=True)
class _OpenBatch:
    batch: MessageBatch
    settings: BatchSettings
    opened_at: float
    last_at: float
    held: bool = False
    carried: int = 0  # messages at the head that an interrupted item gave back

    @property
    def deadline(self) -> float:
        due = self.last_at + self.settings.window
        if self.settings.max_wait is not None:
            return min(due, self.opened_at + self.settings.max_wait)
        return due

    def timed_reason(self) -> FlushReason:
        cap = self.settings.max_wait
        if cap is not None and self.opened_at + cap <= self.last_at + self.settings.window:
            return FlushReason.MAX_WAIT
        return FlushReason.WINDOW


class _ItemIds:
    """Item ids of 32 hex digits (the shape of ``uuid4().hex``): a random 64-bit prefix drawn once per process,
    and again in a forked child, followed by a 64-bit counter. Unique within a process by construction and
    across processes and restarts with the odds of two 64-bit draws colliding; about eight times cheaper than
    ``uuid4`` (which reads the OS's random source for every id)."""

    def __init__(self) -> None:
        self._prefix = ""
        self._counter = itertools.count()
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_new_item_id = _ItemIds()
os.register_at_fork(after_in_child=_new_item_id.reseed)


class ChannelCore:
    """Batching state of one channel. Not thread-safe; one owner calls it."""

    __slots__ = (
        "channel_id",
        "_settings",
        "_new_id",
        "_open",
        "_fifo",
        "_attached",
        "_in_flight",
        "_last_delivery_id",
        "_processed",
        "_cancelled",
        "_failed",
        "_added_effects",
        "_paused",
        "_seen",
        "_duplicates",
        "_edits",
        "_retractions",
        "_interruptions",
        "_rejections",
        "_wall",
        "_uniform",
        "_count",
        "_retry",
        "_retry_due",
        "_flight",
        "_flight_due",
        "_dead",
        "_counts",
        "_attempts",
        "_plain",
        "refusals",
    )

    def __init__(
        self,
        channel_id: str,
        settings: BatchSettings | None = None,
        *,
        new_id: Callable[[], str] = _new_item_id,
        processed: int = 0,
        cancelled: int = 0,
        failed: int = 0,
        added_effects: bool = True,
        conversation: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0),
        failures: Sequence[int] = (),
        wall: Callable[[], float] = time.time,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        """``added_effects``: report every message that joins the open batch (``MessageAdded``); only an
        owner that journals the open batch needs them. ``conversation``: the counts of duplicates, edits,
        retractions, interruptions and rejections to start from; ``failures``: the :data:`FAILURE_COUNTS`
        to start from. ``wall``: Unix time, for message ages and dead letters; ``uniform(a, b)``: the random
        draw of retry delays."""
        self.channel_id = channel_id
        self._settings = settings or BatchSettings()
        self._new_id = new_id
        self._open: _OpenBatch | None = None
        self._fifo: deque[_Waiting] = _NO_WAITING  # see _own_fifo
        self._attached = False
        self._in_flight: tuple[int, QueueItem] | None = None
        self._last_delivery_id = 0
        self._processed = processed
        self._cancelled = cancelled
        self._failed = failed
        self._added_effects = added_effects
        self._paused = False
        # message id -> when accepted, oldest first; an empty shared mapping until the first id (a live channel
        # then has one object less for the garbage collector to walk)
        self._seen: OrderedDict[str, float] | Mapping[str, float] = _NO_IDS
        self._duplicates, self._edits, self._retractions, self._interruptions, self._rejections = conversation
        self._wall = wall
        self._uniform = uniform
        self._count = 0  # messages waiting: FIFO plus open batch
        self._retry: _Waiting | None = None  # the item waiting out its backoff (in the FIFO)
        self._retry_due: float | None = None
        self._flight: _Waiting | None = None  # the in-flight item's record
        self._flight_due: float | None = None  # when the in-flight item times out
        self._dead: deque[DeadLetter] | tuple[DeadLetter, ...] = ()  # a deque from the first letter on
        # attempts: this count plus the deliveries this core made (``_last_delivery_id``)
        self._attempts = failures[0] if failures else 0
        # The other failure counts move only when a rule acts: their dict is made then (None: all zero).
        self._counts: dict[str, int] | None = None
        if any(failures[1:]):
            self._counts = dict(_NO_COUNTS)
            self._counts.update(zip(FAILURE_COUNTS[1:], failures[1:]))
        self._plain = _is_plain(self._settings)
        # Messages this core refused (MessageRejected: busy policy reject, or overflow reject at max_queued):
        # an owner that reads it before and after enqueue knows whether to look for refusals in the effects.
        self.refusals = 0

    # -- queries ----------------------------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        if not self._attached:
            return ChannelState.DETACHED
        return ChannelState.BUSY if self._in_flight is not None else ChannelState.IDLE

    @property
    def settings(self) -> BatchSettings:
        """The settings the next batch will open with."""
        return self._settings

    @property
    def deadline(self) -> float | None:
        """The earliest of: when the open batch must close (none when no batch is open, or it is held),
        when a waiting retry's backoff ends, and when the item in flight times out; None if none applies."""
        current = self._open
        if self._retry_due is None and self._flight_due is None:  # no retry waiting, no timeout running
            if current is None or current.held or (
                self._in_flight is not None and current.settings.busy_policy == "collect"
            ):
                return None
            return current.deadline
        due = self._retry_due
        flight_due = self._flight_due
        if flight_due is not None and (due is None or flight_due < due):
            due = flight_due
        if current is None or current.held or self._collecting(current):
            return due
        batch_due = current.deadline
        return batch_due if due is None or batch_due < due else due

    @property
    def waiting_messages(self) -> int:
        """Messages waiting: in the FIFO and the open batch (what ``max_queued`` caps)."""
        return self._count

    @property
    def retry_due(self) -> float | None:
        """When the waiting retry at the head of the FIFO may be delivered (None: no retry is waiting)."""
        return self._retry_due

    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The dead letters kept, oldest first."""
        return tuple(self._dead)

    @property
    def in_flight(self) -> tuple[int, QueueItem] | None:
        """The delivery id and item with the processor, if any."""
        return self._in_flight

    @property
    def open_batch(self) -> MessageBatch | None:
        return self._open.batch if self._open is not None else None

    def waiting(self) -> tuple[QueueItem, ...]:
        """The finished items waiting for the processor, head first."""
        return tuple(w.item for w in self._fifo)

    @property
    def queued(self) -> int:
        """The number of finished items waiting for the processor."""
        return len(self._fifo)

    @property
    def is_quiescent(self) -> bool:
        """True when nothing is open, waiting or in flight: the channel holds no work."""
        return self._open is None and not self._fifo and self._in_flight is None

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(
            channel_id=self.channel_id,
            queued=len(self._fifo),
            open_batch_size=self._open.batch.size if self._open is not None else 0,
            in_flight=self._in_flight is not None,
            processed=self._processed,
            cancelled=self._cancelled,
            failed=self._failed,
            has_processor=self._attached,
            duplicates=self._duplicates,
            edits=self._edits,
            retractions=self._retractions,
            interruptions=self._interruptions,
            rejections=self._rejections,
            dead_letters=len(self._dead),
            attempts=self._attempts + self._last_delivery_id,
            **(self._counts or _NO_COUNTS),
        )

    def remembered_ids(self, now: float) -> tuple[tuple[str, float], ...]:
        """The message ids still remembered for duplicate detection, with when each was accepted, oldest
        first (expired ones forgotten first)."""
        self._forget_expired(now)
        return tuple(self._seen.items())

    def remember_ids(self, ids: Sequence[tuple[str, float]], now: float) -> None:
        """Remember ``ids`` (message id, when accepted, oldest first) as accepted, e.g. after a restart."""
        seen = self._seen_ids()
        for message_id, at in ids:
            seen[message_id] = at
            seen.move_to_end(message_id)
        while len(seen) > MAX_REMEMBERED_IDS:
            seen.popitem(last=False)
        self._forget_expired(now)

    # -- events -----------------------------------------------------------------------------------------

    def restore(
        self,
        waiting: Sequence[QueueItem],
        open_messages: Sequence[tuple[QueuedMessage, float]],
        now: float,
        retry: tuple[str, float, float] | None = None,
    ) -> list[Effect]:
        """Resume from stored state: ``waiting`` items head first, and the open batch's messages with the
        (monotonic) times they arrived, so the batch keeps its original deadline. Only on a fresh core.

        ``retry``: (item id, due, first failed at) of a retry waiting out its backoff, ``due`` on this clock
        and ``first failed at`` in Unix seconds. When the head item has that id it keeps when its first
        attempt failed (for its dead letter) and, if ``due`` is still ahead, is delivered only then.

        Open messages beyond ``max_batch_size`` (the cap shrank across the restart) are closed into full
        batches, as enqueue would have; those are the returned effects.

        Raises:
            ProtocolViolation: if the core already holds work, or a processor is attached (restore returns no
                effects, so it could not deliver).
            InvalidInput: if an item or message belongs to another channel.
        """
        if not self.is_quiescent or self._last_delivery_id:
            raise ProtocolViolation(f"restore of channel {self.channel_id!r} in state {self.state.value} with work")
        if self._attached:
            raise ProtocolViolation(
                f"restore of channel {self.channel_id!r} in state {self.state.value}: restore before attach"
            )
        stored = [m for item in waiting for m in payload_messages(item.payload)] + [m for m, _ in open_messages]
        for channel in [item.channel_id for item in waiting] + [m.channel_id for m in stored]:
            if channel != self.channel_id:
                raise InvalidInput(f"restored state of channel {channel!r} sent to channel {self.channel_id!r}")
        for item in waiting:
            self._own_fifo().append(_Waiting(item, FlushReason.RESTORED, 0.0))
        if retry is not None and self._fifo and self._fifo[0].item.item_id == retry[0]:
            head = self._fifo[0]
            head.first_failed = retry[2]
            head.reason = FlushReason.RETRY
            if retry[1] > now:
                self._retry, self._retry_due = head, retry[1]
        self._count = len(stored)
        effects: list[Effect] = []
        cap = self._settings.max_batch_size
        for start in range(0, len(open_messages), cap):
            chunk = open_messages[start : start + cap]
            first_at = chunk[0][1]
            current = self._open = _OpenBatch(MessageBatch(), self._settings, first_at, first_at)
            for msg, arrived in chunk:
                current.batch.add(msg, msg.queued_at)
                current.last_at = arrived
            if len(chunk) == cap:
                self._open = None
                item = QueueItem(self._new_id(), self.channel_id, current.batch)
                self._push_tail(item, FlushReason.FULL, 0.0, effects)
        return effects

    def configure(self, settings: BatchSettings) -> None:
        """Use ``settings`` from the next batch on; the open batch keeps the settings it opened with."""
        self._settings = settings
        current = self._open
        self._plain = _is_plain(settings) and (current is None or current.settings is settings)

    def enqueue(self, msg: QueuedMessage, now: float) -> list[Effect]:
        """Add ``msg`` to the open batch (opening one if needed), closing batches that are due or full."""
        if msg.channel_id != self.channel_id:
            raise InvalidInput(
                f"message for channel {msg.channel_id!r} sent to channel {self.channel_id!r}"
            )
        settings = self._settings
        # The common case takes a short path with the same outcome: settings that use no busy policy, author
        # split or unbatched delivery, no open batch opened with other settings (``_plain``), a message
        # without an id (nothing to look up or remember), and room below max_queued.
        if not self._plain or msg.message_id or self._count >= settings.max_queued:
            return self._enqueue_by_rules(msg, now)
        effects: list[Effect] = []
        current = self._open
        if current is not None and not current.held and now >= current.deadline:
            self._close(current.timed_reason(), now, effects)
            current = None
        self._count += 1
        if current is None:
            current = self._open = _OpenBatch(MessageBatch(), settings, now, now)
        current.batch.add(msg, msg.queued_at)
        if current.held:
            # the window restarts with this message; max_wait counts from it too
            current.held = False
            current.opened_at = now
        current.last_at = now
        if self._added_effects:
            effects.append(MessageAdded(msg, current.batch.size, now))
        size = len(current.batch.messages)
        if size >= settings.max_batch_size:
            if size == settings.max_batch_size:
                self._close(FlushReason.FULL, now, effects)
            else:  # more than one full batch: only after an interrupt
                self._cut_full(now, effects)
        if self._in_flight is None and self._fifo:
            self._deliver_next(effects, now)
        return effects

    def _enqueue_by_rules(self, msg: QueuedMessage, now: float) -> list[Effect]:
        """:meth:`enqueue` with every rule checked in turn."""
        settings = self._settings
        current = self._open
        if not self._plain and _is_plain(settings) and (current is None or current.settings is settings):
            self._plain = True  # the batch opened with earlier settings is gone: the short path serves again
        message_id = msg.message_id
        if message_id and settings.dedupe_ttl > 0:
            self._forget_expired(now)
            if message_id in self._seen:
                self._duplicates += 1
                return []
        effects: list[Effect] = []
        busy = self._in_flight is not None
        if busy and settings.busy_policy == "reject":
            self._rejections += 1
            self.refusals += 1
            return [MessageRejected(msg)]
        if self._count >= settings.max_queued:
            if settings.overflow == "reject":
                self._add_count("rejected_full")
                self.refusals += 1
                return [MessageRejected(msg, "QueueFull")]
            self._add_count("dropped_overflow")
            if settings.overflow == "drop_newest":
                return [MessagesDropped((msg,), "overflow")]
            self._drop_oldest(effects)
        if message_id and settings.dedupe_ttl > 0:
            seen = self._seen_ids()
            seen[message_id] = now
            seen.move_to_end(message_id)
            if len(seen) > MAX_REMEMBERED_IDS:
                seen.popitem(last=False)
            if self._added_effects:
                effects.append(IdRemembered(message_id, now))
        current = self._open
        if current is not None and self._due(current, now):
            self._close(current.timed_reason(), now, effects)
            current = None
        carried: tuple[QueuedMessage, ...] = ()
        if busy and settings.busy_policy == "interrupt":
            flight = self._in_flight
            assert flight is not None
            self._cancel(effects)
            self._interruptions += 1
            carried = payload_messages(flight[1].payload)
        self._count += 1 + len(carried)
        if not settings.batching:
            if current is not None:
                self._close(FlushReason.SETTINGS, now, effects)
            if carried:
                batch = MessageBatch()
                for message in (*carried, msg):
                    batch.add(message, message.queued_at)
                item = QueueItem(self._new_id(), self.channel_id, batch, interrupted=True)
            else:
                item = QueueItem(self._new_id(), self.channel_id, msg)
            self._push_tail(item, FlushReason.UNBATCHED, 0.0, effects)
            self._deliver_next(effects, now)
            return effects
        if carried:
            batch = MessageBatch()
            for message in (*carried, *(current.batch.messages if current is not None else ())):
                batch.add(message, message.queued_at)
            if current is None:
                current = self._open = _OpenBatch(batch, settings, now, now)
            else:
                current.batch = batch
            current.carried += len(carried)
            if self._added_effects:
                # journalled at the open batch's tail: persisted order differs only if one was already open
                effects.extend(MessageAdded(message, current.batch.size, now) for message in carried)
        if (
            current is not None
            and current.settings.split_on_author
            and current.batch.messages
            and current.batch.messages[-1].user_id != msg.user_id
        ):
            self._close(FlushReason.AUTHOR, now, effects)
            current = None
        if current is None:
            current = self._open = _OpenBatch(MessageBatch(), settings, now, now)
        current.batch.add(msg, msg.queued_at)
        if current.held:
            # the window restarts with this message; max_wait counts from it too
            current.held = False
            current.opened_at = now
        current.last_at = now
        if self._added_effects:
            effects.append(MessageAdded(msg, current.batch.size, now))
        self._cut_full(now, effects)
        self._deliver_next(effects, now)
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Act on every deadline that has passed: time out the item in flight, end a retry's backoff, close
        the open batch."""
        effects: list[Effect] = []
        if self._flight_due is not None or self._retry_due is not None:
            self._tick_failures(now, effects)
        current = self._open
        if (
            current is not None
            and not current.held
            and now >= current.deadline
            and not (self._in_flight is not None and current.settings.busy_policy == "collect")
        ):
            self._close(current.timed_reason(), now, effects)
        if self._in_flight is None and self._fifo:
            self._deliver_next(effects, now)
        return effects

    def _tick_failures(self, now: float, effects: list[Effect]) -> None:
        """:meth:`tick`'s part for a processing timeout and a retry's backoff."""
        flight = self._in_flight
        flight_due = self._flight_due
        if flight is not None and flight_due is not None and now >= flight_due:
            timeout = self._flight_due_after()
            self._add_count("timeouts")
            record = self._flight
            self._in_flight = None
            self._flight = None
            self._flight_due = None
            effects.append(DeliveryCancelled(flight[1], flight[0]))
            self._failed += 1
            self._attempt_failed(flight[1], record, f"processing_timeout: no answer within {timeout:g} s", now, effects)
            self._close_collected(now, effects)
        retry_due = self._retry_due
        if retry_due is not None and now >= retry_due:
            self._retry = None
            self._retry_due = None

    def flush(self, now: float) -> tuple[bool, list[Effect]]:
        """Close the open batch now (reason ``flushed``); False when no batch is open."""
        effects: list[Effect] = []
        if self._open is None:
            return False, effects
        self._close(FlushReason.FLUSHED, now, effects)
        self._deliver_next(effects, now)
        return True, effects

    def hold(self) -> bool:
        """Suspend the open batch's deadline until the next message; False when no batch is open."""
        if self._open is None:
            return False
        self._open.held = True
        return True

    def enqueue_front(self, payload: Payload, now: float) -> list[Effect]:
        """Put ``payload`` at the head of the FIFO, behind the item in flight."""
        if isinstance(payload, MessageBatch) and not payload.messages:
            raise InvalidInput("enqueue_front needs a non-empty batch")
        for msg in payload_messages(payload):
            if msg.channel_id != self.channel_id:
                raise InvalidInput(
                    f"item for channel {msg.channel_id!r} sent to channel {self.channel_id!r}"
                )
        item = QueueItem(self._new_id(), self.channel_id, payload)
        self._own_fifo().appendleft(_Waiting(item, FlushReason.FRONT, 0.0))
        self._count += item.size
        effects: list[Effect] = [ItemQueued(item, FlushReason.FRONT, 0.0)]
        self._deliver_next(effects, now)
        return effects

    def attach(self, now: float = 0.0) -> list[Effect]:
        """A processor is ready: deliver the head item if nothing is in flight. Idempotent. (``now``: when,
        for a processing timeout.)"""
        self._attached = True
        effects: list[Effect] = []
        self._deliver_next(effects, now)
        return effects

    def finish(self, delivery_id: int, error: str | None = None, now: float = 0.0) -> list[Effect]:
        """The processor answered ``delivery_id`` (``error`` set when it failed); deliver the next item. An
        open batch collecting under busy policy ``collect`` closes first (``now`` is its closing time).

        A reply for a delivery that was already cancelled is ignored (no effects).

        Raises:
            ProtocolViolation: if ``delivery_id`` was never issued by this channel.
        """
        if delivery_id > self._last_delivery_id or delivery_id < 1:
            raise ProtocolViolation(
                f"reply for delivery {delivery_id} in state {self.state.value}: "
                f"channel {self.channel_id!r} issued deliveries 1..{self._last_delivery_id}"
            )
        flight = self._in_flight
        if flight is None or flight[0] != delivery_id:
            return []
        self._in_flight = None
        self._processed += 1
        effects: list[Effect] = [DeliveryFinished(flight[1], delivery_id, error)]
        if error is not None:
            self._failed += 1
            self._attempt_failed(flight[1], self._flight, error, now, effects)
        self._flight = None
        self._flight_due = None
        current = self._open
        if current is not None and current.settings.busy_policy == "collect":
            self._close(FlushReason.COLLECTED, now, effects)
        self._deliver_next(effects, now)
        return effects

    def cancel_current(self, now: float = 0.0) -> tuple[bool, list[Effect]]:
        """Abandon the in-flight item and deliver the next (a collecting open batch closes first, as in
        :meth:`finish`); False when nothing was in flight."""
        effects: list[Effect] = []
        cancelled = self._cancel(effects)
        if cancelled:
            self._close_collected(now, effects)
        self._deliver_next(effects, now)
        return cancelled, effects

    def edit(self, msg: QueuedMessage) -> tuple[bool, list[Effect]]:
        """Replace the first not-yet-delivered message with ``msg.message_id`` by ``msg``, in place; False
        when no waiting or open message has that id.

        Raises:
            InvalidInput: if ``msg`` has no ``message_id`` or belongs to another channel.
        """
        self._check_target(msg.channel_id, msg.message_id, "edit")
        found = self._find(msg.message_id)
        if found is None:
            return False, []
        waiting, index = found
        if waiting is None:
            assert self._open is not None
            self._open.batch.messages[index] = msg
        else:
            payload = waiting.item.payload
            if isinstance(payload, MessageBatch):
                messages = list(payload.messages)
                messages[index] = msg
                payload = MessageBatch(messages, payload.first_at, payload.last_at)
            else:
                payload = msg
            waiting.item = replace(waiting.item, payload=payload)
        self._edits += 1
        return True, [self._waiting_changed()]

    def retract(self, channel_id: str, message_id: str) -> tuple[bool, list[Effect]]:
        """Remove the first not-yet-delivered message with ``message_id``; an item or open batch left empty
        disappears. False when no waiting or open message has that id.

        Raises:
            InvalidInput: if ``message_id`` is empty or ``channel_id`` is another channel's.
        """
        self._check_target(channel_id, message_id, "retract")
        found = self._find(message_id)
        if found is None:
            return False, []
        waiting, index = found
        if waiting is None:
            current = self._open
            assert current is not None
            del current.batch.messages[index]
            self._count -= 1
            if index < current.carried:
                current.carried -= 1
            if not current.batch.messages:
                self._open = None
        else:
            payload = waiting.item.payload
            if isinstance(payload, MessageBatch) and len(payload.messages) > 1:
                messages = list(payload.messages)
                del messages[index]
                waiting.item = replace(
                    waiting.item, payload=MessageBatch(messages, payload.first_at, payload.last_at)
                )
            else:
                self._fifo.remove(waiting)
                if not self._fifo:
                    self._fifo = _NO_WAITING
                if waiting is self._retry:
                    self._retry = self._retry_due = None
            self._count -= 1
        self._retractions += 1
        return True, [self._waiting_changed()]

    def take_waiting(self) -> tuple[list[QueuedMessage], list[Effect]]:
        """Remove and return, in order, every message not delivered yet: waiting items head first, then the
        open batch. The item in flight stays."""
        taken = [m for w in self._fifo for m in payload_messages(w.item.payload)]
        if self._open is not None:
            taken.extend(self._open.batch.messages)
        if not taken:
            return [], []
        self._fifo = _NO_WAITING
        self._open = None
        self._count = 0
        self._retry = self._retry_due = None
        return taken, [self._waiting_changed()]

    def clear(self) -> tuple[int, list[Effect]]:
        """Discard every waiting item (a retry waiting out its backoff too); return how many."""
        items = tuple(w.item for w in self._fifo)
        self._fifo = _NO_WAITING
        self._count = self._open.batch.size if self._open is not None else 0
        self._retry = self._retry_due = None
        return len(items), ([QueueCleared(items)] if items else [])

    def stop(self) -> tuple[bool, list[Effect]]:
        """Cancel the in-flight item and detach the processor; waiting items and the open batch stay."""
        effects: list[Effect] = []
        cancelled = self._cancel(effects)
        self._attached = False
        return cancelled, effects

    # -- transitions ------------------------------------------------------------------------------------

    def _collecting(self, current: _OpenBatch) -> bool:
        return current.settings.busy_policy == "collect" and self._in_flight is not None

    def _due(self, current: _OpenBatch, now: float) -> bool:
        return not current.held and not self._collecting(current) and now >= current.deadline

    def _close_collected(self, now: float, effects: list[Effect]) -> None:
        current = self._open
        if current is not None and current.settings.busy_policy == "collect":
            self._close(FlushReason.COLLECTED, now, effects)

    def _cut_full(self, now: float, effects: list[Effect]) -> None:
        """Close full batches off the head of the open batch (more than one only after an interrupt)."""
        current = self._open
        while current is not None and current.batch.size >= current.settings.max_batch_size:
            cap = current.settings.max_batch_size
            if current.batch.size == cap:
                self._close(FlushReason.FULL, now, effects)
                return
            head = MessageBatch()
            for message in current.batch.messages[:cap]:
                head.add(message, message.queued_at)
            rest = MessageBatch()
            for message in current.batch.messages[cap:]:
                rest.add(message, message.queued_at)
            item = QueueItem(self._new_id(), self.channel_id, head, interrupted=current.carried > 0)
            self._push_tail(item, FlushReason.FULL, 0.0, effects)
            current.batch = rest
            current.carried = max(0, current.carried - cap)

    def _seen_ids(self) -> OrderedDict[str, float]:
        """The remembered ids, as the mapping to change (made with the first id)."""
        seen = self._seen
        if type(seen) is not OrderedDict:
            seen = self._seen = OrderedDict()
        return seen

    def _dead_letters(self) -> deque[DeadLetter]:
        """The dead letters, as the deque to change (made with the first letter)."""
        dead = self._dead
        if type(dead) is not deque:
            dead = self._dead = deque()
        return dead

    def _forget_expired(self, now: float) -> None:
        ttl = self._settings.dedupe_ttl
        seen = self._seen
        if not seen:
            return
        assert type(seen) is OrderedDict
        while seen:
            oldest = next(iter(seen.values()))
            if ttl > 0 and now - oldest < ttl:
                return
            seen.popitem(last=False)

    def _check_target(self, channel_id: str, message_id: str, what: str) -> None:
        if channel_id != self.channel_id:
            raise InvalidInput(f"{what} for channel {channel_id!r} sent to channel {self.channel_id!r}")
        if not message_id:
            raise InvalidInput(f"{what} needs a non-empty message_id")

    def _find(self, message_id: str) -> tuple[_Waiting | None, int] | None:
        """The first not-yet-delivered message with ``message_id``: its waiting item (None: the open batch)
        and its index there."""
        for waiting in self._fifo:
            for index, message in enumerate(payload_messages(waiting.item.payload)):
                if message.message_id == message_id:
                    return waiting, index
        if self._open is not None:
            for index, message in enumerate(self._open.batch.messages):
                if message.message_id == message_id:
                    return None, index
        return None

    def _waiting_changed(self) -> WaitingChanged:
        current = self._open
        if current is None:
            return WaitingChanged(tuple(w.item for w in self._fifo), ())
        return WaitingChanged(
            tuple(w.item for w in self._fifo), tuple(current.batch.messages), current.opened_at, current.last_at
        )

    def _cancel(self, effects: list[Effect]) -> bool:
        flight = self._in_flight
        if flight is None:
            return False
        self._in_flight = None
        self._flight = None
        self._flight_due = None
        self._cancelled += 1
        effects.append(DeliveryCancelled(flight[1], flight[0]))
        return True

    def _close(self, reason: FlushReason, now: float, effects: list[Effect]) -> None:
        current = self._open
        assert current is not None
        self._open = None
        # a full or flushed batch closes on time, as one closed by an event (collected, author) rather than by
        # its deadline; a held one has no deadline to be late for
        on_time = (
            reason is FlushReason.FULL
            or reason is FlushReason.FLUSHED
            or current.held
            or reason is FlushReason.COLLECTED
            or reason is FlushReason.AUTHOR
        )
        lateness = 0.0 if on_time else max(0.0, now - current.deadline)
        if current.carried:
            item = QueueItem(self._new_id(), self.channel_id, current.batch, interrupted=True)
        else:
            item = QueueItem(self._new_id(), self.channel_id, current.batch)
        self._own_fifo().append(_Waiting(item, reason, lateness))
        effects.append(ItemQueued(item, reason, lateness))

    def _push_tail(self, item: QueueItem, reason: FlushReason, lateness: float, effects: list[Effect]) -> None:
        self._own_fifo().append(_Waiting(item, reason, lateness))
        effects.append(ItemQueued(item, reason, lateness))

    def _own_fifo(self) -> deque[_Waiting]:
        """The channel's FIFO, to add to: its own deque, made now if it held none (see :class:`_NoWaiting`)."""
        fifo = self._fifo
        if fifo is _NO_WAITING:
            fifo = self._fifo = deque()
        return fifo

    def _deliver_next(self, effects: list[Effect], now: float) -> None:
        fifo = self._fifo
        if not fifo or self._in_flight is not None or self._paused or not self._attached or self._retry is not None:
            return
        settings = self._settings
        while fifo:
            head = fifo.popleft()
            if not fifo:
                self._fifo = _NO_WAITING  # empty: its deque goes
            item = head.item
            payload = item.payload
            self._count -= len(payload.messages) if type(payload) is MessageBatch else 1
            if settings.max_age is not None:
                messages = payload_messages(payload)
                cutoff = self._wall() - settings.max_age
                kept = tuple(m for m in messages if m.queued_at.timestamp() >= cutoff)
                if len(kept) < len(messages):
                    stale = tuple(m for m in messages if m.queued_at.timestamp() < cutoff)
                    self._add_count("dropped_stale", len(stale))
                    if not kept:
                        effects.append(MessagesDropped(stale, "stale", head=True))
                        continue
                    item = replace(item, payload=_rebatched(item.payload, kept))
                    head.item = item
                    effects.append(MessagesDropped(stale, "stale", head=False))
            self._last_delivery_id += 1
            self._in_flight = (self._last_delivery_id, item)
            self._flight = head
            if item.attempt > 1:
                self._add_count("retries")
            timeout = settings.processing_timeout
            self._flight_due = None if timeout is None else now + timeout
            effects.append(Deliver(item, self._last_delivery_id, head.reason, head.lateness))
            return

    def _add_count(self, name: str, amount: int = 1) -> None:
        counts = self._counts
        if counts is None:
            counts = self._counts = dict(_NO_COUNTS)
        counts[name] += amount

    def _flight_due_after(self) -> float:
        return self._settings.processing_timeout or 0.0

    def _attempt_failed(
        self, item: QueueItem, record: _Waiting | None, error: str, now: float, effects: list[Effect]
    ) -> None:
        """Attempt ``item.attempt`` of ``item`` failed: retry it after its backoff, or make it a dead letter."""
        settings = self._settings
        wall = self._wall()
        first = record.first_failed if record is not None and record.first_failed else wall
        if item.attempt < settings.max_attempts:
            again = replace(item, attempt=item.attempt + 1)
            ceiling = min(MAX_RETRY_DELAY, settings.retry_backoff * 2 ** (item.attempt - 1))
            delay = max(0.0, self._uniform(0.0, ceiling)) if ceiling > 0 else 0.0
            waiting = _Waiting(again, FlushReason.RETRY, 0.0, first)
            self._own_fifo().appendleft(waiting)
            self._count += again.size
            if delay > 0:
                self._retry = waiting
                self._retry_due = now + delay
            effects.append(RetryScheduled(again, error, now + delay, first))
            return
        if settings.max_attempts == 1:
            return  # counted in failed; the channel moves on
        letter = DeadLetter(
            "item", error, b"", wall, item=item, attempts=item.attempt, first_failed_at=first, last_failed_at=wall
        )
        dropped = None
        dead = self._dead_letters()
        if len(dead) >= MAX_DEAD_LETTERS:
            dropped = dead.popleft()
            self._add_count("dead_letters_dropped")
        dead.append(letter)
        self._add_count("dead_lettered")
        effects.append(ItemDead(letter, dropped))

    def _drop_oldest(self, effects: list[Effect]) -> None:
        """Drop the oldest waiting message: the head item's first, else the open batch's first."""
        self._count -= 1
        fifo = self._fifo
        if fifo:
            head = fifo[0]
            messages = payload_messages(head.item.payload)
            rest: QueueItem | None = None
            if len(messages) > 1:
                rest = replace(head.item, payload=_rebatched(head.item.payload, messages[1:]))
                head.item = rest
            else:
                fifo.popleft()
                if not fifo:
                    self._fifo = _NO_WAITING
                if head is self._retry:
                    self._retry = self._retry_due = None
            effects.append(MessagesDropped(messages[:1], "overflow", head=True, rest=rest))
            if self._added_effects:
                # an owner that journals rewrites the waiting items (the item in flight is not among them)
                effects.append(self._waiting_changed())
            return
        current = self._open
        assert current is not None, "a full channel holds a waiting message"
        dropped = current.batch.messages.pop(0)
        current.carried = max(0, current.carried - 1)
        if not current.batch.messages:
            self._open = None
        effects.append(MessagesDropped((dropped,), "overflow"))
        effects.append(self._waiting_changed())

    # -- dead letters (appended: failures) --------------------------------------------------------------

    def restore_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep ``letters`` (oldest first) as this channel's dead letters, e.g. after a restart; beyond
        :data:`MAX_DEAD_LETTERS` the oldest are dropped (counted)."""
        if not letters:
            return
        dead = self._dead_letters()
        for letter in letters:
            if len(dead) >= MAX_DEAD_LETTERS:
                dead.popleft()
                self._add_count("dead_letters_dropped")
            dead.append(letter)

    def replay_dead_letters(self, now: float) -> tuple[int, list[Effect]]:
        """Put every dead letter's item back at the tail of the FIFO (``attempt`` 1, ``item_id`` kept, reason
        ``replayed``), oldest first, and forget the letters; return how many items. Not refused by
        ``max_queued``."""
        letters = tuple(self._dead)
        if not letters:
            return 0, []
        self._dead = ()
        effects: list[Effect] = [DeadLettersCleared(letters)]
        count = 0
        for letter in letters:
            if letter.item is None:
                continue
            item = replace(letter.item, attempt=1)
            self._count += item.size
            self._push_tail(item, FlushReason.REPLAYED, 0.0, effects)
            count += 1
        self._deliver_next(effects, now)
        return count, effects

    def purge_dead_letters(self) -> tuple[int, list[Effect]]:
        """Forget every dead letter; return how many."""
        letters = tuple(self._dead)
        self._dead = ()
        return len(letters), ([DeadLettersCleared(letters)] if letters else [])

    # -- pause (appended: operations) -------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while deliveries are paused."""
        return self._paused

    def pause(self) -> bool:
        """Deliver nothing more until :meth:`resume`; messages are still accepted and batched, and the item
        in flight (if any) may still finish. False when the channel was already paused."""
        if self._paused:
            return False
        self._paused = True
        return True

    def resume(self, now: float = 0.0) -> tuple[bool, list[Effect]]:
        """Deliver again, starting with the head of the FIFO; False when the channel was not paused."""
        effects: list[Effect] = []
        if not self._paused:
            return False, effects
        self._paused = False
        self._deliver_next(effects, now)
        return True, effects


def _is_plain(settings: BatchSettings) -> bool:
    """True when ``settings`` use none of the rules that :meth:`ChannelCore.enqueue` checks per message
    beyond duplicates and max_queued: busy policy ``queue``, batching on, no split on author."""
    return settings.busy_policy == "queue" and settings.batching and not settings.split_on_author


def _rebatched(payload: Payload, messages: Sequence[QueuedMessage]) -> Payload:
    """``payload`` carrying only ``messages`` (a subset of its own, in order)."""
    if isinstance(payload, MessageBatch):
        return MessageBatch(list(messages), payload.first_at, payload.last_at)
    return messages[0]
