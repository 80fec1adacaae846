"""Actor messages: one frozen dataclass per command, reply and fact.

Commands (imperative names) go to the Supervisor, found by the global name :data:`SUPERVISOR_NAME`. Each
command is answered with the reply named in its docstring, or with :class:`Rejected` when it breaks a limit.
``Enqueue`` and ``EnqueueFront`` are answered only when sent with ``ack=True``; otherwise a rejection is logged
as a warning. Facts (``BatchReady``, ``CancelProcessing``) go from a channel to its processor, which answers
``BatchReady`` with ``ProcessingDone`` or ``ProcessingFailed`` (to the sender of ``BatchReady``, or to the
Supervisor: both route by channel).

A message refused by its channel's busy policy ``reject`` is answered ``Rejected`` with error
``ChannelBusy``, sent with or without ``ack`` (by ``Enqueue``; by ``EnqueueMany`` it is logged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol.values import BatchSettings, ChannelStatistics, DeadLetter, Payload, QueuedMessage, QueueItem

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

SUPERVISOR_NAME = "message_queue.supervisor"


# -- commands -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Producer -> Supervisor: add one message to its channel's open batch. Reply ``Enqueued`` if ack."""

    message: QueuedMessage
    ack: bool = False


@dataclass(frozen=True, slots=True)
class EnqueueMany:
    """Producer -> Supervisor: add messages in the given order. Reply ``Enqueued`` if ack.

    Invalid messages are rejected one by one (``Rejected`` each if ack, else a warning); the valid ones are
    still enqueued.
    """

    messages: tuple[QueuedMessage, ...]
    ack: bool = False


@dataclass(frozen=True, slots=True)
class EnqueueFront:
    """Producer -> Supervisor: put a message or batch at the head of its channel's queue, behind the item
    in flight. Reply ``Enqueued`` if ack."""

    payload: Payload
    ack: bool = False


@dataclass(frozen=True, slots=True)
class StartProcessing:
    """Processor owner -> Supervisor: deliver a channel's items (every channel without a processor of its
    own when ``channel_id`` is empty) to ``processor``, or to the sender when it is None. Reply
    ``ProcessingStarted``."""

    channel_id: str = ""
    processor: ActorAddress | None = None


@dataclass(frozen=True, slots=True)
class StopChannel:
    """Anyone -> Supervisor: cancel the channel's in-flight item and detach its processor. Waiting items and
    the open batch are kept for the next ``StartProcessing``. Reply ``ChannelStopped``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class CancelCurrent:
    """Anyone -> Supervisor: abandon the channel's in-flight item and move on. Reply ``Cancelled``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Anyone -> Supervisor: discard the channel's waiting items (not the open batch, not the one in
    flight). Reply ``Cleared``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class HoldBatch:
    """Anyone -> Supervisor: suspend the deadline of the channel's open batch until its next message (it
    still closes when full). Reply ``BatchHeld``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """Anyone -> Supervisor: close the channel's open batch now (it joins the queue like any closed batch).
    Reply ``BatchFlushed``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ConfigureChannel:
    """Anyone -> Supervisor: override a channel's batch settings from its next batch on. Reply
    ``ChannelConfigured``."""

    channel_id: str
    settings: BatchSettings


@dataclass(frozen=True, slots=True)
class GetStatistics:
    """Anyone -> Supervisor: snapshot one channel, or every live channel when ``channel_id`` is empty.
    Reply ``Statistics``."""

    channel_id: str = ""


@dataclass(frozen=True, slots=True)
class Observe:
    """Observer -> Supervisor: send every channel's ``QueueChanged`` facts to ``observer`` (to the sender when
    None), replacing any earlier observer. Each live channel reports its current counts at once. Reply
    ``Observing``."""

    observer: ActorAddress | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """Anyone -> Supervisor: replace, in place, the not-yet-delivered message of ``message.channel_id`` with
    ``message.message_id`` (its position and its batch's deadline stay). Reply ``Edited``."""

    message: QueuedMessage

    @property
    def channel_id(self) -> str:
        return self.message.channel_id


@dataclass(frozen=True, slots=True)
class Retract:
    """Anyone -> Supervisor: remove the not-yet-delivered message of the channel with ``message_id`` (an
    item left empty disappears). Reply ``Retracted``."""

    channel_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class TakeWaiting:
    """Anyone -> Supervisor: remove and return every message of the channel not delivered yet, in order
    (waiting items, then the open batch). Reply ``Taken``."""

    channel_id: str


# -- replies --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Supervisor -> producer: this many messages (or one front item) were accepted."""

    count: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """Supervisor -> sender: the command broke a rule; ``error`` is the exception class name, ``reason``
    its message. Nothing else was dropped."""

    command: str
    channel_id: str
    error: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProcessingStarted:
    """Supervisor -> sender of ``StartProcessing``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ChannelStopped:
    """Supervisor -> sender of ``StopChannel``; ``cancelled`` tells whether an item was in flight."""

    channel_id: str
    cancelled: bool


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Supervisor -> sender of ``CancelCurrent``; ``cancelled`` tells whether an item was in flight."""

    channel_id: str
    cancelled: bool


@dataclass(frozen=True, slots=True)
class Cleared:
    """Supervisor -> sender of ``Clear``: how many waiting items were discarded."""

    channel_id: str
    removed: int


@dataclass(frozen=True, slots=True)
class BatchHeld:
    """Supervisor -> sender of ``HoldBatch``; ``held`` tells whether a batch was open."""

    channel_id: str
    held: bool


@dataclass(frozen=True, slots=True)
class BatchFlushed:
    """Supervisor -> sender of ``FlushBatch``; ``flushed`` tells whether a batch was open."""

    channel_id: str
    flushed: bool


