"""Benchmark: durable enqueue, ``MessageQueue(redis=client)`` against the in-memory ``MessageQueue()``. Prints
one JSON object.

    .venv/bin/python bench/bench_durable.py [--repeat N] [--quick] [--verbose]

With ``redis=``, ``await enqueue(msg)`` returns once the message is stored in Redis (messages accepted in one
loop iteration share one write). The script starts a private redis-server (``tests/redis_support.py``: a free
loopback port, a temporary directory, ``appendonly yes``, ``appendfsync everysec``, ``noeviction``), empties
it (``FLUSHALL``) before each persisted run, and runs three producer shapes, each in memory and persisted
(alternating, which goes first alternating too; medians of ``--repeat`` runs, default 3, ``--quick`` 1):

    * ``sequential``: one producer awaiting each ``enqueue`` in turn, messages round robin over the channels;
    * ``concurrent``: 100 producer tasks at once, task k sending its messages to channel k, each awaiting
      each ``enqueue`` in turn;
    * ``enqueue_many``: one producer awaiting ``enqueue_many`` of 100 messages at a time (round robin over
      the channels).

``default_batch_window=0.05``, ``max_batch_size=10``, 100 channels, each with a callback (registered before
the clock starts) that records its batch and returns at once. Per shape and mode (medians; ``runs`` lists each
repeat):

    * ``acked_msgs_per_s``: messages whose ``enqueue`` returned, per second, from the first call to the last
      return; ``ack_latency_ms`` p50/p99/max: each call's duration (``enqueue_many``: the call of 100), but
      for the calls that carry a channel's first message, apart in ``ack_latency_first_ms``: with ``redis=``
      that message first waits for a read of its channel's settings hash (``message_queue.config``);
    * ``stalls_ms``: the loop's stalls from the first call until every message was delivered
      (``loop_support.StallProbe``: a 1 ms sleep and a 1 ms ``call_later``, how late each fired);
    * ``cpu_us_per_msg``: the process's CPU (``time.process_time``: the loop thread and, persisted, the
      thread that makes the Redis calls) per message, first call to last delivery; Redis's own CPU is not in it;
    * persisted only, ``redis``: the ``INFO commandstats`` delta: ``evalsha_per_msg_acked`` (script calls,
      ``EVALSHA``, per message from the first call to the last return: the writes that acknowledge),
      ``evalsha_per_msg`` (the same through delivery and the queue's close, which writes the last
      completions), ``commands_per_msg`` (every command, those the scripts run included) and ``by_command``;
      ``leftover_keys``: open-batch, queue and in-flight keys left after the close (0 when everything was
      delivered and its completion stored);
    * ``delivered``/``in_order``/``duplicates``: every message delivered once, in order per channel.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import pathlib
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from bench_actors import channel_name, check_order, environment, median, percentiles_ms, seq_of  # noqa: E402
from bench_persistence import _OWN_COMMANDS, commandstats, leftover_keys  # noqa: E402
from loop_support import StallProbe, stall_summary  # noqa: E402
from source_trees import load_tests_module  # noqa: E402

from message_queue import MessageQueue  # noqa: E402
from protocol.values import Payload, QueuedMessage, payload_messages  # noqa: E402

mono = time.monotonic

STALL_BAR_MS = 20.0  # p99 of the loop's stalls while persisted producers run

SHAPES = ("sequential", "concurrent", "enqueue_many")
MODES = ("in_memory", "persisted")


@dataclass(frozen=True)
class Params:
    repeat: int
    channels: int = 100
    sequential: int = 2_000  # messages
    tasks: int = 100
    per_task: int = 50
    many_calls: int = 50
    many_size: int = 100
    window: float = 0.05
    max_batch_size: int = 10

    def total(self, shape: str) -> int:
        return {
            "sequential": self.sequential,
            "concurrent": self.tasks * self.per_task,
            "enqueue_many": self.many_calls * self.many_size,
        }[shape]


def messages_for(p: Params, shape: str) -> list[list[QueuedMessage]]:
    """The messages of each producer (or of each ``enqueue_many`` call), numbered in the order they are sent
    per channel: channel order is each producer's order."""
    if shape == "concurrent":
        return [
            [QueuedMessage("bench", channel_name(k % p.channels), "u1", "User", str(k * p.per_task + i))
             for i in range(p.per_task)]
            for k in range(p.tasks)
        ]
    total = p.total(shape)
    flat = [QueuedMessage("bench", channel_name(i % p.channels), "u1", "User", str(i)) for i in range(total)]
    if shape == "sequential":
        return [flat]
    return [flat[i:i + p.many_size] for i in range(0, total, p.many_size)]


