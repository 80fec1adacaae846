"""The harness of the actor integration tests: a running system seen from the test (typed asks, processors,
waits without sleeps) and the small helpers the tests share.

On the simple base the harness owns time (:class:`FakeTime`): the actors read its clock and the Timer arms
its alarm, and time moves only when a wait finds nothing left to run: then it jumps to the Timer's next
deadline and ticks the Timer. A test on the simple base therefore never waits in real time, and a wait's
``timeout`` is in fake seconds. On the TCP base (actors in other processes) time is real.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import pytest
from actor_support import DONE, Behave, Behaving, Recorded, RecordingProcessor, Release, Released, WaitFor

from actors.internal import Tick
from actors.system import SIMPLE_BASE, TCP_BASE, RunningSystem, alive, descendants, start_system
from actors.thespian_compat import lean_base
from protocol.messages import (
    BatchReady,
    Enqueued,
    EnqueueMany,
    GetStatistics,
    ProcessingStarted,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings, ChannelStatistics, QueuedMessage, payload_messages

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

T = TypeVar("T")

ASK = 5.0  # seconds to wait for a reply that needs no timer
FLUSH = 5.0  # seconds to wait for something a timer brings about
LONG = 30.0  # a window no test waits for
POLL = 0.02  # TCP base: listen step while waiting for a state change

BASES = [
    pytest.param(SIMPLE_BASE, id="simple"),
    pytest.param(TCP_BASE, id="tcp", marks=pytest.mark.tcp),
]

Launch = Callable[..., "Harness"]


# -- helpers ----------------------------------------------------------------------------------------------


def message(channel: str, text: str, user: str = "u1", **fields: Any) -> QueuedMessage:
    return QueuedMessage("test", channel, user, user.upper(), text, **fields)


def texts(event: BatchReady) -> list[str]:
    return [m.text for m in payload_messages(event.item.payload)]


def deliveries(events: tuple[Any, ...], channel: str | None = None) -> list[BatchReady]:
    return [e for e in events if isinstance(e, BatchReady) and channel in (None, e.channel_id)]


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class FakeTime:
    """The clock every actor of a simple-base system reads, and the Timer's alarm (:class:`actors.internal.Alarm`):
    it stands still until :meth:`advance` moves it to the earliest deadline the Timer armed."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._due: float | None = None
        self._timer: ActorAddress | None = None

    def clock(self) -> float:
        return self.now

    def arm(self, at: float, timer: ActorAddress) -> None:
        if self._due is None or at < self._due:
            self._due = at
        self._timer = timer

    def advance(self, asys: Any, limit: float) -> bool:
        """Move to the Timer's next deadline, if one is armed no later than ``limit``, and tick the Timer
        (which runs everything that follows before this returns); else move to ``limit`` and return False."""
        due = self._due
        if due is None or due > limit:
            self.now = max(self.now, limit)
            return False
        self._due = None
        self.now = max(self.now, due)
        assert self._timer is not None
        asys.tell(self._timer, Tick(self.now))
        return True


def start_harness(
    base: str, settings: BatchSettings | None = None, *, admin_port: int | None = None, **options: Any
) -> Harness:
    """Start a system on ``base`` (on fake time on the simple base) and return its harness."""
    fake = FakeTime() if base == SIMPLE_BASE else None
    if fake is not None:
        options.update(clock=fake.clock, alarm=fake)
    return Harness(start_system(base, settings, admin_port=admin_port, **options), admin_port, fake)


