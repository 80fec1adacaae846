"""Benchmark: the asyncio API (``message_queue.MessageQueue``) against the plain-asyncio baseline. Prints JSON.

    .venv/bin/python bench/bench_facade.py [--repeat N] [--quick] [--profile] [--verbose]

The workloads, the baseline and every metric are those of :mod:`bench_actors` (imported, not copied): the
"bursts" workloads (``saturated``: capacity; ``paced``: a steady moderate load; ``lateness``: 2,000 channels
open at once, window 1 s, all flushing by window) run through

    * ``baseline``: :mod:`asyncio_baseline` (one event loop, one ``call_at`` per channel, a task per channel);
    * ``facade``: ``MessageQueue(default_batch_window=W, max_batch_size=M)`` on its own event loop, one
      ``start_processing(channel, callback)`` per channel (before the clock starts), then ``await
      mq.enqueue(msg)`` per message on the same schedule as the baseline. The callback records the batch and
      returns at once; the facade then tells ``ProcessingDone`` to the actors.

Baseline and facade alternate within each repeat (same process, same machine state); ratios are taken per
repeat, then the median. ``--repeat`` defaults to 3 (``--quick``: 1, small workloads, a few seconds).

Numbers per implementation and workload (medians; ``runs`` lists each repeat):
    * ``msgs_per_s``: messages delivered to callbacks per second, first enqueue to last callback;
    * ``msgs_per_cpu_s``: the same per CPU second of the threads that did the work (baseline: the loop's
      thread; facade: the loop's thread plus the actor thread, Linux schedstat);
    * ``lateness_ms`` (p50/p99/max): ``delivery`` = callback start time minus (send time of the batch's last
      message + window; + 0 for a batch closed because it was full); facade only: ``core`` =
      ``BatchReady.lateness`` (the actor's timer lateness) and ``handoff`` = callback start minus the moment
      the actor thread handed the ``BatchReady`` to the facade (driver thread -> event loop -> task).

The facade's stage timestamps come from a tap on the driver's output callback (a private attribute; one
``time.monotonic()`` and one ``list.append`` per output on the actor thread). ``facade_outputs_per_batch``
counts every output the facade receives (``BatchReady`` plus the ``QueueChanged`` facts of ``Observe``).

``--profile`` adds one more facade run of the saturated workload under cProfile (loop thread and actor thread
separately) and reports the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.metadata
import io
import pathlib
import pstats
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
from asyncio_baseline import FULL  # noqa: E402
from bench_actors import (  # noqa: E402
    Bursts,
    Params,
    environment,
    expected_order,
    frozen_heap,
    make_messages,
    median,
    result_record,
    run_baseline_bursts,
    seq_of,
    summarize,
    thread_cpu_seconds,
    wait_timeout,
)

from actors.driver import InProcessDriver  # noqa: E402
from message_queue import MessageQueue  # noqa: E402
from protocol.messages import BatchReady  # noqa: E402
from protocol.values import Payload, payload_messages  # noqa: E402

mono = time.monotonic

THROUGHPUT_BAR = 0.5  # facade / baseline, saturated workload
LATENESS_BAR_MS = 10.0  # p99 of delivery lateness, lateness workload (2,000 channels in the full run)


# -- the facade run ---------------------------------------------------------------------------------------


class _Tap:
    """Wraps the driver's output callback (on the actor thread): when each ``BatchReady`` left the actors,
    and how many outputs of each type the facade received."""

    def __init__(self, driver: InProcessDriver) -> None:
        self.emitted: list[tuple[float, BatchReady]] = []
        self.kinds: Counter[str] = Counter()
        inner: Callable[[object], None] = driver._on_output  # type: ignore[assignment]
        emitted, kinds = self.emitted, self.kinds

        def tap(output: Any) -> None:
            if type(output) is BatchReady:
                emitted.append((mono(), output))
            kinds[type(output).__name__] += 1
            inner(output)

        driver._on_output = tap  # private: the benchmark's only hook into the facade's pipeline


def run_facade_bursts(wl: Bursts, profile: dict[str, cProfile.Profile] | None = None) -> dict[str, Any]:
    return asyncio.run(_facade_bursts(wl, profile))


async def _facade_bursts(wl: Bursts, profile: dict[str, cProfile.Profile] | None) -> dict[str, Any]:
    plan = wl.schedule()
    msgs = make_messages(plan)
    sent = [0.0] * len(msgs)
    got: list[tuple[float, Payload]] = []
    done = asyncio.Event()
    state = {"count": 0}
    total = wl.total

    async def callback(payload: Payload) -> None:
        got.append((mono(), payload))
        state["count"] += len(payload_messages(payload))
        if state["count"] >= total:
            done.set()

    with frozen_heap():
        mq = MessageQueue(default_batch_window=wl.window, max_batch_size=wl.max_batch_size)
        try:
            await asyncio.gather(*(mq.start_processing(ch, callback) for ch in expected_order(plan)))
            driver = mq._driver
            assert driver is not None
            tap = _Tap(driver)
            thread = ba._driver_thread(driver)
            await mq.statistics("ch0")  # a barrier: every setup output has reached the loop
            if profile is not None:
                profile["loop"].enable()
            cpu_loop0, cpu_sys0 = time.thread_time(), thread_cpu_seconds(thread)
            enqueue = mq.enqueue
            t0 = mono() + 0.001
            for offset, channel, seqs in plan:
                delay = t0 + offset - mono()
                await asyncio.sleep(delay if delay > 0 else 0)  # yield between bursts, as the baseline does
                for seq in seqs:
                    sent[seq] = mono()
                    await enqueue(msgs[seq])
            try:
                await asyncio.wait_for(done.wait(), wait_timeout(wl))
            except asyncio.TimeoutError:
                pass
            cpu_loop, cpu_sys1 = time.thread_time() - cpu_loop0, thread_cpu_seconds(thread)
            if profile is not None:
                profile["loop"].disable()
        finally:
            await mq.close()
    cpu = cpu_loop + (cpu_sys1 - cpu_sys0) if cpu_sys0 is not None and cpu_sys1 is not None else None
    by_payload = {id(ready.item.payload): (t, ready) for t, ready in tap.emitted}
    deliveries = []
    handoff = []
    for t, payload in got:
        numbers = [seq_of(m) for m in payload_messages(payload)]
        emitted = by_payload.get(id(payload))
        if emitted is None:  # cannot happen: every callback's payload left the actors through the tap
            reason = FULL if len(numbers) >= wl.max_batch_size else "window"
            deliveries.append((t, payload_messages(payload)[0].channel_id, numbers, reason, 0.0))
            continue
        t_out, ready = emitted
        handoff.append(t - t_out)
        deliveries.append((t, ready.channel_id, numbers, ready.reason, ready.lateness))
    record = result_record(wl, plan, sent, deliveries, "core", cpu)
    record["lateness_ms"]["handoff"] = ba.percentiles_ms(handoff)
    record["facade_outputs_per_batch"] = sum(tap.kinds.values()) / max(1, len(got))
    record["cpu_loop_thread_s"] = cpu_loop
    record["cpu_actor_thread_s"] = cpu - cpu_loop if cpu is not None else None
    return record


# -- the run ----------------------------------------------------------------------------------------------


def run(p: Params, log: Callable[[str], None], profile: bool) -> dict[str, Any]:
    started = mono()
    shapes = (("saturated", p.saturated), ("paced", p.paced), ("lateness", p.lateness))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(p.repeat):
        for shape, wl in shapes:
            # alternate which goes first, so a drift of machine speed weighs on both alike
            order = (("baseline", run_baseline_bursts), ("facade", run_facade_bursts))
            for impl, fn in order if r % 2 == 0 else order[::-1]:
                log(f"repeat {r + 1}/{p.repeat} {shape} {impl}")
                gc.collect()
                runs.setdefault((impl, shape), []).append(fn(wl))
    out: dict[str, Any] = {}
    for impl in ("baseline", "facade"):
        out[impl] = {shape: summarize(runs[(impl, shape)]) for shape, _ in shapes}
        if impl == "facade":
            for shape, _ in shapes:
                block = out[impl][shape]
                block["lateness_ms"]["handoff"] = {
                    k: _med([r["lateness_ms"]["handoff"][k] for r in runs[(impl, shape)]])
                    for k in ("p50", "p99", "max")
                }
                for key in ("facade_outputs_per_batch", "cpu_loop_thread_s", "cpu_actor_thread_s"):
                    block[key] = _med([r[key] for r in runs[(impl, shape)]])

    def ratios(shape: str, key: str) -> list[float | None]:
        return [ba._ratio(f[key], b[key]) for f, b in zip(runs[("facade", shape)], runs[("baseline", shape)])]

    sat = ratios("saturated", "msgs_per_s")
    sat_cpu = ratios("saturated", "msgs_per_cpu_s")
    out["ratios"] = {
        "facade_vs_baseline_saturated_throughput": ba._round(median(sat)),
        "runs_facade_vs_baseline_saturated_throughput": sat,
        "facade_vs_baseline_saturated_msgs_per_cpu_s": ba._round(median(sat_cpu)),
        "runs_facade_vs_baseline_saturated_msgs_per_cpu_s": sat_cpu,
        "facade_vs_baseline_paced_throughput": ba._round(median(ratios("paced", "msgs_per_s"))),
    }
    late = out["facade"]["lateness"]["lateness_ms"]["delivery"]
    ratio = out["ratios"]["facade_vs_baseline_saturated_throughput"]
    correct = all(
        out[impl][shape]["all_delivered"] and out[impl][shape]["in_order"] and not out[impl][shape]["duplicates"]
        for impl in ("baseline", "facade")
        for shape, _ in shapes
    )
    out["bars"] = {
        "throughput_ratio_ge_0_5": ratio is not None and ratio >= THROUGHPUT_BAR,
        "lateness_p99_le_10ms": late["p99"] is not None and late["p99"] <= LATENESS_BAR_MS,
        "every_message_once_in_order": correct,
    }
    out["bars"]["all_pass"] = all(out["bars"].values())
    out["bar_values"] = {
        "throughput_ratio": {"value": ratio, "threshold": f">= {THROUGHPUT_BAR}", "workload": "saturated"},
        "lateness_p99_ms": {
            "value": late["p99"],
            "threshold": f"<= {LATENESS_BAR_MS}",
            "what": f"delivery lateness, {p.lateness.channels} channels open at once, window {p.lateness.window}"
            " s, flushing by window",
            "baseline_p99": out["baseline"]["lateness"]["lateness_ms"]["delivery"]["p99"],
        },
    }
    if profile:
        log("profile")
        out["profile"] = profile_facade(p.saturated)
    out["notes"] = [
        "saturated: the producer outruns the system, so delivery lateness there is queueing backlog",
        "facade msgs_per_cpu_s counts the loop thread and the actor thread; the two compete for the GIL on "
        "the producer's process, the baseline runs on one thread",
    ]
    out["duration_s"] = round(mono() - started, 1)
    return out


def _med(values: list[float | None]) -> float | None:
    return ba._round(median(values))


# -- profile ----------------------------------------------------------------------------------------------


def profile_facade(wl: Bursts, top: int = 25) -> dict[str, Any]:
    """One facade run under cProfile: the loop thread and the actor thread, top functions by own time."""
    profiles = {"loop": cProfile.Profile(), "actors": cProfile.Profile()}
    original = InProcessDriver._run

    def profiled_run(self: InProcessDriver) -> None:
        profiles["actors"].enable()
        try:
            original(self)
        finally:
            profiles["actors"].disable()

    InProcessDriver._run = profiled_run  # type: ignore[method-assign]
    try:
        record = run_facade_bursts(wl, profiles)
    finally:
        InProcessDriver._run = original  # type: ignore[method-assign]
    out: dict[str, Any] = {"msgs_per_s_under_profile": ba._round(record["msgs_per_s"])}
    for name, prof in profiles.items():
        stream = io.StringIO()
        stats = pstats.Stats(prof, stream=stream)
        stats.sort_stats("tottime").print_stats(top)
        out[f"{name}_thread_top_tottime"] = [line for line in stream.getvalue().splitlines() if line.strip()]
    return out


# -- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    def profile_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--profile", action="store_true", help="add a cProfile of one facade saturated run")

    args, p, log = ba.cli(argv, __doc__, "bench_facade", profile_option)
    env = environment(p, args.quick)
    env["message_queue"] = _version("message_queue")
    result: dict[str, Any] = {
        "env": env,
        "params": {shape: asdict(getattr(p, shape)) for shape in ("saturated", "paced", "lateness")},
    }
    result.update(run(p, log, args.profile))
    ba.emit(result)
    return 0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
