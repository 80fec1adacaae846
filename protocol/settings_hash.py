"""The per-channel settings hash ``message_queue:config:<channel>`` (:func:`protocol.keys.config_key`): its
fields and how their text becomes :class:`~protocol.values.BatchSettings`, free of any Redis client (the actor
system reads the hash in its persistence actor, distributed mode in its scripts' caller; both parse it here).

Fields (as text): ``window`` (seconds, a finite number >= 0), ``disabled`` (``"1"``: batching off),
``max_batch_size`` (1..100), ``max_wait`` (seconds > 0, empty: none), ``busy_policy``, ``split_on_author``
(``"1"``/``"0"``), ``dedupe_ttl`` (seconds >= 0), ``max_attempts`` and ``max_queued`` (ints >= 1),
``retry_backoff`` (seconds >= 0), ``processing_timeout`` and ``max_age`` (seconds > 0, empty: none),
``overflow``. A missing field means the base value; an invalid one is logged as a warning naming the key, the
field and the value (once per distinct bad value and channel) and the base value is kept; other fields (such
as ``paused``) are ignored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from protocol.errors import InvalidSettings
from protocol.values import BatchSettings

log = logging.getLogger("message_queue.config")

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



class SettingsHash:
    """Parses settings hashes over a base, warning once per distinct bad value of a channel's field."""

    def __init__(self, defaults: BatchSettings) -> None:
        self._defaults = defaults
        self._warned: dict[tuple[str, str], str] = {}  # (channel, field) -> the bad value last warned about

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


def as_text(value: object) -> str:
    """A setting's value as the hash stores it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    return str(value)


def text_of(value: bytes | str) -> str:
    """A hash field or value read from Redis as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
