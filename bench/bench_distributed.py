"""Benchmark: distributed mode with real node processes on one private redis-server. Prints one JSON object.

    .venv/bin/python bench/bench_distributed.py [--messages 60000] [--repeat 3] [--quick]

Every node is ``run_system.py serve --redis URL --distributed --acks`` (``tests/dist_cluster.py``); the
redis-server is private (``tests/redis_support.py``: free loopback port, temporary directory, AOF everysec).

Sections:
    * ``throughput``: the same ``--messages`` (JSON lines, 1,000 channels, window 1 s, cap 10) pushed through
      1, 2 and 3 nodes in the same run, on the same Redis (flushed between runs), split evenly, each node's
      input written at once through its stdin pipe. ``msgs_per_s`` = messages / (last acknowledgement - first
      byte written): a message is acknowledged once stored in Redis. ``commands_per_msg`` comes from
      ``INFO commandstats`` over the whole run including the final flushes (``sent``: commands the nodes send,
      i.e. EVALSHA of the scripts and HGETALL of the settings; ``total``: those plus every command the scripts
      run). ``redis_cpu_us_per_msg``: the redis-server's CPU (``INFO cpu``, user + system, its append-only file
      included) over the same span, per message. Medians of ``--repeat`` runs (``runs`` lists each).
    * ``lateness``: 3 nodes, 1,000 channels, a steady paced load (``rate`` msg/s for ``seconds``, every message
      to a random node), window 0.2 s, cap 10; for every batch closed by its deadline, published time minus
      deadline, both Redis server time (``published`` and ``deadline`` of the stream entry), in ms.
    * ``orphans``: 3 nodes; one node alone receives one message for each of 1,000 channels (window 0.5 s) and is
      killed with SIGKILL once they are stored; the survivors' sweepers publish its batches. Delay = published
      time minus deadline, in ms, for every one of those batches.
    * ``bars``: the targets: >= 10,000 msg/s with one node, more with 3 than with 1, lateness p99 <= 20 ms,
      every orphan published within 1 s of its deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import statistics
import sys
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from source_trees import load_tests_module  # noqa: E402

redis_support = load_tests_module("redis_support")
dist_cluster = load_tests_module("dist_cluster")

import redis  # noqa: E402

CHANNELS = 1000
# Commands the nodes send themselves; every other command in INFO commandstats ran inside a script.
_SENT = {"evalsha", "hgetall", "script|load", "config|get", "hello", "ping", "client|setinfo", "select"}


def _lines(count: int, seed: int, prefix: str) -> list[bytes]:
    rng = random.Random(seed)
    return [
        dist_cluster.message_line(f"bench:{rng.randrange(CHANNELS):04d}", f"{prefix} message {i} of the benchmark",
                                  user=f"user{rng.randrange(20)}")
        for i in range(count)
    ]


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _redis_cpu(client: redis.Redis) -> float:
    """Seconds of CPU the redis-server has used (user + system, every thread)."""
    cpu: dict[str, Any] = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _stream_entries(client: redis.Redis) -> list[Any]:
    reader = dist_cluster.StreamReader(client)
    while reader.poll(block_ms=1):
        pass
    return reader.entries


def throughput_run(server: Any, client: redis.Redis, nodes_count: int, messages: int, seed: int) -> dict[str, Any]:
    client.flushall()
    client.config_resetstat()
    nodes = dist_cluster.start_nodes(server.url, nodes_count, "--window", "1.0", "--max-batch-size", "10",
                                     prefix=f"t{nodes_count}")
    try:
        lines = _lines(messages, seed, "t")
        shares = [lines[i::nodes_count] for i in range(nodes_count)]
        payloads = [b"".join(share) for share in shares]
        before = _commandstats(client)
        cpu_before = _redis_cpu(client)
        started = time.monotonic()
        writers = [threading.Thread(target=node.send, args=(payload, len(share)))
                   for node, payload, share in zip(nodes, payloads, shares)]
        for writer in writers:
            writer.start()
        for node, share in zip(nodes, shares):
            node.wait_acked(len(share), timeout=300)
        elapsed = time.monotonic() - started
        for writer in writers:
            writer.join()
        statuses = [node.finish(timeout=60) for node in nodes]
        after = _commandstats(client)
        redis_cpu = _redis_cpu(client) - cpu_before
    finally:
        for node in nodes:
            node.end()
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta.pop("info", None)
    delta.pop("config|resetstat", None)
    sent = sum(n for name, n in delta.items() if name in _SENT)
    total = sum(delta.values())
    entries = _stream_entries(client)
    published = sum(len(entry.batch.messages) for entry in entries)
    return {
        "nodes": nodes_count,
        "messages": messages,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(messages / elapsed),
        "commands_per_msg": {"sent": round(sent / messages, 3), "total": round(total / messages, 2)},
        "per_command": {name: round(n / messages, 3) for name, n in sorted(delta.items()) if n},
        "redis_cpu_us_per_msg": round(redis_cpu / messages * 1e6, 1),
        "published_messages": published,
        "batches": len(entries),
        "exit_statuses": statuses,
    }


def lateness_run(server: Any, client: redis.Redis, rate: int, seconds: float, seed: int) -> dict[str, Any]:
    client.flushall()
    nodes = dist_cluster.start_nodes(server.url, 3, "--window", "0.2", "--max-batch-size", "10", prefix="l")
    rng = random.Random(seed)
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    sent = 0
    try:
        started = time.monotonic()
        ticks = round(seconds / tick)
        for k in range(ticks):
            pause = started + k * tick - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the traffic plan: a slice of messages every tick
            slices: dict[int, list[bytes]] = {}
            for _ in range(per_tick):
                channel = f"late:{rng.randrange(CHANNELS):04d}"
                slices.setdefault(rng.randrange(3), []).append(dist_cluster.message_line(channel, f"m{sent}"))
                sent += 1
            for index, chunk in slices.items():
                nodes[index].send(b"".join(chunk), len(chunk))
        achieved = sent / (time.monotonic() - started)
        statuses = [node.finish(timeout=60) for node in nodes]
    finally:
        for node in nodes:
            node.end()
    entries = _stream_entries(client)
    late = [e.lateness_ms for e in entries if e.lateness_ms is not None]
    timer = [e.lateness_ms for e in entries if e.lateness_ms is not None and e.by.endswith("/timer")]
    return {
        "nodes": 3,
        "channels": CHANNELS,
        "rate": rate,
        "achieved_rate": round(achieved),
        "seconds": seconds,
        "messages": sent,
        "published_messages": sum(len(e.batch.messages) for e in entries),
        "batches_by_deadline": len(late),
        "batches_full": sum(1 for e in entries if e.reason == "full"),
        "swept": sum(1 for e in entries if e.by.endswith("/sweep")),
        "lateness_ms": _summary(late),
        "lateness_ms_timer_only": _summary(timer),
        "exit_statuses": statuses,
    }


def orphan_run(server: Any, client: redis.Redis, seed: int) -> dict[str, Any]:
    client.flushall()
    nodes = dist_cluster.start_nodes(server.url, 3, "--window", "0.5", "--max-batch-size", "10",
                                     "--sweep-interval", "0.2", "--grace", "0.1", prefix="o")
    victim, survivors = nodes[0], nodes[1:]
    try:
        lines = [dist_cluster.message_line(f"orphan:{c:04d}", f"o{c}") for c in range(CHANNELS)]
        victim.send(b"".join(lines), len(lines))
        victim.wait_acked(len(lines))
        victim.kill()
        reader = dist_cluster.StreamReader(client)
        reader.read_until(lambda: sum(len(e.batch.messages) for e in reader.entries) >= CHANNELS, timeout=30)
        statuses = [node.finish(timeout=60) for node in survivors]
    finally:
        for node in nodes:
            node.end()
    delays = [e.lateness_ms for e in reader.entries if e.lateness_ms is not None]
    return {
        "orphaned_batches": len(reader.entries),
        "published_by": sorted({e.by for e in reader.entries}),
        "delay_ms": _summary(delays),
        "exit_statuses": statuses,
    }


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "count": len(values),
        "p50": dist_cluster.percentile(values, 0.5),
        "p90": dist_cluster.percentile(values, 0.9),
        "p99": dist_cluster.percentile(values, 0.99),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=3000, help="messages per second of the lateness run")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the lateness run")
    parser.add_argument("--quick", action="store_true", help="small runs (a smoke test, not a measurement)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeat, args.seconds, args.rate = 6000, 1, 1.0, 1000
    report: dict[str, Any] = {
        "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "quick": args.quick,
                "repeat": args.repeat, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "command": " ".join(["bench/bench_distributed.py", *sys.argv[1:]]),
    }
    with redis_support.redis_server() as server:
        client = redis.Redis.from_url(server.url)
        try:
            report["env"]["redis"] = client.info("server")["redis_version"]
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}
            for repeat in range(args.repeat):
                for count in (1, 2, 3):
                    runs[count].append(throughput_run(server, client, count, args.messages, seed=repeat))
            throughput: dict[str, Any] = {}
            for count, results in runs.items():
                best = sorted(results, key=lambda r: r["msgs_per_s"])[len(results) // 2]
                throughput[f"nodes_{count}"] = {
                    **best,
                    "msgs_per_s": statistics.median(r["msgs_per_s"] for r in results),
                    "redis_cpu_us_per_msg": statistics.median(r["redis_cpu_us_per_msg"] for r in results),
                    "runs": [r["msgs_per_s"] for r in results],
                }
            ratios = [runs[3][i]["msgs_per_s"] / runs[1][i]["msgs_per_s"] for i in range(args.repeat)]
            throughput["ratio_3_vs_1"] = round(statistics.median(ratios), 2)
            report["throughput"] = throughput
            report["lateness"] = lateness_run(server, client, args.rate, args.seconds, seed=7)
            report["orphans"] = orphan_run(server, client, seed=11)
        finally:
            client.close()
    report["env"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    one = report["throughput"]["nodes_1"]["msgs_per_s"]
    report["bars"] = {
        "one_node_ge_10k_msgs_per_s": one >= 10_000,
        "three_nodes_more_than_one": report["throughput"]["ratio_3_vs_1"] > 1.0,
        "lateness_p99_le_20ms": report["lateness"]["lateness_ms"].get("p99", 1e9) <= 20,
        "orphans_within_1s": report["orphans"]["delay_ms"].get("max", 1e9) <= 1000,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
