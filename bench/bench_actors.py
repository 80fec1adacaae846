"""Benchmark: the actor system on simpleSystemBase against a plain-asyncio baseline. Prints one JSON object.

    .venv/bin/python bench/bench_actors.py [--repeat N] [--quick]

Sections of the output:
    * ``baseline``: :mod:`asyncio_baseline` on the "bursts" workload (C channels, each gets bursts of B
      messages in rapid succession; window W, max_batch_size). Two shapes: ``saturated`` (every burst of a
      round sent back to back, rounds at least ``period`` apart: measures capacity) and ``paced`` (bursts
      spread evenly over each round: lateness under a steady, moderate load).
    * ``actors_simple``: the same workloads through :class:`actors.driver.InProcessDriver`; the processor is
      the driver's ``on_output`` callback, which records the batch and answers ``ProcessingDone`` at once.
    * ``scaling``: rate of a stream of messages spread round robin over channels that all hold an open batch
      (window 60 s, and below the size cap, so nothing flushes), with 200 vs 20,000 channels (and 2,000 as a
      control), actors and baseline; lateness with 2,000 channels open at once, all flushing by window.
    * ``bars``: pass/fail of the two targets; ``diagnostics``: extra cases that explain the numbers.

Definitions:
    * throughput: messages delivered to the processor per second, from the first enqueue to the last delivery.
    * lateness (ms): ``delivery`` = time the processor received the batch minus its due time, where due = send
      time of the batch's last message + window (+ 0 for a batch closed because it was full), from the
      producer's own timestamps; ``core`` = ``BatchReady.lateness`` (actors: tick time minus the deadline the
      channel computed from the time *it* received the last message); ``close`` = the baseline's equivalent.
    * every reported number is the median over ``--repeat`` runs; ``runs`` lists the per-run values.

Medians, not means: the machine is shared and noisy. Ratios are taken within one repeat, then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import queue
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from asyncio_baseline import FULL, AsyncioBatcher, Batch  # noqa: E402

from actors.driver import InProcessDriver  # noqa: E402
from protocol.limits import MAX_BATCH_SIZE  # noqa: E402
from protocol.messages import (  # noqa: E402
    BatchReady,
    EnqueueMany,
    GetStatistics,
    ProcessingDone,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings, QueuedMessage, payload_messages  # noqa: E402

mono = time.monotonic  # the clock ChannelActor and asyncio's loop both use


# -- workloads --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bursts:
    """``rounds`` rounds; in each, every channel gets one burst of ``burst`` messages sent back to back.
    Round r starts ``r * period`` after the first; its bursts are spread evenly over ``spread`` seconds."""

    channels: int
    rounds: int
    period: float
    spread: float
    burst: int = 5
    window: float = 0.05
    max_batch_size: int = 10

    @property
    def total(self) -> int:
        return self.channels * self.rounds * self.burst

    def schedule(self) -> list[tuple[float, str, range]]:
        """(offset from start, channel id, sequence numbers) per burst, in send order."""
        out = []
        seq = 0
        for r in range(self.rounds):
            for c in range(self.channels):
                offset = r * self.period + self.spread * c / self.channels
                out.append((offset, channel_name(c), range(seq, seq + self.burst)))
                seq += self.burst
        return out


def channel_name(index: int) -> str:
    return f"ch{index}"


def make_messages(plan: list[tuple[float, str, range]]) -> list[QueuedMessage]:
    msgs: list[QueuedMessage] = []
    for _, channel, seqs in plan:
        for seq in seqs:
            msgs.append(QueuedMessage("bench", channel, "u1", "User", str(seq)))
    return msgs


def seq_of(message: object) -> int:
    """The sequence number a benchmark message carries as its text."""
    assert isinstance(message, QueuedMessage), message
    return int(message.text)


def expected_order(plan: list[tuple[float, str, range]]) -> dict[str, list[int]]:
    order: dict[str, list[int]] = {}
    for _, channel, seqs in plan:
        order.setdefault(channel, []).extend(seqs)
    return order


# -- statistics -------------------------------------------------------------------------------------------


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p99 and max of seconds, in milliseconds."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {
        "p50": round(rank(0.50) * 1e3, 3),
        "p99": round(rank(0.99) * 1e3, 3),
        "max": round(ordered[-1] * 1e3, 3),
    }


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


_WORST = {"delivered": min, "duplicates": max, "unexpected_outputs": max}  # must hold in every run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the per-run numbers; checks and counts that must hold in every run take the worst run."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if key == "lateness_ms":
            out[key] = {
                kind: {p: _round(median([r[key][kind][p] for r in runs])) for p in value[kind]}
                for kind in value
            }
        elif isinstance(value, bool):
            out[key] = all(r[key] for r in runs)
        elif key in _WORST:
            out[key] = _WORST[key](r[key] for r in runs)
        elif key == "expected":
            out[key] = value
        elif isinstance(value, (int, float)) or value is None:
            out[key] = _round(median([r[key] for r in runs]))
        elif isinstance(value, dict):  # batches by close reason: the first run's
            out[key] = value
    out["runs"] = {k: [_round(r[k]) for r in runs] for k in ("msgs_per_s", "msgs_per_cpu_s") if k in first}
    if "lateness_ms" in first:
        out["runs"]["lateness_p99_ms"] = {
            kind: [r["lateness_ms"][kind]["p99"] for r in runs] for kind in first["lateness_ms"]
        }
    return out


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    if abs(value) >= 100:
        return round(value)
    return round(value, 3)


def check_order(delivered: dict[str, list[int]], expected: dict[str, list[int]]) -> tuple[bool, int]:
    """(every channel got exactly its messages in send order, number of duplicates)."""
    dups = 0
    ok = True
    for channel, seqs in expected.items():
        got = delivered.get(channel, [])
        dups += len(got) - len(set(got))
        if got != seqs:
            ok = False
    if set(delivered) - set(expected):
        ok = False
    return ok, dups


def result_record(
    wl: Bursts,
    plan: list[tuple[float, str, range]],
    sent: list[float],
    deliveries: list[tuple[float, str, list[int], str, float]],
    core_key: str,
    cpu: float | None,
) -> dict[str, Any]:
    """Metrics of one run from (delivery time, channel, sequence numbers, reason, implementation lateness);
    ``cpu`` is the on-CPU time of the thread that ran the system, if known."""
    delivered: dict[str, list[int]] = {}
    core: list[float] = []
    at_delivery: list[float] = []
    reasons: dict[str, int] = {}
    count = 0
    for t, channel, seqs, reason, lateness in deliveries:
        delivered.setdefault(channel, []).extend(seqs)
        count += len(seqs)
        reasons[reason] = reasons.get(reason, 0) + 1
        core.append(lateness)
        due = sent[seqs[-1]] + (0.0 if reason == FULL else wl.window)
        at_delivery.append(max(0.0, t - due))
    in_order, dups = check_order(delivered, expected_order(plan))
    first = sent[plan[0][2][0]]
    last = max((d[0] for d in deliveries), default=first)
    elapsed = last - first
    return {
        "msgs_per_s": count / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
        "msgs_per_cpu_s": count / cpu if cpu else None,
        "expected": wl.total,
        "delivered": count,
        "all_delivered": count == wl.total,
        "in_order": in_order,
        "duplicates": dups,
        "batches": len(deliveries),
        "reasons": reasons,
        "lateness_ms": {core_key: percentiles_ms(core), "delivery": percentiles_ms(at_delivery)},
    }


def freeze_now() -> None:
    """Move everything alive now out of the collector's reach until the enclosing ``frozen_heap`` exits.

    Used once several systems are set up side by side: a full collection would scan all of them and be
    billed to whichever timed slice it lands in. CPython runs a full collection only when the long-lived
    objects have grown by a quarter, so its cost per message does not grow with the number of channels."""
    gc.collect()
    gc.freeze()


class frozen_heap:
    """Move everything alive now (the prebuilt messages above all) out of the collector's reach for the
    timed part: a real system does not hold a whole run's messages, so their gen-2 scans would be an
    artifact of the benchmark. What the system allocates while it runs is still collected as usual."""

    def __enter__(self) -> None:
        gc.collect()
        gc.freeze()

    def __exit__(self, *exc: object) -> None:
        gc.unfreeze()


def wait_timeout(wl: Bursts) -> float:
    return 60.0 + wl.rounds * wl.period + wl.window + wl.total / 2_000


# -- baseline ---------------------------------------------------------------------------------------------


def run_baseline_bursts(wl: Bursts) -> dict[str, Any]:
    return asyncio.run(_baseline_bursts(wl))


async def _baseline_bursts(wl: Bursts) -> dict[str, Any]:
    plan = wl.schedule()
    msgs = make_messages(plan)
    sent = [0.0] * len(msgs)
    deliveries: list[tuple[float, str, list[object], str, float]] = []
    done = asyncio.Event()
    state = {"count": 0}
    total = wl.total

    async def processor(batch: Batch) -> None:
        deliveries.append((mono(), batch.channel_id, batch.messages, batch.reason, batch.lateness))
        state["count"] += len(batch.messages)
        if state["count"] >= total:
            done.set()

    with frozen_heap():
        batcher = AsyncioBatcher(processor, window=wl.window, max_batch_size=wl.max_batch_size)
        enqueue = batcher.enqueue
        cpu0 = time.thread_time()  # the loop's thread: producer and batcher alike
        t0 = mono() + 0.001
        for offset, channel, seqs in plan:
            delay = t0 + offset - mono()
            await asyncio.sleep(delay if delay > 0 else 0)  # yield between bursts, like separate socket reads
            for seq in seqs:
                sent[seq] = mono()
                enqueue(channel, msgs[seq])
        try:
            await asyncio.wait_for(done.wait(), wait_timeout(wl))
        except TimeoutError:
            pass
        cpu = time.thread_time() - cpu0
        await batcher.aclose()
    converted = [(t, ch, [seq_of(m) for m in ms], reason, late) for t, ch, ms, reason, late in deliveries]
    return result_record(wl, plan, sent, converted, "close", cpu)


Openings = list[QueuedMessage]
Stream = list[QueuedMessage]


def scaling_messages(sizes: tuple[int, ...], stream: int) -> dict[int, tuple[Openings, Stream]]:
    """Per size: one opening message per channel, and ``stream`` messages spread round robin."""
    return {
        n: (
            [QueuedMessage("bench", channel_name(c), "u1", "User", "open") for c in range(n)],
            [QueuedMessage("bench", channel_name(i % n), "u1", "User", str(i)) for i in range(stream)],
        )
        for n in sizes
    }


def alternation(sizes: tuple[int, ...], rounds: int) -> list[tuple[int, int]]:
    """(round, size) in the order the streams run: every round visits every size, the order reversing each
    round, so a drift of machine speed weighs on every size alike."""
    return [(r, n) for r in range(rounds) for n in (sizes if r % 2 == 0 else sizes[::-1])]


def scaling_result(n: int, stream: int, elapsed: float, cpu: float | None, accepted: bool) -> dict[str, Any]:
    return {
        "msgs_per_s": stream / elapsed,
        "elapsed_s": elapsed,
        "msgs_per_cpu_s": stream / cpu if cpu else None,
        "all_accepted": accepted,
    }


def run_baseline_scaling(sizes: tuple[int, ...], stream: int, rounds: int) -> dict[int, dict[str, Any]]:
    return asyncio.run(_baseline_scaling(sizes, stream, rounds))


async def _baseline_scaling(sizes: tuple[int, ...], stream: int, rounds: int) -> dict[int, dict[str, Any]]:
    async def processor(batch: Batch) -> None:
        raise AssertionError("nothing may flush in the scaling run")

    messages = scaling_messages(sizes, stream)
    per = stream // rounds
    elapsed = dict.fromkeys(sizes, 0.0)
    cpu = dict.fromkeys(sizes, 0.0)
    with frozen_heap():
        batchers = {n: AsyncioBatcher(processor, window=60.0, max_batch_size=MAX_BATCH_SIZE) for n in sizes}
        for n, (first, _) in messages.items():
            for m in first:
                batchers[n].enqueue(m.channel_id, m)
        await asyncio.sleep(0)
        freeze_now()
        for r, n in alternation(sizes, rounds):
            enqueue = batchers[n].enqueue
            chunk = messages[n][1][r * per : (r + 1) * per]
            cpu0 = time.thread_time()
            t0 = mono()
            for m in chunk:
                enqueue(m.channel_id, m)
            elapsed[n] += mono() - t0
            cpu[n] += time.thread_time() - cpu0
        held = {n: sum(b.open_batch_sizes().values()) for n, b in batchers.items()}
        for batcher in batchers.values():
            await batcher.aclose()
    sent = per * rounds
    return {n: scaling_result(n, sent, elapsed[n], cpu[n], held[n] == n + sent) for n in sizes}


# -- actors -----------------------------------------------------------------------------------------------


def thread_cpu_seconds(thread: threading.Thread | None) -> float | None:
    """On-CPU time of ``thread`` (Linux schedstat, ns resolution); None where unavailable. Time spent
    descheduled, by other processes on this shared machine or waiting for the GIL, is not counted."""
    tid = getattr(thread, "native_id", None)
    if tid is None:
        return None
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _driver_thread(driver: InProcessDriver) -> threading.Thread | None:
    thread = getattr(driver, "_thread", None)  # private; only for the CPU-time cross-check
    return thread if isinstance(thread, threading.Thread) else None


class _Replier(threading.Thread):
    """Answers each delivery ``delay`` seconds after it was received: a processor that takes time."""

    def __init__(self, driver: InProcessDriver, delay: float) -> None:
        super().__init__(name="bench-replier", daemon=True)
        self.driver = driver
        self.delay = delay
        self.inbox: queue.SimpleQueue[tuple[float, ProcessingDone] | None] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            at, reply = item
            pause = at - mono()
            if pause > 0:
                time.sleep(pause)
            self.driver.tell(reply)


def _drive_bursts(
    driver: InProcessDriver,
    wl: Bursts,
    plan: list[tuple[float, str, range]],
    msgs: list[QueuedMessage],
    sent: list[float],
    done: threading.Event,
    reply_delay: float,
) -> float | None:
    """Send ``plan`` on schedule, wait for every delivery; return the system thread's CPU time, if known."""
    driver.call(StartProcessing()).result(30)
    enqueue = driver.enqueue
    thread = _driver_thread(driver)
    cpu0 = thread_cpu_seconds(thread)
    t0 = mono() + 0.001
    for offset, _channel, seqs in plan:
        delay = t0 + offset - mono()
        if delay > 0:
            time.sleep(delay)
        for seq in seqs:
            sent[seq] = mono()
            enqueue(msgs[seq])
    done.wait(wait_timeout(wl) + 10 * reply_delay * wl.channels)
    cpu1 = thread_cpu_seconds(thread)
    return cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None


