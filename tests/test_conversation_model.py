"""Stateful test of the conversation rules: the batching machine of ``test_batching_model`` with platform
message ids, duplicates, edits, retractions, busy policies, take-waiting and author boundaries added, checked
against the same plain model extended with each rule.

The model predicts every effect (items carry their ``interrupted`` flag), the waiting items, the open batch,
the deadline and the statistics; the history checks that hold whatever the model says are restated for what
the new rules allow: nothing is lost except what was cleared, retracted, taken, dropped as a duplicate or
rejected; no message is in two places; every batch keeps its cap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule
from test_batching_model import (
    CHANNELS,
    QUARTER,
    BatchingMachine,
    History,
    ModelBatch,
    ModelChannel,
    ModelItem,
    channel_index,
    counting_ids,
    quarters,
    texts_of,
    windows,
)

from actors.batching import (
    ChannelCore,
    Deliver,
    DeliveryCancelled,
    DeliveryFinished,
    Effect,
    IdRemembered,
    ItemQueued,
    MessageAdded,
    MessageRejected,
    QueueCleared,
    WaitingChanged,
)
from protocol.values import BatchSettings, ChannelStatistics, FlushReason, QueuedMessage, payload_messages

USERS = ("ann", "bob")

conversation_settings = st.builds(
    BatchSettings,
    window=windows,
    max_batch_size=st.integers(1, 5),
    max_wait=st.none() | quarters(2, 16).map(lambda q: q * QUARTER),
    batching=st.sampled_from([True, True, True, False]),
    busy_policy=st.sampled_from(["queue", "collect", "interrupt", "reject"]),
    split_on_author=st.booleans(),
    dedupe_ttl=st.sampled_from([0.0, 1.0, 4.0, 600.0]),
)

Out = list[tuple[Any, ...]]


def normalize(effect: Effect) -> tuple[Any, ...]:
    if isinstance(effect, MessageAdded):
        return ("added", effect.message.text, effect.batch_size)
    if isinstance(effect, ItemQueued):
        return ("queued", texts_of(effect.item), effect.reason, effect.lateness, effect.item.interrupted)
    if isinstance(effect, Deliver):
        return ("deliver", texts_of(effect.item), effect.delivery_id, effect.reason, effect.lateness,
                effect.item.interrupted)
    if isinstance(effect, DeliveryCancelled):
        return ("cancelled", texts_of(effect.item), effect.delivery_id)
    if isinstance(effect, DeliveryFinished):
        return ("finished", texts_of(effect.item), effect.delivery_id, effect.error)
    if isinstance(effect, QueueCleared):
        return ("cleared", tuple(texts_of(item) for item in effect.items))
    if isinstance(effect, MessageRejected):
        return ("rejected", effect.message.text)
    if isinstance(effect, WaitingChanged):
        return ("changed", tuple(texts_of(i) for i in effect.items), tuple(m.text for m in effect.open_messages))
    raise AssertionError(f"unknown effect {effect!r}")


@dataclass
class ConvItem(ModelItem):
    interrupted: bool = False


@dataclass
class ConvBatch(ModelBatch):
    carried: int = 0


class ConvModel(ModelChannel):
    """The plain model, with each conversation rule written out."""

    def __init__(self, settings: BatchSettings) -> None:
        super().__init__(settings)
        self.ids: dict[str, tuple[str, str]] = {}  # text -> (message id, user id)
        self.seen: dict[str, float] = {}  # message id -> accepted at, oldest first
        self.duplicates = self.edits = self.retractions = self.interruptions = self.rejections = 0

    # -- enqueue --------------------------------------------------------------------------------------------

    def conv_enqueue(self, text: str, mid: str, user: str, now: float) -> Out:
        s = self.settings
        self.ids[text] = (mid, user)
        if mid and s.dedupe_ttl > 0:
            self.seen = {k: at for k, at in self.seen.items() if now - at < s.dedupe_ttl}
            if mid in self.seen:
                self.duplicates += 1
                return [("duplicate",)]
        busy = self.in_flight is not None
        if busy and s.busy_policy == "reject":
            self.rejections += 1
            return [("rejected", text)]
        if mid and s.dedupe_ttl > 0:
            self.seen.pop(mid, None)
            self.seen[mid] = now
            while len(self.seen) > 1000:
                del self.seen[next(iter(self.seen))]
        out: Out = []
        if self.open is not None and self.due(now):
            self._close(self.open.timed_reason(), now, out)
        carried: tuple[str, ...] = ()
        if busy and s.busy_policy == "interrupt":
            assert self.in_flight is not None
            carried = self.in_flight[1].texts
            self._cancel(out)
            self.interruptions += 1
        if not s.batching:
            if self.open is not None:
                self._close(FlushReason.SETTINGS, now, out)
            self._push(ConvItem(carried + (text,), FlushReason.UNBATCHED, 0.0, bool(carried)), out)
            self._deliver_next(out)
            return out
        if carried:
            if self.open is None:
                self.open = ConvBatch(s, now, now)
            assert isinstance(self.open, ConvBatch)
            self.open.texts[:0] = carried
            self.open.carried += len(carried)
            out.extend(("added", t, len(self.open.texts)) for t in carried)
        if self.open is not None and self.open.settings.split_on_author and self.open.texts:
            if self.ids[self.open.texts[-1]][1] != user:
                self._close(FlushReason.AUTHOR, now, out)
        if self.open is None:
            self.open = ConvBatch(s, now, now)
        self.open.texts.append(text)
        if self.open.held:
            self.open.held = False
            self.open.first_at = now
        self.open.last_at = now
        out.append(("added", text, len(self.open.texts)))
        while self.open is not None and len(self.open.texts) >= self.open.settings.max_batch_size:
            cap = self.open.settings.max_batch_size
            if len(self.open.texts) == cap:
                self._close(FlushReason.FULL, now, out)
                break
            assert isinstance(self.open, ConvBatch)
            head, self.open.texts = self.open.texts[:cap], self.open.texts[cap:]
            self._push(ConvItem(tuple(head), FlushReason.FULL, 0.0, self.open.carried > 0), out)
            self.open.carried = max(0, self.open.carried - cap)
        self._deliver_next(out)
        return out

    # -- time and the processor -----------------------------------------------------------------------------

    def collecting(self) -> bool:
        return self.open is not None and self.open.settings.busy_policy == "collect" and self.in_flight is not None

    def due(self, now: float) -> bool:
        assert self.open is not None
        return not self.open.held and not self.collecting() and now >= self.open.deadline()

    def deadline(self) -> float | None:
        return None if self.collecting() else super().deadline()

    def tick(self, now: float) -> Out:
        out: Out = []
        if self.open is not None and self.due(now):
            self._close(self.open.timed_reason(), now, out)
            self._deliver_next(out)
        return out

    def conv_finish(self, delivery_id: int, error: str | None, now: float) -> Out:
        if self.in_flight is None or self.in_flight[0] != delivery_id:
            return []
        item = self.in_flight[1]
        self.in_flight = None
        self.processed += 1
        self.failed += error is not None
        out: Out = [("finished", item.texts, delivery_id, error)]
        self.close_collected(now, out)
        self._deliver_next(out)
        return out

    def conv_cancel(self, now: float) -> tuple[bool, Out]:
        out: Out = []
        cancelled = self._cancel(out)
        if cancelled:
            self.close_collected(now, out)
        self._deliver_next(out)
        return cancelled, out

    def close_collected(self, now: float, out: Out) -> None:
        if self.open is not None and self.open.settings.busy_policy == "collect":
            self._close(FlushReason.COLLECTED, now, out)

    def enqueue_front(self, texts: tuple[str, ...]) -> Out:
        for text in texts:
            self.ids.setdefault(text, ("", "u"))
        item = ConvItem(texts, FlushReason.FRONT, 0.0)
        self.fifo.appendleft(item)
        out: Out = [("queued", texts, FlushReason.FRONT, 0.0, False)]
        self._deliver_next(out)
        return out

    # -- edit, retract, take --------------------------------------------------------------------------------

    def find(self, mid: str) -> tuple[ConvItem | None, int] | None:
        for item in self.fifo:
            for index, text in enumerate(item.texts):
                if self.ids[text][0] == mid:
                    assert isinstance(item, ConvItem)
                    return item, index
        if self.open is not None:
            for index, text in enumerate(self.open.texts):
                if self.ids[text][0] == mid:
                    return None, index
        return None

    def changed(self) -> tuple[Any, ...]:
        return ("changed", tuple(i.texts for i in self.fifo), tuple(self.open.texts) if self.open else ())

    def edit(self, mid: str, text: str, user: str) -> tuple[bool, Out]:
        found = self.find(mid)
        if found is None:
            return False, []
        self.ids[text] = (mid, user)
        item, index = found
        if item is None:
            assert self.open is not None
            self.open.texts[index] = text
        else:
            item.texts = item.texts[:index] + (text,) + item.texts[index + 1 :]
        self.edits += 1
        return True, [self.changed()]

    def retract(self, mid: str) -> tuple[bool, Out]:
        found = self.find(mid)
        if found is None:
            return False, []
        item, index = found
        if item is None:
            assert isinstance(self.open, ConvBatch)
            del self.open.texts[index]
            if index < self.open.carried:
                self.open.carried -= 1
            if not self.open.texts:
                self.open = None
        else:
            item.texts = item.texts[:index] + item.texts[index + 1 :]
            if not item.texts:
                self.fifo.remove(item)
        self.retractions += 1
        return True, [self.changed()]

    def take(self) -> tuple[list[str], Out]:
        taken = [t for item in self.fifo for t in item.texts] + (list(self.open.texts) if self.open else [])
        if not taken:
            return [], []
        self.fifo.clear()
        self.open = None
        return taken, [self.changed()]

    # -- shared transitions, with the interrupted flag ------------------------------------------------------

    def _close(self, reason: FlushReason, now: float, out: Out) -> None:
        assert self.open is not None
        on_time = reason in (FlushReason.FULL, FlushReason.FLUSHED, FlushReason.COLLECTED, FlushReason.AUTHOR)
        on_time = on_time or self.open.held
        late = 0.0 if on_time else max(0.0, now - self.open.deadline())
        carried = isinstance(self.open, ConvBatch) and self.open.carried > 0
        self._push(ConvItem(tuple(self.open.texts), reason, late, carried), out)
        self.open = None

    def _push(self, item: ModelItem, out: Out) -> None:
        assert isinstance(item, ConvItem)
        self.fifo.append(item)
        out.append(("queued", item.texts, item.reason, item.lateness, item.interrupted))

    def _deliver_next(self, out: Out) -> None:
        if not self.attached or self.in_flight is not None or not self.fifo:
            return
        item = self.fifo.popleft()
        assert isinstance(item, ConvItem)
        self.last_delivery_id += 1
        self.in_flight = (self.last_delivery_id, item)
        out.append(("deliver", item.texts, self.last_delivery_id, item.reason, item.lateness, item.interrupted))


class ConversationMachine(BatchingMachine):
    """Channels under every conversation setting; message ids drawn from a small pool so that duplicates,
    edits and retractions hit."""

    def __init__(self) -> None:
        super().__init__()
        self.mids = itertools.count()
        self.restarts = itertools.count(1)
        self.gone: list[set[str]] = [set() for _ in CHANNELS]  # retracted, taken, replaced by an edit
        self.dropped: list[set[str]] = [set() for _ in CHANNELS]  # duplicates and rejected

    @rule(initial=st.lists(conversation_settings, min_size=len(CHANNELS), max_size=len(CHANNELS)))
    def reset_settings(self, initial: list[BatchSettings]) -> None:
        for core, model, new in zip(self.cores, self.models, initial):
            core.configure(new)
            model.settings = new

    @initialize(initial=st.lists(conversation_settings, min_size=len(CHANNELS), max_size=len(CHANNELS)))
    def create_channels(self, initial: list[BatchSettings]) -> None:
        for channel, channel_settings in zip(CHANNELS, initial):
            self.cores.append(ChannelCore(channel, channel_settings, new_id=counting_ids(channel)))
            self.models.append(ConvModel(channel_settings))
            self.history.append(History())

    def apply(self, ch: int, effects: Sequence[Effect], expected: list[tuple[Any, ...]]) -> None:
        expected = [e for e in expected if e != ("duplicate",)]
        assert [normalize(e) for e in effects] == expected
        assert sum(isinstance(e, Deliver) for e in effects) <= 1
        plain = [e for e in effects if not isinstance(e, (MessageRejected, WaitingChanged))]
        super().apply(ch, plain, [normalize_plain(e) for e in plain])

    def check_item_shape(self, ch: int, item: Any) -> None:
        messages = payload_messages(item.payload)
        assert messages and all(m.channel_id == CHANNELS[ch] for m in messages)
        texts = [m.text for m in messages]
        hist = self.history[ch]
        if texts[0] not in hist.front_texts and not item.interrupted:
            assert len(texts) <= hist.settings_at[texts[0]].max_batch_size

    def conv_message(self, ch: int, text: str, mid: str, user: str) -> QueuedMessage:
        return QueuedMessage("test", CHANNELS[ch], user, user.title(), text, message_id=mid)

    def enqueue_one(self, ch: int, mid: str | None = None, user: str = "ann") -> None:
        text = self.new_text(ch)
        if mid is None:
            mid = f"x{next(self.mids)}"
        hist = self.history[ch]
        hist.enqueued.append(text)
        hist.enqueued_at[text] = self.now
        hist.settings_at[text] = self.cores[ch].settings
        model = self.models[ch]
        assert isinstance(model, ConvModel)
        expected = model.conv_enqueue(text, mid, user, self.now)
        if expected and expected[0][0] in ("duplicate", "rejected"):
            self.dropped[ch].add(text)
            event(f"message {expected[0][0]}")
        if any(e[0] == "cancelled" for e in expected):
            event("item interrupted")
        settings_now = self.cores[ch].settings
        effects = self.cores[ch].enqueue(self.conv_message(ch, text, mid, user), self.now)
        remembered = [e for e in effects if isinstance(e, IdRemembered)]
        accepted = not (expected and expected[0][0] in ("duplicate", "rejected"))
        assert remembered == ([IdRemembered(mid, self.now)] if mid and settings_now.dedupe_ttl > 0 and accepted else [])
        self.apply(ch, [e for e in effects if not isinstance(e, IdRemembered)], expected)

    @rule(ch=channel_index, reuse=st.integers(0, 6), user=st.sampled_from(USERS))
    def enqueue_with_an_id(self, ch: int, reuse: int, user: str) -> None:
        """Ids from a small pool: a retried webhook, or the id of a message still waiting."""
        self.enqueue_one(ch, f"m{reuse}" if reuse < 6 else "", user)

    @rule(ch=channel_index, slot=st.integers(0, 6), user=st.sampled_from(USERS))
    def edit(self, ch: int, slot: int, user: str) -> None:
        model = self.models[ch]
        assert isinstance(model, ConvModel)
        mid = f"m{slot}"
        text = self.new_text(ch) + "~edited"
        before = model.find(mid)
        old = None
        if before is not None:
            item, index = before
            old = item.texts[index] if item is not None else model.open.texts[index]  # type: ignore[union-attr]
        edited, effects = self.cores[ch].edit(self.conv_message(ch, text, mid, user))
        expected_edited, expected = model.edit(mid, text, user)
        assert edited is expected_edited is (before is not None)
        event(f"edit {'hit' if edited else 'missed'}")
        self.apply(ch, effects, expected)
        if edited:
            assert old is not None
            self.gone[ch].add(old)
            hist = self.history[ch]
            hist.settings_at[text] = hist.settings_at.get(old, self.cores[ch].settings)
            hist.enqueued_at[text] = hist.enqueued_at.get(old, self.now)
            hist.enqueued = [text if t == old else t for t in hist.enqueued]
            hist.front_texts = {text if t == old else t for t in hist.front_texts}

    @rule(ch=channel_index, slot=st.integers(0, 6))
    def retract(self, ch: int, slot: int) -> None:
        model = self.models[ch]
        assert isinstance(model, ConvModel)
        found = model.find(f"m{slot}")
        before = self.waiting_texts(ch)
        retracted, effects = self.cores[ch].retract(CHANNELS[ch], f"m{slot}")
        expected_retracted, expected = model.retract(f"m{slot}")
        assert retracted is expected_retracted is (found is not None)
        event(f"retract {'hit' if retracted else 'missed'}")
        self.apply(ch, effects, expected)
        after = self.waiting_texts(ch)
        assert len(before - after) == (1 if retracted else 0)
        self.gone[ch].update(before - after)

    def waiting_texts(self, ch: int) -> set[str]:
        core = self.cores[ch]
        texts = {t for item in core.waiting() for t in texts_of(item)}
        return texts | ({m.text for m in core.open_batch.messages} if core.open_batch else set())

    @rule(ch=channel_index)
    def take_waiting(self, ch: int) -> None:
        model = self.models[ch]
        assert isinstance(model, ConvModel)
        taken, effects = self.cores[ch].take_waiting()
        expected_taken, expected = model.take()
        assert [m.text for m in taken] == expected_taken
        self.apply(ch, effects, expected)
        self.gone[ch].update(expected_taken)

    @rule(ch=channel_index)
    def flush(self, ch: int) -> None:
        model = self.models[ch]
        flushed, effects = self.cores[ch].flush(self.now)
        out: Out = []
        if model.open is not None:
            model._close(FlushReason.FLUSHED, self.now, out)
            model._deliver_next(out)
        assert flushed is bool(out)
        self.apply(ch, effects, out)

    @rule(ch=channel_index)
    def restart(self, ch: int) -> None:
        """A new core from the stored state: waiting items and the open batch (which keeps its times);
        the remembered ids come along, the counters start again."""
        core, model = self.cores[ch], self.models[ch]
        assert isinstance(model, ConvModel)
        if core.in_flight is not None:
            return  # a restart redelivers the item in flight: covered by the persistence tests
        opened = core.open_batch
        open_messages = [(m, model.open.last_at) for m in opened.messages] if opened and model.open else []
        if open_messages:
            return  # the open batch restores with one arrival time per message: the plain model keeps two
        fresh = ChannelCore(CHANNELS[ch], core.settings, new_id=counting_ids(f"{CHANNELS[ch]}'{next(self.restarts)}"))
        fresh.remember_ids(core.remembered_ids(self.now), self.now)
        assert fresh.restore(core.waiting(), [], self.now) == []
        if core.state.value != "detached":
            fresh.attach()
        self.cores[ch] = fresh
        replacement = ConvModel(model.settings)
        replacement.ids = model.ids
        replacement.seen = {k: at for k, at in model.seen.items() if now_within(self.now, at, model.settings)}
        replacement.attached = model.attached
        replacement.fifo.extend(ConvItem(i.texts, FlushReason.RESTORED, 0.0, getattr(i, "interrupted", False))
                                for i in model.fifo)
        self.models[ch] = replacement
        self.history[ch].in_flight = None

    # -- overridden rules: the processor's answers close a collecting batch ---------------------------------

    @precondition(lambda self: any(core.in_flight is not None for core in self.cores))
    @rule(data=st.data(), error=st.none() | st.sampled_from(["boom", ""]))
    def finish_current(self, data: st.DataObject, error: str | None) -> None:
        ch = data.draw(st.sampled_from([i for i, c in enumerate(self.cores) if c.in_flight is not None]))
        flight = self.cores[ch].in_flight
        assert flight is not None
        model = self.models[ch]
        assert isinstance(model, ConvModel)
        expected = model.conv_finish(flight[0], error, self.now)
        self.apply(ch, self.cores[ch].finish(flight[0], error, self.now), expected)

    @rule(ch=channel_index)
    def cancel_current(self, ch: int) -> None:
        model = self.models[ch]
        assert isinstance(model, ConvModel)
        cancelled, effects = self.cores[ch].cancel_current(self.now)
        expected_cancelled, expected = model.conv_cancel(self.now)
        assert cancelled is expected_cancelled
        self.apply(ch, effects, expected)

    # -- invariants, restated for the conversation rules ----------------------------------------------------

    @invariant()
    def statistics_equal_the_model_counts(self) -> None:
        for core, model in zip(self.cores, self.models):
            assert isinstance(model, ConvModel)
            assert core.statistics() == ChannelStatistics(
                channel_id=core.channel_id,
                queued=len(model.fifo),
                open_batch_size=len(model.open.texts) if model.open else 0,
                in_flight=model.in_flight is not None,
                processed=model.processed,
                cancelled=model.cancelled,
                failed=model.failed,
                has_processor=model.attached,
                duplicates=model.duplicates,
                edits=model.edits,
                retractions=model.retractions,
                interruptions=model.interruptions,
                rejections=model.rejections,
                attempts=model.last_delivery_id,
            )

    @invariant()
    def order_is_kept_and_nothing_is_lost_or_duplicated(self) -> None:
        """Every accepted message is delivered, waiting, open or accounted for (cleared, retracted, taken,
        dropped); none is in two places. Order is kept save for the messages an interrupt gave back."""
        for ch, (core, hist) in enumerate(zip(self.cores, self.history)):
            seen: list[str] = []
            for item in hist.delivered:
                seen.extend(texts_of(item))
            for item in core.waiting():
                seen.extend(texts_of(item))
            if core.open_batch is not None:
                seen.extend(m.text for m in core.open_batch.messages)
            flight = core.in_flight
            current = set(texts_of(flight[1])) if flight else set()
            live = [t for t in dict.fromkeys(seen)]
            assert set(live) >= {t for t in current}
            missing = (set(hist.enqueued) | hist.front_texts) - set(seen)
            assert missing <= hist.cleared_texts | self.gone[ch] | self.dropped[ch], missing
            waiting = [t for item in core.waiting() for t in texts_of(item)]
            waiting += [m.text for m in core.open_batch.messages] if core.open_batch else []
            assert len(waiting) == len(set(waiting)), "a message is in two places"

    @invariant()
    def the_open_batch_keeps_its_cap_window_and_max_wait(self) -> None:
        for ch, core in enumerate(self.cores):
            batch = core.open_batch
            if batch is not None:
                assert batch.size >= 1 and all(m.channel_id == CHANNELS[ch] for m in batch.messages)
                assert batch.size < 5  # every cap drawn is at most 5, and an open batch is below its own cap


def now_within(now: float, at: float, s: BatchSettings) -> bool:
    return s.dedupe_ttl > 0 and now - at < s.dedupe_ttl


def normalize_plain(effect: Effect) -> tuple[Any, ...]:
    from test_batching_model import normalize as base

    return base(effect)


ConversationMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_conversation_rules_against_model = ConversationMachine.TestCase
