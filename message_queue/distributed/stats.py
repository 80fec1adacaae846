"""Snapshots of distributed channels, read from Redis."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, AbstractSet, Final

from message_queue import scripts
from message_queue.distributed.replies import reply_int, reply_str
from protocol.keys import (
    DIST_DEADLINES,
    DIST_HELD,
    DIST_MESSAGES,
    DIST_STATE,
    channel_of_tag,
    channel_tag,
    dist_key_affixes,
    dist_key_of_tag,
)
from protocol.values import ChannelStatistics

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

_STATS_LIMIT: Final = 10_000  # channels one statistics call returns for every channel with an open batch
_STATS_FIELDS: Final = 8  # values per channel in the stats script's answer


async def channel_statistics(redis: Redis, channel: str = "",
                             processors: AbstractSet[str] = frozenset()) -> tuple[ChannelStatistics, ...]:
    """Snapshots of distributed channels, read in one script call (so all of them at one moment).

    ``channel`` given: its snapshot, all zeros for a channel Redis holds nothing of. Empty: one snapshot per
    channel with an open batch (the deadline index), on any node, soonest deadline first, at most 10,000.

    Fields: ``open_batch_size``, the messages of the channel's open batch; ``processed``, the batches published
    on the channel since its state was made in Redis (``enqueue_front`` and an event bus's own batches
    included; it counts from 0 again for a channel whose state expired, see :class:`NodeOptions`
    ``idle_ttl``); ``duplicates``, the messages dropped since then because their ``message_id`` was accepted
    on the channel within ``dedupe_ttl``; ``rejected_full`` and ``dropped_overflow``, the messages refused or
    dropped since then because the channel held ``max_queued`` (``overflow``); ``has_processor``, whether the
    channel is in ``processors``; ``queued``, the batches held while the channel is paused (see
    ``admin.lua``); ``cancelled`` and ``failed`` are 0 and ``in_flight`` False: published batches belong to
    the event bus's consumers.

    Raises:
        InvalidInput: for an invalid channel id.
    """
    if channel:
        tag = channel_tag(channel)
        reply = await scripts.run(redis, scripts.STATS, [dist_key_of_tag(DIST_MESSAGES, tag),
                                                         dist_key_of_tag(DIST_STATE, tag),
                                                         dist_key_of_tag(DIST_HELD, tag)], [tag])
    else:
        affixes = (*dist_key_affixes(DIST_MESSAGES), *dist_key_affixes(DIST_STATE), *dist_key_affixes(DIST_HELD))
        reply = await scripts.run(redis, scripts.STATS, [DIST_DEADLINES], [*affixes, _STATS_LIMIT])
    if not isinstance(reply, list) or len(reply) % _STATS_FIELDS:
        raise ValueError(f"the stats script answered {reply!r:.200}")
    snapshots = []
    for i in range(0, len(reply), _STATS_FIELDS):
        if channel:
            channel_id = channel
        else:
            try:
                channel_id = channel_of_tag(reply_str(reply[i]))
            except ValueError as exc:
                log.warning("deadline index %s holds a member that is no channel tag (%s)", DIST_DEADLINES, exc)
                continue
        size, seq, base = reply_int(reply[i + 1]), reply_int(reply[i + 2]), reply_int(reply[i + 3])
        duplicates, held, rejected_full, dropped_overflow = (reply_int(reply[i + k]) for k in (4, 5, 6, 7))
        snapshots.append(ChannelStatistics(
            channel_id=channel_id, queued=held, open_batch_size=size, in_flight=False, processed=max(0, seq - base),
            cancelled=0, failed=0, has_processor=channel_id in processors, duplicates=duplicates,
            rejected_full=rejected_full, dropped_overflow=dropped_overflow,
        ))
    return tuple(snapshots)
