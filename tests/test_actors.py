"""Integration tests: the Supervisor, ChannelActors and Timer on real actor systems, on both supported bases.

Processors are :class:`actor_support.RecordingProcessor` actors. Nothing here sleeps: a test waits for an
outcome through ``ask`` (the processor answers ``WaitFor`` once it has seen enough) or ``listen`` timeouts.
On the TCP base every system is checked, after its shutdown, to have left no process and no open admin port.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest
from actor_support import (
    DONE,
    FAIL,
    HOLD,
    NotACommand,
)
from harness import (
    BASES,
    FLUSH,
    LONG,
    Harness,
    Launch,
    deliveries,
    message,
    port_accepts,
    start_harness,
    texts,
)

from actors.system import (
    SIMPLE_BASE,
    TCP_BASE,
    alive,
    descendants,
    free_port,
    start_system,
)
from protocol.errors import InvalidSettings
from protocol.messages import (
    BatchReady,
    CancelCurrent,
    Cancelled,
    CancelProcessing,
    ChannelConfigured,
    ChannelStopped,
    Clear,
    Cleared,
    ConfigureChannel,
    Enqueue,
    Enqueued,
    EnqueueFront,
    EnqueueMany,
    GetStatistics,
    ProcessingDone,
    Rejected,
    StartProcessing,
    Statistics,
    StopChannel,
)
from protocol.values import BatchSettings, ChannelStatistics, MessageBatch, QueuedMessage, payload_messages

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def launch(base: str) -> Iterator[Launch]:
    """Start a system on the test's base with the given default batch settings; shut it down afterwards."""
    started: list[Harness] = []

    def launch_(
        window: float = LONG,
        max_batch_size: int = 10,
        max_wait: float | None = None,
        batching: bool = True,
        idle_timeout: float = 60.0,
    ) -> Harness:
        port = free_port() if base == TCP_BASE else None
        settings = BatchSettings(window, max_batch_size, max_wait, batching)
        harness = start_harness(base, settings, idle_timeout=idle_timeout, admin_port=port)
        started.append(harness)
        return harness

    yield launch_
    for harness in started:
        harness.shutdown_and_verify()


@pytest.fixture(scope="module", params=BASES)
def shared(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """One system per base for the tests that only get rejections: they leave no state behind."""
    port = free_port() if request.param == TCP_BASE else None
    harness = start_harness(request.param, admin_port=port)
    yield harness
    harness.shutdown_and_verify()


# -- flushing ---------------------------------------------------------------------------------------------


def test_a_batch_closes_when_its_quiet_window_elapses(launch: Launch) -> None:
    mq = launch(window=0.05)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "a"), message("c1", "b"), message("c1", "c"))
    (ready,) = deliveries(mq.wait_for(proc, count=1))
    assert (ready.channel_id, ready.reason, texts(ready)) == ("c1", "window", ["a", "b", "c"])
    assert isinstance(ready.item.payload, MessageBatch)
    assert ready.delivery_id == 1 and ready.lateness >= 0.0
    mq.stats_when("c1", lambda s: s.processed == 1, "processed == 1")


def test_a_batch_closes_at_once_when_it_reaches_max_batch_size(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=3)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(*[message("c1", str(i)) for i in range(7)])
    events = deliveries(mq.wait_for(proc, count=2))  # long before the 30 s window
    assert [(e.reason, texts(e)) for e in events] == [("full", ["0", "1", "2"]), ("full", ["3", "4", "5"])]
    stats = mq.stats_when("c1", lambda s: s.processed == 2, "processed == 2")
    assert (stats.open_batch_size, stats.queued, stats.in_flight) == (1, 0, False)


def test_a_batch_closes_when_its_first_message_reaches_max_wait(launch: Launch) -> None:
    mq = launch(window=LONG, max_wait=0.1)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "a"), message("c1", "b"))
    (ready,) = deliveries(mq.wait_for(proc, count=1))
    assert (ready.reason, texts(ready)) == ("max_wait", ["a", "b"])