@dataclass(frozen=True, slots=True)
class ChannelConfigured:
    """Supervisor -> sender of ``ConfigureChannel``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class Edited:
    """Supervisor or ChannelActor -> sender of ``Edit``: whether a waiting message was replaced (False: it was
    delivered already, or is unknown)."""

    channel_id: str
    message_id: str
    edited: bool


@dataclass(frozen=True, slots=True)
class Retracted:
    """Supervisor or ChannelActor -> sender of ``Retract``: whether a waiting message was removed."""

    channel_id: str
    message_id: str
    retracted: bool


@dataclass(frozen=True, slots=True)
class Taken:
    """Supervisor or ChannelActor -> sender of ``TakeWaiting``: the messages removed, in order."""

    channel_id: str
    messages: tuple[QueuedMessage, ...]


@dataclass(frozen=True, slots=True)
class Statistics:
    """Supervisor -> sender of ``GetStatistics``: one snapshot per channel, sorted by channel id."""

    channels: tuple[ChannelStatistics, ...]


@dataclass(frozen=True, slots=True)
class Observing:
    """Supervisor -> sender of ``Observe``."""


# -- facts between a channel and its processor ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchReady:
    """Channel -> processor: process ``item``; answer ``ProcessingDone`` or ``ProcessingFailed`` with the
    same ``delivery_id``. ``reason`` says why the batch closed; ``lateness`` is how long after its due time
    it closed, in seconds.

    ``queued`` >= 0 when the processor is also the channel's observer (``Observe``): it is then the
    channel's waiting count right after this delivery left the queue, sent in place of a ``QueueChanged``
    (-1 otherwise). ``reply_to`` is the channel actor that sent it: the cheapest address for the reply. It
    is not encoded (a decoded ``BatchReady`` has None: reply to the Supervisor, which routes by channel).
    ``interrupted`` (as ``item.interrupted``): the item begins with the messages of an item whose processing
    a newer message interrupted (busy policy ``interrupt``)."""

    channel_id: str
    item: QueueItem
    delivery_id: int
    reason: str = ""
    lateness: float = 0.0
    queued: int = -1
    reply_to: ActorAddress | None = field(default=None, compare=False)
    interrupted: bool = field(default=False, kw_only=True)  # as item.interrupted


@dataclass(frozen=True, slots=True)
class CancelProcessing:
    """Channel -> processor: the delivery was cancelled; abandon it. A later reply for it is ignored."""

    channel_id: str
    delivery_id: int


@dataclass(frozen=True, slots=True)
class ProcessingDone:
    """Processor -> channel (or Supervisor): the delivery was processed."""

    channel_id: str
    delivery_id: int


@dataclass(frozen=True, slots=True)
class ProcessingFailed:
    """Processor -> channel (or Supervisor): the delivery failed; the channel logs it and moves on."""

    channel_id: str
    delivery_id: int
    error: str


# -- facts for an observer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueChanged:
    """Channel (or Supervisor, for a channel that died) -> observer registered with ``Observe``: the
    number of finished items waiting changed; ``in_flight`` is whether an item was with the processor at that
    moment. Not sent for a message that only joins the open batch, nor for an item that goes straight to an
    idle processor."""

    channel_id: str
    queued: int
    in_flight: bool


@dataclass(frozen=True, slots=True)
class ChannelPassivated:
    """Supervisor -> observer registered with ``Observe``: the channel's actor held no work and was stopped
    (its counters are kept; its next message starts a new actor). Nothing of it is waiting or in flight."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ChannelSettingsApplied:
    """Supervisor -> observer registered with ``Observe``: the channel's settings hash was just read (with
    persistence and ``config_ttl``), and ``settings`` are what the channel uses from now on (the hash over
    its ``ConfigureChannel`` override, else over the defaults; what it had when Redis could not be read). Sent
    before the commands held for the read reach the channel, so the observer knows them before their
    outcomes."""

    channel_id: str
    settings: BatchSettings


# -- operations: pausing a channel's deliveries ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PauseChannel:
    """Anyone -> Supervisor: deliver nothing more on the channel until ``ResumeChannel``; it keeps accepting
    and batching messages (an item already in flight may finish). The Supervisor remembers it for the channel
    while the node runs, across passivation. Reply ``ChannelPaused(paused=True)``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ResumeChannel:
    """Anyone -> Supervisor: deliver the channel's waiting items again, head first. Reply
    ``ChannelPaused(paused=False)``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ChannelPaused:
    """Supervisor (or channel) -> sender of ``PauseChannel`` or ``ResumeChannel``: whether the channel's
    deliveries are now paused."""

    channel_id: str
    paused: bool


# -- failures: dead letters ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetDeadLetters:
    """Anyone -> Supervisor: the channel's dead letters (items that failed their last attempt), oldest first.
    Reply ``DeadLetters``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """Supervisor (or channel) -> sender of ``GetDeadLetters``."""

    channel_id: str
    letters: tuple[DeadLetter, ...]


@dataclass(frozen=True, slots=True)
class ReplayDeadLetters:
    """Anyone -> Supervisor: put the channel's dead letters back at the tail of its FIFO (``attempt`` 1, ids
    kept) and forget them. Reply ``DeadLettersReplayed``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class DeadLettersReplayed:
    """Supervisor (or channel) -> sender of ``ReplayDeadLetters``: how many items went back."""

    channel_id: str
    count: int


@dataclass(frozen=True, slots=True)
class PurgeDeadLetters:
    """Anyone -> Supervisor: forget the channel's dead letters. Reply ``DeadLettersPurged``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class DeadLettersPurged:
    """Supervisor (or channel) -> sender of ``PurgeDeadLetters``: how many were forgotten."""

    channel_id: str
    count: int
