"""Benchmark: many channels come and go (spawn, one delivery, passivation) while commands keep being answered.
Prints one JSON object.

    .venv/bin/python bench/bench_passivation.py [--channels 100000] [--idle-timeout 1.0] [--repeat 3] [--quick]

One run, on ``simpleSystemBase`` started with :func:`actors.system.start_system` (batching off, so a message is
its own item and goes out at once) and a processor actor that answers ``ProcessingDone`` at once:

    * ``create_s``: acknowledged ``EnqueueMany`` commands of ``--chunk`` messages, one message for each of
      ``--channels`` new channels, until the processor has answered every delivery. Every channel is spawned
      on its first message. With ``--idle-timeout`` shorter than the creation, the first channels already
      passivate while the last are created, as on a node that keeps getting new conversations.
      ``create_without_passivation_s``: the same on a node whose channels do not passivate (idle timeout of
      an hour), run after it.
    * ``passivate_s``: from the moment the first channels became due to passivate (start + idle timeout)
      until no channel is live any more; ``bars.passivation_le_2x_creation`` compares it with twice
      ``create_without_passivation_s``. Live channels are counted by looking at the Supervisor's routes (a
      benchmark-only peek:
      ``GetStatistics()`` would ask every live channel each time); the end is confirmed with
      ``GetStatistics()``, which must list none.
    * ``command_ms``: answer time of commands (``GetStatistics`` of a passivated channel, ``StartProcessing``
      of a channel that never ran) sent one after the other while channels passivate, from the end of the
      creation until none is live: p50, p99, max; ``bars.commands_le_100ms`` holds when the max is at most
      100 ms (the slowest of every run). ``command_ms_before_first_due``: the same, each after an
      ``EnqueueMany`` (whose answer times count too), before any channel was due to passivate.
      ``command_ms_without_full_collection`` leaves out the commands during which CPython's garbage collector
      ran a full collection (``full_collection_ms``: those pauses, which grow with the objects alive, i.e.
      with the live channels, not with the passivated ones).
    * memory: RSS before the creation and after every channel passivated (and a full collection), the
      growth per channel; ``retired_bytes_per_channel``: what the Supervisor keeps per passivated channel
      (its record of processor and counters: dict slot, key, what is not shared), by ``sys.getsizeof``;
      ``retired_entries``: channels whose counters it keeps, ``records``: channels it keeps a record of;
      ``leftover``: registry entries and children the simple base still holds for exited channel actors (0
      expected).
    * ``counters_intact``: ``GetStatistics`` of a sample of passivated channels shows the one processed item.

Every number is the median over ``--repeat`` runs; ``runs`` lists each. ``--quick`` (2,000 channels, one
run) is a smoke test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
from thespian.actors import ActorAddress, ActorTypeDispatcher  # noqa: E402

from actors.system import SIMPLE_BASE, RunningSystem, start_system  # noqa: E402
from protocol.messages import (  # noqa: E402
    BatchReady,
    Enqueued,
    EnqueueMany,
    GetStatistics,
    ProcessingDone,
    ProcessingStarted,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings, QueuedMessage  # noqa: E402

mono = time.monotonic
TIMEOUT = 600.0
COMMAND_BAR_MS = 100.0


@dataclass(frozen=True, slots=True)
class CountAll:
    """Bench -> Answerer: reply ``Counted`` once ``total`` deliveries have been answered."""

    total: int


@dataclass(frozen=True, slots=True)
class Counted:
    """Answerer -> bench: deliveries answered so far."""

    delivered: int


class Answerer(ActorTypeDispatcher):  # type: ignore[misc]
    """A processor that answers every BatchReady with ProcessingDone at once, and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self._delivered = 0
        self._waiter: tuple[int, ActorAddress] | None = None

    def receiveMsg_BatchReady(self, msg: BatchReady, sender: ActorAddress) -> None:
        self.send(sender, ProcessingDone(msg.channel_id, msg.delivery_id))
        self._delivered += 1
        self._answer()

    def receiveMsg_CountAll(self, msg: CountAll, sender: ActorAddress) -> None:
        self._waiter = (msg.total, sender)
        self._answer()

    def _answer(self) -> None:
        if self._waiter is not None and self._delivered >= self._waiter[0]:
            self.send(self._waiter[1], Counted(self._delivered))
            self._waiter = None


def channel_name(index: int) -> str:
    return f"bench:{index:06d}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _instance(running: RunningSystem, address: ActorAddress) -> Any:
    """The actor object behind ``address`` on the simple base (benchmark-only: reaches into Thespian)."""
    return running.asys._systemBase.actorRegistry[address.actorAddressString].instance