# -- order, nothing lost or duplicated ----------------------------------------------------------------------


def check_order(events: tuple[Any, ...], channels: list[str], per_channel: int, cap: int) -> None:
    for channel in channels:
        items = deliveries(events, channel)
        got = [text for item in items for text in texts(item)]
        expected = [f"{channel}/{i}" for i in range(per_channel)]
        assert got == expected, f"{channel}: out of order, lost or doubled"
        assert [item.delivery_id for item in items] == list(range(1, len(items) + 1))
        for item in items:
            assert 1 <= item.item.size <= cap
            assert {m.channel_id for m in payload_messages(item.item.payload)} == {channel}
    assert len({e.item.item_id for e in deliveries(events)}) == len(deliveries(events))


@pytest.mark.parametrize("chunk", [1000, 100], ids=["one-enqueue-many", "chunks-of-100"])
def test_many_channels_keep_their_order_through_enqueue_many(launch: Launch, chunk: int) -> None:
    mq = launch(window=0.05, max_batch_size=7)
    proc = mq.processor()
    mq.attach(proc)
    channels = [f"ch-{n:02d}" for n in range(20)]
    interleaved = [message(c, f"{c}/{i}") for i in range(50) for c in channels]
    for start in range(0, len(interleaved), chunk):
        mq.enqueue(*interleaved[start : start + chunk])
    events = mq.wait_for(proc, messages=len(interleaved), timeout=30)
    check_order(events, channels, 50, 7)


def test_many_channels_keep_their_order_through_single_enqueues(launch: Launch) -> None:
    mq = launch(window=0.05, max_batch_size=7)
    proc = mq.processor()
    mq.attach(proc)
    channels = [f"ch-{n:02d}" for n in range(20)]
    per_channel = 50 if mq.simple else 25  # one external tell costs 2-10 ms on TCP
    for i in range(per_channel):
        for c in channels:
            mq.tell(Enqueue(message(c, f"{c}/{i}")))
    events = mq.wait_for(proc, messages=20 * per_channel, timeout=60)
    check_order(events, channels, per_channel, 7)


def test_messages_to_a_fresh_system_are_not_lost_while_its_timer_starts(launch: Launch) -> None:
    # On TCP the first ChannelInit carries the address of a Timer still starting and waits for it, while the
    # messages sent after it to the new channel can already go through.
    mq = launch(window=0.05)
    proc = mq.processor()
    mq.attach(proc)
    for n in range(5):
        mq.tell(Enqueue(message(f"c{n}", "first")))
    events = deliveries(mq.wait_for(proc, messages=5))
    assert sorted((e.channel_id, texts(e)) for e in events) == [(f"c{n}", ["first"]) for n in range(5)]


# -- one item in flight, front, cancel, clear, stop ---------------------------------------------------------


def hold_three_items(mq: Harness, channel: str = "c1") -> ActorAddress:
    """With max_batch_size 2: item 1 (a, a2) held by the processor, items 2 (b, b2) and 3 (c, c2) waiting."""
    proc = mq.processor(HOLD)
    mq.attach(proc)
    mq.enqueue(*[message(channel, t) for t in ("a", "a2", "b", "b2", "c", "c2")])
    mq.wait_for(proc, count=1)
    stats = mq.stats_when(channel, lambda s: s.queued == 2, "two items waiting")
    assert (stats.in_flight, stats.open_batch_size) == (True, 0)
    return proc