def run_actor_bursts(wl: Bursts, reply_delay: float = 0.0) -> dict[str, Any]:
    plan = wl.schedule()
    msgs = make_messages(plan)
    sent = [0.0] * len(msgs)
    outputs: list[tuple[float, BatchReady]] = []
    other: list[object] = []
    done = threading.Event()
    state = {"count": 0}
    total = wl.total
    replier: _Replier | None = None

    def on_output(out: object) -> None:
        if type(out) is BatchReady:
            now = mono()
            outputs.append((now, out))
            reply = ProcessingDone(out.channel_id, out.delivery_id)
            if replier is None:
                driver.tell(reply)
            else:
                replier.inbox.put((now + reply_delay, reply))
            state["count"] += out.item.size
            if state["count"] >= total:
                done.set()
        else:
            other.append(out)

    with frozen_heap():
        driver = InProcessDriver(on_output, BatchSettings(window=wl.window, max_batch_size=wl.max_batch_size))
        driver.start()
        if reply_delay > 0:
            replier = _Replier(driver, reply_delay)
            replier.start()
        try:
            cpu = _drive_bursts(driver, wl, plan, msgs, sent, done, reply_delay)
        finally:
            driver.stop(60)
            if replier is not None:
                replier.inbox.put(None)
                replier.join(10)
    deliveries = [
        (t, b.channel_id, [seq_of(m) for m in payload_messages(b.item.payload)], b.reason, b.lateness)
        for t, b in outputs
    ]
    record = result_record(wl, plan, sent, deliveries, "core", cpu)
    record["unexpected_outputs"] = len(other)
    return record


