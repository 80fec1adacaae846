"""Admin commands through Redis, for the node that holds a database's writer lease.

``run_system.py admin --redis URL pause CHANNEL`` cannot change a persisting node's state by writing Redis
itself: the node holds that state in memory and is the only writer. Instead the admin adds a request to the
stream :data:`protocol.keys.CONTROL` and waits (``BLPOP``, bounded) on the request's reply list
(:func:`protocol.keys.control_reply_key`). The node holding the lease polls the stream (its persistence actor,
twice a second, with a non-blocking ``XREAD``), runs each request through its actors and pushes one JSON
answer onto the reply list, which expires after :data:`REPLY_TTL` seconds whether or not anyone reads it.

A stream entry has the fields ``id`` (the request id), ``request`` (one JSON object: ``{"command": "pause",
"channel": "..."}``, as the control socket takes) and ``timeout_ms``: a node skips a request older than that
(by the stream id's Redis time), since its admin has given up. A node that takes the lease starts reading at
the stream's end: requests sent while no node held the lease are never run.

Pauses are stored: answering ``pause``/``resume`` sets or deletes the field ``paused`` of the channel's settings
hash ``message_queue:config:{channel}`` and the channel's membership of :data:`protocol.keys.PAUSED`, in the
same transaction as the answer; a persisting node re-applies the stored pauses when it starts.

``dead-letters CHANNEL`` (with ``"replay": true`` or ``"purge": true``) is answered the same way, from the
dead letters the node's channels hold in memory (a persisting node journals them to
``message_queue:dead:{channel}`` and restores them on start): :func:`dead_letters_message` maps the request to
its actor message, :func:`dead_letters_result` the channel's answer to the admin's result, and
:func:`dead_letter_row` gives a dead letter the one JSON shape every admin route lists it in.

The functions above the dead-letter section block on Redis; the persistence actor calls them on its I/O
thread. Those of the dead-letter section do no I/O.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from protocol import keys
from protocol.errors import DecodeError, InvalidInput
from protocol.messages import (
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    GetDeadLetters,
    PurgeDeadLetters,
    ReplayDeadLetters,
)
from protocol.values import DeadLetter, payload_messages

log = logging.getLogger(__name__)

PAUSED_FIELD = "paused"
REPLY_TTL = 60  # seconds an answer waits for its admin
POLL_COUNT = 16  # requests read per poll
STREAM_MAXLEN = 1000  # the stream is trimmed (approximately) to this many requests
NODE_COMMANDS = ("pause", "resume", "flush", "clear", "dead-letters")


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One admin request read from the stream: its id and its JSON object (None when it was not a JSON
    object; ``problem`` then says why)."""

    request_id: str
    payload: dict[str, Any] | None
    problem: str = ""


# -- the admin's side ---------------------------------------------------------------------------------------


