"""The original module's in-memory design, as its documentation describes it: a second yardstick.

Per channel: an ``asyncio.Lock``, the open ``MessageBatch``, a timer task (``asyncio.sleep(window)`` then
finalize), cancelled and awaited, then started again, by every message that does not fill the batch, an
``InMemoryRedisQueue`` (an ``asyncio.Queue``) of finished batches, and a processor loop task that gets each
batch with ``asyncio.wait_for(queue.get(), 60)`` and awaits the callback. ``enqueue`` takes the channel's lock
for each message. Only what the burst benchmark exercises is here (enqueue, batching, delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Callable

from message_queue import InMemoryRedisQueue, MessageBatch, QueuedMessage
from protocol.values import Payload


class OriginalDesignQueue:
    """``enqueue`` and ``start_processing`` of the original in-memory ``MessageQueue``."""

    def __init__(self, default_batch_window: float, max_batch_size: int) -> None:
        self.window = default_batch_window
        self.max_batch_size = max_batch_size
        self._queues: dict[str, InMemoryRedisQueue] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._batches: dict[str, MessageBatch] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._processors: dict[str, asyncio.Task[None]] = {}

    def _queue(self, channel: str) -> InMemoryRedisQueue:
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = InMemoryRedisQueue()
        return queue

    async def enqueue(self, msg: QueuedMessage) -> None:
        channel = msg.channel_id
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        async with lock:
            batch = self._batches.get(channel)
            if batch is None:
                batch = self._batches[channel] = MessageBatch()
            batch.add(msg)
            await self._cancel_timer(channel)
            if batch.size >= self.max_batch_size:
                await self._finalize(channel)
            else:
                self._timers[channel] = asyncio.get_running_loop().create_task(self._flush_later(channel))

    async def _cancel_timer(self, channel: str) -> None:
        timer = self._timers.pop(channel, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def _flush_later(self, channel: str) -> None:
        await asyncio.sleep(self.window)
        async with self._locks[channel]:
            if self._timers.get(channel) is asyncio.current_task():
                del self._timers[channel]
                await self._finalize(channel)

    async def _finalize(self, channel: str) -> None:
        batch = self._batches.pop(channel, None)
        if batch is not None and batch.size:
            await self._queue(channel).put(batch)

    async def start_processing(self, channel: str, callback: Callable[[Payload], Awaitable[object]]) -> None:
        if channel not in self._processors:
            self._processors[channel] = asyncio.get_running_loop().create_task(self._process(channel, callback))

    async def _process(self, channel: str, callback: Callable[[Payload], Awaitable[object]]) -> None:
        queue = self._queue(channel)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), 60)
            except TimeoutError:
                continue
            try:
                await callback(item)
            finally:
                queue.task_done()

    async def close(self) -> None:
        tasks = [*self._timers.values(), *self._processors.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
