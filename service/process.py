"""What every command shares about its process: exit statuses, SIGINT and SIGTERM as an exception, and a
stdout whose reader went away."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the demo only: it was stopped before it could verify delivery


class Stopped(Exception):
    """SIGINT or SIGTERM arrived; the message is the signal's name."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def catch_stop_signals() -> None:
    """Turn SIGINT and SIGTERM into :class:`Stopped` in the main thread."""
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)


def ignore_stop_signals() -> None:
    """While shutting down, a second signal must not abort the clean-up halfway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """Put SIGINT's and SIGTERM's handlers back as they were on leaving."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
