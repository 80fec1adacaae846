"""Benchmark: what the conversation features cost the asyncio API, saturated. Prints JSON.

    .venv/bin/python bench/bench_conversations.py [--repeat N] [--quick] [--verbose]

The workload is :mod:`bench_actors`'s ``saturated`` one (every channel gets bursts of messages sent back to
back; the producer outruns the queue), run through ``MessageQueue(default_batch_window=W, max_batch_size=M,
...)`` as in :mod:`bench_facade` (one ``start_processing`` per channel before the clock starts, then ``await
mq.enqueue(msg)`` per message), in these variants:

    * ``default``: the features unused (default settings, messages without ids);
    * ``dedupe``: every message carries its own ``message_id`` (none repeats: every one is checked and
      remembered), default ``dedupe_ttl`` (600 s);
    * ``collect``, ``interrupt`` and ``reject``: that ``busy_policy``, with a callback that holds each batch
      until the producer has sent the next round of messages (every channel's), so the next round finds its
      channel busy whatever the machine's speed: ``collect`` keeps it for when the callback returns,
      ``interrupt`` cancels the callback and delivers its messages again with the new ones (``redelivered``),
      ``reject`` refuses it (``ChannelBusy``, counted: ``refused``; a round refused leaves the channel idle
      for the next one, so about every other round is refused);
    * ``split_on_author``: ``split_on_author=True``, the messages of each channel alternating between two
      authors (every message closes the batch before it).

and, for the record, ``baseline``: :mod:`asyncio_baseline` (as in :mod:`bench_facade`, whose function runs
it), so that ``default`` against ``baseline`` can be set beside ``bench_facade.py``'s saturated figure.

Every variant runs in each repeat, in the same process, the order rotating from repeat to repeat (so a drift
of machine speed weighs on all alike); ratios are taken per repeat, then the median. ``--repeat`` defaults to
3 (``--quick``: 1, small workloads, a few seconds).

Numbers per variant (medians; ``runs`` lists each repeat):
    * ``msgs_per_s``: messages sent per second, first enqueue until every message was delivered (or refused);
    * ``cpu_us_per_msg``: CPU microseconds of the whole process (``time.process_time``) per message sent;
    * ``delivered`` (distinct messages that reached a callback), ``redelivered`` (deliveries of a message
      seen before: ``interrupt``), ``refused`` (``reject``), ``batches``, and the channels' counts of
      ``interruptions`` and ``rejections`` (``MessageQueue.statistics``, read after the timed part);
    * ``ratios``: per variant, ``cpu_us_per_msg`` and ``msgs_per_s`` against ``default`` (cost: > 1 is
      dearer), and ``default`` against ``baseline`` (throughput and messages per CPU second).
"""

from __future__ import annotations

import asyncio
import gc
import pathlib
import sys
import time
from dataclasses import asdict
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
from bench_actors import Bursts, environment, frozen_heap, make_messages, median, seq_of, wait_timeout  # noqa: E402
from bench_facade import run_baseline_bursts  # noqa: E402

from message_queue import MessageQueue  # noqa: E402
from protocol.errors import ChannelBusy  # noqa: E402
from protocol.values import Payload, QueuedMessage, payload_messages  # noqa: E402

mono = time.monotonic

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "dedupe": {},
    "collect": {"busy_policy": "collect"},
    "interrupt": {"busy_policy": "interrupt"},
    "reject": {"busy_policy": "reject"},
    "split_on_author": {"split_on_author": True},
}


def messages_of(variant: str, plan: list[tuple[float, str, range]]) -> list[QueuedMessage]:
    msgs = make_messages(plan)
    if variant == "dedupe":
        return [QueuedMessage(m.platform, m.channel_id, m.user_id, m.user_name, m.text, m.queued_at,
                              message_id=f"id-{m.text}") for m in msgs]
    if variant == "split_on_author":  # each channel's messages alternate between two authors
        sent: dict[str, int] = {}
        out = []
        for m in msgs:
            n = sent[m.channel_id] = sent.get(m.channel_id, -1) + 1
            out.append(QueuedMessage(m.platform, m.channel_id, f"u{n % 2}", m.user_name, m.text, m.queued_at))
        return out
    return msgs


def run_variant(wl: Bursts, variant: str) -> dict[str, Any]:
    return asyncio.run(_variant(wl, variant))