class FullCollections:
    """Times of CPython's full (generation 2) garbage collections while installed: (start, seconds)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._started = 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = mono()
        else:
            self.pauses.append((self._started, mono() - self._started))

    def during(self, start: float, took: float) -> bool:
        return any(start <= at < start + took for at, _ in self.pauses)


class Commands:
    """Commands sent one after the other, each timed from send to answer and stamped with its send time."""

    def __init__(self, running: RunningSystem, sample: list[str]) -> None:
        self.running = running
        self.sample = sample
        self.seq = 0
        self.timed: list[tuple[float, float]] = []  # (sent at, seconds to the answer)

    def ask(self, command: object, expected: type) -> object:
        started = mono()
        reply = self.running.asys.ask(self.running.supervisor, command, TIMEOUT)
        self.timed.append((started, mono() - started))
        assert isinstance(reply, expected), reply
        return reply

    def probe(self) -> None:
        """``GetStatistics`` of a channel, or ``StartProcessing`` of a channel that never ran, in turn."""
        self.seq += 1
        if self.seq % 2:
            self.ask(GetStatistics(self.sample[self.seq % len(self.sample)]), Statistics)
        else:
            self.ask(StartProcessing(f"probe:{self.seq % 100}"), ProcessingStarted)

    def answer_times(self, since: float, until: float, without: FullCollections | None = None) -> list[float]:
        """Answer times of the commands sent in [since, until); ``without``: leave out those during which a
        full collection of the garbage collector ran."""
        return [
            took
            for sent, took in self.timed
            if since <= sent < until and (without is None or not without.during(sent, took))
        ]


def _start(idle_timeout: float) -> tuple[RunningSystem, ActorAddress]:
    running = start_system(SIMPLE_BASE, BatchSettings(batching=False), idle_timeout=idle_timeout, timeout=60)
    processor = running.asys.createActor(Answerer)
    started = running.asys.ask(running.supervisor, StartProcessing(processor=processor), TIMEOUT)
    assert isinstance(started, ProcessingStarted), started
    return running, processor


def _create(
    running: RunningSystem, processor: ActorAddress, messages: list[QueuedMessage], chunk: int, commands: Commands
) -> float:
    """Send every message (one per new channel) in acknowledged ``EnqueueMany`` commands of ``chunk``, each
    followed by a probe command; return the time until the processor has answered every delivery."""
    t0 = mono()
    for start in range(0, len(messages), chunk):
        commands.ask(EnqueueMany(tuple(messages[start : start + chunk]), ack=True), Enqueued)
        commands.probe()
    counted = running.asys.ask(processor, CountAll(len(messages)), TIMEOUT)
    assert isinstance(counted, Counted) and counted.delivered == len(messages), counted
    return mono() - t0


def reference_run(messages: list[QueuedMessage], chunk: int) -> float:
    """Creation time of the same channels on a node where none passivates (idle timeout of an hour)."""
    running, processor = _start(3600.0)
    try:
        names = [m.channel_id for m in messages[:100]]
        return _create(running, processor, messages, chunk, Commands(running, names))
    finally:
        running.shutdown()


def churn_run(
    messages: list[QueuedMessage], chunk: int, idle_timeout: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Create the channels with ``idle_timeout``, then keep sending commands until none is live."""
    channels = len(messages)
    names = [m.channel_id for m in messages]
    running, processor = _start(idle_timeout)
    try:
        asys = running.asys
        supervisor = _instance(running, running.supervisor)
        registry = asys._systemBase.actorRegistry
        registry_before = len(registry)
        gc.collect()
        rss_before = rss_bytes()
        commands = Commands(running, names[:100])

        log(f"creating {channels} channels, idle timeout {idle_timeout} s")
        with FullCollections() as collections:
            t0 = mono()
            create_s = _create(running, processor, messages, chunk, commands)
            live_at_end_of_creation = len(supervisor._routes)
            log(f"created in {create_s:.1f} s, {live_at_end_of_creation} live; passivating")
            deadline = mono() + TIMEOUT
            while supervisor._routes:
                if mono() > deadline:
                    raise RuntimeError(f"{len(supervisor._routes)} channels still live after {TIMEOUT} s")
                asys.listen(0.001)  # lets due wakeups fire between commands
                commands.probe()
            passivated = mono()
        listed = asys.ask(running.supervisor, GetStatistics(), TIMEOUT)
        assert isinstance(listed, Statistics), listed
        gc.collect()
        rss_after = rss_bytes()

        sample = random.Random(7).sample(names, min(1000, channels))
        intact = 0
        for name in sample:
            stats = asys.ask(running.supervisor, GetStatistics(name), TIMEOUT)
            assert isinstance(stats, Statistics), stats
            intact += stats.channels[0].processed == 1
        records = supervisor._records
        children = registry[running.supervisor.actorAddressString]._yung
        first_due = t0 + idle_timeout
        while_passivating = commands.answer_times(first_due, passivated)
        before_due = commands.answer_times(t0, first_due)
        pauses = [took for at, took in collections.pauses if first_due <= at < passivated]
        return {
            "create_s": create_s,
            "passivate_s": passivated - first_due,
            "all_passivated_after_start_s": passivated - t0,
            "live_at_end_of_creation": live_at_end_of_creation,
            "live_listed_at_end": len(listed.channels),
            "commands": len(while_passivating),
            "command_ms": ba.percentiles_ms(while_passivating),
            "command_ms_without_full_collection": ba.percentiles_ms(
                commands.answer_times(first_due, passivated, without=collections)
            ),
            "full_collections": len(pauses),
            "full_collection_ms": ba.percentiles_ms(pauses),
            "commands_before_first_due": len(before_due),
            "command_ms_before_first_due": ba.percentiles_ms(before_due),
            "rss_before_mb": rss_before / 2**20,
            "rss_after_mb": rss_after / 2**20,
            "rss_growth_bytes_per_channel": (rss_after - rss_before) / channels,
            "retired_entries": records.counted(),
            "records": len(records),
            "retired_bytes_per_channel": records.nbytes() / channels,
            "leftover": {
                "registry_entries": len(registry) - registry_before - 1,  # all but the Timer
                "supervisor_children": len(children) - 1,  # all but the Timer
            },
            "counters_intact": intact == len(sample),
            "counters_checked": len(sample),
        }
    finally:
        running.shutdown()