def test_only_one_item_is_in_flight_per_channel_until_the_processor_answers(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    proc = hold_three_items(mq)
    assert [texts(e) for e in deliveries(mq.wait_for(proc))] == [["a", "a2"]]
    assert mq.release(proc) == 1
    assert [texts(e) for e in deliveries(mq.wait_for(proc, count=2))] == [["a", "a2"], ["b", "b2"]]
    stats = mq.stats("c1")
    assert (stats.processed, stats.queued, stats.in_flight) == (1, 1, True)
    assert mq.release(proc) == 1
    events = deliveries(mq.wait_for(proc, count=3))
    assert [(e.delivery_id, texts(e)) for e in events] == [
        (1, ["a", "a2"]),
        (2, ["b", "b2"]),
        (3, ["c", "c2"]),
    ]


def test_enqueue_front_goes_to_the_head_behind_the_item_in_flight(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    proc = hold_three_items(mq)
    assert mq.ask(EnqueueFront(message("c1", "urgent"), ack=True), Enqueued) == Enqueued(1)
    batch = MessageBatch()
    batch.add(message("c1", "x"))
    batch.add(message("c1", "y"))
    assert mq.ask(EnqueueFront(batch, ack=True), Enqueued) == Enqueued(1)
    assert mq.stats("c1").queued == 4
    for n in range(2, 6):
        mq.release(proc)
        mq.wait_for(proc, count=n)
    events = deliveries(mq.wait_for(proc, count=5))
    assert [(e.reason, texts(e)) for e in events] == [
        ("full", ["a", "a2"]),
        ("front", ["x", "y"]),
        ("front", ["urgent"]),
        ("full", ["b", "b2"]),
        ("full", ["c", "c2"]),
    ]
    assert isinstance(events[2].item.payload, QueuedMessage)


def test_cancel_current_cancels_the_delivery_and_the_next_item_follows(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    proc = hold_three_items(mq)
    assert mq.ask(CancelCurrent("c1"), Cancelled) == Cancelled("c1", True)
    events = mq.wait_for(proc, count=3)
    assert events[1] == CancelProcessing("c1", 1)
    assert isinstance(events[2], BatchReady) and (events[2].delivery_id, texts(events[2])) == (2, ["b", "b2"])
    stats = mq.stats("c1")
    assert (stats.cancelled, stats.processed, stats.queued, stats.in_flight) == (1, 0, 1, True)


def test_a_late_reply_for_a_cancelled_delivery_is_ignored(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    proc = hold_three_items(mq)
    assert mq.ask(CancelCurrent("c1"), Cancelled).cancelled
    mq.wait_for(proc, count=3)  # CancelProcessing(1), then delivery 2
    assert mq.release(proc, "c1", 1) == 1  # the processor answers the cancelled delivery after all
    stats = mq.stats("c1")
    assert (stats.processed, stats.in_flight, stats.queued) == (0, True, 1), "the reply for 1 finished 2"
    assert len(mq.wait_for(proc)) == 3, "item 3 was delivered while delivery 2 was in flight"
    assert mq.release(proc, "c1", 2) == 1
    events = mq.wait_for(proc, count=4)
    assert (events[3].delivery_id, texts(events[3])) == (3, ["c", "c2"])
    assert mq.stats_when("c1", lambda s: s.processed == 1, "processed == 1").cancelled == 1


def test_cancel_current_with_nothing_in_flight_answers_false(launch: Launch) -> None:
    mq = launch(window=LONG)
    assert mq.ask(CancelCurrent("never-seen"), Cancelled) == Cancelled("never-seen", False)
    mq.enqueue(message("open", "a"))  # a live channel with an open batch and no processor
    assert mq.ask(CancelCurrent("open"), Cancelled) == Cancelled("open", False)
    assert mq.stats("open").cancelled == 0


def test_clear_discards_only_the_waiting_items_and_returns_their_count(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    proc = hold_three_items(mq)
    mq.enqueue(message("c1", "d"))  # opens a new batch
    assert mq.ask(Clear("c1"), Cleared) == Cleared("c1", 2)
    stats = mq.stats("c1")
    assert (stats.queued, stats.open_batch_size, stats.in_flight) == (0, 1, True)
    mq.release(proc)
    mq.enqueue(message("c1", "d2"))  # fills the open batch: it is the next item
    assert [texts(e) for e in deliveries(mq.wait_for(proc, count=2))] == [["a", "a2"], ["d", "d2"]]
    assert mq.ask(Clear("c1"), Cleared) == Cleared("c1", 0)
    assert mq.ask(Clear("never-seen"), Cleared) == Cleared("never-seen", 0)


def test_stop_channel_cancels_the_item_in_flight_and_keeps_the_rest_for_the_next_processor(
    launch: Launch,
) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    first = hold_three_items(mq)
    mq.enqueue(message("c1", "d"))
    assert mq.ask(StopChannel("c1"), ChannelStopped) == ChannelStopped("c1", True)
    assert mq.wait_for(first, count=2)[1] == CancelProcessing("c1", 1)
    stats = mq.stats("c1")
    assert (stats.has_processor, stats.in_flight, stats.queued, stats.open_batch_size) == (False, False, 2, 1)
    assert stats.cancelled == 1
    # a new default processor does not restart a stopped channel; a StartProcessing naming it does
    other = mq.processor()
    mq.attach(other)
    assert mq.stats("c1").has_processor is False
    mq.attach(other, "c1")
    mq.enqueue(message("c1", "d2"))
    events = deliveries(mq.wait_for(other, count=3))
    assert [(e.delivery_id, texts(e)) for e in events] == [
        (2, ["b", "b2"]),
        (3, ["c", "c2"]),
        (4, ["d", "d2"]),
    ]
    assert len(mq.wait_for(first)) == 2, "the stopped processor got more items"
    mq.stats_when("c1", lambda s: s.processed == 3, "processed == 3")
    assert mq.ask(StopChannel("c1"), ChannelStopped) == ChannelStopped("c1", False)


# -- configuration, statistics, processors ------------------------------------------------------------------


def test_a_channel_without_batching_delivers_each_message_as_its_own_item(launch: Launch) -> None:
    mq = launch(window=LONG)
    proc = mq.processor()
    mq.attach(proc)
    configured = mq.ask(ConfigureChannel("solo", BatchSettings(batching=False)), ChannelConfigured)
    assert configured == ChannelConfigured("solo")
    mq.enqueue(message("solo", "1"), message("solo", "2"), message("solo", "3"), message("batched", "x"))
    events = deliveries(mq.wait_for(proc, count=3))
    assert [(e.reason, texts(e)) for e in events] == [("unbatched", [n]) for n in ("1", "2", "3")]
    assert all(isinstance(e.item.payload, QueuedMessage) for e in events)
    assert mq.stats("batched").open_batch_size == 1


def test_a_window_override_applies_to_one_channel_only(launch: Launch) -> None:
    mq = launch(window=LONG)
    proc = mq.processor()
    mq.attach(proc)
    mq.ask(ConfigureChannel("quick", BatchSettings(window=0.05)), ChannelConfigured)
    mq.enqueue(message("slow", "s"), message("quick", "q1"), message("quick", "q2"))
    (ready,) = deliveries(mq.wait_for(proc, count=1))
    assert (ready.channel_id, ready.reason, texts(ready)) == ("quick", "window", ["q1", "q2"])
    assert mq.stats("slow").open_batch_size == 1


def test_statistics_describe_one_channel_or_every_live_channel(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    assert mq.ask(GetStatistics(), Statistics) == Statistics(())
    assert mq.stats("nobody") == ChannelStatistics("nobody", 0, 0, False, 0, 0, 0, False)
    proc = hold_three_items(mq, "b-chan")
    mq.enqueue(message("a-chan", "open"))
    assert mq.ask(GetStatistics(), Statistics).channels == (
        ChannelStatistics("a-chan", 0, 1, False, 0, 0, 0, True),
        ChannelStatistics("b-chan", 2, 0, True, 0, 0, 0, True, attempts=1),
    )
    mq.release(proc)
    mq.stats_when("b-chan", lambda s: s.processed == 1, "processed == 1")
    assert mq.stats("nobody").has_processor is True  # a default processor is registered now


def test_a_channel_processor_takes_precedence_over_the_default_processor(launch: Launch) -> None:
    mq = launch(window=0.05)
    default, vip = mq.processor(), mq.processor()
    mq.attach(default)
    mq.attach(vip, "vip")  # before the channel exists
    mq.enqueue(message("vip", "v1"), message("crowd", "c1"))
    assert [texts(e) for e in deliveries(mq.wait_for(vip, count=1))] == [["v1"]]
    assert [texts(e) for e in deliveries(mq.wait_for(default, count=1))] == [["c1"]]
    # a new default processor takes over every live channel without one of its own
    newer = mq.processor()
    mq.attach(newer)
    mq.enqueue(message("vip", "v2"), message("crowd", "c2"))
    assert [texts(e) for e in deliveries(mq.wait_for(vip, count=2))] == [["v1"], ["v2"]]
    assert [texts(e) for e in deliveries(mq.wait_for(newer, count=1))] == [["c2"]]
    assert len(mq.wait_for(default)) == 1


def test_the_external_address_can_be_the_processor(launch: Launch) -> None:
    mq = launch(window=0.05)
    mq.attach(None)  # processor=None: deliver to the sender of StartProcessing, as `run_system.py serve` does
    mq.enqueue(message("c1", "a"), message("c1", "b"))
    first = mq.listen_for(BatchReady, timeout=FLUSH)
    assert (first.channel_id, first.delivery_id, texts(first)) == ("c1", 1, ["a", "b"])
    mq.enqueue(message("c1", "c"))
    mq.stats_when("c1", lambda s: s.queued == 1, "second item waiting")
    mq.tell(ProcessingDone("c1", first.delivery_id))  # the external processor answers through the Supervisor
    second = mq.listen_for(BatchReady, timeout=FLUSH)
    assert (second.delivery_id, texts(second)) == (2, ["c"])
    mq.tell(ProcessingDone("c1", second.delivery_id))
    assert mq.stats("c1").processed == 2


def test_a_processor_reply_sent_to_the_supervisor_reaches_the_channel(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=1)
    proc = mq.processor(DONE, reply_to=mq.supervisor)
    mq.attach(proc)
    mq.enqueue(message("c1", "1"), message("c1", "2"), message("c1", "3"))
    assert [texts(e) for e in deliveries(mq.wait_for(proc, count=3))] == [["1"], ["2"], ["3"]]
    mq.stats_when("c1", lambda s: s.processed == 3, "processed == 3")


def test_a_failed_item_is_logged_and_the_channel_moves_on(
    launch: Launch, caplog: pytest.LogCaptureFixture
) -> None:
    mq = launch(window=LONG, max_batch_size=1)
    proc = mq.processor(FAIL)
    mq.attach(proc)
    with caplog.at_level(logging.WARNING, logger="actors.channel"):
        mq.enqueue(message("c1", "1"), message("c1", "2"))
        assert [texts(e) for e in deliveries(mq.wait_for(proc, count=2))] == [["1"], ["2"]]
        stats = mq.stats_when("c1", lambda s: s.processed == 2, "processed == 2")
    assert (stats.failed, stats.in_flight) == (2, False)
    if mq.simple:  # on TCP the channel logs in its own process
        failures = [r.getMessage() for r in caplog.records if "processor failed item" in r.getMessage()]
        assert len(failures) == 2 and all(text.endswith("told to fail") for text in failures)


# -- passivation ------------------------------------------------------------------------------------------


def test_an_idle_channel_passivates_and_comes_back_with_nothing_lost(launch: Launch) -> None:
    mq = launch(window=0.05, idle_timeout=0.2)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "a"), message("c1", "b"))
    mq.wait_for(proc, count=1)
    assert "c1" in mq.live_channels()
    mq.eventually(lambda: "c1" not in mq.live_channels(), "c1 passivated")
    assert mq.stats("c1") == ChannelStatistics("c1", 0, 0, False, 1, 0, 0, True, attempts=1)
    mq.enqueue(message("c1", "c"), message("c1", "d"))
    events = deliveries(mq.wait_for(proc, count=2))
    assert [texts(e) for e in events] == [["a", "b"], ["c", "d"]]
    assert "c1" in mq.live_channels()
    mq.stats_when("c1", lambda s: s.processed == 2, "processed == 2")


def test_a_channel_that_remembers_message_ids_passivates_and_its_next_actor_drops_their_duplicates(
    launch: Launch,
) -> None:
    mq = launch(window=0.05, idle_timeout=0.2)  # ids are remembered for dedupe_ttl, 600 s
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "a", message_id="m1"), message("c1", "b", message_id="m2"))
    mq.wait_for(proc, count=1)
    mq.eventually(lambda: "c1" not in mq.live_channels(), "c1 passivated")
    # the ids went to the Supervisor with the passivation, and back to the new actor before these messages
    mq.enqueue(message("c1", "a (retry)", message_id="m1"), message("c1", "c", message_id="m3"))
    assert mq.ask(Enqueue(message("c1", "b (retry)", message_id="m2"), ack=True), Enqueued) == Enqueued(1)
    events = deliveries(mq.wait_for(proc, count=2))
    assert [texts(e) for e in events] == [["a", "b"], ["c"]]
    mq.stats_when("c1", lambda s: (s.duplicates, s.processed) == (2, 2), "two duplicates dropped and counted")


def test_an_id_that_expired_while_its_channel_was_passivated_is_accepted_again(launch: Launch) -> None:
    mq = launch(window=0.05, idle_timeout=0.1)
    assert mq.ask(ConfigureChannel("c1", BatchSettings(window=0.05, dedupe_ttl=0.5)), ChannelConfigured)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "a", message_id="m1"))
    mq.wait_for(proc, count=1)
    mq.eventually(lambda: "c1" not in mq.live_channels(), "c1 passivated")
    mq.let_pass(0.5)  # the id's dedupe_ttl
    mq.enqueue(message("c1", "a again", message_id="m1"))
    events = deliveries(mq.wait_for(proc, count=2))
    assert [texts(e) for e in events] == [["a"], ["a again"]]
    assert mq.stats("c1").duplicates == 0


