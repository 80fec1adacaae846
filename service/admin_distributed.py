"""``admin --redis URL`` (and ``top --redis URL``) on the channels of distributed mode (``serve --distributed``,
``MessageQueue(redis=..., event_bus=...)``), read straight from their keys (``message_queue:dist:...``, see
:mod:`protocol.keys`) and changed by the ``admin`` script (``message_queue/lua/admin.lua``), one atomic step
per command, safe while any number of nodes run.

A distributed channel's row: ``open_batch_size`` (messages of its open batch), ``batches_published`` (since
its state was made in Redis), ``deadline_in_s`` (when its open batch closes, from now; negative: overdue),
``oldest_age_s`` (age of the open batch's first message), ``waiting`` (batches held while it is paused),
``paused`` (the ``paused`` field of its settings hash ``message_queue:config:<channel>``), and the fields every
row has (``in_flight`` False, ``dead_letters`` 0: published batches belong to the event bus's consumers). Times
are Redis server time, as the scripts use. ``channels`` lists the channels with an open batch and the paused
ones.

The mutations:
    * ``flush``: publish the open batch now, reason ``flushed``, exactly as its deadline would (to the stream of
      the node that opened it; held instead while paused). ``{"channel", "flushed"}``: False when none was open.
    * ``clear``: discard what the channel has not published: its open batch (and deadline) and the batches held
      while paused. Published batches belong to the stream's consumers and are not touched.
      ``{"channel", "removed"}``: the messages discarded.
    * ``pause``: the channel keeps accepting and batching, but every batch that closes (and every
      ``enqueue_front``) is held in Redis instead of published. ``{"channel", "paused": True}``.
    * ``resume``: publish the held batches in order, then clear the flag, in one step.
      ``{"channel", "paused": False, "published"}``: the batches published.

``dead-letters`` is refused (:data:`UNAVAILABLE`): a distributed channel keeps none.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from message_queue import scripts
from message_queue.distributed.operations import Names
from protocol.keys import (
    DIST_DEADLINES,
    DIST_HELD,
    DIST_MESSAGES,
    DIST_PAUSED,
    DIST_STATE,
    INBOUND_STREAM,
    channel_of_tag,
    channel_tag,
    config_key,
    dist_key_of_tag,
)

MAX_ROWS: Final = 10_000  # channels with an open batch (and paused ones) read for one ``channels`` call

BY: Final = "admin"  # the node id in the ``by`` field of what an admin command publishes
IDLE_MS: Final = round(scripts.IDLE_TTL * 1000)  # the idle ttl a channel's state gets after an admin command
_ATTEMPTS: Final = 5  # reads of a channel's streams before a flush or resume gives up (they keep changing)

UNAVAILABLE: Final = {
    "dead-letters": "a distributed channel keeps no dead letters (a relay's undecodable outbox entries are in "
                    "message_queue:dist:dead)",
}


class Refused(Exception):
    """The command is not available on a distributed channel; the message says why."""


def _server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _row(channel: str, size: int, state: list[bytes | None], score: float | None, now_ms: int, held: int,
         paused: bytes | None) -> dict[str, Any]:
    opened, seq, base, _ = state
    first_ms: int | None = None
    if opened is not None:
        first_ms = int(opened.split(b":", 1)[0])
    return {
        "channel": channel,
        "mode": "distributed",
        "open_batch_size": size,
        "waiting": held,
        "in_flight": False,
        "attempt": None,
        "oldest_age_s": round(max(0, now_ms - first_ms) / 1000, 3) if first_ms is not None and size else None,
        "deadline_in_s": round((score - now_ms) / 1000, 3) if score is not None else None,
        "batches_published": max(0, int(seq or 0) - int(base or 0)),
        "dead_letters": 0,
        "paused": paused == b"1",
    }


def _read(pipe: Any, channel: str, tag: str) -> None:
    pipe.llen(dist_key_of_tag(DIST_MESSAGES, tag))
    pipe.hmget(dist_key_of_tag(DIST_STATE, tag), "o", "seq", "b", "ch")  # ch: set when a batch opened
    pipe.zscore(DIST_DEADLINES, tag)
    pipe.llen(dist_key_of_tag(DIST_HELD, tag))
    pipe.hget(config_key(channel), "paused")


def _rows(client: Any, channels: list[tuple[str, str]]) -> list[tuple[str, int, list[bytes | None], float | None,
                                                                       int, bytes | None]]:
    pipe = client.pipeline(transaction=False)
    for channel, tag in channels:
        _read(pipe, channel, tag)
    replies = pipe.execute()
    out = []
    for i, (channel, _) in enumerate(channels):
        size, state, score, held, paused = replies[5 * i:5 * i + 5]
        out.append((channel, int(size), state, None if score is None else float(score), int(held), paused))
    return out


def channel_rows(client: Any) -> tuple[list[dict[str, Any]], int]:
    """The rows of the distributed channels with an open batch or paused (soonest deadline first, then the
    paused ones without an open batch; at most :data:`MAX_ROWS`) and how many there are."""
    entries = client.zrange(DIST_DEADLINES, 0, MAX_ROWS - 1, withscores=True)
    tags = [raw.decode("ascii", "replace") for raw, _ in entries]
    listed = set(tags)
    paused = sorted(raw.decode("ascii", "replace") for raw in client.smembers(DIST_PAUSED))
    pipe = client.pipeline(transaction=False)
    for tag in paused:
        pipe.zscore(DIST_DEADLINES, tag)
    closed = [tag for tag, score in zip(paused, pipe.execute()) if score is None]  # paused, no open batch
    tags += [tag for tag in closed if tag not in listed][:max(0, MAX_ROWS - len(tags))]
    total = int(client.zcard(DIST_DEADLINES)) + len(closed)
    channels = []
    for tag in tags:
        try:
            channels.append((channel_of_tag(tag), tag))
        except ValueError:
            continue  # not a channel's tag: nothing a row could name
    if not channels:
        return [], total
    now_ms = _server_ms(client)
    return [_row(channel, size, state, score, now_ms, held, flag)
            for channel, size, state, score, held, flag in _rows(client, channels)], total


def channel_row(client: Any, channel: str) -> dict[str, Any] | None:
    """The row of distributed ``channel``, or None when Redis holds no distributed state of it."""
    ((_, size, state, score, held, paused),) = _rows(client, [(channel, channel_tag(channel))])
    if not size and not held and all(value is None for value in state) and \
            not client.sismember(DIST_PAUSED, channel_tag(channel)):
        return None
    return _row(channel, size, state, score, _server_ms(client), held, paused)


# -- the mutations ---------------------------------------------------------------------------------------------


def _call(client: Any, mode: str, names: Names, streams: tuple[str | bytes, ...] = (), st: bytes = b"",
          now_ms: int | None = None) -> int:
    """Run the admin script in ``mode`` on the channel of ``names``; return its result number."""
    from redis.exceptions import NoScriptError

    keys, args = scripts.admin_call(mode, (names.messages_key, names.state_key, names.config_key, names.held_key),
                                    names.tag_bytes, f"{BY}/{mode}", IDLE_MS, streams, st, now_ms)
    script = scripts.SCRIPTS[scripts.ADMIN]
    try:
        reply = client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.source)
        reply = client.evalsha(script.sha, len(keys), *keys, *args)
    assert isinstance(reply, list) and len(reply) == 2, reply
    return int(reply[1])


def flush(client: Any, channel: str, now_ms: int | None = None) -> dict[str, Any]:
    """Publish ``channel``'s open batch now (reason ``flushed``; held while the channel is paused).

    Raises:
        Refused: if the channel's stream kept changing while it was read.
    """
    names = Names.of(channel)
    for _ in range(_ATTEMPTS):
        st = client.hget(names.state_key, "st") or b""
        stream: str | bytes = st.split(b":", 1)[1] if b":" in st else INBOUND_STREAM
        result = _call(client, "flush", names, (stream,), st, now_ms)
        if result >= 0:
            return {"channel": channel, "flushed": result == 1}
    raise Refused(f"distributed mode: the stream of channel {channel!r} kept changing; flush not done")


def clear(client: Any, channel: str, now_ms: int | None = None) -> dict[str, Any]:
    """Discard ``channel``'s open batch (and its deadline) and its held batches; published ones stay."""
    return {"channel": channel, "removed": _call(client, "clear", Names.of(channel), now_ms=now_ms)}