def expected_by_channel(groups: list[list[QueuedMessage]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for group in groups:
        for msg in group:
            out.setdefault(msg.channel_id, []).append(seq_of(msg))
    return out


class Run:
    """One run of one shape in one mode."""

    def __init__(self, p: Params, shape: str, client: redis.Redis | None, url: str | None) -> None:
        self.p, self.shape, self.client, self.url = p, shape, client, url
        self.groups = messages_for(p, shape)
        self.total = sum(len(g) for g in self.groups)
        self.latencies: list[float] = []
        self.first_latencies: list[float] = []  # calls carrying their channel's first message
        self.seen: set[str] = set()
        self.delivered: dict[str, list[int]] = {}
        self.count = 0
        self.done: asyncio.Event | None = None

    async def callback(self, payload: Payload) -> None:
        for msg in payload_messages(payload):
            self.delivered.setdefault(msg.channel_id, []).append(seq_of(msg))
            self.count += 1
        if self.count >= self.total and self.done is not None:
            self.done.set()

    def _record(self, started: float, group: list[QueuedMessage]) -> None:
        elapsed = mono() - started
        new = {msg.channel_id for msg in group} - self.seen
        if new:
            self.seen |= new
            self.first_latencies.append(elapsed)
        else:
            self.latencies.append(elapsed)

    async def one_by_one(self, enqueue: Callable[[QueuedMessage], Awaitable[None]], group: list[QueuedMessage]) -> None:
        for msg in group:
            t = mono()
            await enqueue(msg)
            self._record(t, [msg])

    async def main(self) -> dict[str, Any]:
        self.done = asyncio.Event()
        aclient = redis.asyncio.Redis.from_url(self.url) if self.url else None
        mq = MessageQueue(default_batch_window=self.p.window, max_batch_size=self.p.max_batch_size, redis=aclient)
        stalls = StallProbe()
        stats: list[dict[str, int]] = []
        try:
            for c in range(self.p.channels):
                await mq.start_processing(channel_name(c), self.callback)
            await mq.statistics(channel_name(0))  # a barrier: the setup is done
            if self.client is not None:
                stats.append(commandstats(self.client))
            stalls.start()
            cpu0 = time.process_time()
            t0 = mono()
            if self.shape == "sequential":
                await self.one_by_one(mq.enqueue, self.groups[0])
            elif self.shape == "concurrent":
                await asyncio.gather(*(self.one_by_one(mq.enqueue, g) for g in self.groups))
            else:
                for group in self.groups:
                    t = mono()
                    await mq.enqueue_many(group)
                    self._record(t, group)
            acked = mono() - t0
            if self.client is not None:
                stats.append(commandstats(self.client))  # a blocking call: the loop waits a round trip
            try:
                await asyncio.wait_for(self.done.wait(), 60.0 + self.total / 500)
            except TimeoutError:
                pass
            delivered_s = mono() - t0
            cpu = time.process_time() - cpu0
            await stalls.stop()
        finally:
            await mq.close()
            if aclient is not None:
                await aclient.aclose()
        in_order, dups = check_order(self.delivered, expected_by_channel(self.groups))
        record: dict[str, Any] = {
            "acked_msgs_per_s": self.total / acked if acked > 0 else None,
            "acked_s": acked,
            "delivered_s": delivered_s,
            "cpu_us_per_msg": cpu / self.total * 1e6,
            "ack_latency_ms": percentiles_ms(self.latencies),
            "ack_latency_first_ms": percentiles_ms(self.first_latencies),
            "expected": self.total,
            "delivered": self.count,
            "all_delivered": self.count == self.total,
            "in_order": in_order,
            "duplicates": dups,
            "stalls": stalls.report(),
        }
        if self.client is not None:
            stats.append(commandstats(self.client))
            record["redis"] = redis_record(stats, self.total, self.client, self.p.channels)
        return record


def redis_record(stats: list[dict[str, int]], total: int, client: redis.Redis, channels: int) -> dict[str, Any]:
    before, at_ack, after = stats

    def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        d = {k: v - a.get(k, 0) for k, v in b.items() if k not in _OWN_COMMANDS}
        return {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v}

    acked, whole = delta(before, at_ack), delta(before, after)
    return {
        "evalsha_per_msg_acked": round(acked.get("evalsha", 0) / total, 4),
        "evalsha_per_msg": round(whole.get("evalsha", 0) / total, 4),
        "commands_per_msg": round(sum(whole.values()) / total, 3),
        "by_command": whole,
        "leftover_keys": leftover_keys(client, [channel_name(c) for c in range(channels)]),
    }


def run_once(p: Params, shape: str, mode: str, client: redis.Redis, url: str) -> dict[str, Any]:
    if mode == "persisted":
        client.flushall()
        return asyncio.run(Run(p, shape, client, url).main())
    return asyncio.run(Run(p, shape, None, None).main())


def run(p: Params, client: redis.Redis, url: str, log: Callable[[str], None]) -> dict[str, Any]:
    started = mono()
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(p.repeat):
        for shape in SHAPES:
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                log(f"repeat {r + 1}/{p.repeat} {shape} {mode}")
                gc.collect()
                runs.setdefault((shape, mode), []).append(run_once(p, shape, mode, client, url))
    out: dict[str, Any] = {}
    for shape in SHAPES:
        out[shape] = {}
        for mode in MODES:
            per_run = runs[(shape, mode)]
            block: dict[str, Any] = {
                key: ba._round(median([x[key] for x in per_run]))
                for key in ("acked_msgs_per_s", "acked_s", "delivered_s", "cpu_us_per_msg")
            }
            for key in ("ack_latency_ms", "ack_latency_first_ms"):
                block[key] = {
                    k: ba._round(median([x[key][k] for x in per_run])) for k in ("p50", "p99", "max")
                }
            block["stalls_ms"] = stall_summary([x["stalls"] for x in per_run], median)
            block["expected"] = per_run[0]["expected"]
            block["delivered"] = min(x["delivered"] for x in per_run)
            for key in ("all_delivered", "in_order"):
                block[key] = all(x[key] for x in per_run)
            block["duplicates"] = max(x["duplicates"] for x in per_run)
            block["runs"] = {"acked_msgs_per_s": [ba._round(x["acked_msgs_per_s"]) for x in per_run]}
            if mode == "persisted":
                reds = [x["redis"] for x in per_run]
                block["redis"] = {
                    k: ba._round(median([x[k] for x in reds]))
                    for k in ("evalsha_per_msg_acked", "evalsha_per_msg", "commands_per_msg")
                }
                block["redis"]["leftover_keys"] = max(x["leftover_keys"] for x in reds)
                block["redis"]["by_command_first_run"] = reds[0]["by_command"]
            out[shape][mode] = block
        ratio = [ba._ratio(a["acked_msgs_per_s"], b["acked_msgs_per_s"])
                 for a, b in zip(runs[(shape, "persisted")], runs[(shape, "in_memory")])]
        out[shape]["persisted_vs_in_memory_acked_rate"] = ba._round(median(ratio))
    correct = all(
        out[s][m]["all_delivered"] and out[s][m]["in_order"] and not out[s][m]["duplicates"]
        for s in SHAPES for m in MODES
    ) and all(out[s]["persisted"]["redis"]["leftover_keys"] == 0 for s in SHAPES)
    worst = max(out[s]["persisted"]["stalls_ms"]["p99"] or 0.0 for s in SHAPES)
    out["bars"] = {
        "persisted_loop_stall_p99_le_20ms": worst <= STALL_BAR_MS,
        "every_message_once_in_order_nothing_left_in_redis": correct,
    }
    out["bars"]["all_pass"] = all(out["bars"].values())
    out["bar_values"] = {
        "loop_stall_p99_ms": {
            "value": worst, "threshold": f"<= {STALL_BAR_MS}",
            "what": "the worst shape's p99 of the loop's stalls, persisted, first call to last delivery",
        },
    }
    out["duration_s"] = round(mono() - started, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="small workloads, a few seconds: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {repeat}")
    p = Params(repeat=repeat, sequential=200, per_task=5, many_calls=5) if args.quick else Params(repeat=repeat)
    started = mono()

    def log(msg: str) -> None:
        if args.verbose:
            print(f"[bench_durable {mono() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    redis_support = load_tests_module("redis_support")
    if redis_support.REDIS_SERVER is None:
        print("redis-server not found on PATH", file=sys.stderr)
        return 2
    with redis_support.redis_server() as server:
        client = redis.Redis.from_url(server.url)
        try:
            env = environment(ba.quick_params(repeat), args.quick)
            env["redis_py"] = importlib.metadata.version("redis")
            env["redis_server"] = client.info("server").get("redis_version")
            config = client.config_get("appendonly")
            config.update(client.config_get("appendfsync"))
            env["redis_config"] = config
            result: dict[str, Any] = {"env": env, "params": asdict(p)}
            result.update(run(p, client, server.url, log))
        finally:
            client.close()
    ba.emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
