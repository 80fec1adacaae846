"""An owner of a small process tree watched by :mod:`actors.watchdog`, for ``tests/test_watchdog.py``.

Run as ``python tests/watchdog_owner.py [--no-pidfd]``. Inside ``watched_forks()`` it forks

* a child that starts a new session (as Thespian's daemonizing child does), the watched system, and forks
  into it a member of its process group, and a member that moves to a group of its own and runs ``sleep``
  there (an exec'd program runs no watchdog: only a kill by pid from another process ends it);
* a child that stays in the owner's session: a watchdog must never act there.

It prints one JSON line, ``{"system": [leader, member, loner, program], "outside": pid}``, then waits on
standard input until it is killed. Every child waits for signals forever. ``--no-pidfd`` makes
``os.pidfd_open`` fail as on a kernel without pidfds, so the watchdogs poll the owner instead.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
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
            if member == 0:
                _wait_forever()
            loner = os.fork()
            if loner == 0:
                os.setpgid(0, 0)
                program = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL)
                os.write(write_end, f"{member} {os.getpid()} {program.pid}\n".encode())
                _wait_forever()
            _wait_forever()
        outside = os.fork()
        if outside == 0:
            _wait_forever()
    with os.fdopen(read_end) as pipe:
        members = [int(pid) for pid in pipe.readline().split()]
    print(json.dumps({"system": [leader, *members], "outside": outside}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
