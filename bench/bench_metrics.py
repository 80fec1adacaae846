"""Benchmark: what Prometheus metrics cost the asyncio API. Prints JSON.

    .venv/bin/python bench/bench_metrics.py [--repeat N] [--quick] [--verbose]

The saturated workload of :mod:`bench_facade` (4,000 channels x 20 messages in bursts, window 0.05 s, cap
10; ``--quick``: 100 channels) run through ``MessageQueue`` without metrics (``off``) and with
``metrics_registry=CollectorRegistry()`` (``on``), alternating in one process (which goes first alternates
too). Reported per mode: delivered messages per second and CPU microseconds per message (medians, with each
run), ``overhead``: 1 - on/off throughput, per repeat, then the median, and ``cpu_overhead``: on/off - 1 of
the process CPU per message, per repeat, then the median (the goal for both is below 5 %; the CPU ratio is
the steadier one on a shared machine, since other processes' load slows the wall clock of both modes more
than their CPU time); ``cpu_overhead.gauge_snapshots`` says, per repeat, how many of the queue's gauge
snapshots (one every 5 s, each asking every live channel for its statistics) fell in the on run's timed part.
With metrics on, the registry is scraped (``generate_latest``) once at the end to check the counts.

``facts``: the metrics' own hot-path cost, steadier than the end-to-end difference. After each pair of runs, the
facts that run fed (per delivered batch: ``accepted``, ``delivered``, ``processed``) are replayed into a fresh
:class:`~message_queue.metrics.QueueMetrics` and into :class:`ClientObjects` (prometheus_client's own Counter and
Histogram objects updated per fact, the earlier design), alternating; reported as CPU microseconds per message
(medians) and as a share of the CPU per message with metrics off. The periodic gauge snapshot is not in it (it
costs per live channel every 5 s, not per message; one run of this workload sees it at most once).
"""

from __future__ import annotations

import functools
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Protocol

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
import bench_facade as bf  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from message_queue import MessageQueue  # noqa: E402
from message_queue.metrics import BATCH_SIZE_BUCKETS, LATENESS_BUCKETS, PROCESSING_BUCKETS, QueueMetrics  # noqa: E402
from protocol.values import ChannelStatistics, MessageBatch, QueuedMessage, QueueItem  # noqa: E402

OVERHEAD_GOAL = 0.05


class Facts(Protocol):
    def accepted(self, count: int) -> None: ...
    def delivered(self, item: QueueItem, reason: str, lateness: float) -> None: ...
    def processed(self, seconds: float) -> None: ...


class ClientObjects:
    """The facts of a delivery fed to prometheus_client's own objects, as the metrics did before: each
    ``inc``/``observe`` takes a lock, and an observation searches its bucket linearly."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.enqueued = Counter("message_queue_messages_enqueued", "", registry=registry)
        self.messages = Counter("message_queue_messages_delivered", "", registry=registry)
        self.batches = Counter("message_queue_batches_delivered", "", ["reason"], registry=registry)
        self.batch_size = Histogram("message_queue_batch_size", "", buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.lateness = Histogram("message_queue_flush_lateness_seconds", "", buckets=LATENESS_BUCKETS,
                                  registry=registry)
        self.processing = Histogram("message_queue_processing_seconds", "", buckets=PROCESSING_BUCKETS,
                                    registry=registry)

    def accepted(self, count: int) -> None:
        self.enqueued.inc(count)

    def delivered(self, item: QueueItem, reason: str, lateness: float) -> None:
        size = item.size
        self.messages.inc(size)
        self.batches.labels(reason).inc()
        self.batch_size.observe(size)
        self.lateness.observe(lateness)

    def processed(self, seconds: float) -> None:
        self.processing.observe(seconds)


REPLAYED_BATCHES = 20_000  # at least: a few tens of milliseconds, well above the CPU clock's resolution


def replay(make: Callable[[CollectorRegistry], Facts], batches: int, size: int) -> float:
    """CPU microseconds per message of the facts deliveries of ``size`` messages feed (``batches`` of them, or
    ``REPLAYED_BATCHES`` if more)."""
    batches = max(batches, REPLAYED_BATCHES)
    messages = [QueuedMessage(platform="bench", channel_id="c", user_id="u", user_name="U", text=str(i))
                for i in range(size)]
    item = QueueItem("item", "c", MessageBatch(messages=messages))
    metrics = make(CollectorRegistry())
    started = time.process_time()
    for _ in range(batches):
        metrics.accepted(size)
        metrics.delivered(item, "window", 0.003)
        metrics.processed(0.0004)
    return (time.process_time() - started) / (batches * size) * 1e6


def one_run(wl: ba.Bursts, metrics: bool) -> tuple[dict[str, Any], float | None]:
    """A facade run of ``wl``; with ``metrics``, also the delivered count the registry exposes, and in the
    record ``gauge_snapshots``: how many of the queue's periodic gauge snapshots finished in the timed part."""
    registry = CollectorRegistry() if metrics else None
    window: list[float] = []
    taken: list[float] = []
    observe = QueueMetrics.observe_statistics

    def counted(self: QueueMetrics, snapshots: Iterable[ChannelStatistics]) -> None:
        taken.append(time.monotonic())
        observe(self, snapshots)

    def on_start(_driver: Any) -> Callable[[], None]:
        window.append(time.monotonic())
        return lambda: window.append(time.monotonic())

    bf.MessageQueue = functools.partial(MessageQueue, metrics_registry=registry)  # type: ignore[misc]
    QueueMetrics.observe_statistics = counted  # type: ignore[method-assign]
    try:
        record = bf.run_facade_bursts(wl, on_start=on_start)
    finally:
        bf.MessageQueue = MessageQueue  # type: ignore[misc]
        QueueMetrics.observe_statistics = observe  # type: ignore[method-assign]
    exposed = None
    if registry is not None:
        record["gauge_snapshots"] = sum(window[0] <= t <= window[-1] for t in taken)
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                if sample.name == "message_queue_messages_delivered_total":
                    exposed = sample.value
    return record, exposed


