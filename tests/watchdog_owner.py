"""An owner of a small process tree watched by :mod:`actors.watchdog`, for ``tests/test_watchdog.py``.

Run as ``python tests/watchdog_owner.py [--no-pidfd]``. Inside ``watched_forks()`` it forks

* a child that starts a new session (as Thespian's daemonizing child does) and forks a grandchild into it:
  the watched system;
* a child that stays in the owner's session: a watchdog must never act there.

It prints one JSON line, ``{"system": [leader, member], "outside": pid}``, then waits on standard input until
it is killed. Every child waits for signals forever. ``--no-pidfd`` makes ``os.pidfd_open`` fail as on a kernel
without pidfds, so the watchdogs poll the owner instead.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import sys
from typing import NoReturn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from actors import watchdog  # noqa: E402


def _no_pidfd(pid: int, flags: int = 0) -> int:
    raise OSError(errno.ENOSYS, "pidfd_open is not implemented")


def _wait_forever() -> NoReturn:
    while True:
        signal.pause()


def main() -> None:
    if "--no-pidfd" in sys.argv:
        os.pidfd_open = _no_pidfd
    read_end, write_end = os.pipe()
    with watchdog.watched_forks():
        leader = os.fork()
        if leader == 0:
            os.setsid()
            member = os.fork()
            if member != 0:
                os.write(write_end, f"{member}\n".encode())
            _wait_forever()
        outside = os.fork()
        if outside == 0:
            _wait_forever()
    with os.fdopen(read_end) as pipe:
        member = int(pipe.readline())
    print(json.dumps({"system": [leader, member], "outside": outside}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
