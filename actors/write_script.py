"""The one Lua script that writes a batch of journal operations to Redis, and the arguments it takes.

:class:`~actors.store.RedisStore` sends every batch of operations as one call of :data:`APPLY`, which Redis runs
whole and appends to its AOF as one transaction; :func:`script_operations` turns the operations into its
arguments, encoding each value once (a closed batch is joined from the frames its messages got as they joined
the open batch) and setting aside, alone, a value that cannot be encoded.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Sequence

from actors.journal import (
    AppendIds,
    AppendOpen,
    ClearQueue,
    ClearRetry,
    FinishInFlight,
    Op,
    PushDead,
    PushHead,
    PushTail,
    RemoveDead,
    ReplaceIds,
    ReplaceWaiting,
    RetryWait,
    SetRetry,
    TakeHead,
)
from protocol import codec, keys
from protocol.errors import DecodeError
from protocol.values import DeadLetter, MessageBatch, QueuedMessage, QueueItem

log = logging.getLogger("actors.store")

# By channel, the frame of each message of its open batch (by the message's id(); the message is kept, so its
# id cannot be reused while it is here), as encoded for AppendOpen: dropped when the batch closes.
OpenFrames = dict[str, dict[int, tuple[QueuedMessage, bytes]]]

# Applies a batch of operations, atomically, if the epoch marker is what the caller read at start and the caller
# still holds the writer lease. Redis runs a script whole, and appends its writes to the AOF as one transaction.
# KEYS: lease, holder, epoch, channel index, this store's marker, then every key the operations name.
# ARGV: our lease value, the epoch, a fresh marker token, the marker's TTL (s), the lease (ms), then the
# operations, each a code and its arguments (k: a key's index in KEYS), last 's' and the channel ids:
#   r k n v1..vn: RPUSH    l k v: LPUSH    m k1 k2: LMOVE k1 LEFT -> k2 RIGHT    d k: DEL
#   x k v: LREM k 1 v (the first entry equal to v)    v k v: SET
#   s id1..idn: SADD to the index (every argument after 's' is a channel id, whatever it reads)
# Returns {'ok'}, {'taken back'} (the lease had expired with nobody else taking it: taken back, then
# applied), {'epoch', the marker found} or {'lost', the lease's value, its PTTL}: then nothing was written.
APPLY = """
local epoch = redis.call('GET', KEYS[3])
if ARGV[2] ~= '' and epoch ~= ARGV[2] then
    return {'epoch', epoch or ''}
end
local lease = redis.call('GET', KEYS[1])
local outcome = 'ok'
if lease ~= ARGV[1] then
    if lease or redis.call('GET', KEYS[2]) ~= ARGV[1] then
        return {'lost', lease or '', redis.call('PTTL', KEYS[1])}
    end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
    outcome = 'taken back'
end
-- unpack() puts its values on Lua's C stack (about 8,000 slots): long runs go in slices
local function each_slice(first, last, call)
    while first <= last do
        local upto = math.min(last, first + 999)
        call(first, upto)
        first = upto + 1
    end
