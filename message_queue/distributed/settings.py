"""The batch settings of the channels a node appends to: the one place distributed mode reads each channel's
settings hash (``message_queue:config:<channel>``, rules in :mod:`message_queue.config`).

A channel's settings are read before its first message is appended (the writer waits for that read), and
re-read once older than ``config_ttl``: the re-read rides in the pipeline that carries the channel's next
appends and applies from the pipeline after it, so a change takes effect at most ``config_ttl`` plus one round
trip late. Each message's settings travel with it to the append script, which fixes them when a batch opens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from message_queue import scripts
from message_queue.config import DISABLED_FIELD, WINDOW_FIELD, ChannelConfigReader
from message_queue.distributed.replies import reply_str
from protocol.keys import config_key
from protocol.values import BatchSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

log = logging.getLogger(__name__)

_MAX_REFRESH = 64  # channels re-read per pipeline
_KEEP = 10_000  # channels remembered before old entries are forgotten


@dataclass(eq=False, slots=True)
class ChannelConfig:
    """A channel's settings as read from Redis, and their form as an argument of the append script."""

    settings: BatchSettings
    argument: bytes
    read_at: float  # loop time

    @classmethod
    def of(cls, settings: BatchSettings, read_at: float) -> ChannelConfig:
        return cls(settings, scripts.settings_argument(settings), read_at)


class ChannelSettings:
    """Settings per channel on top of ``defaults``, as last read from Redis; ``ttl``: seconds they are reused;
    ``clock``: the time now in seconds (the node's loop time)."""

    def __init__(self, redis: Redis, defaults: BatchSettings, ttl: float, clock: Callable[[], float]) -> None:
        self._redis = redis
        self._clock = clock
        self._defaults = defaults
        self._ttl = ttl
        self._reader = ChannelConfigReader(redis, defaults)
        self._configs: dict[str, ChannelConfig] = {}

    def unread(self, channels: Iterable[str]) -> list[str]:
        """Those of ``channels`` never read (sorted, each once)."""
        return sorted({channel for channel in channels if channel not in self._configs})

    def argument(self, channel: str) -> bytes:
        """The append script's settings argument for ``channel`` (which must have been read)."""
        return self._configs[channel].argument

    async def read(self, channels: Sequence[str]) -> list[object]:
        """Read the settings of ``channels``; returns the reply (as a one-item list)."""
        config_keys = [config_key(channel) for channel in channels]
        reply = await scripts.run(self._redis, scripts.CONFIGS, config_keys, [])
        now = self._clock()
        for channel, settings in zip(channels, self._parse(channels, reply, None)):
            self._configs[channel] = ChannelConfig.of(settings, now)
        return [reply]

    def stale(self, channels: Iterable[str]) -> list[str]:
        """Those of ``channels`` read ``ttl`` or longer ago (at most 64), marked as read now (one refresh at a
        time per channel); the caller re-reads them with :meth:`add_refresh`."""
        now = self._clock()
        stale: list[str] = []
        for channel in channels:
            config = self._configs[channel]
            if now - config.read_at >= self._ttl and len(stale) < _MAX_REFRESH:
                stale.append(channel)
                config.read_at = now
        return stale

    def add_refresh(self, pipe: Pipeline, channels: Sequence[str]) -> None:
        """Queue the re-read of ``channels`` on ``pipe`` (its reply goes to :meth:`refreshed`)."""
        if channels:
            config_keys = [config_key(channel) for channel in channels]
            pipe.evalsha(scripts.SCRIPTS[scripts.CONFIGS].sha, len(config_keys), *config_keys)

    def refreshed(self, channels: Sequence[str], results: Sequence[object]) -> None:
        """Take the reply of the re-read of ``channels`` (``results[0]``; nothing when no channel)."""
        if not channels:
            return
        previous = [self._configs[channel].settings for channel in channels]
        for channel, settings in zip(channels, self._parse(channels, results[0], previous)):
            config = self._configs.get(channel)
            if config is not None and config.settings != settings:
                self._configs[channel] = ChannelConfig.of(settings, config.read_at)

    def forget_old(self) -> list[str]:
        """Once more than 10,000 channels are remembered, forget those not read for ``max(10 * ttl, 60 s)``;
        returns them."""
        if len(self._configs) <= _KEEP:
            return []
        now = self._clock()
        horizon = max(self._ttl * 10, 60.0)
        old = [c for c, config in self._configs.items() if now - config.read_at > horizon]
        for channel in old:
            del self._configs[channel]
        return old

    def _parse(self, channels: Sequence[str], reply: object,
               previous: Sequence[BatchSettings] | None) -> list[BatchSettings]:
        """The settings of ``channels`` from the configs script's reply (window, disabled per channel)."""
        if not isinstance(reply, list) or len(reply) != 2 * len(channels):
            log.warning("could not read batch settings of %d channels (%s); keeping the current ones",
                        len(channels), reply if isinstance(reply, Exception) else type(reply).__name__)
            return list(previous) if previous is not None else [self._defaults] * len(channels)
        out = []
        for i, channel in enumerate(channels):
            window, disabled = reply[2 * i], reply[2 * i + 1]
            if window is None and disabled is None:
                out.append(self._defaults)
                continue
            fields = {name: reply_str(value) for name, value in ((WINDOW_FIELD, window), (DISABLED_FIELD, disabled))
                      if value is not None}
            out.append(self._reader.parse(channel, config_key(channel), fields))
        return out
