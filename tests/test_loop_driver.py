"""The loop driver: the real actors, run on an asyncio loop, batch by the time each message was accepted.

The clock is a fake one, injected into the driver (and through it into the Supervisor, the channels and the
Timer) and into the event loop itself (its ``time()``), so a test decides when time passes and how far the
actors lag behind the producer; no test waits in real time.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.batching import ChannelCore, ItemQueued
from actors.loop_driver import LoopDriver, Output
from protocol.messages import BatchReady, ProcessingDone, StartProcessing
from protocol.values import BatchSettings, QueuedMessage, payload_messages

CHANNELS = ("a", "b", "c")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose timers follow the fake clock (the tests only ever yield with ``sleep(0)``)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._fake = clock

    def time(self) -> float:
        return self._fake.now


def run(clock: FakeClock, coro: Any) -> None:
    loop = FakeTimeLoop(clock)
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


@dataclass
class Delivered:
    items: dict[str, list[tuple[list[str], str]]] = field(default_factory=dict)
    count: int = 0


def message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u", "U", text)


async def start(clock: FakeClock, settings: BatchSettings, turn_seconds: float) -> tuple[LoopDriver, Delivered]:
    """A driver on this loop whose every channel delivers to it; each delivery is answered at once."""
    delivered = Delivered()
    holder: list[LoopDriver] = []

    def on_output(output: Output) -> None:
        if isinstance(output, BatchReady):
            texts = [m.text for m in payload_messages(output.item.payload)]
            delivered.items.setdefault(output.channel_id, []).append((texts, output.reason))
            delivered.count += len(texts)
            holder[0].tell(ProcessingDone(output.channel_id, output.delivery_id), output.reply_to)

    driver = LoopDriver(asyncio.get_running_loop(), on_output, settings, clock=clock, turn_seconds=turn_seconds)
    holder.append(driver)
    await driver.start()
    await driver.call(StartProcessing())
    return driver, delivered


def reference(
    sent: list[tuple[QueuedMessage, float]], settings: BatchSettings
) -> dict[str, list[tuple[list[str], str]]]:
    """What the pure core makes of the messages at their acceptance times, per channel."""
    cores: dict[str, ChannelCore] = {}
    items: dict[str, list[tuple[list[str], str]]] = {}
    effects = []
    for msg, at in sent:
        core = cores.setdefault(msg.channel_id, ChannelCore(msg.channel_id, settings, added_effects=False))
        effects += core.enqueue(msg, at)
    for core in cores.values():
        effects += core.tick(math.inf)
    for effect in effects:
        if isinstance(effect, ItemQueued):
            texts = [m.text for m in payload_messages(effect.item.payload)]
            items.setdefault(effect.item.channel_id, []).append((texts, effect.reason.value))
    return items


steps = st.lists(
    st.one_of(
        st.tuples(st.just("message"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("advance"), st.integers(0, 12).map(lambda q: q * 0.025)),
        st.tuples(st.just("yield"), st.integers(1, 3)),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    program=steps,
    window=st.sampled_from([0.0, 0.05, 0.1, 0.2]),
    cap=st.integers(1, 5),
    max_wait=st.sampled_from([None, 0.15, 0.3]),
    turn_seconds=st.sampled_from([0.0, 1.0]),
)
def test_batches_are_what_the_core_makes_of_the_acceptance_times_however_far_the_actors_lag(
    program: list[tuple[str, Any]], window: float, cap: int, max_wait: float | None, turn_seconds: float
) -> None:
    """The producer accepts messages while fake time passes; the actors run only when the test yields to the
    loop, a few sends per turn (``turn_seconds`` 0) or all of them: batches still close exactly where the
    pure core closes them given each message's acceptance time."""
    settings_ = BatchSettings(window=window, max_batch_size=cap, max_wait=max_wait)

    clock = FakeClock()

    async def main() -> None:
        driver, delivered = await start(clock, settings_, turn_seconds)
        sent: list[tuple[QueuedMessage, float]] = []
        try:
            for number, (step, arg) in enumerate(program):
                if step == "message":
                    msg = message(arg, f"{arg}{number}")
                    driver.enqueue(msg)
                    sent.append((msg, clock.now))
                elif step == "advance":
                    clock.now += arg
                else:
                    for _ in range(arg):
                        await asyncio.sleep(0)
            clock.now += 10.0  # every window and max_wait has passed
            for _ in range(10_000):
                if delivered.count == len(sent):
                    break
                await asyncio.sleep(0)
            assert delivered.count == len(sent)
            assert delivered.items == reference(sent, settings_)
        finally:
            driver.stop()

    run(clock, main())


def test_a_message_accepted_before_the_deadline_joins_the_batch_even_when_the_actors_see_it_after() -> None:
    """The timer is due when the actors get to run, but the second message was accepted before the
    deadline: it joins the first message's batch."""

    clock = FakeClock()

    async def main() -> None:
        driver, delivered = await start(clock, BatchSettings(window=0.1, max_batch_size=10), turn_seconds=1.0)
        try:
            driver.enqueue(message("a", "first"))
            await asyncio.sleep(0)  # the actors take it: the batch's deadline is 1000.1
            clock.now += 0.09
            driver.enqueue(message("a", "second"))  # accepted before the deadline, not handed over yet
            clock.now += 0.5  # long past the deadline when the actors run again
            for _ in range(100):
                await asyncio.sleep(0)
                if delivered.count == 2:
                    break
            assert delivered.items == {"a": [(["first", "second"], "window")]}
        finally:
            driver.stop()

    run(clock, main())


