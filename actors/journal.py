"""The vocabulary of persistence, free of any Redis import: the operations a channel journals, the stored
state it resumes from, and the messages between channels, the Supervisor and RedisPersistence.

Only :mod:`actors.store` and :mod:`actors.persistence` need the ``redis`` package (the ``redis`` extra).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from protocol.errors import UnsafeRedis
from protocol.values import BatchSettings, DeadLetter, OpenEntry, QueueItem, SeenId

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

    from actors.internal import Io


# -- operations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppendOpen:
    """A message joined the channel's open batch."""

    channel_id: str
    entry: OpenEntry


@dataclass(frozen=True, slots=True)
class PushTail:
    """An item joined the tail of the channel's queue; ``closes_open`` when it is the open batch closing."""

    channel_id: str
    item: QueueItem
    closes_open: bool


@dataclass(frozen=True, slots=True)
class PushHead:
    """An item was put at the head of the channel's queue."""

    channel_id: str
    item: QueueItem


@dataclass(frozen=True, slots=True)
class TakeHead:
    """The queue's head item went in flight."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class FinishInFlight:
    """The processor answered (or the delivery was cancelled): forget the item in flight."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ClearQueue:
    """The channel's waiting items were discarded."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class ReplaceWaiting:
    """The channel's waiting items and open batch are now ``items`` (head first) and ``open_entries`` (after an
    edit, a retraction or a take)."""

    channel_id: str
    items: tuple[QueueItem, ...]
    open_entries: tuple[OpenEntry, ...]


@dataclass(frozen=True, slots=True)
class AppendIds:
    """The channel accepted messages with these ids."""

    channel_id: str
    ids: tuple[SeenId, ...]


@dataclass(frozen=True, slots=True)
class ReplaceIds:
    """The ids the channel remembers are now ``ids`` (oldest first): the stored list is compacted."""

    channel_id: str
    ids: tuple[SeenId, ...]


@dataclass(frozen=True, slots=True)
class PushDead:
    """An item failed its last attempt: ``letter`` joins the tail of the channel's dead letters."""

    channel_id: str
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class RemoveDead:
    """These dead letters were replayed, purged or dropped past the bound: remove each one's stored entry
    (the first entry equal to its frame; one that is not stored is skipped)."""

    channel_id: str
    letters: tuple[DeadLetter, ...]


@dataclass(frozen=True, slots=True)
class RetryWait:
    """The item ``item_id`` at the head of a channel's queue waits out its retry backoff until ``due_at``;
    its first attempt failed at ``first_failed_at`` (both Unix seconds)."""

    item_id: str
    due_at: float
    first_failed_at: float


@dataclass(frozen=True, slots=True)
class SetRetry:
    """A failed item went back to the head of the queue (a ``PushHead`` before it) to wait as ``wait`` says;
    it replaces the channel's stored wait."""

    channel_id: str
    wait: RetryWait


@dataclass(frozen=True, slots=True)
class ClearRetry:
    """A retried item was answered (done, failed for good, or cancelled): forget the channel's stored wait."""

    channel_id: str


Op = (
    AppendOpen | PushTail | PushHead | TakeHead | FinishInFlight | ClearQueue | ReplaceWaiting | AppendIds |
    ReplaceIds | PushDead | RemoveDead | SetRetry | ClearRetry
)


@dataclass(frozen=True, slots=True)
class ChannelSnapshot:
    """What a restarted channel resumes with: waiting items head first (a redelivered in-flight item at the
    head with its attempt raised), the open batch's entries, its dead letters (oldest first: items that
    failed their last attempt, and stored entries that could not be decoded or encoded) and, when its head
    item is a retry, that item's wait (``retry.item_id`` is the head's; its ``due_at`` may have passed)."""

    channel_id: str
    waiting: tuple[QueueItem, ...]
    open_entries: tuple[OpenEntry, ...]
    ids: tuple[SeenId, ...] = ()  # message ids it accepted, oldest first (expired ones included)
    dead_letters: tuple[DeadLetter, ...] = ()
    retry: RetryWait | None = None


# -- messages -----------------------------------------------------------------------------------------------


LEASE_SECONDS = 15.0
"""Length of the writer lease (seconds): a node that stops renewing it (renewed every third of it) loses the
database to the next node after this long; a crashed node's lease is taken over at once on the same host."""


