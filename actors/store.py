"""Redis storage of channel state, for the RedisPersistence actor (the only user of this module).

Per channel (keys from :mod:`protocol.keys`):
    * ``message_queue:open:<ch>``: list of the open batch's messages (``OpenEntry``: message + arrival time);
    * ``message_queue:redis:<ch>``: list of finished items (``QueueItem``), head first;
    * ``message_queue:processing:<ch>``: list holding the one item in flight until its processor answers;
    * ``message_queue:dead:<ch>``: list of stored entries that could not be decoded, with the reason.
The set ``message_queue:index:channels`` lists every channel that may hold state (no ``KEYS`` scans), and
``message_queue:index:epoch`` is written once: if it disappears while we run, Redis lost data.

Every batch of operations is applied in one MULTI/EXEC transaction, so a crash leaves either all of a batch
or none of it. Values are encoded with :mod:`protocol.codec`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from typing import Sequence, TypeVar

import redis

from actors.journal import (
    DURABILITY_SETTINGS,
    AppendOpen,
    ChannelSnapshot,
    ClearQueue,
    FinishInFlight,
    Op,
    PushHead,
    PushTail,
    TakeHead,
    durability_problems,
    refuse_unsafe,
)
from protocol import codec, keys
from protocol.errors import DecodeError, RedisDataLost
from protocol.values import DeadLetter, OpenEntry, QueueItem

log = logging.getLogger(__name__)

_V = TypeVar("_V", QueueItem, OpenEntry)

_MARKER_TTL = 7 * 24 * 3600  # seconds a store's transaction marker outlives its last write


# -- the store ----------------------------------------------------------------------------------------------


class RedisStore:
    """Applies operations to Redis and loads channel state back. Blocking; one owner."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._epoch: bytes | None = None
        # Each transaction also sets this store's marker to a fresh token, so that after a failure whose
        # outcome is unknown (the connection broke after EXEC was sent) the retry can tell whether it ran.
        # Under ``index:``, which is no channel role: it cannot collide with a channel's key.
        self._marker = keys.writer_key(uuid.uuid4().hex)
        self._unsure: tuple[bytes, int] | None = None  # (token, operations) of a transaction that may have run

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5))

    def close(self) -> None:
        self._redis.close()

    # -- safety ---------------------------------------------------------------------------------------------

    def durability_problems(self) -> list[str]:
        """Reasons this server could silently lose acknowledged writes (empty when it is safe)."""
        config: dict[str, str] = {}
        try:
            for name in DURABILITY_SETTINGS:
                config.update((str(k), str(v)) for k, v in self._redis.config_get(name).items())
        except redis.ResponseError as exc:
            return [f"cannot read the server's persistence settings with CONFIG GET ({exc})"]
        return durability_problems(config)

    def check_durability(self, allow_volatile: bool) -> None:
        """Refuse a server that could lose acknowledged data, unless ``allow_volatile`` (then warn).

        Raises:
            UnsafeRedis: naming every problem found.
        """
        refuse_unsafe(self.durability_problems(), allow_volatile, "persist to", log)

    def open_epoch(self) -> bytes:
        """Read (or on a fresh server, write) the epoch marker.

        Raises:
            RedisDataLost: when channel state exists but the marker does not (Redis lost part of its data).
        """
        epoch = self._get_bytes(keys.EPOCH)
        if epoch is None:
            if self._redis.scard(keys.CHANNEL_INDEX):
                raise RedisDataLost(
                    f"{keys.EPOCH} is missing but {keys.CHANNEL_INDEX} is not: Redis lost part of its data"
                )
            self._redis.set(keys.EPOCH, f"{time.time():.6f}:{uuid.uuid4().hex}", nx=True)
            epoch = self._get_bytes(keys.EPOCH)
        assert epoch is not None
        self._epoch = epoch
        return epoch

    def _get_bytes(self, key: str) -> bytes | None:
        value = self._redis.get(key)
        assert value is None or isinstance(value, bytes)  # the client is made without decode_responses
        return value

    # -- writing --------------------------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in order, in one transaction.

        After a call raised, the next call must begin with the same operations (the caller retries what it
        holds, plus what came since): a transaction can run although its reply was lost, and the operations
        it did apply are then skipped, never applied twice.

        Raises:
            RedisDataLost: if the epoch marker vanished or changed (Redis restarted without our data).
            redis.RedisError: when Redis cannot be reached; ``ops`` may or may not have been applied.
        """
        ops = self._skip_applied(ops)
        if not ops:
            return
        token = uuid.uuid4().hex.encode()
        pipe = self._redis.pipeline(transaction=True)
        channels: set[str] = set()
        # Consecutive appends to one list become one RPUSH: a burst of a channel costs one command.
        pushing: str | None = None
        values: list[bytes] = []

        def push(key: str | None, value: bytes | None = None) -> None:
            nonlocal pushing
            if key != pushing and pushing is not None and values:
                pipe.rpush(pushing, *values)
                values.clear()
            pushing = key
            if value is not None:
                values.append(value)

        for op in ops:
            channel = op.channel_id
            channels.add(channel)
            if isinstance(op, AppendOpen):
                push(keys.channel_key(keys.OPEN_BATCH, channel), codec.encode(op.entry))
                continue
            if isinstance(op, PushTail):
                push(keys.queue_key(channel), codec.encode(op.item))
                if op.closes_open:
                    push(None)
                    pipe.delete(keys.channel_key(keys.OPEN_BATCH, channel))
                continue
            push(None)
            if isinstance(op, PushHead):
                pipe.lpush(keys.queue_key(channel), codec.encode(op.item))
            elif isinstance(op, TakeHead):
                pipe.lmove(keys.queue_key(channel), keys.channel_key(keys.PROCESSING, channel), "LEFT", "RIGHT")
            elif isinstance(op, FinishInFlight):
                pipe.delete(keys.channel_key(keys.PROCESSING, channel))
            elif isinstance(op, ClearQueue):
                pipe.delete(keys.queue_key(channel))
            else:  # pragma: no cover - Op is a closed union
                raise TypeError(f"unknown operation {type(op).__name__}")
        push(None)
        pipe.sadd(keys.CHANNEL_INDEX, *channels)
        pipe.set(self._marker, token, ex=_MARKER_TTL)
        pipe.get(keys.EPOCH)
        self._unsure = (token, len(ops))
        results = pipe.execute()
        if self._epoch is not None and results[-1] != self._epoch:
            raise RedisDataLost(
                f"{keys.EPOCH} changed from {self._epoch!r} to {results[-1]!r}: Redis lost the data written "
                "before (restarted without persistence, flushed, or failed over to an empty replica)"
            )
        self._unsure = None

    def _skip_applied(self, ops: Sequence[Op]) -> Sequence[Op]:
        """``ops`` without those the last, failed transaction applied after all (its marker is set)."""
        if self._unsure is None:
            return ops
        token, count = self._unsure
        if self._get_bytes(self._marker) == token:  # a RedisError here leaves it unsure for the next call
            log.warning("a transaction of %d operations ran although its reply was lost; not applying it twice",
                        count)
            ops = ops[count:]
        self._unsure = None
        return ops

    # -- reading --------------------------------------------------------------------------------------------

    def load(self) -> list[ChannelSnapshot]:
        """Load every persisted channel, putting each item in flight back at its queue's head with its
        attempt raised. Entries that fail to decode move to the channel's dead-letter list."""
        members: set[bytes] = self._redis.smembers(keys.CHANNEL_INDEX)  # type: ignore[assignment]
        channels = sorted(m.decode("utf-8") for m in members)
        pipe = self._redis.pipeline(transaction=False)
        for channel in channels:
            pipe.lrange(keys.channel_key(keys.PROCESSING, channel), 0, -1)
            pipe.lrange(keys.queue_key(channel), 0, -1)
            pipe.lrange(keys.channel_key(keys.OPEN_BATCH, channel), 0, -1)
        raw = pipe.execute()
        snapshots = []
        fix = self._redis.pipeline(transaction=True)
        empty = []
        for index, channel in enumerate(channels):
            in_flight_raw, queue_raw, open_raw = raw[3 * index : 3 * index + 3]
            in_flight = self._decode_all(channel, keys.PROCESSING, in_flight_raw, QueueItem, fix)
            waiting = self._decode_all(channel, keys.QUEUE, queue_raw, QueueItem, fix)
            entries = self._decode_all(channel, keys.OPEN_BATCH, open_raw, OpenEntry, fix)
            if in_flight:
                redelivered = [replace(item, attempt=item.attempt + 1) for item in in_flight]
                fix.delete(keys.channel_key(keys.PROCESSING, channel))
                for item in reversed(redelivered):
                    fix.lpush(keys.queue_key(channel), codec.encode(item))
                waiting = redelivered + waiting
            if not waiting and not entries:
                empty.append(channel)
                continue
            snapshots.append(ChannelSnapshot(channel, tuple(waiting), tuple(entries)))
        if empty:
            fix.srem(keys.CHANNEL_INDEX, *empty)
        fix.execute()
        return snapshots

    def _decode_all(
        self, channel: str, role: str, entries: list[bytes], kind: type[_V], fix: redis.client.Pipeline
    ) -> list[_V]:
        decoded: list[_V] = []
        bad = False
        for data in entries:
            try:
                decoded.append(codec.decode(data, kind))
            except DecodeError as exc:
                bad = True
                log.error("channel %r: a stored %s entry could not be decoded (%s); moved to dead letters",
                          channel, role, exc)
                letter = DeadLetter(role, str(exc)[:4096], data[: codec.MAX_FRAME_BYTES // 2], time.time())
                fix.rpush(keys.channel_key(keys.DEAD_LETTER, channel), codec.encode(letter))
        if bad:
            key = keys.channel_key(role, channel)
            fix.delete(key)
            if decoded:
                fix.rpush(key, *(codec.encode(value) for value in decoded))
        return decoded

