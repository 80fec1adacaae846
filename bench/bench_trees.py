"""Benchmark: the asyncio API's saturated workload on two source trees of this project, in one process. Prints
JSON.

    .venv/bin/python bench/bench_trees.py [--repeat N] [--quick] [--verbose] [--bytecodes] OLD_TREE NEW_TREE

For comparing a change with the code before it, e.g. ``git worktree add /tmp/before <commit>`` then
``bench/bench_trees.py --repeat 8 /tmp/before .``. Each tree's modules (``actors``, ``protocol``,
``message_queue``, ``service`` and the benchmark modules) are imported once under their own names and swapped
into ``sys.modules`` before each of its runs, so both trees run in the same process, alternating (the order
flips from repeat to repeat): what differs between runs is the code, not the process or the moment. A tree
must have ``bench/bench_facade.py`` with ``run_baseline_bursts`` and ``run_facade_bursts``.

Each repeat runs, per tree, its own ``bench_facade`` saturated workload (4,000 channels, 80,000 messages) and
the plain-asyncio baseline beside it. Numbers per tree (medians over the repeats; ``runs`` lists each):
``facade_cpu_us_per_msg`` and ``baseline_cpu_us_per_msg`` (process CPU per delivered message),
``cpu_ratio`` (facade CPU per message / baseline's, per repeat: lower is better) and ``throughput_ratio``
(facade msg/s / baseline's). ``new_vs_old``: the NEW tree's median ``cpu_ratio`` over the OLD tree's (1.0:
the same cost against the baseline) and the same for ``throughput_ratio`` (1.0: as fast).

``--bytecodes`` adds, per tree, one more facade run of a smaller saturated workload (400 channels, 8,000
messages; ``--quick``: 50 channels) with ``sys.settrace`` counting the bytecodes executed per function from
the first enqueue to the last delivery: ``bytecodes.per_msg`` (a count that does not depend on the machine's
load, though the driver's turns, cut by time, vary it by about 1 %) and ``bytecodes.largest_differences``,
the functions whose count per message differs most between the trees (new minus old; files named relative
to their tree).
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import statistics
import sys
import time
from collections import Counter
from types import FrameType
from typing import Any, Callable

from source_trees import SourceTree

BENCH_MODULES = ("bench_facade", "bench_actors", "asyncio_baseline", "loop_support")
ENTRY_MODULES = ("bench_facade",)


def run_once(tree: SourceTree, quick: bool) -> dict[str, float]:
    modules = tree.activate()
    bf, ba = modules["bench_facade"], modules["bench_actors"]
    wl = ba.Bursts(channels=100 if quick else 4000, rounds=2 if quick else 4, period=0.1, spread=0.0)
    gc.collect()
    base = bf.run_baseline_bursts(wl, False)
    gc.collect()
    facade = bf.run_facade_bursts(wl, False)
    if not (base["all_delivered"] and facade["all_delivered"]):
        raise RuntimeError("a run did not deliver every message")
    return {
        "facade_cpu_us_per_msg": facade["cpu_us_per_msg"],
        "baseline_cpu_us_per_msg": base["cpu_us_per_msg"],
        "cpu_ratio": facade["cpu_us_per_msg"] / base["cpu_us_per_msg"],
        "throughput_ratio": facade["msgs_per_s"] / base["msgs_per_s"],
    }


def count_bytecodes(tree: SourceTree, quick: bool) -> tuple[float, dict[str, float]]:
    """Bytecodes executed per delivered message, in total and per function (``file:function``)."""
    modules, root = tree.activate(), tree.root
    bf, ba = modules["bench_facade"], modules["bench_actors"]
    wl = ba.Bursts(channels=50 if quick else 400, rounds=4, period=0.1, spread=0.0)
    bf.run_facade_bursts(wl, False)  # a first run: imports and caches out of the count
    counts: Counter[str] = Counter()
    prefix = str(root) + "/"

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = f"{code.co_filename.removeprefix(prefix)}:{code.co_name}"

        def local(frame: FrameType, event: str, arg: object) -> Any:
            if event == "opcode":
                counts[key] += 1
            return local

        return local

    def on_start(driver: object) -> Callable[[], None]:
        sys.settrace(tracer)
        return lambda: sys.settrace(None)

    try:
        record = bf.run_facade_bursts(wl, False, None, on_start)
    finally:
        sys.settrace(None)
    messages = max(1, record["delivered"])
    return sum(counts.values()) / messages, {k: v / messages for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=pathlib.Path)
    parser.add_argument("new", type=pathlib.Path)
    parser.add_argument("--repeat", type=int, default=None, help="runs per tree (default 6, quick 1)")
    parser.add_argument("--quick", action="store_true", help="small workloads, a few seconds: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes per message, per function")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 6)
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {repeat}")
    roots = {"old": args.old.resolve(), "new": args.new.resolve()}
    trees = {label: SourceTree(root, ENTRY_MODULES, BENCH_MODULES) for label, root in roots.items()}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in roots}
    started = time.monotonic()
    for r in range(repeat):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for label in order:
            if args.verbose:
                print(f"[trees {time.monotonic() - started:6.1f}s] repeat {r + 1}/{repeat} {label}", file=sys.stderr)
            runs[label].append(run_once(trees[label], args.quick))
    out: dict[str, Any] = {"trees": {label: str(root) for label, root in roots.items()}, "repeat": repeat}
    for label, per_run in runs.items():
        block: dict[str, Any] = {
            key: round(statistics.median(r[key] for r in per_run), 3) for key in per_run[0]
        }
        block["runs"] = [{k: round(v, 3) for k, v in r.items()} for r in per_run]
        out[label] = block
    out["new_vs_old"] = {
        key: round(out["new"][key] / out["old"][key], 3) for key in ("cpu_ratio", "throughput_ratio")
    }
    if args.bytecodes:
        totals, per_function = {}, {}
        for label in roots:
            totals[label], per_function[label] = count_bytecodes(trees[label], args.quick)
        old, new = per_function["old"], per_function["new"]
        differences = sorted(
            ((new.get(k, 0.0) - old.get(k, 0.0), k) for k in set(old) | set(new)), key=lambda d: -abs(d[0])
        )
        out["bytecodes"] = {
            "per_msg": {label: round(total, 1) for label, total in totals.items()},
            "largest_differences": {k: round(d, 2) for d, k in differences[:25]},
        }
    out["duration_s"] = round(time.monotonic() - started, 1)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
