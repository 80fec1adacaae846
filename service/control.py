"""The control socket of a running ``serve`` node (``serve --control PATH``) and the commands it runs.

The node listens on a Unix socket created with mode 0600 (nothing on TCP). Each connection carries one
request and one answer, each one JSON object on a line:

    request: {"command": "channels", "limit": 20, "counters": false}
             | {"command": "show" | "pause" | "resume" | "flush" | "clear" | "dead-letters", "channel": "...",
                "replay": false, "purge": false}
    answer:  {"ok": true, "result": {...}} or {"ok": false, "error": "..."}

The node checks the peer's credentials (``SO_PEERCRED``) and refuses a connection from another user id than
its own (where the OS does not report them, the socket's mode 0600 is the only guard).

:func:`execute` runs a request against the node's actors (``GetStatistics``, ``PauseChannel``,
``ResumeChannel``, ``FlushBatch``, ``Clear``; ``dead-letters``: ``GetDeadLetters``, or with ``"replay": true``
``ReplayDeadLetters``, with ``"purge": true`` ``PurgeDeadLetters``) with a bounded wait for each reply. The
result of ``dead-letters`` is the one every admin route gives (:func:`actors.control_stream.dead_letters_result`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from actors.control_stream import dead_letters_message, dead_letters_result, listing_limit
from protocol.errors import InvalidInput
from protocol.limits import validate_channel_id
from protocol.messages import (
    BatchFlushed,
    ChannelPaused,
    Clear,
    Cleared,
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    FlushBatch,
    GetStatistics,
    PauseChannel,
    Rejected,
    ResumeChannel,
    Statistics,
)
from protocol.values import ChannelStatistics

log = logging.getLogger("run_system")

COMMANDS = ("channels", "show", "pause", "resume", "flush", "clear", "dead-letters")
REPLY_TIMEOUT = 5.0  # seconds a command waits for the actors
MAX_REQUEST_BYTES = 64 * 1024


class Caller(Protocol):
    def call(self, msg: object) -> Future[object]: ...


class ControlError(Exception):
    """A request that cannot be carried out; the message says why."""


def channel_row(s: ChannelStatistics, paused: bool) -> dict[str, Any]:
    """One channel as the admin command line shows it (in memory: no attempt or age known)."""
    return {
        "channel": s.channel_id,
        "open_batch_size": s.open_batch_size,
        "waiting": s.queued,
        "in_flight": s.in_flight,
        "attempt": None,
        "oldest_age_s": None,
        "dead_letters": s.dead_letters,
        "paused": paused,
        "processed": s.processed,
        "cancelled": s.cancelled,
        "failed": s.failed,
        "has_processor": s.has_processor,
    }


class Executor:
    """Runs control requests against a node; remembers which channels it paused (the actors' statistics do
    not carry it)."""

    def __init__(self, node: Caller, timeout: float = REPLY_TIMEOUT,
                 counters: Callable[[], dict[str, Any]] | None = None) -> None:
        self._node = node
        self._counters = counters
        self._timeout = timeout
        self._paused: set[str] = set()

    def _ask(self, msg: object) -> object:
        try:
            reply = self._node.call(msg).result(self._timeout)
        except TimeoutError as exc:
            raise ControlError(f"the actors did not answer {type(msg).__name__} within {self._timeout:g} s") from exc
        if isinstance(reply, Rejected):
            raise ControlError(reply.reason)
        return reply

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        """The result of ``request``.

        Raises:
            ControlError: for an unknown command, a missing or invalid channel, or actors that do not answer.
        """
        command = request.get("command")
        if command == "channels":
            limit = request.get("limit", 20)
            if type(limit) is not int or limit < 1:
                raise ControlError(f"limit must be an int >= 1, got {limit!r}")
            reply = self._ask(GetStatistics())
            assert isinstance(reply, Statistics), reply
            rows = [channel_row(s, s.channel_id in self._paused) for s in reply.channels]
            rows.sort(key=lambda r: (-r["waiting"], -r["open_batch_size"], r["channel"]))
            result: dict[str, Any] = {"channels": rows[:limit], "total": len(rows)}
            if request.get("counters") and self._counters is not None:
                result["counters"] = self._counters()
            return result
        if command not in COMMANDS:
            raise ControlError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
        channel = request.get("channel")
        try:
            validate_channel_id(channel)
        except InvalidInput as exc:
            raise ControlError(f"{command}: {exc}") from exc
        assert isinstance(channel, str)
        if command == "show":
            reply = self._ask(GetStatistics(channel))
            assert isinstance(reply, Statistics), reply
            if not reply.channels:
                return {"channel": channel, "live": False, "paused": channel in self._paused}
            return {**channel_row(reply.channels[0], channel in self._paused), "live": True}
        if command in ("pause", "resume"):
            reply = self._ask(PauseChannel(channel) if command == "pause" else ResumeChannel(channel))
            assert isinstance(reply, ChannelPaused), reply
            (self._paused.add if reply.paused else self._paused.discard)(channel)
            return {"channel": channel, "paused": reply.paused}
        if command == "flush":
            reply = self._ask(FlushBatch(channel))
            assert isinstance(reply, BatchFlushed), reply
            return {"channel": channel, "flushed": reply.flushed}
        if command == "clear":
            reply = self._ask(Clear(channel))
            assert isinstance(reply, Cleared), reply
            return {"channel": channel, "removed": reply.removed}
        # dead-letters: the channel's dead letters as its actor holds them (restored from Redis on a persisting node)
        try:
            message = dead_letters_message(channel, request)
        except InvalidInput as exc:
            raise ControlError(str(exc)) from exc
        reply = self._ask(message)
        assert isinstance(reply, (DeadLetters, DeadLettersReplayed, DeadLettersPurged)), reply
        return dead_letters_result(reply, "node", listing_limit(request))


def _peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of ``conn``, where the OS reports it (Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class ControlServer:
    """Serves ``handle`` on a Unix socket at ``path`` (mode 0600) from a daemon thread until :meth:`stop`.

    Raises:
        ControlError: from :meth:`start` when ``path`` exists and is not a socket, or another node answers
            on it.
        OSError: from :meth:`start` when the socket cannot be created.
    """

    def __init__(self, path: str, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self._handle = handle
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: never readable or writable by others, not even for a moment
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="mq-control", daemon=True)
        self._thread.start()

    def _clear_stale(self) -> None:
        """Remove a socket left behind by a node that died; refuse to take over a live one."""
        import stat

        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise ControlError(f"another node answers on {self.path}")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._one(conn)
                except OSError as exc:
                    log.warning("control: a connection failed (%s)", exc)

    def _one(self, conn: socket.socket) -> None:
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            log.warning("control: refused a connection from user id %d (this node runs as %d)", uid, os.getuid())
            _send(conn, {"ok": False, "error": f"refused: user id {uid} is not this node's ({os.getuid()})"})
            return
        conn.settimeout(REPLY_TIMEOUT)
        data = b""
        while not data.endswith(b"\n") and len(data) <= MAX_REQUEST_BYTES:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ControlError("a request is one JSON object")
            answer = {"ok": True, "result": self._handle(request)}
        except (ValueError, ControlError) as exc:
            answer = {"ok": False, "error": str(exc)}
        _send(conn, answer)


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    conn.sendall(json.dumps(answer).encode() + b"\n")


class NoNode(Exception):
    """No node answered on the control socket; the message says why."""


def request(path: str, payload: dict[str, Any], timeout: float = REPLY_TIMEOUT + 1.0) -> dict[str, Any]:
    """Send ``payload`` to the node listening at ``path`` and return its answer (``ok``, ``result``/``error``).

    Raises:
        NoNode: when nothing listens at ``path`` or the node does not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoNode(f"no node listens on {path} ({exc.strerror or exc})") from exc
        except PermissionError as exc:
            raise NoNode(f"no access to {path}: it belongs to another user") from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise NoNode(f"the node on {path} did not answer within {timeout:g} s") from exc
            except ConnectionResetError as exc:
                raise NoNode(f"the node on {path} closed the connection") from exc
            if not chunk:
                break
            data += chunk
        if not data:
            raise NoNode(f"the node on {path} closed the connection without an answer")
        answer = json.loads(data)
        assert isinstance(answer, dict)
        return answer
    finally:
        sock.close()
