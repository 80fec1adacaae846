"""Actors and messages the integration tests use as processors and producers.

Kept in a module of its own, importable by name, so that the TCP base's forked actor processes can unpickle
these messages and create :class:`RecordingProcessor` actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from thespian.actors import ActorTypeDispatcher

from protocol.messages import BatchReady, CancelProcessing, ProcessingDone, ProcessingFailed
from protocol.values import payload_messages

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

Event = BatchReady | CancelProcessing

DONE = "done"  # answer every BatchReady with ProcessingDone at once
FAIL = "fail"  # answer every BatchReady with ProcessingFailed at once
HOLD = "hold"  # answer nothing until told to Release


@dataclass(frozen=True, slots=True)
class Behave:
    """Test -> RecordingProcessor: answer later BatchReady messages per ``mode``; replies go to ``reply_to``
    (the sender of the BatchReady when None). Reply ``Behaving``."""

    mode: str
    reply_to: ActorAddress | None = None


@dataclass(frozen=True, slots=True)
class Behaving:
    """RecordingProcessor -> sender of ``Behave``."""


@dataclass(frozen=True, slots=True)
class Release:
    """Test -> RecordingProcessor: answer held deliveries with ProcessingDone (only ``delivery_id`` of
    ``channel_id`` when given, else all, in arrival order); cancelled ones too. Reply ``Released``."""

    channel_id: str = ""
    delivery_id: int = 0


@dataclass(frozen=True, slots=True)
class Released:
    """RecordingProcessor -> sender of ``Release``: how many held deliveries were answered."""

    count: int


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Test -> RecordingProcessor: reply ``Recorded`` as soon as at least ``count`` events are recorded and
    the BatchReady items among them carry at least ``messages`` messages in all."""

    count: int = 0
    messages: int = 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """RecordingProcessor -> sender of ``WaitFor``: every BatchReady and CancelProcessing, as they came."""

    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class NotACommand:
    """A message no message_queue actor understands."""

    note: str = ""


class RecordingProcessor(ActorTypeDispatcher):  # type: ignore[misc]
    """A processor that records what it is sent and answers as it is told."""

    def __init__(self) -> None:
        super().__init__()
        self._events: list[Event] = []
        self._mode = DONE
        self._reply_to: ActorAddress | None = None
        self._held: list[tuple[BatchReady, ActorAddress]] = []
        self._waiters: list[tuple[WaitFor, ActorAddress]] = []
        self._messages = 0

    def receiveMsg_Behave(self, msg: Behave, sender: ActorAddress) -> None:
        self._mode = msg.mode
        self._reply_to = msg.reply_to
        self.send(sender, Behaving())

    def receiveMsg_BatchReady(self, msg: BatchReady, sender: ActorAddress) -> None:
        self._record(msg)
        if self._mode == HOLD:
            self._held.append((msg, sender))
        elif self._mode == FAIL:
            failed = ProcessingFailed(msg.channel_id, msg.delivery_id, "told to fail")
            self.send(self._reply_to or sender, failed)
        else:
            self.send(self._reply_to or sender, ProcessingDone(msg.channel_id, msg.delivery_id))

    def receiveMsg_CancelProcessing(self, msg: CancelProcessing, sender: ActorAddress) -> None:
        self._record(msg)

    def receiveMsg_Release(self, msg: Release, sender: ActorAddress) -> None:
        wanted = (msg.channel_id, msg.delivery_id)
        chosen = [
            (ready, origin)
            for ready, origin in self._held
            if not msg.channel_id or (ready.channel_id, ready.delivery_id) == wanted
        ]
        for ready, origin in chosen:
            self._held.remove((ready, origin))
            self.send(self._reply_to or origin, ProcessingDone(ready.channel_id, ready.delivery_id))
        self.send(sender, Released(len(chosen)))

    def receiveMsg_WaitFor(self, msg: WaitFor, sender: ActorAddress) -> None:
        self._waiters.append((msg, sender))
        self._answer_waiters()

    def _record(self, event: Event) -> None:
        self._events.append(event)
        if isinstance(event, BatchReady):
            self._messages += len(payload_messages(event.item.payload))
        self._answer_waiters()

    def _answer_waiters(self) -> None:
        for waiter in list(self._waiters):
            wanted, who = waiter
            if len(self._events) >= wanted.count and self._messages >= wanted.messages:
                self._waiters.remove(waiter)
                self.send(who, Recorded(tuple(self._events)))
