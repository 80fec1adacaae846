"""``admin --redis URL`` (and ``top --redis URL``) on the channels of distributed mode (``serve --distributed``,
``MessageQueue(redis=..., event_bus=...)``), read straight from their keys (``message_queue:dist:...``, see
:mod:`protocol.keys`).

A distributed channel's row: ``open_batch_size`` (messages of its open batch), ``batches_published`` (since
its state was made in Redis), ``deadline_in_s`` (when its open batch closes, from now; negative: overdue),
``oldest_age_s`` (age of the open batch's first message), and the fields every row has (``waiting`` 0,
``in_flight`` False, ``dead_letters`` 0, ``paused`` False: published batches belong to the event bus's
consumers, and distributed mode has no pause). Times are Redis server time, as the scripts use.

The mutations refuse with a reason (:data:`UNAVAILABLE`).
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from protocol.keys import (
    DIST_DEADLINES,
    DIST_MESSAGES,
    DIST_STATE,
    channel_of_tag,
    channel_tag,
    dist_key_of_tag,
)

MAX_ROWS: Final = 10_000  # channels with an open batch read for one ``channels`` call

UNAVAILABLE: Final = {
    "pause": "the nodes batch in Redis scripts, which have no pause",
    "resume": "the nodes batch in Redis scripts, which have no pause",
    "clear": "the published batches belong to the event bus's consumers, and an open batch is only ever "
             "published",
    # The stream's readers accept the reason "flushed" (protocol.stream.REASONS is the core's vocabulary), but
    # no script publishes an open batch early yet.
    "flush": "no script publishes an open batch before its deadline yet; it closes at its deadline",
    "dead-letters": "a distributed channel keeps no dead letters (a relay's undecodable outbox entries are in "
                    "message_queue:dist:dead)",
}


class Refused(Exception):
    """The command is not available on a distributed channel; the message says why."""


def _server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _row(channel: str, size: int, state: list[bytes | None], score: float | None, now_ms: int) -> dict[str, Any]:
    opened, seq, base = state
    first_ms: int | None = None
    if opened is not None:
        first_ms = int(opened.split(b":", 1)[0])
    return {
        "channel": channel,
        "mode": "distributed",
        "open_batch_size": size,
        "waiting": 0,
        "in_flight": False,
        "attempt": None,
        "oldest_age_s": round(max(0, now_ms - first_ms) / 1000, 3) if first_ms is not None and size else None,
        "deadline_in_s": round((score - now_ms) / 1000, 3) if score is not None else None,
        "batches_published": max(0, int(seq or 0) - int(base or 0)),
        "dead_letters": 0,
        "paused": False,
    }


def channel_rows(client: Any) -> tuple[list[dict[str, Any]], int]:
    """The rows of the distributed channels with an open batch (soonest deadline first, at most
    :data:`MAX_ROWS`) and how many there are."""
    total = int(client.zcard(DIST_DEADLINES))
    if not total:
        return [], 0
    entries = client.zrange(DIST_DEADLINES, 0, MAX_ROWS - 1, withscores=True)
    tags = [(raw.decode("ascii", "replace"), float(score)) for raw, score in entries]
    pipe = client.pipeline(transaction=False)
    for tag, _ in tags:
        pipe.llen(dist_key_of_tag(DIST_MESSAGES, tag))
        pipe.hmget(dist_key_of_tag(DIST_STATE, tag), "o", "seq", "b")
    replies = pipe.execute()
    now_ms = _server_ms(client)
    rows = []
    for i, (tag, score) in enumerate(tags):
        try:
            channel = channel_of_tag(tag)
        except ValueError:
            continue  # not a channel's tag: nothing a row could name
        rows.append(_row(channel, int(replies[2 * i]), replies[2 * i + 1], score, now_ms))
    return rows, total


def channel_row(client: Any, channel: str) -> dict[str, Any] | None:
    """The row of distributed ``channel``, or None when Redis holds no distributed state of it."""
    tag = channel_tag(channel)
    pipe = client.pipeline(transaction=False)
    pipe.llen(dist_key_of_tag(DIST_MESSAGES, tag))
    pipe.hmget(dist_key_of_tag(DIST_STATE, tag), "o", "seq", "b")
    pipe.zscore(DIST_DEADLINES, tag)
    size, state, score = pipe.execute()
    if not size and all(value is None for value in state):
        return None
    return _row(channel, int(size), state, None if score is None else float(score), _server_ms(client))


def refuse(command: str) -> NoReturn:
    """Raise :class:`Refused` for a command a distributed channel does not offer.

    Raises:
        Refused: naming the command and why.
    """
    raise Refused(f"distributed mode: {command} is not available ({UNAVAILABLE[command]})")
