"""Stateful test of the failure and flood rules of ChannelCore (retries, processing timeout, dead letters,
max_queued with its overflow policies, max_age) against a plain model, interleaved with cancel, front, clear,
stop, configure, pause and a restart from the core's own waiting items and dead letters.

One fake clock: the core's monotonic ``now`` and its wall clock (``WALL0 + now``) move together. Times and
settings are multiples of 1/4, and the retry delay's random draw is a fraction in {0, 1/2, 1} of its ceiling
chosen by a rule, so every deadline is exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors.batching import (
    ChannelCore,
    Deliver,
    DeliveryCancelled,
    DeliveryFinished,
    Effect,
    ItemDead,
    MessageRejected,
    MessagesDropped,
    QueueCleared,
)
from protocol.values import MAX_RETRY_DELAY, BatchSettings, QueuedMessage, QueueItem, payload_messages

CHANNEL = "fail"
WALL0 = 1_700_000_000.0
Q = 0.25

failure_settings = st.builds(
    BatchSettings,
    window=st.sampled_from([0.0, 0.5, 1.0]),
    max_batch_size=st.integers(1, 3),
    batching=st.sampled_from([True, True, False]),
    dedupe_ttl=st.just(0.0),
    max_attempts=st.integers(1, 3),
    retry_backoff=st.sampled_from([0.0, 0.5, 1.0]),
    processing_timeout=st.sampled_from([None, None, 1.0, 2.0]),
    max_queued=st.integers(1, 5),
    overflow=st.sampled_from(["reject", "drop_oldest", "drop_newest"]),
    max_age=st.sampled_from([None, None, 1.0, 3.0]),
)


def texts(item: QueueItem) -> tuple[str, ...]:
    return tuple(m.text for m in payload_messages(item.payload))


@dataclass
class MItem:
    texts: list[str]
    attempt: int = 1
    first_failed: float = 0.0


@dataclass
class Model:
    """The failure rules written plainly (batching without max_wait, hold or busy policies)."""

    settings: BatchSettings
    queued_at: dict[str, float]
    attached: bool = False
    paused: bool = False
    open: list[str] = field(default_factory=list)
    open_cap: int = 1
    open_window: float = 0.0
    open_last: float = 0.0
    fifo: list[MItem] = field(default_factory=list)
    retry: MItem | None = None
    retry_due: float | None = None
    flight: tuple[int, MItem] | None = None
    flight_due: float | None = None
    last_id: int = 0
    dead: list[tuple[tuple[str, ...], int, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("attempts", "retries", "timeouts", "dead_lettered", "dropped_stale", "dropped_overflow",
         "rejected_full", "failed", "cancelled", "processed"), 0))
    delivered: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    gone: dict[str, str] = field(default_factory=dict)  # text -> why it left for good

    def waiting(self) -> int:
        return sum(len(i.texts) for i in self.fifo) + len(self.open)

    def deadline(self) -> float | None:
        dues = [d for d in (self.retry_due, self.flight_due) if d is not None]
        if self.open:
            dues.append(self.open_last + self.open_window)
        return min(dues) if dues else None

    def enqueue(self, text: str, now: float) -> str:
        s = self.settings
        if self.waiting() >= s.max_queued:
            if s.overflow == "reject":
                self.counts["rejected_full"] += 1
                self.gone[text] = "rejected"
                return "rejected"
            self.counts["dropped_overflow"] += 1
            if s.overflow == "drop_newest":
                self.gone[text] = "overflow"
                return "dropped"
            if self.fifo:
                head = self.fifo[0]
                self.gone[head.texts.pop(0)] = "overflow"
                if not head.texts:
                    self.fifo.pop(0)
                    if head is self.retry:
                        self.retry = self.retry_due = None
            else:
                self.gone[self.open.pop(0)] = "overflow"
        if self.open and now >= self.open_last + self.open_window:
            self.close()  # a refused message closes nothing; an accepted one first closes an overdue batch
        if not s.batching:
            if self.open:
                self.close()
            self.fifo.append(MItem([text]))
        else:
            if not self.open:
                self.open_cap, self.open_window = s.max_batch_size, s.window
            self.open.append(text)
            self.open_last = now
            if len(self.open) >= self.open_cap:
                self.close()
        self.deliver(now)
        return "ok"

    def close(self) -> None:
        self.fifo.append(MItem(self.open))
        self.open = []

    def deliver(self, now: float) -> None:
        if self.paused or not self.attached or self.flight is not None or self.retry is not None:
            return
        s = self.settings
        while self.fifo:
            head = self.fifo.pop(0)
            if s.max_age is not None:
                cutoff = WALL0 + now - s.max_age
                stale = [t for t in head.texts if self.queued_at[t] < cutoff]
                for t in stale:
                    self.gone[t] = "stale"
                self.counts["dropped_stale"] += len(stale)
                head.texts = [t for t in head.texts if t not in stale]
                if not head.texts:
                    continue
            self.last_id += 1
            self.flight = (self.last_id, head)
            self.counts["attempts"] += 1
            self.counts["retries"] += head.attempt > 1
            self.flight_due = None if s.processing_timeout is None else now + s.processing_timeout
            self.delivered.append((tuple(head.texts), head.attempt))
            return

    def failed_attempt(self, item: MItem, error: str, now: float, jitter: float) -> None:
        s = self.settings
        first = item.first_failed or WALL0 + now
        if item.attempt < s.max_attempts:
            again = MItem(item.texts, item.attempt + 1, first)
            delay = jitter * min(MAX_RETRY_DELAY, s.retry_backoff * 2 ** (item.attempt - 1))
            self.fifo.insert(0, again)
            if delay > 0:
                self.retry, self.retry_due = again, now + delay
        elif s.max_attempts > 1:
            self.dead.append((tuple(item.texts), item.attempt, error))
            self.counts["dead_lettered"] += 1
            for t in item.texts:
                self.gone[t] = "dead"
        else:
            for t in item.texts:
                self.gone[t] = "failed"

    def finish(self, error: str | None, now: float, jitter: float) -> None:
        assert self.flight is not None
        item = self.flight[1]
        self.flight = None
        self.flight_due = None
        self.counts["processed"] += 1
        if error is None:
            for t in item.texts:
                self.gone[t] = "done"
        else:
            self.counts["failed"] += 1
            self.failed_attempt(item, error, now, jitter)
        self.deliver(now)

    def tick(self, now: float, jitter: float) -> None:
        if self.flight is not None and self.flight_due is not None and now >= self.flight_due:
            item = self.flight[1]
            self.flight = None
            self.flight_due = None
            self.counts["timeouts"] += 1
            self.counts["failed"] += 1
            self.failed_attempt(item, "timeout", now, jitter)
        if self.retry_due is not None and now >= self.retry_due:
            self.retry = self.retry_due = None
        if self.open and now >= self.open_last + self.open_window:
            self.close()
        self.deliver(now)

    def cancel(self) -> bool:
        if self.flight is None:
            return False
        for t in self.flight[1].texts:
            self.gone[t] = "cancelled"
        self.flight = None
        self.flight_due = None
        self.counts["cancelled"] += 1
        return True


class FailureMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.jitter = 1.0
        self.counter = itertools.count()
        self.queued_at: dict[str, float] = {}
        self.ids = itertools.count(1)
        self.enqueued: list[str] = []

    def new_core(self, s: BatchSettings, failures: tuple[int, ...] = ()) -> ChannelCore:
        return ChannelCore(
            CHANNEL,
            s,
            new_id=lambda: f"i{next(self.ids)}",
            failures=failures,
            wall=lambda: WALL0 + self.now,
            uniform=lambda a, b: a + (b - a) * self.jitter,
        )

    @initialize(s=failure_settings)
    def start(self, s: BatchSettings) -> None:
        self.core = self.new_core(s)
        self.model = Model(s, self.queued_at)

    def check(self, effects: list[Effect]) -> None:
        delivered = [(texts(e.item), e.item.attempt) for e in effects if isinstance(e, Deliver)]
        assert len(delivered) <= 1
        if delivered:
            assert self.model.delivered[-1] == delivered[0]
        for e in effects:
            if isinstance(e, Deliver) and e.item.attempt > 1:
                event("retry delivered")
            if isinstance(e, MessagesDropped):
                event(f"dropped: {e.rule}")
            if isinstance(e, DeliveryCancelled):
                event("cancelled (timeout)")
            if isinstance(e, ItemDead):
                event("dead letter")
                assert e.letter.item is not None and e.letter.attempts == e.letter.item.attempt
                assert e.letter.first_failed_at <= e.letter.last_failed_at == WALL0 + self.now

    # -- rules --------------------------------------------------------------------------------------------

    @rule(age=st.sampled_from([0.0, 0.0, 2.0, 5.0]))
    def enqueue(self, age: float) -> None:
        text = f"m{next(self.counter)}"
        self.enqueued.append(text)
        self.queued_at[text] = WALL0 + self.now - age
        msg = QueuedMessage(
            "t", CHANNEL, "u", "U", text, queued_at=datetime.fromtimestamp(WALL0 + self.now - age, timezone.utc)
        )
        effects = self.core.enqueue(msg, self.now)
        outcome = self.model.enqueue(text, self.now)
        rejected = [e for e in effects if isinstance(e, MessageRejected)]
        assert (outcome == "rejected") == bool(rejected)
        if rejected:
            event("rejected: QueueFull")
            assert rejected[0].error == "QueueFull"
        if outcome == "dropped":
            assert effects == [MessagesDropped((msg,), "overflow")]
        self.check(effects)

    @rule(dt=st.integers(0, 8).map(lambda q: q * Q), timer=st.booleans())
    def advance(self, dt: float, timer: bool) -> None:
        self.now += dt
        if timer:
            self.tick()

    @precondition(lambda self: self.core.deadline is not None)
    @rule()
    def advance_to_the_deadline(self) -> None:
        deadline = self.core.deadline
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.tick()

    @rule()
    def tick(self) -> None:
        self.model.tick(self.now, self.jitter)
        self.check(self.core.tick(self.now))

    @rule(jitter=st.sampled_from([0.0, 0.5, 1.0]))
    def set_jitter(self, jitter: float) -> None:
        self.jitter = jitter

    @rule()
    def attach(self) -> None:
        self.model.attached = True
        self.model.deliver(self.now)
        self.check(self.core.attach(self.now))

    @precondition(lambda self: self.core.in_flight is not None)
    @rule(error=st.none() | st.just("boom"))
    def finish(self, error: str | None) -> None:
        flight = self.core.in_flight
        assert flight is not None
        self.model.finish(error, self.now, self.jitter)
        effects = self.core.finish(flight[0], error, self.now)
        assert isinstance(effects[0], DeliveryFinished) and effects[0].error == error
        self.check(effects)

    @rule()
    def cancel(self) -> None:
        expected = self.model.cancel()
        self.model.deliver(self.now)
        cancelled, effects = self.core.cancel_current(self.now)
        assert cancelled is expected
        self.check(effects)

    @rule()
    def front(self) -> None:
        text = f"f{next(self.counter)}"
        self.enqueued.append(text)
        self.queued_at[text] = WALL0 + self.now
        msg = QueuedMessage(
            "t", CHANNEL, "u", "U", text, queued_at=datetime.fromtimestamp(WALL0 + self.now, timezone.utc)
        )
        self.model.fifo.insert(0, MItem([text]))
        self.model.deliver(self.now)
        self.check(self.core.enqueue_front(msg, self.now))

    @rule()
    def clear(self) -> None:
        for item in self.model.fifo:
            for t in item.texts:
                self.model.gone[t] = "cleared"
        expected = len(self.model.fifo)
        self.model.fifo = []
        self.model.retry = self.model.retry_due = None
        count, effects = self.core.clear()
        assert count == expected
        assert all(isinstance(e, QueueCleared) for e in effects)

    @rule()
    def stop(self) -> None:
        expected = self.model.cancel()
        self.model.attached = False
        cancelled, effects = self.core.stop()
        assert cancelled is expected
        assert all(isinstance(e, DeliveryCancelled) for e in effects)

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        if paused:
            self.model.paused = True
            self.core.pause()
        else:
            self.model.paused = False
            self.model.deliver(self.now)
            self.check(self.core.resume(self.now)[1])

    @rule(s=failure_settings)
    def configure(self, s: BatchSettings) -> None:
        self.model.settings = s
        self.core.configure(s)

    @rule()
    def replay(self) -> None:
        model = self.model
        expected = len(model.dead)
        for texts_, _, _ in model.dead:
            model.fifo.append(MItem(list(texts_)))
            for t in texts_:
                del model.gone[t]
        model.dead = []
        model.deliver(self.now)
        count, effects = self.core.replay_dead_letters(self.now)
        assert count == expected
        self.check(effects)
        assert self.core.dead_letters() == ()

    @rule()
    def purge(self) -> None:
        expected = len(self.model.dead)
        for texts_, _, _ in self.model.dead:
            for t in texts_:
                self.model.gone[t] = "purged"
        self.model.dead = []
        assert self.core.purge_dead_letters()[0] == expected

    @precondition(lambda self: self.core.in_flight is None and self.core.open_batch is None)
    @rule()
    def restart(self) -> None:
        """A fresh core resumes from the old one's waiting items, dead letters and counts; a retry waiting
        out its backoff is delivered at once (the stored queue keeps no backoff), the processor re-attaches."""
        old = self.core
        stats = old.statistics()
        failures = (stats.attempts, stats.retries, stats.timeouts, stats.dead_lettered,
                    stats.dead_letters_dropped, stats.dropped_stale, stats.dropped_overflow, stats.rejected_full)
        self.core = self.new_core(old.settings, failures)
        self.core.restore(old.waiting(), [], self.now)
        self.core.restore_dead_letters(old.dead_letters())
        self.model.retry = self.model.retry_due = None
        self.model.counts.update(processed=0, cancelled=0, failed=0)
        self.model.last_id = 0  # a fresh core numbers its deliveries from 1
        self.model.paused = False
        if self.model.attached:
            self.model.deliver(self.now)
            self.check(self.core.attach(self.now))

    # -- invariants ---------------------------------------------------------------------------------------

    @invariant()
    def core_matches_the_model(self) -> None:
        core, model = self.core, self.model
        assert [list(texts(i)) for i in core.waiting()] == [i.texts for i in model.fifo]
        assert [i.attempt for i in core.waiting()] == [i.attempt for i in model.fifo]
        open_batch = core.open_batch
        assert (list(m.text for m in open_batch.messages) if open_batch else []) == model.open
        flight = core.in_flight
        assert (None if flight is None else (flight[0], texts(flight[1]), flight[1].attempt)) == (
            None if model.flight is None else (model.flight[0], tuple(model.flight[1].texts), model.flight[1].attempt)
        )
        assert core.deadline == model.deadline()
        assert core.retry_due == model.retry_due
        assert core.waiting_messages == model.waiting()
        assert [(texts(d.item), d.attempts, d.reason) for d in core.dead_letters() if d.item] == [
            (t, a, "boom" if e == "boom" else d.reason) for (t, a, e), d in zip(model.dead, core.dead_letters())
        ]
        stats = core.statistics()
        for name in ("attempts", "retries", "timeouts", "dead_lettered", "dropped_stale", "dropped_overflow",
                     "rejected_full"):
            assert getattr(stats, name) == model.counts[name], name
        assert stats.dead_letters == len(model.dead)

    @invariant()
    def every_message_is_somewhere_or_accounted_for(self) -> None:
        """Nothing disappears: each message is waiting, open, in flight, a dead letter, or left for a
        counted reason (done, failed with max_attempts 1, cancelled, cleared, purged, dropped, rejected)."""
        core = self.core
        here = [m.text for i in core.waiting() for m in payload_messages(i.payload)]
        if core.open_batch is not None:
            here += [m.text for m in core.open_batch.messages]
        if core.in_flight is not None:
            here += list(texts(core.in_flight[1]))
        here += [t for d in core.dead_letters() if d.item for t in texts(d.item)]
        assert len(here) == len(set(here))
        gone = self.model.gone
        assert set(here) | {t for t, why in gone.items() if why != "dead"} == set(self.enqueued)
        assert not set(here) & {t for t, why in gone.items() if why != "dead"}


FailureMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_failure_rules_against_model = FailureMachine.TestCase
