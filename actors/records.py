"""What the Supervisor keeps per channel beyond its actor's life, in one dict: the processor named for the channel
and the counters of its passivated actor.

A channel that got ``start_processing`` and went idle keeps both, and a dict's table costs about 52 bytes a
channel (5 MB for 100,000): one dict instead of two (and a set for stopped channels) halves that. A record is a
pair, and the common pairs (a processor shared by many channels, and counters that are a small int) are made
once and shared, so that a record costs no object of its own.
"""

from __future__ import annotations

import enum
import sys
from typing import Generic, TypeVar

Counters = int | tuple[int, ...]  # see actors.supervisor._pack_counters

P = TypeVar("P")


class Mark(enum.Enum):
    """A channel's processor when it is no address: ``UNSET`` (none was named: the default processor applies) or
    ``STOPPED`` (none, whatever the default)."""

    UNSET = "unset"
    STOPPED = "stopped"


UNSET = Mark.UNSET
STOPPED = Mark.STOPPED

_SHARED_COUNTS = 4096  # counters that are an int below this share their record with other channels'
_MAX_SHARED = 16_384  # distinct shared records at most (beyond: each record is a pair of its own)


class ChannelRecords(Generic[P]):
    """Per channel: its processor (:data:`UNSET`, :data:`STOPPED` or one of type ``P``) and its counters (None:
    none kept). A channel with neither has no record."""

    __slots__ = ("_records", "_shared")

    def __init__(self) -> None:
        self._records: dict[str, tuple[P | Mark, Counters | None]] = {}
        # (id of the processor, counters) -> that record; the record holds the processor, so the id stays its own
        self._shared: dict[tuple[int, int | None], tuple[P | Mark, Counters | None]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, channel_id: object) -> bool:
        return channel_id in self._records

    def processor(self, channel_id: str) -> P | Mark:
        record = self._records.get(channel_id)
        return UNSET if record is None else record[0]

    def counters(self, channel_id: str) -> Counters | None:
        record = self._records.get(channel_id)
        return None if record is None else record[1]

    def set_processor(self, channel_id: str, processor: P | Mark) -> None:
        self._set(channel_id, processor, self.counters(channel_id))

    def set_counters(self, channel_id: str, counters: Counters | None) -> None:
        self._set(channel_id, self.processor(channel_id), counters)

    def take_counters(self, channel_id: str) -> Counters | None:
        """The channel's counters, which it keeps no longer (its processor stays)."""
        record = self._records.get(channel_id)
        if record is None:
            return None
        self._set(channel_id, record[0], None)
        return record[1]

    def counted(self) -> int:
        """How many channels keep counters."""
        return sum(1 for _, counters in self._records.values() if counters is not None)

    def nbytes(self) -> int:
        """Bytes these records take: the dict, its keys, and what is not shared among channels (a record of its
        own, its counters beyond small ints). The processors are not counted: they live elsewhere too."""
        shared = {id(record) for record in self._shared.values()}
        total = sys.getsizeof(self._records)
        for channel_id, record in self._records.items():
            total += sys.getsizeof(channel_id)
            if id(record) in shared:
                continue
            total += sys.getsizeof(record)
            counters = record[1]  # CPython's small ints (-5 to 256) are shared
            if isinstance(counters, tuple):
                total += sys.getsizeof(counters) + sum(sys.getsizeof(c) for c in counters if not -5 <= c <= 256)
            elif counters is not None and not -5 <= counters <= 256:
                total += sys.getsizeof(counters)
        return total

    def _set(self, channel_id: str, processor: P | Mark, counters: Counters | None) -> None:
        if processor is UNSET and counters is None:
            self._records.pop(channel_id, None)
            return
        self._records[channel_id] = self._record(processor, counters)

    def _record(
        self, processor: P | Mark, counters: Counters | None
    ) -> tuple[P | Mark, Counters | None]:
        if isinstance(counters, tuple) or (counters is not None and not 0 <= counters < _SHARED_COUNTS):
            return (processor, counters)
        key = (id(processor), counters)
        record = self._shared.get(key)
        if record is None:
            record = (processor, counters)
            if len(self._shared) < _MAX_SHARED:
                self._shared[key] = record
        return record
