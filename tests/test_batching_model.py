"""Stateful test: several ChannelCores under one fake clock, checked against a plain model.

Two layers of checks run after every step:

* the model predicts every effect, the waiting items, the open batch, the deadline and the statistics
  of each channel, and the core must match it exactly;
* properties that hold whatever the model says (order kept, nothing lost or duplicated, every batch within
  its cap, window and max_wait, one item in flight, front items first) are checked on the history of effects
  the cores actually emitted.

Times and settings are multiples of 1/4 so that float sums are exact and boundary cases (a message exactly
one window after the previous one) are hit on purpose, not by rounding.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors.batching import (
    ChannelCore,
    ChannelState,
    Deliver,
    DeliveryCancelled,
    DeliveryFinished,
    Effect,
    ItemQueued,
    MessageAdded,
    QueueCleared,
)
from protocol.errors import ProtocolViolation
from protocol.values import (
    BatchSettings,
    ChannelStatistics,
    FlushReason,
    MessageBatch,
    QueuedMessage,
    QueueItem,
    payload_messages,
)

CHANNELS = ("alpha", "beta", "gamma")
QUARTER = 0.25

quarters = st.integers
channel_index = st.integers(min_value=0, max_value=len(CHANNELS) - 1)
# 0 .. 2 * the largest window (3 s), in quarters: every window value and every multiple of it up to 2x is hit.
advance_by = quarters(0, 24).map(lambda q: q * QUARTER)
# 0, 0.25 .. 3 s; zero and a few round values are drawn more often than the rest.
windows = st.sampled_from([0.0, 0.5, 1.0, 3.0]) | quarters(0, 12).map(lambda q: q * QUARTER)
batch_settings = st.builds(
    BatchSettings,
    window=windows,
    max_batch_size=st.integers(1, 5),
    max_wait=st.none() | quarters(2, 6).map(lambda q: q * QUARTER) | quarters(2, 16).map(lambda q: q * QUARTER),
    batching=st.sampled_from([True, True, True, False]),
)

Texts = tuple[str, ...]


def texts_of(item: QueueItem) -> Texts:
    return tuple(m.text for m in payload_messages(item.payload))


def normalize(effect: Effect) -> tuple[Any, ...]:
    """An effect as plain data, comparable with what the model predicts."""
    if isinstance(effect, MessageAdded):
        return ("added", effect.message.text, effect.batch_size)
    if isinstance(effect, ItemQueued):
        return ("queued", texts_of(effect.item), effect.reason, effect.lateness)
    if isinstance(effect, Deliver):
        return ("deliver", texts_of(effect.item), effect.delivery_id, effect.reason, effect.lateness)
    if isinstance(effect, DeliveryCancelled):
        return ("cancelled", texts_of(effect.item), effect.delivery_id)
    if isinstance(effect, DeliveryFinished):
        return ("finished", texts_of(effect.item), effect.delivery_id, effect.error)
    if isinstance(effect, QueueCleared):
        return ("cleared", tuple(texts_of(item) for item in effect.items))
    raise AssertionError(f"unknown effect {effect!r}")


def counting_ids(channel: str) -> Callable[[], str]:
    """Readable, deterministic item ids: ``alpha#1``, ``alpha#2``, ..."""
    counter = itertools.count(1)
    return lambda: f"{channel}#{next(counter)}"


# -- the model --------------------------------------------------------------------------------------------


@dataclass
class ModelItem:
    texts: Texts
    reason: FlushReason
    lateness: float


@dataclass
class ModelBatch:
    settings: BatchSettings
    first_at: float
    last_at: float
    texts: list[str] = field(default_factory=list)
    held: bool = False  # no deadline until the next message restarts the window (and max_wait)

    def deadline(self) -> float:
        ends = [self.last_at + self.settings.window]
        if self.settings.max_wait is not None:
            ends.append(self.first_at + self.settings.max_wait)
        return min(ends)

    def timed_reason(self) -> FlushReason:
        cap = self.settings.max_wait
        if cap is not None and self.first_at + cap <= self.last_at + self.settings.window:
            return FlushReason.MAX_WAIT
        return FlushReason.WINDOW


