"""ChannelCore's short enqueue path (settings that use no per-message rule, messages without an id) against its
full rules: the same effects and statistics, also when settings change mid-stream from defaults to a feature
and back."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.batching import ChannelCore, Deliver, Effect, ItemQueued, MessageRejected
from protocol.values import BatchSettings, FlushReason, QueuedMessage, payload_messages

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
PLAIN = BatchSettings(window=1.0, max_batch_size=3)


def msg(text: str, mid: str = "", user: str = "ann") -> QueuedMessage:
    return QueuedMessage("test", "c", user, user.title(), text, queued_at=AT, message_id=mid)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"c#{next(counter)}"


class RulesOnly(ChannelCore):
    """A core whose every enqueue takes the full rules: what the short path must match."""

    def enqueue(self, msg: QueuedMessage, now: float) -> list[Effect]:
        if msg.channel_id != self.channel_id:
            return super().enqueue(msg, now)
        return self._enqueue_by_rules(msg, now)


def queued(effects: list[Effect]) -> list[tuple[list[str], FlushReason, bool]]:
    return [
        ([m.text for m in payload_messages(e.item.payload)], e.reason, e.item.interrupted)
        for e in effects
        if isinstance(e, ItemQueued)
    ]


def delivered(effects: list[Effect]) -> Deliver:
    (deliver,) = [e for e in effects if isinstance(e, Deliver)]
    return deliver


class Spying(ChannelCore):
    """A core that notes the texts of the messages its full rules handle."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.by_rules: list[str] = []

    def _enqueue_by_rules(self, msg: QueuedMessage, now: float) -> list[Effect]:
        self.by_rules.append(msg.text)
        return super()._enqueue_by_rules(msg, now)


def test_a_plain_channel_takes_the_short_path_for_messages_without_an_id() -> None:
    core = Spying("c", PLAIN, new_id=ids())
    core.attach()
    for i, text in enumerate(["a", "b", "c", "d"]):
        core.enqueue(msg(text), i * 0.1)
    core.enqueue(msg("e", mid="m1"), 0.5)  # an id to remember: the rules
    core.configure(replace(PLAIN, max_queued=2))
    core.enqueue(msg("f"), 0.6)  # two waiting ("d", "e"): max_queued reached, the rules refuse it
    core.configure(replace(PLAIN, busy_policy="collect"))
    core.enqueue(msg("g"), 0.7)
    assert core.by_rules == ["e", "f", "g"]
    assert core.statistics().rejected_full == 1


def test_a_batch_opened_under_collect_keeps_collecting_after_the_channel_returns_to_defaults() -> None:
    collect = replace(PLAIN, busy_policy="collect")
    core = ChannelCore("c", collect, new_id=ids())
    core.attach()
    core.enqueue(msg("a"), 0.0)
    first = delivered(core.tick(1.0))
    core.enqueue(msg("b"), 1.1)  # opens a batch under collect while "a" is in flight
    core.configure(PLAIN)
    core.enqueue(msg("c"), 1.2)  # joins that batch, which keeps its settings
    assert core.deadline is None  # collecting: no window while an item is in flight
    assert queued(core.tick(9.0)) == []
    effects = core.finish(first.delivery_id, now=9.5)
    assert queued(effects) == [(["b", "c"], FlushReason.COLLECTED, False)]
    second = delivered(effects)
    # the next batch opens under the plain settings: its window runs while "b", "c" are in flight
    core.enqueue(msg("d"), 10.0)
    assert core.deadline == 11.0
    assert queued(core.tick(11.0)) == [(["d"], FlushReason.WINDOW, False)]
    assert core.finish(second.delivery_id, now=11.5) and core.in_flight is not None


def test_a_batch_opened_under_split_on_author_still_splits_after_the_channel_returns_to_defaults() -> None:
    core = ChannelCore("c", replace(PLAIN, max_batch_size=10, split_on_author=True), new_id=ids())
    core.enqueue(msg("a", user="ann"), 0.0)
    core.configure(replace(PLAIN, max_batch_size=10))
    assert queued(core.enqueue(msg("b", user="ann"), 0.1)) == []
    effects = core.enqueue(msg("c", user="bob"), 0.2)  # closes the batch opened under split_on_author
    assert queued(effects) == [(["a", "b"], FlushReason.AUTHOR, False)]
    assert queued(core.enqueue(msg("d", user="ann"), 0.3)) == []  # the new batch does not split
    assert queued(core.tick(5.0)) == [(["c", "d"], FlushReason.WINDOW, False)]


def test_interrupted_messages_left_in_the_open_batch_keep_their_flag_on_the_short_path() -> None:
    plain = replace(PLAIN, max_batch_size=6)
    core = ChannelCore("c", plain, new_id=ids())
    core.attach()
    for i, text in enumerate("abcdef"):
        core.enqueue(msg(text), i * 0.01)  # the sixth closes it full: delivered
    core.enqueue(msg("g"), 0.1)  # opens a batch under the plain settings
    core.configure(replace(plain, busy_policy="interrupt"))
    core.enqueue(msg("h"), 0.2)  # interrupts: a..f go back in front of g, h and close full at once
    core.configure(plain)  # the same settings object as the open batch's: the short path serves again
    assert queued(core.enqueue(msg("i"), 0.3)) == []
    effects: list[Effect] = []
    for i, text in enumerate("jkl"):
        effects = core.enqueue(msg(text), 0.4 + i * 0.01)
    assert queued(effects) == [(["g", "h", "i", "j", "k", "l"], FlushReason.FULL, False)]
    stats = core.statistics()
    assert (stats.interruptions, stats.cancelled) == (1, 1)


