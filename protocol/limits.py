"""Documented input limits and the checks of single fields that enforce them at the edge (a whole message or
queue payload is checked by :mod:`protocol.validation`, which also imports the value types; this module
imports none, so :mod:`protocol.values` can use its limits).

Limits (every field of a message is checked; the first broken rule raises :class:`InvalidInput` naming it and
the value):
    * a message is a :class:`~protocol.values.QueuedMessage` itself, not a subclass (it is stored and sent as
      a plain ``QueuedMessage``, so a subclass would not come back as itself);
    * channel id: 1..256 bytes of UTF-8, no surrogates;
    * message text: at most 64 KiB of UTF-8;
    * platform, user id, user name, message id: at most 256 bytes of UTF-8 each;
    * ``queued_at``: a timezone-aware ``datetime`` (``utcoffset()`` is not None). A naive one is refused: it
      names no instant, and each reader would guess its zone differently;
    * ``extra``: a dict with str keys and plain values (see :func:`check_extra`), nesting depth
      at most 4, at most 16 KiB once encoded, and finite floats only (NaN and ±Infinity are refused: strict
      JSON, which ``serve`` writes, has no token for them);
    * a batch (an enqueue-front payload): a :class:`~protocol.values.MessageBatch` of 1..100 messages
      (``max_batch_size`` at most), all of one channel, each within the limits above, with aware
      ``first_at`` and ``last_at``, so that a full batch of maximal messages still fits one encoded frame
      (16 MiB).

``raw`` (the platform's original object) is never checked, stored or sent across a process boundary.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

import msgpack  # msgpack ships no type information (setup.cfg ignores its imports)

from protocol.errors import InvalidInput, InvalidSettings

MAX_CHANNEL_ID_BYTES = 256
MAX_TEXT_BYTES = 64 * 1024
MAX_EXTRA_BYTES = 16 * 1024
MAX_EXTRA_DEPTH = 4
MAX_NAME_BYTES = 256
MAX_BATCH_SIZE = 100


def _utf8_size(value: str, what: str) -> int:
    # Unbound str methods: a str subclass cannot make its size or its text look other than they are.
    if str.isascii(value):  # one byte per character, and no surrogates
        return str.__len__(value)
    try:
        return len(str.encode(value, "utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} must be valid UTF-8 text, got {str.__str__(value)[:40]!r}") from exc


def validate_channel_id(channel_id: object) -> str:
    """Return ``channel_id`` if it is a non-empty string of at most 256 UTF-8 bytes.

    Raises:
        InvalidInput: naming the rule and the offending value.
    """
    if not isinstance(channel_id, str):
        raise InvalidInput(f"channel_id must be a str, got {type(channel_id).__name__}")
    size = _utf8_size(channel_id, "channel_id")
    if size == 0:
        raise InvalidInput("channel_id must not be empty")
    if size > MAX_CHANNEL_ID_BYTES:
        raise InvalidInput(
            f"channel_id must be at most {MAX_CHANNEL_ID_BYTES} bytes of UTF-8, got {size} bytes"
        )
    return channel_id


def validate_message_id(message_id: object) -> str:
    """Return ``message_id`` if it is a non-empty string of at most 256 UTF-8 bytes (the id that ``edit`` and
    ``retract`` look a message up by).

    Raises:
        InvalidInput: naming the rule and the offending value.
    """
    check_text(message_id, "message_id", MAX_NAME_BYTES)
    assert isinstance(message_id, str)
    if not message_id:
        raise InvalidInput("message_id must not be empty")
    return message_id


def check_text(value: object, field: str, limit: int) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a str, got {type(value).__name__}")
    size = _utf8_size(value, field)
    if size > limit:
        raise InvalidInput(f"{field} must be at most {limit} bytes of UTF-8, got {size} bytes")


def validate_time(value: object, field: str) -> datetime:
    """Return ``value`` if it is a timezone-aware ``datetime``.

    Raises:
        InvalidInput: for anything else (a naive datetime, a string, a timestamp, a tzinfo that fails),
            naming ``field`` and the value.
    """
    if not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a timezone-aware datetime, got {type(value).__name__}")
    try:
        offset = value.utcoffset()
    except Exception as exc:  # a tzinfo is caller code: whatever it raises makes the time unusable
        raise InvalidInput(
            f"{field} must be a timezone-aware datetime, got one whose tzinfo fails "
            f"({type(exc).__name__}: {str(exc)[:80]})"
        ) from exc
    if offset is None:
        raise InvalidInput(
            f"{field} must be a timezone-aware datetime (naive times name no instant), got "
            f"{datetime.isoformat(value)} without a UTC offset"
        )
    return value


def check_seconds(name: str, value: object, *, positive: bool) -> float:
    """Return ``value`` as seconds if it is a finite number ``> 0`` (``positive``) or ``>= 0``.

    Raises:
        InvalidSettings: naming the setting, the rule and the value.
    """
    rule = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSettings(f"{name} must be a finite number of seconds {rule}, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise InvalidSettings(f"{name} must be {rule}, got {value!r}")
    return float(value)


_EXTRA_SCALARS: Final = frozenset({type(None), bool, float, str, bytes})
_MIN_EXTRA_INT: Final = -(2**63)
_MAX_EXTRA_INT: Final = 2**64 - 1
_EXTRA_CONTAINERS: Final = frozenset({dict, list, tuple})


def check_extra(extra: object, *, finite: bool = False) -> None:
    """Check that ``extra`` can be stored: a dict of plain msgpack values within the limits; with ``finite``,
    also that every float in it is finite (the rule for input: strict JSON has no NaN or Infinity). The
    codec itself carries non-finite floats, so that entries stored before that rule still decode.

    Rules:
        * ``extra`` is a ``dict`` whose keys, and the keys of every dict inside it, are ``str``;
        * values are exactly ``None``, ``bool``, ``int`` in -2**63..2**64-1, ``float``, ``str``, ``bytes``,
          ``list``, ``tuple`` or ``dict`` (no subclasses, sets, datetimes or other objects);
        * nesting depth at most ``MAX_EXTRA_DEPTH`` (4): ``extra`` itself is depth 1, a list or dict
          directly inside it is depth 2, and so on; scalars add no depth, an empty container counts;
        * at most ``MAX_EXTRA_BYTES`` (16 KiB) once encoded as msgpack; strings must be valid UTF-8;
        * with ``finite``: no float is NaN, Infinity or -Infinity.

    Tuples are accepted but decode as lists.

    Raises:
        InvalidInput: naming the broken rule and where in ``extra`` it broke.
    """
    if type(extra) is not dict:
        raise InvalidInput(f"extra must be a dict, got {type(extra).__name__}")
    if not extra:
        return
    pending: list[tuple[dict[Any, Any] | list[Any] | tuple[Any, ...], int, str]] = [(extra, 1, "extra")]
    while pending:
        container, depth, where = pending.pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    raise InvalidInput(f"extra keys must be str, got {type(key).__name__} {key!r:.40} in {where}")
            items: Any = container.items()
        else:
            items = enumerate(container)
        for key, value in items:
            kind = type(value)
            if kind in _EXTRA_SCALARS:
                if finite and kind is float and not math.isfinite(value):
                    raise InvalidInput(f"extra floats must be finite, got {value!r} at {where}[{key!r}]")
                continue
            if kind is int:
                if not _MIN_EXTRA_INT <= value <= _MAX_EXTRA_INT:
                    raise InvalidInput(f"extra ints must fit in 64 bits, got {value} at {where}[{key!r}]")
                continue
            if kind in _EXTRA_CONTAINERS:
                if depth + 1 > MAX_EXTRA_DEPTH:
                    raise InvalidInput(
                        f"extra nesting depth must be at most {MAX_EXTRA_DEPTH}, got {depth + 1} "
                        f"at {where}[{key!r}]"
                    )
                pending.append((value, depth + 1, f"{where}[{key!r}]"))
                continue
            raise InvalidInput(
                "extra values must be None, bool, int, float, str, bytes, list, tuple or dict, "
                f"got {kind.__name__} at {where}[{key!r}]"
            )
    try:
        size = len(msgpack.packb(extra, use_bin_type=True))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"extra strings must be valid UTF-8 text, got {exc.object[:40]!r}") from exc
    if size > MAX_EXTRA_BYTES:
        raise InvalidInput(f"extra must be at most {MAX_EXTRA_BYTES} bytes once encoded, got {size} bytes")
