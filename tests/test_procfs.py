"""``actors.procfs`` on real processes: a process whose main thread has exited while another thread still runs
(its files, listening sockets included, are still open) counts as alive until that thread is gone."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from typing import Callable

import pytest

from actors.procfs import alive, session_members, stat_fields

# The exit(2) system call, which ends only the calling thread (not exit_group(2), which ends them all).
SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(platform.machine())

MAIN_THREAD_EXITS = f"""
import ctypes, sys, threading
threading.Thread(target=sys.stdin.read).start()
print("ready", flush=True)
ctypes.CDLL(None).syscall({SYS_EXIT}, 0)
"""


def _poll(condition: Callable[[], bool], deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def _state(pid: int) -> bytes | None:
    fields = stat_fields(pid)
    return fields[0] if fields is not None else None


@pytest.mark.skipif(SYS_EXIT is None, reason=f"the exit(2) syscall number is known here only for x86_64 and "
                    f"aarch64, not {platform.machine()}")
def test_a_process_whose_main_thread_exited_is_alive_until_its_last_thread_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_EXITS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        assert _poll(lambda: _state(proc.pid) == b"Z"), _state(proc.pid)  # the main thread is gone
        assert alive(proc.pid)
        assert session_members(proc.pid) == [proc.pid]

        proc.stdin.close()  # the other thread returns: the process ends
        assert _poll(lambda: not alive(proc.pid))
        assert session_members(proc.pid) == []
        assert proc.wait(timeout=10.0) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
