"""Messages that pass only between this project's own actors. Not a public interface."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from actors.journal import ChannelSnapshot
from protocol.messages import (
    CancelCurrent,
    Clear,
    ConfigureChannel,
    Edit,
    FlushBatch,
    GetDeadLetters,
    GetStatistics,
    HoldBatch,
    PauseChannel,
    PurgeDeadLetters,
    ReplayDeadLetters,
    ResumeChannel,
    Retract,
    StopChannel,
    TakeWaiting,
)
from protocol.values import BatchSettings, QueuedMessage

if TYPE_CHECKING:
    from thespian.actors import ActorAddress


Clock = Callable[[], float]
"""Seconds on a monotonic clock. Every actor of a system reads the one clock it was configured with."""


class Alarm(Protocol):
    """Where the Timer arms its deadline when a driver owns time (the loop driver): instead of a Thespian
    wakeup, the driver calls back with ``Tick`` once ``at`` has come, after it has handed the actors every
    message accepted before that moment."""

    def arm(self, at: float, timer: ActorAddress) -> None:
        """Send ``timer`` a ``Tick`` no earlier than ``at`` (an earlier arm replaces a later one)."""


class Submission(Protocol):
    def outcome(self, timeout: float | None = None) -> Outcome:
        """Block until the call has run; what it returned or raised."""


class Io(Protocol):
    """Runs blocking calls away from the actors' thread and hands each outcome back as an actor message
    (:class:`actors.io.ThreadIo`)."""

    def submit(
        self, call: Callable[[], Any], to: ActorAddress, reply: Callable[[Outcome], object]
    ) -> Submission:
        """Run ``call`` on an I/O thread; then send ``reply(outcome)`` to ``to``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a blocking call returned, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    @classmethod
    def of(cls, call: Callable[[], Any]) -> Outcome:
        try:
            return cls(call())
        except Exception as exc:  # handed to the actor that asked, which decides
            return cls(error=exc)


@dataclass(frozen=True, slots=True)
class EnqueueChecked:
    """In-process driver -> Supervisor: messages already checked with ``protocol.validation.validate_message``, in
    order, each with the time it was accepted (``arrived``, on the system's clock: its batching window counts
    from then). Routed without checking them again, so it cannot be pickled: it never comes from another
    process. With ``ack``, the Supervisor answers ``Enqueued`` once they are all durable (at once without
    persistence)."""

    messages: tuple[QueuedMessage, ...]
    arrived: tuple[float, ...]
    ack: bool = False

    def __reduce__(self) -> tuple[object, ...]:
        # Its messages were checked in this process: it must not reach a Supervisor unchecked from another one.
        raise TypeError("EnqueueChecked never crosses a process boundary: send Enqueue or EnqueueMany")


