"""How a distributed node runs (:class:`NodeOptions`) and what it did (:class:`NodeStatistics`)."""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from typing import Final

from message_queue import scripts
from protocol.errors import InvalidSettings
from protocol.keys import INBOUND_STREAM, dist_node_key
from protocol.limits import check_seconds

_MAX_IDLE_TTL: Final = 10 * 365 * 24 * 3600  # seconds


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:32] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSettings(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """How a distributed node runs, beyond the batch settings.

    ``stream``/``maxlen``: where the scripts publish and the approximate cap of that stream (0: no trimming).
    ``sweep_interval``: seconds between two queries for overdue deadlines. ``grace``: how long past its
    deadline a batch must be before a sweeper (rather than the node that armed it) flushes it.
    ``config_ttl``: how long a channel's settings read from ``message_queue:config:<channel>`` are reused.
    ``max_pending``: operations accepted but not yet answered by Redis before :meth:`~DistributedBatcher.append`
    waits. ``max_pipeline``: scripts per round trip. ``retry_for``: how long a pipeline is retried while Redis
    cannot be reached before its operations fail with :class:`StoreUnavailable`. ``node_id``: names the node
    in published entries (``by``); default ``<host>-<pid>-<random>``. ``idle_ttl``: how long a channel's
    state stays in Redis once it holds no open batch (seconds, > 0, at most 10 years; default 24 h); each
    batch published on the channel sets it again, with the ``idle_ttl`` of the node that published it.
    """

    stream: str = INBOUND_STREAM
    maxlen: int = 0
    sweep_interval: float = 0.2
    grace: float = 0.1
    config_ttl: float = 1.0
    max_pending: int = 10_000
    max_pipeline: int = 256
    retry_for: float = 30.0
    node_id: str = field(default_factory=_default_node_id)
    idle_ttl: float = scripts.IDLE_TTL

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not self.stream:
            raise InvalidSettings(f"stream must be a non-empty str, got {self.stream!r}")
        _check_int("maxlen", self.maxlen, 0)
        check_seconds("sweep_interval", self.sweep_interval, positive=True)
        check_seconds("grace", self.grace, positive=False)
        check_seconds("config_ttl", self.config_ttl, positive=False)
        _check_int("max_pending", self.max_pending, 1)
        _check_int("max_pipeline", self.max_pipeline, 1)
        check_seconds("retry_for", self.retry_for, positive=False)
        if check_seconds("idle_ttl", self.idle_ttl, positive=True) > _MAX_IDLE_TTL:
            raise InvalidSettings(f"idle_ttl must be <= {_MAX_IDLE_TTL} seconds (10 years), got {self.idle_ttl!r}")
        try:
            dist_node_key(self.node_id)
        except ValueError as exc:
            raise InvalidSettings(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """What one node did since it started, and what it is waiting for now."""

    node_id: str
    appended: int  # messages stored in Redis, in the order submitted
    # The published_* counts include batches held instead, on a paused channel.
    published_on_append: int  # batches published by an append (full, batching off, zero window)
    published_by_timer: int  # batches this node's timers published
    published_by_sweep: int  # overdue batches its sweeper published (usually another node's)
    published_front: int  # items of enqueue_front published at once
    failed: int  # operations that failed (Redis unreachable for retry_for, or a script error)
    pending: int  # operations accepted and not answered yet
    armed: int  # deadlines this node's timers wait for
    duplicates: int = 0  # appended messages dropped: their message_id was accepted within dedupe_ttl
    rejected_full: int = 0  # appends refused with QueueFull: the open batch held max_queued (overflow reject)
    dropped_overflow: int = 0  # appends dropped because the open batch held max_queued (overflow drop_newest)
