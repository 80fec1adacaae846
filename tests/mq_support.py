"""Helpers the asyncio-API tests share."""

from __future__ import annotations

import asyncio
from typing import Callable


class Waitable:
    """Lets a test await a condition on state that a callback changes: ``wait(predicate)`` returns once
    the predicate holds, checked at once and after every ``_notify()``."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds (checked now and after every callback)."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, self._timeout if timeout is None else timeout)