async def _variant(wl: Bursts, variant: str) -> dict[str, Any]:
    plan = wl.schedule()
    msgs = messages_of(variant, plan)
    total = len(msgs)
    seen: set[int] = set()
    counts = {"deliveries": 0, "redelivered": 0, "refused": 0, "batches": 0}
    done = asyncio.Event()
    holds = variant in ("collect", "interrupt", "reject")
    round_of: dict[int, int] = {}
    offsets = sorted({offset for offset, _, _ in plan})
    for offset, _, seqs in plan:
        for seq in seqs:
            round_of[seq] = offsets.index(offset)
    sent_rounds = [asyncio.Event() for _ in offsets]

    def settled() -> None:
        if len(seen) + counts["refused"] >= total:
            done.set()

    async def callback(payload: Payload) -> None:
        counts["batches"] += 1
        for m in payload_messages(payload):
            seq = seq_of(m)
            if seq in seen:
                counts["redelivered"] += 1
            seen.add(seq)
        settled()
        if holds:
            following = round_of[seq] + 1
            if following < len(sent_rounds):
                await sent_rounds[following].wait()

    with frozen_heap():
        mq = MessageQueue(default_batch_window=wl.window, max_batch_size=wl.max_batch_size, **VARIANTS[variant])
        try:
            for ch in {channel for _, channel, _ in plan}:
                await mq.start_processing(ch, callback)
            await mq.statistics("ch0")  # a barrier: every setup output has been handled
            cpu0 = time.process_time()
            enqueue = mq.enqueue
            t0 = mono() + 0.001
            for offset, _channel, seqs in plan:
                for r in range(offsets.index(offset)):
                    sent_rounds[r].set()
                delay = t0 + offset - mono()
                await asyncio.sleep(delay if delay > 0 else 0)  # yield between bursts, as bench_facade does
                for seq in seqs:
                    try:
                        await enqueue(msgs[seq])
                    except ChannelBusy:
                        counts["refused"] += 1
                        settled()
            for event in sent_rounds:
                event.set()
            try:
                await asyncio.wait_for(done.wait(), wait_timeout(wl))
            except TimeoutError:
                pass
            elapsed = mono() - t0
            cpu = time.process_time() - cpu0
            snapshots = await mq.statistics()
        finally:
            await mq.close()
    return {
        "expected": total,
        "delivered": len(seen),
        "redelivered": counts["redelivered"],
        "refused": counts["refused"],
        "all_settled": len(seen) + counts["refused"] == total,
        "batches": counts["batches"],
        "interruptions": sum(s.interruptions for s in snapshots),
        "rejections": sum(s.rejections for s in snapshots),
        "msgs_per_s": total / elapsed if elapsed > 0 else None,
        "cpu_us_per_msg": cpu / max(1, total) * 1e6,
    }


def run(wl: Bursts, repeat: int, log: Callable[[str], None]) -> dict[str, Any]:
    started = mono()
    names = ["baseline", *VARIANTS]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            log(f"repeat {r + 1}/{repeat} {name}")
            gc.collect()
            if name == "baseline":
                record = run_baseline_bursts(wl)
                record = {key: record[key] for key in ("expected", "delivered", "msgs_per_s", "msgs_per_cpu_s",
                                                       "cpu_us_per_msg", "all_delivered", "in_order")}
            else:
                record = run_variant(wl, name)
            runs[name].append(record)
    out: dict[str, Any] = {}
    for name in names:
        per_run = runs[name]
        block: dict[str, Any] = {}
        for key, value in per_run[0].items():
            if isinstance(value, bool):
                block[key] = all(r[key] for r in per_run)
            elif isinstance(value, (int, float)):
                block[key] = _med([r[key] for r in per_run])
        block["runs"] = per_run
        out[name] = block

    def per_repeat(name: str, key: str, against: str) -> list[float | None]:
        return [ba._ratio(a[key], b[key]) for a, b in zip(runs[name], runs[against])]

    ratios: dict[str, Any] = {}
    for name in VARIANTS:
        if name == "default":
            continue
        ratios[name] = {
            "cpu_per_msg_vs_default": _med(per_repeat(name, "cpu_us_per_msg", "default")),
            "throughput_vs_default": _med(per_repeat(name, "msgs_per_s", "default")),
        }
    default_cpu = [1e6 / r["cpu_us_per_msg"] for r in runs["default"]]
    baseline_cpu = [r["msgs_per_cpu_s"] for r in runs["baseline"]]
    ratios["default_vs_baseline"] = {
        "throughput": _med(per_repeat("default", "msgs_per_s", "baseline")),
        "msgs_per_cpu_s": _med([ba._ratio(d, b) for d, b in zip(default_cpu, baseline_cpu)]),
        "note": "compare with bench_facade.py's ratios.facade_vs_baseline_saturated_throughput",
    }
    out["ratios"] = ratios
    out["notes"] = [
        "saturated: the producer outruns the queue; every message is awaited (await mq.enqueue)",
        "collect, interrupt, reject: the callback holds each batch until the next round was sent, so those "
        "rounds find their channels busy; reject's per-message cost includes the refused messages, and under "
        "that policy enqueue waits for the channel's answer",
        "CPU is the whole process's (time.process_time): the producer, the actors and the callbacks share the "
        "loop's thread",
    ]
    out["duration_s"] = round(mono() - started, 1)
    return out


def _med(values: list[float | None]) -> float | None:
    return ba._round(median(values))


def main(argv: list[str] | None = None) -> int:
    args, p, log = ba.cli(argv, __doc__, "bench_conversations")
    result: dict[str, Any] = {"env": environment(p, args.quick), "params": {"saturated": asdict(p.saturated)}}
    result.update(run(p.saturated, p.repeat, log))
    ba.emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