end
local i, n = 6, #ARGV
while i <= n do
    local op = ARGV[i]
    if op == 'r' then
        local key, last = KEYS[tonumber(ARGV[i + 1])], i + 2 + tonumber(ARGV[i + 2])
        each_slice(i + 3, last, function(a, b) redis.call('RPUSH', key, unpack(ARGV, a, b)) end)
        i = last + 1
    elseif op == 'l' then
        redis.call('LPUSH', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
        i = i + 3
    elseif op == 'm' then
        redis.call('LMOVE', KEYS[tonumber(ARGV[i + 1])], KEYS[tonumber(ARGV[i + 2])], 'LEFT', 'RIGHT')
        i = i + 3
    elseif op == 'x' then
        redis.call('LREM', KEYS[tonumber(ARGV[i + 1])], 1, ARGV[i + 2])
        i = i + 3
    elseif op == 'v' then
        redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
        i = i + 3
    elseif op == 'd' then
        redis.call('DEL', KEYS[tonumber(ARGV[i + 1])])
        i = i + 2
    elseif op == 's' then
        each_slice(i + 1, n, function(a, b) redis.call('SADD', KEYS[4], unpack(ARGV, a, b)) end)
        i = n + 1
    else
        return redis.error_reply('unknown operation code ' .. op)
    end
end
redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4])
return {outcome}
"""

# Operation codes of the APPLY script (one byte each; see its comment for their arguments).
_RPUSH, _LPUSH, _LMOVE, _DEL, _INDEX, _LREM, _SET = b"r", b"l", b"m", b"d", b"s", b"x", b"v"


def script_operations(
    ops: Sequence[Op], script_keys: list[str], args: list[bytes | str | int], frames: OpenFrames
) -> None:
    """Append ``ops`` to the arguments of the ``APPLY`` script: the keys they name to ``script_keys`` (each
    once, referred to by its 1-based index there), the operations, then the channel ids for the index, to
    ``args``. Consecutive appends to one list become one RPUSH: a burst of a channel costs one command.

    ``frames`` keeps the frame of each open-batch message, by channel, so that the closed batch is joined from
    them (:func:`codec.encode_item_of_frames`) instead of encoding every message a second time.

    A value that cannot be encoded (a message the edge checks would have refused, or whose fields changed
    since) fails alone: it is logged, set aside as a :class:`DeadLetter` in its channel's dead-letter list,
    and the other operations, of its channel and of every other, are written as usual. Never raises for a
    value."""
    index: dict[str, int] = {}

    def key(name: str) -> int:
        number = index.get(name)
        if number is None:
            script_keys.append(name)
            number = index[name] = len(script_keys)
        return number

    channels: dict[str, None] = {}
    pushing: str | None = None  # the list the values below are appended to
    values: list[bytes] = []
    dead: list[tuple[str, bytes]] = []  # (channel, DeadLetter frame) of each value that could not be encoded

    def item_frame(item: QueueItem, encode: Callable[[QueueItem], bytes]) -> bytes:
        """The item's frame; for an item that cannot be encoded, its dead letter's frame, which takes the
        item's place in its list (so that moves of the list's head still address the right entries) and
        goes to the dead letters too. Loading skips such a placeholder."""
        try:
            return encode(item)
        except Exception as exc:  # caller data: whatever its encoding raises, it fails alone
            letter = _set_aside(item.channel_id, keys.QUEUE, item, exc)
            dead.append((item.channel_id, letter))
            return letter

    def push(name: str | None) -> None:
        nonlocal pushing
        if name != pushing:
            if values and pushing is not None:
                args.extend((_RPUSH, key(pushing), len(values)))
                args.extend(values)
                values.clear()
            pushing = name

    for op in ops:
        channel = op.channel_id
        channels[channel] = None
        if isinstance(op, AppendOpen):
            try:
                entry, message_frame = codec.encode_open_entry(op.entry)
            except Exception as exc:  # caller data: whatever its encoding raises, it fails alone
                dead.append((channel, _set_aside(channel, keys.OPEN_BATCH, op.entry.message, exc)))
                continue  # the open list is never addressed by position: leaving it out is enough
            push(keys.channel_key(keys.OPEN_BATCH, channel))
            values.append(entry)
            if message_frame is not None:  # keyed by identity: a retried AppendOpen replaces its own frame
                message = op.entry.message
                frames.setdefault(channel, {})[id(message)] = (message, message_frame)
            continue
        if isinstance(op, PushTail):
            push(keys.queue_key(channel))
            if not op.closes_open:
                values.append(item_frame(op.item, codec.encode))
                continue
            closed_frames = frames.pop(channel, None)
            values.append(item_frame(op.item, lambda item: _encode_closed(op, closed_frames)))
            push(None)
            args.extend((_DEL, key(keys.channel_key(keys.OPEN_BATCH, channel))))
            continue
        if isinstance(op, AppendIds):
            push(keys.channel_key(keys.SEEN_IDS, channel))
            values.extend(codec.encode(seen) for seen in op.ids)
            continue
        if isinstance(op, PushDead):
            push(keys.channel_key(keys.DEAD_LETTER, channel))
            try:
                values.append(codec.encode(op.letter))
            except Exception as exc:  # caller data: its item fails alone, set aside as its own repr
                values.append(_set_aside(channel, keys.DEAD_LETTER, op.letter, exc))
            continue
        push(None)
        if isinstance(op, ReplaceIds):
            ids_key = key(keys.channel_key(keys.SEEN_IDS, channel))
            args.extend((_DEL, ids_key))
            if op.ids:
                args.extend((_RPUSH, ids_key, len(op.ids)))
                args.extend(codec.encode(seen) for seen in op.ids)
            continue
        if isinstance(op, ReplaceWaiting):
            frames.pop(channel, None)  # the open batch is written whole again
            queue = key(keys.queue_key(channel))
            args.extend((_DEL, queue))
            if op.items:
                args.extend((_RPUSH, queue, len(op.items)))
                args.extend(item_frame(item, codec.encode) for item in op.items)
            open_list = key(keys.channel_key(keys.OPEN_BATCH, channel))
            args.extend((_DEL, open_list))
            entries: list[bytes] = []
            for open_entry in op.open_entries:
                try:
                    entries.append(codec.encode(open_entry))
                except Exception as exc:  # caller data: it fails alone, as in AppendOpen
                    dead.append((channel, _set_aside(channel, keys.OPEN_BATCH, open_entry.message, exc)))
            if entries:
                args.extend((_RPUSH, open_list, len(entries)))
                args.extend(entries)
            continue
        if isinstance(op, PushHead):
            args.extend((_LPUSH, key(keys.queue_key(channel)), item_frame(op.item, codec.encode)))
        elif isinstance(op, TakeHead):
            args.extend((_LMOVE, key(keys.queue_key(channel)), key(keys.channel_key(keys.PROCESSING, channel))))
        elif isinstance(op, FinishInFlight):
            args.extend((_DEL, key(keys.channel_key(keys.PROCESSING, channel))))
        elif isinstance(op, ClearQueue):
            args.extend((_DEL, key(keys.queue_key(channel))))
        elif isinstance(op, RemoveDead):
            dead_key = key(keys.channel_key(keys.DEAD_LETTER, channel))
            for gone in op.letters:
                try:
                    frame = codec.encode(gone)
                except Exception:  # it was stored as its set-aside placeholder, which stays
                    continue
                args.extend((_LREM, dead_key, frame))
        elif isinstance(op, SetRetry):
            args.extend((_SET, key(keys.channel_key(keys.RETRY, channel)), encode_retry(op.wait)))
        elif isinstance(op, ClearRetry):
            args.extend((_DEL, key(keys.channel_key(keys.RETRY, channel))))
        else:  # pragma: no cover - Op is a closed union
            raise TypeError(f"unknown operation {type(op).__name__}")
    for channel, letter in dead:
        push(keys.channel_key(keys.DEAD_LETTER, channel))
        values.append(letter)
    push(None)
    args.append(_INDEX)
    args.extend(channels)


def encode_retry(wait: RetryWait) -> bytes:
    """The stored form of a retry's wait: JSON, readable with ``redis-cli``."""
    return json.dumps(
        {"item_id": wait.item_id, "due_at": wait.due_at, "first_failed_at": wait.first_failed_at}
    ).encode("utf-8")


