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

Memory (``bench/bench_dedupe_memory.py``): a channel that remembers one id (the common case: one message, then
idle) is one dict entry holding a 2-tuple (id, time); several ids are a tuple of ids and an ``array`` of
times, 16 bytes an id besides the id strings.
"""

from __future__ import annotations

import math
from array import array
from typing import Callable, Iterable, Sequence

from actors.batching import MAX_REMEMBERED_IDS

# One channel's ids: ``(id, accepted at)`` for one id, else ``(ids, times)`` with ``times`` an array('d').
_Entry = tuple[str, float] | tuple[tuple[str, ...], "array[float]"]


class RememberedIds:
    """Per channel, the unexpired message ids its passivated actor handed over."""

    __slots__ = ("_entries", "_ids")

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
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
        return kept[-1][1] + ttl

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
        next_empty = math.inf
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

    def _store(self, channel_id: str, ids: Iterable[tuple[str, float]]) -> None:
        pairs = list(ids)
        if len(pairs) == 1:
            self._entries[channel_id] = (pairs[0][0], float(pairs[0][1]))
        else:
            self._entries[channel_id] = (tuple(i for i, _ in pairs), array("d", (at for _, at in pairs)))
        self._ids += len(pairs)

    def _drop(self, channel_id: str) -> None:
        entry = self._entries.pop(channel_id, None)
        if entry is not None:
            self._ids -= 1 if isinstance(entry[0], str) else len(entry[0])


def _unpack(entry: _Entry) -> tuple[tuple[str, float], ...]:
    first, second = entry
    if isinstance(first, str):
        assert isinstance(second, float)
        return ((first, second),)
    assert isinstance(second, array)
    return tuple(zip(first, second))


def _span(entry: _Entry) -> tuple[float, float]:
    """When the oldest and the newest id of ``entry`` were accepted."""
    first, second = entry
    if isinstance(second, float):
        return second, second
    return min(second), max(second)
