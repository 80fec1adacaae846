"""Per-channel batch settings read from Redis, the original module's way of overriding them at run time.

The hash ``message_queue:config:<channel>`` (:func:`protocol.keys.config_key`) may hold:
    * ``window``: the quiet window in seconds, a finite number >= 0 (e.g. ``"2.5"``);
    * ``disabled``: ``"1"`` turns batching off (each message is its own item), ``"0"`` or empty keeps it on.

A missing hash or field means the default. An invalid value is logged as a warning naming the key, the field
and the value (once per distinct bad value and channel), and the default is used for that field. Other fields
are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING

from protocol.keys import config_key
from protocol.values import BatchSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

WINDOW_FIELD = "window"
DISABLED_FIELD = "disabled"


class ChannelConfigReader:
    """Reads one channel's settings from Redis, on top of ``defaults``.

    ``timeout`` bounds one read (seconds); a read that fails or times out is logged and yields None, so the
    caller keeps what it had.
    """

    def __init__(self, redis: Redis, defaults: BatchSettings, *, timeout: float = 2.0) -> None:
        from redis.exceptions import RedisError  # redis is only needed when a client is given

        self._redis = redis
        self._defaults = defaults
        self._timeout = timeout
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
        self._warned: dict[tuple[str, str], str] = {}  # (channel, field) -> the bad value last warned about

    async def read(self, channel_id: str) -> BatchSettings | None:
        """The settings the channel's next batch should use, or None if Redis could not be read."""
        key = config_key(channel_id)
        try:
            raw = await asyncio.wait_for(self._redis.hgetall(key), self._timeout)
        except self._errors as exc:
            log.warning("could not read batch settings from %r (%s: %s); keeping the current ones", key,
                        type(exc).__name__, exc)
            return None
        fields = {_text(name): _text(value) for name, value in raw.items()}
        return self.parse(channel_id, key, fields)

    def parse(self, channel_id: str, key: str, fields: dict[str, str]) -> BatchSettings:
        """Apply the hash's ``fields`` to the defaults; invalid values are warned about and ignored."""
        settings = self._defaults
        window = fields.get(WINDOW_FIELD)
        if window is not None:
            try:
                seconds = float(window)
                if not math.isfinite(seconds) or seconds < 0:
                    raise ValueError
                settings = replace(settings, window=seconds)
            except ValueError:
                self._warn(channel_id, key, WINDOW_FIELD, window, "a finite number of seconds >= 0")
            else:
                self._warned.pop((channel_id, WINDOW_FIELD), None)
        disabled = fields.get(DISABLED_FIELD)
        if disabled is not None:
            flag = disabled.strip()
            if flag == "1":
                settings = replace(settings, batching=False)
            elif flag not in ("0", ""):
                self._warn(channel_id, key, DISABLED_FIELD, disabled, '"1" (batching off) or "0"')
                return settings
            self._warned.pop((channel_id, DISABLED_FIELD), None)
        return settings

    def _warn(self, channel_id: str, key: str, field: str, value: str, rule: str) -> None:
        if self._warned.get((channel_id, field)) == value:
            return
        self._warned[(channel_id, field)] = value
        log.warning("invalid batch setting in Redis: key %r field %r value %r (must be %s); using the default",
                    key, field, value, rule)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