class Harness:
    """A running system seen from the test: typed asks, processors, and waits without sleeps."""

    def __init__(self, running: RunningSystem, admin_port: int | None, fake: FakeTime | None = None) -> None:
        self.running = running
        self.asys = running.asys
        self.supervisor = running.supervisor
        self.admin_port = admin_port
        self.simple = running.base == SIMPLE_BASE
        self.fake = fake

    def _on_fake_time(self, got: Callable[[], T | None], timeout: float) -> T | None:
        """``got()`` once it is not None, moving fake time deadline by deadline for at most ``timeout``
        fake seconds; None if it stays None."""
        assert self.fake is not None
        limit = self.fake.now + timeout
        while True:
            value = got()
            if value is not None:
                return value
            if not self.fake.advance(self.asys, limit):
                return got()

    def _listen_now(self) -> Any:
        """A message waiting for the test, after running everything pending (no time passes): an ask returns
        as soon as its reply is there, and what the command caused after the reply may still be pending."""
        lean_base(self.asys).run_sends()
        return self.asys.listen(0)

    def let_pass(self, seconds: float) -> None:
        """Let ``seconds`` pass: on fake time, every deadline on the way fires; on real time, the system runs
        meanwhile. Nothing may arrive for the test."""
        if self.fake is not None:
            limit = self.fake.now + seconds
            while self.fake.advance(self.asys, limit):
                pass
            stray = self._listen_now()
            assert stray is None, f"unexpected message {stray!r}"
            return
        end = time.monotonic() + seconds
        self.eventually(lambda: time.monotonic() >= end, f"{seconds} s passed", timeout=seconds + FLUSH)

    def ask(
        self, msg: object, expected: type[T], to: ActorAddress | None = None, timeout: float = ASK
    ) -> T:
        reply = self.asys.ask(to or self.supervisor, msg, timeout)
        assert isinstance(reply, expected), f"{msg!r} was answered with {reply!r}, not a {expected.__name__}"
        return reply

    def tell(self, msg: object) -> None:
        self.asys.tell(self.supervisor, msg)

    def listen_for(self, expected: type[T], timeout: float = ASK) -> T:
        if self.fake is not None:
            reply = self._on_fake_time(self._listen_now, timeout)
        else:
            reply = self.asys.listen(timeout)
        assert isinstance(reply, expected), f"expected a {expected.__name__}, got {reply!r}"
        return reply

    def processor(self, mode: str = DONE, reply_to: ActorAddress | None = None) -> ActorAddress:
        address = self.asys.createActor(RecordingProcessor)
        if mode != DONE or reply_to is not None:
            self.ask(Behave(mode, reply_to), Behaving, to=address)
        return address

    def attach(self, processor: ActorAddress | None, channel: str = "") -> None:
        assert self.ask(StartProcessing(channel, processor), ProcessingStarted).channel_id == channel

    def enqueue(self, *messages: QueuedMessage) -> None:
        assert self.ask(EnqueueMany(messages, ack=True), Enqueued) == Enqueued(len(messages))

    def wait_for(
        self, processor: ActorAddress, count: int = 0, messages: int = 0, timeout: float = FLUSH
    ) -> tuple[Any, ...]:
        """Every event the processor recorded, once it holds ``count`` events and ``messages`` messages."""
        if self.fake is None:
            reply = self.asys.ask(processor, WaitFor(count, messages), timeout)
            if not isinstance(reply, Recorded):
                raise AssertionError(f"waiting for {count} events, {messages} messages: got {reply!r}; "
                                     f"{self._progress(processor)}")
            return reply.events
        self.asys.tell(processor, WaitFor(count, messages))
        reply = self._on_fake_time(self._listen_now, timeout)
        assert isinstance(reply, Recorded), f"waiting for {count} events, {messages} messages: got {reply!r}"
        return reply.events

    def _progress(self, processor: ActorAddress) -> str:
        """What the processor and the Supervisor say now, for the message of a wait that timed out: whether
        messages were lost, are still on their way, or only the answer to the wait was."""
        recorded = self.asys.ask(processor, WaitFor(0, 0), ASK)
        if isinstance(recorded, Recorded):
            seen = f"the processor holds {len(recorded.events)} events"
        else:
            seen = f"the processor did not answer either ({recorded!r})"
        channels = self.asys.ask(self.supervisor, GetStatistics(""), ASK)
        if isinstance(channels, Statistics):
            live = ", ".join(f"{s.channel_id}: queued {s.queued}, open {s.open_batch_size}, processed "
                             f"{s.processed}" for s in channels.channels)
            return f"{seen}; live channels: {live or 'none'}"
        return f"{seen}; the Supervisor did not answer ({channels!r})"

    def release(self, processor: ActorAddress, channel: str = "", delivery_id: int = 0) -> int:
        return self.ask(Release(channel, delivery_id), Released, to=processor).count

    def stats(self, channel: str) -> ChannelStatistics:
        (snapshot,) = self.ask(GetStatistics(channel), Statistics).channels
        assert snapshot.channel_id == channel
        return snapshot

    def live_channels(self) -> list[str]:
        return [s.channel_id for s in self.ask(GetStatistics(), Statistics).channels]

    def eventually(self, condition: Callable[[], bool], what: str, timeout: float = FLUSH) -> None:
        """Return once ``condition()`` holds, letting the system run (and timers fire) in between."""
        if self.fake is not None:

            def check() -> bool | None:
                stray = self._listen_now()
                assert stray is None, f"unexpected message {stray!r}"
                return True if condition() else None

            if self._on_fake_time(check, timeout) is None:
                raise AssertionError(f"{what}: not reached within {timeout} fake seconds")
            return
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what}: not reached within {timeout} s")
            # simpleSystemBase runs actors and due timers only inside listen; it returns once nothing more is
            # due within the timeout. On TCP, listen is only the pause between two looks.
            stray = self.asys.listen(remaining if self.simple else min(POLL, remaining))
            assert stray is None, f"unexpected message {stray!r}"

    def stats_when(
        self, channel: str, condition: Callable[[ChannelStatistics], bool], what: str
    ) -> ChannelStatistics:
        """The channel's statistics, once they satisfy ``condition``."""
        seen: list[ChannelStatistics] = []

        def check() -> bool:
            seen.append(self.stats(channel))
            return condition(seen[-1])

        self.eventually(check, what)
        return seen[-1]

    def shutdown_and_verify(self) -> None:
        """Shut down; on TCP, check that no process of the system is left and its admin port is closed."""
        admins = list(self.running.admin_pids)
        started = self.running.processes()
        self.running.shutdown()
        if self.running.base != TCP_BASE:
            return
        assert admins and set(admins) <= set(started), f"admin {admins} not among {started}"
        assert self.running.processes() == []
        assert [pid for pid in started if alive(pid)] == []
        assert [pid for admin in admins for pid in descendants(admin)] == []
        assert self.admin_port is not None and not port_accepts(self.admin_port)
