"""Ending the processes of an actor system whose owner died.

On the TCP base Thespian daemonizes its admin into a session of its own, so the admin, its logger and every
actor process are orphans, not descendants of the process that started the system (the owner). A clean stop
kills them by pid (:meth:`actors.system.RunningSystem.shutdown`); an owner killed by a signal it cannot
handle (SIGKILL) would leave them running with the admin port open.

Every process forked inside :func:`watched_forks`, and every process those fork in turn (the admin forks the
logger and the first actors, actors fork their children), starts a watchdog thread as soon as it exists. The
thread blocks on a pidfd of the owner, using no CPU while waiting; where pidfds are unavailable it checks the
owner every 0.5 s. Once the owner is gone, it kills every process of its own session with SIGKILL (the first
watchdog to wake ends the session leader's whole process group at once). It never acts in a process still in
the owner's session (the daemonizing child, before its ``setsid``), so it cannot reach the owner's terminal
session or anything outside the system.

The owner is handed down by ``fork`` (Thespian's TCP base always forks, never spawns): nothing reaches a
program that a process runs with ``exec``, and no message or actor code is involved.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from actors import procfs

POLL_INTERVAL = 0.5  # seconds between checks of the owner where pidfds are unavailable
_KILL_ROUNDS = 10  # a member forking while it is killed leaves a new one behind: list the session again

# (pid, session) of the owner this process watches, or None; inherited by forked children.
_owner: tuple[int, int] | None = None
_installed = False


@contextmanager
def watched_forks() -> Iterator[None]:
    """Every process forked inside this block, and every process forked below it, watches this process: once
    this process has exited, it ends every process of its own session, provided that session is not this
    process's. Not thread-safe: enter it from one thread at a time."""
    global _owner, _installed
    if not _installed:
        os.register_at_fork(after_in_child=_start_in_child)
        _installed = True
    previous, _owner = _owner, (os.getpid(), os.getsid(0))
    try:
        yield
    finally:
        _owner = previous


def _start_in_child() -> None:
    owner = _owner
    if owner is not None:
        threading.Thread(target=_watch, args=owner, name="mq-owner-watchdog", daemon=True).start()


def _watch(owner: int, owner_session: int) -> None:
    _wait_for_exit(owner)
    _end_session(owner_session)


def _wait_for_exit(pid: int) -> None:
    """Return once ``pid`` has exited (a zombie counts as exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):  # a kernel (or a system) without pidfds
        while _exists(pid):
            time.sleep(POLL_INTERVAL)
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():  # readable once the process has exited
            pass
    finally:
        os.close(fd)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user: the pid was reused, the owner is gone
        return False
    return procfs.alive(pid) or not os.path.isdir("/proc")


def _end_session(owner_session: int) -> None:
    """SIGKILL every process of this process's session, this one included; nothing if this process is still
    in the owner's session.

    In the session leader's process group (where Thespian keeps every process) one ``killpg`` ends the whole
    group at once, which no fork in progress can escape, and spares the other members a scan of ``/proc``
    each. A process outside that group kills the session's members by pid, then itself.
    """
    session = os.getsid(0)
    if session == owner_session:
        return
    if os.getpgid(0) == session:  # a group is part of one session: this cannot reach outside the system
        os.killpg(session, signal.SIGKILL)
    me = os.getpid()
    for _ in range(_KILL_ROUNDS):
        others = [pid for pid in procfs.session_members(session) if pid != me]
        if not others:
            break
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in others:
            procfs.wait_exit(pid, 1.0)
    os.kill(me, signal.SIGKILL)
