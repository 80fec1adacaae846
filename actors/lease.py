"""The writer lease of a Redis database: one node persists to it at a time.

``message_queue:index:lease`` holds the lease, a readable string ``host=<host> pid=<pid> taken=<UTC time>
start=<process start> token=<random hex>`` set with an expiry; ``message_queue:index:holder`` holds the same
value without expiry: the last node that took the lease. Taking, renewing and releasing it run as the small
Lua scripts below, each atomic. :class:`~actors.store.RedisStore` takes, renews and releases it, and every
write it makes checks it inside the write's own script (fencing).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote

from actors import procfs

# KEYS: lease, holder. ARGV: the value expected in the lease ('' for none), the new value, the lease in ms.
# Returns {1, '', 0} when taken, else {0, the lease's value ('' for none), its PTTL}.
TAKE = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
    return {0, current or '', redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
return {1, '', 0}
"""

# KEYS: lease, holder. ARGV: our value, the lease in ms. Returns {1, '', 0} when renewed, {2, '', 0} when
# taken back after it expired (the holder record still names us), else {0, the lease's value, its PTTL}.
RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, '', 0}
end
if not current and redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return {2, '', 0}
end
return {0, current or '', redis.call('PTTL', KEYS[1])}
"""

# KEYS: lease, holder. ARGV: our value. Deletes each key only if it still holds our value.
RELEASE = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    released = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return released
"""


# -- the writer lease's holder --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who took a writer lease, as its value in Redis says: host name, process id, when (Unix time), the
    process's start time (clock ticks after boot, from ``/proc``; None where unknown) and a random token."""

    host: str
    pid: int
    taken: float
    started: int | None
    token: str

    @classmethod
    def of_this_process(cls) -> LeaseHolder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, time.time(), _process_start(pid), uuid.uuid4().hex)

    def encode(self) -> bytes:
        fields = [f"host={quote(self.host, safe='')}", f"pid={self.pid}", f"taken={utc(self.taken)}"]
        if self.started is not None:
            fields.append(f"start={self.started}")
        fields.append(f"token={self.token}")
        return " ".join(fields).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> LeaseHolder | None:
        """The holder a lease value names, or None if the value is not one this module writes."""
        try:
            fields = dict(field.split("=", 1) for field in raw.decode("ascii").split(" "))
            pid = int(fields["pid"])
            started = int(fields["start"]) if "start" in fields else None
            taken = datetime.fromisoformat(fields["taken"]).timestamp()
            holder = cls(unquote(fields["host"]), pid, taken, started, fields["token"])
        except (UnicodeDecodeError, ValueError, KeyError):
            return None
        return holder if pid > 0 and holder.token else None

    def describe(self) -> str:
        return f"host {self.host!r}, pid {self.pid}, lease taken at {utc(self.taken)}"

    def gone(self) -> bool:
        """True when this host can tell that the holder's process no longer runs: it ran here (same host
        name) and its pid is free, a zombie, or now another process (a different start time)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # it runs, as another user
        state = _process_state(self.pid)
        if state is None:
            return False  # no /proc to read: it runs, as far as we can tell
        running, started = state
        return not running or (self.started is not None and started != self.started)


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _process_state(pid: int) -> tuple[bool, int] | None:
    """(runs: neither zombie nor dead, start time in clock ticks after boot) of ``pid``, from /proc."""
    fields = procfs.stat_fields(pid)
    if fields is None:
        return None
    try:
        return fields[0] not in (b"Z", b"X"), int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_start(pid: int) -> int | None:
    state = _process_state(pid)
    return state[1] if state is not None else None


def expiry(pttl: int) -> str:
    if pttl < 0:
        return "the lease has no expiry (set by hand?): delete it once you are sure that node is stopped"
    return f"the lease expires in {pttl / 1000:.1f} s (at {utc(time.time() + pttl / 1000)}) unless that node renews it"
