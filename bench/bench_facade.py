"""Benchmark: the asyncio API (``message_queue.MessageQueue``) against the plain-asyncio baseline. Prints JSON.

    .venv/bin/python bench/bench_facade.py [--repeat N] [--quick] [--profile] [--verbose]

The workloads, the baseline and every metric are those of :mod:`bench_actors` (imported, not copied): the
"bursts" workloads (``saturated``: capacity; ``paced``: a steady moderate load; ``lateness``: 2,000 channels
open at once, window 1 s, all flushing by window) run through

    * ``baseline``: :mod:`asyncio_baseline` (one event loop, one ``call_at`` per channel, a task per channel);
    * ``facade``: ``MessageQueue(default_batch_window=W, max_batch_size=M)``, one ``start_processing(channel,
      callback)`` per channel (before the clock starts), then ``await mq.enqueue(msg)`` per message on the
      same schedule as the baseline. The callback records the batch and returns at once. The queue's actors
      run on the same event loop, in the loop driver's turns (``actors.loop_driver``).

Baseline and facade alternate within each repeat (same process, same machine state; which goes first
alternates too); ratios are taken per repeat, then the median. ``--repeat`` defaults to 3 (``--quick``: 1,
small workloads, a few seconds).

Numbers per implementation and workload (medians; ``runs`` lists each repeat):
    * ``msgs_per_s``: messages delivered to callbacks per second, first enqueue to last callback;
    * ``msgs_per_cpu_s`` and ``cpu_us_per_msg``: per CPU second of the whole process (``time.process_time``:
      the loop's thread does all the work for both; the process has no other busy thread);
    * ``lateness_ms`` (p50/p99/max): ``delivery`` = callback start time minus (send time of the batch's last
      message + window; + 0 for a batch closed because it was full); facade only: ``core`` =
      ``BatchReady.lateness`` (the Timer's lateness) and ``handoff`` = callback start minus the moment the
      ``BatchReady`` left the actors (a task is created for the callback; it starts on a later iteration);
    * ``stalls_ms`` (saturated only): while the run lasts, a probe (``loop_support.StallProbe``) sleeps 1 ms
      in a loop (``sleep``) and re-arms a 1 ms ``loop.call_later`` (``call_later``); how late each fired,
      p50/p99/max. It measures how long the loop is held by one callback: an actor turn, a producer step.

The facade's stage timestamps come from a tap on the loop driver's output callback (``mq._backend._driver``
and its ``_on_output``: private attributes, read and wrapped by the benchmark only; one ``time.monotonic()``
and one ``list.append`` per output). ``facade_outputs_per_batch`` counts every output the queue receives
(``BatchReady`` plus the ``QueueChanged`` facts of ``Observe``).

``--profile`` adds one more facade run of the saturated workload under cProfile (there is one thread) and
reports the top functions by own time, per delivered message, and the Thespian sends per delivered batch
(calls of the simple base's ``_runSingleSend``, and of ``actor_send``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.metadata
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
from asyncio_baseline import FULL, AsyncioBatcher, Batch  # noqa: E402
from bench_actors import (  # noqa: E402
    Bursts,
    Params,
    environment,
    expected_order,
    frozen_heap,
    make_messages,
    median,
    result_record,
    seq_of,
    summarize,
    wait_timeout,
)
from loop_support import (  # noqa: E402
    OutputTap,
    StallProbe,
    call_counts,
    loop_driver,
    stall_summary,
    top_functions,
    total_tottime,  # noqa: E402
)

from message_queue import MessageQueue  # noqa: E402
from protocol.values import Payload, payload_messages  # noqa: E402

mono = time.monotonic

THROUGHPUT_BAR = 0.5  # facade / baseline, saturated workload (the goal is 1.0)
LATENESS_BAR_MS = 10.0  # p99 of delivery lateness, lateness workload (2,000 channels in the full run)
STALL_BAR_MS = 10.0  # p99 of the loop's stalls during the saturated run, in memory


# -- the baseline, with the probe and the process's CPU -------------------------------------------------


def run_baseline_bursts(wl: Bursts, probe: bool = False) -> dict[str, Any]:
    return asyncio.run(_baseline_bursts(wl, probe))


async def _baseline_bursts(wl: Bursts, probe: bool) -> dict[str, Any]:
    """As ``bench_actors.run_baseline_bursts``, plus the stall probe and the process's CPU."""
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

    stalls = StallProbe()
    with frozen_heap():
        batcher = AsyncioBatcher(processor, window=wl.window, max_batch_size=wl.max_batch_size)
        enqueue = batcher.enqueue
        if probe:
            stalls.start()
        cpu0 = time.process_time()
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
        cpu = time.process_time() - cpu0
        await stalls.stop()
        await batcher.aclose()
    converted = [(t, ch, [seq_of(m) for m in ms], reason, late) for t, ch, ms, reason, late in deliveries]
    record = result_record(wl, plan, sent, converted, "close", cpu)
    record["cpu_us_per_msg"] = cpu / max(1, record["delivered"]) * 1e6
    if probe:
        record["stalls"] = stalls.report()
    return record


