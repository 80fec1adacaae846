"""The project's exception hierarchy.

Every error a caller can act on derives from :class:`MessageQueueError`. Exception classes keep the default
``__init__`` signature so they survive pickling across Thespian process boundaries.
"""

from __future__ import annotations


class MessageQueueError(Exception):
    """Base class of every error raised by this project."""


class InvalidInput(MessageQueueError, ValueError):
    """A message, id or payload broke a documented limit; the message says which rule and which value."""


class InvalidSettings(MessageQueueError, ValueError):
    """A batching or system setting is out of range; the message names the setting and the value."""


class ChannelBusy(MessageQueueError):
    """The channel's busy policy is ``reject`` and its processor holds an item: the message was refused."""


class QueueFull(MessageQueueError):
    """The channel holds ``max_queued`` waiting messages and its overflow policy is ``reject``: the message
    was refused."""


class DecodeError(MessageQueueError, ValueError):
    """Bytes could not be decoded into a protocol value (malformed, unknown tag, or over a limit)."""


class ProtocolViolation(MessageQueueError, RuntimeError):
    """An event arrived that the receiving state machine cannot accept in its current state."""


class Timeout(MessageQueueError, TimeoutError):
    """The actor system did not answer within the allotted time."""


class UnsafeRedis(MessageQueueError):
    """The Redis server would silently lose acknowledged data, and no opt-out was given."""


class RedisDataLost(MessageQueueError):
    """Redis lost data this system had written (its epoch marker vanished or changed)."""


class StoreUnavailable(MessageQueueError):
    """The Redis server could not be reached."""


class StoreLocked(MessageQueueError):
    """Another node holds the writer lease of the Redis database: this node may not persist to it (refused at
    start, or every write refused after the lease passed to another node). The message names the holder."""
