"""The operations a node queues for Redis and the script calls that carry them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterator, Sequence

from protocol.keys import (
    DIST_HELD,
    DIST_IDS,
    DIST_MESSAGES,
    DIST_STATE,
    channel_of_tag,
    channel_tag,
    config_key,
    dist_key_of_tag,
)
from protocol.values import MessageBatch, QueuedMessage


@dataclass(frozen=True, slots=True)
class Names:
    """A channel's tag and keys, encoded once."""

    tag: str
    channel: bytes
    tag_bytes: bytes
    messages_key: bytes
    state_key: bytes
    ids_key: bytes
    config_key: bytes  # the settings hash, whose ``paused`` field the scripts read
    held_key: bytes

    @classmethod
    def of(cls, channel: str) -> Names:
        return cls.of_tag(channel_tag(channel), channel)

    @classmethod
    def of_tag(cls, tag: str, channel: str | None = None) -> Names:
        """The names of the channel whose tag is ``tag`` (``channel``: its id, when known)."""
        if channel is None:
            channel = channel_of_tag(tag)

        def key(role: str) -> bytes:
            return dist_key_of_tag(role, tag).encode("ascii")

        return cls(tag, channel.encode("utf-8"), tag.encode("ascii"), key(DIST_MESSAGES), key(DIST_STATE),
                   key(DIST_IDS), config_key(channel).encode("utf-8"), key(DIST_HELD))


@dataclass(eq=False, slots=True)
class Append:
    channel: str
    names: Names
    frame: bytes
    message_id: bytes  # the platform's id (UTF-8), empty: none
    future: asyncio.Future[None]

    @property
    def tag(self) -> str:
        return self.names.tag


@dataclass(eq=False, slots=True)
class Publish:
    channel: str
    tag: str
    frame: bytes
    count: int
    future: asyncio.Future[str]


@dataclass(eq=False, slots=True)
class Flush:
    tag: str
    how: str  # "timer" or "sweep"

    @property
    def names(self) -> Names:
        return Names.of_tag(self.tag)


Op = Append | Publish | Flush


@dataclass(eq=False, slots=True)
class Call:
    """One script call of a pipeline and the operations it carries."""

    script: str  # scripts.APPEND, FLUSH or PUBLISH
    ops: Sequence[Op]
    how: str = ""  # of a FLUSH: "timer" or "sweep"
    first: int = 0  # number of the first operation (APPEND, PUBLISH), fixed for every replay of the call


def flush_entries(ops: Sequence[Op]) -> Iterator[tuple[bytes, bytes, bytes, bytes, bytes]]:
    for op in ops:
        assert isinstance(op, Flush)
        names = op.names
        yield names.messages_key, names.state_key, names.config_key, names.held_key, names.tag_bytes


def single(message: QueuedMessage) -> MessageBatch:
    """A batch holding one message, stamped with its queue time."""
    return MessageBatch([message], message.queued_at, message.queued_at)
