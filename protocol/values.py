"""Value types: the seed-compatible message and batch, and the frozen values the actors exchange."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from protocol.errors import InvalidSettings
from protocol.limits import MAX_BATCH_SIZE


def utc_now() -> datetime:
    """The current wall-clock time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class QueuedMessage:
    """One inbound chat message waiting in a channel's batching queue.

    ``queued_at`` must be timezone-aware (the default is the current UTC time): every way in refuses a naive
    datetime with ``InvalidInput``, since it names no instant. ``extra`` holds plain values only (see
    :mod:`protocol.limits`; floats finite). ``raw`` holds the platform's original object for in-process
    consumers; it is never checked, encoded, stored or sent across a process boundary, and it takes no part
    in equality. ``message_id`` is the platform's id of the message (at most 256 bytes of UTF-8; empty: none):
    a channel drops a message whose id it accepted within ``dedupe_ttl`` seconds, and ``edit``/``retract``
    find a waiting message by it.
    """

    platform: str
    channel_id: str
    user_id: str
    user_name: str
    text: str
    queued_at: datetime = field(default_factory=utc_now)
    extra: dict[str, Any] = field(default_factory=dict)
    raw: Any = field(default=None, compare=False)
    message_id: str = field(default="", kw_only=True)


@dataclass(slots=True)
class MessageBatch:
    """Messages of one channel collected in a rolling window, oldest first."""

    messages: list[QueuedMessage] = field(default_factory=list)
    first_at: datetime = field(default_factory=utc_now)
    last_at: datetime = field(default_factory=utc_now)

    def add(self, msg: QueuedMessage, at: datetime | None = None) -> None:
        """Append ``msg`` and slide the window: ``last_at`` becomes ``at`` (default: now).

        The first message also sets ``first_at``.
        """
        stamp = utc_now() if at is None else at
        if not self.messages:
            self.first_at = stamp
        self.messages.append(msg)
        self.last_at = stamp

    @property
    def size(self) -> int:
        """Number of messages in the batch."""
        return len(self.messages)

    @property
    def channel_id(self) -> str:
        """The channel every message of the batch belongs to.

        Raises:
            ValueError: if the batch is empty.
        """
        if not self.messages:
            raise ValueError("an empty MessageBatch has no channel_id")
        return self.messages[0].channel_id

    def unique_authors(self) -> list[str]:
        """Distinct author ids in the order each first appears."""
        return list(dict.fromkeys(m.user_id for m in self.messages))


Payload = QueuedMessage | MessageBatch


