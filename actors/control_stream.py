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

Every function here blocks on Redis; the persistence actor calls them on its I/O thread.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from protocol import codec, keys
from protocol.errors import DecodeError
from protocol.values import OpenEntry, QueueItem

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


@dataclass(frozen=True, slots=True)
class Replayable:
    """The dead letters of a channel read for a replay: the decodable ones (as items or open-batch entries),
    how many could not be decoded (skipped) and how many entries were read (to remove them afterwards)."""

    channel: str
    items: tuple[QueueItem, ...]
    entries: tuple[OpenEntry, ...]
    skipped: int
    read: int


def read_dead_letters(client: redis.Redis, channel: str) -> Replayable:
    """The channel's dead letters, decoded for a replay: a queued or in-flight item's data as a
    :class:`QueueItem` of this channel, an open batch's as an :class:`OpenEntry`; anything else is skipped."""
    raws: list[bytes] = client.lrange(keys.channel_key(keys.DEAD_LETTER, channel), 0, -1)  # type: ignore[assignment]
    items: list[QueueItem] = []
    entries: list[OpenEntry] = []
    skipped = 0
    for raw in raws:
        try:
            letter = codec.decode_dead_letter(raw)
            if letter.role == keys.OPEN_BATCH:
                entry = codec.decode(letter.data, OpenEntry)
                if entry.message.channel_id != channel:
                    raise DecodeError(f"a message of channel {entry.message.channel_id!r}")
                entries.append(entry)
            elif letter.role in (keys.QUEUE, keys.PROCESSING):
                item = codec.decode(letter.data, QueueItem)
                if item.channel_id != channel:
                    raise DecodeError(f"an item of channel {item.channel_id!r}")
                items.append(item)
            else:
                raise DecodeError(f"role {letter.role!r}")
        except DecodeError as exc:
            log.info("dead letter of channel %r not replayed: %s", channel, exc)
            skipped += 1
    return Replayable(channel, tuple(items), tuple(entries), skipped, len(raws))


def drop_dead_letters(client: redis.Redis, channel: str, count: int) -> None:
    """Remove the first ``count`` dead letters of ``channel`` (those a replay read; later ones stay)."""
    if count > 0:
        client.ltrim(keys.channel_key(keys.DEAD_LETTER, channel), count, -1)