# -- the facade run ---------------------------------------------------------------------------------------


def run_facade_bursts(
    wl: Bursts,
    probe: bool = False,
    profile: cProfile.Profile | None = None,
    on_start: Callable[[Any], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """One facade run; ``on_start`` is called with the loop driver once the channels are set up, and what it
    returns is called at the end of the timed part."""
    return asyncio.run(_facade_bursts(wl, probe, profile, on_start))


async def _facade_bursts(
    wl: Bursts,
    probe: bool,
    profile: cProfile.Profile | None,
    on_start: Callable[[Any], Callable[[], None]] | None,
) -> dict[str, Any]:
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

    stalls = StallProbe()
    with frozen_heap():
        mq = MessageQueue(default_batch_window=wl.window, max_batch_size=wl.max_batch_size)
        try:
            for ch in expected_order(plan):
                await mq.start_processing(ch, callback)
            tap = OutputTap(loop_driver(mq))
            await mq.statistics("ch0")  # a barrier: every setup output has been handled
            on_end = on_start(loop_driver(mq)) if on_start is not None else None
            if probe:
                stalls.start()
            if profile is not None:
                profile.enable()
            cpu0 = time.process_time()
            enqueue = mq.enqueue
            t0 = mono() + 0.001
            for offset, _channel, seqs in plan:
                delay = t0 + offset - mono()
                await asyncio.sleep(delay if delay > 0 else 0)  # yield between bursts, as the baseline does
                for seq in seqs:
                    sent[seq] = mono()
                    await enqueue(msgs[seq])
            try:
                await asyncio.wait_for(done.wait(), wait_timeout(wl))
            except TimeoutError:
                pass
            cpu = time.process_time() - cpu0
            if profile is not None:
                profile.disable()
            if on_end is not None:
                on_end()
            await stalls.stop()
        finally:
            await mq.close()
    # The payloads stay alive in ``got`` until here, so no id was reused.
    by_payload = {entry[1]: (entry[0], *entry[2:]) for entry in tap.emitted}
    deliveries = []
    handoff = []
    for t, payload in got:
        numbers = [seq_of(m) for m in payload_messages(payload)]
        emitted = by_payload.get(id(payload))
        if emitted is None:  # cannot happen: every callback's payload left the actors through the tap
            reason = FULL if len(numbers) >= wl.max_batch_size else "window"
            deliveries.append((t, payload_messages(payload)[0].channel_id, numbers, reason, 0.0))
            continue
        t_out, channel, reason, lateness = emitted
        handoff.append(t - t_out)
        deliveries.append((t, channel, numbers, reason, lateness))
    record = result_record(wl, plan, sent, deliveries, "core", cpu)
    record["lateness_ms"]["handoff"] = ba.percentiles_ms(handoff)
    record["facade_outputs_per_batch"] = sum(tap.kinds.values()) / max(1, len(got))
    record["cpu_us_per_msg"] = cpu / max(1, record["delivered"]) * 1e6
    if probe:
        record["stalls"] = stalls.report()
    return record


# -- the run ----------------------------------------------------------------------------------------------

IMPLS: dict[str, Callable[[Bursts, bool], dict[str, Any]]] = {
    "baseline": run_baseline_bursts,
    "facade": run_facade_bursts,
}


def run(p: Params, log: Callable[[str], None], profile: bool) -> dict[str, Any]:
    started = mono()
    shapes = (("saturated", p.saturated), ("paced", p.paced), ("lateness", p.lateness))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(p.repeat):
        for shape, wl in shapes:
            # alternate which goes first, so a drift of machine speed weighs on both alike
            order = tuple(IMPLS.items())
            for impl, fn in order if r % 2 == 0 else order[::-1]:
                log(f"repeat {r + 1}/{p.repeat} {shape} {impl}")
                gc.collect()
                runs.setdefault((impl, shape), []).append(fn(wl, shape == "saturated"))
    out: dict[str, Any] = {}
    for impl in IMPLS:
        out[impl] = {}
        for shape, _ in shapes:
            per_run = runs[(impl, shape)]
            block = summarize(per_run)
            block["cpu_us_per_msg"] = _med([r["cpu_us_per_msg"] for r in per_run])
            if impl == "facade":
                block["lateness_ms"]["handoff"] = {
                    k: _med([r["lateness_ms"]["handoff"][k] for r in per_run]) for k in ("p50", "p99", "max")
                }
                block["facade_outputs_per_batch"] = _med([r["facade_outputs_per_batch"] for r in per_run])
            if shape == "saturated":
                block["stalls_ms"] = stall_summary([r["stalls"] for r in per_run], median)
            out[impl][shape] = block

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
    stall_p99 = out["facade"]["saturated"]["stalls_ms"]["p99"]
    correct = all(
        out[impl][shape]["all_delivered"] and out[impl][shape]["in_order"] and not out[impl][shape]["duplicates"]
        for impl in IMPLS
        for shape, _ in shapes
    )
    out["bars"] = {
        "throughput_ratio_ge_0_5": ratio is not None and ratio >= THROUGHPUT_BAR,
        "lateness_p99_le_10ms": late["p99"] is not None and late["p99"] <= LATENESS_BAR_MS,
        "loop_stall_p99_le_10ms": stall_p99 is not None and stall_p99 <= STALL_BAR_MS,
        "every_message_once_in_order": correct,
    }
    out["bars"]["all_pass"] = all(out["bars"].values())
    out["bar_values"] = {
        "throughput_ratio": {
            "value": ratio, "threshold": f">= {THROUGHPUT_BAR}", "goal": ">= 1.0", "workload": "saturated",
        },
        "lateness_p99_ms": {
            "value": late["p99"],
            "threshold": f"<= {LATENESS_BAR_MS}",
            "what": f"delivery lateness, {p.lateness.channels} channels open at once, window {p.lateness.window}"
            " s, flushing by window",
            "baseline_p99": out["baseline"]["lateness"]["lateness_ms"]["delivery"]["p99"],
        },
        "loop_stall_p99_ms": {
            "value": stall_p99,
            "threshold": f"<= {STALL_BAR_MS}",
            "what": "the worse p99 of the two probes (1 ms sleep, 1 ms call_later) during the saturated run",
            "baseline_p99": out["baseline"]["saturated"]["stalls_ms"]["p99"],
        },
    }
    if profile:
        log("profile")
        out["profile"] = profile_facade(p.saturated)
    out["notes"] = [
        "saturated: the producer outruns the system, so delivery lateness there is queueing backlog",
        "CPU is the whole process's (time.process_time): the producer, the actors and the callbacks share "
        "the loop's thread in both implementations",
    ]
    out["duration_s"] = round(mono() - started, 1)
    return out


def _med(values: list[float | None]) -> float | None:
    return ba._round(median(values))


# -- profile ----------------------------------------------------------------------------------------------

SENDS = {
    # The simple base's send loop: every message handed to an actor or an endpoint passes it once.
    "run_single_send": ("actors/thespian_compat.py", "_runSingleSend", None),
    # Every send an actor made (self.send -> its ActorRef's actor_send -> the lean base's actor_send).
    "actor_send": ("actors/thespian_compat.py", "actor_send", None),
    # Every send the loop driver made (enqueues, ticks, replies): the lean base's send.
    "driver_send": ("actors/thespian_compat.py", "send", None),
}


STAGES = {
    # label: (file name ending, function): entry points whose cumulative time splits a message's cost
    "enqueue (MessageQueue.enqueue -> LocalQueue.enqueue)": ("message_queue/local.py", "enqueue"),
    "  of which validate_message": ("protocol/validation.py", "validate_message"),
    "loop driver turns (LoopDriver._turn)": ("actors/loop_driver.py", "_turn"),
    "  of which sends run (LeanSimpleBase.run_pending)": ("actors/thespian_compat.py", "run_pending"),
    "  of which the Timer's Tick (Timer._fire)": ("actors/timer.py", "_fire"),
    "  of which outputs handled by the queue (LocalQueue._handle)": ("message_queue/local.py", "_handle"),
    "callback tasks (their steps)": ("message_queue/local.py", "_invoke"),
    "callback ends (LocalQueue._finished)": ("message_queue/local.py", "_finished"),
}


def cumulative_by_stage(prof: cProfile.Profile, messages: int, total: float) -> dict[str, dict[str, float]]:
    """Cumulative time of each of :data:`STAGES`, per delivered message and as a share of the profile."""
    stats = pstats.Stats(prof)
    out: dict[str, dict[str, float]] = {}
    for label, (suffix, func) in STAGES.items():
        cum = sum(
            ct for (filename, _, name), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
            if name == func and filename.endswith(suffix)
        )
        out[label] = {"us_per_msg": round(cum / max(1, messages) * 1e6, 2),
                      "share_pct": round(100 * cum / total, 1) if total else 0.0}
    return out


def profile_facade(wl: Bursts, top: int = 15) -> dict[str, Any]:
    """One facade saturated run under cProfile: the top functions by own time, and sends per batch."""
    prof = cProfile.Profile()
    record = run_facade_bursts(wl, False, prof)
    messages, batches = record["delivered"], record["batches"]
    counts = call_counts(prof, SENDS)
    total = total_tottime(prof)
    by_type = count_sends_by_type(wl)
    return {
        "msgs_per_s_under_profile": ba._round(record["msgs_per_s"]),
        "messages": messages,
        "batches": batches,
        "profiled_s": round(total, 3),
        "profiled_us_per_msg": round(total / max(1, messages) * 1e6, 2),
        "thespian_sends_per_batch": {k: round(v / max(1, batches), 2) for k, v in counts.items()},
        "sends_per_batch_by_message_type": by_type,
        "cumulative_by_stage": cumulative_by_stage(prof, messages, total),
        "top_tottime": top_functions(prof, top, messages, batches, total),
    }


def count_sends_by_type(wl: Bursts) -> dict[str, float]:
    """Another facade run (not profiled) counting the simple base's sends by message type, per delivered
    batch, over the timed part (the queue's close is left out).

    Wraps ``actor_send`` (every actor's sends) and ``send`` (the driver's) on the system's base object
    (``LoopDriver._base``, private, wrapped for this run only)."""
    counts: Counter[str] = Counter()

    def count(driver: Any) -> Callable[[], None]:
        base = driver._base
        inner_actor_send, inner_send = base.actor_send, base.send

        def actor_send(sender: Any, to: Any, msg: object) -> None:
            counts[type(msg).__name__] += 1
            inner_actor_send(sender, to, msg)

        def send(sender: Any, to: Any, msg: object) -> None:
            counts[type(msg).__name__] += 1
            inner_send(sender, to, msg)

        base.actor_send, base.send = actor_send, send

        def stop() -> None:
            del base.actor_send, base.send  # back to the class's methods

        return stop

    record = run_facade_bursts(wl, False, None, count)
    batches = max(1, record["batches"])
    return {name: round(n / batches, 3) for name, n in counts.most_common()}


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