def run_actor_scaling(
    sizes: tuple[int, ...], stream: int, rounds: int, group: int = 0
) -> dict[int, dict[str, Any]]:
    """Per size, the rate of ``stream`` messages spread round robin over that many channels that all hold an
    open batch. One system per size, all alive at once; the stream is cut into ``rounds`` slices that
    alternate between the systems. A slice is timed from its first enqueue to the answer of a command sent
    after its last one (the driver keeps command order).

    ``group`` 0: one ``driver.enqueue`` per message, which the driver coalesces into ``EnqueueMany`` of up to
    256 (over 200 channels some channel then appears twice in one command, which saves sends). ``group`` N:
    ``EnqueueMany`` commands of N consecutive messages, i.e. N distinct channels each when every size is at
    least N: every size pays the same sends per message, so only the number of open channels differs."""
    messages = scaling_messages(sizes, stream)
    per = stream // rounds
    barrier = GetStatistics(channel_name(0))
    outputs: list[object] = []
    elapsed = dict.fromkeys(sizes, 0.0)
    cpu: dict[int, float | None] = dict.fromkeys(sizes, 0.0)
    opened: dict[int, float] = {}
    stats: dict[int, object] = {}
    drivers: dict[int, InProcessDriver] = {}
    with frozen_heap(), contextlib.ExitStack() as stopping:
        for n in sizes:
            driver = drivers[n] = InProcessDriver(
                outputs.append, BatchSettings(window=60.0, max_batch_size=MAX_BATCH_SIZE)
            )
            driver.start()
            stopping.callback(driver.stop, 60)
            t_open = mono()
            for m in messages[n][0]:
                driver.enqueue(m)
            driver.call(barrier).result(120)
            opened[n] = mono() - t_open
        freeze_now()
        for r, n in alternation(sizes, rounds):
            driver = drivers[n]
            enqueue = driver.enqueue
            chunk = messages[n][1][r * per : (r + 1) * per]
            thread = _driver_thread(driver)
            cpu0 = thread_cpu_seconds(thread)
            t0 = mono()
            if group:
                for start in range(0, len(chunk), group):
                    driver.tell(EnqueueMany(tuple(chunk[start : start + group])))
            else:
                for m in chunk:
                    enqueue(m)
            driver.call(barrier).result(120)
            elapsed[n] += mono() - t0
            cpu1 = thread_cpu_seconds(thread)
            spent = cpu[n]
            if spent is None or cpu0 is None or cpu1 is None:
                cpu[n] = None
            else:
                cpu[n] = spent + cpu1 - cpu0
        for n, driver in drivers.items():
            stats[n] = driver.call(GetStatistics()).result(120)
    sent = per * rounds
    out: dict[int, dict[str, Any]] = {}
    for n in sizes:
        snapshot = stats[n]
        assert isinstance(snapshot, Statistics), snapshot
        held = sum(s.open_batch_size for s in snapshot.channels)
        flushed = sum(s.queued + s.in_flight + s.processed for s in snapshot.channels)
        accepted = held == n + sent and len(snapshot.channels) == n and flushed == 0
        out[n] = scaling_result(n, sent, elapsed[n], cpu[n], accepted and not outputs)
        out[n]["open_channels_per_s"] = n / opened[n]
    return out


