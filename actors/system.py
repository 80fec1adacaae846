"""Starting and stopping an actor system that runs the message queue.

Supported bases:
    * ``simpleSystemBase`` (default): every actor runs in the calling thread, no sockets, fastest.
    * ``multiprocTCPBase``: one OS process per actor, talking over TCP. It binds every interface and
      unpickles whatever reaches its ports, so only use it on a host whose ports are not reachable by
      untrusted parties (a firewall, a private network namespace).

``multiprocQueueBase`` and ``multiprocUDPBase`` are refused: with several senders they stalled, hung and lost
messages in our measurements.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorAddress, ActorSystem

from actors.internal import ConfigureSystem, SystemConfigured
from actors.supervisor import Supervisor
from protocol.errors import InvalidSettings, Timeout
from protocol.messages import SUPERVISOR_NAME, Rejected
from protocol.values import BatchSettings

SIMPLE_BASE = "simpleSystemBase"
TCP_BASE = "multiprocTCPBase"
SUPPORTED_BASES = (SIMPLE_BASE, TCP_BASE)

log = logging.getLogger(__name__)

# Thespian's own logging goes through the standard library: do not let it install its defaults.
_LOG_DEFS: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the parent pid follows the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, found through /proc."""
    result: list[int] = []
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        result += kids
        todo += kids
    return result


@dataclass
class RunningSystem:
    """A started actor system and the address of its Supervisor."""

    asys: ActorSystem
    supervisor: ActorAddress
    base: str
    admin_pids: list[int] = field(default_factory=list)  # TCP base: the admin process(es) it forked

    def shutdown(self) -> None:
        """Stop the actor system; on the TCP base also end every process it started (admin included).

        ``ActorSystem.shutdown()`` can leave the TCP admin running with its port open, so whatever is left
        of the processes below the admin is killed by pid.
        """
        pids = [p for admin in self.admin_pids for p in [admin, *descendants(admin)]]
        try:
            self.asys.shutdown()
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                else:
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass  # not our direct child: init reaps it


def start_system(
    base: str = SIMPLE_BASE,
    settings: BatchSettings | None = None,
    *,
    idle_timeout: float = 60.0,
    admin_port: int | None = None,
    timeout: float = 10.0,
) -> RunningSystem:
    """Start an actor system on ``base``, create (or find) the Supervisor and configure it.

    Raises:
        InvalidSettings: for an unsupported base.
        Timeout: if the Supervisor does not answer within ``timeout`` seconds.
    """
    if base not in SUPPORTED_BASES:
        raise InvalidSettings(
            f"base must be one of {', '.join(SUPPORTED_BASES)}, got {base!r} "
            "(multiprocQueueBase and multiprocUDPBase lost or stalled messages in our measurements)"
        )
    capabilities: dict[str, Any] = {}
    if base == TCP_BASE:
        capabilities["Admin Port"] = admin_port if admin_port is not None else free_port()
    before = set(_children(os.getpid()))
    asys = ActorSystem(base, capabilities, logDefs=_LOG_DEFS, transientUnique=True)
    admins = sorted(set(_children(os.getpid())) - before) if base == TCP_BASE else []
    running = RunningSystem(asys, asys.createActor(Supervisor, globalName=SUPERVISOR_NAME), base, admins)
    reply = asys.ask(running.supervisor, ConfigureSystem(settings or BatchSettings(), idle_timeout), timeout)
    if not isinstance(reply, SystemConfigured):
        running.shutdown()
        if isinstance(reply, Rejected):
            raise InvalidSettings(reply.reason)
        raise Timeout(f"the Supervisor did not answer within {timeout} s (got {reply!r})")
    return running
