"""Relay of the outbox stream to a custom event bus."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from message_queue import scripts
from message_queue.distributed.replies import connection_errors, reply_int, reply_str
from message_queue.event_bus import EventBus, reset_current_inbound, set_current_inbound
from protocol.errors import DecodeError
from protocol.keys import DIST_DEAD, DIST_OUTBOX, DIST_RELAY_LEASE
from protocol.limits import check_seconds
from protocol.stream import decode_entry

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class OutboxRelay:
    """Hands the entries of the outbox stream to a custom event bus, in order, deleting each after
    ``publish_inbound`` returned (at least once: a relay stopped between the two publishes it again).

    Only the holder of a lease (``message_queue:dist:relay``, ``lease`` seconds, renewed while it runs)
    relays; the others wait for it to lapse. A new holder starts from the oldest entry. While the bus's call
    runs, :func:`message_queue.event_bus.current_inbound` gives the entry (its stable ``batch_id``). A call
    that raises is retried, with growing pauses, until it succeeds (the channel order would break
    otherwise). An entry that cannot be decoded moves to ``message_queue:dist:dead`` with the reason.
    """

    def __init__(self, redis: Redis, bus: EventBus, node_id: str, *, lease: float = 2.0, block: float = 0.2,
                 outbox: str = DIST_OUTBOX) -> None:
        self._redis = redis
        self._bus = bus
        self._node_id = node_id
        self._lease_ms = round(check_seconds("lease", lease, positive=True) * 1000)
        self._block_ms = max(1, round(check_seconds("block", block, positive=True) * 1000))
        self._outbox = outbox
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.relayed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mq-dist-relay-{self._node_id}")

    async def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to be empty (relayed by this node or another)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self._redis.xlen(self._outbox) == 0:
                return True
            if loop.time() >= deadline or self._task is None or self._task.done():
                return False
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop relaying and give up the lease (entries left are relayed by another node, or the next)."""
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.error("relay of node %s ended with an error", self._node_id, exc_info=task.exception())
        try:
            await scripts.run(self._redis, scripts.RELEASE, [DIST_RELAY_LEASE], [self._node_id])
        except connection_errors() as exc:
            log.warning("relay of node %s could not release its lease (%s); it lapses by itself", self._node_id,
                        exc)

    async def _hold(self) -> bool:
        reply = await scripts.run(self._redis, scripts.LEASE, [DIST_RELAY_LEASE], [self._node_id, self._lease_ms])
        return reply_int(reply) == 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        errors = connection_errors()
        held = False
        last = "0-0"
        renewed = 0.0
        while not self._stopping:
            try:
                if not held or loop.time() - renewed > self._lease_ms / 4000:
                    was_held = held
                    held = await self._hold()
                    renewed = loop.time()
                    if not held:
                        await asyncio.sleep(self._lease_ms / 4000)
                        continue
                    if not was_held:
                        last = "0-0"  # a new holder starts from the oldest entry left
                reply = cast(
                    "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                    await self._redis.xread({self._outbox: last}, count=64, block=self._block_ms),
                )
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        if not await self._relay(reply_str(entry_id), fields):
                            held = False
                            break
                        last = reply_str(entry_id)
                        if loop.time() - renewed > self._lease_ms / 4000:
                            held = await self._hold()
                            renewed = loop.time()
                            if not held:
                                break
            except errors as exc:
                if self._stopping:  # redis-py may turn the cancellation of a read into a connection error
                    return
                log.warning("relay of node %s: Redis unreachable (%s); retrying", self._node_id, exc)
                held = False
                await asyncio.sleep(0.2)

    async def _relay(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        """Publish one entry and delete it; False if the lease was lost meanwhile."""
        try:
            inbound = decode_entry(fields, entry_id)
        except DecodeError as exc:
            log.error("relay: outbox entry %s cannot be decoded (%s); moved to %s", entry_id, exc, DIST_DEAD)
            dead: dict[bytes, bytes] = {b"entry": entry_id.encode(), b"error": str(exc)[:1000].encode()}
            dead.update({b"field:" + k: v for k, v in fields.items()})
            await self._redis.xadd(DIST_DEAD, dead)  # type: ignore[arg-type]
            await self._redis.xdel(self._outbox, entry_id)
            return True
        delay = 0.1
        while not self._stopping:
            token = set_current_inbound(inbound)
            try:
                await self._bus.publish_inbound(inbound.batch)
                break
            except Exception:
                log.exception("relay: publish_inbound failed for batch %s of channel %r; retrying in %.1f s",
                              inbound.batch_id, inbound.channel_id, delay, extra={"channel": inbound.channel_id})
            finally:
                reset_current_inbound(token)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if not await self._hold():
                return False
        else:
            return False
        await self._redis.xdel(self._outbox, entry_id)
        self.relayed += 1
        return True
