"""Shared actor plumbing: type dispatch with a per-class cache, and deliberate handling of system messages."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from thespian.actors import ActorTypeDispatcher

if TYPE_CHECKING:
    from thespian.actors import ActorAddress, ActorExitRequest, PoisonMessage

log = logging.getLogger(__name__)

_Handler = Callable[[Any, Any, Any], Any]


class Dispatcher(ActorTypeDispatcher):  # type: ignore[misc]
    """``ActorTypeDispatcher`` semantics (``receiveMsg_<Type>`` found along the message's MRO), with the
    lookup cached per message type: the hot path pays one dict access instead of an MRO walk."""

    _handlers: ClassVar[dict[type, _Handler]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            handler = self._find_handler(type(message))
            self._handlers[type(message)] = handler
        handler(self, message, sender)

    @classmethod
    def _find_handler(cls, msg_type: type) -> _Handler:
        for each in inspect.getmro(msg_type):
            found = getattr(cls, "receiveMsg_" + each.__name__, None)
            if found is not None:
                return found  # type: ignore[no-any-return]
        return cls.receiveUnrecognizedMessage

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: ActorAddress) -> None:
        self.on_stop()

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: ActorAddress) -> None:
        log.error(
            "%s: a %s sent to %s failed twice and was dropped: %s",
            type(self).__name__,
            type(msg.poisonMessage).__name__,
            sender,
            getattr(msg, "details", ""),
        )

    def receiveUnrecognizedMessage(self, msg: object, sender: ActorAddress) -> None:
        log.warning("%s ignored an unexpected %s from %s", type(self).__name__, type(msg).__name__, sender)

    def on_stop(self) -> None:
        """Runs when the actor is asked to exit."""
