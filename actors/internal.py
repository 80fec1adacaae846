"""Messages that pass only between this project's own actors. Not a public interface."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from protocol.messages import (
    CancelCurrent,
    Clear,
    ConfigureChannel,
    GetStatistics,
    HoldBatch,
    StopChannel,
)
from actors.journal import ChannelSnapshot
from protocol.values import BatchSettings, QueuedMessage

if TYPE_CHECKING:
    from thespian.actors import ActorAddress


@dataclass(frozen=True, slots=True)
class EnqueueChecked:
    """In-process driver -> Supervisor: messages already checked with ``protocol.limits.validate_message``
    by the driver's caller, in order. Routed like ``EnqueueMany`` without checking them again; no reply."""

    messages: tuple[QueuedMessage, ...]


@dataclass(frozen=True, slots=True)
class ConfigureSystem:
    """Launcher -> Supervisor: default batch settings and the idle time after which a channel passivates.
    Reply ``SystemConfigured``."""

    settings: BatchSettings
    idle_timeout: float = 60.0
    redis_url: str = ""  # persist every channel to this Redis (empty: in memory only)
    allow_volatile_redis: bool = False  # accept a Redis that may lose acknowledged writes


@dataclass(frozen=True, slots=True)
class SystemConfigured:
    """Supervisor -> launcher: ready; ``restored`` channels were loaded from Redis."""

    restored: int = 0


@dataclass(frozen=True, slots=True)
class ChannelInit:
    """Supervisor -> new ChannelActor (its first message): who it is and whom it talks to."""

    channel_id: str
    settings: BatchSettings
    timer: "ActorAddress"
    processor: Optional["ActorAddress"]
    idle_timeout: float
    processed: int = 0
    cancelled: int = 0
    failed: int = 0
    persistence: Optional["ActorAddress"] = None  # RedisPersistence, when the system persists
    restore: Optional[ChannelSnapshot] = None  # stored state to resume from


@dataclass(frozen=True, slots=True)
class AttachProcessor:
    """Supervisor -> ChannelActor: deliver to ``processor`` from now on."""

    processor: "ActorAddress"


@dataclass(frozen=True, slots=True)
class Ack:
    """Supervisor -> ChannelActor: send ``reply`` to ``reply_to`` once everything before is durable."""

    reply_to: "ActorAddress"
    reply: object


ChannelCommand = Union[CancelCurrent, Clear, StopChannel, ConfigureChannel, GetStatistics, HoldBatch]


@dataclass(frozen=True, slots=True)
class Routed:
    """Supervisor -> ChannelActor: a command whose reply goes to ``reply_to``; wrapped in ``Gathered`` with
    ``gather`` when that is not 0."""

    command: ChannelCommand
    reply_to: "ActorAddress"
    gather: int = 0


@dataclass(frozen=True, slots=True)
class Gathered:
    """ChannelActor -> Supervisor: one answer of a scatter-gather request."""

    gather: int
    reply: object


@dataclass(frozen=True, slots=True)
class Passivate:
    """ChannelActor -> Supervisor: idle with no work; may be stopped if it has seen every routed message."""

    channel_id: str
    received: int
    processed: int
    cancelled: int
    failed: int


class WakeKind(enum.Enum):
    DEADLINE = "deadline"
    IDLE = "idle"


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
