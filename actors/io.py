"""Blocking calls off the actors' thread: one dedicated I/O thread whose outcomes come back as actor messages.

On ``simpleSystemBase`` every actor runs on the thread of its driver (the asyncio loop for the loop driver):
a blocking Redis call inside a handler would stall all of them. An actor that does I/O submits the call to
:class:`ThreadIo` and gets ``reply(outcome)`` back as an ordinary message, posted through the driver.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from actors.internal import Outcome

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

Post = Callable[["ActorAddress", object], None]
"""Thread-safe: hand ``message`` to the actor at the address, from any thread."""


class Submitted:
    """A call handed to :class:`ThreadIo`: its outcome can also be waited for directly (at shutdown)."""

    def __init__(self, future: Future[Outcome]) -> None:
        self._future = future

    def outcome(self, timeout: float | None = None) -> Outcome:
        """Block until the call has run (``TimeoutError`` after ``timeout`` seconds); its outcome."""
        return self._future.result(timeout)


class ThreadIo:
    """Runs submitted calls one at a time, in order, on a thread of its own; posts each reply with ``post``."""

    def __init__(self, post: Post, name: str = "message-queue-io") -> None:
        self._post = post
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, call: Callable[[], Any], to: ActorAddress, reply: Callable[[Outcome], object]) -> Submitted:
        """Run ``call`` on the I/O thread; then post ``reply(outcome)`` to ``to``. A call submitted after
        :meth:`shutdown` fails at once with ``RuntimeError`` in its outcome."""
        try:
            future = self._executor.submit(Outcome.of, call)
        except RuntimeError as exc:  # shut down
            future = Future()
            future.set_result(Outcome(error=exc))
        future.add_done_callback(lambda done: self._post(to, reply(done.result())))
        return Submitted(future)

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting calls; with ``wait``, block until the submitted ones have run."""
        self._executor.shutdown(wait=wait)