# -- the run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    repeat: int
    saturated: Bursts
    paced: Bursts
    scaling_small: int
    scaling_large: int
    scaling_control: int
    scaling_stream: int
    scaling_rounds: int  # slices of the stream, alternating between the sizes
    lateness: Bursts  # the bar: many channels open at once, all flushing by window
    slow_reply_delay: float
    lateness_bar_ms: float = 10.0
    scaling_bar: float = 0.8


def full_params(repeat: int) -> Params:
    return Params(
        repeat=repeat,
        saturated=Bursts(channels=4000, rounds=4, period=0.1, spread=0.0),
        paced=Bursts(channels=200, rounds=10, period=0.1, spread=0.1),
        scaling_small=200,
        scaling_large=20_000,
        scaling_control=2_000,
        scaling_stream=40_000,
        scaling_rounds=8,
        lateness=Bursts(channels=2000, rounds=1, period=1.0, spread=0.5, window=1.0),
        slow_reply_delay=0.5,
    )


def quick_params(repeat: int) -> Params:
    return Params(
        repeat=repeat,
        saturated=Bursts(channels=100, rounds=2, period=0.1, spread=0.0),
        paced=Bursts(channels=20, rounds=3, period=0.1, spread=0.1),
        scaling_small=20,
        scaling_large=500,
        scaling_control=100,
        scaling_stream=2_000,
        scaling_rounds=2,
        lateness=Bursts(channels=200, rounds=1, period=0.2, spread=0.1, window=0.2),
        slow_reply_delay=0.1,
    )


