"""Seeded random and malformed inputs for the fault tests: ``serve`` input lines, protocol field values for the
TCP sender, and codec frames.

Each ``serve`` line comes with what it must become: ``good`` (must be delivered, in order within its channel),
``bad`` (must be skipped with a reason) or ``either`` (a value whose fate the generator does not decide: it
must be delivered or skipped with a reason, never both, never neither). A good line's text starts with
``L<line number>`` so the test can tell its deliveries apart.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

Expect = Literal["good", "bad", "either"]

GOOD_CHANNELS = [f"fuzz:{i}" for i in range(8)]
# channel ids that are valid but unusual: key-like characters, escapes, non-ASCII, the 256-byte limit
NASTY_CHANNELS = [
    "x:processing", "*", "{tag}", "a\nb", "nul\x00in", "ünïcödé", "🙂" * 64, "r" * 256, "\u202eevil", " ",
    "message_queue:redis:x", "\t",
]

_WRONG_TYPES: list[Any] = [0, -1, 2**70, 1.5, True, None, [], ["a"], {}, {"a": 1}]


def message(channel: str, text: str, **more: Any) -> dict[str, Any]:
    return {"platform": "fuzz", "channel_id": channel, "user_id": "u1", "user_name": "ann", "text": text, **more}


def line_of(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"d": value}
    return value


def serve_line(rng: random.Random, number: int) -> tuple[bytes, Expect, str]:
    """One input line (without its newline) for line ``number``, what must become of it, and its class."""
    roll = rng.random()
    text = f"L{number}"
    if roll < 0.30:
        return line_of(message(rng.choice(GOOD_CHANNELS), text)), "good", "good"
    if roll < 0.36:
        channel = rng.choice(NASTY_CHANNELS)
        nasty = rng.choice(["", " \x00", " 🙂\u202e", " \\n\"quoted\"", " " + "é" * 1000, " \r"])
        extra = rng.choice([{}, {"a": [1, None, True, "v", 2.5]}, _deep(3), {"k" * 200: "v"}])
        return line_of(message(channel, text + nasty, extra=extra)), "good", "nasty but valid"
    if roll < 0.38:  # exactly at the limits
        return (line_of(message(rng.choice(GOOD_CHANNELS), text + " " + "t" * (64 * 1024 - len(text) - 1),
                                extra=_deep(4))), "good", "at the limits")
    good = line_of(message(rng.choice(GOOD_CHANNELS), text, extra={"n": rng.randint(0, 9)}))
    kind = rng.randrange(13)
    if kind == 0:  # a proper prefix of a JSON object is never JSON
        return good[: rng.randrange(1, len(good) - 1)], "bad", "truncated JSON"
    if kind == 1:
        position = rng.randrange(len(good))
        junk = rng.choice([b"}", b"{", b",", b"\"", b"]", b":", b"\\", b"'"])
        data = good[:position] + junk + good[position:]
        return data, "either", "corrupted JSON"
    if kind == 2:
        record = message(rng.choice(GOOD_CHANNELS), text)
        record[rng.choice(list(record))] = rng.choice(_WRONG_TYPES)
        return line_of(record), "bad", "wrong type"
    if kind == 3:
        record = message(rng.choice(GOOD_CHANNELS), text)
        if rng.random() < 0.5:
            del record[rng.choice(list(record))]
        else:
            record[rng.choice(["channel", "id", "txt", "raw", "__proto__"])] = "x"
        return line_of(record), "bad", "missing or unknown field"
    if kind == 4:
        return line_of(rng.choice([[], [message("fuzz:0", text)], 1, "s", None, True, 1.5])), "bad", "not an object"
    if kind == 5:
        token = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
        return good.replace(b'"extra": {"n": ', b'"extra": {"n": ' + token.encode() + b', "m": '), "bad", "non-finite"
    if kind == 6:
        junk = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
        return good.replace(text.encode(), text.encode() + junk), "bad", "not UTF-8"
    if kind == 7:
        field = rng.choice(["text", "channel_id", "platform", "user_id", "user_name"])
        record = message(rng.choice(GOOD_CHANNELS), text)
        record[field] = record[field] + "h" * (64 * 1024 + 1 if field == "text" else 257)
        return line_of(record), "bad", "over a size limit"
    if kind == 8:
        if rng.random() < 0.5:
            return line_of(message("fuzz:0", text, extra=_deep(rng.randint(5, 300)))), "bad", "too deep"
        depth = rng.randint(10_000, 200_000)
        return b"[" * depth + b"]" * depth, "bad", "too deep"
    if kind == 9:
        extra = {"blob": "x" * (16 * 1024 + rng.randint(1, 1000))}
        return line_of(message("fuzz:0", text, extra=extra)), "bad", "over a size limit"
    if kind == 10:
        stamp = rng.choice(["yesterday", "2024-13-01T00:00:00", "", 17, None, "2024-05-01T10:00:00+25:00"])
        return line_of(message("fuzz:0", text, queued_at=stamp)), "bad", "bad queued_at"
    if kind == 11:
        if rng.random() < 0.02:
            return b"x" * (1024 * 1024 + rng.randint(1, 1000)), "bad", "long line"
        if rng.random() < 0.3:
            return rng.choice([b"", b"   ", b"\t", b"\r"]), "bad", "blank"
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))).replace(b"\n", b"")
        return data, "either", "random bytes"
    record = message(rng.choice(GOOD_CHANNELS), text + "\ud800")  # a lone surrogate, JSON-escaped
    return json.dumps(record).encode(), "bad", "lone surrogate"


# -- protocol field values for the TCP sender -------------------------------------------------------------


def field_value(rng: random.Random, kind: str) -> Any:
    """A value for a field of ``kind`` (``str``, ``channel``, ``time``, ``extra``, ``bool``): mostly wrong."""
    aware = datetime(2024, 5, 1, tzinfo=timezone.utc)
    pool: list[Any] = [
        None, 0, -1, 2**64, 1.5, float("nan"), float("inf"), True, b"bytes", b"\xff", [], ["a"], {}, {"a": 1},
        (), "", "x" * 300, "t" * (64 * 1024 + 1), "\ud800", "nul\x00", "🙂", aware, datetime(2024, 5, 1),
        timedelta(seconds=1), Exception("e"), set(), frozenset({1}), "yesterday",
    ]
    if kind == "extra":
        pool += [{"n": float("nan")}, {"d": _deep(10)}, {1: "int key"}, {"big": "x" * 20_000}, {"ok": [1, "a"]},
                 {"s": {1, 2}}, {"b": b"\x00"}, {"t": aware}]
    if kind == "time":
        pool += [
            aware,
            datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-12))),
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=-1))),
        ]
    return rng.choice(pool)
