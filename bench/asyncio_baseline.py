"""The batching rules written the plain-asyncio way: the yardstick the actor system is measured against.

Same rules as :mod:`actors.batching` for the parts the benchmark exercises: each channel has one open batch;
the batch closes when no message arrived for ``window`` seconds (the window slides with each message) or at
once when it holds ``max_batch_size`` messages; closed batches wait in a per-channel FIFO; one consumer task
per channel hands them to the processor one at a time, the next only after the processor returned.

Idiomatic asyncio throughout: one ``loop.call_at`` handle per channel, cancelled and re-armed as messages
arrive (as ``asyncio.Timeout.reschedule`` does), an ``asyncio.Queue`` per channel, one task per channel.
Not thread-safe: call :meth:`AsyncioBatcher.enqueue` from the loop's thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

WINDOW = "window"
FULL = "full"


@dataclass(slots=True)
class Batch:
    """A closed batch handed to the processor. Times are on the loop's clock (``loop.time()``)."""

    channel_id: str
    messages: list[object]
    reason: str  # WINDOW or FULL
    due: float  # when the rules said it must close
    closed_at: float  # when it actually closed

    @property
    def lateness(self) -> float:
        """Seconds between the batch's due time and its closing (never negative)."""
        return max(0.0, self.closed_at - self.due)


Processor = Callable[[Batch], Awaitable[None]]


class _Channel:
    __slots__ = ("channel_id", "open", "last_at", "handle", "queue", "consumer")

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        self.open: list[object] | None = None
        self.last_at = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        self.consumer: asyncio.Task[None] | None = None


class AsyncioBatcher:
    """Per-channel sliding-window batching with ordered, one-at-a-time delivery to ``processor``."""

    def __init__(self, processor: Processor, *, window: float, max_batch_size: int) -> None:
        if not window >= 0:
            raise ValueError(f"window must be >= 0, got {window!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        self._processor = processor
        self._window = window
        self._max = max_batch_size
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, _Channel] = {}

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def open_batch_sizes(self) -> dict[str, int]:
        """Messages in each channel's open batch (channels without one are left out)."""
        return {c.channel_id: len(c.open) for c in self._channels.values() if c.open}

    def enqueue(self, channel_id: str, message: object) -> None:
        """Add ``message`` to its channel's open batch, sliding the window or closing a full batch."""
        ch = self._channels.get(channel_id)
        if ch is None:
            ch = self._channels[channel_id] = _Channel(channel_id)
            ch.consumer = self._loop.create_task(self._consume(ch))
        now = self._loop.time()
        if ch.open is None:
            ch.open = [message]
        else:
            ch.open.append(message)
        ch.last_at = now
        if ch.handle is not None:
            ch.handle.cancel()
            ch.handle = None
        if len(ch.open) >= self._max:
            self._close(ch, FULL, now, now)
        else:
            ch.handle = self._loop.call_at(now + self._window, self._on_window, ch)

    async def aclose(self) -> None:
        """Cancel every timer and consumer; open and waiting batches are dropped."""
        tasks = []
        for ch in self._channels.values():
            if ch.handle is not None:
                ch.handle.cancel()
            if ch.consumer is not None:
                ch.consumer.cancel()
                tasks.append(ch.consumer)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._channels.clear()

    def _on_window(self, ch: _Channel) -> None:
        ch.handle = None
        self._close(ch, WINDOW, ch.last_at + self._window, self._loop.time())

    def _close(self, ch: _Channel, reason: str, due: float, now: float) -> None:
        assert ch.open is not None
        batch = Batch(ch.channel_id, ch.open, reason, due, now)
        ch.open = None
        ch.queue.put_nowait(batch)

    async def _consume(self, ch: _Channel) -> None:
        queue, processor = ch.queue, self._processor
        while True:
            batch = await queue.get()
            await processor(batch)
