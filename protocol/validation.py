"""The checks of a whole message or queue payload against the limits of :mod:`protocol.limits`, at the edge.

:mod:`protocol.limits` holds the limits and the checks of single fields (it imports no value type);
:mod:`protocol.values` the value types (it imports the limits); this module both, so neither imports the other
back.
"""

from __future__ import annotations

from datetime import datetime, timezone

from protocol.errors import InvalidInput
from protocol.limits import (
    MAX_BATCH_SIZE,
    MAX_CHANNEL_ID_BYTES,
    MAX_NAME_BYTES,
    MAX_TEXT_BYTES,
    check_extra,
    check_text,
    validate_channel_id,
    validate_time,
)
from protocol.values import MessageBatch, Payload, QueuedMessage

_NO_ID = ""  # the default message_id (the interpreter's one empty str): passes without a look at it


def validate_message(msg: QueuedMessage) -> QueuedMessage:
    """Check every field of one inbound message against the limits (see the module docstring) and return it
    unchanged; ``raw`` is not looked at.

    Raises:
        InvalidInput: for the first broken limit, naming it and the value.
    """
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
        check_text(platform, "platform", MAX_NAME_BYTES)
        check_text(user_id, "user_id", MAX_NAME_BYTES)
        check_text(user_name, "user_name", MAX_NAME_BYTES)
    if message_id is not _NO_ID and not (
        type(message_id) is str and len(message_id) <= MAX_NAME_BYTES and message_id.isascii()
    ):
        check_text(message_id, "message_id", MAX_NAME_BYTES)
    if not (type(text) is str and len(text) <= MAX_TEXT_BYTES and text.isascii()):
        check_text(text, "text", MAX_TEXT_BYTES)
    if not (type(queued_at) is datetime and queued_at.tzinfo is timezone.utc):
        validate_time(queued_at, "queued_at")
    if not (type(extra) is dict and not extra):
        check_extra(extra, finite=True)
    return msg


def validate_payload(payload: Payload) -> str:
    """Check a queue payload (a message, or a batch of 1..``MAX_BATCH_SIZE`` messages of one channel, each
    within the limits, with aware ``first_at`` and ``last_at``) and return its channel id.

    Raises:
        InvalidInput: for the first broken rule, naming it and the value.
    """
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
