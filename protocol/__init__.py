"""Protocol of the message queue: value types, actor messages, limits, errors and the msgpack codec."""

from protocol.errors import (
    ChannelBusy,
    DecodeError,
    InvalidInput,
    InvalidSettings,
    MessageQueueError,
    ProtocolViolation,
    QueueFull,
    Timeout,
)
from protocol.values import (
    BatchSettings,
    ChannelStatistics,
    DeadLetter,
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
    "DeadLetter",
    "DecodeError",
    "FlushReason",
    "InvalidInput",
    "InvalidSettings",
    "MessageBatch",
    "MessageQueueError",
    "Payload",
    "ProtocolViolation",
    "QueueFull",
    "QueueItem",
    "QueuedMessage",
    "Timeout",
]