def one_run(channels: int, chunk: int, idle_timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    messages = [QueuedMessage("bench", channel_name(i), "u", "u", "hello") for i in range(channels)]
    with ba.frozen_heap():  # the prebuilt messages stay out of the collector's scans, as in bench_actors
        result = churn_run(messages, chunk, idle_timeout, log)  # first: its RSS figures start from a fresh heap
    log(f"reference: creating {channels} channels that do not passivate")
    with ba.frozen_heap():
        reference = reference_run(messages, chunk)
    result["create_without_passivation_s"] = reference
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numbers; flags must hold in every run, leftovers take the worst run."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, bool):
            out[key] = all(r[key] for r in runs)
        elif isinstance(value, (int, float)):
            out[key] = ba._round(ba.median([r[key] for r in runs]))
        elif key == "leftover":
            out[key] = {k: max(r[key][k] for r in runs) for k in value}
        else:  # percentiles
            out[key] = {p: ba._round(ba.median([r[key][p] for r in runs])) for p in value}
    out["runs"] = {
        k: [ba._round(r[k]) for r in runs]
        for k in ("create_without_passivation_s", "create_s", "passivate_s", "rss_growth_bytes_per_channel")
    }
    for name, key in (
        ("command_max_ms", "command_ms"),
        ("command_without_full_collection_max_ms", "command_ms_without_full_collection"),
        ("full_collection_max_ms", "full_collection_ms"),
    ):
        out["runs"][name] = [r[key]["max"] for r in runs]
    return out


def _worst(values: list[float | None]) -> float:
    return max((v for v in values if v is not None), default=0.0)


def main(argv: list[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--channels", type=int, default=None, help="channels (default 100000, quick 2000)")
        parser.add_argument("--chunk", type=int, default=100, help="messages (new channels) per EnqueueMany")
        parser.add_argument("--idle-timeout", type=float, default=1.0, help="seconds idle before passivating")

    args, p, log = ba.cli(argv, __doc__, "passivation", options)
    channels = args.channels if args.channels is not None else (2000 if args.quick else 100_000)
    if channels < 1 or args.chunk < 1 or not args.idle_timeout > 0:
        raise SystemExit("--channels and --chunk must be >= 1 and --idle-timeout > 0")
    runs = []
    for i in range(p.repeat):
        log(f"run {i + 1}/{p.repeat}")
        gc.collect()
        runs.append(one_run(channels, args.chunk, args.idle_timeout, log))
    result = summarize(runs)
    env = ba.environment(p, args.quick)
    report: dict[str, Any] = {
        "env": env,
        "params": {"channels": channels, "chunk": args.chunk, "idle_timeout_s": args.idle_timeout},
        "result": result,
        "bars": {
            "passivation_le_2x_creation": {
                "value": ba._ratio(result["passivate_s"], result["create_without_passivation_s"]),
                "threshold": "passivate_s <= 2 x create_without_passivation_s",
                "pass": result["passivate_s"] <= 2 * result["create_without_passivation_s"],
            },
            "commands_le_100ms": {
                "value": _worst(result["runs"]["command_max_ms"]),
                "what": "slowest answer of any run, while channels passivate",
                "threshold": f"<= {COMMAND_BAR_MS} ms",
                "pass": _worst(result["runs"]["command_max_ms"]) <= COMMAND_BAR_MS,
                "slowest_without_full_collection_ms": _worst(
                    result["runs"]["command_without_full_collection_max_ms"]
                ),
                "slowest_full_collection_ms": _worst(result["runs"]["full_collection_max_ms"]),
            },
        },
    }
    report["bars"]["all_pass"] = all(b["pass"] for b in report["bars"].values())
    ba.emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