def test_a_channel_with_work_does_not_passivate(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2, idle_timeout=0.1)
    proc = hold_three_items(mq)
    mq.enqueue(message("c1", "open"))
    assert mq.asys.listen(0.5) is None  # time for the idle timer to fire, several times over
    stats = mq.stats("c1")
    assert (stats.in_flight, stats.queued, stats.open_batch_size) == (True, 2, 1)
    assert "c1" in mq.live_channels() and len(mq.wait_for(proc)) == 1


def test_a_late_reply_through_the_supervisor_cannot_finish_a_delivery_of_the_channels_next_actor(
    launch: Launch,
) -> None:
    mq = launch(window=LONG, max_batch_size=1, idle_timeout=0.2)
    proc = mq.processor(HOLD, reply_to=mq.supervisor)
    mq.attach(proc)
    mq.enqueue(message("c1", "1"))
    mq.wait_for(proc, count=1)
    assert mq.ask(CancelCurrent("c1"), Cancelled).cancelled
    mq.eventually(lambda: "c1" not in mq.live_channels(), "c1 passivated")
    mq.enqueue(message("c1", "2"), message("c1", "3"))
    first, second = deliveries(mq.wait_for(proc, count=3))
    assert second.delivery_id != first.delivery_id, "delivery ids repeat after passivation"
    assert mq.release(proc, "c1", first.delivery_id) == 1  # a late answer for the cancelled delivery
    stats = mq.stats("c1")
    assert (stats.in_flight, stats.queued, stats.processed) == (True, 1, 0)
    assert len(mq.wait_for(proc)) == 3, "item 3 was delivered while item 2 was in flight"


