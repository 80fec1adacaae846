"""Per-channel batch settings read from Redis, the original module's way of overriding them at run time.

The hash ``message_queue:config:<channel>`` (:func:`protocol.keys.config_key`) may hold the fields that
``MessageQueue.configure`` takes (:data:`SETTING_FIELDS`), as text:
    * ``window``: the quiet window in seconds, a finite number >= 0 (e.g. ``"2.5"``);
    * ``disabled``: ``"1"`` turns batching off (each message is its own item), ``"0"`` or empty keeps it on;
    * ``max_batch_size``: an int in 1..100; ``max_wait``: seconds > 0, or empty for none;
    * ``busy_policy``: ``queue``, ``collect``, ``interrupt`` or ``reject``;
    * ``split_on_author``: ``"1"`` or ``"0"``; ``dedupe_ttl``: seconds >= 0 (0: no duplicate detection).
    * ``max_attempts``, ``max_queued``: ints >= 1; ``retry_backoff``: seconds >= 0;
      ``processing_timeout``, ``max_age``: seconds > 0, or empty for none; ``overflow``: ``reject``,
      ``drop_oldest`` or ``drop_newest``.

A missing hash or field means the default. An invalid value is logged as a warning naming the key, the field
and the value (once per distinct bad value and channel), and the default is used for that field. Other fields
are ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from protocol.keys import config_key
from protocol.settings_hash import (
    DISABLED_FIELD,
    SETTING_FIELDS,
    WINDOW_FIELD,
    SettingsHash,
    apply_settings,
    as_text,
    text_of,
)
from protocol.values import BatchSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

__all__ = [
    "DISABLED_FIELD",
    "SETTING_FIELDS",
    "WINDOW_FIELD",
    "ChannelConfigReader",
    "apply_settings",
    "write_settings_hash",
]


async def write_settings_hash(redis: Redis, channel_id: str, changes: dict[str, object], timeout: float) -> None:
    """Make the channel's settings hash hold exactly ``changes`` (names of :data:`SETTING_FIELDS`, values as
    :func:`apply_settings` takes them, already checked), as text, in one transaction; no changes deletes the
    hash. Bounded by ``timeout`` seconds.

    Raises:
        redis.RedisError, OSError, asyncio.TimeoutError: when Redis cannot be written.
    """
    key = config_key(channel_id)
    fields = {name: as_text(value) for name, value in changes.items()}
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    if fields:
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
    await asyncio.wait_for(pipe.execute(), timeout)

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
        self._parser = SettingsHash(defaults)

    async def read(self, channel_id: str, base: BatchSettings | None = None) -> BatchSettings | None:
        """The settings the channel's next batch should use (the hash's fields over ``base``, default: the
        defaults), or None if Redis could not be read."""
        key = config_key(channel_id)
        try:
            raw = await asyncio.wait_for(self._redis.hgetall(key), self._timeout)
        except self._errors as exc:
            log.warning("could not read batch settings from %r (%s: %s); keeping the current ones", key,
                        type(exc).__name__, exc)
            return None
        fields = {text_of(name): text_of(value) for name, value in raw.items()}
        return self.parse(channel_id, key, fields, base)

    async def write(self, channel_id: str, changes: dict[str, object]) -> None:
        """Make the channel's hash hold exactly ``changes`` (names of :data:`SETTING_FIELDS`, values as
        :func:`apply_settings` takes them, already checked), as text; no changes deletes the hash.

        Raises:
            redis.RedisError, OSError, asyncio.TimeoutError: when Redis cannot be written.
        """
        await write_settings_hash(self._redis, channel_id, changes, self._timeout)

    def parse(
        self, channel_id: str, key: str, fields: dict[str, str], base: BatchSettings | None = None
    ) -> BatchSettings:
        """Apply the hash's ``fields`` to ``base`` (default: the defaults); invalid values are warned about
        and ignored (:class:`protocol.settings_hash.SettingsHash`)."""
        return self._parser.parse(channel_id, key, fields, base)
