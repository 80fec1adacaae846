"""Processes and sessions as Linux's ``/proc`` shows them: who is alive, who belongs to a session, waiting for
an exit. On a system without ``/proc`` every process reads as gone and every session as empty."""

from __future__ import annotations

import os
import select


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, session...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the other fields follow the last ')'
    return stat[stat.rfind(b")") + 2 :].split()


def _all_stats() -> list[tuple[int, list[bytes]]]:
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and len(fields) > 3:
                found.append((int(entry), fields))
    return found


def children(pid: int) -> list[int]:
    """The live or zombie processes whose parent is ``pid``."""
    return [child for child, fields in _all_stats() if int(fields[1]) == pid]


def parent(pid: int) -> int:
    """The parent of ``pid``, or 0 if ``pid`` is gone."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields is not None else 0


def _running(pid: int, fields: list[bytes]) -> bool:
    """True unless ``pid`` has exited: a zombie counts as gone, but only once every thread of it has exited.

    When a process with several threads ends, its main thread can show as a zombie while another thread is
    still exiting, and the files it holds (its listening sockets) stay open until that thread is gone.
    """
    if fields[0] not in (b"Z", b"X"):
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a process that exited but was not yet reaped (a zombie) counts as gone."""
    fields = stat_fields(pid)
    return fields is not None and _running(pid, fields)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, found through /proc."""
    result: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        result += kids
        todo += kids
    return result


def session_members(session: int) -> list[int]:
    """Every live (not zombie) process of the session ``session``."""
    return [pid for pid, fields in _all_stats() if int(fields[3]) == session and _running(pid, fields)]


def wait_exit(pid: int, timeout: float) -> None:
    """Block until ``pid`` has exited (reaped or not) or ``timeout`` seconds have passed."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone already (ProcessLookupError), or no pidfd on this kernel: nothing to wait on
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)
    finally:
        os.close(fd)