# -- bad input --------------------------------------------------------------------------------------------

DEEP: dict[str, Any] = {"d2": {"d3": {"d4": {"d5": {}}}}}  # extra itself is depth 1

BAD_MESSAGES = [
    pytest.param(message("", "t"), "", "channel_id must not be empty", id="empty-channel"),
    pytest.param(
        message("x" * 257, "t"),
        "x" * 256,
        "channel_id must be at most 256 bytes of UTF-8, got 257 bytes",
        id="long-channel",
    ),
    pytest.param(
        message("c9", "t" * (64 * 1024 + 1)),
        "c9",
        "text must be at most 65536 bytes of UTF-8, got 65537 bytes",
        id="big-text",
    ),
    pytest.param(
        message("c9", "t", extra=DEEP), "c9", "extra nesting depth must be at most 4, got 5", id="deep-extra"
    ),
    pytest.param("just a string", "", "message must be a QueuedMessage, got str", id="not-a-message"),
]


@pytest.mark.parametrize(("bad", "channel", "reason"), BAD_MESSAGES)
def test_an_invalid_message_is_rejected_naming_the_rule_and_nothing_else_is_dropped(
    launch: Launch, bad: Any, channel: str, reason: str
) -> None:
    mq = launch(window=0.05)
    proc = mq.processor()
    mq.attach(proc)
    rejected = mq.ask(Enqueue(bad, ack=True), Rejected)
    assert (rejected.command, rejected.channel_id, rejected.error) == ("Enqueue", channel, "InvalidInput")
    assert rejected.reason.startswith(reason)
    mixed = (message("c1", "before"), bad, message("c2", "other"), message("c1", "after"))
    rejected = mq.ask(EnqueueMany(mixed, ack=True), Rejected)
    assert (rejected.command, rejected.channel_id, rejected.error) == ("EnqueueMany", channel, "InvalidInput")
    assert rejected.reason.startswith(reason)
    assert mq.listen_for(Enqueued) == Enqueued(3)
    events = deliveries(mq.wait_for(proc, messages=3))
    got = sorted((e.channel_id, texts(e)) for e in events)
    assert got == [("c1", ["before", "after"]), ("c2", ["other"])]