@dataclass(frozen=True, slots=True)
class OpenStore:
    """Supervisor -> RedisPersistence: connect, check the server and take the database's writer lease (held
    for ``lease_seconds`` at a time). Reply ``StoreOpened`` or ``StoreFailed``."""

    url: str
    allow_volatile: bool = False
    lease_seconds: float = LEASE_SECONDS
    io: Io | None = None  # where its Redis calls run (None: inline, blocking the actor)
    # Called (on the actors' thread) with the seconds each write took on Redis, or an address that gets them
    # in RedisWriteTimes twice a second (a callable cannot cross processes); None: not measured.
    metrics: Callable[[float], None] | ActorAddress | None = None
    poll_control: bool = True  # answer admin commands sent through Redis (protocol.keys.CONTROL)


@dataclass(frozen=True, slots=True)
class RedisWriteTimes:
    """RedisPersistence -> the address in ``OpenStore.metrics``: the seconds each write since the last report
    took on Redis (at most :data:`MAX_REPORTED_WRITES`)."""

    seconds: tuple[float, ...]


MAX_REPORTED_WRITES = 4096


@dataclass(frozen=True, slots=True)
class StoreOpened:
    """RedisPersistence -> Supervisor."""


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """RedisPersistence -> Supervisor: the store cannot be used; ``reason`` says why."""

    error: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """Supervisor -> RedisPersistence: read the channel's settings hash over ``base`` (its settings without
    the hash: given with ``configure``, or the defaults). Reply ``SettingsRead``."""

    channel_id: str
    base: BatchSettings


@dataclass(frozen=True, slots=True)
class SettingsRead:
    """RedisPersistence -> Supervisor: the channel's settings with its hash applied; None when Redis could not
    be read (the channel keeps what it has)."""

    channel_id: str
    settings: BatchSettings | None


@dataclass(frozen=True, slots=True)
class LoadChannels:
    """Supervisor -> RedisPersistence: load every persisted channel. Reply ``ChannelsLoaded``."""


@dataclass(frozen=True, slots=True)
class ChannelsLoaded:
    """RedisPersistence -> Supervisor."""

    snapshots: tuple[ChannelSnapshot, ...]


@dataclass(frozen=True, slots=True)
class Persist:
    """ChannelActor -> RedisPersistence: apply ``ops``. A channel numbers (from 1, per actor) the Persists
    whose operations some of its messages wait for: ``seq`` is that number, answered with ``Durable`` once
    they are stored; 0 for the others, which need no answer."""

    ops: tuple[Op, ...]
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Durable:
    """RedisPersistence -> ChannelActor, once per write for each channel that asked: the operations of its
    Persists numbered up to ``upto`` are stored; it sends the messages it held for them."""

    upto: int


# -- the durability rule --------------------------------------------------------------------------------------

DURABILITY_SETTINGS = ("appendonly", "maxmemory-policy")
"""The server settings (``CONFIG GET``) that decide whether Redis keeps what it acknowledged."""


def durability_problems(config: Mapping[str, str]) -> list[str]:
    """Reasons a server with these ``CONFIG GET`` values could silently lose acknowledged messages."""
    problems = []
    if config.get("appendonly") != "yes":
        problems.append(
            f"appendonly is {config.get('appendonly')!r}: a restart of Redis would lose acknowledged "
            "messages (set appendonly yes)"
        )
    if config.get("maxmemory-policy") != "noeviction":
        problems.append(
            f"maxmemory-policy is {config.get('maxmemory-policy')!r}: Redis may evict acknowledged messages "
            "under memory pressure (set maxmemory-policy noeviction)"
        )
    return problems


def refuse_unsafe(problems: list[str], allow_volatile: bool, doing: str, logger: logging.Logger) -> None:
    """Refuse (``doing`` names what was refused: "persist to", "batch in") unless ``allow_volatile``, which
    logs a warning instead.

    Raises:
        UnsafeRedis: naming every problem, and the opt-out.
    """
    if not problems:
        return
    text = "; ".join(problems)
    if not allow_volatile:
        raise UnsafeRedis(f"refusing to {doing} this Redis: {text}. Pass --allow-volatile-redis to accept it")
    logger.warning("accepted a Redis that may lose data (allowed by option) to %s: %s", doing, text)
