"""Conversation semantics through the real actors (Supervisor, ChannelActor, Timer): message ids and
duplicates, edits, retractions, take-waiting, busy policies and author boundaries, on the simple base."""

from __future__ import annotations

from typing import Any

import pytest
from actor_support import HOLD
from harness import LONG, Harness, Launch, deliveries, texts
from test_actors import launch  # noqa: F401 - a fixture

from actors.system import SIMPLE_BASE
from protocol.messages import (
    BatchReady,
    CancelProcessing,
    ChannelConfigured,
    ConfigureChannel,
    Edit,
    Edited,
    Enqueue,
    Enqueued,
    Rejected,
    Retract,
    Retracted,
    Taken,
    TakeWaiting,
)
from protocol.values import BatchSettings, QueuedMessage

__all__ = ["launch"]


@pytest.fixture
def base() -> str:
    return SIMPLE_BASE


def message(channel: str, text: str, mid: str = "", user: str = "u1") -> QueuedMessage:
    return QueuedMessage("test", channel, user, user.upper(), text, message_id=mid)


def configure(mq: Harness, channel: str, **fields: Any) -> None:
    assert mq.ask(ConfigureChannel(channel, BatchSettings(**fields)), ChannelConfigured).channel_id == channel


def test_edit_retract_and_take_waiting_act_on_messages_not_delivered_yet(launch: Launch) -> None:
    mq = launch(window=LONG, max_batch_size=2)
    proc = mq.processor(HOLD)
    mq.attach(proc)
    mq.enqueue(*[message("c1", t, f"id-{t}") for t in ("a", "b", "c", "d", "e")])
    (first,) = deliveries(mq.wait_for(proc, count=1))
    assert texts(first) == ["a", "b"]
    assert mq.ask(Edit(message("c1", "a, edited", "id-a")), Edited) == Edited("c1", "id-a", False)  # in flight
    assert mq.ask(Edit(message("c1", "c, edited", "id-c")), Edited) == Edited("c1", "id-c", True)
    assert mq.ask(Edit(message("c1", "e, edited", "id-e")), Edited) == Edited("c1", "id-e", True)
    assert mq.ask(Retract("c1", "id-d"), Retracted) == Retracted("c1", "id-d", True)
    assert mq.ask(Retract("c1", "id-zzz"), Retracted) == Retracted("c1", "id-zzz", False)
    taken = mq.ask(TakeWaiting("c1"), Taken)
    assert [m.text for m in taken.messages] == ["c, edited", "e, edited"]
    stats = mq.stats("c1")
    assert (stats.edits, stats.retractions, stats.queued, stats.open_batch_size) == (2, 1, 0, 0)
    # a channel with no live actor has nothing waiting
    assert mq.ask(Edit(message("idle", "x", "id-x")), Edited) == Edited("idle", "id-x", False)
    assert mq.ask(Retract("idle", "id-x"), Retracted) == Retracted("idle", "id-x", False)
    assert mq.ask(TakeWaiting("idle"), Taken) == Taken("idle", ())


def test_edit_and_retract_without_a_message_id_are_rejected_naming_the_rule(launch: Launch) -> None:
    mq = launch()
    rejected = mq.ask(Edit(message("c1", "x")), Rejected)
    assert (rejected.command, rejected.error, rejected.reason) == (
        "Edit", "InvalidInput", "message_id must not be empty"
    )
    rejected = mq.ask(Retract("c1", "y" * 300), Rejected)
    assert "message_id must be at most 256 bytes of UTF-8, got 300 bytes" in rejected.reason


def test_a_message_id_seen_before_is_dropped_and_counted(launch: Launch) -> None:
    mq = launch(window=0.01)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "hello", "m1"))
    mq.wait_for(proc, count=1)
    assert mq.ask(Enqueue(message("c1", "hello (retry)", "m1"), ack=True), Enqueued) == Enqueued(1)
    mq.enqueue(message("c1", "next", "m2"))
    events = deliveries(mq.wait_for(proc, count=2))
    assert [texts(e) for e in events] == [["hello"], ["next"]]
    assert mq.stats("c1").duplicates == 1


def test_a_channel_holding_ids_passivates_and_its_next_actor_still_drops_a_duplicate(launch: Launch) -> None:
    mq = launch(window=0.01, idle_timeout=0.05)
    configure(mq, "c1", window=0.01, dedupe_ttl=600.0)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "hello", "m1"), message("c1", "there", "m2"))
    mq.wait_for(proc, count=1)
    mq.eventually(lambda: "c1" not in mq.live_channels(), "the channel passivated holding unexpired ids")
    assert mq.ask(Enqueue(message("c1", "hello (retry)", "m1"), ack=True), Enqueued) == Enqueued(1)
    mq.enqueue(message("c1", "there (retry)", "m2"), message("c1", "next", "m3"))
    events = deliveries(mq.wait_for(proc, count=2))
    assert [texts(e) for e in events] == [["hello", "there"], ["next"]]
    assert mq.stats("c1").duplicates == 2