@pytest.mark.parametrize(("bad", "channel", "reason"), BAD_MESSAGES)
def test_an_invalid_message_without_ack_is_logged_and_nothing_else_is_dropped(
    launch: Launch, caplog: pytest.LogCaptureFixture, bad: Any, channel: str, reason: str
) -> None:
    mq = launch(window=0.05)
    proc = mq.processor()
    mq.attach(proc)
    with caplog.at_level(logging.WARNING, logger="actors.supervisor"):
        mq.tell(Enqueue(bad))
        mq.tell(EnqueueMany((message("c1", "before"), bad, message("c1", "after"))))
        events = deliveries(mq.wait_for(proc, messages=2))  # a Rejected sent back would answer this ask
    assert [texts(e) for e in events] == [["before", "after"]]
    if mq.simple:  # on TCP the Supervisor logs in its own process
        warnings = [r.getMessage() for r in caplog.records if r.name == "actors.supervisor"]
        assert len(warnings) == 2
        assert warnings[0].startswith(f"rejected Enqueue for channel {channel!r}: {reason}")
        assert warnings[1].startswith(f"rejected EnqueueMany for channel {channel!r}: {reason}")


def test_an_invalid_front_payload_is_rejected(shared: Harness) -> None:
    mq = shared
    rejected = mq.ask(EnqueueFront(MessageBatch(), ack=True), Rejected)
    assert (rejected.command, rejected.error) == ("EnqueueFront", "InvalidInput")
    assert rejected.reason == "payload batch must not be empty"
    mixed = MessageBatch([message("c1", "a"), message("c2", "b")])
    assert mq.ask(EnqueueFront(mixed, ack=True), Rejected).reason == (
        "a batch holds one channel: got 'c2' after 'c1'"
    )
    assert mq.live_channels() == []


