"""A node killed with SIGKILL while an item waits out a retry's backoff, or while it holds a dead letter,
restarts with the item's id and attempt, the rest of its backoff, and its dead letters intact.

Nodes are ``tests/crash_node.py`` processes persisting to the test's own redis-server (AOF on); every delivery
on a channel named ``fail...`` fails. The node is killed as soon as Redis shows the state under test: the
retry's record (``message_queue:retry:<channel>``) or the dead letter (``message_queue:dead:<channel>``).
"""

from __future__ import annotations

import json
import pathlib
import queue
import time
from typing import Callable, Iterator

import pytest
import redis
from redis_support import RedisServer, as_bytes
from test_crash import START_TIMEOUT, Node

from protocol import codec, keys
from protocol.values import DeadLetter, QueueItem

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CHANNEL = "fail-1"
BACKOFF = 600.0  # seconds: the first wait is a draw from 0..60 s (the cap); the test pins what is left of it
NODE_ARGS = ("--max-attempts", "2", "--retry-backoff", str(BACKOFF), "--fail-prefix", "fail")


class Nodes:
    """Starts crash nodes one after the other on one Redis and reads their stdout lines with timeouts."""

    def __init__(self, url: str, log_dir: pathlib.Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.sink: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self.started: list[Node] = []

    def start(self) -> Node:
        node = Node(len(self.started), self.url, self.log_dir, self.sink, NODE_ARGS)
        self.started.append(node)
        self.expect(node, lambda line: line.startswith("R "), START_TIMEOUT)
        return node

    def expect(self, node: Node, wanted: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first line of ``node`` that ``wanted`` accepts (lines of earlier nodes are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node {node.generation}: no line as wanted within {timeout} s "
                                     f"(stderr in {node.log_path})")
            try:
                generation, line = self.sink.get(timeout=left)
            except queue.Empty:
                continue
            if generation != node.generation:
                continue
            assert line is not None, f"node {node.generation} ended early (stderr in {node.log_path})"
            if wanted(line):
                return line

    def close(self) -> None:
        for node in self.started:
            node.close()
            node.finish()


@pytest.fixture
def nodes(redis_srv: RedisServer, tmp_path: pathlib.Path) -> Iterator[Nodes]:
    made = Nodes(redis_srv.url, tmp_path)
    yield made
    made.close()


def stored(client: redis.Redis, key: str, *, head_of_list: bool = False, timeout: float = 10.0) -> bytes:
    """The value at ``key`` (a string; with ``head_of_list``, the first entry of a list) once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = client.lindex(key, 0) if head_of_list else client.get(key)
        if raw is not None:
            return as_bytes(raw)
        time.sleep(0.01)  # polling Redis for state another process writes
    raise AssertionError(f"{key} was not written within {timeout} s")


def delivery(line: str) -> tuple[str, str, int, str]:
    _, channel, item_id, attempt, texts = line.split(" ")
    return channel, item_id, int(attempt), texts


def test_a_node_killed_during_a_backoff_and_then_with_a_dead_letter_keeps_both(
    nodes: Nodes, client: redis.Redis
) -> None:
    node = nodes.start()
    assert node.write(f"E {CHANNEL} m1\n".encode())
    first = delivery(nodes.expect(node, lambda line: line.startswith(f"D {CHANNEL} ")))
    assert first[2:] == (1, "m1")
    retry_key = keys.channel_key(keys.RETRY, CHANNEL)
    record = json.loads(stored(client, retry_key))
    assert record["item_id"] == first[1]
    node.kill9()  # mid-backoff: the retry waits up to a minute

    # Pin the rest of the backoff to 5 s from now, as a long draw would leave it (a restart takes about 1 s).
    due = time.time() + 5.0
    client.set(retry_key, json.dumps({**record, "due_at": due}))
    (head,) = [codec.decode(as_bytes(raw), QueueItem) for raw in client.lrange(keys.queue_key(CHANNEL), 0, -1)]
    assert (head.item_id, head.attempt) == (first[1], 2)
    node = nodes.start()
    restarted_at = time.time()
    second = delivery(nodes.expect(node, lambda line: line.startswith(f"D {CHANNEL} ")))
    assert time.time() >= due - 0.05, "the restarted node did not wait out the rest of the backoff"
    assert restarted_at < due, "the restart took longer than the pinned backoff: nothing was checked"
    assert second == (CHANNEL, first[1], 2, "m1")  # same item, next attempt

    # The second attempt was the last: a dead letter. Kill the node once it is stored.
    letter = codec.decode(stored(client, keys.channel_key(keys.DEAD_LETTER, CHANNEL), head_of_list=True), DeadLetter)
    assert letter.item is not None and (letter.item.item_id, letter.attempts) == (first[1], 2)
    assert letter.first_failed_at <= record["first_failed_at"] + 1e-6 < letter.last_failed_at
    node.kill9()
    assert not client.exists(retry_key)

    node = nodes.start()
    assert node.write(f"L {CHANNEL}\n".encode())
    listed = nodes.expect(node, lambda line: line.startswith(f"L {CHANNEL} ")).split(" ")
    assert listed[2] == "1"
    item_id, attempts, first_failed, last_failed = listed[3].split(":")
    assert (item_id, int(attempts)) == (first[1], 2)
    assert (float(first_failed), float(last_failed)) == (letter.first_failed_at, letter.last_failed_at)
