"""Benchmark: the persisted workloads on two source trees of this project, in one process. Prints JSON.

    .venv/bin/python bench/bench_watermark.py [--repeat N] [--quick] [--verbose] [--bytecodes] OLD_TREE NEW_TREE

Written to compare the two ways a channel's outgoing messages wait for their operations to be stored: each
``Persist`` carrying the messages, handed back one ``Durable`` per ``Persist`` (OLD), against the channel
holding them itself until one ``Durable(upto)`` per channel and write (NEW); it compares any two trees, e.g.
``git archive <commit> | tar -x -C /tmp/before`` then ``bench/bench_watermark.py --repeat 5 /tmp/before .``.
As in ``bench_trees.py``, each tree's modules (``actors``, ``protocol``, ``message_queue``, ``service`` and
the benchmark modules) are imported once under their own names and swapped into ``sys.modules`` before each of
its runs, so both trees run in the same process against the same private redis-server (``tests/redis_support.py``
of NEW_TREE: ``appendonly yes``, ``appendfsync everysec``), alternating, the order flipping from repeat to
repeat. A tree must have ``bench/bench_durable.py`` and ``bench/bench_persistence.py``.

Workloads, each tree's own code (Redis emptied before each run):

    * ``saturated``: ``bench_persistence.run_persistent_bursts`` (``InProcessDriver`` persisting to Redis, the
      processor answering at once): 2,000 channels, 4 rounds of bursts of 5 (``--quick``: 100 channels, 2);
      ``msgs_per_s`` (delivered), ``cpu_us_per_msg`` (the actor thread's CPU);
    * ``durable_<shape>``: ``bench_durable.run_once`` persisted (``MessageQueue(redis=...)``, each ``enqueue``
      returning once stored) for the shapes ``sequential`` (one producer awaiting each call), ``concurrent``
      (100 producer tasks) and ``enqueue_many`` (calls of 100); ``msgs_per_s`` (acknowledged) and
      ``cpu_us_per_msg`` (the process's CPU, first call to last delivery).

Per tree and workload: medians over the repeats (``runs`` lists each). ``new_vs_old``: per workload, the
median over the repeats of NEW's number over OLD's in the same repeat, with the lowest and highest of those
paired ratios (how far repeats of the same comparison spread: the noise); throughput above 1.0 and CPU below
1.0 favour NEW. On a shared 2-core machine, comparing a tree with a copy of itself gave paired CPU ratios from
0.94 to 1.24 and medians up to 1.13 (the tree in the NEW slot ran slightly slower in every workload): timed
differences of a few per cent are noise there. Running the comparison a second time with the trees swapped and
taking the geometric mean of NEW/OLD and 1 / (swapped NEW/OLD) cancels that slot's bias.

``--bytecodes`` adds, per tree and workload, one smaller run (``saturated``: 200 channels, 2 rounds;
``durable``: 500 messages sequential, 1,000 in each other shape; ``--quick``: 10 channels, 50 messages) with
``sys.settrace`` and ``threading.settrace`` counting the bytecodes executed in every thread, from the start of
the run to its end (set-up and shutdown included): ``bytecodes.per_msg``, ``bytecodes.project_per_msg`` (those
in the tree's own files) and ``bytecodes.largest_differences`` (the functions whose count per message differs
most, new minus old). A count does not depend on the machine's load, though the number of messages a write
carries, which timing decides, still moves it by a few per cent.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import pathlib
import statistics
import sys
import threading
import time
from collections import Counter
from types import CodeType, FrameType
from typing import Any, Callable

from source_trees import SourceTree, load_tests_module

BENCH_MODULES = ("bench_durable", "bench_persistence", "bench_actors", "asyncio_baseline", "loop_support")
ENTRY_MODULES = ("bench_durable", "actors.persistence")
SHAPES = ("sequential", "concurrent", "enqueue_many")
WORKLOADS = ("saturated",) + tuple(f"durable_{shape}" for shape in SHAPES)
METRICS = ("msgs_per_s", "cpu_us_per_msg")


def run_tree(tree: SourceTree, url: str, client: Any, quick: bool) -> dict[str, dict[str, float]]:
    """One run of every workload on one tree."""
    modules = tree.activate()
    bd, bp, ba = modules["bench_durable"], modules["bench_persistence"], modules["bench_actors"]
    out: dict[str, dict[str, float]] = {}
    wl = ba.Bursts(channels=100 if quick else 2000, rounds=2 if quick else 4, period=0.1, spread=0.0)
    gc.collect()
    record = bp.run_persistent_bursts(wl, url, client)
    if not (record["all_delivered"] and record["in_order"]):
        raise RuntimeError("saturated: a run did not deliver every message in order")
    out["saturated"] = {"msgs_per_s": record["msgs_per_s"], "cpu_us_per_msg": 1e6 / record["msgs_per_cpu_s"]}
    p = bd.Params(repeat=1, sequential=200, per_task=5, many_calls=5) if quick else bd.Params(repeat=1)
    for shape in SHAPES:
        gc.collect()
        record = bd.run_once(p, shape, "persisted", client, url)
        if not (record["all_delivered"] and record["in_order"]):
            raise RuntimeError(f"durable {shape}: a run did not deliver every message in order")
        out[f"durable_{shape}"] = {"msgs_per_s": record["acked_msgs_per_s"], "cpu_us_per_msg": record["cpu_us_per_msg"]}
    return out


def count_bytecodes(tree: SourceTree, url: str, client: Any, quick: bool) -> dict[str, tuple[int, Counter[str]]]:
    """Per workload: the messages and the bytecodes executed per function (``file:function``, files of the
    tree named relative to it) of one traced run."""
    modules, root = tree.activate(), tree.root
    bd, bp, ba = modules["bench_durable"], modules["bench_persistence"], modules["bench_actors"]
    wl = ba.Bursts(channels=10 if quick else 200, rounds=2, period=0.1, spread=0.0)
    p = (bd.Params(repeat=1, channels=10, sequential=50, tasks=10, per_task=5, many_calls=1, many_size=50) if quick
         else bd.Params(repeat=1, sequential=500, per_task=10, many_calls=10))
    runs: dict[str, Callable[[], Any]] = {"saturated": lambda: bp.run_persistent_bursts(wl, url, client)}
    for shape in SHAPES:
        runs[f"durable_{shape}"] = functools.partial(bd.run_once, p, shape, "persisted", client, url)
    out: dict[str, tuple[int, Counter[str]]] = {}
    prefix = str(root) + "/"
    for workload, run in runs.items():
        counts: Counter[CodeType] = Counter()

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            frame.f_trace_opcodes = True
            code = frame.f_code

            def local(frame: FrameType, event: str, arg: object) -> Any:
                if event == "opcode":
                    counts[code] += 1
                return local

            return local

        gc.collect()
        threading.settrace(tracer)
        sys.settrace(tracer)
        try:
            record = run()
        finally:
            sys.settrace(None)
            threading.settrace(None)  # type: ignore[arg-type]
        named: Counter[str] = Counter()
        for code, n in counts.items():
            named[f"{code.co_filename.removeprefix(prefix)}:{code.co_qualname}"] += n
        out[workload] = (record.get("delivered", 0), named)
    return out


def bytecode_report(old: dict[str, tuple[int, Counter[str]]], new: dict[str, tuple[int, Counter[str]]],
                    roots: dict[str, pathlib.Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload in WORKLOADS:
        per_msg: dict[str, dict[str, float]] = {}
        for name, (messages, counts) in (("old", old[workload]), ("new", new[workload])):
            per_msg[name] = {k: v / max(1, messages) for k, v in counts.items()}
        own = {name: sum(v for k, v in per_msg[name].items() if not k.startswith("/")) for name in per_msg}
        total = {name: sum(per_msg[name].values()) for name in per_msg}
        keys = set(per_msg["old"]) | set(per_msg["new"])
        diff = {k: per_msg["new"].get(k, 0.0) - per_msg["old"].get(k, 0.0) for k in keys}
        largest = sorted(keys, key=lambda k: -abs(diff[k]))[:12]
        out[workload] = {
            "per_msg": {name: round(total[name], 1) for name in total},
            "project_per_msg": {name: round(own[name], 1) for name in own},
            "new_vs_old": round(total["new"] / total["old"], 3),
            "project_new_vs_old": round(own["new"] / own["old"], 3),
            "largest_differences": {k: round(diff[k], 2) for k in largest},
        }
    return out


def compare(old: pathlib.Path, new: pathlib.Path, repeat: int, quick: bool, bytecodes: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
    trees = {name: SourceTree(root, ENTRY_MODULES, BENCH_MODULES) for name, root in (("old", old), ("new", new))}
    redis_support = load_tests_module("redis_support", new)
    if redis_support.REDIS_SERVER is None:
        raise SystemExit("redis-server not found on PATH")
    import redis

    runs: dict[str, list[dict[str, dict[str, float]]]] = {"old": [], "new": []}
    started = time.monotonic()
    with redis_support.redis_server() as server:
        client = redis.Redis.from_url(server.url)
        try:
            for r in range(repeat):
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    log(f"repeat {r + 1}/{repeat} {name}")
                    runs[name].append(run_tree(trees[name], server.url, client, quick))
            if bytecodes:
                log("bytecodes")
                counted = {name: count_bytecodes(trees[name], server.url, client, quick)
                           for name in ("old", "new")}
        finally:
            client.close()
    out: dict[str, Any] = {"trees": {"old": str(old), "new": str(new)}, "repeat": repeat, "quick": quick}
    for name in ("old", "new"):
        out[name] = {
            wl: {
                metric: round(statistics.median(run[wl][metric] for run in runs[name]), 2)
                for metric in METRICS
            } | {"runs": {metric: [round(run[wl][metric], 1) for run in runs[name]] for metric in METRICS}}
            for wl in WORKLOADS
        }
    out["new_vs_old"] = {}
    for wl in WORKLOADS:
        out["new_vs_old"][wl] = {}
        for metric in METRICS:
            paired = [n[wl][metric] / o[wl][metric] for o, n in zip(runs["old"], runs["new"])]
            out["new_vs_old"][wl][metric] = {
                "median": round(statistics.median(paired), 3),
                "min": round(min(paired), 3),
                "max": round(max(paired), 3),
            }
    if bytecodes:
        out["bytecodes"] = bytecode_report(counted["old"], counted["new"], {"old": old, "new": new})
    out["duration_s"] = round(time.monotonic() - started, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("old", type=pathlib.Path, help="the source tree before the change")
    parser.add_argument("new", type=pathlib.Path, help="the source tree with the change")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="small workloads, a few seconds: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes per message (traced runs)")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {repeat}")
    started = time.monotonic()

    def log(msg: str) -> None:
        if args.verbose:
            print(f"[bench_watermark {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    result = compare(args.old.resolve(), args.new.resolve(), repeat, args.quick, args.bytecodes, log)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
