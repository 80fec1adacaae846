"""Life-cycle states of the ChannelActor and the Supervisor, and the one buffer for what reaches them too early.

A ChannelActor is STARTING until its ``ChannelInit``, RUNNING while it serves its channel, and PASSIVATING
while its offer to stop (``Passivate``) is out. The offer carries the count of messages it has received from the
Supervisor, which accepts it only if it has sent no more since: so any message from the Supervisor voids the
offer and brings the channel back to RUNNING.

The Supervisor is STARTING only while it restores persisted channels (from a ``ConfigureSystem`` with a
``redis_url`` to ``ChannelsLoaded`` or ``StoreFailed``), RUNNING otherwise, and STOPPING once asked to exit:
its children then exit with it, which is no error.

What a STARTING actor cannot handle yet waits in a :class:`StartupBuffer` and is replayed, in arrival order,
once it is RUNNING.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from thespian.actors import ActorAddress


class Lifecycle(enum.Enum):
    """Where an actor is in its life; see the module docstring for who goes through which."""

    STARTING = "starting"
    RUNNING = "running"
    PASSIVATING = "passivating"
    STOPPING = "stopping"


# The states by module-level name, for the checks on every message: a global read costs about what an
# attribute read does, while ``Lifecycle.RUNNING`` goes through the enum's metaclass (some 60 ns more).
STARTING = Lifecycle.STARTING
RUNNING = Lifecycle.RUNNING
PASSIVATING = Lifecycle.PASSIVATING
STOPPING = Lifecycle.STOPPING


class StartupBuffer:
    """Messages that reached a STARTING actor before it could handle them, with their senders, in arrival order.

    Made by :func:`buffered` when the first such message comes, and dropped once replayed: an actor whose
    messages came in order (nearly every one) never makes one.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[tuple[object, ActorAddress]] = []

    def hold(self, message: object, sender: ActorAddress) -> None:
        """Keep ``message`` from ``sender`` after those held before it."""
        self._held.append((message, sender))

    def replay(self, receive: Callable[[object, ActorAddress], None]) -> None:
        """Hand every held message to ``receive``, oldest first, and keep none. The actor lets go of the
        buffer first: a message that ``receive`` holds again (the actor went back to STARTING) then goes to the
        actor's next buffer, behind the rest of these."""
        messages, self._held = self._held, []
        for message, sender in messages:
            receive(message, sender)


def buffered(buffer: StartupBuffer | None, message: object, sender: ActorAddress) -> StartupBuffer:
    """``buffer`` (a new one if None) with ``message`` from ``sender`` held last."""
    if buffer is None:
        buffer = StartupBuffer()
    buffer.hold(message, sender)
    return buffer
