"""Benchmark: the memory duplicate detection takes in a channel. Prints JSON.

    .venv/bin/python bench/bench_dedupe_memory.py [--ids 1000] [--id-length 17]

A ``ChannelCore`` is given ``--ids`` messages with distinct ids of ``--id-length`` ASCII characters (17: a
Slack ``ts`` such as ``1712345678.000123``) within ``dedupe_ttl``; reported: what the remembered ids take,
per id, with and without the id strings themselves (a live message shares its string with the record), as
measured by ``tracemalloc``; and the bound on ids a channel remembers.
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
from protocol.values import BatchSettings, QueuedMessage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=MAX_REMEMBERED_IDS)
    parser.add_argument("--id-length", type=int, default=17)
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
    print(json.dumps({
        "ids_remembered": remembered,
        "max_remembered_ids": MAX_REMEMBERED_IDS,
        "id_length": args.id_length,
        "bytes_total": total,
        "bytes_per_id": round(total / max(remembered, 1), 1),
        "bytes_per_id_without_its_string": round(total / max(remembered, 1) - string, 1),
    }))


if __name__ == "__main__":
    main()
