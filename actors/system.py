"""Starting and stopping an actor system that runs the message queue.

Supported bases:
    * ``simpleSystemBase`` (default): every actor runs in the calling thread, no sockets, fastest (with the
      leaner message loop of :mod:`actors.thespian_compat`).
    * ``multiprocTCPBase``: one OS process per actor, talking over TCP. It binds every interface and
      unpickles whatever reaches its ports, so only use it on a host whose ports are not reachable by
      untrusted parties (a firewall, a private network namespace). Its processes end when the process that
      started the system ends, even by SIGKILL (:mod:`actors.watchdog`).

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

from thespian.actors import ActorAddress, ActorExitRequest, ActorSystem

from actors import thespian_compat, watchdog
from actors.internal import Alarm, Clock, ConfigureSystem, ReleaseHeld, SystemConfigured
from actors.procfs import alive as alive
from actors.procfs import children, parent, session_members, wait_exit
from actors.procfs import descendants as descendants
from actors.supervisor import Supervisor
from protocol.errors import (
    InvalidSettings,
    MessageQueueError,
    RedisDataLost,
    StoreLocked,
    StoreUnavailable,
    Timeout,
    UnsafeRedis,
)
from protocol.messages import SUPERVISOR_NAME, Rejected
from protocol.values import BatchSettings

SIMPLE_BASE = "simpleSystemBase"
TCP_BASE = "multiprocTCPBase"
SUPPORTED_BASES = (SIMPLE_BASE, TCP_BASE)

log = logging.getLogger(__name__)

# What a refused start raises, by the error name the Supervisor reports.
_STARTUP_ERRORS: dict[str, type[MessageQueueError]] = {
    "UnsafeRedis": UnsafeRedis,
    "RedisDataLost": RedisDataLost,
    "StoreLocked": StoreLocked,
    "ConnectionError": StoreUnavailable,
    "TimeoutError": StoreUnavailable,
}

# Thespian's own logging goes through the standard library: do not let it install its defaults.
_LOG_DEFS: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningSystem:
    """A started actor system and the address of its Supervisor.

    On the TCP base, Thespian daemonizes its admin: the child it forks starts a new session, forks the admin
    and exits, so the admin and every actor process are orphans, not our descendants. They are found by that
    session instead (``sessions`` holds its id, the pid of that short-lived child). Should this process die
    without calling :meth:`shutdown`, they end on their own (:mod:`actors.watchdog`).
    """

    asys: ActorSystem
    supervisor: ActorAddress
    base: str
    admin_pids: list[int] = field(default_factory=list)  # TCP base: the admin process(es)
    sessions: list[int] = field(default_factory=list)  # TCP base: the sessions of every process it started
    restored: int = 0  # channels restored from Redis at start (persistence only)

    def processes(self) -> list[int]:
        """Every live process the system started (TCP base: admin, logger, one per actor); empty after
        :meth:`shutdown`."""
        return [pid for session in self.sessions for pid in session_members(session)]

    def release_held(self, timeout: float) -> None:
        """TCP base: have the Supervisor send on the commands it holds for settings-hash reads and wait
        (``timeout`` seconds at most) until they are journaled. The stop reaches the other processes
        asynchronously, so a told ``ReleaseHeld`` could lose the race with persistence's exit."""
        try:
            reply = self.asys.ask(self.supervisor, ReleaseHeld(), timeout)
        except Exception as exc:  # a system that is already going away: nothing more can be journaled
            log.warning("the Supervisor did not release its held commands (%s: %s)", type(exc).__name__, exc)
            return
        if reply is None:
            log.warning("the Supervisor did not confirm within %.1f s that its held commands were journaled",
                        timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the actor system; on the TCP base also end every process it started (admin included).

        ``ActorSystem.shutdown()`` can leave the TCP admin running with its port open, so whatever is left
        of the system's session is killed by pid, and this returns once those processes have exited.
        On the simple base the Supervisor is asked to exit first, so that its children run their exit hooks
        (RedisPersistence writes what it still holds); that base's own shutdown does not. Before that, the
        commands it holds for a read of a settings hash go to their channels, which journal them (on the TCP
        base this waits until they are: :meth:`release_held`).
        """
        try:
            if self.base == SIMPLE_BASE:
                # Runs to completion on this base; the writes it causes are made by persistence's exit hook (its
                # I/O thread's outcomes would come back through a driver that no longer runs: no waiting here).
                self.asys.tell(self.supervisor, ReleaseHeld())
                self.asys.tell(self.supervisor, ActorExitRequest())
            else:
                self.release_held(timeout)
            self.asys.shutdown()
        finally:
            for _ in range(10):  # a member forking while it is killed leaves a new one behind
                pids = self.processes()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                for pid in pids:
                    wait_exit(pid, timeout)
            for leader in self.sessions:
                try:
                    os.waitpid(leader, 0)  # our direct child, long exited: reap it
                except ChildProcessError:
                    pass


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_system(
    base: str = SIMPLE_BASE,
    settings: BatchSettings | None = None,
    *,
    idle_timeout: float = 60.0,
    admin_port: int | None = None,
    redis_url: str = "",
    allow_volatile_redis: bool = False,
    timeout: float = 10.0,
    clock: Clock | None = None,
    alarm: Alarm | None = None,
    report_redis_writes: bool = False,
    config_ttl: float | None = None,
) -> RunningSystem:
    """Start an actor system on ``base``, create (or find) the Supervisor and configure it. With
    ``report_redis_writes`` the persistence actor sends ``RedisWriteTimes`` to this endpoint (metrics).

    With ``redis_url`` every channel is persisted there and the channels stored by an earlier run are
    restored before this returns (``timeout`` covers the restore); persistence's Redis calls run inline, in
    its actor. ``clock`` is the clock every actor reads (default ``time.monotonic``); with ``alarm`` (simple
    base only: it is called in this process) the Timer arms it instead of Thespian wakeups, and whoever owns it
    sends the Timer ``Tick`` when a deadline has come (a test's fake time). With ``redis_url`` and
    ``config_ttl``, each channel's settings hash is read before its first message and again when a message
    finds the last read older than ``config_ttl`` seconds.

    Raises:
        InvalidSettings: for an unsupported base, settings the Supervisor refuses, or (TCP base) an
            ``admin_port`` that already accepts connections.
        UnsafeRedis: if the Redis server could lose acknowledged writes and ``allow_volatile_redis`` is False.
        RedisDataLost: if Redis lost part of the data stored by an earlier run.
        StoreLocked: if another node holds the Redis database's writer lease.
        Timeout: if the Supervisor does not answer within ``timeout`` seconds.
    """
    running = launch_system(base, admin_port=admin_port)
    configure = ConfigureSystem(
        settings or BatchSettings(), idle_timeout, redis_url, allow_volatile_redis, clock=clock, alarm=alarm,
        report_redis_writes=report_redis_writes, config_ttl=config_ttl,
    )
    reply = running.asys.ask(running.supervisor, configure, timeout)
    try:
        running.restored = restored_channels(reply, timeout)
    except BaseException:
        running.shutdown()
        raise
    return running


def launch_system(base: str = SIMPLE_BASE, *, admin_port: int | None = None) -> RunningSystem:
    """Start an actor system on ``base`` and create (or find) its Supervisor, not configured yet: send it a
    ``ConfigureSystem`` and pass the reply to :func:`restored_channels`.

    Raises:
        InvalidSettings: for an unsupported base, or (TCP base) an ``admin_port`` that already accepts
            connections.
    """
    if base not in SUPPORTED_BASES:
        raise InvalidSettings(
            f"base must be one of {', '.join(SUPPORTED_BASES)}, got {base!r} "
            "(multiprocQueueBase and multiprocUDPBase lost or stalled messages in our measurements)"
        )
    capabilities: dict[str, Any] = {}
    if base == TCP_BASE:
        port = admin_port if admin_port is not None else free_port()
        if _accepts_connections(port):
            # Thespian would join the admin found there, and stopping this system would stop that one
            raise InvalidSettings(
                f"admin port must be free for a new actor system, got {port}, where something accepts "
                "connections (another node's actor system, or one still exiting)"
            )
        thespian_compat.close_tcp_sockets_on_close()
        capabilities["Admin Port"] = port
    before = set(children(os.getpid()))
    if base == TCP_BASE:
        with watchdog.watched_forks():  # the admin, its logger and every actor end when this process does
            asys = ActorSystem(base, capabilities, logDefs=_LOG_DEFS, transientUnique=True)
    else:
        asys = ActorSystem(base, capabilities, logDefs=_LOG_DEFS, transientUnique=True)
        thespian_compat.lean_base(asys)
    sessions = sorted(set(children(os.getpid())) - before) if base == TCP_BASE else []
    # the session leader (the daemonizing child) may not have finished exiting: it is never the admin
    members = {pid for session in sessions for pid in session_members(session)} - set(sessions)
    admins = sorted(pid for pid in members if parent(pid) not in members)
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    return RunningSystem(asys, supervisor, base, admins, sessions)


def restored_channels(reply: object, timeout: float) -> int:
    """The number of channels restored, from the Supervisor's ``reply`` to ``ConfigureSystem``.

    Raises:
        InvalidSettings, UnsafeRedis, RedisDataLost, StoreLocked, StoreUnavailable: as the Supervisor reports.
        Timeout: if ``reply`` is not an answer (None: none came within ``timeout`` seconds).
    """
    if isinstance(reply, SystemConfigured):
        return reply.restored
    if isinstance(reply, Rejected):
        raise _STARTUP_ERRORS.get(reply.error, InvalidSettings)(reply.reason)
    raise Timeout(f"the Supervisor did not answer within {timeout} s (got {reply!r})")
