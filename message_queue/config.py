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
import math
from dataclasses import replace
from typing import TYPE_CHECKING

from protocol.errors import InvalidSettings
from protocol.keys import config_key
from protocol.values import BatchSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

WINDOW_FIELD = "window"
DISABLED_FIELD = "disabled"

SETTING_FIELDS = (
    "window", "max_batch_size", "max_wait", "busy_policy", "split_on_author", "disabled", "dedupe_ttl",
    "max_attempts", "retry_backoff", "processing_timeout", "max_queued", "overflow", "max_age",
)
"""The per-channel settings ``MessageQueue.configure`` and the settings hash accept."""


def apply_settings(base: BatchSettings, changes: dict[str, object]) -> BatchSettings:
    """``base`` with ``changes`` (names of :data:`SETTING_FIELDS`, typed values; ``disabled`` is the negation
    of ``BatchSettings.batching``).

    Raises:
        InvalidSettings: for an unknown name, or a value its setting refuses (naming the field and value).
    """
    fields: dict[str, object] = {}
    for name, value in changes.items():
        if name not in SETTING_FIELDS:
            raise InvalidSettings(f"unknown setting {name!r}: the settings are {', '.join(SETTING_FIELDS)}")
        if name == "disabled":
            if not isinstance(value, bool):
                raise InvalidSettings(f"disabled must be a bool, got {value!r}")
            fields["batching"] = not value
        else:
            fields[name] = value
    return replace(base, **fields)  # type: ignore[arg-type]  # each value is checked by BatchSettings


def _parse_text(name: str, text: str) -> object:
    """A hash field's text as the value its setting takes; raises ValueError when it is not one."""
    flag = text.strip()
    if name in ("disabled", "split_on_author"):
        if flag not in ("1", "0", ""):
            raise ValueError('"1" or "0"')
        return flag == "1"
    if name in ("max_batch_size", "max_attempts", "max_queued"):
        return int(flag)
    if name in ("max_wait", "processing_timeout", "max_age"):
        return float(flag) if flag else None
    if name in ("busy_policy", "overflow"):
        return flag
    return float(flag)


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
        fields = {_text(name): _text(value) for name, value in raw.items()}
        return self.parse(channel_id, key, fields, base)

    async def write(self, channel_id: str, changes: dict[str, object]) -> None:
        """Make the channel's hash hold exactly ``changes`` (names of :data:`SETTING_FIELDS`, values as
        :func:`apply_settings` takes them, already checked), as text; no changes deletes the hash.

        Raises:
            redis.RedisError, OSError, asyncio.TimeoutError: when Redis cannot be written.
        """
        key = config_key(channel_id)
        fields = {name: _as_text(value) for name, value in changes.items()}
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        await asyncio.wait_for(pipe.execute(), self._timeout)

    def parse(
        self, channel_id: str, key: str, fields: dict[str, str], base: BatchSettings | None = None
    ) -> BatchSettings:
        """Apply the hash's ``fields`` to ``base`` (default: the defaults); invalid values are warned about
        and ignored."""
        settings = self._defaults if base is None else base
        for name in SETTING_FIELDS:
            text = fields.get(name)
            if text is None or name in (WINDOW_FIELD, DISABLED_FIELD):
                continue
            try:
                settings = apply_settings(settings, {name: _parse_text(name, text)})
            except (ValueError, InvalidSettings) as exc:
                self._warn(channel_id, key, name, text, str(exc) or "a valid value")
            else:
                self._warned.pop((channel_id, name), None)
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


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    return str(value)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
