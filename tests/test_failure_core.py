"""Examples of the failure and flood rules of ChannelCore, the settings that drive them and their wire form."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from actors.batching import (
    MAX_DEAD_LETTERS,
    ChannelCore,
    Deliver,
    DeliveryCancelled,
    ItemDead,
    MessageRejected,
    RetryScheduled,
)
from protocol.codec import decode, encode
from protocol.errors import InvalidSettings
from protocol.values import BatchSettings, ChannelStatistics, DeadLetter, FlushReason, QueuedMessage

CHANNEL = "c"
WALL0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        return WALL0 + self.now


def msg(text: str, at: float = WALL0) -> QueuedMessage:
    return QueuedMessage("t", CHANNEL, "u", "U", text, queued_at=datetime.fromtimestamp(at, timezone.utc))


def core_with(clock: Clock, draws: list[tuple[float, float]] | None = None, **settings: object) -> ChannelCore:
    def uniform(a: float, b: float) -> float:
        if draws is not None:
            draws.append((a, b))
        return b

    core = ChannelCore(
        CHANNEL, BatchSettings(batching=False, dedupe_ttl=0.0, **settings),  # type: ignore[arg-type]
        wall=clock.wall, uniform=uniform,
    )
    core.attach(clock.now)
    return core


def test_the_backoff_doubles_per_attempt_up_to_a_minute_with_full_jitter() -> None:
    clock = Clock()
    draws: list[tuple[float, float]] = []
    core = core_with(clock, draws, max_attempts=9, retry_backoff=10.0)
    core.enqueue(msg("a"), 0.0)
    core.enqueue(msg("b"), 0.0)
    for attempt in range(1, 9):
        flight = core.in_flight
        assert flight is not None and flight[1].attempt == attempt and flight[1].payload == msg("a")
        effects = core.finish(flight[0], "boom", clock.now)
        retry = next(e for e in effects if isinstance(e, RetryScheduled))
        assert retry.item.attempt == attempt + 1 and retry.item.item_id == flight[1].item_id
        assert core.in_flight is None, "b waits behind the retry"
        assert core.deadline == retry.due == clock.now + min(60.0, 10.0 * 2 ** (attempt - 1))
        clock.now = retry.due
        delivered = [e for e in core.tick(clock.now) if isinstance(e, Deliver)]
        assert delivered[0].reason is FlushReason.RETRY
    assert draws == [(0.0, min(60.0, 10.0 * 2 ** k)) for k in range(8)]
    flight = core.in_flight
    assert flight is not None
    effects = core.finish(flight[0], "last", clock.now)
    dead = next(e for e in effects if isinstance(e, ItemDead)).letter
    assert dead.reason == "last" and dead.attempts == 9 and dead.item is not None and dead.item.attempt == 9
    assert dead.first_failed_at == WALL0 and dead.last_failed_at == clock.wall() > WALL0
    assert core.in_flight is not None and core.in_flight[1].payload == msg("b")  # the channel moved on
    stats = core.statistics()
    assert (stats.attempts, stats.retries, stats.failed, stats.dead_lettered, stats.dead_letters) == (10, 8, 9, 1, 1)


def test_a_processing_timeout_cancels_and_counts_as_a_failed_attempt() -> None:
    clock = Clock()
    core = core_with(clock, max_attempts=2, retry_backoff=0.0, processing_timeout=5.0)
    core.enqueue(msg("a"), 0.0)
    assert core.deadline == 5.0
    clock.now = 5.0
    effects = core.tick(clock.now)
    assert isinstance(effects[0], DeliveryCancelled)
    again = [e for e in effects if isinstance(e, Deliver)]
    assert again and again[0].item.attempt == 2 and core.deadline == 10.0
    clock.now = 10.0
    effects = core.tick(clock.now)
    dead = next(e for e in effects if isinstance(e, ItemDead)).letter
    assert "processing_timeout" in dead.reason and dead.attempts == 2
    assert core.statistics().timeouts == 2 and core.deadline is None


def test_max_attempts_one_fails_without_a_dead_letter() -> None:
    clock = Clock()
    core = core_with(clock)
    core.enqueue(msg("a"), 0.0)
    assert not any(isinstance(e, ItemDead) for e in core.finish(1, "boom", 0.0))
    assert core.statistics().failed == 1 and core.dead_letters() == ()


def test_dead_letters_are_bounded_oldest_dropped_and_counted_then_replayed_with_their_ids() -> None:
    clock = Clock()
    core = core_with(clock, max_attempts=2, retry_backoff=0.0)
    for i in range(MAX_DEAD_LETTERS + 2):
        core.enqueue(msg(f"m{i}"), 0.0)
        for _ in range(2):
            flight = core.in_flight
            assert flight is not None
            core.finish(flight[0], "boom", 0.0)
    letters = core.dead_letters()
    assert len(letters) == MAX_DEAD_LETTERS and letters[0].item is not None
    assert letters[0].item.payload == msg("m2")
    assert core.statistics().dead_letters_dropped == 2
    ids = [d.item.item_id for d in letters if d.item is not None]
    core.pause()
    count, _ = core.replay_dead_letters(0.0)
    assert count == MAX_DEAD_LETTERS and core.dead_letters() == ()
    assert [i.item_id for i in core.waiting()] == ids and {i.attempt for i in core.waiting()} == {1}
    assert core.purge_dead_letters() == (0, [])


@pytest.mark.parametrize("overflow", ["reject", "drop_oldest", "drop_newest"])
def test_max_queued_counts_the_fifo_and_the_open_batch(overflow: str) -> None:
    core = ChannelCore(CHANNEL, BatchSettings(max_batch_size=2, max_queued=3, overflow=overflow, dedupe_ttl=0.0))
    for text in "abcd":
        effects = core.enqueue(msg(text), 0.0)
    waiting = [m.text for i in core.waiting() for m in ([i.payload] if isinstance(i.payload, QueuedMessage)
                                                         else i.payload.messages)]
    waiting += [m.text for m in core.open_batch.messages] if core.open_batch else []
    assert waiting == {"reject": ["a", "b", "c"], "drop_oldest": ["b", "c", "d"], "drop_newest": ["a", "b", "c"]}[
        overflow
    ]
    stats = core.statistics()
    if overflow == "reject":
        assert effects == [MessageRejected(msg("d"), "QueueFull")] and stats.rejected_full == 1
    else:
        assert stats.dropped_overflow == 1


def test_stale_messages_are_dropped_at_delivery_and_an_empty_item_is_skipped() -> None:
    clock = Clock()
    core = core_with(clock, max_age=10.0)
    core.pause()
    core.enqueue(msg("old", WALL0 - 11), 0.0)
    core.enqueue(msg("fresh", WALL0 - 9), 0.0)
    _, effects = core.resume(clock.now)
    delivered = [e.item.payload for e in effects if isinstance(e, Deliver)]
    assert delivered == [msg("fresh", WALL0 - 9)] and core.statistics().dropped_stale == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0), ("max_attempts", True), ("retry_backoff", -1.0), ("retry_backoff", float("inf")),
        ("processing_timeout", 0), ("processing_timeout", "5"), ("max_queued", 0), ("max_queued", 1.5),
        ("overflow", "drop_all"), ("max_age", -1), ("max_age", float("nan")),
    ],
)
def test_bad_failure_settings_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidSettings, match=field):
        BatchSettings(**{field: value})  # type: ignore[arg-type]


def test_the_new_settings_statistics_and_dead_letter_round_trip() -> None:
    s = BatchSettings(max_attempts=3, retry_backoff=0.5, processing_timeout=2.0, max_queued=7,
                      overflow="drop_oldest", max_age=30.0)
    assert decode(encode(s), BatchSettings) == s
    stats = ChannelStatistics(CHANNEL, 0, 0, False, 0, 0, 0, False, attempts=1, retries=2, timeouts=3,
                              dead_lettered=4, dead_letters=5, dead_letters_dropped=6, dropped_stale=7,
                              dropped_overflow=8, rejected_full=9)
    assert decode(encode(stats), ChannelStatistics) == stats


def test_a_dead_letter_frame_of_the_first_shape_still_decodes() -> None:
    old = bytes.fromhex("95ab646561645f6c6574746572a57175657565a9626164206672616d65c4020102cb4029000000000000")
    assert decode(old, DeadLetter) == DeadLetter("queue", "bad frame", b"\x01\x02", 12.5)