def main(argv: list[str] | None = None) -> int:
    args, p, log = ba.cli(argv, __doc__, "bench_metrics")
    wl = p.saturated
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    overheads: list[float] = []
    cpu_overheads: list[float] = []
    facts: dict[str, list[float]] = {"collector": [], "client_objects": []}
    shares: dict[str, list[float]] = {"collector": [], "client_objects": []}
    exposed: list[float | None] = []
    for i in range(p.repeat):
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        rates = {}
        cpu = {}
        for mode in order:
            record, seen = one_run(wl, mode == "on")
            runs[mode].append(record)
            rates[mode] = record["msgs_per_s"]
            cpu[mode] = record["cpu_us_per_msg"]
            if mode == "on":
                exposed.append(seen)
            snapshots = f", {record['gauge_snapshots']} gauge snapshot(s)" if mode == "on" else ""
            log(f"repeat {i + 1}: {mode} {record['msgs_per_s']:.0f} msg/s, {record['cpu_us_per_msg']:.1f} us/msg"
                + snapshots)
        overheads.append(1 - rates["on"] / rates["off"])
        cpu_overheads.append(cpu["on"] / cpu["off"] - 1)
        batches = runs["on"][-1]["batches"]
        size = max(1, round(runs["on"][-1]["delivered"] / max(1, batches)))
        makers: dict[str, Callable[[CollectorRegistry], Facts]] = {"collector": QueueMetrics,
                                                                   "client_objects": ClientObjects}
        for name in sorted(makers, reverse=i % 2 == 1):
            us = replay(makers[name], batches, size)
            facts[name].append(us)
            shares[name].append(us / cpu["off"])
        log(f"repeat {i + 1}: facts replayed: collector {facts['collector'][-1]:.3f} us/msg, "
            f"prometheus_client objects {facts['client_objects'][-1]:.3f} us/msg")
    summary = {
        mode: {
            "msgs_per_s": ba.median([r["msgs_per_s"] for r in records]),
            "cpu_us_per_msg": ba.median([r["cpu_us_per_msg"] for r in records]),
            "delivered": [r["delivered"] for r in records],
            "runs_msgs_per_s": [round(r["msgs_per_s"]) for r in records],
        }
        for mode, records in runs.items()
    }
    overhead = ba.median(overheads)
    cpu_overhead = ba.median(cpu_overheads)
    result = {
        "env": ba.environment(p, args.quick),
        "workload": {"channels": wl.channels, "messages": wl.total, "window": wl.window,
                     "max_batch_size": wl.max_batch_size},
        "modes": summary,
        "overhead": {"median": round(overhead, 4), "runs": [round(o, 4) for o in overheads],
                     "goal": OVERHEAD_GOAL, "met": overhead < OVERHEAD_GOAL},
        "cpu_overhead": {"median": round(cpu_overhead, 4), "runs": [round(o, 4) for o in cpu_overheads],
                         "goal": OVERHEAD_GOAL, "met": cpu_overhead < OVERHEAD_GOAL,
                         "gauge_snapshots": [r["gauge_snapshots"] for r in runs["on"]]},
        "facts": {
            name: {"us_per_msg": round(statistics.median(values), 4),
                   "share_of_cpu_off": round(statistics.median(shares[name]), 4),
                   "runs_us_per_msg": [round(v, 4) for v in values]}
            for name, values in facts.items()
        },
        "exposed_delivered_total": exposed,
    }
    ba.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
