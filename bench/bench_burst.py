"""Benchmark: a burst of messages on many channels at once, the asyncio API against the plain-asyncio baseline.
Prints one JSON object.

    .venv/bin/python bench/bench_burst.py [--repeat N] [--quick] [--verbose]

The workload: 2,000 channels x 15 messages (``--quick``: 200 x 15), sent as fast as ``await enqueue`` allows
(the producer never waits for anything else), ``default_batch_window=0.05``, ``max_batch_size=10``, a callback
that records its item and returns at once. Every channel must get two batches: 10 messages (closed when
full), then 5 (closed by the window, 50 ms after its last message). Two send orders:

    * ``round_robin`` (the headline): message i of every channel, then message i + 1 of every channel, ...:
      every channel's batch is open while the others are sent, as with many conversations at once;
    * ``channel_major``: the 15 messages of one channel, then the next channel's.

Each order runs on an idle machine and again with ``busy_core``: a child process spinning on one core
(``python3 -c "while True: pass"``) for the duration, killed by its pid after. Implementations:

    * ``baseline``: :mod:`asyncio_baseline`, its synchronous ``enqueue`` wrapped in an ``async def`` the
      producer awaits, as it awaits the queue's;
    * ``facade``: ``MessageQueue(default_batch_window=0.05, max_batch_size=10)`` with one
      ``start_processing`` per channel before the clock starts; ``await mq.enqueue(msg)``;
    * ``original``: :mod:`original_design`, the original module's in-memory design (a lock, a timer task and
      a queue per channel), a second yardstick: the one the asyncio API replaces.

They alternate within each repeat (same process; which goes first alternates); ratios are taken per repeat,
then the median. ``--repeat`` defaults to 3 (``--quick``: 1).

Per implementation and case (medians; ``runs`` lists each repeat): ``items`` (batches delivered; expected
2 per channel), ``batch_sizes_ok`` (every channel got 10 then 5), ``elapsed_s`` (first enqueue to last
delivery), ``enqueue_s`` (first to last enqueue: the producer's own time), ``lateness_ms`` p50/p99/max
(``delivery``: callback start minus the due time: the send time of the batch's last message, + the window
for a batch closed by it), ``in_order`` / ``duplicates`` (every message delivered once, in order per
channel). Ratios: ``baseline_vs_facade_elapsed`` (baseline time / facade time: above 1 means the queue was
faster) and ``facade_vs_baseline_lateness_p99``; ``original_vs_facade_elapsed`` and
``facade_vs_original_lateness_p99`` the same against the original design.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import pathlib
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Protocol

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
from asyncio_baseline import AsyncioBatcher, Batch  # noqa: E402
from bench_actors import (  # noqa: E402
    Bursts,
    channel_name,
    environment,
    frozen_heap,
    make_messages,
    median,
    result_record,
    seq_of,
    summarize,
)
from loop_support import busy_core  # noqa: E402
from original_design import OriginalDesignQueue  # noqa: E402

from message_queue import MessageQueue  # noqa: E402
from protocol.values import Payload, QueuedMessage, payload_messages  # noqa: E402

mono = time.monotonic

ELAPSED_BAR = 1.0  # baseline elapsed / facade elapsed
LATENESS_BAR = 1.5  # facade lateness p99 / baseline lateness p99 (the goal is 1.0)

Plan = list[tuple[float, str, range]]


@dataclass(frozen=True)
class Burst:
    channels: int
    per_channel: int = 15
    window: float = 0.05
    max_batch_size: int = 10
    repeat: int = 3

    def plan(self, order: str) -> Plan:
        """(0, channel, sequence numbers) in send order; sequence numbers count up in send order."""
        out: Plan = []
        seq = 0
        if order == "round_robin":
            for _ in range(self.per_channel):
                for c in range(self.channels):
                    out.append((0.0, channel_name(c), range(seq, seq + 1)))
                    seq += 1
        elif order == "channel_major":
            for c in range(self.channels):
                out.append((0.0, channel_name(c), range(seq, seq + self.per_channel)))
                seq += self.per_channel
        else:
            raise ValueError(f"order must be round_robin or channel_major, got {order!r}")
        return out

    def bursts(self) -> Bursts:
        """The shape ``bench_actors.result_record`` reads (its window and total)."""
        return Bursts(channels=self.channels, rounds=1, period=0.0, spread=0.0, burst=self.per_channel,
                      window=self.window, max_batch_size=self.max_batch_size)

    def expected_sizes(self) -> list[int]:
        full, rest = divmod(self.per_channel, self.max_batch_size)
        return [self.max_batch_size] * full + ([rest] if rest else [])


ORDERS = ("round_robin", "channel_major")


def _timeout(b: Burst) -> float:
    return 60.0 + b.channels * b.per_channel / 2_000


def _record(b: Burst, plan: Plan, sent: list[float], deliveries: list[tuple[float, str, list[int], str, float]],
            cpu: float) -> dict[str, Any]:
    record = result_record(b.bursts(), plan, sent, deliveries, "core", cpu)
    sizes: dict[str, list[int]] = {}
    for _, channel, seqs, _, _ in deliveries:
        sizes.setdefault(channel, []).append(len(seqs))
    expected = b.expected_sizes()
    record["items"] = len(deliveries)
    record["items_expected"] = b.channels * len(expected)
    record["batch_sizes_ok"] = len(sizes) == b.channels and all(s == expected for s in sizes.values())
    record["enqueue_s"] = max(sent) - min(sent)
    record["cpu_us_per_msg"] = cpu / max(1, record["delivered"]) * 1e6
    del record["lateness_ms"]["core"]
    return record


async def _produce(plan: Plan, msgs: list[QueuedMessage], sent: list[float],
                   enqueue: Callable[[QueuedMessage], Awaitable[None]]) -> None:
    for _, _, seqs in plan:
        for seq in seqs:
            sent[seq] = mono()
            await enqueue(msgs[seq])


def run_baseline(b: Burst, order: str) -> dict[str, Any]:
    return asyncio.run(_baseline(b, order))


async def _baseline(b: Burst, order: str) -> dict[str, Any]:
    plan = b.plan(order)
    msgs = make_messages(plan)
    sent = [0.0] * len(msgs)
    deliveries: list[tuple[float, str, list[int], str, float]] = []
    done = asyncio.Event()
    total = len(msgs)
    state = {"count": 0}

    async def processor(batch: Batch) -> None:
        deliveries.append((mono(), batch.channel_id, [seq_of(m) for m in batch.messages], batch.reason, 0.0))
        state["count"] += len(batch.messages)
        if state["count"] >= total:
            done.set()

    with frozen_heap():
        batcher = AsyncioBatcher(processor, window=b.window, max_batch_size=b.max_batch_size)
        put = batcher.enqueue

        async def enqueue(msg: QueuedMessage) -> None:
            put(msg.channel_id, msg)

        cpu0 = time.process_time()
        await _produce(plan, msgs, sent, enqueue)
        try:
            await asyncio.wait_for(done.wait(), _timeout(b))
        except TimeoutError:
            pass
        cpu = time.process_time() - cpu0
        await batcher.aclose()
    return _record(b, plan, sent, deliveries, cpu)


class _Queue(Protocol):
    """What the burst needs of a queue with the original API."""

    async def start_processing(self, channel: str, callback: Callable[[Payload], Awaitable[object]]) -> None: ...

    async def enqueue(self, msg: QueuedMessage) -> None: ...


def run_facade(b: Burst, order: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        mq = MessageQueue(default_batch_window=b.window, max_batch_size=b.max_batch_size)
        try:
            return await _through_callbacks(b, order, mq, barrier=lambda: mq.statistics(channel_name(0)))
        finally:
            await mq.close()

    return asyncio.run(run())


def run_original(b: Burst, order: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        queue = OriginalDesignQueue(b.window, b.max_batch_size)
        try:
            return await _through_callbacks(b, order, queue)
        finally:
            await queue.close()

    return asyncio.run(run())


async def _through_callbacks(
    b: Burst, order: str, queue: _Queue, barrier: Callable[[], Awaitable[object]] | None = None
) -> dict[str, Any]:
    """The burst through ``queue``: one ``start_processing`` per channel before the clock starts (then
    ``barrier``, if any, to let the setup finish), then every ``await enqueue``, until all is delivered."""
    plan = b.plan(order)
    msgs = make_messages(plan)
    sent = [0.0] * len(msgs)
    deliveries: list[tuple[float, str, list[int], str, float]] = []
    done = asyncio.Event()
    total = len(msgs)
    state = {"count": 0}

    async def callback(payload: Payload) -> None:
        t = mono()
        batch = payload_messages(payload)
        reason = "full" if len(batch) >= b.max_batch_size else "window"
        deliveries.append((t, batch[0].channel_id, [seq_of(m) for m in batch], reason, 0.0))
        state["count"] += len(batch)
        if state["count"] >= total:
            done.set()

    with frozen_heap():
        for c in range(b.channels):
            await queue.start_processing(channel_name(c), callback)
        if barrier is not None:
            await barrier()
        cpu0 = time.process_time()
        await _produce(plan, msgs, sent, queue.enqueue)
        try:
            await asyncio.wait_for(done.wait(), _timeout(b))
        except TimeoutError:
            pass
        cpu = time.process_time() - cpu0
    return _record(b, plan, sent, deliveries, cpu)


IMPLS: dict[str, Callable[[Burst, str], dict[str, Any]]] = {
    "baseline": run_baseline,
    "facade": run_facade,
    "original": run_original,
}


def _cases(b: Burst, log: Callable[[str], None], load: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(b.repeat):
        for order in ORDERS:
            pairs = tuple(IMPLS.items())
            for impl, fn in pairs if r % 2 == 0 else pairs[::-1]:
                log(f"{load} repeat {r + 1}/{b.repeat} {order} {impl}")
                gc.collect()
                runs.setdefault((impl, order), []).append(fn(b, order))
    return runs


def _summary(b: Burst, runs: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for order in ORDERS:
        block: dict[str, Any] = {}
        for impl in IMPLS:
            per_run = runs[(impl, order)]
            s = summarize(per_run)
            s["items"] = min(r["items"] for r in per_run)
            s["batch_sizes_ok"] = all(r["batch_sizes_ok"] for r in per_run)
            s["runs"]["elapsed_s"] = [round(r["elapsed_s"], 4) for r in per_run]
            block[impl] = s
        base, fac = runs[("baseline", order)], runs[("facade", order)]
        elapsed = [ba._ratio(x["elapsed_s"], y["elapsed_s"]) for x, y in zip(base, fac)]
        late = [
            ba._ratio(y["lateness_ms"]["delivery"]["p99"], x["lateness_ms"]["delivery"]["p99"])
            for x, y in zip(base, fac)
        ]
        orig = runs[("original", order)]
        orig_elapsed = [ba._ratio(x["elapsed_s"], y["elapsed_s"]) for x, y in zip(orig, fac)]
        orig_late = [
            ba._ratio(y["lateness_ms"]["delivery"]["p99"], x["lateness_ms"]["delivery"]["p99"])
            for x, y in zip(orig, fac)
        ]
        block["ratios"] = {
            "baseline_vs_facade_elapsed": ba._round(median(elapsed)),
            "runs_baseline_vs_facade_elapsed": elapsed,
            "facade_vs_baseline_lateness_p99": ba._round(median(late)),
            "runs_facade_vs_baseline_lateness_p99": late,
            "original_vs_facade_elapsed": ba._round(median(orig_elapsed)),
            "facade_vs_original_lateness_p99": ba._round(median(orig_late)),
        }
        out[order] = block
    return out


def run(b: Burst, log: Callable[[str], None]) -> dict[str, Any]:
    started = mono()
    out: dict[str, Any] = {"idle": _summary(b, _cases(b, log, "idle"))}
    with busy_core() as pid:
        log(f"busy core: pid {pid}")
        out["busy_core"] = _summary(b, _cases(b, log, "busy_core"))
    correct = all(
        out[load][order][impl]["all_delivered"]
        and out[load][order][impl]["in_order"]
        and not out[load][order][impl]["duplicates"]
        and out[load][order][impl]["batch_sizes_ok"]
        for load in ("idle", "busy_core")
        for order in ORDERS
        for impl in ("baseline", "facade")  # the original design may split a burst: its items are reported
    )
    head = out["idle"]["round_robin"]["ratios"]
    busy = out["busy_core"]["round_robin"]["ratios"]
    out["bars"] = {
        "elapsed_ratio_ge_1_0": _ge(head["baseline_vs_facade_elapsed"], ELAPSED_BAR),
        "lateness_p99_ratio_le_1_5": _le(head["facade_vs_baseline_lateness_p99"], LATENESS_BAR),
        "busy_core_elapsed_ratio_ge_1_0": _ge(busy["baseline_vs_facade_elapsed"], ELAPSED_BAR),
        "busy_core_lateness_p99_ratio_le_1_5": _le(busy["facade_vs_baseline_lateness_p99"], LATENESS_BAR),
        "every_message_once_in_order_10_then_5": correct,
    }
    out["bars"]["all_pass"] = all(out["bars"].values())
    out["bar_values"] = {
        "headline": "round_robin",
        "elapsed_ratio": {"value": head["baseline_vs_facade_elapsed"], "threshold": f">= {ELAPSED_BAR}",
                          "busy_core": busy["baseline_vs_facade_elapsed"]},
        "lateness_p99_ratio": {"value": head["facade_vs_baseline_lateness_p99"],
                               "threshold": f"<= {LATENESS_BAR}", "goal": "<= 1.0",
                               "busy_core": busy["facade_vs_baseline_lateness_p99"]},
    }
    out["duration_s"] = round(mono() - started, 1)
    return out


def _ge(value: float | None, bar: float) -> bool:
    return value is not None and value >= bar


def _le(value: float | None, bar: float) -> bool:
    return value is not None and value <= bar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="200 channels: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {repeat}")
    b = Burst(channels=200 if args.quick else 2000, repeat=repeat)
    started = mono()

    def log(msg: str) -> None:
        if args.verbose:
            print(f"[bench_burst {mono() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    env = environment(ba.quick_params(repeat), args.quick)
    result: dict[str, Any] = {"env": env, "params": asdict(b)}
    result.update(run(b, log))
    ba.emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