def decode_retry(data: bytes) -> RetryWait:
    """The wait :func:`encode_retry` stored.

    Raises:
        DecodeError: naming what is wrong with ``data``.
    """
    try:
        fields = json.loads(data)
        wait = RetryWait(str(fields["item_id"]), float(fields["due_at"]), float(fields["first_failed_at"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(f"a stored retry wait must be JSON with item_id, due_at, first_failed_at: {exc}") from exc
    return wait


def is_set_aside(data: bytes) -> bool:
    """Whether a stored entry is the placeholder of an item that could not be encoded (its dead letter)."""
    try:
        codec.decode(data, DeadLetter)
    except DecodeError:
        return False
    return True


def _encode_closed(op: PushTail, frames: dict[int, tuple[QueuedMessage, bytes]] | None) -> bytes:
    """The frame of the item an open batch closed into, joined from its messages' frames when every one of
    them is known (a batch restored from Redis, or a message with extra fields, is encoded whole)."""
    payload = op.item.payload
    if frames and isinstance(payload, MessageBatch):
        known = []
        for message in payload.messages:
            found = frames.get(id(message))
            if found is None or found[0] is not message:
                break
            known.append(found[1])
        else:
            joined = codec.encode_item_of_frames(op.item, known)
            if joined is not None:
                return joined
    return codec.encode(op.item)


_DEAD_DATA_CHARS = 64 * 1024  # of the repr kept as a dead letter's data, for a value that could not be encoded


def _set_aside(channel: str, role: str, value: object, exc: Exception) -> bytes:
    """Log that ``value`` (bound for ``role`` of ``channel``) could not be encoded; the frame of its
    :class:`DeadLetter`, whose data is the value's repr (UTF-8, at most 64 K characters): it has no bytes."""
    reason = f"could not be encoded for storage: {type(exc).__name__}: {_shown(exc, str)}"
    log.error("channel %r: a %s value %s; set aside in its dead letters", channel, role, reason)
    letter = DeadLetter(
        role,
        _plain_text(reason, 4096),
        _plain_text(_shown(value, repr), _DEAD_DATA_CHARS).encode("utf-8"),
        time.time(),
    )
    return codec.encode(letter)


def _shown(value: object, show: Callable[[object], str]) -> str:
    try:
        return show(value)
    except Exception as exc:  # the str or repr of caller data is caller code too
        return f"<{type(value).__name__} whose {show.__name__} failed: {type(exc).__name__}>"


def _plain_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with anything UTF-8 cannot hold (lone surrogates) escaped."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
