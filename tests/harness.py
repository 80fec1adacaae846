"""The harness of the actor integration tests: a running system seen from the test (typed asks, processors,
waits without sleeps) and the small helpers the tests share."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import pytest
from actor_support import DONE, Behave, Behaving, Recorded, RecordingProcessor, Release, Released, WaitFor

from actors.system import SIMPLE_BASE, TCP_BASE, RunningSystem, alive, descendants
from protocol.messages import (
    BatchReady,
    Enqueued,
    EnqueueMany,
    GetStatistics,
    ProcessingStarted,
    StartProcessing,
    Statistics,
)
from protocol.values import ChannelStatistics, QueuedMessage, payload_messages

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


class Harness:
    """A running system seen from the test: typed asks, processors, and waits without sleeps."""

    def __init__(self, running: RunningSystem, admin_port: int | None) -> None:
        self.running = running
        self.asys = running.asys
        self.supervisor = running.supervisor
        self.admin_port = admin_port
        self.simple = running.base == SIMPLE_BASE

    def ask(
        self, msg: object, expected: type[T], to: ActorAddress | None = None, timeout: float = ASK
    ) -> T:
        reply = self.asys.ask(to or self.supervisor, msg, timeout)
        assert isinstance(reply, expected), f"{msg!r} was answered with {reply!r}, not a {expected.__name__}"
        return reply

    def tell(self, msg: object) -> None:
        self.asys.tell(self.supervisor, msg)

    def listen_for(self, expected: type[T], timeout: float = ASK) -> T:
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
        return self.ask(WaitFor(count, messages), Recorded, to=processor, timeout=timeout).events

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
