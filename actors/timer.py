"""One timer for every channel: a heap of deadlines and a single armed wakeup.

Thespian wakeups cannot be cancelled and, on simpleSystemBase, every send scans all pending wakeups; so
channels never call ``wakeupAfter`` themselves. They send ``ScheduleWake`` here and get ``Wake`` back. At most
a few wakeups are pending at any time, whatever the number of channels.

Where the wakeup comes from depends on who owns time (``TimerConfig``):
    * a Thespian wakeup (``wakeupAfter``), the default: the Timer reads its clock when it fires;
    * a driver's :class:`~actors.internal.Alarm` (the loop driver): the driver sends ``Tick(now)`` once it has
      handed the actors every message accepted before ``now``, and the Timer wakes only the deadlines up to
      that ``now``, never up to a later reading of the clock: a message accepted before a deadline always
      reaches its channel before the deadline's ``Wake``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from thespian.actors import WakeupMessage

from actors.base import Dispatcher
from actors.internal import Alarm, Clock, ScheduleWake, Tick, TimerConfig, Wake, WakeKind

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

# A wakeup already armed this close to a new deadline serves it too.
_ARM_TOLERANCE = 0.0005
# Wakes sent per firing: when thousands of channels fall due at once (idle channels passivating together),
# the rest follow on the next firing, queued behind whatever arrived meanwhile, so a command is not stuck
# behind the whole burst.
MAX_WAKES_PER_FIRING = 256


class Timer(Dispatcher):
    """Sends each ``ScheduleWake`` sender a ``Wake`` when its time comes, in deadline order."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, ActorAddress, WakeKind]] = []  # the request's parts, not the request
        self._seq = itertools.count()
        self._armed: list[float] = []  # times of the Thespian wakeups still pending, a small heap
        self._clock: Clock = time.monotonic
        self._alarm: Alarm | None = None

    def receiveMsg_TimerConfig(self, msg: TimerConfig, sender: ActorAddress) -> None:
        if msg.clock is not None:
            self._clock = msg.clock
        self._alarm = msg.alarm
        self._arm()

    def receiveMsg_ScheduleWake(self, msg: ScheduleWake, sender: ActorAddress) -> None:
        heapq.heappush(self._heap, (msg.at, next(self._seq), sender, msg.kind))
        self._arm()

    def receiveMsg_Tick(self, msg: Tick, sender: ActorAddress) -> None:
        self._fire(msg.now)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        at = msg.payload
        if at in self._armed:
            self._armed.remove(at)
            heapq.heapify(self._armed)
        self._fire(self._clock())

    def _fire(self, now: float) -> None:
        heap = self._heap
        for _ in range(MAX_WAKES_PER_FIRING):
            if not heap or heap[0][0] > now:
                break
            at, _, target, kind = heapq.heappop(heap)
            self.send(target, Wake(at, kind))
        self._arm()

    def _arm(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._alarm is not None:
            self._alarm.arm(due, self.myAddress)
            return
        if self._armed and self._armed[0] <= due + _ARM_TOLERANCE:
            return
        heapq.heappush(self._armed, due)
        self.wakeupAfter(timedelta(seconds=max(0.0, due - self._clock())), payload=due)