def lease_holder(client: redis.Redis) -> str | None:
    """The value of the writer lease (``host=... pid=...``), or None when no node holds it."""
    raw = client.get(keys.LEASE)
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def send(client: redis.Redis, payload: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """Add ``payload`` to the control stream and wait up to ``timeout`` seconds for the lease holder's answer
    (``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``); None when none came (the request
    is then withdrawn, unless the node already read it)."""
    request_id = uuid.uuid4().hex
    reply_key = keys.control_reply_key(request_id)
    entry_id = client.xadd(
        keys.CONTROL,
        {"id": request_id, "request": json.dumps(payload), "timeout_ms": str(max(1, int(timeout * 1000)))},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )
    popped = client.blpop([reply_key], timeout=max(0.01, timeout))
    if popped is None:
        client.xdel(keys.CONTROL, entry_id)
        return None
    answer = json.loads(popped[1])
    if not isinstance(answer, dict):
        raise ValueError(f"the node answered {answer!r:.200}, not a JSON object")
    return answer


# -- the node's side ----------------------------------------------------------------------------------------


def last_id(client: redis.Redis) -> bytes:
    """The id of the stream's newest entry (``0-0`` when it is empty): where a node starts reading."""
    newest: list[tuple[bytes, Any]] = client.xrevrange(keys.CONTROL, count=1)  # type: ignore[assignment]
    return newest[0][0] if newest else b"0-0"


def poll(client: redis.Redis, after: bytes) -> tuple[list[ControlRequest], bytes]:
    """The requests added after ``after`` (at most :data:`POLL_COUNT`, expired ones left out), and the id
    to read after next time. Non-blocking."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.xread({keys.CONTROL: after}, count=POLL_COUNT)
    (seconds, micros), streams = pipe.execute()
    now_ms = seconds * 1000 + micros // 1000
    requests = []
    for _stream, entries in streams or ():
        for entry_id, fields in entries:
            after = bytes(entry_id)
            request = _parse(after, fields, now_ms)
            if request is not None:
                requests.append(request)
    return requests, after


def _parse(entry_id: bytes, fields: dict[bytes, bytes], now_ms: int) -> ControlRequest | None:
    raw_id = fields.get(b"id", b"").decode("utf-8", "replace")
    try:
        keys.control_reply_key(raw_id)
    except ValueError as exc:
        log.warning("admin request %s ignored: %s", entry_id.decode(), exc)
        return None
    try:
        timeout_ms = int(fields.get(b"timeout_ms", b"0"))
        if now_ms - int(entry_id.split(b"-")[0]) > timeout_ms:
            return None  # its admin has given up
        payload = json.loads(fields.get(b"request", b""))
    except ValueError as exc:
        return ControlRequest(raw_id, None, f"a request is one JSON object: {exc}")
    if not isinstance(payload, dict):
        return ControlRequest(raw_id, None, f"a request is one JSON object, got {payload!r:.100}")
    return ControlRequest(raw_id, payload)


def answer(client: redis.Redis, request_id: str, reply: dict[str, Any], paused: tuple[str, bool] | None = None) -> None:
    """Push ``reply`` onto the request's reply list (expiring); with ``paused`` = (channel, flag), store the
    channel's pause in the same transaction."""
    reply_key = keys.control_reply_key(request_id)
    pipe = client.pipeline(transaction=True)
    if paused is not None:
        store_pause(pipe, *paused)
    pipe.rpush(reply_key, json.dumps(reply))
    pipe.expire(reply_key, REPLY_TTL)
    pipe.execute()


def store_pause(pipe: Any, channel: str, flag: bool) -> None:
    """Queue on ``pipe`` the commands that store ``channel``'s pause (``flag``) or its resumption."""
    if flag:
        pipe.hset(keys.config_key(channel), PAUSED_FIELD, "1")
        pipe.sadd(keys.PAUSED, channel)
    else:
        pipe.hdel(keys.config_key(channel), PAUSED_FIELD)
        pipe.srem(keys.PAUSED, channel)


def paused_channels(client: redis.Redis) -> list[str]:
    """The channels stored as paused, sorted."""
    members = client.smembers(keys.PAUSED)
    return sorted(m.decode("utf-8", "replace") for m in members)  # type: ignore[union-attr]


# -- dead letters -------------------------------------------------------------------------------------------

DEAD_LETTER_ACTIONS = {"list": "dead-letters", "replay": "dead-letters --replay", "purge": "dead-letters --purge"}
MAX_LISTED_TEXT = 1000  # characters of a message's text a listed dead letter shows


DeadLetterCommand = GetDeadLetters | ReplayDeadLetters | PurgeDeadLetters


def dead_letters_message(channel: str, payload: dict[str, Any]) -> DeadLetterCommand:
    """The actor message of a ``dead-letters`` request on ``channel``: its ``replay`` and ``purge`` fields
    (booleans, at most one true, both optional) choose ``ReplayDeadLetters``, ``PurgeDeadLetters`` or
    ``GetDeadLetters``; its optional ``limit`` is checked here (see :func:`listing_limit`) and applied to the
    answer by :func:`dead_letters_result`.

    Raises:
        InvalidInput: naming the field that is not a boolean, or both set, or a bad ``limit``.
    """
    replay, purge = payload.get("replay", False), payload.get("purge", False)
    for name, value in (("replay", replay), ("purge", purge)):
        if type(value) is not bool:
            raise InvalidInput(f"dead-letters: {name} must be true or false, got {value!r:.40}")
    if replay and purge:
        raise InvalidInput("dead-letters: replay and purge cannot both be asked")
    listing_limit(payload)
    if replay:
        return ReplayDeadLetters(channel)
    if purge:
        return PurgeDeadLetters(channel)
    return GetDeadLetters(channel)


def listing_limit(payload: dict[str, Any] | None) -> int | None:
    """The ``limit`` of a ``dead-letters`` request: at most that many letters are listed (the oldest); None
    (the field is absent or null) lists them all.

    Raises:
        InvalidInput: when it is not an integer >= 1.
    """
    limit = None if payload is None else payload.get("limit")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise InvalidInput(f"dead-letters: limit must be an integer >= 1, got {limit!r:.40}")
    return limit


def dead_letters_action(message: DeadLetterCommand) -> str:
    """The admin command a dead-letter message carries out (``dead-letters``, ``... --replay``, ``... --purge``)."""
    if isinstance(message, ReplayDeadLetters):
        return DEAD_LETTER_ACTIONS["replay"]
    if isinstance(message, PurgeDeadLetters):
        return DEAD_LETTER_ACTIONS["purge"]
    return DEAD_LETTER_ACTIONS["list"]


def dead_letters_result(
    reply: DeadLetters | DeadLettersReplayed | DeadLettersPurged, source: str, limit: int | None = None
) -> dict[str, Any]:
    """The admin result of a channel's answer to a dead-letter message: a listing
    (:func:`dead_letters_listing`, at most ``limit`` letters), ``{"channel", "source", "replayed"}`` or
    ``{"channel", "source", "purged"}``; ``source`` says where it came from (``node``: the actors; ``redis``: the
    stored list)."""
    if isinstance(reply, DeadLetters):
        letters = reply.letters
        rows = [dead_letter_row(letter) for letter in letters[:limit]]
        undecodable = sum(1 for letter in letters if letter.role == keys.DEAD_LETTER)
        return dead_letters_listing(reply.channel_id, rows, source, total=len(letters), undecodable=undecodable)
    if isinstance(reply, DeadLettersReplayed):
        return {"channel": reply.channel_id, "source": source, "replayed": reply.count}
    return {"channel": reply.channel_id, "source": source, "purged": reply.count}


def dead_letters_listing(
    channel: str,
    rows: list[dict[str, Any]],
    source: str,
    *,
    total: int | None = None,
    undecodable: int | None = None,
) -> dict[str, Any]:
    """A channel's dead letters as the admin lists them: ``{"channel", "source", "dead_letters": [row, ...],
    "total": how many the channel has, "undecodable": how many of them are undecodable entries}``, oldest first.
    ``rows`` may be the first of them only (a ``limit``): ``total`` and ``undecodable`` then count them all
    (by default they count ``rows``)."""
    return {"channel": channel, "source": source, "dead_letters": rows,
            "total": len(rows) if total is None else total,
            "undecodable": sum(1 for row in rows if row["undecodable"]) if undecodable is None else undecodable}


def dead_letter_row(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as the admin lists it, on every route.

    An item that failed its last attempt: ``item_id``, ``messages`` (each ``message_id``, ``text`` cut to
    :data:`MAX_LISTED_TEXT` characters, ``truncated`` when cut), ``error`` (the last one), ``attempts``,
    ``first_failed_at`` and ``last_failed_at`` (Unix seconds). A stored entry set aside (it failed to decode
    or encode): ``item_id`` None, no messages, ``error`` why, ``attempts`` 0 and no failure times. Both have
    ``role`` (``item``, or the key role the entry was in), ``at`` (when it was set aside), ``bytes`` (of the
    data it holds) and ``undecodable`` (true for a dead-letter entry that did not decode itself: role
    ``dead``)."""
    item = letter.item
    messages = []
    if item is not None:
        for message in payload_messages(item.payload):
            text = message.text
            row: dict[str, Any] = {"message_id": message.message_id, "text": text[:MAX_LISTED_TEXT]}
            if len(text) > MAX_LISTED_TEXT:
                row["truncated"] = True
            messages.append(row)
    return {
        "item_id": item.item_id if item is not None else None,
        "messages": messages,
        "error": letter.reason,
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at if item is not None else None,
        "last_failed_at": letter.last_failed_at if item is not None else None,
        "role": letter.role,
        "at": letter.at,
        "bytes": len(letter.data),
        "undecodable": letter.role == keys.DEAD_LETTER,  # as counted by dead_letters_result
    }


def undecodable_row(raw: bytes, error: DecodeError) -> dict[str, Any]:
    """A stored dead-letter entry that does not decode, listed like :func:`dead_letter_row` lists the same
    entry once a node has loaded it (``role`` ``dead``, ``undecodable``), but with no ``at``: it is unknown."""
    return {"item_id": None, "messages": [], "error": str(error)[:4096], "attempts": 0,
            "first_failed_at": None, "last_failed_at": None, "role": keys.DEAD_LETTER, "at": None,
            "bytes": len(raw), "undecodable": True}
