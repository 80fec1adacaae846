"""Prometheus metrics of a queue: one definition for the asyncio API and ``run_system.py serve``.

:class:`QueueMetrics` registers one collector in the ``prometheus_client`` registry it is given (the
application's own, or serve's), so a process exposes the queue's metrics with its other metrics. Names start
with ``message_queue_`` and follow Prometheus conventions (counters end in ``_total``, durations are seconds).
No metric has a channel id as a label: channel ids are unbounded (one per chat), and a label per channel
would grow the registry without limit. Per-channel detail is what ``run_system.py admin channels`` shows.

What feeds them:
    * counters and histograms of deliveries: :meth:`QueueMetrics.delivered` once per delivered batch (a few
      additions per batch, nothing per message);
    * enqueued messages: :meth:`QueueMetrics.accepted` with the number handed over (per driver turn);
    * the gauges: :meth:`QueueMetrics.observe_statistics` with a full snapshot of the live channels
      (``GetStatistics``), taken when metrics are scraped (serve) or periodically (the asyncio API).

Cost and threads: facts are added to plain integers and per-bucket counts (no lock and no
``prometheus_client`` object on the hot path); :meth:`QueueMetrics.collect` builds the metric families from
them when the registry is scraped. This relies on CPython's GIL and on one rule: **each fact method is called
from one thread at a time**. Different methods may run on different threads: the asyncio API calls them all
on its loop (a persistence write is timed on the I/O thread, but its time is observed when the result comes
back to the loop); serve counts input on its main thread and everything else on the thread that receives the
actors' outputs. Scrapes come from any thread (an application's HTTP server, serve's handler threads).
A single writer's ``+=`` is never lost, and a scrape reads each value either before or after a concurrent
update. A histogram is read as a whole: its buckets, count and sum always come from the same observations.

Without a registry nothing is created and the queue does no metrics work at all.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from protocol.values import ChannelStatistics, FlushReason, MessageBatch, QueueItem

PREFIX = "message_queue_"

BATCH_SIZE_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROCESSING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: Every metric: full exposed name, type, meaning. The README's table is this one.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("message_queue_messages_enqueued_total", "counter", "messages accepted by enqueue (or serve's input)"),
    ("message_queue_messages_delivered_total", "counter", "messages handed to a processor, in batches"),
    ("message_queue_batches_delivered_total", "counter",
     "items handed to a processor, by flush reason (label reason: window, full, max_wait, flushed, ...)"),
    ("message_queue_cancellations_total", "counter", "in-flight items abandoned (cancel_current, stop)"),
    ("message_queue_rejections_total", "counter", "messages or commands refused as invalid"),
    ("message_queue_active_channels", "gauge", "channels with a live actor"),
    ("message_queue_items_waiting", "gauge", "finished items waiting for their processor"),
    ("message_queue_items_in_flight", "gauge", "items with their processor"),
    ("message_queue_open_batches", "gauge", "batches still collecting messages"),
    ("message_queue_batch_size", "histogram", "messages per delivered item"),
    ("message_queue_flush_lateness_seconds", "histogram", "how long after its deadline a batch was closed"),
    ("message_queue_processing_seconds", "histogram", "from delivery to the processor's answer"),
    ("message_queue_redis_write_seconds", "histogram", "one persistence write (a script call) to Redis"),
    ("message_queue_redis_script_seconds", "histogram", "one pipeline of distributed mode's scripts"),
)


SNAPSHOT_RETRIES = 10_000  # a scrape waits at most this many thread switches for an observation to finish


class HistogramCounts:
    """Observations counted per bucket, and their sum: one histogram's state, written by one thread at a time.

    ``bounds`` are the buckets' upper bounds, sorted; a last ``+Inf`` bucket is implied. A value lands in the
    first bucket whose bound is >= the value (Prometheus' ``le``), found by bisection.
    """

    __slots__ = ("bounds", "labels", "_counts", "_sum", "_version")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"histogram bounds must be sorted, got {bounds}")
        # each bucket's ``le`` label, written as prometheus_client writes it ("1.0", "0.0025", "+Inf")
        self.labels = tuple(floatToGoString(b) for b in (*self.bounds, float("inf")))  # type: ignore[no-untyped-call]
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0
        # Even between observations, odd during one: a reader on another thread retries until it copied
        # counts and sum while the version stayed even and unchanged (a seqlock; the GIL orders the steps).
        self._version = 0

    def observe(self, value: float) -> None:
        """Count ``value``."""
        index = bisect_left(self.bounds, value)  # what can raise comes before the version turns odd
        total = self._sum + value
        self._version += 1
        self._counts[index] += 1
        self._sum = total
        self._version += 1

    def snapshot(self) -> tuple[list[int], float]:
        """Counts per bucket (``+Inf`` last, not cumulative) and the sum, all of the same observations.
        Safe from any thread. If an observation stays half written (its thread was interrupted inside
        :meth:`observe`), gives up waiting after ``SNAPSHOT_RETRIES`` tries and returns what it read."""
        for _ in range(SNAPSHOT_RETRIES):
            version = self._version
            if not version & 1:
                counts = self._counts[:]
                total = self._sum
                if self._version == version:
                    return counts, total
            time.sleep(0)  # an observation is half written on another thread: let it finish
        return self._counts[:], self._sum


class QueueMetrics:
    """The queue's metrics, registered in ``registry`` as one collector (see the module for threads).

    Raises:
        ValueError: (from ``prometheus_client``) if ``registry`` already holds metrics of these names, e.g.
            a second queue given the same registry: give each queue a registry of its own.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.created = time.time()  # the counters' and histograms' ``_created``
        self.enqueued = 0
        self.delivered_messages = 0
        self.cancellations = 0
        self.rejections = 0
        self._by_reason: dict[str, int] = {reason.value: 0 for reason in FlushReason}
        self._reason_created: dict[str, float] = {}  # reasons newer than this module: when first seen
        # (active channels, items waiting, items in flight, open batches): replaced whole by each snapshot
        self._gauges = (0, 0, 0, 0)
        self.batch_size = HistogramCounts(BATCH_SIZE_BUCKETS)
        self.lateness = HistogramCounts(LATENESS_BUCKETS)
        self.processing = HistogramCounts(PROCESSING_BUCKETS)
        self.redis_write = HistogramCounts(REDIS_BUCKETS)
        self.redis_script = HistogramCounts(REDIS_BUCKETS)
        registry.register(self)

    # -- facts --------------------------------------------------------------------------------------------

    def accepted(self, count: int) -> None:
        """``count`` messages were accepted."""
        self.enqueued += count

    def rejected(self, count: int = 1) -> None:
        """``count`` messages or commands were refused."""
        self.rejections += count

    def delivered(self, item: QueueItem, reason: str, lateness: float) -> None:
        """``item`` was handed to its processor, closed for ``reason`` ``lateness`` seconds after its deadline."""
        payload = item.payload
        size = len(payload.messages) if isinstance(payload, MessageBatch) else 1  # item.size, without a copy
        self.delivered_messages += size
        by_reason = self._by_reason
        if reason in by_reason:
            by_reason[reason] += 1
        else:  # a reason newer than this module
            label = str(reason)
            self._reason_created.setdefault(label, time.time())
            by_reason[label] = by_reason.get(label, 0) + 1
        # HistogramCounts.observe twice, written out: this runs once per delivered batch, and the two calls
        # were half of its cost.
        sizes = self.batch_size
        index = bisect_left(sizes.bounds, size)
        total = sizes._sum + size
        sizes._version += 1
        sizes._counts[index] += 1
        sizes._sum = total
        sizes._version += 1
        late = self.lateness
        index = bisect_left(late.bounds, lateness)
        total = late._sum + lateness
        late._version += 1
        late._counts[index] += 1
        late._sum = total
        late._version += 1

    def cancelled(self) -> None:
        """An item in flight was abandoned."""
        self.cancellations += 1

    def processed(self, seconds: float) -> None:
        """A processor answered a delivery ``seconds`` after it was handed over."""
        self.processing.observe(seconds)

    def redis_written(self, seconds: float) -> None:
        """One persistence write (a script call) took ``seconds`` on Redis."""
        self.redis_write.observe(seconds)

    def script_ran(self, seconds: float) -> None:
        """One pipeline of distributed mode's scripts took ``seconds`` on Redis."""
        self.redis_script.observe(seconds)

    def observe_statistics(self, snapshots: Iterable[ChannelStatistics]) -> None:
        """Set the gauges from a snapshot of every live channel (``GetStatistics()`` with no channel). Safe
        from any thread: the four gauges are replaced together."""
        channels = waiting = in_flight = open_batches = 0
        for s in snapshots:
            channels += 1
            waiting += s.queued
            in_flight += s.in_flight
            open_batches += s.open_batch_size > 0
        self._gauges = (channels, waiting, in_flight, open_batches)

    # -- the collector --------------------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples: the registry checks their names against its others."""
        return self._families(samples=False)

    def collect(self) -> Iterator[Metric]:
        """The metric families with their current values (called by the registry at each scrape)."""
        return self._families(samples=True)

    def _families(self, samples: bool) -> Iterator[Metric]:
        # ``_created`` samples follow prometheus_client's own switch (PROMETHEUS_DISABLE_CREATED_SERIES,
        # disable_created_metrics()), as its Counter and Histogram objects do
        created = self.created if _prometheus_metrics._use_created else None
        for name, documentation, value in (
            ("messages_enqueued", "Messages accepted by enqueue.", self.enqueued),
            ("messages_delivered", "Messages handed to a processor, in batches.", self.delivered_messages),
        ):
            yield _counter(name, documentation, value if samples else None, created)
        batches = CounterMetricFamily(PREFIX + "batches_delivered", "Items handed to a processor, by flush reason.",
                                      labels=["reason"])
        if samples:
            late = self._reason_created
            for reason, count in list(self._by_reason.items()):
                batches.add_metric([reason], count, None if created is None else late.get(reason, created))
        yield batches
        for name, documentation, value in (
            ("cancellations", "In-flight items abandoned.", self.cancellations),
            ("rejections", "Messages or commands refused as invalid.", self.rejections),
        ):
            yield _counter(name, documentation, value if samples else None, created)
        gauges = self._gauges
        for name, documentation, value in zip(
            ("active_channels", "items_waiting", "items_in_flight", "open_batches"),
            ("Channels with a live actor.", "Finished items waiting for their processor.",
             "Items with their processor.", "Batches still collecting messages."),
            gauges,
        ):
            yield GaugeMetricFamily(PREFIX + name, documentation, value if samples else None)
        for name, documentation, histogram in (
            ("batch_size", "Messages per delivered item.", self.batch_size),
            ("flush_lateness_seconds", "How long after its deadline a batch was closed.", self.lateness),
            ("processing_seconds", "From delivery to the processor's answer.", self.processing),
            ("redis_write_seconds", "One persistence write to Redis.", self.redis_write),
            ("redis_script_seconds", "One pipeline of distributed mode's scripts.", self.redis_script),
        ):
            yield _histogram(PREFIX + name, documentation, histogram if samples else None, created)


def _counter(name: str, documentation: str, value: int | None, created: float | None) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=[])
    if value is not None:
        family.add_metric([], value, created)
    return family


def _histogram(
    name: str, documentation: str, histogram: HistogramCounts | None, created: float | None
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    if histogram is None:
        return family
    counts, total = histogram.snapshot()
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for label, count in zip(histogram.labels, counts):
        cumulative += count
        buckets.append((label, cumulative))
    family.add_metric([], buckets, total)
    if created is not None:
        family.samples.append(Sample(name + "_created", {}, created))
    return family
