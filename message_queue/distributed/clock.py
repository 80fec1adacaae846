"""Redis server time on the event loop's clock: the deadlines the scripts return are server times, and a node
arms loop timers for them."""

from __future__ import annotations

import math
from typing import Final

FIRE_SLACK: Final = 0.001  # a local timer fires this long after its deadline, to be past it on the server too
_GOOD_RTT: Final = 0.005  # a clock sample whose round trip took longer is not trusted to correct the offset


class ServerClock:
    """The offset of Redis server time from loop time, estimated from timed round trips."""

    __slots__ = ("offset", "_rtt")

    def __init__(self) -> None:
        self.offset = 0.0  # server seconds minus loop seconds
        self._rtt = math.inf

    def sample(self, server_ms: int, sent: float, received: float) -> None:
        """Take a reply stamped ``server_ms`` by the server, for a request sent at loop time ``sent`` and
        answered at ``received``."""
        rtt = received - sent
        offset = server_ms / 1000 - (sent + received) / 2
        # Keep the estimate of the fastest recent round trip; a slow one only replaces it when it is far off.
        if rtt <= max(self._rtt * 1.5, _GOOD_RTT) or abs(offset - self.offset) > rtt:
            self.offset = offset
            self._rtt = rtt

    def local_time(self, server_ms: int) -> float:
        """The loop time at which a timer for the server time ``server_ms`` fires (just after it)."""
        return server_ms / 1000 - self.offset + FIRE_SLACK
