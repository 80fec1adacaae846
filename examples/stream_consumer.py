"""Read the batches distributed mode publishes to a Redis stream, with a consumer group, and acknowledge them.

    python -m examples.stream_consumer --redis redis://127.0.0.1:6379/0 --group agents --consumer worker-1

Each entry is one finished batch (format: ``protocol/stream.py``). A consumer group hands every entry to one of
its consumers; an entry stays pending until acknowledged (``XACK``), so a consumer that crashes leaves it for
another (``XAUTOCLAIM``), or for itself: on start, and after a read whose reply never came, it reads its own
pending entries again before new ones. With several consumers in a group, batches of one channel may be handled
concurrently: use one consumer per group where per-channel order matters, or order by ``seq``.

A blocking read waits up to ``--block`` ms for new entries, so the client's ``socket_timeout`` must be longer
(redis-py 8 defaults it to 5 s, the usual block time): this one uses the block time plus 10 s. A read that
times out all the same (a slow network, or a client with a shorter timeout) is retried.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis

from message_queue import DecodeError, InboundBatch, decode_entry

Handler = Callable[[InboundBatch], Awaitable[None]]


async def consume(client: aioredis.Redis, handle: Handler, *, stream: str = "message_queue:inbound",
                  group: str = "agents", consumer: str = "worker-1", block: int = 5000,
                  max_batches: int | None = None) -> int:
    """Hand each batch of ``stream`` to ``handle`` and acknowledge it once handled; return how many were
    handled (stops after ``max_batches`` when given, else runs until cancelled).

    ``client`` must return bytes (``decode_responses=False``) and should have a ``socket_timeout`` longer than
    ``block`` (ms): a read that times out is retried, but costs a reconnection.
    """
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # the group exists already: carry on where it stands
            raise
    handled = 0
    start = "0"  # this consumer's pending entries first, then (">") new ones
    while max_batches is None or handled < max_batches:
        try:
            reply: Any = await client.xreadgroup(group, consumer, {stream: start}, count=100, block=block)
        except aioredis.TimeoutError:  # any entries that reply carried are pending now: read those again
            start = "0"
            continue
        entries = [entry for _, got in reply or () for entry in got]
        if not entries:
            start = ">"
        for entry_id, fields in entries:
            if not fields:
                print(f"skipping entry {entry_id!r}: trimmed from the stream before it was handled")
            else:
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
    parser.add_argument("--block", type=int, default=5000, metavar="MS",
                        help="longest wait for new entries in one read, in ms (default 5000)")
    args = parser.parse_args()

    async def run() -> None:
        client = aioredis.Redis.from_url(args.redis, socket_timeout=args.block / 1000 + 10)
        try:
            await consume(client, _print, stream=args.stream, group=args.group, consumer=args.consumer,
                          block=args.block)
        finally:
            await client.aclose()

    asyncio.run(run())


if __name__ == "__main__":
    main()