def payload_messages(payload: Payload) -> tuple[QueuedMessage, ...]:
    """The messages a payload carries, oldest first."""
    if isinstance(payload, MessageBatch):
        return tuple(payload.messages)
    return (payload,)


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A finished unit of work for a channel's processor: one message or one batch.

    ``item_id`` is stable for the item's whole life (redeliveries keep it); ``attempt`` counts deliveries
    begun after a restart, starting at 1. ``interrupted`` is True when the item carries, at its head, the
    messages of an item whose processing was interrupted (busy policy ``interrupt``).
    """

    item_id: str
    channel_id: str
    payload: Payload
    attempt: int = 1
    interrupted: bool = False

    @property
    def size(self) -> int:
        """Number of messages the item carries."""
        return len(payload_messages(self.payload))


class FlushReason(str, enum.Enum):
    """Why an open batch was closed into a queue item."""

    WINDOW = "window"  # the quiet window elapsed with no new message
    FULL = "full"  # the batch reached max_batch_size
    MAX_WAIT = "max_wait"  # the batch's age reached max_wait
    UNBATCHED = "unbatched"  # batching is disabled: the message is its own item
    FRONT = "front"  # inserted at the head of the queue by enqueue-front
    SETTINGS = "settings"  # batching was turned off while the batch was open
    RESTORED = "restored"  # loaded from persistent storage after a restart
    RETRY = "retry"  # a failed item delivered again after its backoff (max_attempts)
    REPLAYED = "replayed"  # a dead letter put back at the tail of the FIFO
    FLUSHED = "flushed"  # closed on request (FlushBatch), before its window or size would have closed it
    COLLECTED = "collected"  # busy policy collect: closed when the processor answered the item in flight
    AUTHOR = "author"  # split_on_author: a message from another author arrived
    PUBLISHED = "published"  # distributed mode: an event bus published a batch of its own (publish_inbound)


BUSY_POLICIES = ("queue", "collect", "interrupt", "reject")
OVERFLOW_POLICIES = ("reject", "drop_oldest", "drop_newest")
"""What a channel holding ``max_queued`` messages does with one more: see ``BatchSettings``."""
MAX_RETRY_DELAY = 60.0
"""The longest backoff before a retry, in seconds, however many attempts failed."""
"""What a channel does with messages that arrive while its processor holds an item: see ``BatchSettings``."""


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How a channel batches: quiet window and hard age cap in seconds, size cap, or no batching at all.

    ``busy_policy``, for messages that arrive while the processor holds an item: ``"queue"`` (batch them as
    usual), ``"collect"`` (the open batch does not close by time while an item is in flight, and closes when
    the processor answers), ``"interrupt"`` (the first such message cancels the item in flight, whose
    messages go, in order, in front of the open batch), ``"reject"`` (refuse them with ``ChannelBusy``).
    ``split_on_author``: a message from another ``user_id`` closes the open batch first. ``dedupe_ttl``:
    seconds a channel remembers the ``message_id`` of an accepted message and drops a message with the same
    id (0: off).

    When processing fails or input floods: ``max_attempts`` deliveries per item (1: a failure is logged and
    the channel moves on); after a failed attempt the item is delivered again, same ``item_id``, ``attempt``
    + 1, after a delay drawn uniformly from ``0 .. min(60, retry_backoff * 2 ** (attempt - 1))`` seconds,
    the channel's later items waiting behind it; after its last attempt it becomes a dead letter.
    ``processing_timeout``: seconds a processor may hold an item before it is cancelled and the attempt
    counts as failed (None: wait forever). ``max_queued``: messages the channel holds waiting (FIFO plus
    open batch); one more is refused with ``QueueFull`` (``overflow="reject"``), or the oldest waiting one
    (``"drop_oldest"``) or the new one (``"drop_newest"``) is dropped and counted. ``max_age``: seconds
    after its ``queued_at`` a message is dropped (counted) instead of delivered (None: never).
    """

    window: float = 5.0
    max_batch_size: int = 10
    max_wait: float | None = None
    batching: bool = True
    busy_policy: str = "queue"
    split_on_author: bool = False
    dedupe_ttl: float = 600.0
    max_attempts: int = 1
    retry_backoff: float = 1.0
    processing_timeout: float | None = None
    max_queued: int = 10_000
    overflow: str = "reject"
    max_age: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, (int, float)):
            raise InvalidSettings(f"window must be a number of seconds, got {self.window!r}")
        if not math.isfinite(self.window) or self.window < 0:
            raise InvalidSettings(f"window must be >= 0 and finite, got {self.window!r}")
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int):
            raise InvalidSettings(f"max_batch_size must be an int, got {self.max_batch_size!r}")
        if not 1 <= self.max_batch_size <= MAX_BATCH_SIZE:
            raise InvalidSettings(
                f"max_batch_size must be in 1..{MAX_BATCH_SIZE}, got {self.max_batch_size!r}"
            )
        if self.max_wait is not None:
            if isinstance(self.max_wait, bool) or not isinstance(self.max_wait, (int, float)):
                raise InvalidSettings(f"max_wait must be a number of seconds or None, got {self.max_wait!r}")
            if not math.isfinite(self.max_wait) or self.max_wait <= 0:
                raise InvalidSettings(f"max_wait must be > 0 and finite, got {self.max_wait!r}")
        if not isinstance(self.batching, bool):
            raise InvalidSettings(f"batching must be a bool, got {self.batching!r}")
        if self.busy_policy not in BUSY_POLICIES or type(self.busy_policy) is not str:
            raise InvalidSettings(
                f"busy_policy must be one of {', '.join(BUSY_POLICIES)}, got {self.busy_policy!r}"
            )
        if not isinstance(self.split_on_author, bool):
            raise InvalidSettings(f"split_on_author must be a bool, got {self.split_on_author!r}")
        if isinstance(self.dedupe_ttl, bool) or not isinstance(self.dedupe_ttl, (int, float)):
            raise InvalidSettings(f"dedupe_ttl must be a number of seconds, got {self.dedupe_ttl!r}")
        if not math.isfinite(self.dedupe_ttl) or self.dedupe_ttl < 0:
            raise InvalidSettings(f"dedupe_ttl must be >= 0 and finite, got {self.dedupe_ttl!r}")
        _check_count("max_attempts", self.max_attempts)
        _check_seconds("retry_backoff", self.retry_backoff, optional=False, zero=True)
        _check_seconds("processing_timeout", self.processing_timeout, optional=True, zero=False)
        _check_count("max_queued", self.max_queued)
        if self.overflow not in OVERFLOW_POLICIES or type(self.overflow) is not str:
            raise InvalidSettings(
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {self.overflow!r}"
            )
        _check_seconds("max_age", self.max_age, optional=True, zero=False)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSettings(f"{name} must be an int, got {value!r}")
    if not 1 <= value <= 2**31:
        raise InvalidSettings(f"{name} must be in 1..{2**31}, got {value!r}")