@dataclass
class ModelChannel:
    """One channel, written as plainly as possible: lists, a deque and counters."""

    settings: BatchSettings
    attached: bool = False
    open: ModelBatch | None = None
    fifo: deque[ModelItem] = field(default_factory=deque)
    in_flight: tuple[int, ModelItem] | None = None
    last_delivery_id: int = 0
    processed: int = 0
    cancelled: int = 0
    failed: int = 0

    def enqueue(self, text: str, now: float) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        if self.open is not None and not self.open.held and now >= self.open.deadline():
            self._close(self.open.timed_reason(), now, out)
        if not self.settings.batching:
            if self.open is not None:
                self._close(FlushReason.SETTINGS, now, out)
            self._push(ModelItem((text,), FlushReason.UNBATCHED, 0.0), out)
        else:
            if self.open is None:
                self.open = ModelBatch(self.settings, now, now)
            self.open.texts.append(text)
            if self.open.held:
                self.open.held = False
                self.open.first_at = now
            self.open.last_at = now
            out.append(("added", text, len(self.open.texts)))
            if len(self.open.texts) >= self.open.settings.max_batch_size:
                self._close(FlushReason.FULL, now, out)
        self._deliver_next(out)
        return out

    def tick(self, now: float) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        if self.open is not None and not self.open.held and now >= self.open.deadline():
            self._close(self.open.timed_reason(), now, out)
            self._deliver_next(out)
        return out

    def hold(self) -> bool:
        if self.open is None:
            return False
        self.open.held = True
        return True

    def enqueue_front(self, texts: Texts) -> list[tuple[Any, ...]]:
        item = ModelItem(texts, FlushReason.FRONT, 0.0)
        self.fifo.appendleft(item)
        out: list[tuple[Any, ...]] = [("queued", texts, FlushReason.FRONT, 0.0)]
        self._deliver_next(out)
        return out

    def attach(self) -> list[tuple[Any, ...]]:
        self.attached = True
        out: list[tuple[Any, ...]] = []
        self._deliver_next(out)
        return out

    def finish(self, delivery_id: int, error: str | None) -> list[tuple[Any, ...]]:
        if self.in_flight is None or self.in_flight[0] != delivery_id:
            return []
        item = self.in_flight[1]
        self.in_flight = None
        self.processed += 1
        self.failed += error is not None
        out: list[tuple[Any, ...]] = [("finished", item.texts, delivery_id, error)]
        self._deliver_next(out)
        return out

    def cancel_current(self) -> tuple[bool, list[tuple[Any, ...]]]:
        out: list[tuple[Any, ...]] = []
        cancelled = self._cancel(out)
        self._deliver_next(out)
        return cancelled, out

    def clear(self) -> tuple[int, list[tuple[Any, ...]]]:
        gone = tuple(item.texts for item in self.fifo)
        self.fifo.clear()
        return len(gone), ([("cleared", gone)] if gone else [])

    def stop(self) -> tuple[bool, list[tuple[Any, ...]]]:
        out: list[tuple[Any, ...]] = []
        cancelled = self._cancel(out)
        self.attached = False
        return cancelled, out

    def deadline(self) -> float | None:
        return self.open.deadline() if self.open is not None and not self.open.held else None

    def state(self) -> ChannelState:
        if not self.attached:
            return ChannelState.DETACHED
        return ChannelState.BUSY if self.in_flight is not None else ChannelState.IDLE

    def _cancel(self, out: list[tuple[Any, ...]]) -> bool:
        if self.in_flight is None:
            return False
        delivery_id, item = self.in_flight
        self.in_flight = None
        self.cancelled += 1
        out.append(("cancelled", item.texts, delivery_id))
        return True

    def _close(self, reason: FlushReason, now: float, out: list[tuple[Any, ...]]) -> None:
        assert self.open is not None
        # a full batch is on time by definition; a held one has no deadline to be late for
        on_time = reason is FlushReason.FULL or self.open.held
        late = 0.0 if on_time else max(0.0, now - self.open.deadline())
        self._push(ModelItem(tuple(self.open.texts), reason, late), out)
        self.open = None

    def _push(self, item: ModelItem, out: list[tuple[Any, ...]]) -> None:
        self.fifo.append(item)
        out.append(("queued", item.texts, item.reason, item.lateness))

    def _deliver_next(self, out: list[tuple[Any, ...]]) -> None:
        if not self.attached or self.in_flight is not None or not self.fifo:
            return
        item = self.fifo.popleft()
        self.last_delivery_id += 1
        self.in_flight = (self.last_delivery_id, item)
        out.append(("deliver", item.texts, self.last_delivery_id, item.reason, item.lateness))


