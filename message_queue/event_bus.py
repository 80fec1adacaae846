"""Event buses: where distributed mode publishes finished batches.

Any object with ``async publish_inbound(batch)`` is an event bus (the original module's interface); it is
called with a :class:`~protocol.values.MessageBatch`. The project ships :class:`RedisStreamEventBus`, which
appends each batch to a Redis stream as one entry in the format of :mod:`protocol.stream`.

When ``MessageQueue(redis=..., event_bus=RedisStreamEventBus(same server))`` runs, the nodes' scripts append
to that stream directly, in the same atomic step that closes the batch: every batch is published exactly
once. With any other bus, the scripts append to an outbox stream and a relay calls ``publish_inbound``
(:class:`message_queue.distributed.OutboxRelay`): at least once. While the relay's call runs,
:func:`current_inbound` returns the batch's entry (its stable ``batch_id``, channel, ``seq``, reason), so a
bus can deduplicate.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from message_queue import scripts
from protocol import codec
from protocol.errors import InvalidInput, InvalidSettings
from protocol.keys import (
    DIST_HELD,
    DIST_STATE,
    INBOUND_STREAM,
    channel_tag,
    config_key,
    dist_key_of_tag,
)
from protocol.stream import InboundBatch
from protocol.validation import validate_payload
from protocol.values import MessageBatch

if TYPE_CHECKING:
    from redis.asyncio import Redis


@runtime_checkable
class EventBus(Protocol):
    """Receives finished batches."""

    async def publish_inbound(self, batch: MessageBatch) -> object: ...


_CURRENT: contextvars.ContextVar[InboundBatch | None] = contextvars.ContextVar("message_queue_inbound", default=None)


def current_inbound() -> InboundBatch | None:
    """The stream entry of the batch being handed to ``publish_inbound`` by a relay, else None."""
    return _CURRENT.get()


def set_current_inbound(entry: InboundBatch | None) -> contextvars.Token[InboundBatch | None]:
    """Make ``entry`` what :func:`current_inbound` returns in this context (for relays); reset with the token."""
    return _CURRENT.set(entry)


def reset_current_inbound(token: contextvars.Token[InboundBatch | None]) -> None:
    _CURRENT.reset(token)


def check_event_bus(event_bus: object) -> EventBus:
    """Return ``event_bus`` if it has a callable ``publish_inbound``.

    Raises:
        InvalidSettings: naming what is missing.
    """
    method = getattr(event_bus, "publish_inbound", None)
    if not callable(method):
        raise InvalidSettings(
            f"event_bus must have an async publish_inbound(batch) method, got {type(event_bus).__name__}"
        )
    assert isinstance(event_bus, EventBus)
    return event_bus


class RedisStreamEventBus:
    """Publishes each batch as one entry of a Redis stream (format: :mod:`protocol.stream`).

    Args:
        redis: an async client (``redis.asyncio.Redis``) of the server holding the stream.
        stream: the stream's key (default ``message_queue:inbound``).
        maxlen: trim the stream to about this many entries on each append (``XADD MAXLEN ~``); 0 keeps every
            entry. Trimming is approximate (whole macro nodes) and drops the oldest entries, read or not:
            size it well above what consumers may lag behind.

    Raises:
        InvalidSettings: for an empty stream name or a negative ``maxlen``.
    """

    def __init__(self, redis: Redis, stream: str = INBOUND_STREAM, maxlen: int = 0) -> None:
        if not isinstance(stream, str) or not stream:
            raise InvalidSettings(f"stream must be a non-empty str, got {stream!r}")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0:
            raise InvalidSettings(f"maxlen must be an int >= 0, got {maxlen!r}")
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen

    async def publish_inbound(self, batch: MessageBatch) -> object:
        """Append ``batch`` to the stream and return its batch id.

        Called by a relay (:func:`current_inbound` is set), the entry is copied as it is, keeping its batch
        id. Called directly, the batch gets the channel's next batch id, with reason ``published`` (and a
        channel with no open batch keeps its distributed state for :data:`~message_queue.scripts.IDLE_TTL`); on a
        paused channel it is held ahead of the channel's held batches instead, and the id is "" (resume
        publishes it first).

        Raises:
            InvalidInput: for an empty batch, a batch mixing channels, or a message breaking a limit.
        """
        entry = current_inbound()
        if entry is not None:
            return await self._forward(entry)
        if not isinstance(batch, MessageBatch):
            raise InvalidInput(f"publish_inbound needs a MessageBatch, got {type(batch).__name__}")
        channel = validate_payload(batch)
        tag = channel_tag(channel)
        keys, args = scripts.publish_call(dist_key_of_tag(DIST_STATE, tag), config_key(channel),
                                          dist_key_of_tag(DIST_HELD, tag), self.stream, self.maxlen, channel, tag,
                                          codec.encode(batch), len(batch.messages), "published", "bus/bus",
                                          round(scripts.IDLE_TTL * 1000))
        result = await scripts.run(self.redis, scripts.PUBLISH, keys, args)
        assert isinstance(result, list), result
        batch_id = result[0]
        return batch_id.decode("ascii") if isinstance(batch_id, bytes) else str(batch_id)

    async def _forward(self, entry: InboundBatch) -> str:
        fields: dict[str, bytes | str | int] = {
            "id": entry.batch_id,
            "channel": entry.channel_id,
            "seq": entry.seq,
            "reason": entry.reason,
            "count": len(entry.batch.messages),
            "deadline": entry.deadline_ms,
            "published": entry.published_ms,
            "by": entry.by,
            "batch": codec.encode(entry.batch),
        }
        if self.maxlen:
            await self.redis.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        else:
            await self.redis.xadd(self.stream, fields)  # type: ignore[arg-type]
        return entry.batch_id

    def __repr__(self) -> str:
        return f"RedisStreamEventBus(stream={self.stream!r}, maxlen={self.maxlen})"
