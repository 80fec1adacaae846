"""Benchmark: the actor system in memory against the same system persisting to Redis. Prints one JSON object.

    .venv/bin/python bench/bench_persistence.py [--repeat N] [--quick] [--verbose]

The workloads and metrics are those of :mod:`bench_actors` (imported, not copied): the "bursts" workloads
(``saturated``: capacity; ``paced``: a steady moderate load; ``lateness``: many channels open at once, all
flushing by window), each driven through :class:`actors.driver.InProcessDriver` by
``bench_actors.run_actor_bursts`` (the processor is the driver's ``on_output`` callback, which records the
batch and answers ``ProcessingDone`` at once), twice:

    * ``in_memory``: ``InProcessDriver(on_output, settings)``;
    * ``persistent``: ``InProcessDriver(on_output, settings, redis_url=URL)``: every channel journals its state
      through RedisPersistence (one atomic script call per flush) and deliveries leave only once durable. URL points
      at a private redis-server the script starts (``tests/redis_support.py``: free loopback port, temporary
      directory, ``appendonly yes``, ``appendfsync everysec``, ``noeviction``), emptied (``FLUSHALL``) before
      each persistent run so every run starts from the same state.

In-memory and persistent runs alternate within each repeat (which goes first alternates too); ratios are taken
per repeat, then the median. ``--repeat`` defaults to 3 (``--quick``: 1, small workloads, a few seconds).

Per implementation and workload (medians; ``runs`` lists each repeat): ``msgs_per_s`` (messages delivered to
the processor per second, first enqueue to last delivery), ``msgs_per_cpu_s`` (per CPU second of the actor
thread; Redis's own CPU is not counted), ``lateness_ms`` p50/p99/max (``delivery``: delivery time minus the
batch's last send time + window, + 0 for a full batch; ``core``: ``BatchReady.lateness``, the actor's timer
lateness, which does not include the wait for the write). Persistent runs add ``redis``: the
``INFO commandstats`` delta over the run (from the driver's start to its stop, so the start-up checks and the
final write at shutdown are included; the benchmark's own ``INFO``/``FLUSHALL`` calls are left out):
``writes_per_msg`` (write round trips per message: the store's script calls, ``EVALSHA``, plus any
``EXEC``), ``commands_per_msg`` (every command, those run inside the scripts included), ``msgs_per_write`` and
``leftover_keys`` (open-batch, queue and in-flight keys still present after the run: 0
when every message was delivered and acknowledged).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
import importlib.util
import pathlib
import sys
import time
from dataclasses import asdict
from typing import Any, Callable, Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
import redis  # noqa: E402
from bench_actors import (  # noqa: E402
    Bursts,
    Params,
    channel_name,
    environment,
    median,
    run_actor_bursts,
    summarize,
)
from source_trees import load_tests_module  # noqa: E402

from actors.driver import InProcessDriver  # noqa: E402
from protocol import keys  # noqa: E402

mono = time.monotonic

RATIO_BAR = 0.3  # persistent / in-memory throughput, saturated workload
_OWN_COMMANDS = {"info", "flushall", "exists", "dbsize"}  # the benchmark's, not the system's


@contextlib.contextmanager
def persistent_drivers(url: str) -> Iterator[None]:
    """Make ``bench_actors.run_actor_bursts`` build its driver with ``redis_url=url`` (it names
    ``InProcessDriver`` through its module's globals), so the persistent run is that very function."""
    ba.InProcessDriver = functools.partial(InProcessDriver, redis_url=url)
    try:
        yield
    finally:
        ba.InProcessDriver = InProcessDriver


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command (lower case), from ``INFO commandstats``."""
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_").lower(): int(stat["calls"]) for name, stat in info.items()}


def leftover_keys(client: redis.Redis, channels: list[str]) -> int:
    """Open-batch, queue and in-flight keys still present for ``channels``."""
    pipe = client.pipeline(transaction=False)
    for channel in channels:
        pipe.exists(
            keys.channel_key(keys.OPEN_BATCH, channel),
            keys.queue_key(channel),
            keys.channel_key(keys.PROCESSING, channel),
        )
    return int(sum(pipe.execute()))


def run_persistent_bursts(wl: Bursts, url: str, client: redis.Redis) -> dict[str, Any]:
    client.flushall()
    before = commandstats(client)
    with persistent_drivers(url):
        record = run_actor_bursts(wl)
    after = commandstats(client)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items() if name not in _OWN_COMMANDS}
    delta = {name: calls for name, calls in delta.items() if calls}
    delivered = max(1, record["delivered"])
    writes = delta.get("evalsha", 0) + delta.get("eval", 0) + delta.get("exec", 0)
    record["redis"] = {
        "writes": writes,
        "commands": sum(delta.values()),
        "writes_per_msg": round(writes / delivered, 4),
        "commands_per_msg": round(sum(delta.values()) / delivered, 3),
        "msgs_per_write": round(delivered / writes, 2) if writes else None,
        "leftover_keys": leftover_keys(client, [channel_name(c) for c in range(wl.channels)]),
        "by_command": dict(sorted(delta.items(), key=lambda kv: -kv[1])),
    }
    return record


# -- the run ----------------------------------------------------------------------------------------------


def run(p: Params, url: str, client: redis.Redis, log: Callable[[str], None]) -> dict[str, Any]:
    started = mono()
    shapes = (("saturated", p.saturated), ("paced", p.paced), ("lateness", p.lateness))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(p.repeat):
        for shape, wl in shapes:
            order: tuple[tuple[str, Callable[[Bursts], dict[str, Any]]], ...] = (
                ("in_memory", run_actor_bursts),
                ("persistent", lambda w: run_persistent_bursts(w, url, client)),
            )
            for impl, fn in order if r % 2 == 0 else order[::-1]:
                log(f"repeat {r + 1}/{p.repeat} {shape} {impl}")
                gc.collect()
                runs.setdefault((impl, shape), []).append(fn(wl))
    out: dict[str, Any] = {}
    for impl in ("in_memory", "persistent"):
        out[impl] = {}
        for shape, _ in shapes:
            block = summarize(runs[(impl, shape)])
            if impl == "persistent":
                per_run = [r["redis"] for r in runs[(impl, shape)]]
                block["redis"] = {
                    key: ba._round(median([x[key] for x in per_run]))
                    for key in ("writes_per_msg", "commands_per_msg", "msgs_per_write")
                }
                block["redis"]["leftover_keys"] = max(x["leftover_keys"] for x in per_run)
                block["redis"]["by_command_first_run"] = per_run[0]["by_command"]
                block["runs"]["writes_per_msg"] = [x["writes_per_msg"] for x in per_run]
            out[impl][shape] = block

    def ratios(shape: str, key: str) -> list[float | None]:
        return [
            ba._ratio(a[key], b[key]) for a, b in zip(runs[("persistent", shape)], runs[("in_memory", shape)])
        ]

    sat = ratios("saturated", "msgs_per_s")
    out["ratios"] = {
        "persistent_vs_in_memory_saturated_throughput": ba._round(median(sat)),
        "runs_persistent_vs_in_memory_saturated_throughput": sat,
        "persistent_vs_in_memory_saturated_msgs_per_cpu_s": ba._round(
            median(ratios("saturated", "msgs_per_cpu_s"))
        ),
        "persistent_vs_in_memory_paced_throughput": ba._round(median(ratios("paced", "msgs_per_s"))),
    }
    ratio = out["ratios"]["persistent_vs_in_memory_saturated_throughput"]
    correct = all(
        out[impl][shape]["all_delivered"]
        and out[impl][shape]["in_order"]
        and not out[impl][shape]["duplicates"]
        and not out[impl][shape].get("unexpected_outputs", 0)
        for impl in ("in_memory", "persistent")
        for shape, _ in shapes
    ) and all(out["persistent"][shape]["redis"]["leftover_keys"] == 0 for shape, _ in shapes)
    out["bars"] = {
        "throughput_ratio_ge_0_3": ratio is not None and ratio >= RATIO_BAR,
        "every_message_once_in_order_nothing_left_in_redis": correct,
    }
    out["bars"]["all_pass"] = all(out["bars"].values())
    late = {impl: out[impl]["lateness"]["lateness_ms"]["delivery"] for impl in ("in_memory", "persistent")}
    out["bar_values"] = {
        "throughput_ratio": {"value": ratio, "threshold": f">= {RATIO_BAR}", "workload": "saturated"},
        "lateness_delivery_p99_ms": {
            "in_memory": late["in_memory"]["p99"],
            "persistent": late["persistent"]["p99"],
            "what": f"{p.lateness.channels} channels open at once, window {p.lateness.window} s (reported, no bar)",
        },
    }
    out["notes"] = [
        "saturated: the producer outruns the system, so delivery lateness there is queueing backlog",
        "writes_per_msg counts RedisPersistence's writes (one atomic script call, one round trip, each); "
        "the start-up checks and the restore add a few plain round trips (config get, get, set, scard, "
        "smembers, one MULTI/EXEC), counted in commands_per_msg",
        "InProcessDriver runs each fire-and-forget command (each ProcessingDone) to completion on its own, and "
        "RedisPersistence's zero-delay flush fires inside it: about one write per delivered batch",
        "msgs_per_cpu_s counts the actor thread only: the Redis server's CPU (same 2-core machine) is not in it",
    ]
    out["duration_s"] = round(mono() - started, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    args, p, log = ba.cli(argv, __doc__, "bench_persistence")
    redis_support = load_tests_module("redis_support")
    if redis_support.REDIS_SERVER is None:
        print("redis-server not found on PATH", file=sys.stderr)
        return 2
    with redis_support.redis_server() as server:
        client = redis.Redis.from_url(server.url)
        try:
            server_info = client.info("server")
            persistence = client.config_get("appendonly")
            persistence.update(client.config_get("appendfsync"))
            env = environment(p, args.quick)
            env["redis_py"] = importlib.metadata.version("redis")
            env["redis_server"] = server_info.get("redis_version")
            env["redis_config"] = persistence
            result: dict[str, Any] = {
                "env": env,
                "params": {shape: asdict(getattr(p, shape)) for shape in ("saturated", "paced", "lateness")},
            }
            result.update(run(p, server.url, client, log))
        finally:
            client.close()
    ba.emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