def test_sync_runs_what_was_handed_over_before_a_reader_reads() -> None:
    clock = FakeClock()

    async def main() -> None:
        driver, delivered = await start(clock, BatchSettings(window=1.0, max_batch_size=2), turn_seconds=1.0)
        try:
            driver.enqueue(message("a", "1"))
            driver.enqueue(message("a", "2"))  # a full batch
            assert delivered.count == 0  # nothing ran yet: no turn since
            driver.sync()
            assert delivered.items == {"a": [(["1", "2"], "full")]}
        finally:
            driver.stop()

    run(clock, main())


def test_a_tick_wakes_only_deadlines_up_to_its_own_time_even_when_the_timer_reads_it_later() -> None:
    """The Timer's Tick waits behind many sends (a slow turn); meanwhile a message for a channel whose deadline
    is after the Tick's time is accepted, before that deadline: it must join the batch, although the clock has
    passed the deadline by the time the Timer reads the Tick."""
    clock = FakeClock()

    async def main() -> None:
        driver, delivered = await start(clock, BatchSettings(window=0.1, max_batch_size=10), turn_seconds=0.0)
        try:
            driver.enqueue(message("a", "a1"))  # deadline 1000.1
            clock.now += 0.05
            driver.enqueue(message("b", "b1"))  # deadline 1000.15
            for _ in range(20):
                await asyncio.sleep(0)
            for number in range(100):  # many sends ahead of the Tick
                driver.enqueue(message(f"filler{number}", "x"))
            await asyncio.sleep(0)  # one short turn: the Supervisor sends ~200 messages to new channels
            clock.now = 1000.12  # a is due, b is not
            await asyncio.sleep(0)  # one short turn: the Tick (now 1000.12) is sent behind them and waits
            clock.now = 1000.14
            driver.enqueue(message("b", "b2"))  # before b's deadline
            clock.now = 1000.5
            for _ in range(1000):
                await asyncio.sleep(0)
                if delivered.count == 103:
                    break
            assert delivered.items["a"] == [(["a1"], "window")]
            assert delivered.items["b"] == [(["b1", "b2"], "window")]
        finally:
            driver.stop()

    run(clock, main())


@settings(max_examples=200, deadline=None)
@given(channels=st.lists(st.integers(0, 300), max_size=3000))
def test_accepted_messages_are_handed_over_grouped_by_channel_in_order_within_bounds(channels: list[int]) -> None:
    from actors import loop_driver

    accepted = [message(f"c{c}", str(number)) for number, c in enumerate(channels)]
    stamps = [float(number) for number in range(len(accepted))]
    chunks = list(loop_driver._chunks(accepted, stamps))
    flat = [(m, at) for messages, arrived in chunks for m, at in zip(messages, arrived)]
    assert sorted(flat, key=lambda pair: pair[1]) == list(zip(accepted, stamps))  # each once, with its stamp
    for channel in set(m.channel_id for m in accepted):  # each channel's in order
        times = [at for m, at in flat if m.channel_id == channel]
        assert times == sorted(times)
    for messages, _ in chunks:
        assert 0 < len(messages) <= loop_driver._CHUNK_MESSAGES
        assert len({m.channel_id for m in messages}) <= loop_driver._CHUNK_CHANNELS


def test_a_producer_still_adding_gets_one_hand_over_while_the_actors_keep_up() -> None:
    """A turn is put off while messages keep being accepted between loop steps (the actors have nothing left
    to run), until the producer pauses or the first of them is ``gather_seconds`` old: one hand-over, one
    Supervisor message, for all of them."""
    clock = FakeClock()

    async def main() -> None:
        driver, delivered = await start(clock, BatchSettings(window=1.0, max_batch_size=100), turn_seconds=1.0)
        handed: list[int] = []
        driver.on_accepted = handed.append
        try:
            for burst in range(5):
                driver.enqueue(message(CHANNELS[burst % 3], f"{burst}.0"))
                driver.enqueue(message(CHANNELS[burst % 3], f"{burst}.1"))
                await asyncio.sleep(0)  # a producer between two bursts (awaiting its input)
            await asyncio.sleep(0)
            assert handed == [10]  # handed over once the producer paused

            driver.enqueue(message("a", "x0"))
            driver.enqueue(message("a", "x1"))
            await asyncio.sleep(0)  # still adding: put off
            clock.now += 0.002  # the first is now older than gather_seconds (1 ms)
            driver.enqueue(message("a", "x2"))
            await asyncio.sleep(0)
            assert handed == [10, 3]
            clock.now += 2.0
            for _ in range(10):
                await asyncio.sleep(0)
            assert delivered.count == 13  # none lost or held back
        finally:
            driver.stop()

    run(clock, main())


def test_a_turn_is_not_put_off_while_the_actors_are_behind() -> None:
    """Once a turn left sends pending (its time was up), the next hands over what was accepted at once: a
    producer outrunning the actors cannot pile up work ahead of them."""
    clock = FakeClock()

    async def main() -> None:
        driver, delivered = await start(clock, BatchSettings(window=1.0, max_batch_size=100), turn_seconds=0.0)
        handed: list[int] = []
        driver.on_accepted = handed.append
        try:
            for number in range(100):  # more sends than one turn of turn_seconds 0 runs (16)
                driver.enqueue(message(f"ch{number}", "m"))
            await asyncio.sleep(0)  # more were accepted after the turn was scheduled: put off
            await asyncio.sleep(0)  # the producer paused: handed over, some sends run, the next turn scheduled
            assert handed == [100]
            driver.enqueue(message("a", "y0"))
            driver.enqueue(message("a", "y1"))
            await asyncio.sleep(0)  # the next turn: behind, so no putting off
            assert handed == [100, 2]
        finally:
            driver.stop()

    run(clock, main())
