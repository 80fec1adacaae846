"""``run_system.py serve --redis``: persistence end to end, with real subprocesses and private redis-servers.

Output is read by reader threads and awaited with timeouts (no sleeps). To catch a node with a batch in flight
at a known point, the crash test reads the node's stdout only when it chooses, through a pipe made smaller
than one batch line: the node then blocks writing a line (before acknowledging it) until the test reads on.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import signal
import threading
from typing import IO, Any, Callable

import pytest
import redis
from redis_support import RedisServer
from test_run_system import TIMEOUT, Running, batches_of, launch, message, run, texts_by_channel

from actors.system import free_port
from protocol import codec, keys
from protocol.values import QueueItem
from service.cli import parse_args
from service.serve import redacted

pytestmark = pytest.mark.redis

__all__ = ["launch"]  # the fixture, used by name

PIPE_SIZE = 16 * 1024  # the crashing node's stdout pipe; each of its batch lines is about twice that


def lines_of(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def stdout_batches(node: Running) -> list[dict[str, Any]]:
    """Every batch line ``node`` writes, until its stdout ends."""
    batches = []
    while (line := node.stdout.get(timeout=TIMEOUT)) is not None:
        batches.append(json.loads(line))
    return batches


def stored_count(c: redis.Redis, role: str, channel: str) -> int:
    return int(c.llen(keys.channel_key(role, channel)))


class PacedReader:
    """Reads a pipe only when asked, so that its writer blocks once the pipe is full."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._asks: queue.Queue[int | None] = queue.Queue()
        self._got: queue.Queue[bytes] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (size := self._asks.get()) is not None:
            data = os.read(self._fd, size)
            self._got.put(data)
            if not data:
                return

    def read(self, size: int = 4096) -> bytes:
        """Up to ``size`` bytes, as soon as some are there; b"" at end of file."""
        self._asks.put(size)
        return self._got.get(timeout=TIMEOUT)

    def rest(self) -> bytes:
        """Everything up to end of file (the writer must be gone)."""
        chunks = []
        while chunk := self.read(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._asks.put(None)
        self._thread.join(TIMEOUT)


# -- the normal path ----------------------------------------------------------------------------------------


def test_serve_with_redis_delivers_every_batch_once_with_attempt_1_and_leaves_nothing_stored(
    redis_srv: RedisServer, client: redis.Redis
) -> None:
    channels = ("slack:#general", "discord:1234", "telegram:-100")
    records = [message(c, f"{c} says {i}") for i in range(5) for c in channels]

    result = run("serve", "--redis", redis_srv.url, "--window", "0.05", "--max-batch-size", "3",
                 stdin=lines_of(*records))

    assert result.returncode == 0, result.stderr
    batches = batches_of(result.stdout)
    assert texts_by_channel(batches) == {c: [f"{c} says {i}" for i in range(5)] for c in channels}
    assert {b["attempt"] for b in batches} == {1}
    assert len({b["item_id"] for b in batches}) == len(batches)
    assert f"persisting to Redis at {redis_srv.url}" in result.stderr
    assert "restored" not in result.stderr and "Traceback" not in result.stderr
    for channel in channels:  # every batch was acknowledged durably before the node exited
        for role in (keys.QUEUE, keys.PROCESSING, keys.OPEN_BATCH):
            assert stored_count(client, role, channel) == 0, (role, channel)

    again = run("serve", "--redis", redis_srv.url, "--window", "0.05")  # nothing left to restore

    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and "restored" not in again.stderr


# -- a crash and a restart -------------------------------------------------------------------------------


def test_a_node_killed_with_a_batch_in_flight_waiting_batches_and_open_batches_is_resumed_by_the_next(
    launch: Callable[..., Running], redis_srv: RedisServer, client: redis.Redis
) -> None:
    options = ("serve", "--redis", redis_srv.url, "--window", "1.5", "--max-batch-size", "2")
    big = [message("big", f"{i}:" + "x" * PIPE_SIZE) for i in range(8)]  # 4 full batches of ~2 pipes each
    small = [message("open:1", "first"), message("open:2", "second")]  # open batches, 1.5 s window

    crashing = launch(*options, read_stdout=False)
    assert crashing.proc.stdout is not None
    fcntl.fcntl(crashing.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    assert fcntl.fcntl(crashing.proc.stdout.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_SIZE
    reader = PacedReader(crashing.proc.stdout)
    try:
        for record in (*small, *big):
            crashing.write(json.dumps(record))
        crashing.close_stdin()
        # Every message is in the node's command queue now, ahead of the acknowledgement of batch 1, which it
        # sends only once that batch's line is written (the line does not fit the pipe: it waits for us).
        crashing.stderr_line(lambda line: "end of input; 10 messages accepted" in line)
        out = b""
        while b"\n" not in out or len(out.split(b"\n", 1)[1]) < 200:
            chunk = reader.read()
            assert chunk, f"stdout ended early: {out[:300]!r}"
            out += chunk
        # Batch 2's line has begun but cannot end: batch 2 is in flight, unacknowledged, and stays so.
        in_flight = re.search(rb'"item_id": "([0-9a-f]+)"', out.split(b"\n", 1)[1])
        assert in_flight is not None, out[:300]
        crashing.proc.send_signal(signal.SIGKILL)
        assert crashing.wait() == -signal.SIGKILL
        out += reader.rest()
    finally:
        reader.close()
    first_line, partial = out.split(b"\n", 1)
    [delivered] = [json.loads(first_line)]
    assert delivered["attempt"] == 1 and [m["text"] for m in delivered["messages"]] == [r["text"] for r in big[:2]]
    assert not partial.endswith(b"\n")

    # What the killed node left: batch 2 in flight, batches 3 and 4 waiting, and the two open batches.
    [raw] = client.lrange(keys.channel_key(keys.PROCESSING, "big"), 0, -1)
    assert isinstance(raw, bytes) and codec.decode(raw, QueueItem).item_id == in_flight.group(1).decode()
    assert stored_count(client, keys.QUEUE, "big") == 2
    assert stored_count(client, keys.OPEN_BATCH, "open:1") == stored_count(client, keys.OPEN_BATCH, "open:2") == 1

    restarted = launch(*options)
    restarted.close_stdin()
    batches = stdout_batches(restarted)

    assert restarted.wait() == 0, restarted.all_stderr()
    stderr = restarted.all_stderr()
    assert "restored 3 channels from Redis" in stderr and "Traceback" not in stderr
    by_channel = texts_by_channel(batches)
    assert by_channel == {
        "big": [r["text"] for r in big[2:]],  # batch 1 was acknowledged: not again
        "open:1": ["first"],
        "open:2": ["second"],
    }
    big_batches = [b for b in batches if b["channel_id"] == "big"]
    assert [b["attempt"] for b in big_batches] == [2, 1, 1]  # the one in flight at the crash comes again
    assert big_batches[0]["item_id"] == in_flight.group(1).decode()
    assert delivered["item_id"] not in {b["item_id"] for b in batches}
    assert all(b["attempt"] == 1 for b in batches if b["channel_id"] != "big")
    for channel in ("big", "open:1", "open:2"):
        for role in (keys.QUEUE, keys.PROCESSING, keys.OPEN_BATCH):
            assert stored_count(client, role, channel) == 0, (role, channel)


@pytest.mark.tcp
def test_sigterm_keeps_open_batches_in_redis_and_a_tcp_node_restores_them(
    launch: Callable[..., Running], redis_srv: RedisServer
) -> None:
    stopped = launch("serve", "--redis", redis_srv.url, "--window", "60")
    stopped.stderr_line(lambda line: "ready" in line)
    stopped.write(json.dumps(message("slack:#a", "one")))
    stopped.write(json.dumps(message("slack:#a", "two")))
    stopped.write(json.dumps(message("slack:#b", "three")))
    stopped.close_stdin()
    stopped.stderr_line(lambda line: "end of input; 3 messages accepted" in line)
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.wait() == 0
    assert "kept in Redis for the next start" in stopped.all_stderr()

    port = free_port()
    tcp = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--redis", redis_srv.url,
                 "--window", "0.05")
    tcp.close_stdin()
    batches = stdout_batches(tcp)

    assert tcp.wait() == 0, tcp.all_stderr()
    assert "restored 2 channels from Redis" in tcp.all_stderr()
    assert texts_by_channel(batches) == {"slack:#a": ["one", "two"], "slack:#b": ["three"]}
    assert {b["attempt"] for b in batches} == {1}
    assert tcp.processes() == set()


@pytest.mark.tcp
def test_a_tcp_node_stopped_while_it_holds_commands_for_a_settings_read_journals_them_first(
    launch: Callable[..., Running], redis_srv: RedisServer
) -> None:
    """The Supervisor holds a new channel's messages while RedisPersistence reads its settings hash (Redis is
    paused, so the read waits); SIGTERM comes meanwhile. The stop waits until the held messages went to their
    channel and were journaled, before the other processes are told to exit: the next start delivers them."""
    client = redis.Redis.from_url(redis_srv.url)
    try:
        port = free_port()
        stopped = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--redis",
                         redis_srv.url, "--window", "60")
        stopped.stderr_line(lambda line: "ready" in line)
        client.client_pause(1500)  # the settings read waits this long
        stopped.write(json.dumps(message("slack:#held", "one")))
        stopped.write(json.dumps(message("slack:#held", "two")))
        stopped.close_stdin()
        stopped.stderr_line(lambda line: "end of input; 2 messages accepted" in line)
        stopped.proc.send_signal(signal.SIGTERM)
        assert stopped.wait() == 0, stopped.all_stderr()
        assert stopped.processes() == set()
        assert "did not confirm" not in stopped.all_stderr()

        restarted = launch("serve", "--redis", redis_srv.url, "--window", "0.05")
        restarted.close_stdin()
        batches = stdout_batches(restarted)
        assert restarted.wait() == 0, restarted.all_stderr()
        assert texts_by_channel(batches) == {"slack:#held": ["one", "two"]}
    finally:
        client.close()


# -- refusals ---------------------------------------------------------------------------------------------


def test_serve_refuses_a_redis_without_aof_in_one_line_unless_allowed(volatile_redis: RedisServer) -> None:
    refused = run("serve", "--redis", volatile_redis.url, "--window", "0.05",
                  stdin=lines_of(message("slack:#a", "hey")))

    assert refused.returncode == 1
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()  # one clear line, no traceback, no duplicate log record
    assert line.startswith("serve: ") and "appendonly is 'no'" in line and "--allow-volatile-redis" in line

    allowed = run("serve", "--redis", volatile_redis.url, "--allow-volatile-redis", "--window", "0.05",
                  stdin=lines_of(message("slack:#a", "hey")))

    assert allowed.returncode == 0, allowed.stderr
    assert texts_by_channel(batches_of(allowed.stdout)) == {"slack:#a": ["hey"]}
    [warning] = [line for line in allowed.stderr.splitlines() if "WARNING" in line]
    assert warning.startswith("serve: WARNING:") and "appendonly is 'no'" in warning
    assert "Traceback" not in allowed.stderr


def test_serve_exits_1_with_a_clear_message_when_redis_cannot_be_reached() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = run("serve", "--redis", url, stdin=lines_of(message("slack:#a", "hey")))

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"serve: cannot reach Redis at {url}: ")


def test_serve_exits_1_when_redis_lost_data_of_an_earlier_run(redis_srv: RedisServer, client: redis.Redis) -> None:
    client.sadd(keys.CHANNEL_INDEX, "slack:#a")  # state was stored, but the epoch marker is gone

    result = run("serve", "--redis", redis_srv.url, stdin=lines_of(message("slack:#a", "hey")))

    assert result.returncode == 1
    [line] = [text for text in result.stderr.splitlines() if text.startswith("serve:")]
    assert "lost data stored by an earlier run" in line and "Traceback" not in result.stderr
    assert client.smembers(keys.CHANNEL_INDEX) == {b"slack:#a"}  # nothing was changed


def test_redis_options_are_checked_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, error in (
        (["serve", "--allow-volatile-redis"], "--allow-volatile-redis needs --redis"),
        (["serve", "--redis", "http://127.0.0.1:6379"], "Redis URL must specify one of the following schemes"),
    ):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2
        assert error in capsys.readouterr().err
    assert redacted("redis://ann:s3cret@host:1/0") == "redis://ann:***@host:1/0"
    assert redacted("redis://host:1/0") == "redis://host:1/0"
