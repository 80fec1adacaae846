"""Benchmark: what channels that went idle leave behind in a process running the asyncio API. Prints JSON.

    .venv/bin/python bench/bench_idle_memory.py [--channels 100000] [--idle-timeout 1.0] [--message-ids]
                                                [--repeat 1] [--quick]

One run, in a fresh ``MessageQueue(default_batch_window=0, max_batch_size=1, idle_timeout=...)`` on an event
loop: for each of ``--channels`` new channels, ``start_processing`` with one shared callback, then one
``enqueue`` (delivered at once); then wait until every channel actor has passivated (``statistics()`` lists
none). Reported: the process's RSS before the channels and after they all passivated (after a full
collection), the growth per channel, and the time to create them and to see them all passivated. What stays
per channel is its callback registration and its counters (``processed`` is 1). Bar: the growth for 100,000
channels is at most 30 MiB. ``--quick`` (2,000 channels) is a smoke test of the script, not a measurement.

``--message-ids``: each channel's message has a platform ``message_id`` (17 characters, like Slack's ``ts``),
remembered for duplicate detection (``dedupe_ttl`` 600 s, the default): the channels still passivate after
``idle_timeout`` and the Supervisor keeps their ids; the run then checks that a resent message is dropped
(``duplicate_dropped``).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_actors as ba  # noqa: E402

from message_queue import MessageQueue, QueuedMessage  # noqa: E402
from protocol.values import Payload  # noqa: E402

BAR_MIB = 30.0


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def message_id(number: int) -> str:
    return f"1712345678.{number:06d}"  # 17 characters, like a Slack ts


async def one_run(channels: int, idle_timeout: float, with_ids: bool = False) -> dict[str, Any]:
    delivered = 0

    async def callback(item: Payload) -> None:
        nonlocal delivered
        delivered += 1

    async with MessageQueue(default_batch_window=0.0, max_batch_size=1, idle_timeout=idle_timeout) as mq:
        await mq.start_processing("warm-up", callback)  # the actor system is up before the first reading
        await mq.enqueue(QueuedMessage("bench", "warm-up", "u", "u", "x"))
        gc.collect()
        before = rss_mib()
        started = time.monotonic()
        for number in range(channels):
            channel = f"chat:{number}"
            await mq.start_processing(channel, callback)
            mid = message_id(number) if with_ids else ""
            await mq.enqueue(QueuedMessage("bench", channel, "u", "u", "hello", message_id=mid))
        created = time.monotonic()
        while len(await mq.statistics()) > 0:  # live channel actors, the warm-up's included
            await asyncio.sleep(0.05)
        passivated = time.monotonic()
        gc.collect()
        after = rss_mib()
        sample = await mq.statistics("chat:0")
        duplicate_dropped = None
        if with_ids:  # after the measurement: it re-spawns one channel
            await mq.enqueue(QueuedMessage("bench", "chat:0", "u", "u", "hello", message_id=message_id(0)))
            duplicate_dropped = (await mq.statistics("chat:0"))[0].duplicates == 1
        return {
            "create_s": created - started,
            "all_passivated_after_creation_s": passivated - created,
            "delivered": delivered - 1,
            "rss_before_mib": round(before, 2),
            "rss_after_mib": round(after, 2),
            "growth_mib": round(after - before, 2),
            "growth_bytes_per_channel": round((after - before) * 1024 * 1024 / channels),
            "counters_kept": sample[0].processed == 1,
            "duplicate_dropped": duplicate_dropped,
        }


def main(argv: list[str] | None = None) -> int:
    def options(parser: Any) -> None:
        parser.add_argument("--channels", type=int, default=None, help="channels (default 100000, quick 2000)")
        parser.add_argument("--idle-timeout", type=float, default=1.0, help="seconds idle before passivating")
        parser.add_argument("--message-ids", action="store_true", help="each message has a platform message_id")

    args, p, log = ba.cli(argv, __doc__, "idle-memory", options)
    channels = args.channels if args.channels is not None else (2000 if args.quick else 100_000)
    runs = []
    for i in range(p.repeat):
        log(f"run {i + 1}/{p.repeat}")
        # a fresh queue (and loop) each run
        runs.append(asyncio.run(one_run(channels, args.idle_timeout, args.message_ids)))
    growth = ba.median([r["growth_mib"] for r in runs])
    full = channels >= 100_000  # fixed costs dominate a small run: the bar is for 100,000 channels
    report = {
        "env": ba.environment(p, args.quick),
        "params": {"channels": channels, "idle_timeout_s": args.idle_timeout, "message_ids": args.message_ids},
        "result": {
            "growth_mib": growth,
            "growth_bytes_per_channel": ba.median([r["growth_bytes_per_channel"] for r in runs]),
            "create_s": ba._round(ba.median([r["create_s"] for r in runs])),
            "all_delivered": all(r["delivered"] == channels for r in runs),
            "counters_kept": all(r["counters_kept"] for r in runs),
            "duplicates_dropped": all(r["duplicate_dropped"] for r in runs) if args.message_ids else None,
            "runs": runs,
        },
        "bars": {
            "growth_le_30mib_per_100k": {
                "value": growth,
                "threshold": f"<= {BAR_MIB} MiB for 100,000 channels (None: fewer channels were run)",
                "pass": (growth is not None and growth <= BAR_MIB) if full else None,
            }
        },
    }
    ba.emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
