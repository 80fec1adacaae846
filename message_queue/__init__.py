"""Per-channel message queue with batching.

Messages are processed in order per channel, and rapid-succession messages are collected into batches for
a single combined response. This is the original module's asyncio API (:class:`MessageQueue`,
:class:`QueuedMessage`, :class:`MessageBatch`, :class:`RedisQueue`, :class:`InMemoryRedisQueue`), running on
the project's actor system.
"""

from protocol.errors import RedisDataLost, StoreUnavailable, UnsafeRedis
from message_queue.facade import Callback, MessageQueue
from message_queue.queues import InMemoryRedisQueue, RedisQueue
from protocol.errors import DecodeError, InvalidInput, InvalidSettings, MessageQueueError
from protocol.values import MessageBatch, QueuedMessage

__all__ = [
    "Callback",
    "DecodeError",
    "InMemoryRedisQueue",
    "InvalidInput",
    "InvalidSettings",
    "MessageBatch",
    "MessageQueue",
    "MessageQueueError",
    "QueuedMessage",
    "RedisDataLost",
    "RedisQueue",
    "StoreUnavailable",
    "UnsafeRedis",
]
