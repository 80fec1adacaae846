"""Retries, processing timeouts, dead letters and per-channel caps through the real actors (Supervisor,
ChannelActor, Timer), on the simple base."""

from __future__ import annotations

from typing import Any

import pytest
from actor_support import FAIL, HOLD, Behave, Behaving
from harness import Harness, Launch, deliveries, texts
from test_actors import launch  # noqa: F401 - a fixture

from actors.system import SIMPLE_BASE
from protocol.messages import (
    BatchReady,
    CancelProcessing,
    ChannelConfigured,
    ConfigureChannel,
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    Enqueue,
    Enqueued,
    GetDeadLetters,
    PurgeDeadLetters,
    Rejected,
    ReplayDeadLetters,
)
from protocol.values import BatchSettings, QueuedMessage

__all__ = ["launch"]


@pytest.fixture
def base() -> str:
    return SIMPLE_BASE


def message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text)


def configure(mq: Harness, channel: str, **fields: Any) -> None:
    assert mq.ask(ConfigureChannel(channel, BatchSettings(**fields)), ChannelConfigured).channel_id == channel


def test_a_failing_item_is_retried_then_dead_lettered_and_replayed(launch: Launch) -> None:
    mq = launch(window=0.01)
    configure(mq, "c1", batching=False, max_attempts=3, retry_backoff=0.01)
    proc = mq.processor(FAIL)
    mq.attach(proc)
    mq.enqueue(message("c1", "a"), message("c1", "b"))
    mq.stats_when("c1", lambda s: s.dead_lettered == 2, "both items dead-lettered")
    got = deliveries(mq.wait_for(proc, count=6))
    assert [(texts(d), d.item.attempt) for d in got] == [
        (["a"], 1), (["a"], 2), (["a"], 3), (["b"], 1), (["b"], 2), (["b"], 3)
    ]
    assert len({d.item.item_id for d in got[:3]}) == 1
    letters = mq.ask(GetDeadLetters("c1"), DeadLetters).letters
    assert [(texts_of(letter), letter.attempts) for letter in letters] == [(["a"], 3), (["b"], 3)]
    assert letters[0].first_failed_at <= letters[0].last_failed_at
    stats = mq.stats("c1")
    assert (stats.attempts, stats.retries, stats.failed, stats.dead_letters) == (6, 4, 6, 2)
    assert mq.ask(Behave(HOLD), Behaving, to=proc) == Behaving()
    assert mq.ask(ReplayDeadLetters("c1"), DeadLettersReplayed).count == 2
    replayed = deliveries(mq.wait_for(proc, count=7))[-1]
    assert (texts(replayed), replayed.item.attempt, replayed.item.item_id) == (["a"], 1, got[0].item.item_id)
    assert mq.ask(PurgeDeadLetters("c1"), DeadLettersPurged).count == 0
    assert mq.ask(GetDeadLetters("idle"), DeadLetters) == DeadLetters("idle", ())


def texts_of(letter: Any) -> list[str]:
    assert letter.item is not None
    return [m.text for m in ([letter.item.payload] if isinstance(letter.item.payload, QueuedMessage)
                             else letter.item.payload.messages)]


def test_a_processor_that_does_not_answer_in_time_is_cancelled_and_the_item_retried(launch: Launch) -> None:
    mq = launch(window=0.01)
    configure(mq, "c1", batching=False, max_attempts=2, retry_backoff=0.0, processing_timeout=0.05)
    proc = mq.processor(HOLD)
    mq.attach(proc)
    mq.enqueue(message("c1", "a"))
    events = mq.wait_for(proc, count=4)
    assert isinstance(events[0], BatchReady) and isinstance(events[1], CancelProcessing)
    assert isinstance(events[2], BatchReady) and events[2].item.attempt == 2
    assert isinstance(events[3], CancelProcessing)
    stats = mq.stats_when("c1", lambda s: s.dead_letters == 1, "the item dead-lettered")
    assert stats.timeouts == 2


def test_a_full_channel_refuses_with_queue_full(launch: Launch) -> None:
    mq = launch(window=10.0)
    configure(mq, "c1", window=10.0, max_batch_size=100, max_queued=2)
    assert mq.ask(Enqueue(message("c1", "a"), ack=True), Enqueued) == Enqueued(1)
    assert mq.ask(Enqueue(message("c1", "b"), ack=True), Enqueued) == Enqueued(1)
    refused = mq.ask(Enqueue(message("c1", "c"), ack=True), Rejected)
    assert (refused.command, refused.error) == ("Enqueue", "QueueFull")
    assert "max_queued=2" in refused.reason
    assert mq.stats("c1").rejected_full == 1