def test_an_open_batch_carrying_interrupted_messages_closes_flagged_on_the_short_path() -> None:
    plain = replace(PLAIN, max_batch_size=10)
    core = ChannelCore("c", plain, new_id=ids())
    core.attach()
    core.enqueue(msg("a"), 0.0)
    delivered(core.tick(1.0))  # "a" in flight
    core.enqueue(msg("b"), 1.1)  # opens a batch under the plain settings
    core.configure(replace(plain, busy_policy="interrupt"))
    core.enqueue(msg("c"), 1.2)  # interrupts "a": it goes in front of b, c
    core.configure(plain)
    assert core.in_flight is None
    effects: list[Effect] = []
    for i, text in enumerate("defghij"):
        effects = core.enqueue(msg(text), 1.3 + i * 0.01)
    assert queued(effects) == [(list("abcdefghij"), FlushReason.FULL, True)]


def test_a_full_channel_refuses_on_the_short_path_and_accepts_again_once_it_has_room() -> None:
    core = ChannelCore("c", replace(PLAIN, max_batch_size=1, max_queued=2), new_id=ids())
    core.attach()
    first = delivered(core.enqueue(msg("a"), 0.0))
    core.enqueue(msg("b"), 0.1)
    core.enqueue(msg("c"), 0.2)
    assert core.refusals == 0
    (refused,) = core.enqueue(msg("d"), 0.3)
    assert refused == MessageRejected(msg("d"), "QueueFull")
    assert core.refusals == 1 and core.waiting_messages == 2
    core.finish(first.delivery_id, now=0.4)  # "b" goes out: room for one
    assert queued(core.enqueue(msg("e"), 0.5)) == [(["e"], FlushReason.FULL, False)]
    stats = core.statistics()
    assert (stats.rejected_full, stats.attempts) == (1, 2)


# -- the short path against the full rules, under random settings changes ------------------------------------

SETTINGS = [
    PLAIN,
    replace(PLAIN, max_queued=4),
    replace(PLAIN, max_wait=1.5),
    replace(PLAIN, busy_policy="collect"),
    replace(PLAIN, busy_policy="interrupt"),
    replace(PLAIN, busy_policy="reject"),
    replace(PLAIN, split_on_author=True),
    replace(PLAIN, batching=False),
    replace(PLAIN, max_queued=3, overflow="drop_oldest"),
    replace(PLAIN, processing_timeout=2.0, max_attempts=2, retry_backoff=0.0),
]

step = st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(["", "", "", "m1", "m2"]), st.sampled_from(["ann", "bob"])),
    st.tuples(st.just("configure"), st.integers(0, len(SETTINGS) - 1), st.just("")),
    st.tuples(st.just("tick"), st.sampled_from([0.25, 1.0, 2.5]), st.just("")),
    st.tuples(st.just("finish"), st.sampled_from(["", "boom"]), st.just("")),
    st.tuples(st.just("hold"), st.just(""), st.just("")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.integers(0, len(SETTINGS) - 1), added=st.booleans(), steps=st.lists(step, max_size=60))
def test_the_short_path_has_the_effects_and_counts_of_the_full_rules(
    first: int, added: bool, steps: list[tuple[str, object, str]]
) -> None:
    def core_of(kind: type[ChannelCore]) -> ChannelCore:
        return kind("c", SETTINGS[first], new_id=ids(), added_effects=added, wall=lambda: 0.0, uniform=lambda a, b: b)

    fast, full = core_of(ChannelCore), core_of(RulesOnly)
    fast.attach()
    full.attach()
    now = 0.0
    texts = itertools.count()
    for kind, arg, user in steps:
        now += 0.25
        text = f"t{next(texts)}"
        pair: list[object] = []
        for core in (fast, full):
            if kind == "enqueue":
                assert isinstance(arg, str)
                pair.append(core.enqueue(msg(text, arg, user), now))
            elif kind == "configure":
                assert isinstance(arg, int)
                core.configure(SETTINGS[arg])
            elif kind == "tick":
                assert isinstance(arg, float)
                pair.append(core.tick(now + arg))
            elif kind == "finish" and core.in_flight is not None:
                assert isinstance(arg, str)
                pair.append(core.finish(core.in_flight[0], arg or None, now))
            elif kind == "hold":
                pair.append(core.hold())
        if len(pair) == 2:
            assert pair[0] == pair[1]
        assert fast.statistics() == full.statistics()
        assert fast.deadline == full.deadline
        assert fast.waiting() == full.waiting() and fast.open_batch == full.open_batch
        assert fast.waiting_messages == full.waiting_messages
