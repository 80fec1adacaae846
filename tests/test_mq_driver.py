"""The in-process driver and the status feed (``Observe`` / ``QueueChanged``) the asyncio facade relies on."""

from __future__ import annotations

import logging
import resource
import threading
import time
from concurrent.futures import Future
from typing import Callable, Iterator

import pytest

from actors.driver import DriverStopped, InProcessDriver, Output
from protocol.errors import InvalidInput
from protocol.messages import (
    BatchReady,
    Clear,
    Cleared,
    GetStatistics,
    Observe,
    Observing,
    ProcessingDone,
    QueueChanged,
    Rejected,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings, QueuedMessage

TIMEOUT = 10.0


def msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id="u", user_name="U", text=text)


class Outputs:
    """Collects driver outputs (on the driver thread) and lets the test wait for one that matches."""

    def __init__(self) -> None:
        self.items: list[Output] = []
        self._cond = threading.Condition()

    def __call__(self, output: Output) -> None:
        with self._cond:
            self.items.append(output)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Output]], bool], timeout: float = TIMEOUT) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), timeout), self.items

    def changes(self, channel: str) -> list[tuple[int, bool]]:
        with self._cond:
            # a BatchReady to a processor that observes carries the count in place of a QueueChanged
            return [
                (o.queued, o.in_flight) if isinstance(o, QueueChanged) else (o.queued, True)
                for o in self.items
                if o.channel_id == channel
                and (isinstance(o, QueueChanged) or (isinstance(o, BatchReady) and o.queued >= 0))
            ]


@pytest.fixture
def outputs() -> Outputs:
    return Outputs()


@pytest.fixture
def driver(outputs: Outputs) -> Iterator[InProcessDriver]:
    drv = InProcessDriver(outputs, BatchSettings(window=30.0, max_batch_size=2))
    drv.start()
    try:
        yield drv
    finally:
        drv.stop()


def result(future: Future[object]) -> object:
    return future.result(TIMEOUT)


def test_an_observer_hears_of_queued_items_but_not_of_messages_joining_the_open_batch(
    driver: InProcessDriver, outputs: Outputs
) -> None:
    assert isinstance(result(driver.call(Observe())), Observing)
    driver.enqueue(msg("c", "m0"))
    result(driver.call(GetStatistics("c")))
    assert outputs.changes("c") == []  # a new channel starts at 0 waiting: nothing changed yet
    driver.enqueue(msg("c", "m1"))  # full: one item waits (no processor)
    driver.enqueue(msg("c", "m2"))  # joins a new open batch: nothing to report
    result(driver.call(GetStatistics("c")))
    assert outputs.changes("c") == [(1, False)]
    # outputs of a command are handed over before its reply
    reply = result(driver.call(Clear("c")))
    assert reply == Cleared("c", 1)
    assert outputs.changes("c")[-1] == (0, False)


def test_an_observer_sees_deliveries_and_their_end(driver: InProcessDriver, outputs: Outputs) -> None:
    result(driver.call(Observe()))
    result(driver.call(StartProcessing("c")))
    for i in range(4):
        driver.enqueue(msg("c", f"m{i}"))
    outputs.wait_for(lambda items: any(isinstance(o, BatchReady) for o in items))
    result(driver.call(GetStatistics("c")))
    assert outputs.changes("c")[-1] == (1, True)
    ready = next(o for o in outputs.items if isinstance(o, BatchReady))
    driver.tell(ProcessingDone("c", ready.delivery_id))
    outputs.wait_for(lambda items: sum(isinstance(o, BatchReady) for o in items) == 2)
    result(driver.call(GetStatistics("c")))
    assert outputs.changes("c")[-1] == (0, True)