def test_interrupt_cancels_the_item_in_flight_and_delivers_its_messages_first(launch: Launch) -> None:
    mq = launch(window=0.02)
    configure(mq, "c1", window=0.02, busy_policy="interrupt")
    proc = mq.processor(HOLD)
    mq.attach(proc)
    mq.enqueue(message("c1", "a"), message("c1", "b"))
    mq.wait_for(proc, count=1)
    mq.enqueue(message("c1", "c"))
    events = mq.wait_for(proc, count=3)
    assert isinstance(events[1], CancelProcessing) and events[1].delivery_id == 1
    last = events[2]
    assert isinstance(last, BatchReady)
    assert (texts(last), last.item.interrupted, last.interrupted) == (["a", "b", "c"], True, True)
    stats = mq.stats("c1")
    assert (stats.interruptions, stats.cancelled) == (1, 1)


def test_reject_refuses_a_message_while_an_item_is_in_flight(launch: Launch) -> None:
    mq = launch(window=0.01)
    configure(mq, "c1", window=0.01, busy_policy="reject")
    proc = mq.processor(HOLD)
    mq.attach(proc)
    mq.enqueue(message("c1", "a"))
    mq.wait_for(proc, count=1)
    refused = mq.ask(Enqueue(message("c1", "b", "id-b"), ack=True), Rejected)
    assert (refused.command, refused.channel_id, refused.error) == ("Enqueue", "c1", "ChannelBusy")
    assert "busy_policy is reject" in refused.reason
    mq.tell(Enqueue(message("c1", "c")))  # without ack the sender is told too
    assert mq.listen_for(Rejected).error == "ChannelBusy"
    assert mq.release(proc) == 1
    mq.stats_when("c1", lambda s: not s.in_flight, "the item was answered")
    assert mq.ask(Enqueue(message("c1", "b", "id-b"), ack=True), Enqueued) == Enqueued(1)
    assert mq.stats("c1").rejections == 2


def test_collect_delivers_what_arrived_during_processing_as_one_batch(launch: Launch) -> None:
    mq = launch(window=0.01)
    configure(mq, "c1", window=0.01, busy_policy="collect")
    proc = mq.processor(HOLD)
    mq.attach(proc)
    mq.enqueue(message("c1", "a"))
    mq.wait_for(proc, count=1)
    mq.enqueue(message("c1", "b"))
    mq.let_pass(0.1)  # several windows
    mq.enqueue(message("c1", "c"))
    assert mq.stats("c1").open_batch_size == 2
    assert mq.release(proc) == 1
    events = deliveries(mq.wait_for(proc, count=2))
    assert [(e.reason, texts(e)) for e in events] == [("window", ["a"]), ("collected", ["b", "c"])]


def test_split_on_author_closes_the_batch_when_the_author_changes(launch: Launch) -> None:
    mq = launch(window=LONG)
    configure(mq, "c1", window=LONG, split_on_author=True)
    proc = mq.processor()
    mq.attach(proc)
    mq.enqueue(message("c1", "a1", user="ann"), message("c1", "a2", user="ann"), message("c1", "b1", user="bob"))
    (ready,) = deliveries(mq.wait_for(proc, count=1))
    assert (ready.reason, texts(ready)) == ("author", ["a1", "a2"])
    assert mq.stats("c1").open_batch_size == 1


def test_conversation_counters_outlive_a_passivated_channel(launch: Launch) -> None:
    mq = launch(window=LONG, idle_timeout=0.05)
    configure(mq, "c1", window=LONG, dedupe_ttl=0.0)  # no ids to keep it alive
    mq.enqueue(message("c1", "a", "id-a"))
    assert mq.ask(Edit(message("c1", "A", "id-a")), Edited).edited
    assert mq.ask(Retract("c1", "id-a"), Retracted).retracted
    mq.eventually(lambda: "c1" not in mq.live_channels(), "the channel passivated")
    stats = mq.stats("c1")
    assert (stats.edits, stats.retractions) == (1, 1)
    mq.enqueue(message("c1", "b", "id-b"))  # a new actor starts from the kept counts
    assert mq.ask(Edit(message("c1", "B", "id-b")), Edited).edited
    assert mq.stats("c1").edits == 2
