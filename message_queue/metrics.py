"""Prometheus metrics of a queue: one definition for the asyncio API and ``run_system.py serve``.

:class:`QueueMetrics` registers every metric in the ``prometheus_client`` registry it is given (the
application's own, or serve's), so a process exposes them with its other metrics. Names start with
``message_queue_`` and follow Prometheus conventions (counters end in ``_total``, durations are seconds).
No metric has a channel id as a label: channel ids are unbounded (one per chat), and a label per channel
would grow the registry without limit. Per-channel detail is what ``run_system.py admin channels`` shows.

What feeds them:
    * counters and histograms of deliveries: :meth:`QueueMetrics.delivered` once per delivered batch (a few
      increments per batch, nothing per message);
    * enqueued messages: :meth:`QueueMetrics.accepted` with the number handed over (per driver turn);
    * the gauges: :meth:`QueueMetrics.observe_statistics` with a full snapshot of the live channels
      (``GetStatistics``), taken when metrics are scraped (serve) or periodically (the asyncio API).

Without a registry nothing is created and the queue does no metrics work at all.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from protocol.values import ChannelStatistics, FlushReason, QueueItem

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


class QueueMetrics:
    """The queue's metrics, registered in ``registry``.

    Raises:
        ValueError: (from ``prometheus_client``) if ``registry`` already holds metrics of these names, e.g.
            a second queue given the same registry: give each queue a registry of its own.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.enqueued = Counter(PREFIX + "messages_enqueued", "Messages accepted by enqueue.", registry=registry)
        self.delivered_messages = Counter(
            PREFIX + "messages_delivered", "Messages handed to a processor, in batches.", registry=registry)
        batches = Counter(PREFIX + "batches_delivered", "Items handed to a processor, by flush reason.",
                          ["reason"], registry=registry)
        self._by_reason = {reason.value: batches.labels(reason.value) for reason in FlushReason}
        self.batches = batches
        self.cancellations = Counter(PREFIX + "cancellations", "In-flight items abandoned.", registry=registry)
        self.rejections = Counter(PREFIX + "rejections", "Messages or commands refused as invalid.",
                                  registry=registry)
        self.active_channels = Gauge(PREFIX + "active_channels", "Channels with a live actor.", registry=registry)
        self.items_waiting = Gauge(PREFIX + "items_waiting", "Finished items waiting for their processor.",
                                   registry=registry)
        self.items_in_flight = Gauge(PREFIX + "items_in_flight", "Items with their processor.", registry=registry)
        self.open_batches = Gauge(PREFIX + "open_batches", "Batches still collecting messages.", registry=registry)
        self.batch_size = Histogram(PREFIX + "batch_size", "Messages per delivered item.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.lateness = Histogram(PREFIX + "flush_lateness_seconds",
                                  "How long after its deadline a batch was closed.",
                                  buckets=LATENESS_BUCKETS, registry=registry)
        self.processing = Histogram(PREFIX + "processing_seconds", "From delivery to the processor's answer.",
                                    buckets=PROCESSING_BUCKETS, registry=registry)
        self.redis_write = Histogram(PREFIX + "redis_write_seconds", "One persistence write to Redis.",
                                     buckets=REDIS_BUCKETS, registry=registry)
        self.redis_script = Histogram(PREFIX + "redis_script_seconds",
                                      "One pipeline of distributed mode's scripts.",
                                      buckets=REDIS_BUCKETS, registry=registry)

    # -- facts --------------------------------------------------------------------------------------------

    def accepted(self, count: int) -> None:
        """``count`` messages were accepted."""
        self.enqueued.inc(count)

    def rejected(self, count: int = 1) -> None:
        """``count`` messages or commands were refused."""
        self.rejections.inc(count)

    def delivered(self, item: QueueItem, reason: str, lateness: float) -> None:
        """``item`` was handed to its processor, closed for ``reason`` ``lateness`` seconds after its deadline."""
        size = item.size
        self.delivered_messages.inc(size)
        child = self._by_reason.get(reason)
        if child is None:  # a reason newer than this module
            child = self._by_reason[reason] = self.batches.labels(reason)
        child.inc()
        self.batch_size.observe(size)
        self.lateness.observe(lateness)

    def cancelled(self) -> None:
        self.cancellations.inc()

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
        """Set the gauges from a snapshot of every live channel (``GetStatistics()`` with no channel)."""
        channels = waiting = in_flight = open_batches = 0
        for s in snapshots:
            channels += 1
            waiting += s.queued
            in_flight += s.in_flight
            open_batches += s.open_batch_size > 0
        self.active_channels.set(channels)
        self.items_waiting.set(waiting)
        self.items_in_flight.set(in_flight)
        self.open_batches.set(open_batches)