# -- the history the property checks read -----------------------------------------------------------------


@dataclass
class History:
    """What one channel's core actually emitted, plus what the test fed it."""

    enqueued: list[str] = field(default_factory=list)  # texts in enqueue order
    enqueued_at: dict[str, float] = field(default_factory=dict)
    settings_at: dict[str, BatchSettings] = field(default_factory=dict)  # next-batch settings at enqueue
    front_texts: set[str] = field(default_factory=set)
    resumed: set[str] = field(default_factory=set)  # texts that restarted a held batch
    cleared_texts: set[str] = field(default_factory=set)
    cleared_ids: set[str] = field(default_factory=set)
    delivered: list[QueueItem] = field(default_factory=list)  # in delivery order
    delivered_ids: set[str] = field(default_factory=set)
    queued_ids: set[str] = field(default_factory=set)
    in_flight: tuple[int, str] | None = None  # as seen through the effects
    # front item id -> ids of the items that were waiting when it was inserted
    must_precede: dict[str, frozenset[str]] = field(default_factory=dict)


class BatchingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.text_counter = itertools.count()
        self.cores: list[ChannelCore] = []
        self.models: list[ModelChannel] = []
        self.history: list[History] = []

    @initialize(initial=st.lists(batch_settings, min_size=len(CHANNELS), max_size=len(CHANNELS)))
    def create_channels(self, initial: list[BatchSettings]) -> None:
        for channel, channel_settings in zip(CHANNELS, initial):
            self.cores.append(ChannelCore(channel, channel_settings, new_id=counting_ids(channel)))
            self.models.append(ModelChannel(channel_settings))
            self.history.append(History())

    # -- helpers ------------------------------------------------------------------------------------------

    def new_text(self, ch: int) -> str:
        return f"{CHANNELS[ch]}:{next(self.text_counter)}"

    def message(self, ch: int, text: str) -> QueuedMessage:
        return QueuedMessage(platform="test", channel_id=CHANNELS[ch], user_id="u", user_name="U", text=text)

    def apply(self, ch: int, effects: Sequence[Effect], expected: list[tuple[Any, ...]]) -> None:
        """Check the core's effects against the model's prediction, then record them in the history."""
        assert [normalize(e) for e in effects] == expected
        assert sum(isinstance(e, Deliver) for e in effects) <= 1
        hist = self.history[ch]
        for effect in effects:
            if isinstance(effect, ItemQueued):
                event(f"item queued: {effect.reason.value}{' (late)' if effect.lateness else ''}")
                self.check_item_shape(ch, effect.item)
                assert effect.item.item_id not in hist.queued_ids, "item id reused"
                hist.queued_ids.add(effect.item.item_id)
            elif isinstance(effect, Deliver):
                assert self.models[ch].attached, "delivered while no processor is attached"
                assert hist.in_flight is None, "a second item went in flight"
                item_id = effect.item.item_id
                assert item_id in hist.queued_ids and item_id not in hist.delivered_ids
                for front_id, earlier in hist.must_precede.items():
                    assert item_id not in earlier, f"{item_id} delivered before front item {front_id}"
                hist.must_precede.pop(item_id, None)
                hist.delivered.append(effect.item)
                hist.delivered_ids.add(item_id)
                hist.in_flight = (effect.delivery_id, item_id)
            elif isinstance(effect, (DeliveryFinished, DeliveryCancelled)):
                assert hist.in_flight == (effect.delivery_id, effect.item.item_id)
                hist.in_flight = None
            elif isinstance(effect, QueueCleared):
                for item in effect.items:
                    hist.cleared_ids.add(item.item_id)
                    hist.cleared_texts.update(texts_of(item))
                    hist.must_precede.pop(item.item_id, None)

    def check_item_shape(self, ch: int, item: QueueItem) -> None:
        """Every message belongs to the channel; a batch keeps the cap, window and max_wait it opened with."""
        channel = CHANNELS[ch]
        assert item.channel_id == channel
        messages = payload_messages(item.payload)
        assert messages and all(m.channel_id == channel for m in messages)
        texts = [m.text for m in messages]
        if texts[0] in self.history[ch].front_texts:
            return
        self.check_batch_span(ch, texts)

    def check_batch_span(self, ch: int, texts: list[str]) -> None:
        hist = self.history[ch]
        opened_with = hist.settings_at[texts[0]]
        assert len(texts) <= opened_with.max_batch_size
        times = [hist.enqueued_at[t] for t in texts]
        for (earlier, _), (later, text) in zip(zip(times, texts), zip(times[1:], texts[1:])):
            if text not in hist.resumed:  # a hold lifts the window until this message
                assert later - earlier < opened_with.window, f"batch {texts} spans a quiet gap >= window"
        if opened_with.max_wait is not None:
            start = max(i for i, text in enumerate(texts) if i == 0 or text in hist.resumed)
            assert times[-1] - times[start] < opened_with.max_wait, f"batch {texts} spans >= max_wait"

    def tick_due(self) -> None:
        """What the timer does: tick every core whose deadline has been reached."""
        for ch, core in enumerate(self.cores):
            deadline = core.deadline
            if deadline is not None and self.now >= deadline:
                self.apply(ch, core.tick(self.now), self.models[ch].tick(self.now))

    # -- rules --------------------------------------------------------------------------------------------

    def enqueue_one(self, ch: int) -> None:
        text = self.new_text(ch)
        hist = self.history[ch]
        hist.enqueued.append(text)
        hist.enqueued_at[text] = self.now
        hist.settings_at[text] = self.cores[ch].settings
        model = self.models[ch]
        if model.open is not None and model.open.held and model.settings.batching:
            hist.resumed.add(text)
        effects = self.cores[ch].enqueue(self.message(ch, text), self.now)
        self.apply(ch, effects, self.models[ch].enqueue(text, self.now))

    @rule(ch=channel_index)
    def enqueue(self, ch: int) -> None:
        self.enqueue_one(ch)

    @rule(ch=channel_index, gaps=st.lists(quarters(0, 8).map(lambda q: q * QUARTER), min_size=1, max_size=6),
          timer=st.booleans())
    def enqueue_a_burst(self, ch: int, gaps: list[float], timer: bool) -> None:
        """Several messages to one channel, each ``gap`` after the previous; the timer runs or lags."""
        for gap in gaps:
            self.now += gap
            if timer:
                self.tick_due()
            self.enqueue_one(ch)

    @rule(dt=advance_by, timer=st.booleans())
    def advance(self, dt: float, timer: bool) -> None:
        """Without the timer, a lagging wakeup: the next enqueue meets an overdue batch."""
        self.now += dt
        if timer:
            self.tick_due()

    @precondition(lambda self: any(core.deadline is not None for core in self.cores))
    @rule(offset=st.sampled_from([-QUARTER, 0.0]), timer=st.booleans())
    def advance_to_the_next_deadline(self, offset: float, timer: bool) -> None:
        """Land exactly on (or just before) the earliest deadline; a message may beat the timer there."""
        earliest = min(c.deadline for c in self.cores if c.deadline is not None)
        self.now = max(self.now, earliest + offset)
        if timer:
            self.tick_due()

    @rule(ch=channel_index)
    def stale_wakeup(self, ch: int) -> None:
        """Wakeups cannot be cancelled: tick may come at any time, due or not, held batch or none."""
        self.apply(ch, self.cores[ch].tick(self.now), self.models[ch].tick(self.now))

    @rule(ch=channel_index)
    def attach(self, ch: int) -> None:
        expected = self.models[ch].attach()
        self.apply(ch, self.cores[ch].attach(), expected)

    @precondition(lambda self: any(core.in_flight is not None for core in self.cores))
    @rule(data=st.data(), error=st.none() | st.sampled_from(["boom", ""]))
    def finish_current(self, data: st.DataObject, error: str | None) -> None:
        ch = data.draw(st.sampled_from([i for i, c in enumerate(self.cores) if c.in_flight is not None]))
        flight = self.cores[ch].in_flight
        assert flight is not None
        expected = self.models[ch].finish(flight[0], error)
        self.apply(ch, self.cores[ch].finish(flight[0], error), expected)

    @precondition(lambda self: any(m.last_delivery_id > (m.in_flight is not None) for m in self.models))
    @rule(data=st.data(), error=st.none() | st.just("late"))
    def finish_a_stale_delivery(self, data: st.DataObject, error: str | None) -> None:
        candidates = [i for i, m in enumerate(self.models) if m.last_delivery_id > (m.in_flight is not None)]
        ch = data.draw(st.sampled_from(candidates))
        model = self.models[ch]
        current = model.in_flight[0] if model.in_flight is not None else None
        stale = data.draw(st.sampled_from([i for i in range(1, model.last_delivery_id + 1) if i != current]))
        before = self.cores[ch].statistics()
        assert self.cores[ch].finish(stale, error) == []
        assert model.finish(stale, error) == []
        assert self.cores[ch].statistics() == before

    @rule(ch=channel_index, beyond=st.integers(-2, 3))
    def finish_a_never_issued_delivery(self, ch: int, beyond: int) -> None:
        model = self.models[ch]
        bogus = model.last_delivery_id + beyond if beyond > 0 else beyond  # past the last id, or 0 / negative
        before = self.cores[ch].statistics()
        with pytest.raises(ProtocolViolation) as caught:
            self.cores[ch].finish(bogus)
        assert f"delivery {bogus} " in str(caught.value)
        assert f"state {model.state().value}" in str(caught.value)
        assert self.cores[ch].statistics() == before

    @rule(ch=channel_index)
    def hold(self, ch: int) -> None:
        assert self.cores[ch].hold() is self.models[ch].hold()

    @rule(ch=channel_index)
    def cancel_current(self, ch: int) -> None:
        cancelled, effects = self.cores[ch].cancel_current()
        expected_cancelled, expected = self.models[ch].cancel_current()
        assert cancelled is expected_cancelled
        self.apply(ch, effects, expected)

    @rule(ch=channel_index, size=st.integers(0, 3))
    def enqueue_front(self, ch: int, size: int) -> None:
        """size 0 sends a bare message; 1..3 a batch of that many messages."""
        texts = tuple(self.new_text(ch) for _ in range(max(size, 1)))
        hist = self.history[ch]
        hist.front_texts.update(texts)
        if size == 0:
            payload: QueuedMessage | MessageBatch = self.message(ch, texts[0])
        else:
            payload = MessageBatch()
            for text in texts:
                payload.add(self.message(ch, text))
        waiting_before = frozenset(item.item_id for item in self.cores[ch].waiting())
        effects = self.cores[ch].enqueue_front(payload, self.now)
        front_id = next(e.item.item_id for e in effects if isinstance(e, ItemQueued))
        if waiting_before:
            hist.must_precede[front_id] = waiting_before
        self.apply(ch, effects, self.models[ch].enqueue_front(texts))

    @rule(ch=channel_index)
    def clear(self, ch: int) -> None:
        waiting_before = self.cores[ch].waiting()
        count, effects = self.cores[ch].clear()
        expected_count, expected = self.models[ch].clear()
        assert count == expected_count == len(waiting_before)
        assert effects == ([QueueCleared(waiting_before)] if waiting_before else [])
        self.apply(ch, effects, expected)

    @rule(ch=channel_index)
    def stop(self, ch: int) -> None:
        cancelled, effects = self.cores[ch].stop()
        expected_cancelled, expected = self.models[ch].stop()
        assert cancelled is expected_cancelled
        assert not any(isinstance(e, Deliver) for e in effects)
        self.apply(ch, effects, expected)

    @rule(ch=channel_index, new=batch_settings)
    def configure(self, ch: int, new: BatchSettings) -> None:
        open_before = self.cores[ch].deadline
        self.cores[ch].configure(new)
        self.models[ch].settings = new
        assert self.cores[ch].settings == new
        assert self.cores[ch].deadline == open_before  # the open batch keeps its settings

    # -- invariants ---------------------------------------------------------------------------------------

    @invariant()
    def core_matches_the_model(self) -> None:
        for core, model in zip(self.cores, self.models):
            assert [texts_of(item) for item in core.waiting()] == [item.texts for item in model.fifo]
            open_batch = core.open_batch
            assert (tuple(m.text for m in open_batch.messages) if open_batch else None) == (
                tuple(model.open.texts) if model.open else None
            )
            assert core.deadline == model.deadline()
            assert core.state is model.state()
            flight = core.in_flight
            assert (None if flight is None else (flight[0], texts_of(flight[1]))) == (
                None if model.in_flight is None else (model.in_flight[0], model.in_flight[1].texts)
            )

    @invariant()
    def statistics_equal_the_model_counts(self) -> None:
        for core, model in zip(self.cores, self.models):
            assert core.statistics() == ChannelStatistics(
                channel_id=core.channel_id,
                queued=len(model.fifo),
                open_batch_size=len(model.open.texts) if model.open else 0,
                in_flight=model.in_flight is not None,
                processed=model.processed,
                cancelled=model.cancelled,
                failed=model.failed,
                has_processor=model.attached,
                attempts=model.last_delivery_id,
            )

    @invariant()
    def order_is_kept_and_nothing_is_lost_or_duplicated(self) -> None:
        for core, hist in zip(self.cores, self.history):
            seen: list[str] = []
            for item in hist.delivered:
                seen.extend(texts_of(item))
            for item in core.waiting():
                seen.extend(texts_of(item))
            if core.open_batch is not None:
                seen.extend(m.text for m in core.open_batch.messages)
            skip = hist.front_texts | hist.cleared_texts
            assert [t for t in seen if t not in skip] == [t for t in hist.enqueued if t not in skip]
            assert len(seen) == len(set(seen)), "a message is in two places"
            # what clear reported is exactly what vanished: nothing went missing for another reason
            assert (set(hist.enqueued) | hist.front_texts) - set(seen) == hist.cleared_texts

    @invariant()
    def the_open_batch_keeps_its_cap_window_and_max_wait(self) -> None:
        for ch, core in enumerate(self.cores):
            batch = core.open_batch
            if batch is not None:
                assert batch.size >= 1 and all(m.channel_id == CHANNELS[ch] for m in batch.messages)
                self.check_batch_span(ch, [m.text for m in batch.messages])
                assert batch.size < self.history[ch].settings_at[batch.messages[0].text].max_batch_size

    @invariant()
    def at_most_one_item_is_in_flight_and_only_with_a_processor(self) -> None:
        for core, hist in zip(self.cores, self.history):
            flight = core.in_flight
            assert (None if flight is None else (flight[0], flight[1].item_id)) == hist.in_flight
            if flight is not None:
                assert core.state is ChannelState.BUSY
                assert flight[1].item_id not in {item.item_id for item in core.waiting()}

    @invariant()
    def every_item_id_is_unique_across_channels(self) -> None:
        all_ids = [i for hist in self.history for i in hist.queued_ids]
        assert len(all_ids) == len(set(all_ids))


BatchingMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_batching_core_against_model = BatchingMachine.TestCase