def pause(client: Any, channel: str, now_ms: int | None = None) -> dict[str, Any]:
    """Hold ``channel``'s batches instead of publishing them until :func:`resume`."""
    _call(client, "pause", Names.of(channel), now_ms=now_ms)
    return {"channel": channel, "paused": True}


def resume(client: Any, channel: str, now_ms: int | None = None) -> dict[str, Any]:
    """Publish ``channel``'s held batches in order and publish again as usual.

    Raises:
        Refused: if the held batches kept changing while they were read, or one cannot be read.
    """
    import msgpack

    names = Names.of(channel)
    for _ in range(_ATTEMPTS):
        try:
            streams = {msgpack.unpackb(entry, raw=True)[0] for entry in client.lrange(names.held_key, 0, -1)}
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise Refused(f"distributed mode: a held batch of channel {channel!r} cannot be read ({exc}); "
                          f"nothing published") from exc
        result = _call(client, "resume", names, tuple(sorted(streams)), now_ms=now_ms)
        if result >= 0:
            return {"channel": channel, "paused": False, "published": result}
    raise Refused(f"distributed mode: the held batches of channel {channel!r} kept changing; resume not done")


MUTATIONS: Final = {"flush": flush, "clear": clear, "pause": pause, "resume": resume}


def refuse(command: str) -> NoReturn:
    """Raise :class:`Refused` for a command a distributed channel does not offer.

    Raises:
        Refused: naming the command and why.
    """
    raise Refused(f"distributed mode: {command} is not available ({UNAVAILABLE[command]})")
