"""RedisPersistence: the one actor that talks to Redis when persistence is on.

Channels send it ``Persist``: operations, plus the messages that may only leave once those operations are
durable (deliveries to processors, acknowledgements to producers, command replies). It buffers what arrives
and writes everything in one atomic script call on a zero-delay wakeup, which fires once the messages already
queued to it have been handled: one Redis round trip serves many channels. The write is sent without waiting:
the reply is read on a second zero-delay wakeup, so the actors go on working while Redis runs it, and what
arrives meanwhile goes in the next write, sent as soon as that reply is in. Only after a write succeeds does
each channel get its held messages back in ``Durable``, to send them itself (so a processor's reply goes to
the channel that sent the delivery). If Redis cannot be reached the buffer is kept and retried with backoff;
nothing is acknowledged meanwhile.

Opening the store takes the database's writer lease (:mod:`actors.store`): one node persists to a database at
a time. The lease lasts ``OpenStore.lease_seconds`` (:data:`~actors.journal.LEASE_SECONDS`, 15 s) and is
renewed every third of that on a wakeup of its own, off the write path; it is released when the actor stops.
If another node takes the lease (this one stalled, or could not reach Redis, for longer than the lease), every
later transaction fails instead of writing: like a Redis that lost our data, that is logged as critical, and
the operations and every acknowledgement stay held, never sent.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

import redis
from thespian.actors import WakeupMessage

from actors.base import Dispatcher
from actors.journal import (
    ChannelsLoaded,
    Durable,
    LoadChannels,
    OpenStore,
    Op,
    Persist,
    StoreFailed,
    StoreOpened,
)
from actors.store import PendingWrite, RedisStore
from protocol.errors import MessageQueueError, RedisDataLost, StoreLocked

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

log = logging.getLogger(__name__)

_FLUSH = "flush"
_COLLECT = "collect the write's reply"
_RENEW = "renew the writer lease"
_MAX_BACKOFF = 2.0


class RedisPersistence(Dispatcher):
    """Write-ahead of every channel's state changes to Redis, batched per flush."""

    def __init__(self) -> None:
        super().__init__()
        self._store: RedisStore | None = None
        self._ops: list[Op] = []
        self._then: list[tuple[ActorAddress, Durable]] = []
        self._flush_armed = False
        self._backoff = 0.0
        self._writing: tuple[PendingWrite, int, int] | None = None  # a write on its way, and what it covers

    def receiveMsg_OpenStore(self, msg: OpenStore, sender: ActorAddress) -> None:
        store: RedisStore | None = None
        try:
            store = RedisStore.from_url(msg.url, msg.lease_seconds)
            store.check_durability(msg.allow_volatile)
            store.open_epoch()
        except (MessageQueueError, redis.RedisError, ValueError) as exc:
            if store is not None:
                store.close()  # gives back the lease if it was taken
            self.send(sender, StoreFailed(type(exc).__name__, str(exc)))
            return
        self._store = store
        self._arm_renewal()
        self.send(sender, StoreOpened())

    def receiveMsg_LoadChannels(self, msg: LoadChannels, sender: ActorAddress) -> None:
        store = self._required_store()
        try:
            snapshots = store.load()
        except (MessageQueueError, redis.RedisError) as exc:  # the lease taken meanwhile, Redis gone...
            store.close()
            self._store = None
            self.send(sender, StoreFailed(type(exc).__name__, str(exc)))
            return
        self.send(sender, ChannelsLoaded(tuple(snapshots)))

    def receiveMsg_Persist(self, msg: Persist, sender: ActorAddress) -> None:
        self._ops.extend(msg.ops)
        if msg.then:
            self._then.append((sender, Durable(msg.then)))
        if not self._flush_armed:
            self._flush_armed = True
            self.wakeupAfter(timedelta(seconds=self._backoff), payload=_FLUSH)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        if msg.payload == _FLUSH:
            self._flush_armed = False
            self._flush()
        elif msg.payload == _COLLECT:
            self._collect()
        elif msg.payload == _RENEW:
            self._renew()

    def _flush(self) -> None:
        """Send everything buffered to Redis, unless a write is on its way (its reply starts the next)."""
        if self._writing is not None or not (self._ops or self._then):
            return
        ops = self._ops
        try:
            pending = self._required_store().start_apply(ops)
        except (RedisDataLost, StoreLocked, redis.RedisError) as exc:
            self._failed(exc, len(ops))
            return
        if pending is None:  # nothing left to write (a failed write had applied it all): release the replies
            self._released(len(ops), len(self._then))
            return
        self._writing = (pending, len(ops), len(self._then))
        # Fires once the messages queued meanwhile are handled: Redis runs the write while this actor works.
        self.wakeupAfter(timedelta(0), payload=_COLLECT)

    def _collect(self) -> None:
        """Wait for the write on its way; then send the messages it made durable and start the next one."""
        if self._writing is None:
            return
        pending, op_count, then_count = self._writing
        self._writing = None
        try:
            self._required_store().finish_apply(pending)
        except (RedisDataLost, StoreLocked, redis.RedisError) as exc:
            self._failed(exc, len(self._ops))
            return
        self._released(op_count, then_count)
        self._flush()

    def _released(self, op_count: int, then_count: int) -> None:
        """The first ``op_count`` buffered operations are stored: send the first ``then_count`` held replies."""
        then = self._then[:then_count]
        del self._ops[:op_count], self._then[:then_count]
        self._backoff = 0.0
        for address, message in then:
            self.send(address, message)

    def _failed(self, exc: Exception, op_count: int) -> None:
        """A write failed: keep every operation and reply, and try again after a backoff. The retry begins
        with the same operations, as :meth:`RedisStore.apply` requires."""
        if isinstance(exc, (RedisDataLost, StoreLocked)):
            log.critical("%s; holding %d operations and every acknowledgement until an operator acts", exc,
                         op_count)
        else:
            log.error("Redis write of %d operations failed (%s); retrying in %.2f s", op_count, exc,
                      self._next_backoff())
        self._retry()

    def _renew(self) -> None:
        store = self._store
        if store is None:
            return  # closed after a failed load
        try:
            store.renew_lease()
        except StoreLocked as exc:
            log.critical("%s", exc)
            return  # nothing to renew any more
        except redis.RedisError as exc:
            log.warning("could not renew the writer lease (%s); trying again in %g s", exc,
                        store.lease_seconds / 3)
        self._arm_renewal()

    def _arm_renewal(self) -> None:
        self.wakeupAfter(timedelta(seconds=self._required_store().lease_seconds / 3), payload=_RENEW)

    def _next_backoff(self) -> float:
        return min(_MAX_BACKOFF, max(0.05, self._backoff * 2))

    def _retry(self) -> None:
        self._backoff = self._next_backoff()
        if not self._flush_armed:
            self._flush_armed = True
            self.wakeupAfter(timedelta(seconds=self._backoff), payload=_FLUSH)

    def _required_store(self) -> RedisStore:
        if self._store is None:
            raise RuntimeError("RedisPersistence used before OpenStore")
        return self._store

    def on_stop(self) -> None:
        store = self._store
        if store is not None and (self._ops or self._then):
            try:
                if self._writing is not None:
                    pending, self._writing = self._writing[0], None
                    try:
                        store.finish_apply(pending)
                    except redis.RedisError:
                        pass  # unsure: the apply below skips what it did write
                store.apply(self._ops)
            except (redis.RedisError, MessageQueueError) as exc:
                log.error("could not write %d operations at exit: %s", len(self._ops), exc)
            else:
                for address, message in self._then:
                    self.send(address, message)
        if store is not None:
            store.close()
