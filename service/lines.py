"""The input of ``serve``, in both modes: JSON lines read from a stream or split from chunks of bytes, and
each line parsed into a checked message."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Iterator

from protocol.errors import InvalidInput
from protocol.limits import validate_message
from protocol.values import QueuedMessage

MAX_LINE_BYTES = 1024 * 1024  # an input line longer than this is rejected unread

_REQUIRED = ("platform", "channel_id", "user_id", "user_name", "text")
_OPTIONAL = ("extra", "queued_at")


def parse_line(data: bytes) -> QueuedMessage:
    """Decode one input line into a checked message.

    Rules: a UTF-8 JSON object with the string fields platform, channel_id, user_id, user_name and text,
    optionally extra (an object) and queued_at (ISO 8601; without a UTC offset it is taken as UTC), and no
    other field; strict JSON (the tokens ``NaN``, ``Infinity`` and ``-Infinity`` are refused, and so is a
    number too large for a float, such as ``1e999``); every limit of
    :func:`protocol.limits.validate_message` holds. A blank line (empty or whitespace only) is refused too.

    Raises:
        InvalidInput: naming the first broken rule.
    """
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
    return validate_message(QueuedMessage(**fields, extra=extra))


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
