"""Read the batches distributed mode publishes to a Redis stream, with a consumer group, and acknowledge them.

    python -m examples.stream_consumer --redis redis://127.0.0.1:6379/0 --group agents --consumer worker-1

Each entry is one finished batch (format: ``protocol/stream.py``). A consumer group hands every entry to one of
its consumers; an entry stays pending until acknowledged (``XACK``), so a consumer that crashes leaves it for
another (``XAUTOCLAIM``). With several consumers in a group, batches of one channel may be handled
concurrently: use one consumer per group where per-channel order matters, or order by ``seq``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Awaitable, Callable

import redis.asyncio as aioredis

from message_queue import DecodeError, InboundBatch, decode_entry

Handler = Callable[[InboundBatch], Awaitable[None]]


async def consume(client: aioredis.Redis, handle: Handler, *, stream: str = "message_queue:inbound",
                  group: str = "agents", consumer: str = "worker-1", max_batches: int | None = None) -> int:
    """Hand each new batch of ``stream`` to ``handle`` and acknowledge it once handled; return how many were
    handled (stops after ``max_batches`` when given). ``client`` must return bytes (``decode_responses=False``)."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # the group exists already: carry on where it stands
            raise
    handled = 0
    while max_batches is None or handled < max_batches:
        reply = await client.xreadgroup(group, consumer, {stream: ">"}, count=100, block=5000)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                try:
                    inbound = decode_entry(fields, entry_id)
                except DecodeError as exc:
                    print(f"skipping entry {entry_id!r}: {exc}")  # a real consumer would dead-letter it
                else:
                    await handle(inbound)
                    handled += 1
                await client.xack(stream, group, entry_id)
    return handled


async def _print(inbound: InboundBatch) -> None:
    texts = " / ".join(m.text for m in inbound.batch.messages)
    print(f"{inbound.channel_id} {inbound.batch_id} ({inbound.reason}): {texts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--stream", default="message_queue:inbound")
    parser.add_argument("--group", default="agents")
    parser.add_argument("--consumer", default="worker-1")
    args = parser.parse_args()

    async def run() -> None:
        client = aioredis.Redis.from_url(args.redis)
        try:
            await consume(client, _print, stream=args.stream, group=args.group, consumer=args.consumer)
        finally:
            await client.aclose()

    asyncio.run(run())


if __name__ == "__main__":
    main()
