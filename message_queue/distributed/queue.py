"""What ``MessageQueue(redis=..., event_bus=...)`` runs: a node and, for a custom event bus, a relay."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, AbstractSet, Callable

from message_queue.distributed.batcher import DistributedBatcher
from message_queue.distributed.options import NodeOptions
from message_queue.distributed.relay import OutboxRelay
from message_queue.distributed.server import binary_client, check_durability, same_server
from message_queue.distributed.stats import channel_statistics
from message_queue.event_bus import RedisStreamEventBus, check_event_bus
from protocol.keys import DIST_OUTBOX
from protocol.values import BatchSettings, ChannelStatistics, Payload, QueuedMessage

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class DistributedQueue:
    """What ``MessageQueue(redis=..., event_bus=...)`` runs: a :class:`DistributedBatcher` writing to the
    bus's stream (a :class:`RedisStreamEventBus` on the same server) or to the outbox, then an
    :class:`OutboxRelay` to the bus. Starts on first use, on the caller's event loop.
    """

    def __init__(self, redis: Redis, event_bus: object, settings: BatchSettings, *, config_ttl: float = 1.0,
                 allow_volatile_redis: bool = False, options: NodeOptions | None = None) -> None:
        self.event_bus = check_event_bus(event_bus)
        self._given = redis
        self._settings = settings
        self._allow_volatile = allow_volatile_redis
        base = options or NodeOptions(config_ttl=config_ttl)
        direct = isinstance(event_bus, RedisStreamEventBus) and same_server(event_bus.redis, redis)
        if direct:
            assert isinstance(event_bus, RedisStreamEventBus)
            stream, maxlen = event_bus.stream, event_bus.maxlen
        else:
            stream, maxlen = DIST_OUTBOX, 0
        self.options = NodeOptions(
            stream=stream, maxlen=maxlen, sweep_interval=base.sweep_interval, grace=base.grace,
            config_ttl=base.config_ttl, max_pending=base.max_pending, max_pipeline=base.max_pipeline,
            retry_for=base.retry_for, node_id=base.node_id, idle_ttl=base.idle_ttl,
        )
        self.relays = not direct
        self.on_script_seconds: Callable[[float], None] | None = None  # metrics: each script pipeline's time
        self._client: Redis | None = None
        self._owns_client = False
        self._batcher: DistributedBatcher | None = None
        self._relay: OutboxRelay | None = None
        self._starting: asyncio.Task[DistributedBatcher] | None = None
        self._closed = False

    @property
    def batcher(self) -> DistributedBatcher | None:
        return self._batcher

    async def enqueue(self, msg: QueuedMessage) -> None:
        batcher = self._batcher or await self._start()
        await batcher.append(msg)

    async def enqueue_front(self, payload: Payload) -> str:
        batcher = self._batcher or await self._start()
        return await batcher.publish_now(payload)

    async def statistics(self, channel: str, processors: AbstractSet[str]) -> tuple[ChannelStatistics, ...]:
        """:func:`channel_statistics` read from this queue's Redis (the queue need not be started); () once
        the queue is closed."""
        if self._closed:
            return ()
        return await channel_statistics(self._client or self._given, channel, processors)

    async def _start(self) -> DistributedBatcher:
        if self._closed:
            raise RuntimeError("the MessageQueue is closed")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done() and (self._starting.cancelled() or self._starting.exception() is not None):
                self._starting = None
            raise

    async def _open(self) -> DistributedBatcher:
        client, owned = binary_client(self._given)
        try:
            await check_durability(client, self._allow_volatile)
            batcher = DistributedBatcher(client, self._settings, self.options)
            batcher.on_script_seconds = self.on_script_seconds
            await batcher.start()
        except BaseException:
            if owned:
                await client.aclose()
            raise
        self._client, self._owns_client = client, owned
        if self.relays:
            self._relay = OutboxRelay(client, self.event_bus, self.options.node_id)
            self._relay.start()
        self._batcher = batcher
        return batcher

    async def close(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout`` seconds) until this node's open deadlines are flushed and, with a custom
        bus, the outbox is relayed; then stop. What is left stays in Redis for the other nodes."""
        if self._closed:
            return
        self._closed = True
        starting = self._starting
        if starting is not None and not starting.done():
            await asyncio.wait({starting})
        batcher = self._batcher
        if batcher is not None:
            try:
                await asyncio.wait_for(batcher.drain(), timeout)
            except TimeoutError:
                log.warning("distributed node %s: closing with deadlines still armed; other nodes' sweepers "
                            "will publish them", batcher.node_id)
            if self._relay is not None:
                await self._relay.wait_empty(min(timeout, 5.0))
                await self._relay.close()
            await batcher.close()
        if self._client is not None and self._owns_client:
            await self._client.aclose()
