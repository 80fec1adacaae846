"""``QueueMetrics`` on its own: exact values after known facts, the same exposition as prometheus_client's own
Counter/Gauge/Histogram objects fed the same facts, scrapes from another thread while facts are added, and
registries that refuse a second set of names."""

from __future__ import annotations

import sys
import threading
import time
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from message_queue.metrics import (
    BATCH_SIZE_BUCKETS,
    LATENESS_BUCKETS,
    METRICS,
    PROCESSING_BUCKETS,
    REDIS_BUCKETS,
    HistogramCounts,
    QueueMetrics,
)
from protocol.values import ChannelStatistics, FlushReason, MessageBatch, QueuedMessage, QueueItem

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry, created: bool = False) -> Samples:
    """Every sample of the registry's exposition text, by name and sorted labels (``_created`` left out
    unless asked for: it is a wall-clock time)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if created or not s.name.endswith("_created")
    }


def item(size: int) -> QueueItem:
    messages = [QueuedMessage(platform="t", channel_id="c", user_id="u", user_name="U", text=str(i))
                for i in range(size)]
    return QueueItem("item", "c", messages[0] if size == 1 else MessageBatch(messages=messages))


def stats(channel: str, queued: int, open_batch: int, in_flight: bool) -> ChannelStatistics:
    return ChannelStatistics(channel, queued, open_batch, in_flight, 0, 0, 0, True)


def test_values_after_known_facts_are_exact() -> None:
    registry = CollectorRegistry()
    metrics = QueueMetrics(registry)
    for size, reason, lateness in ((1, "window", 0.0), (3, "full", 0.001), (10, "full", 0.0025),
                                   (100, "window", 7.0), (101, "max_wait", 0.3)):
        metrics.delivered(item(size), reason, lateness)
    for seconds in (0.001, 0.2, 200.0):
        metrics.processed(seconds)
    metrics.redis_written(0.0005)
    metrics.redis_written(2.0)
    metrics.script_ran(0.004)
    metrics.accepted(7)
    metrics.accepted(3)
    metrics.rejected()
    metrics.rejected(2)
    metrics.cancelled()
    metrics.observe_statistics([stats("a", 2, 1, True), stats("b", 0, 0, False), stats("c", 5, 3, False)])

    got = samples(registry)
    assert got[("message_queue_messages_enqueued_total", ())] == 10
    assert got[("message_queue_messages_delivered_total", ())] == 215
    assert got[("message_queue_rejections_total", ())] == 3
    assert got[("message_queue_cancellations_total", ())] == 1
    by_reason = {labels[0][1]: v for (name, labels), v in got.items()
                 if name == "message_queue_batches_delivered_total"}
    assert by_reason == {**{r.value: 0 for r in FlushReason}, "window": 2, "full": 2, "max_wait": 1}
    sizes = {labels[0][1]: v for (name, labels), v in got.items() if name == "message_queue_batch_size_bucket"}
    assert sizes == {"1.0": 1, "2.0": 1, "3.0": 2, "5.0": 2, "10.0": 3, "20.0": 3, "50.0": 3, "100.0": 4,
                     "+Inf": 5}
    assert got[("message_queue_batch_size_count", ())] == 5
    assert got[("message_queue_batch_size_sum", ())] == 215
    late = {labels[0][1]: v for (name, labels), v in got.items()
            if name == "message_queue_flush_lateness_seconds_bucket"}
    assert late["0.001"] == 2  # 0.0 and 0.001: a value on a bound is in that bucket (le)
    assert late["0.0025"] == 3
    assert late["0.25"] == 3
    assert late["0.5"] == 4
    assert late["5.0"] == 4
    assert late["+Inf"] == 5
    assert got[("message_queue_flush_lateness_seconds_sum", ())] == pytest.approx(7.3035)
    assert got[("message_queue_processing_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("message_queue_processing_seconds_bucket", (("le", "120.0"),))] == 2
    assert got[("message_queue_processing_seconds_count", ())] == 3
    assert got[("message_queue_redis_write_seconds_bucket", (("le", "0.0005"),))] == 1
    assert got[("message_queue_redis_write_seconds_bucket", (("le", "1.0"),))] == 1
    assert got[("message_queue_redis_write_seconds_count", ())] == 2
    assert got[("message_queue_redis_script_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("message_queue_active_channels", ())] == 3
    assert got[("message_queue_items_waiting", ())] == 7
    assert got[("message_queue_items_in_flight", ())] == 1
    assert got[("message_queue_open_batches", ())] == 2


def test_every_documented_metric_has_its_type_and_counters_and_histograms_a_created_time() -> None:
    registry = CollectorRegistry()
    metrics = QueueMetrics(registry)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for name, kind, _ in METRICS:
        base = name.removesuffix("_total") if kind == "counter" else name
        assert families[base].type == kind, name
        if kind != "gauge":
            assert families[base + "_created"].samples[0].value == metrics.created


class Reference:
    """The metrics as prometheus_client's own objects: what ``QueueMetrics`` must expose, sample for sample."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "message_queue_"
        self.enqueued = Counter(p + "messages_enqueued", "Messages accepted by enqueue.", registry=registry)
        self.delivered = Counter(p + "messages_delivered", "Messages handed to a processor, in batches.",
                                 registry=registry)
        self.batches = Counter(p + "batches_delivered", "Items handed to a processor, by flush reason.",
                               ["reason"], registry=registry)
        for reason in FlushReason:
            self.batches.labels(reason.value)
        self.cancellations = Counter(p + "cancellations", "In-flight items abandoned.", registry=registry)
        self.rejections = Counter(p + "rejections", "Messages or commands refused as invalid.", registry=registry)
        self.gauges = [Gauge(p + name, doc, registry=registry) for name, doc in (
            ("active_channels", "Channels with a live actor."),
            ("items_waiting", "Finished items waiting for their processor."),
            ("items_in_flight", "Items with their processor."),
            ("open_batches", "Batches still collecting messages."))]
        self.batch_size = Histogram(p + "batch_size", "Messages per delivered item.", buckets=BATCH_SIZE_BUCKETS,
                                    registry=registry)
        self.lateness = Histogram(p + "flush_lateness_seconds", "How long after its deadline a batch was closed.",
                                  buckets=LATENESS_BUCKETS, registry=registry)
        self.processing = Histogram(p + "processing_seconds", "From delivery to the processor's answer.",
                                    buckets=PROCESSING_BUCKETS, registry=registry)
        self.redis_write = Histogram(p + "redis_write_seconds", "One persistence write to Redis.",
                                     buckets=REDIS_BUCKETS, registry=registry)
        self.redis_script = Histogram(p + "redis_script_seconds", "One pipeline of distributed mode's scripts.",
                                      buckets=REDIS_BUCKETS, registry=registry)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The exposition text's lines, with each ``_created`` time replaced by a placeholder."""
    lines = generate_latest(registry).decode().splitlines()
    return [line.rsplit(" ", 1)[0] + " T" if not line.startswith("#") and "_created" in line.split(" ")[0]
            else line for line in lines]


