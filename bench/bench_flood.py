"""Benchmark: one channel flooded past its cap. Prints JSON.

    .venv/bin/python bench/bench_flood.py [--messages 1000000] [--max-queued 10000] [--quick]

A fresh ``MessageQueue(default_batch_window=10, max_batch_size=10, max_queued=..., overflow="drop_oldest")``
with no processor receives ``--messages`` messages on one channel through ``enqueue_many`` in chunks of
1,000, yielding to the loop after each. Reported: the process's RSS after the first ``max_queued`` messages
(the channel full) and at the end (after a full collection), their difference, the channel's counts (what is
waiting must be ``max_queued`` and ``dropped_overflow`` the rest), and the rate. Memory should stay flat once
the channel is full.
``--quick`` (50,000 messages, cap 1,000) is a smoke test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from message_queue import MessageQueue, QueuedMessage  # noqa: E402

CHUNK = 1000


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def flood(messages: int, max_queued: int) -> dict[str, Any]:
    async with MessageQueue(default_batch_window=10.0, max_batch_size=10, max_queued=max_queued,
                            overflow="drop_oldest", dedupe_ttl=0) as mq:
        sent = 0
        full_rss = 0.0
        started = time.perf_counter()
        while sent < messages:
            count = min(CHUNK, messages - sent)
            await mq.enqueue_many([QueuedMessage("bench", "flood", "u", "U", f"m{sent + i}") for i in range(count)])
            sent += count
            await asyncio.sleep(0)  # a producer that yields, so the actors keep up with their mailboxes
            if not full_rss and sent >= max_queued:
                await mq.statistics("flood")
                gc.collect()
                full_rss = rss_mib()
        (stats,) = await mq.statistics("flood")
        elapsed = time.perf_counter() - started
        gc.collect()
        end_rss = rss_mib()
        waiting = stats.queued * 10 + stats.open_batch_size
        return {
            "messages": messages,
            "max_queued": max_queued,
            "waiting_messages": waiting,
            "dropped_overflow": stats.dropped_overflow,
            "rss_when_full_mib": round(full_rss, 2),
            "rss_at_end_mib": round(end_rss, 2),
            "rss_growth_after_full_mib": round(end_rss - full_rss, 2),
            "messages_per_second": round(messages / elapsed),
            "seconds": round(elapsed, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--max-queued", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    messages, cap = (50_000, 1_000) if args.quick else (args.messages, args.max_queued)
    print(json.dumps({"flood": asyncio.run(flood(messages, cap)), "quick": args.quick}))


if __name__ == "__main__":
    main()