def _check_seconds(name: str, value: object, *, optional: bool, zero: bool) -> None:
    if value is None and optional:
        return
    kind = "a number of seconds or None" if optional else "a number of seconds"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSettings(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise InvalidSettings(f"{name} must be {'>= 0' if zero else '> 0'} and finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel, derived from its state when taken."""

    channel_id: str
    queued: int  # finished items waiting for the processor
    open_batch_size: int  # messages in the batch still collecting
    in_flight: bool  # an item is with the processor
    processed: int  # items the processor reported done or failed
    cancelled: int  # in-flight items abandoned by cancel or stop
    failed: int  # items the processor reported failed (included in processed)
    has_processor: bool
    duplicates: int = 0  # messages dropped because their message_id was accepted within dedupe_ttl
    edits: int = 0  # waiting messages replaced by edit
    retractions: int = 0  # waiting messages removed by retract
    interruptions: int = 0  # in-flight items cancelled by a message (busy policy interrupt)
    rejections: int = 0  # messages refused with ChannelBusy (busy policy reject)
    attempts: int = 0  # deliveries begun (first attempts and retries)
    retries: int = 0  # deliveries of an item that had failed before
    timeouts: int = 0  # deliveries cancelled by processing_timeout (each a failed attempt)
    dead_lettered: int = 0  # items that failed their last attempt and became dead letters
    dead_letters: int = 0  # dead letters the channel keeps now
    dead_letters_dropped: int = 0  # kept dead letters dropped, oldest first, beyond MAX_DEAD_LETTERS
    dropped_stale: int = 0  # messages dropped at delivery because they were older than max_age
    dropped_overflow: int = 0  # messages dropped by overflow drop_oldest / drop_newest at max_queued
    rejected_full: int = 0  # messages refused with QueueFull (overflow reject at max_queued)


@dataclass(frozen=True, slots=True)
class OpenEntry:
    """A message of a channel's open batch as persisted: the message and when it joined (Unix seconds)."""

    message: QueuedMessage
    arrived_at: float


@dataclass(frozen=True, slots=True)
class SeenId:
    """A message id a channel accepted, as persisted for duplicate detection: the id and when (Unix seconds)."""

    message_id: str
    at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something set aside instead of lost.

    A stored entry that could not be decoded, or a value that could not be encoded for storage: where it
    was or was bound (the key's role), why, the bytes (for a value that could not be encoded, which has none:
    its ``repr`` in UTF-8), and when it was set aside (Unix seconds).

    An item that failed its last attempt (role ``"item"``): ``reason`` is the last error, ``item`` the item
    (its ``attempt`` the last one), ``attempts`` how many deliveries failed, ``first_failed_at`` and
    ``last_failed_at`` (Unix seconds) when the first and the last failed; ``data`` is empty and ``at`` is
    ``last_failed_at``.
    """

    role: str
    reason: str
    data: bytes
    at: float
    item: QueueItem | None = None
    attempts: int = 0
    first_failed_at: float = 0.0
    last_failed_at: float = 0.0