def test_a_reply_sent_straight_to_the_channel_releases_its_next_item(
    driver: InProcessDriver, outputs: Outputs
) -> None:
    result(driver.call(Observe()))
    result(driver.call(StartProcessing("c")))
    for i in range(4):
        driver.enqueue(msg("c", f"m{i}"))
    outputs.wait_for(lambda items: any(isinstance(o, BatchReady) for o in items))
    result(driver.call(GetStatistics("c")))  # both batches closed (full) by now
    first = next(o for o in outputs.items if isinstance(o, BatchReady))
    assert first.reply_to is not None
    assert first.queued in (0, 1)  # the second batch may have closed after this delivery left
    assert outputs.changes("c")[-1] == (1, True)
    driver.tell(ProcessingDone("c", first.delivery_id), to=first.reply_to)
    outputs.wait_for(lambda items: sum(isinstance(o, BatchReady) for o in items) == 2)
    second = [o for o in outputs.items if isinstance(o, BatchReady)][1]
    assert second.delivery_id == first.delivery_id + 1
    assert second.queued == 0  # it reports the count itself: no QueueChanged follows for it
    assert outputs.changes("c")[-1] == (0, True)


def test_a_late_observer_gets_the_current_counts_of_every_live_channel(
    driver: InProcessDriver, outputs: Outputs
) -> None:
    for channel in ("a", "b"):
        driver.enqueue(msg(channel, "x"))
        driver.enqueue(msg(channel, "y"))
    driver.enqueue(msg("b", "z"))
    driver.enqueue(msg("b", "w"))
    result(driver.call(GetStatistics()))
    assert not outputs.items  # nobody observes: nothing is sent
    result(driver.call(Observe()))
    assert outputs.changes("a") == [(1, False)]
    assert outputs.changes("b") == [(2, False)]


def test_timers_fire_without_commands_and_an_idle_driver_does_not_spin(outputs: Outputs) -> None:
    drv = InProcessDriver(outputs, BatchSettings(window=0.05))
    drv.start()
    try:
        result(drv.call(StartProcessing("c")))
        drv.enqueue(msg("c", "m0"))
        started = time.monotonic()
        outputs.wait_for(lambda items: any(isinstance(o, BatchReady) for o in items))
        assert time.monotonic() - started < 1.0
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.3)  # measuring the CPU an idle driver uses, not waiting for behaviour
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert used < 0.1, f"an idle driver used {used:.3f} s of CPU in 0.3 s"
    finally:
        drv.stop()


def test_replies_to_told_commands_are_dropped_and_rejections_logged(
    driver: InProcessDriver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="actors.driver"):
        driver.tell(GetStatistics("c"))
        driver.tell(Clear(""))  # rejected: empty channel id
        assert isinstance(result(driver.call(GetStatistics())), Statistics)
    messages = [r.getMessage() for r in caplog.records if r.name == "actors.driver"]
    assert len(messages) == 1 and "rejected a Clear" in messages[0]


def test_a_call_that_breaks_a_rule_resolves_with_the_rejection(driver: InProcessDriver) -> None:
    reply = result(driver.call(Clear("")))
    assert isinstance(reply, Rejected) and "channel_id" in reply.reason


def test_an_output_callback_that_raises_does_not_stop_the_driver(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Output] = []

    def explode(output: Output) -> None:
        seen.append(output)
        raise RuntimeError("consumer bug")

    drv = InProcessDriver(explode, BatchSettings(window=30.0, max_batch_size=1))
    drv.start()
    try:
        with caplog.at_level(logging.ERROR, logger="actors.driver"):
            result(drv.call(StartProcessing("c")))
            drv.enqueue(msg("c", "m0"))
            assert isinstance(result(drv.call(GetStatistics("c"))), Statistics)
        assert drv.running and any(isinstance(o, BatchReady) for o in seen)
        assert any("on_output failed on BatchReady" in r.getMessage() for r in caplog.records)
    finally:
        drv.stop()


def test_calls_fail_once_the_driver_has_stopped(outputs: Outputs) -> None:
    drv = InProcessDriver(outputs)
    with pytest.raises(DriverStopped):
        result(drv.call(GetStatistics()))  # never started
    drv.start()
    drv.stop()
    drv.stop()  # idempotent
    assert not drv.running
    with pytest.raises(DriverStopped):
        result(drv.call(GetStatistics()))


def test_enqueue_checks_a_message_on_the_callers_thread(driver: InProcessDriver, outputs: Outputs) -> None:
    with pytest.raises(InvalidInput, match="channel_id"):
        driver.enqueue(msg("", "no channel"))
    driver.enqueue(msg("c", "fine"))
    stats = result(driver.call(GetStatistics("c")))
    assert isinstance(stats, Statistics)
    assert stats.channels[0].open_batch_size == 1  # the good one went in, the bad one never left