durations = st.one_of(
    st.sampled_from(sorted({*LATENESS_BUCKETS, *PROCESSING_BUCKETS, *REDIS_BUCKETS, 0.0})),  # on a bound
    st.floats(min_value=-1.0, max_value=500.0, allow_nan=False),
)
facts = st.lists(st.one_of(
    st.tuples(st.just("delivered"), st.integers(1, 120), st.sampled_from([r.value for r in FlushReason]), durations),
    st.tuples(st.just("processed"), durations),
    st.tuples(st.just("redis_written"), durations),
    st.tuples(st.just("script_ran"), durations),
    st.tuples(st.just("accepted"), st.integers(0, 1000)),
    st.tuples(st.just("rejected"), st.integers(1, 5)),
    st.tuples(st.just("cancelled")),
    st.tuples(st.just("statistics"), st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9), st.booleans()),
                                              max_size=5)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(facts)
def test_exposition_is_what_prometheus_client_objects_fed_the_same_facts_expose(
    script: list[tuple[object, ...]],
) -> None:
    registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    metrics, ref = QueueMetrics(registry), Reference(reference_registry)
    for fact in script:
        kind, args = fact[0], fact[1:]
        if kind == "delivered":
            size, reason, lateness = args
            assert isinstance(size, int) and isinstance(reason, str) and isinstance(lateness, float)
            metrics.delivered(item(size), reason, lateness)
            ref.delivered.inc(size)
            ref.batches.labels(reason).inc()
            ref.batch_size.observe(size)
            ref.lateness.observe(lateness)
        elif kind == "statistics":
            rows = args[0]
            assert isinstance(rows, list)
            snapshot = [stats(f"c{i}", q, o, f) for i, (q, o, f) in enumerate(rows)]
            metrics.observe_statistics(snapshot)
            for gauge, value in zip(ref.gauges, (len(rows), sum(q for q, _, _ in rows), sum(f for _, _, f in rows),
                                                 sum(o > 0 for _, o, _ in rows))):
                gauge.set(value)
        elif kind == "cancelled":
            metrics.cancelled()
            ref.cancellations.inc()
        else:
            (value,) = args
            assert isinstance(value, (int, float))
            getattr(metrics, str(kind))(value)
            histograms = {"processed": ref.processing, "redis_written": ref.redis_write,
                          "script_ran": ref.redis_script}
            if kind in histograms:
                histograms[str(kind)].observe(value)
            else:
                {"accepted": ref.enqueued, "rejected": ref.rejections}[str(kind)].inc(value)
    assert exposition(registry) == exposition(reference_registry)


