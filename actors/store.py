"""Redis storage of channel state, for the RedisPersistence actor (the only user of this module).

Per channel (keys from :mod:`protocol.keys`):
    * ``message_queue:open:<ch>``: list of the open batch's messages (``OpenEntry``: message + arrival time);
    * ``message_queue:redis:<ch>``: list of finished items (``QueueItem``), head first;
    * ``message_queue:processing:<ch>``: list holding the one item in flight until its processor answers;
    * ``message_queue:dead:<ch>``: list of ``DeadLetter`` frames, oldest first: items that failed their last
      attempt, and stored entries that could not be decoded (or values that could not be encoded);
    * ``message_queue:retry:<ch>``: JSON of the head item's retry wait (``RetryWait``: item id, when its
      backoff ends and when its first attempt failed, Unix seconds), stale once that item is gone.
The set ``message_queue:index:channels`` lists every channel that may hold state (no ``KEYS`` scans), and
``message_queue:index:epoch`` is written once: if it disappears while we run, Redis lost data.

One node writes a database at a time. ``message_queue:index:lease`` is its writer lease, a readable string
``host=<host> pid=<pid> taken=<UTC time> start=<process start> token=<random hex>`` set with an expiry of
:data:`~actors.journal.LEASE_SECONDS` (15 s; the persistence actor renews it every third of that), and
``message_queue:index:holder`` holds the same value without expiry: the last node that took the lease.
    * Opening the store takes the lease. If another node holds it, opening fails with :class:`StoreLocked`
      naming the holder and when its lease expires, unless that holder ran on this host (same host name) and
      its process is gone (a crash): then the lease is taken over at once, by compare-and-set on its value.
    * Every write checks both keys first, in the same script, so a write after another node took the lease
      fails with :class:`StoreLocked` instead of writing (fencing). A lease that merely expired (a
      stall, Redis unreachable for longer than the lease) is taken back by the next write or renewal if the
      holder record still names this store: nobody else took it meanwhile.
    * Closing the store releases the lease, if it is still this store's (compare-and-delete).
Taking, renewing and releasing run as small Lua scripts, each atomic.

Every batch of operations is applied by one call of a Lua script (:data:`actors.write_script.APPLY`), which
Redis runs whole and appends to its AOF as one transaction: a crash leaves either all of a batch or none of
it. One call per batch also keeps the client's cost low: a reply per batch, not one per command. Values are
encoded with :mod:`protocol.codec`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Sequence, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from actors.journal import (
    DURABILITY_SETTINGS,
    LEASE_SECONDS,
    ChannelSnapshot,
    Op,
    RetryWait,
    durability_problems,
    refuse_unsafe,
)
from actors.lease import RELEASE, RENEW, TAKE, LeaseHolder, expiry
from actors.write_script import APPLY, OpenFrames, decode_retry, is_set_aside, script_operations
from protocol import codec, keys
from protocol.errors import DecodeError, RedisDataLost, StoreLocked
from protocol.values import DeadLetter, OpenEntry, QueueItem, SeenId

log = logging.getLogger(__name__)

_V = TypeVar("_V", QueueItem, OpenEntry, SeenId)

_MARKER_TTL = 7 * 24 * 3600  # seconds a store's transaction marker outlives its last write

# -- the store ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class PendingWrite:
    """A write :meth:`RedisStore.start_apply` sent, waiting for :meth:`RedisStore.finish_apply`: the script's
    arguments, to run it again on a server that does not know it yet."""

    keys: list[str]
    args: list[bytes | str | int]
    token: bytes = b""  # the marker this write sets
    count: int = 0  # the operations it applies


class AofNotWritten(redis.exceptions.ConnectionError):
    """Redis holds the last write in memory only: it could not write its append-only file."""


class RedisStore:
    """Applies operations to Redis and loads channel state back, while it holds the database's writer lease.
    Blocking; one owner.

    Raises:
        ValueError: if ``lease_seconds`` is not > 0.
    """

    def __init__(self, client: redis.Redis, lease_seconds: float = LEASE_SECONDS) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        self._redis = client
        self._epoch: bytes | None = None
        # Each write also sets this store's marker to a fresh token, so that after a failure whose outcome is
        # unknown (the connection broke after the script call was sent) the retry can tell whether it ran.
        # Under ``index:``, which is no channel role: it cannot collide with a channel's key.
        self._marker = keys.writer_key(uuid.uuid4().hex)
        self._unsure: tuple[bytes, int] | None = None  # (token, operations) of a transaction that may have run
        self._aof_failed = False  # the last write may be in Redis's memory only (its append-only file failed)
        self.lease_seconds = lease_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._lease: bytes | None = None  # our lease value while we hold (or may take back) the lease
        self._lost: StoreLocked | None = None  # set for good once another node took the lease
        self._take = client.register_script(TAKE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._apply_script = client.register_script(APPLY)
        self._open_frames: OpenFrames = {}
        # Writes go over a connection of their own, so one can be sent and its reply read later.
        self._writer: redis.connection.ConnectionInterface = client.connection_pool.make_connection()
        self._pending: PendingWrite | None = None

    @property
    def client(self) -> redis.Redis:
        """The store's Redis client, for other reads and writes of the lease holder (admin commands)."""
        return self._redis

    @classmethod
    def from_url(cls, url: str, lease_seconds: float = LEASE_SECONDS) -> RedisStore:
        # No automatic retry: a write whose reply was lost may have run, and only ``apply`` can tell.
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
        return cls(client, lease_seconds)

    def close(self) -> None:
        """Release the writer lease (if this store still holds it) and disconnect."""
        try:
            self.release_lease()
        except redis.RedisError as exc:
            log.warning("could not release the writer lease (%s); it expires within %g s", exc, self.lease_seconds)
        finally:
            self._writer.disconnect()  # type: ignore[no-untyped-call]
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
        """Take the writer lease (see the module's docstring), then read (or on a fresh server, write) the
        epoch marker.

        Raises:
            StoreLocked: when another node holds the lease.
            RedisDataLost: when channel state exists but the marker does not (Redis lost part of its data).
        """
        self.take_lease()
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

    # -- the writer lease -------------------------------------------------------------------------------------

    def take_lease(self) -> None:
        """Take the database's writer lease for ``lease_seconds``; a lease whose holder ran on this host and
        is gone is taken over at once. Does nothing if this store holds it already.

        Raises:
            StoreLocked: naming the holder, when another node holds it.
        """
        if self._lease is not None:
            return
        me = LeaseHolder.of_this_process()
        value = me.encode()
        expected, previous = b"", None
        for _ in range(5):  # another attempt only when the lease changed hands between two looks
            taken, current, pttl = self._run(self._take, expected, value, self._lease_ms)
            if taken:
                self._lease = value
                if previous is not None:
                    log.warning("took over the writer lease of %s: that process no longer runs", previous.describe())
                return
            holder = LeaseHolder.decode(current)
            if current and (holder is None or not holder.gone()):
                who = holder.describe() if holder is not None else f"an unknown holder ({current[:200]!r})"
                raise StoreLocked(
                    f"another node persists to this Redis database ({who}); {expiry(pttl)}. Only one node may "
                    "persist to a database at a time: stop that node, or give this one another database; if "
                    "that node is gone for good, start this one again once its lease has expired"
                )
            expected, previous = current, holder  # gone (take it over), or free by now
        raise StoreLocked("the writer lease of this Redis database keeps changing hands: is another node starting?")

    def renew_lease(self) -> None:
        """Extend the writer lease to ``lease_seconds`` from now (taking it back if it expired and no other
        node took it meanwhile).

        Raises:
            StoreLocked: when another node took the lease: this store writes nothing more.
            redis.RedisError: when Redis cannot be reached.
        """
        if self._lost is not None:
            raise self._lost
        me = self._held()
        renewed, current, pttl = self._run(self._renew, me, self._lease_ms)
        if renewed == 2:
            log.warning("the writer lease had expired and no other node took it: taken back")
        elif not renewed:
            raise self._lose(current or None, pttl)

    def release_lease(self) -> None:
        """Give the writer lease up, if this store still holds it (compare-and-delete). Writing needs it."""
        me, self._lease = self._lease, None
        if me is not None and self._lost is None:
            self._release(keys=[keys.LEASE, keys.LEASE_HOLDER], args=[me])

    def _held(self) -> bytes:
        if self._lease is None:
            raise RuntimeError("RedisStore used without its writer lease (open_epoch first)")
        return self._lease

    def _run(self, script: redis.commands.core.Script, *args: bytes | int) -> tuple[int, bytes, int]:
        taken, current, pttl = script(keys=[keys.LEASE, keys.LEASE_HOLDER], args=list(args))
        return int(taken), bytes(current), int(pttl)

    def _watch_lease(self, pipe: redis.client.Pipeline) -> None:
        """WATCH the lease keys on ``pipe`` and check that this store may write, then start its MULTI: a
        transaction queued on it runs only if no other node took the lease before its EXEC.

        Raises:
            StoreLocked: when another node took the lease.
            RedisDataLost: if the epoch marker vanished or changed.
        """
        if self._lost is not None:
            raise self._lost
        me = self._held()
        pipe.watch(keys.LEASE, keys.LEASE_HOLDER)  # type: ignore[no-untyped-call]
        values: list[bytes | None] = pipe.mget(keys.LEASE, keys.LEASE_HOLDER, keys.EPOCH)  # type: ignore[assignment]
        lease, holder, epoch = values  # bytes: the client is made without decode_responses
        if self._epoch is not None and epoch != self._epoch:
            raise self._epoch_changed(epoch)
        if lease == me:
            pipe.multi()
            return
        if lease is None and holder == me:
            log.warning("the writer lease had expired and no other node took it: taken back")
            pipe.multi()
            pipe.set(keys.LEASE, me, px=self._lease_ms)
            return
        raise self._lose(lease, self._redis.pttl(keys.LEASE))

    def _lose(self, current: bytes | None, pttl: int) -> StoreLocked:
        """Record for good that another node took the lease; the error that says so."""
        mine = LeaseHolder.decode(self._held())
        holder = LeaseHolder.decode(current) if current is not None else None
        if holder is not None:
            who = f"to another node ({holder.describe()}; {expiry(pttl)})"
        elif current is not None:
            who = f"to an unknown holder ({current[:200]!r})"
        else:
            who = "to another node, which has released it since"
        self._lost = StoreLocked(
            f"this node ({mine.describe() if mine else 'unknown'}) lost the writer lease of its Redis database "
            f"{who}: it stalled or could not reach Redis for longer than the {self.lease_seconds:g} s lease. It "
            "writes nothing more to Redis, so it acknowledges and delivers nothing more: stop it (what it did "
            "not acknowledge was not stored) and let one node persist to the database"
        )
        return self._lost

    def _epoch_changed(self, found: object) -> RedisDataLost:
        return RedisDataLost(
            f"{keys.EPOCH} changed from {self._epoch!r} to {found!r}: Redis lost the data written "
            "before (restarted without persistence, flushed, or failed over to an empty replica)"
        )

    # -- writing --------------------------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in order, atomically (one Lua script call), if this store still holds the writer lease:
        :meth:`start_apply` then :meth:`finish_apply`.

        After a call raised, the next call must begin with the same operations (the caller retries what it
        holds, plus what came since): a call can run although its reply was lost, and the operations it did
        apply are then skipped, never applied twice.

        Raises:
            StoreLocked: if another node took the writer lease (nothing is written, now or later).
            RedisDataLost: if the epoch marker vanished or changed (Redis restarted without our data).
            redis.RedisError: when Redis cannot be reached (``ops`` may or may not have been applied).
        """
        pending = self.start_apply(ops)
        if pending is not None:
            self.finish_apply(pending)

    def start_apply(self, ops: Sequence[Op]) -> PendingWrite | None:
        """Send the write of ``ops`` (see :meth:`apply`) without waiting for Redis; None if there is nothing
        to write. :meth:`finish_apply` must follow before the next write starts: the caller can do other work
        while Redis runs it.

        Raises:
            As :meth:`apply`; if it raises, the write did not start (but may have run, as for :meth:`apply`).
        """
        if self._lost is not None:
            raise self._lost
        if self._pending is not None:
            raise RuntimeError("start_apply called while a write is pending: finish_apply it first")
        me = self._held()
        if self._aof_failed:
            self._check_aof()  # the last write is in Redis's memory only until its append-only file is written
        ops = self._skip_applied(ops)
        if not ops:
            return None
        token = uuid.uuid4().hex.encode()
        script_keys = [keys.LEASE, keys.LEASE_HOLDER, keys.EPOCH, keys.CHANNEL_INDEX, self._marker]
        args: list[bytes | str | int] = [me, self._epoch or b"", token, _MARKER_TTL, self._lease_ms]
        script_operations(ops, script_keys, args, self._open_frames)
        self._unsure = (token, len(ops))
        try:
            self._writer.send_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._apply_script.sha, len(script_keys), *script_keys, *args
            )
        except BaseException:
            self._writer.disconnect()  # type: ignore[no-untyped-call]
            raise
        self._pending = PendingWrite(script_keys, args, token, len(ops))
        return self._pending

    def finish_apply(self, pending: PendingWrite) -> None:
        """Wait for the write :meth:`start_apply` sent and check its outcome.

        Raises:
            As :meth:`apply`.
        """
        if pending is not self._pending:
            raise RuntimeError("finish_apply of a write that is not the pending one")
        self._pending = None
        try:
            reply = self._writer.read_response()
        except redis.exceptions.NoScriptError:  # a new or restarted server: it did not run; load it and run it
            reply = self._apply_script(keys=pending.keys, args=pending.args)
        except BaseException:
            self._writer.disconnect()  # type: ignore[no-untyped-call]
            raise
        self._unsure = None  # the reply is in: the script wrote all (ok, taken back) or nothing (lost, epoch)
        outcome, *details = reply
        if outcome == b"lost":
            raise self._lose(details[0] or None, int(details[1]))
        if outcome == b"epoch":
            raise self._epoch_changed(details[0] or None)
        if outcome == b"taken back":
            log.warning("the writer lease had expired and no other node took it: taken back")
        self._unsure = (pending.token, pending.count)  # until Redis's append-only file holds it
        self._aof_failed = True
        self._check_aof()
        self._unsure = None

    def _check_aof(self) -> None:
        """Return once Redis wrote its append-only file after the last write's reply (or keeps none).

        Redis answers a write whose append to the file failed (a full disk) like any other, and refuses only
        the writes after it: such a write lives in Redis's memory alone, and a restart of Redis before the
        file is written again loses it. So a write counts as stored only once ``aof_last_write_status``, read
        after its reply, is ``ok``. Until then the write stays unsure: a retry skips what it applied and asks
        again.

        Raises:
            AofNotWritten: while Redis cannot write its append-only file.
        """
        info = self._redis.info("persistence")
        if info.get("aof_enabled") and info.get("aof_last_write_status") != "ok":
            raise AofNotWritten(
                f"Redis could not write its append-only file (aof_last_write_status "
                f"{info.get('aof_last_write_status')!r}: a full disk?); the write is held until it can"
            )
        self._aof_failed = False

    def _skip_applied(self, ops: Sequence[Op]) -> Sequence[Op]:
        """``ops`` without those the last, failed transaction applied after all (its marker is set)."""
        if self._unsure is None:
            return ops
        token, count = self._unsure
        if self._get_bytes(self._marker) == token:  # a RedisError here leaves it unsure for the next call
            log.warning("a write of %d operations had run (its reply was lost, or Redis had not written it to its "
                        "append-only file yet); not applying it twice", count)
            ops = ops[count:]
        self._unsure = None
        return ops

    # -- reading --------------------------------------------------------------------------------------------

    def load(self) -> list[ChannelSnapshot]:
        """Load every persisted channel, putting each item in flight back at its queue's head with its
        attempt raised. Entries that fail to decode move to the channel's dead-letter list; the dead letters
        (an entry there that does not decode is rewritten as a dead letter holding it) and a retry wait come
        back with the channel.

        Raises:
            StoreLocked: if another node took the writer lease (the repairs are not written).
        """
        members: set[bytes] = self._redis.smembers(keys.CHANNEL_INDEX)  # type: ignore[assignment]
        channels = sorted(m.decode("utf-8") for m in members)
        pipe = self._redis.pipeline(transaction=False)
        for channel in channels:
            pipe.lrange(keys.channel_key(keys.PROCESSING, channel), 0, -1)
            pipe.lrange(keys.queue_key(channel), 0, -1)
            pipe.lrange(keys.channel_key(keys.OPEN_BATCH, channel), 0, -1)
            pipe.lrange(keys.channel_key(keys.SEEN_IDS, channel), 0, -1)
            pipe.lrange(keys.channel_key(keys.DEAD_LETTER, channel), 0, -1)
            pipe.get(keys.channel_key(keys.RETRY, channel))
        raw = pipe.execute()
        per = 6
        snapshots = []
        with self._redis.pipeline(transaction=True) as fix:
            self._watch_lease(fix)
            empty = []
            for index, channel in enumerate(channels):
                in_flight_raw, queue_raw, open_raw, ids_raw, dead_raw, retry_raw = raw[per * index : per * index + per]
                # first: a dead list rewritten here must not drop the entries set aside below
                dead = self._decode_dead(channel, dead_raw, fix)
                in_flight = self._decode_all(channel, keys.PROCESSING, in_flight_raw, QueueItem, fix, dead)
                waiting = self._decode_all(channel, keys.QUEUE, queue_raw, QueueItem, fix, dead)
                entries = self._decode_all(channel, keys.OPEN_BATCH, open_raw, OpenEntry, fix, dead)
                ids = self._decode_all(channel, keys.SEEN_IDS, ids_raw, SeenId, fix, dead)
                if in_flight:
                    redelivered = [replace(item, attempt=item.attempt + 1) for item in in_flight]
                    fix.delete(keys.channel_key(keys.PROCESSING, channel))
                    for item in reversed(redelivered):
                        fix.lpush(keys.queue_key(channel), codec.encode(item))
                    waiting = redelivered + waiting
                retry = self._decode_retry(channel, retry_raw, waiting)
                if retry is None and retry_raw is not None:
                    fix.delete(keys.channel_key(keys.RETRY, channel))
                if not waiting and not entries and not ids and not dead:
                    empty.append(channel)
                    continue
                snapshots.append(
                    ChannelSnapshot(channel, tuple(waiting), tuple(entries), tuple(ids), tuple(dead), retry)
                )
            if empty:
                fix.srem(keys.CHANNEL_INDEX, *empty)
            fix.execute()
        return snapshots

    def _decode_dead(self, channel: str, entries: list[bytes], fix: redis.client.Pipeline) -> list[DeadLetter]:
        """The channel's dead letters, oldest first; an entry that does not decode stays listed as a dead
        letter holding its bytes (and is stored so, that replay and purge can remove it)."""
        letters: list[DeadLetter] = []
        bad = False
        for data in entries:
            try:
                letter = codec.decode_dead_letter(data)
                # an entry of an older shape is stored again as today's frame, which replay and purge remove
                bad = bad or codec.encode(letter) != data
                letters.append(letter)
            except DecodeError as exc:
                bad = True
                log.error("channel %r: a stored dead letter could not be decoded (%s); kept as a dead letter "
                          "holding its bytes", channel, exc, extra={"channel": channel})
                letters.append(
                    DeadLetter(keys.DEAD_LETTER, str(exc)[:4096], data[: codec.MAX_FRAME_BYTES // 2], time.time())
                )
        if bad:
            key = keys.channel_key(keys.DEAD_LETTER, channel)
            fix.delete(key)
            fix.rpush(key, *(codec.encode(letter) for letter in letters))
        return letters

    @staticmethod
    def _decode_retry(channel: str, data: bytes | None, waiting: list[QueueItem]) -> RetryWait | None:
        """The stored retry wait, if it is the head item's (else it is stale: None)."""
        if data is None:
            return None
        try:
            wait = decode_retry(data)
        except DecodeError as exc:
            log.error("channel %r: its stored retry wait is dropped: %s", channel, exc, extra={"channel": channel})
            return None
        if not waiting or waiting[0].item_id != wait.item_id:
            return None
        return wait

    def _decode_all(
        self,
        channel: str,
        role: str,
        entries: list[bytes],
        kind: type[_V],
        fix: redis.client.Pipeline,
        dead: list[DeadLetter],
    ) -> list[_V]:
        """The entries that decode; each that does not is appended to the dead-letter list (and to ``dead``)."""
        decoded: list[_V] = []
        bad = False
        for data in entries:
            try:
                decoded.append(codec.decode(data, kind))
            except DecodeError as exc:
                bad = True
                if is_set_aside(data):
                    log.warning("channel %r: skipped a %s entry that was set aside in its dead letters when it "
                                "could not be encoded", channel, role, extra={"channel": channel})
                    continue
                log.error("channel %r: a stored %s entry could not be decoded (%s); moved to dead letters",
                          channel, role, exc, extra={"channel": channel})
                letter = DeadLetter(role, str(exc)[:4096], data[: codec.MAX_FRAME_BYTES // 2], time.time())
                fix.rpush(keys.channel_key(keys.DEAD_LETTER, channel), codec.encode(letter))
                dead.append(letter)
        if bad:
            key = keys.channel_key(role, channel)
            fix.delete(key)
            if decoded:
                fix.rpush(key, *(codec.encode(value) for value in decoded))
        return decoded



