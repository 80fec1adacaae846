"""The entry format of the streams that carry finished batches in distributed mode.

Every finished batch is one stream entry (``XADD``; the inbound stream of ``RedisStreamEventBus``, default
``message_queue:inbound``, or the outbox a relay drains into a custom event bus) with these fields, all
values byte strings:

    ``id``         the batch id, ``<channel tag>:<seq>``: stable (a batch published again by a relay keeps
                   it) and unique per Redis; ``<channel tag>`` is :func:`protocol.keys.channel_tag`
    ``channel``    the channel id (UTF-8)
    ``seq``        the channel's batch number (decimal): rises in publication order and is never reused;
                   consecutive while the channel's state lives in Redis, and a new channel, or one whose
                   state expired after ``idle_ttl``, continues above a shared floor (it may not start at 1)
    ``reason``     why the batch closed: ``window``, ``full``, ``max_wait``, ``unbatched`` (batching off),
                   ``settings`` (batching turned off while it was open), ``front`` (``enqueue_front``),
                   ``published`` (an event bus's own ``publish_inbound``), ``flushed`` (``admin flush``)
    ``count``      number of messages (decimal)
    ``deadline``   the deadline the batch was flushed for, Redis server time in ms (``0``: none, e.g. full)
    ``published``  when it was published, Redis server time in ms (for a batch held while its channel was
                   paused: when ``resume`` published it)
    ``by``         which node published it and how: ``<node id>/<append|timer|sweep|front|bus>``, or
                   ``admin/flush`` and ``admin/resume`` for the admin commands
    ``batch``      the messages: one :mod:`protocol.codec` frame of a ``MessageBatch`` (``first_at`` and
                   ``last_at`` are the Redis server times of its first and last message, UTC, to the ms; a
                   batch of ``front`` or ``published`` keeps the times it was given)

Evolution follows the codec's rules: fields are only ever added, never renamed or given a new meaning; a
reader rejects an entry with a field it does not know (:class:`DecodeError`), so deploy readers first.

Read entries with a client made with ``decode_responses=False`` (the ``batch`` field is binary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Mapping

from protocol import codec
from protocol.errors import DecodeError
from protocol.keys import channel_tag
from protocol.limits import MAX_BATCH_SIZE
from protocol.values import FlushReason, MessageBatch

FIELDS: Final = ("id", "channel", "seq", "reason", "count", "deadline", "published", "by", "batch")

REASONS: Final = frozenset(reason.value for reason in FlushReason)  # one vocabulary: the core's

_MAX_FIELD_TEXT = 1024  # bytes of any field but ``batch``

@dataclass(frozen=True, slots=True)
class InboundBatch:
    """One finished batch as published to a stream: the messages and the facts about how they were closed."""

    batch_id: str
    channel_id: str
    seq: int
    reason: str
    batch: MessageBatch
    deadline_ms: int  # 0 when the batch closed for another reason than a deadline
    published_ms: int
    by: str
    entry_id: str = ""  # the stream entry's id, when read from a stream

    @property
    def lateness_ms(self) -> int | None:
        """How long after its deadline the batch was published (ms), or None without a deadline."""
        return self.published_ms - self.deadline_ms if self.deadline_ms else None


def _text(fields: Mapping[str, bytes], name: str) -> str:
    value = fields[name]
    if len(value) > _MAX_FIELD_TEXT:
        raise DecodeError(f"stream entry field {name!r} must be at most {_MAX_FIELD_TEXT} bytes, got {len(value)}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"stream entry field {name!r} must be UTF-8 text") from exc


def _number(fields: Mapping[str, bytes], name: str, minimum: int) -> int:
    text = _text(fields, name)
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise DecodeError(f"stream entry field {name!r} must be a decimal integer, got {text[:40]!r}")
    value = int(text)
    if value < minimum:
        raise DecodeError(f"stream entry field {name!r} must be >= {minimum}, got {value}")
    return value


def decode_entry(fields: Mapping[Any, object], entry_id: bytes | str = b"") -> InboundBatch:
    """Decode the fields of one stream entry (as ``XREAD``/``XRANGE`` return them) into an InboundBatch.

    Rules: exactly the fields of :data:`FIELDS`, all bytes; ``id`` is ``<tag of channel>:<seq>``; ``count``
    equals the number of messages; every message belongs to ``channel``; ``reason`` is one of
    :data:`REASONS`.

    Raises:
        DecodeError: naming the first broken rule (from the codec's error for a bad ``batch`` frame).
    """
    named: dict[str, bytes] = {}
    for key, value in fields.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if not isinstance(value, bytes):
            raise DecodeError(
                f"stream entry field {name[:40]!r} must be bytes, got {type(value).__name__} "
                "(read with decode_responses=False)"
            )
        named[name] = value
    missing = [name for name in FIELDS if name not in named]
    if missing:
        raise DecodeError(f"stream entry lacks field(s) {', '.join(missing)}")
    unknown = sorted(set(named) - set(FIELDS))
    if unknown:
        raise DecodeError(f"stream entry has unknown field(s) {', '.join(n[:40] for n in unknown)}")
    channel = _text(named, "channel")
    try:
        tag = channel_tag(channel)
    except ValueError as exc:
        raise DecodeError(f"stream entry field 'channel': {exc}") from exc
    seq = _number(named, "seq", 1)
    batch_id = _text(named, "id")
    if batch_id != f"{tag}:{seq}":
        raise DecodeError(f"stream entry id {batch_id[:80]!r} is not <channel tag>:<seq> ({tag}:{seq})")
    reason = _text(named, "reason")
    if reason not in REASONS:
        raise DecodeError(f"stream entry reason must be one of {', '.join(sorted(REASONS))}, got {reason[:40]!r}")
    count = _number(named, "count", 1)
    batch = codec.decode(named["batch"], MessageBatch)
    if count != len(batch.messages):
        raise DecodeError(f"stream entry count is {count} but its batch holds {len(batch.messages)} messages")
    if reason not in ("front", "published") and count > MAX_BATCH_SIZE:
        raise DecodeError(f"stream entry batch must hold at most {MAX_BATCH_SIZE} messages, got {count}")
    for index, message in enumerate(batch.messages):
        if message.channel_id != channel:
            raise DecodeError(
                f"stream entry message {index} belongs to channel {message.channel_id[:80]!r}, not {channel[:80]!r}"
            )
    entry = entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else entry_id
    return InboundBatch(
        batch_id=batch_id,
        channel_id=channel,
        seq=seq,
        reason=reason,
        batch=batch,
        deadline_ms=_number(named, "deadline", 0),
        published_ms=_number(named, "published", 0),
        by=_text(named, "by"),
        entry_id=entry,
    )