def test_a_registry_refuses_a_second_set_and_keeps_the_first() -> None:
    registry = CollectorRegistry()
    first = QueueMetrics(registry)
    first.accepted(4)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        QueueMetrics(registry)
    assert samples(registry)[("message_queue_messages_enqueued_total", ())] == 4


def test_a_registry_that_holds_one_of_the_names_refuses_the_whole_set() -> None:
    registry = CollectorRegistry()
    Counter("message_queue_rejections", "the application's own", registry=registry)
    with pytest.raises(ValueError, match="message_queue_rejections"):
        QueueMetrics(registry)
    assert {name for name, _ in samples(registry)} == {"message_queue_rejections_total"}


def test_two_sets_in_two_registries_count_apart_and_beside_the_applications_own_metrics() -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    own = Counter("app_requests", "the application's own", registry=one)
    a, b = QueueMetrics(one), QueueMetrics(two)
    a.accepted(3)
    b.accepted(5)
    a.delivered(item(2), "window", 0.01)
    own.inc()
    got_one, got_two = samples(one), samples(two)
    assert got_one[("message_queue_messages_enqueued_total", ())] == 3
    assert got_one[("message_queue_messages_delivered_total", ())] == 2
    assert got_one[("app_requests_total", ())] == 1
    assert got_two[("message_queue_messages_enqueued_total", ())] == 5
    assert got_two[("message_queue_messages_delivered_total", ())] == 0
    assert ("app_requests_total", ()) not in got_two


def test_a_reason_newer_than_the_module_gets_its_own_label() -> None:
    registry = CollectorRegistry()
    metrics = QueueMetrics(registry)
    metrics.delivered(item(1), "someday", 0.0)
    metrics.delivered(item(1), "someday", 0.0)
    got = samples(registry, created=True)
    assert got[("message_queue_batches_delivered_total", (("reason", "someday"),))] == 2
    assert got[("message_queue_batches_delivered_created", (("reason", "someday"),))] >= metrics.created


def test_histogram_bounds_must_be_sorted() -> None:
    with pytest.raises(ValueError, match=r"histogram bounds must be sorted, got \(2, 1\)"):
        HistogramCounts((2, 1))