@dataclass(frozen=True, slots=True)
class EnqueueStamped:
    """Supervisor -> ChannelActor: checked messages of the channel, in order, each with the time it was
    accepted (on the system's clock). A message the channel refuses (busy policy ``reject``) is answered
    ``Rejected`` to ``reply_to``; with ``ack``, ``reply_to`` gets ``Enqueued`` once the accepted ones are
    durable (at once without persistence)."""

    messages: tuple[QueuedMessage, ...]
    arrived: tuple[float, ...]
    reply_to: ActorAddress | None = None
    ack: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Loop driver -> Timer: the driver's clock read ``now`` when every message accepted before it had been
    handed to the actors; wake every deadline up to ``now``."""

    now: float


@dataclass(frozen=True, slots=True)
class ConfigureSystem:
    """Launcher -> Supervisor: default batch settings and the idle time after which a channel passivates.
    Reply ``SystemConfigured``."""

    settings: BatchSettings
    idle_timeout: float = 60.0
    redis_url: str = ""  # persist every channel to this Redis (empty: in memory only)
    allow_volatile_redis: bool = False  # accept a Redis that may lose acknowledged writes
    clock: Clock | None = None  # the system's clock (None: time.monotonic)
    alarm: Alarm | None = None  # the Timer arms this instead of Thespian wakeups (a driver owns time)
    io: Io | None = None  # persistence runs its Redis calls here (None: inline, blocking its actor)
    redis_write_seconds: Callable[[float], None] | None = None  # gets each persistence write's duration
    report_redis_writes: bool = False  # send RedisWriteTimes to the sender (a callable cannot cross processes)
    # With redis_url: how long a channel's settings read from its settings hash are used (seconds); a message
    # for a channel whose last read is older waits for a fresh read. None: the hash is not read.
    config_ttl: float | None = None


@dataclass(frozen=True, slots=True)
class SystemConfigured:
    """Supervisor -> launcher: ready; ``restored`` channels were loaded from Redis."""

    restored: int = 0


@dataclass(frozen=True, slots=True)
class ChannelInit:
    """Supervisor -> new ChannelActor (its first message): who it is and whom it talks to."""

    channel_id: str
    settings: BatchSettings
    timer: ActorAddress
    processor: ActorAddress | None
    idle_timeout: float
    processed: int = 0
    cancelled: int = 0
    failed: int = 0
    persistence: ActorAddress | None = None  # RedisPersistence, when the system persists
    restore: ChannelSnapshot | None = None  # stored state to resume from
    clock: Clock | None = None  # None: time.monotonic
    paused: bool = False  # deliveries paused (PauseChannel) before this actor was spawned
    # duplicates, edits, retractions, interruptions, rejections of its earlier actors
    conversation: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    failures: tuple[int, ...] = ()  # actors.batching.FAILURE_COUNTS of its earlier actors
    # message ids its earlier actor remembered when it passivated: (id, when accepted on the clock), oldest first
    remembered: tuple[tuple[str, float], ...] = ()
    # gets its QueueChanged facts (as Observe would tell it), from a count of 0 unless ``restore`` is given
    observer: ActorAddress | None = None


@dataclass(frozen=True, slots=True)
class AttachProcessor:
    """Supervisor -> ChannelActor: deliver to ``processor`` from now on."""

    processor: ActorAddress


@dataclass(frozen=True, slots=True)
class Ack:
    """Supervisor -> ChannelActor: send ``reply`` to ``reply_to`` once everything before is durable."""

    reply_to: ActorAddress
    reply: object


ChannelCommand = (
    CancelCurrent |
    Clear |
    StopChannel |
    ConfigureChannel |
    GetStatistics |
    HoldBatch |
    FlushBatch |
    PauseChannel |
    ResumeChannel |
    Edit |
    Retract |
    TakeWaiting |
    GetDeadLetters |
    ReplayDeadLetters |
    PurgeDeadLetters
)


@dataclass(frozen=True, slots=True)
class Routed:
    """Supervisor -> ChannelActor: a command whose reply goes to ``reply_to``; wrapped in ``Gathered`` with
    ``gather`` when that is not 0."""

    command: ChannelCommand
    reply_to: ActorAddress
    gather: int = 0


@dataclass(frozen=True, slots=True)
class Gathered:
    """ChannelActor -> Supervisor: one answer of a scatter-gather request."""

    gather: int
    reply: object


@dataclass(frozen=True, slots=True)
class ReleaseHeld:
    """Launcher -> Supervisor, before it stops the system: send every channel the commands held for a read of
    its settings hash now, with the settings it has, so that they are journaled before persistence stops.
    Answered with ``Enqueued(count of commands sent on)`` once those channels' work is durable."""


@dataclass(frozen=True, slots=True)
class Passivate:
    """ChannelActor -> Supervisor: idle with no work; may be stopped if it has seen every routed message.
    ``ids``: the message ids it still remembers for duplicate detection, for its next actor (as in
    ``ChannelInit.remembered``)."""

    channel_id: str
    received: int
    processed: int
    cancelled: int
    failed: int
    conversation: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # as in ChannelInit
    failures: tuple[int, ...] = ()  # as in ChannelInit
    ids: tuple[tuple[str, float], ...] = ()


class WakeKind(enum.Enum):
    DEADLINE = "deadline"
    IDLE = "idle"
    FORGET = "forget"  # the Supervisor drops the expired ids of passivated channels


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Supervisor -> Timer (its first message): the clock to read, and the alarm to arm when a driver owns
    time (None: Thespian wakeups)."""

    clock: Clock | None = None
    alarm: Alarm | None = None


@dataclass(frozen=True, slots=True)
class ScheduleWake:
    """ChannelActor -> Timer: send me ``Wake`` when the monotonic clock reaches ``at``."""

    at: float
    kind: WakeKind


@dataclass(frozen=True, slots=True)
class Wake:
    """Timer -> ChannelActor: the time ``at`` it asked for has come."""

    at: float
    kind: WakeKind
