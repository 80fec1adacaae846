"""Per-channel message queue with batching.

Messages are processed in order per channel, and rapid-succession messages are collected into batches for
a single combined response. This is the original module's asyncio API (:class:`MessageQueue`,
:class:`QueuedMessage`, :class:`MessageBatch`, :class:`RedisQueue`, :class:`InMemoryRedisQueue`), running on
the project's actor system.

Distributed mode (``MessageQueue(redis=..., event_bus=...)``) keeps batching state in Redis and publishes
finished batches to the event bus: :class:`RedisStreamEventBus` (a Redis stream read back with
:func:`decode_entry`) or any object with ``async publish_inbound(batch)``.
"""

from message_queue.event_bus import EventBus, RedisStreamEventBus, current_inbound
from message_queue.facade import Callback, MessageQueue
from message_queue.local import current_item
from message_queue.queues import InMemoryRedisQueue, RedisQueue
from protocol.errors import (
    ChannelBusy,
    DecodeError,
    InvalidInput,
    InvalidSettings,
    MessageQueueError,
    QueueFull,
    RedisDataLost,
    StoreLocked,
    StoreUnavailable,
    UnsafeRedis,
)
from protocol.stream import InboundBatch, decode_entry
from protocol.values import DeadLetter, MessageBatch, QueuedMessage

__all__ = [
    "Callback",
    "ChannelBusy",
    "DeadLetter",
    "DecodeError",
    "EventBus",
    "InMemoryRedisQueue",
    "InboundBatch",
    "InvalidInput",
    "InvalidSettings",
    "MessageBatch",
    "MessageQueue",
    "MessageQueueError",
    "QueueFull",
    "QueuedMessage",
    "RedisDataLost",
    "RedisQueue",
    "RedisStreamEventBus",
    "StoreLocked",
    "StoreUnavailable",
    "UnsafeRedis",
    "current_inbound",
    "current_item",
    "decode_entry",
]