def test_an_observation_that_cannot_be_counted_changes_nothing_and_leaves_the_histogram_readable() -> None:
    histogram = HistogramCounts((1.0, 2.0))
    histogram.observe(1.5)
    with pytest.raises(TypeError):
        histogram.observe("x")  # type: ignore[arg-type]
    assert histogram.snapshot() == ([0, 1, 0], 1.5)


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every microsecond, so that scrapes fall between the steps of an update."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_scrapes_from_another_thread_see_whole_observations_and_lose_none() -> None:
    registry = CollectorRegistry()
    metrics = QueueMetrics(registry)
    rounds = 30_000
    start = threading.Barrier(3)

    def outputs() -> None:  # serve's thread that receives the actors' outputs
        start.wait()
        for _ in range(rounds):
            metrics.delivered(item(1), "full", 1.0)
            metrics.redis_written(0.25)

    def input_lines() -> None:  # serve's main thread, reading input
        start.wait()
        for _ in range(rounds):
            metrics.accepted(2)

    writers = [threading.Thread(target=outputs), threading.Thread(target=input_lines)]
    for thread in writers:
        thread.start()
    start.wait()
    seen: list[Samples] = []
    while any(thread.is_alive() for thread in writers):
        seen.append(samples(registry))
    for thread in writers:
        thread.join()
    seen.append(samples(registry))

    assert len(seen) > 2
    for got in seen:
        # a whole histogram at once: every count matches its sum (values chosen to be exact in binary)
        count = got[("message_queue_redis_write_seconds_count", ())]
        assert got[("message_queue_redis_write_seconds_sum", ())] == count * 0.25
        assert got[("message_queue_redis_write_seconds_bucket", (("le", "+Inf"),))] == count
        assert got[("message_queue_flush_lateness_seconds_sum", ())] == got[
            ("message_queue_flush_lateness_seconds_count", ())]
    for before, after in zip(seen, seen[1:]):  # counters never go back
        for key in ("message_queue_messages_enqueued_total", "message_queue_redis_write_seconds_count"):
            assert after[(key, ())] >= before[(key, ())]
    final = seen[-1]
    assert final[("message_queue_redis_write_seconds_count", ())] == rounds
    assert final[("message_queue_redis_write_seconds_bucket", (("le", "0.25"),))] == rounds
    assert final[("message_queue_redis_write_seconds_bucket", (("le", "0.1"),))] == 0
    assert final[("message_queue_messages_enqueued_total", ())] == 2 * rounds
    assert final[("message_queue_messages_delivered_total", ())] == rounds
    assert final[("message_queue_batches_delivered_total", (("reason", "full"),))] == rounds
    assert final[("message_queue_flush_lateness_seconds_bucket", (("le", "1.0"),))] == rounds


def test_a_scrape_waits_out_an_observation_half_written_on_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    histogram = HistogramCounts((1.0, 2.0))
    histogram.observe(0.5)
    # The writer thread was interrupted inside observe(1.5): its bucket counted, its sum not yet stored.
    histogram._version += 1
    histogram._counts[1] += 1
    waiting = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is reader:
            waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    got: list[tuple[list[int], float]] = []
    reader = threading.Thread(target=lambda: got.append(histogram.snapshot()))
    reader.start()
    assert waiting.wait(10.0), "the scrape returned a half-written observation"
    assert not got
    histogram._sum += 1.5  # the writer resumes
    histogram._version += 1
    reader.join(10.0)
    assert got == [([1, 1, 0], 2.0)]


def test_a_scrape_gives_up_on_an_observation_that_never_finishes() -> None:
    histogram = HistogramCounts((1.0,))
    histogram.observe(0.5)
    histogram._version += 1  # its writer was interrupted inside observe() and never came back
    histogram._counts[1] += 1
    assert histogram.snapshot() == ([1, 1], 0.5)


def test_created_samples_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client.metrics

    monkeypatch.setattr(prometheus_client.metrics, "_use_created", False)  # what disable_created_metrics() sets
    registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    QueueMetrics(registry).delivered(item(2), "full", 0.01)
    reference = Reference(reference_registry)
    reference.delivered.inc(2)
    reference.batches.labels("full").inc()
    reference.batch_size.observe(2)
    reference.lateness.observe(0.01)
    assert not [name for name, _ in samples(registry, created=True) if name.endswith("_created")]
    assert exposition(registry) == exposition(reference_registry)
