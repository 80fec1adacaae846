"""Benchmark: the memory duplicate detection takes in a channel. Prints JSON.

    .venv/bin/python bench/bench_dedupe_memory.py [--ids 1000] [--id-length 17] [--passivated 100000]

A ``ChannelCore`` is given ``--ids`` messages with distinct ids of ``--id-length`` ASCII characters (17: a
Slack ``ts`` such as ``1712345678.000123``) within ``dedupe_ttl``; reported: what the remembered ids take,
per id, with and without the id strings themselves (a live message shares its string with the record), as
measured by ``tracemalloc``; and the bound on ids a channel remembers.

Then what the Supervisor keeps for passivated channels (``actors.remembered.RememberedIds``): ``--passivated``
channels that each handed over one id, and 100 channels that each handed over ``--ids``; reported per
channel and per id, id strings included (they are the Supervisor's alone), channel id strings not (the
Supervisor keeps those for the channel's counters and settings anyway).
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.batching import MAX_REMEMBERED_IDS, ChannelCore  # noqa: E402
from actors.remembered import RememberedIds  # noqa: E402
from protocol.values import BatchSettings, QueuedMessage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=MAX_REMEMBERED_IDS)
    parser.add_argument("--id-length", type=int, default=17)
    parser.add_argument("--passivated", type=int, default=100_000)
    args = parser.parse_args()
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    core = ChannelCore("c", BatchSettings(window=3600.0, max_batch_size=100, dedupe_ttl=3600.0))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(args.ids):
        message_id = str(i).rjust(args.id_length, "0")
        core.enqueue(QueuedMessage("p", "c", "u", "U", "", at, message_id=message_id), 0.0)
        core.take_waiting()  # the messages go: what stays is what duplicate detection keeps
    after = tracemalloc.take_snapshot()
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    remembered = len(core.remembered_ids(0.0))
    string = sys.getsizeof("0" * args.id_length)
    one = passivated_bytes(args.passivated, 1, args.id_length)
    many = passivated_bytes(100, args.ids, args.id_length)
    print(json.dumps({
        "ids_remembered": remembered,
        "max_remembered_ids": MAX_REMEMBERED_IDS,
        "id_length": args.id_length,
        "bytes_total": total,
        "bytes_per_id": round(total / max(remembered, 1), 1),
        "bytes_per_id_without_its_string": round(total / max(remembered, 1) - string, 1),
        "passivated": {
            "channels_with_one_id": args.passivated,
            "bytes_per_channel_with_one_id": round(one / max(args.passivated, 1), 1),
            "channels_with_many_ids": 100,
            "ids_each": args.ids,
            "bytes_per_id_with_many_ids": round(many / (100 * max(args.ids, 1)), 1),
        },
    }))


def passivated_bytes(channels: int, ids: int, id_length: int) -> int:
    """What ``RememberedIds`` takes for ``channels`` channels that each handed over ``ids`` ids."""
    names = [f"chat:{n}" for n in range(channels)]  # the Supervisor holds these anyway
    kept = RememberedIds()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    serial = 0
    for name in names:
        handed = []
        for _ in range(ids):
            handed.append((str(serial).rjust(id_length, "0"), 1.0 + serial * 1e-6))
            serial += 1
        kept.keep(name, tuple(handed), 2.0, 3600.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert kept.ids == channels * min(ids, MAX_REMEMBERED_IDS)
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


if __name__ == "__main__":
    main()
