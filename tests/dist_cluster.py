"""Nodes of distributed mode as real processes (``run_system.py serve --redis URL --distributed --acks``), for
the multi-node tests and ``bench/bench_distributed.py``.

Each node's stdout (``{"acked": N}`` lines) and stderr are read by threads; waits use conditions with
timeouts, never sleeps. Nodes are ended by pid (``kill -9`` for a crash, end of input for a clean stop).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

import redis

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol.keys import DIST_DEADLINES, INBOUND_STREAM  # noqa: E402
from protocol.stream import InboundBatch, decode_entry  # noqa: E402


def message_line(channel: str, text: str, user: str = "u1") -> bytes:
    record = {"platform": "test", "channel_id": channel, "user_id": user, "user_name": user.upper(), "text": text}
    return json.dumps(record).encode() + b"\n"


@dataclass
class NodeProcess:
    """One ``serve --distributed`` process."""

    name: str
    process: subprocess.Popen[bytes]
    acked: int = 0
    ready: bool = False
    exited: bool = False
    stderr: list[str] = field(default_factory=list)
    sent: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, url: str, *options: str) -> NodeProcess:
        command = [sys.executable, str(ROOT / "run_system.py"), "serve", "--redis", url, "--distributed", "--acks",
                   "--node-id", name, *options]
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        node = cls(name, process)
        assert process.stdout is not None and process.stderr is not None
        node.readers = [
            threading.Thread(target=node._read_stdout, args=(process.stdout,), daemon=True),
            threading.Thread(target=node._read_stderr, args=(process.stderr,), daemon=True),
        ]
        for reader in node.readers:
            reader.start()
        return node

    def _read_stdout(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                acked = json.loads(line)["acked"]
                with self.changed:
                    self.acked = acked
                    self.changed.notify_all()
        with self.changed:
            self.exited = True
            self.changed.notify_all()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self.changed:
                    self.stderr.append(line)
                    if line.startswith("serve: ready"):
                        self.ready = True
                    self.changed.notify_all()

    def wait_ready(self, timeout: float = 30.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.ready or self.exited, timeout) or not self.ready:
                raise RuntimeError(f"node {self.name} did not start: {self.stderr[-5:]}")

    def send(self, data: bytes, count: int) -> None:
        """Write ``count`` message lines at once."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()
        self.sent += count

    def wait_acked(self, count: int, timeout: float = 30.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.acked >= count or self.exited, timeout):
                raise TimeoutError(f"node {self.name}: {self.acked} of {count} messages acknowledged")
            if self.acked < count:
                raise RuntimeError(f"node {self.name} exited with {self.acked} of {count} acknowledged: "
                                   f"{self.stderr[-5:]}")

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin (end of input) and wait for the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = self.process.wait(timeout)
        self._join()
        return status

    def kill(self) -> None:
        """SIGKILL by pid, as a crash would, and reap."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self._join()

    def _join(self) -> None:
        for reader in self.readers:
            reader.join(10)

    def end(self) -> None:
        """Make sure the process is gone (for finally blocks)."""
        if self.process.poll() is None:
            self.kill()
        else:
            self.kill()  # reaps, closes stdin, joins the readers


def start_nodes(url: str, count: int, *options: str, prefix: str = "node") -> list[NodeProcess]:
    nodes = [NodeProcess.start(f"{prefix}-{i}", url, *options) for i in range(count)]
    try:
        for node in nodes:
            node.wait_ready()
    except BaseException:
        for node in nodes:
            node.end()
        raise
    return nodes


class StreamReader:
    """Reads a stream from its start with ``XREAD BLOCK``, keeping every entry with the time it was read."""

    def __init__(self, client: redis.Redis, stream: str = INBOUND_STREAM) -> None:
        self._client = client
        self._stream = stream
        self._last = "0-0"
        self.entries: list[InboundBatch] = []

    def poll(self, block_ms: int = 200) -> list[InboundBatch]:
        reply: Any = self._client.xread({self._stream: self._last}, count=1000, block=block_ms)
        new = []
        for _, entries in reply or ():
            for entry_id, fields in entries:
                new.append(decode_entry(fields, entry_id))
                self._last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        self.entries.extend(new)
        return new

    def read_until(self, done: Any, timeout: float) -> None:
        """Poll until ``done()`` is true; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream condition not reached in {timeout} s ({len(self.entries)} entries read)")
            self.poll()

    def messages(self) -> Iterator[tuple[InboundBatch, str]]:
        for entry in self.entries:
            for message in entry.batch.messages:
                yield entry, message.text


def open_deadlines(client: redis.Redis) -> int:
    return int(client.zcard(DIST_DEADLINES))


def percentile(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
