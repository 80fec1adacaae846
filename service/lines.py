"""The input of ``serve``, in both modes: JSON lines read from a stream or split from chunks of bytes, and
each line parsed into a checked message."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any, Iterator

from protocol.errors import InvalidInput
from protocol.limits import validate_channel_id, validate_message_id
from protocol.messages import Edit, Retract
from protocol.validation import validate_message
from protocol.values import QueuedMessage

MAX_LINE_BYTES = 1024 * 1024  # an input line longer than this is rejected unread

_REQUIRED = ("platform", "channel_id", "user_id", "user_name", "text")
_OPTIONAL = ("extra", "queued_at", "message_id")

Command = QueuedMessage | Edit | Retract


def parse_line(data: bytes) -> QueuedMessage:
    """Decode one input line into a checked message.

    Rules: a UTF-8 JSON object with the string fields platform, channel_id, user_id, user_name and text,
    optionally extra (an object), queued_at (ISO 8601; without a UTC offset it is taken as UTC) and
    message_id (a string, the platform's id of the message), and no other field; strict JSON (the tokens
    ``NaN``, ``Infinity`` and ``-Infinity`` are refused, and so is a number too large for a float, such as
    ``1e999``); every limit of
    :func:`protocol.validation.validate_message` holds. A blank line (empty or whitespace only) is refused too.

    Raises:
        InvalidInput: naming the first broken rule.
    """
    return _message(_load(data))


def parse_command(data: bytes) -> Command:
    """Decode one input line of ``serve``: a message (see :func:`parse_line`), or, with an ``op`` field, a
    command: ``{"op": "edit", ...message fields...}`` (an ``Edit``; ``message_id`` required) or
    ``{"op": "retract", "channel_id": ..., "message_id": ...}`` (a ``Retract``; no other field).

    Raises:
        InvalidInput: naming the first broken rule.
    """
    record = _load(data)
    if "op" not in record:
        return _message(record)
    op = record.pop("op")
    if op == "edit":
        message = _message(record)
        validate_message_id(message.message_id)
        return Edit(message)
    if op == "retract":
        unknown = sorted(set(record) - {"channel_id", "message_id"})
        if unknown:
            raise InvalidInput(f"unknown field(s) of a retract: {', '.join(unknown)}")
        for name in ("channel_id", "message_id"):
            if name not in record:
                raise InvalidInput(f"missing field(s): {name}")
        channel_id, message_id = record["channel_id"], record["message_id"]
        validate_channel_id(channel_id)
        return Retract(channel_id, validate_message_id(message_id))
    raise InvalidInput(f"op must be \"edit\" or \"retract\", got {str(op)[:40]!r}")


def channel_of(data: bytes | None) -> str | None:
    """The valid channel id a refused line names (its JSON object's ``channel_id``), for the report of why it
    was refused; None when it names none."""
    if data is None:
        return None
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deep (the line was refused for it)
        return None
    channel = record.get("channel_id") if isinstance(record, dict) else None
    try:
        return validate_channel_id(channel)
    except InvalidInput:
        return None


def _load(data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise InvalidInput("blank line: expected a JSON object")
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except InvalidInput:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise InvalidInput("JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidInput(f"JSON not accepted ({exc})") from exc
    if not isinstance(record, dict):
        raise InvalidInput(f"expected a JSON object, got {_json_type(record)}")
    return record


def _message(record: dict[str, Any]) -> QueuedMessage:
    missing = [name for name in _REQUIRED if name not in record]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(record) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)} (put them in extra)")
    for name in _REQUIRED:
        if not isinstance(record[name], str):
            raise InvalidInput(f"{name} must be a string, got {_json_type(record[name])}")
    extra = record.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidInput(f"extra must be an object, got {_json_type(extra)}")
    fields = {name: record[name] for name in _REQUIRED}
    if "queued_at" in record:
        fields["queued_at"] = _parse_time(record["queued_at"])
    message_id = record.get("message_id", "")
    if not isinstance(message_id, str):
        raise InvalidInput(f"message_id must be a string, got {_json_type(message_id)}")
    return validate_message(QueuedMessage(**fields, extra=extra, message_id=message_id))


def _refuse_constant(token: str) -> object:
    raise InvalidInput(f"not strict JSON: {token} is no JSON number (non-finite numbers are refused)")


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"queued_at must be an ISO 8601 string, got {_json_type(value)}")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"queued_at must be an ISO 8601 date-time, got {value[:40]!r}") from exc
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=timezone.utc)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def read_lines(stream: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number from 1, line) until end of input; the line is None when it exceeds ``limit``
    bytes (the rest of it is skipped unread into memory)."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        else:
            yield number, line


class LineSplitter:
    """Splits chunks of bytes into numbered lines like :func:`read_lines`: a line longer than ``limit`` bytes
    comes out as None, and its bytes are dropped as they arrive."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._partial = bytearray()
        self._overlong = False
        self._number = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end + 1]
            start = end + 1
            self._number += 1
            if self._overlong or len(self._partial) + len(piece) > self._limit + 1:
                self._overlong = False
                self._partial.clear()
                yield self._number, None
            elif self._partial:
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
                yield self._number, line
            else:
                yield self._number, piece
        rest = chunk[start:]
        if self._overlong:
            return
        if len(self._partial) + len(rest) > self._limit:
            self._overlong = True
            self._partial.clear()
        else:
            self._partial += rest

    def end(self) -> Iterator[tuple[int, bytes | None]]:
        """The last line, if the input did not end with a newline."""
        if self._overlong or self._partial:
            self._number += 1
            yield self._number, None if self._overlong else bytes(self._partial)
        self._overlong = False
        self._partial.clear()
