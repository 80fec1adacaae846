"""Documented input limits and the checks that enforce them at the edge.

Limits (every field of a message is checked; the first broken rule raises :class:`InvalidInput` naming it and
the value):
    * a message is a :class:`~protocol.values.QueuedMessage` itself, not a subclass (it is stored and sent as
      a plain ``QueuedMessage``, so a subclass would not come back as itself);
    * channel id: 1..256 bytes of UTF-8, no surrogates;
    * message text: at most 64 KiB of UTF-8;
    * platform, user id, user name, message id: at most 256 bytes of UTF-8 each;
    * ``queued_at``: a timezone-aware ``datetime`` (``utcoffset()`` is not None). A naive one is refused: it
      names no instant, and each reader would guess its zone differently;
    * ``extra``: a dict with str keys and plain values (see :func:`protocol.codec.check_extra`), nesting depth
      at most 4, at most 16 KiB once encoded, and finite floats only (NaN and ±Infinity are refused: strict
      JSON, which ``serve`` writes, has no token for them);
    * a batch (an enqueue-front payload): a :class:`~protocol.values.MessageBatch` of 1..100 messages
      (``max_batch_size`` at most), all of one channel, each within the limits above, with aware
      ``first_at`` and ``last_at``, so that a full batch of maximal messages still fits one encoded frame
      (16 MiB).

``raw`` (the platform's original object) is never checked, stored or sent across a process boundary.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from protocol.errors import InvalidInput, InvalidSettings

if TYPE_CHECKING:
    from protocol.values import MessageBatch, Payload, QueuedMessage

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
    _check_text(message_id, "message_id", MAX_NAME_BYTES)
    assert isinstance(message_id, str)
    if not message_id:
        raise InvalidInput("message_id must not be empty")
    return message_id


def _check_text(value: object, field: str, limit: int) -> None:
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


@functools.cache
def _late_imports() -> tuple[Callable[..., None], type[QueuedMessage], type[MessageBatch]]:
    """``check_extra``, ``QueuedMessage`` and ``MessageBatch``, imported on first use (the codec and the
    values module import this one); cached because ``validate_message`` is on every message's path."""
    from protocol.codec import check_extra
    from protocol.values import MessageBatch, QueuedMessage

    return check_extra, QueuedMessage, MessageBatch


_NO_ID = ""  # the default message_id (the interpreter's one empty str): passes without a look at it
_MESSAGE_TYPE: list[type[QueuedMessage]] = []  # QueuedMessage once imported: read on every message, no call


def _message_type() -> type[QueuedMessage]:
    _MESSAGE_TYPE.append(_late_imports()[1])
    return _MESSAGE_TYPE[0]


def validate_message(msg: QueuedMessage) -> QueuedMessage:
    """Check every field of one inbound message against the limits (see the module docstring) and return it
    unchanged; ``raw`` is not looked at.

    Raises:
        InvalidInput: for the first broken limit, naming it and the value.
    """
    QueuedMessage = _MESSAGE_TYPE[0] if _MESSAGE_TYPE else _message_type()  # noqa: N806 - the class
    if type(msg) is not QueuedMessage:
        what = "not a subclass, got" if isinstance(msg, QueuedMessage) else "got"
        raise InvalidInput(f"message must be a QueuedMessage, {what} {type(msg).__name__}")
    try:
        platform, channel_id, user_id, user_name, text = (
            msg.platform, msg.channel_id, msg.user_id, msg.user_name, msg.text
        )
        queued_at, extra, message_id = msg.queued_at, msg.extra, msg.message_id
    except AttributeError as exc:  # an instance made without __init__ (unpickled from a hand-made state)
        raise InvalidInput(f"message must have every field of a QueuedMessage ({exc})") from exc
    # The common message (plain ASCII str fields within their limits, a UTC time) passes on the first line of
    # each check; anything else takes the full check, which names what is wrong.
    if not (type(channel_id) is str and channel_id.isascii() and 0 < len(channel_id) <= MAX_CHANNEL_ID_BYTES):
        validate_channel_id(channel_id)
    if not (
        type(platform) is str and type(user_id) is str and type(user_name) is str
        and len(platform) <= MAX_NAME_BYTES and len(user_id) <= MAX_NAME_BYTES
        and len(user_name) <= MAX_NAME_BYTES and platform.isascii() and user_id.isascii() and user_name.isascii()
    ):
        _check_text(platform, "platform", MAX_NAME_BYTES)
        _check_text(user_id, "user_id", MAX_NAME_BYTES)
        _check_text(user_name, "user_name", MAX_NAME_BYTES)
    if message_id is not _NO_ID and not (
        type(message_id) is str and len(message_id) <= MAX_NAME_BYTES and message_id.isascii()
    ):
        _check_text(message_id, "message_id", MAX_NAME_BYTES)
    if not (type(text) is str and len(text) <= MAX_TEXT_BYTES and text.isascii()):
        _check_text(text, "text", MAX_TEXT_BYTES)
    if not (type(queued_at) is datetime and queued_at.tzinfo is timezone.utc):
        validate_time(queued_at, "queued_at")
    if not (type(extra) is dict and not extra):
        check_extra = _late_imports()[0]
        check_extra(extra, finite=True)
    return msg


def validate_payload(payload: Payload) -> str:
    """Check a queue payload (a message, or a batch of 1..``MAX_BATCH_SIZE`` messages of one channel, each
    within the limits, with aware ``first_at`` and ``last_at``) and return its channel id.

    Raises:
        InvalidInput: for the first broken rule, naming it and the value.
    """
    _, QueuedMessage, MessageBatch = _late_imports()
    if type(payload) is QueuedMessage:
        return validate_message(payload).channel_id
    if type(payload) is not MessageBatch:
        raise InvalidInput(f"payload must be a QueuedMessage or a MessageBatch, got {type(payload).__name__}")
    try:
        messages, first_at, last_at = payload.messages, payload.first_at, payload.last_at
    except AttributeError as exc:
        raise InvalidInput(f"payload batch must have every field of a MessageBatch ({exc})") from exc
    if type(messages) is not list:
        raise InvalidInput(f"payload batch messages must be a list, got {type(messages).__name__}")
    if not messages:
        raise InvalidInput("payload batch must not be empty")
    if len(messages) > MAX_BATCH_SIZE:
        raise InvalidInput(f"payload batch must hold at most {MAX_BATCH_SIZE} messages, got {len(messages)}")
    channel_id = None
    for message in messages:
        validate_message(message)
        if channel_id is None:
            channel_id = message.channel_id
        elif message.channel_id != channel_id:
            raise InvalidInput(f"a batch holds one channel: got {message.channel_id!r} after {channel_id!r}")
    validate_time(first_at, "payload batch first_at")
    validate_time(last_at, "payload batch last_at")
    assert channel_id is not None
    return channel_id


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
