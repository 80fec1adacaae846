"""The message ids of passivated channels, kept by the Supervisor for each channel's next actor.

A channel remembers the ids of the messages it accepted for ``dedupe_ttl`` seconds (duplicate detection, see
:mod:`actors.batching`). When its actor passivates while it still remembers some, it hands them over in its
``Passivate``; the Supervisor keeps them here and gives them to the channel's next actor in its
``ChannelInit``, before that actor handles any message. So a duplicate that arrives after passivation is
still dropped, and an idle channel need not keep its actor alive until its ids expire.

Rules:
    * Ids travel and are kept as (message id, when accepted), oldest first, the time on the system's
      monotonic clock. An id accepted at ``at`` has expired at ``now`` once ``now - at >= ttl`` (the channel's
      ``dedupe_ttl``, read when it is checked: a channel configured while passivated forgets by its new one).
    * At most :data:`~actors.batching.MAX_REMEMBERED_IDS` per channel, the newest kept, as in the channel.
    * :meth:`RememberedIds.prune` drops every expired id, and a channel's entry with its last one; it is the
      only walk over every channel (the Supervisor runs it from one timer wake), everything else is per
      channel.

Memory (``python3 bench/bench_dedupe_memory.py``): one dict entry per channel whose value is one ``bytes``
object holding the channel's ids and times (:func:`_pack`): 8 bytes a time, 2 a length and the id's UTF-8,
plus 35 bytes an entry. Measured: 100 bytes for a channel with one 17-character id, dict entry included (184
when it was a tuple of a str and a float), and 29 bytes an id for channels with many.
"""

from __future__ import annotations

import struct
from array import array
from typing import Callable, Sequence

from actors.batching import MAX_REMEMBERED_IDS

_COUNT = struct.Struct("=H")  # the number of ids of an entry, and the UTF-8 length of each id (at most 256)
_TIME = struct.Struct("=d")  # as array("d") stores it


class RememberedIds:
    """Per channel, the unexpired message ids its passivated actor handed over."""

    __slots__ = ("_entries", "_ids")

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}  # channel id -> its ids and times, see _pack
        self._ids = 0  # ids held, over every channel

    def __len__(self) -> int:
        """The number of channels whose ids are held."""
        return len(self._entries)

    def __contains__(self, channel_id: object) -> bool:
        return channel_id in self._entries

    @property
    def ids(self) -> int:
        """The number of ids held, over every channel."""
        return self._ids

    def keep(self, channel_id: str, ids: Sequence[tuple[str, float]], now: float, ttl: float) -> float | None:
        """Hold ``ids`` (message id, when accepted; oldest first) for ``channel_id``, replacing what was held,
        without the expired ones and beyond the newest :data:`MAX_REMEMBERED_IDS`. Returns when the newest
        kept id expires (None: none was kept)."""
        self._drop(channel_id)
        if ttl <= 0:
            return None
        kept = [(i, at) for i, at in ids[-MAX_REMEMBERED_IDS:] if now - at < ttl]
        if not kept:
            return None
        self._store(channel_id, kept)
        return max(at for _, at in kept) + ttl

    def take(self, channel_id: str) -> tuple[tuple[str, float], ...]:
        """Remove and return the ids held for ``channel_id`` (oldest first; some may have expired since)."""
        entry = self._entries.pop(channel_id, None)
        if entry is None:
            return ()
        ids = _unpack(entry)
        self._ids -= len(ids)
        return ids

    def peek(self, channel_id: str) -> tuple[tuple[str, float], ...]:
        """The ids held for ``channel_id``, oldest first, left in place."""
        entry = self._entries.get(channel_id)
        return () if entry is None else _unpack(entry)

    def prune(self, now: float, ttl_of: Callable[[str], float]) -> float | None:
        """Drop every expired id (``ttl_of(channel_id)`` is the channel's ``dedupe_ttl`` now), and the entry of
        a channel left with none. Returns when the next entry will be left with none (None: nothing is held)."""
        next_empty = float("inf")
        emptied: list[str] = []
        trimmed: list[tuple[str, list[tuple[str, float]]]] = []
        for channel_id, entry in self._entries.items():
            ttl = ttl_of(channel_id)
            oldest, newest = _span(entry)
            if ttl <= 0 or now - newest >= ttl:
                emptied.append(channel_id)
                continue
            if now - oldest >= ttl:
                trimmed.append((channel_id, [(i, at) for i, at in _unpack(entry) if now - at < ttl]))
            next_empty = min(next_empty, newest + ttl)
        for channel_id in emptied:
            self._drop(channel_id)
        for channel_id, kept in trimmed:
            self._drop(channel_id)
            self._store(channel_id, kept)
        return None if not self._entries else next_empty

    def _store(self, channel_id: str, ids: Sequence[tuple[str, float]]) -> None:
        self._entries[channel_id] = _pack(ids)
        self._ids += len(ids)

    def _drop(self, channel_id: str) -> None:
        entry = self._entries.pop(channel_id, None)
        if entry is not None:
            self._ids -= _COUNT.unpack_from(entry)[0]


def _pack(ids: Sequence[tuple[str, float]]) -> bytes:
    """One channel's ids as bytes: their number, their times (array("d")), then each id's UTF-8 length and
    bytes, in order."""
    parts = [_COUNT.pack(len(ids)), array("d", [at for _, at in ids]).tobytes()]
    for message_id, _ in ids:
        raw = str.encode(message_id, "utf-8")
        parts.append(_COUNT.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _unpack(entry: bytes) -> tuple[tuple[str, float], ...]:
    (count,) = _COUNT.unpack_from(entry)
    end = _COUNT.size + _TIME.size * count
    times = array("d")
    times.frombytes(entry[_COUNT.size : end])
    ids = []
    for at in times:
        (size,) = _COUNT.unpack_from(entry, end)
        end += _COUNT.size
        ids.append((entry[end : end + size].decode("utf-8"), at))
        end += size
    return tuple(ids)


def _span(entry: bytes) -> tuple[float, float]:
    """When the oldest and the newest id of ``entry`` were accepted."""
    (count,) = _COUNT.unpack_from(entry)
    if count == 1:
        (at,) = _TIME.unpack_from(entry, _COUNT.size)
        return at, at
    times = array("d")
    times.frombytes(entry[_COUNT.size : _COUNT.size + _TIME.size * count])
    return min(times), max(times)