CHANNEL_COMMANDS: list[Callable[[Any], object]] = [
    CancelCurrent,
    Clear,
    StopChannel,
    GetStatistics,
    lambda channel: ConfigureChannel(channel, BatchSettings()),
    lambda channel: StartProcessing(channel),
]


@pytest.mark.parametrize(
    "command",
    CHANNEL_COMMANDS,
    ids=["CancelCurrent", "Clear", "StopChannel", "GetStatistics", "ConfigureChannel", "StartProcessing"],
)
@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        ("x" * 257, "channel_id must be at most 256 bytes of UTF-8, got 257 bytes"),
        (7, "channel_id must be a str, got int"),
    ],
    ids=["too-long", "not-a-str"],
)
def test_an_invalid_channel_id_is_rejected_by_every_channel_command(
    shared: Harness, command: Callable[[Any], object], channel: Any, reason: str
) -> None:
    mq = shared
    msg = command(channel)
    rejected = mq.ask(msg, Rejected)
    assert (rejected.command, rejected.error, rejected.reason) == (type(msg).__name__, "InvalidInput", reason)
    assert mq.live_channels() == []


def test_an_unknown_message_is_rejected(shared: Harness) -> None:
    mq = shared
    rejected = mq.ask(NotACommand("hello"), Rejected)
    assert rejected == Rejected("NotACommand", "", "UnknownMessage", "not a message_queue command")
    assert mq.ask(GetStatistics(), Statistics) == Statistics(())