def run(p: Params, log: Callable[[str], None]) -> dict[str, Any]:
    started = mono()
    out: dict[str, Any] = {}

    log("bursts")
    bursts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(p.repeat):  # interleaved, so baseline and actors see the same machine within a repeat
        for shape, wl in (("saturated", p.saturated), ("paced", p.paced)):
            gc.collect()
            bursts.setdefault(("baseline", shape), []).append(run_baseline_bursts(wl))
            gc.collect()
            bursts.setdefault(("actors_simple", shape), []).append(run_actor_bursts(wl))
    for impl in ("baseline", "actors_simple"):
        out[impl] = {shape: summarize(bursts[(impl, shape)]) for shape in ("saturated", "paced")}
    per_run = [
        _ratio(a["msgs_per_s"], b["msgs_per_s"])
        for a, b in zip(bursts[("actors_simple", "saturated")], bursts[("baseline", "saturated")])
    ]
    per_run_cpu = [
        _ratio(a["msgs_per_cpu_s"], b["msgs_per_cpu_s"])
        for a, b in zip(bursts[("actors_simple", "saturated")], bursts[("baseline", "saturated")])
    ]
    out["ratios"] = {
        "actors_vs_baseline_saturated_throughput": _round(median(per_run)),
        "runs_actors_vs_baseline_saturated_throughput": per_run,
        "actors_vs_baseline_saturated_msgs_per_cpu_s": _round(median(per_run_cpu)),
        "runs_actors_vs_baseline_saturated_msgs_per_cpu_s": per_run_cpu,
    }

    log("scaling")
    sizes = (p.scaling_small, p.scaling_large, p.scaling_control)
    # every message stays in its channel's open batch: below the size cap even on the fewest channels
    stream = min(p.scaling_stream, p.scaling_small * (MAX_BATCH_SIZE - 2))
    stream -= stream % p.scaling_rounds
    actor_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    coalesced_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    base_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    group = min(sizes)
    for _ in range(p.repeat):
        gc.collect()
        for n, result in run_actor_scaling(sizes, stream, p.scaling_rounds, group).items():
            actor_runs[n].append(result)
        gc.collect()
        for n, result in run_actor_scaling(sizes, stream, p.scaling_rounds).items():
            coalesced_runs[n].append(result)
        gc.collect()
        for n, result in run_baseline_scaling(sizes, stream, p.scaling_rounds).items():
            base_runs[n].append(result)

    log("lateness")
    late: dict[str, list[dict[str, Any]]] = {"actors": [], "baseline": [], "slow": []}
    for _ in range(p.repeat):
        gc.collect()
        late["actors"].append(run_actor_bursts(p.lateness))
        gc.collect()
        late["baseline"].append(run_baseline_bursts(p.lateness))
        gc.collect()
        late["slow"].append(run_actor_bursts(p.lateness, p.slow_reply_delay))
    lateness = summarize(late["actors"])

    Runs = dict[int, list[dict[str, Any]]]

    def ratio_runs(runs: Runs, key: str, large: int, small: int) -> list[float | None]:
        """Per-repeat ratio of ``key`` between two sizes (measured in the same repeat)."""
        return [_ratio(a[key], b[key]) for a, b in zip(runs[large], runs[small])]

    def scaling_block(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
        block: dict[str, Any] = {f"channels_{n}": summarize(runs[n]) for n in sizes}
        for name, key, ref in (
            ("ratio_large_vs_small", "msgs_per_s", p.scaling_small),
            ("ratio_large_vs_control", "msgs_per_s", p.scaling_control),
            ("cpu_ratio_large_vs_small", "msgs_per_cpu_s", p.scaling_small),
        ):
            per_run = ratio_runs(runs, key, p.scaling_large, ref)
            block[name] = _round(median(per_run))
            block["runs_" + name] = per_run
        return block

    actors_scaling = scaling_block(actor_runs)
    out["scaling"] = {
        "stream_messages": stream,
        "window_s": 60.0,
        "max_batch_size": MAX_BATCH_SIZE,
        "enqueue_many_of": group,
        "actors_simple": actors_scaling,
        "actors_simple_driver_coalesced": scaling_block(coalesced_runs),
        "baseline": scaling_block(base_runs),
        "lateness_open_channels": {
            "channels": p.lateness.channels,
            "window_s": p.lateness.window,
            "actors_simple": lateness,
            "baseline": summarize(late["baseline"]),
        },
    }
    out["diagnostics"] = {
        "lateness_open_channels_slow_processor": {
            "reply_delay_s": p.slow_reply_delay,
            "actors_simple": summarize(late["slow"]),
        },
    }

    lat = lateness["lateness_ms"]
    base_lat = out["scaling"]["lateness_open_channels"]["baseline"]["lateness_ms"]
    lat_p99 = max(lat["core"]["p99"] or 0.0, lat["delivery"]["p99"] or 0.0)
    scale_ratio = actors_scaling["ratio_large_vs_small"]
    out["bars"] = {
        "scaling_ratio": {
            "value": scale_ratio,
            "threshold": f">= {p.scaling_bar}",
            "pass": scale_ratio is not None and scale_ratio >= p.scaling_bar,
        },
        "lateness_p99_ms": {
            "value": lat_p99,
            "what": f"max of core and delivery p99, {p.lateness.channels} channels open, flushing by window",
            "threshold": f"<= {p.lateness_bar_ms}",
            "pass": lat_p99 <= p.lateness_bar_ms,
            "core_p99": lat["core"]["p99"],
            "delivery_p99": lat["delivery"]["p99"],
            "baseline_delivery_p99": base_lat["delivery"]["p99"],
        },
    }
    out["bars"]["all_pass"] = all(b["pass"] for b in out["bars"].values())
    out["notes"] = [
        "saturated: the producer outruns the actor system, so its delivery lateness is queueing backlog; "
        "core lateness there is timer lateness under full load",
        "scaling: one system per size, all alive at once, the stream cut into slices that alternate between "
        "them (drift of machine speed weighs on every size alike); collector frozen during the slices",
        "msgs_per_s is wall clock; msgs_per_cpu_s counts only the on-CPU time of the thread that runs the "
        "system (not time lost to other processes on this machine)",
        "scaling (the bar): the stream goes as EnqueueMany commands of 200 consecutive messages, 200 distinct "
        "channels each, so every size pays the same actor sends per message and only the number of open "
        "channels differs",
        "scaling, driver coalesced: one driver.enqueue per message, coalesced into EnqueueMany of 256; over 200 "
        "channels some channel appears twice in a command, which saves actor sends (a grouping effect, not an "
        "effect of the number of open channels)",
    ]
    out["duration_s"] = round(mono() - started, 1)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def environment(p: Params, quick: bool) -> dict[str, Any]:
    return {
        "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "thespian": importlib.metadata.version("thespian"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": quick,
        "repeat": p.repeat,
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cli(
    argv: list[str] | None,
    description: str,
    name: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Params, Callable[[str], None]]:
    """The options every benchmark script takes (``--repeat``, ``--quick``, ``--verbose``, plus ``extra``):
    the parsed options, the parameters they select, and a progress logger for stderr."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="small workloads, a few seconds: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {repeat}")
    started = mono()

    def log(msg: str) -> None:
        if args.verbose:
            print(f"[{name} {mono() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return args, quick_params(repeat) if args.quick else full_params(repeat), log


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` as the script's JSON report, with the load average at its end."""
    result["env"]["loadavg_at_end"] = _loadavg()
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    args, p, log = cli(argv, __doc__, "bench")
    result: dict[str, Any] = {"env": environment(p, args.quick), "params": _params_json(p)}
    result.update(run(p, log))
    emit(result)
    return 0


def _params_json(p: Params) -> dict[str, Any]:
    return {k: (asdict(v) if isinstance(v, Bursts) else v) for k, v in p.__dict__.items()}


if __name__ == "__main__":
    raise SystemExit(main())
