"""Documented input limits and the checks that enforce them at the edge.

Limits:
    * channel id: 1..256 bytes of UTF-8, no surrogates;
    * message text: at most 64 KiB of UTF-8;
    * ``extra``: at most 16 KiB once encoded, nesting depth at most 4, keys are strings;
    * platform, user id, user name: at most 256 bytes of UTF-8 each;
    * a batch: at most 100 messages (``max_batch_size``), so that a full batch of maximal messages still
      fits one encoded frame (16 MiB).

``raw`` (the platform's original object) is never checked, stored or sent across a process boundary.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable

from protocol.errors import InvalidInput, InvalidSettings

if TYPE_CHECKING:
    from protocol.values import Payload, QueuedMessage

MAX_CHANNEL_ID_BYTES = 256
MAX_TEXT_BYTES = 64 * 1024
MAX_EXTRA_BYTES = 16 * 1024
MAX_EXTRA_DEPTH = 4
MAX_NAME_BYTES = 256
MAX_BATCH_SIZE = 100


def _utf8_size(value: str, what: str) -> int:
    if value.isascii():  # one byte per character, and no surrogates
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} must be valid UTF-8 text, got {value[:40]!r}") from exc


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


def _check_name(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a str, got {type(value).__name__}")
    size = _utf8_size(value, field)
    if size > MAX_NAME_BYTES:
        raise InvalidInput(f"{field} must be at most {MAX_NAME_BYTES} bytes of UTF-8, got {size} bytes")


@functools.cache
def _late_imports() -> tuple[Callable[[object], None], type[QueuedMessage]]:
    """``check_extra`` and ``QueuedMessage``, imported on first use (the codec and the values module import
    this one); cached because ``validate_message`` is on every message's path."""
    from protocol.codec import check_extra
    from protocol.values import QueuedMessage

    return check_extra, QueuedMessage


def validate_message(msg: QueuedMessage) -> QueuedMessage:
    """Check every limit of one inbound message and return it unchanged.

    Raises:
        InvalidInput: for the first broken limit, naming it and the value.
    """
    check_extra, QueuedMessage = _late_imports()
    if not isinstance(msg, QueuedMessage):
        raise InvalidInput(f"message must be a QueuedMessage, got {type(msg).__name__}")
    validate_channel_id(msg.channel_id)
    for field in ("platform", "user_id", "user_name"):
        _check_name(getattr(msg, field), field)
    if not isinstance(msg.text, str):
        raise InvalidInput(f"text must be a str, got {type(msg.text).__name__}")
    size = _utf8_size(msg.text, "text")
    if size > MAX_TEXT_BYTES:
        raise InvalidInput(f"text must be at most {MAX_TEXT_BYTES} bytes of UTF-8, got {size} bytes")
    check_extra(msg.extra)
    return msg


def validate_payload(payload: Payload) -> str:
    """Check a queue payload (a message, or a non-empty batch of one channel's messages, each within the
    limits) and return its channel id.

    Raises:
        InvalidInput: for the first broken rule, naming it and the value.
    """
    from protocol.values import MessageBatch, QueuedMessage

    if isinstance(payload, QueuedMessage):
        return validate_message(payload).channel_id
    if not isinstance(payload, MessageBatch):
        raise InvalidInput(f"payload must be a QueuedMessage or a MessageBatch, got {type(payload).__name__}")
    if not payload.messages:
        raise InvalidInput("payload batch must not be empty")
    channel_id = payload.messages[0].channel_id
    for message in payload.messages:
        validate_message(message)
        if message.channel_id != channel_id:
            raise InvalidInput(f"a batch holds one channel: got {message.channel_id!r} after {channel_id!r}")
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
