"""The watchdog of :mod:`actors.watchdog` on a plain process tree (``tests/watchdog_owner.py``): once the owner
is killed with SIGKILL, every process of the watched session ends (in the session leader's process group, in
another group, and an exec'd program without a watchdog of its own), and a process left in the owner's session
does not. Waits poll the processes' state under a deadline; every process started is killed by pid at the
end."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

from actors.procfs import alive, session_members

OWNER = str(pathlib.Path(__file__).resolve().parent / "watchdog_owner.py")
DEADLINE = 10.0  # seconds; pidfd watchdogs react in milliseconds, polling ones within 0.5 s


def _poll(condition: Callable[[], bool], deadline: float) -> bool:
    """True as soon as ``condition()`` holds; False if it still does not after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_a_watched_session_ends_with_its_killed_owner_and_the_owners_session_is_left_alone(pidfd: bool) -> None:
    owner = subprocess.Popen(
        [sys.executable, OWNER, *([] if pidfd else ["--no-pidfd"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # should the watchdog ever act in the owner's session, it stays in this one
    )
    started: list[int] = []
    try:
        assert owner.stdout is not None
        tree = json.loads(owner.stdout.readline())
        system, outside = tree["system"], tree["outside"]
        started = [*system, outside]
        leader, _, loner, program = system
        assert sorted(session_members(leader)) == sorted(system)
        assert os.getpgid(loner) == os.getpgid(program) == loner != os.getpgid(leader)
        assert os.getsid(outside) == os.getsid(owner.pid) != leader
        assert all(map(alive, started))  # nothing fires while the owner lives

        owner.kill()  # not reaped yet: a zombie owner counts as gone
        assert _poll(lambda: not any(map(alive, system)), DEADLINE), [pid for pid in system if alive(pid)]
        assert session_members(leader) == []
        assert alive(outside)
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        owner.kill()
        owner.wait()
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()
