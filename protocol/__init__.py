"""Protocol of the message queue: value types, actor messages, limits, errors and the msgpack codec."""

from protocol.errors import (
    ChannelBusy,
    DecodeError,
    InvalidInput,
    InvalidSettings,
    MessageQueueError,
    ProtocolViolation,
    Timeout,
)
from protocol.values import (
    BatchSettings,
    ChannelStatistics,
    FlushReason,
    MessageBatch,
    Payload,
    QueuedMessage,
    QueueItem,
)

__all__ = [
    "BatchSettings",
    "ChannelBusy",
    "ChannelStatistics",
    "DecodeError",
    "FlushReason",
    "InvalidInput",
    "InvalidSettings",
    "MessageBatch",
    "MessageQueueError",
    "Payload",
    "ProtocolViolation",
    "QueueItem",
    "QueuedMessage",
    "Timeout",
]
