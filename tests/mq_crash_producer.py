"""A producer for the kill -9 test of the asyncio API with ``redis=``: one process, killed with SIGKILL by the
test.

Run as ``python tests/mq_crash_producer.py --redis URL --run N [--produce | --no-produce] ...``. It makes a
``MessageQueue(redis=redis.asyncio.Redis.from_url(URL))``, calls ``start_processing`` on ``--channels`` channels
(``c00``, ``c01``, ...; restored items are delivered from then on) and, with ``--produce``, enqueues forever
from ``--tasks`` concurrent tasks: mostly single ``await q.enqueue(m)``, sometimes ``await q.enqueue_many(ms)``.
Each channel's messages carry increasing sequence numbers, starting at ``N * 10**6`` for run ``N`` (so the
numbers keep increasing across restarts); a message's text is its sequence number. The process ends on end of
its standard input (closing the queue), or when killed.

Standard output, one JSON object per line, each line flushed at once:
    ``{"k": "R", "pid": P}``: every channel's ``start_processing`` returned;
    ``{"k": "A", "m": [[channel, seq], ...]}``: written right after the ``await`` that enqueued these
    messages returned, before the task does anything else: they are stored in Redis;
    ``{"k": "D", "c": channel, "i": item_id, "a": attempt, "m": [[channel, seq], ...]}``: the channel's
    callback got this item; written before the callback returns, so every delivery the queue could count as
    done is on stdout.

The callback reads the item id and attempt of what it processes with ``message_queue.current_item()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import random
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import redis.asyncio  # noqa: E402

from message_queue import MessageQueue, current_item  # noqa: E402
from protocol.values import Payload, QueuedMessage, payload_messages  # noqa: E402

log = logging.getLogger("mq_crash_producer")

RUN_STRIDE = 10**6  # sequence numbers of run N start at N * RUN_STRIDE

def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def message(channel: str, seq: int) -> QueuedMessage:
    return QueuedMessage("crash", channel, "u", "u", str(seq))


async def deliver(payload: Payload) -> None:
    item = current_item()
    messages = [[m.channel_id, int(m.text)] for m in payload_messages(payload)]
    if item is None:  # the wrapper did not run: the test reports the line as garbage
        emit({"k": "D?", "m": messages})
        return
    emit({"k": "D", "c": item.channel_id, "i": item.item_id, "a": item.attempt, "m": messages})
    await asyncio.sleep(0)  # the item stays in flight across a loop iteration: a kill may land here


async def produce(q: MessageQueue, channels: list[str], run: int, rng: random.Random, many_share: float,
                  pace: float) -> None:
    """One producer task; ``next_seq`` is shared by every task of the process (one loop, no lock needed)."""
    while True:
        if rng.random() < many_share:
            batch = [message(ch, _take(ch, run)) for ch in rng.choices(channels, k=rng.randint(2, 40))]
            await q.enqueue_many(batch)
        else:
            ch = rng.choice(channels)
            batch = [message(ch, _take(ch, run))]
            await q.enqueue(batch[0])
        emit({"k": "A", "m": [[m.channel_id, int(m.text)] for m in batch]})
        await asyncio.sleep(rng.uniform(0.0, pace))  # the producer's pace


next_seq: dict[str, int] = {}


def _take(channel: str, run: int) -> int:
    seq = next_seq.get(channel, run * RUN_STRIDE)
    next_seq[channel] = seq + 1
    return seq


async def main_async(args: argparse.Namespace) -> None:
    client = redis.asyncio.Redis.from_url(args.redis)
    q = MessageQueue(default_batch_window=args.window, max_batch_size=args.max_batch_size, redis=client,
                     idle_timeout=3600.0)
    channels = [f"c{i:02d}" for i in range(args.channels)]
    for ch in channels:
        await q.start_processing(ch, deliver)
    emit({"k": "R", "pid": os.getpid()})
    rng = random.Random(args.seed * 1000 + args.run)
    tasks = []
    if args.produce:
        tasks = [asyncio.create_task(produce(q, channels, args.run, random.Random(rng.random()), args.many_share,
                                             args.pace))
                 for _ in range(args.tasks)]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)  # until end of input
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await q.close()
    await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="redis:// URL to persist to")
    parser.add_argument("--run", type=int, required=True, help="run number: sequence numbers start at run * 10**6")
    parser.add_argument("--produce", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=16, help="concurrent producer tasks")
    parser.add_argument("--many-share", type=float, default=0.1, help="share of enqueue_many calls")
    parser.add_argument("--pace", type=float, default=0.005, help="most seconds a task sleeps between calls")
    parser.add_argument("--window", type=float, default=0.02, help="batch window in seconds")
    parser.add_argument("--max-batch-size", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