# -- scale and the system's life cycle --------------------------------------------------------------------


def test_pending_wakeups_do_not_grow_with_the_number_of_channels() -> None:
    running = start_system(SIMPLE_BASE, BatchSettings(window=0.05))
    try:
        mq = Harness(running, None)
        proc = mq.processor()
        mq.attach(proc)
        wakeups = running.asys._systemBase._wakeUps
        mq.enqueue(*[message(f"ch-{n}", "open") for n in range(500)])
        assert len(mq.live_channels()) == 500
        assert len(wakeups) <= 3, f"{len(wakeups)} Thespian wakeups pending for 500 open batches"
        mq.wait_for(proc, count=500)
        assert len(wakeups) <= 3, f"{len(wakeups)} Thespian wakeups pending for 500 idle channels"
    finally:
        running.shutdown()


def test_an_unsupported_base_is_refused_naming_the_supported_ones() -> None:
    for name in ("multiprocQueueBase", "multiprocUDPBase", "nonsense"):
        expected = f"base must be one of simpleSystemBase, multiprocTCPBase, got '{name}'"
        with pytest.raises(InvalidSettings, match=expected):
            start_system(name)


@pytest.mark.tcp
def test_shutdown_ends_every_process_of_a_tcp_system_and_closes_its_admin_port() -> None:
    port = free_port()
    running = start_system(TCP_BASE, BatchSettings(window=0.05), admin_port=port)
    mq = Harness(running, port)
    try:
        proc = mq.processor()
        mq.attach(proc)
        mq.enqueue(*[message(f"c{n}", "x") for n in range(3)])
        mq.wait_for(proc, count=3)
        (admin,) = running.admin_pids
        before = running.processes()
        # admin, logger, Supervisor, Timer, processor and three channels
        assert admin in before and len(before) >= 8 and port_accepts(port)
        assert set(descendants(admin)) <= set(before)
    finally:
        mq.shutdown_and_verify()
    assert not alive(admin) and running.processes() == [] and not port_accepts(port)


def test_on_the_simple_base_the_harness_owns_time_and_jumps_to_the_next_deadline() -> None:
    mq = start_harness(SIMPLE_BASE, BatchSettings(window=3600.0))  # an hour's window, on fake time
    try:
        assert mq.fake is not None
        proc = mq.processor()
        mq.attach(proc)
        start = mq.fake.now
        mq.enqueue(message("c1", "a"))
        assert mq.wait_for(proc, count=0) == ()  # nothing due: time did not move
        assert mq.fake.now == start
        (ready,) = deliveries(mq.wait_for(proc, count=1, timeout=7200.0))
        assert (texts(ready), ready.reason) == (["a"], "window")
        assert mq.fake.now == pytest.approx(start + 3600.0)  # moved to the deadline, not beyond
    finally:
        mq.shutdown_and_verify()
