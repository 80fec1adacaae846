"""Crash tests: real node processes killed with SIGKILL, a real redis-server killed with SIGKILL, and a large
restore. Every acknowledged message must be delivered, in order per channel; a repeat delivery must be flagged
(same item id, higher attempt).

Nodes are ``tests/crash_node.py`` processes (an InProcessDriver persisting to the test's own redis-server,
AOF on, ``appendfsync everysec``). A producer thread writes ``E <channel> <msgid>`` lines to the current
node's stdin at a steady pace and never resends: a message whose ``A`` line never came may or may not be
delivered. A reader thread per node turns its stdout into ``(node, line)`` entries of one queue; the test
reads that queue with timeouts and never sleeps to wait for a result. The only sleeps are the fault schedule
(seeded random delays before a kill, the length of a Redis outage) and the producer's pace.

Environment:
    ``MQ_CRASH_KILLS``  number of node kills in the kill -9 loop (default 20). For the long run:
                        ``MQ_CRASH_KILLS=1000 .venv/bin/pytest tests/test_crash.py -q -s -k kill_9_loop``
    ``MQ_CRASH_SEED``   seed of the fault schedule and the producer (default 20240611).

``pytest -s`` shows the counts of every test (one ``crash-counts`` line each).
"""

from __future__ import annotations

import errno
import os
import pathlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import pytest
import redis
from actor_support import Recorded, RecordingProcessor, WaitFor
from redis_support import RedisServer

from actors import procfs
from actors.journal import FinishInFlight, PushTail, TakeHead
from actors.store import RedisStore
from actors.system import SIMPLE_BASE, start_system
from protocol import keys
from protocol.messages import BatchReady, ProcessingStarted, StartProcessing
from protocol.values import BatchSettings, QueuedMessage, QueueItem, payload_messages

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_SCRIPT = pathlib.Path(__file__).with_name("crash_node.py")

KILLS = int(os.environ.get("MQ_CRASH_KILLS", "20"))
SEED = int(os.environ.get("MQ_CRASH_SEED", "20240611"))

CHANNELS = 50
WINDOW = 0.05
MAX_BATCH = 5
START_TIMEOUT = 60.0  # a node's start, restore included
PROGRESS_TIMEOUT = 30.0  # a live node printing its next lines
DRAIN_TIMEOUT = 60.0  # a final node delivering every acknowledged message


# -- processes ----------------------------------------------------------------------------------------------


class Node:
    """One ``crash_node.py`` process; its stdout lines go to ``sink`` as ``(generation, line)``, then
    ``(generation, None)`` at end of file."""

    def __init__(
        self, generation: int, url: str, log_dir: pathlib.Path, sink: queue.SimpleQueue[tuple[int, str | None]],
        extra_args: Sequence[str] = (),
    ) -> None:
        self.generation = generation
        self.log_path = log_dir / f"node-{generation}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(NODE_SCRIPT), "--redis", url, "--window", str(WINDOW),
                 "--max-batch-size", str(MAX_BATCH), *extra_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin_fd = self.proc.stdin.fileno()
        self._write_lock = threading.Lock()
        self._stdin_open = True
        self._reader = threading.Thread(target=self._read, args=(sink,), name=f"node-{generation}-stdout",
                                        daemon=True)
        self._reader.start()

    def _read(self, sink: queue.SimpleQueue[tuple[int, str | None]]) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            sink.put((self.generation, raw.decode("utf-8").rstrip("\n")))
        sink.put((self.generation, None))

    def write(self, data: bytes) -> bool:
        """Write ``data`` to the node's stdin; False if the node is gone (nothing more can reach it)."""
        with self._write_lock:
            if not self._stdin_open:
                return False
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._stdin_fd, view) :]
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    return False
                raise
            return True

    def kill9(self) -> None:
        """SIGKILL the node by pid and reap it; it must have no child process (simpleSystemBase: one process)."""
        if self.proc.poll() is None:
            children = procfs.children(self.proc.pid)
            assert children == [], f"node {self.proc.pid} has child processes {children}"
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close_stdin()

    def close(self, timeout: float = 20.0) -> None:
        """End the node's input (it stops by itself), killing it if it does not exit within ``timeout``."""
        self._close_stdin()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def _close_stdin(self) -> None:
        with self._write_lock:
            if self._stdin_open:
                self._stdin_open = False
                assert self.proc.stdin is not None
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass

    def finish(self) -> None:
        """After the process ended: wait for the reader to reach end of file and release the pipes."""
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


# -- the record of a run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    item_id: str
    attempt: int
    msgids: tuple[str, ...]


@dataclass
class Ledger:
    """What was sent, acknowledged and delivered, and the counts the tests assert on."""

    sent: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # per channel, send order
    acked: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)  # acknowledged, not delivered yet
    deliveries: dict[int, list[Delivery]] = field(default_factory=lambda: defaultdict(list))  # per node
    lines: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # A and D lines per node
    ack_lines: int = 0
    ready: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)
    garbage: list[str] = field(default_factory=list)

    def record(self, generation: int, line: str | None) -> None:
        if line is None:
            self.ended.add(generation)
            return
        kind, _, rest = line.partition(" ")
        if kind == "A":
            self.lines[generation] += 1
            self.ack_lines += 1
            for msgid in rest.split():
                self.acked.add(msgid)
                if msgid not in self.delivered:
                    self.waiting.add(msgid)
        elif kind == "D":
            self.lines[generation] += 1
            channel, item_id, attempt, msgids = rest.split(" ")
            delivery = Delivery(channel, item_id, int(attempt), tuple(msgids.split(",")))
            self.deliveries[generation].append(delivery)
            self.delivered.update(delivery.msgids)
            self.waiting.difference_update(delivery.msgids)
        elif kind == "R":
            self.ready.add(generation)
        else:
            self.garbage.append(line)

    def counts(self) -> dict[str, int]:
        sent = {channel: list(ids) for channel, ids in list(self.sent.items())}  # the producer may still run
        sent_order = {msgid: (channel, i) for channel, ids in sent.items() for i, msgid in enumerate(ids)}
        history: dict[str, list[Delivery]] = defaultdict(list)
        first_order: dict[str, list[int]] = defaultdict(list)
        wrong_channel = 0
        for generation in sorted(self.deliveries):  # nodes ran one after the other
            for delivery in self.deliveries[generation]:
                for msgid in delivery.msgids:
                    if msgid in sent_order and sent_order[msgid][0] != delivery.channel:
                        wrong_channel += 1
                    if not history[msgid] and msgid in sent_order:
                        first_order[delivery.channel].append(sent_order[msgid][1])
                    history[msgid].append(delivery)
        unflagged = 0
        for runs in history.values():
            for previous, repeat in zip(runs, runs[1:]):
                if repeat.item_id != runs[0].item_id or repeat.attempt <= previous.attempt:
                    unflagged += 1
        inversions = sum(
            1 for order in first_order.values() for before, after in zip(order, order[1:]) if after < before
        )
        return {
            "sent": len(sent_order),
            "acked": len(self.acked),
            "delivered": len(history),
            "lost": len(self.acked - self.delivered),
            "duplicated": sum(1 for runs in history.values() if len(runs) > 1),
            "unflagged_duplicates": unflagged,
            "order_inversions": inversions,
            "never_sent": sum(1 for msgid in history if msgid not in sent_order),
            "wrong_channel": wrong_channel,
            "garbage_lines": len(self.garbage),
        }


# -- the harness --------------------------------------------------------------------------------------------


class CrashRun:
    """Nodes started one after the other on one Redis, a producer feeding the current one, and the ledger."""

    def __init__(self, server: RedisServer, log_dir: pathlib.Path, seed: int) -> None:
        self.server = server
        self.log_dir = log_dir
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.sink: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self.nodes: list[Node] = []
        self._current: Node | None = None
        self._lock = threading.Lock()
        self._stop_producing = threading.Event()
        self._producer: threading.Thread | None = None
        self._producer_rng = random.Random(seed + 1)
        self._producer_error: BaseException | None = None

    # nodes

    @property
    def node(self) -> Node:
        assert self._current is not None
        return self._current

    def start_node(self) -> Node:
        node = Node(len(self.nodes), self.server.url, self.log_dir, self.sink)
        self.nodes.append(node)
        with self._lock:
            self._current = node
        return node

    def kill_node(self) -> None:
        self.node.kill9()

    def restart_node(self) -> Node:
        self.kill_node()
        return self.start_node()

    # reading

    def pump(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Read node output into the ledger until ``condition()`` holds (True) or ``timeout`` s pass (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                generation, line = self.sink.get(timeout=remaining)
            except queue.Empty:
                return False
            self.ledger.record(generation, line)
        return True

    def drain(self) -> None:
        """Record whatever output is already queued."""
        self.pump(lambda: False, 0.0)
        while True:
            try:
                generation, line = self.sink.get_nowait()
            except queue.Empty:
                return
            self.ledger.record(generation, line)

    def expect(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        if not self.pump(condition, timeout):
            self.drain()
            raise AssertionError(f"{what}: not within {timeout} s; {self.ledger.counts()}; {self.diagnostics()}")

    def wait_ready(self, node: Node) -> None:
        self.expect(lambda: node.generation in self.ledger.ready, START_TIMEOUT, f"node {node.generation} ready")

    def wait_lines(self, node: Node, more: int) -> None:
        target = self.ledger.lines[node.generation] + more
        self.expect(lambda: self.ledger.lines[node.generation] >= target, PROGRESS_TIMEOUT,
                    f"node {node.generation} printing {more} more A/D lines")

    def wait_acks(self, more: int, timeout: float = PROGRESS_TIMEOUT) -> None:
        target = self.ledger.ack_lines + more
        self.expect(lambda: self.ledger.ack_lines >= target, timeout, f"{more} more A lines")

    def wait_all_delivered(self) -> None:
        self.expect(lambda: not self.ledger.waiting, DRAIN_TIMEOUT, "every acknowledged message delivered")

    def diagnostics(self) -> str:
        logs = []
        for node in self.nodes[-3:]:
            text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
            logs.append(f"--- node {node.generation} (exit {node.proc.poll()}) stderr tail:\n{text[-3000:]}")
        return "\n".join(logs)

    # producing

    def start_producing(self, burst: int = 5, pace: float = 0.005) -> None:
        self._producer = threading.Thread(target=self._produce, args=(burst, pace), name="producer", daemon=True)
        self._producer.start()

    def _produce(self, burst: int, pace: float) -> None:
        try:
            counters = [0] * CHANNELS
            while not self._stop_producing.is_set():
                lines = []
                for _ in range(burst):
                    index = self._producer_rng.randrange(CHANNELS)
                    counters[index] += 1
                    channel = f"ch{index:02d}"
                    msgid = f"{channel}.{counters[index]}"
                    self.ledger.sent[channel].append(msgid)  # sent, whether or not it reaches a node
                    lines.append(f"E {channel} {msgid}\n")
                with self._lock:
                    node = self._current
                if node is not None:
                    node.write("".join(lines).encode())  # a node killed meanwhile loses them: never resent
                time.sleep(pace)  # the producer's pace, not a wait for a result
        except BaseException as exc:  # reported by stop_producing
            self._producer_error = exc

    def stop_producing(self) -> None:
        self._stop_producing.set()
        if self._producer is not None:
            self._producer.join(10)
            assert not self._producer.is_alive(), "the producer did not stop"
        if self._producer_error is not None:
            raise self._producer_error

    # the end

    def close(self) -> None:
        """Stop producing and end every node still running (SIGKILL if need be)."""
        self._stop_producing.set()
        if self._producer is not None:
            self._producer.join(10)
        for node in self.nodes:
            if node.proc.poll() is None:
                node.kill9()
            else:
                node.proc.wait()
                node._close_stdin()
            node.finish()

    def report(self, name: str) -> dict[str, int]:
        self.drain()
        counts = self.ledger.counts()
        counts["nodes"] = len(self.nodes)
        print(f"\ncrash-counts {name}: {counts}")
        return counts


@pytest.fixture
def crash_run(redis_srv: RedisServer, tmp_path: pathlib.Path) -> Iterator[CrashRun]:
    run = CrashRun(redis_srv, tmp_path, SEED)
    try:
        yield run
    finally:
        run.close()
        for node in run.nodes:
            assert node.proc.returncode is not None


def assert_sound(counts: dict[str, int]) -> None:
    bad = {
        name: counts[name]
        for name in ("lost", "unflagged_duplicates", "order_inversions", "never_sent", "wrong_channel",
                     "garbage_lines")
        if counts[name]
    }
    assert not bad, f"{bad} in {counts}"
    assert counts["acked"] > 0, f"nothing was acknowledged: {counts}"


# -- tests --------------------------------------------------------------------------------------------------


def test_kill_9_loop_of_nodes_loses_no_acknowledged_message(crash_run: CrashRun) -> None:
    run, rng = crash_run, crash_run.rng
    run.start_node()
    run.start_producing()
    for _ in range(KILLS):
        node = run.node
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.4))  # fault schedule: may hit the start or the restore
        else:
            run.wait_ready(node)
            run.wait_lines(node, rng.randint(5, 200))  # fault schedule: after a random amount of work
            time.sleep(rng.uniform(0.0, 0.02))
        run.restart_node()
    run.stop_producing()
    final = run.restart_node()
    run.wait_ready(final)
    run.wait_all_delivered()
    final.close()
    run.expect(lambda: final.generation in run.ledger.ended, 10, "the final node's output ended")
    counts = run.report(f"kill_9_loop kills={KILLS} seed={SEED}")
    assert_sound(counts)


def test_kill_9_of_redis_under_load_loses_no_acknowledged_message(crash_run: CrashRun) -> None:
    run, rng, server = crash_run, crash_run.rng, crash_run.server
    client = redis.Redis.from_url(server.url)
    try:
        node = run.start_node()
        run.wait_ready(node)
        epoch = client.get(keys.EPOCH)
        assert epoch is not None
        run.start_producing()
        for _ in range(3):
            run.wait_acks(rng.randint(20, 200))  # fault schedule: after a random amount of work
            server.kill()
            time.sleep(rng.uniform(0.1, 1.5))  # fault schedule: how long Redis stays down
            server.start()
            client.close()
            client = redis.Redis.from_url(server.url)
            assert client.get(keys.EPOCH) == epoch, "the epoch marker did not survive the kill (AOF)"
            run.wait_acks(50, timeout=60)  # acknowledgements resume once Redis is back
        run.stop_producing()
        run.wait_all_delivered()
        assert node.proc.poll() is None, f"the node died: {run.diagnostics()}"
        assert "CRITICAL" not in node.log_path.read_text(), f"RedisDataLost or worse: {run.diagnostics()}"
        # A node restarted on what Redis holds now finds it consistent: nothing acknowledged is missing.
        final = run.restart_node()
        run.wait_ready(final)
        run.wait_all_delivered()
        final.close()
        run.expect(lambda: final.generation in run.ledger.ended, 10, "the final node's output ended")
        counts = run.report(f"redis_kill seed={SEED}")
        assert_sound(counts)
        assert client.get(keys.EPOCH) == epoch
    finally:
        client.close()


def test_a_restore_of_100000_items_across_1000_channels_delivers_every_item_in_order(
    redis_srv: RedisServer,
) -> None:
    channels, per_channel = 1000, 100
    store = RedisStore.from_url(redis_srv.url)
    try:
        store.open_epoch()
        ops: list[PushTail] = []
        for c in range(channels):
            channel = f"r{c:04d}"
            for i in range(per_channel):
                message = QueuedMessage("crash", channel, "u", "u", f"{channel}.{i}")
                ops.append(PushTail(channel, QueueItem(f"{channel}-{i}", channel, message), closes_open=False))
            if len(ops) >= 20_000:
                store.apply(ops)
                ops = []
        store.apply(ops)
    finally:
        store.close()

    running = start_system(SIMPLE_BASE, BatchSettings(window=WINDOW), idle_timeout=3600.0,
                           redis_url=redis_srv.url, timeout=60)
    try:
        asys = running.asys
        processor = asys.createActor(RecordingProcessor)  # answers ProcessingDone at once
        assert isinstance(asys.ask(running.supervisor, StartProcessing(processor=processor), 60), ProcessingStarted)
        recorded = asys.ask(processor, WaitFor(count=channels * per_channel), 60)
        assert isinstance(recorded, Recorded), f"not every item was delivered: {recorded!r}"
    finally:
        running.shutdown()

    delivered: dict[str, list[int]] = defaultdict(list)
    for event in recorded.events:
        assert isinstance(event, BatchReady)
        (message,) = payload_messages(event.item.payload)
        channel, _, index = message.text.rpartition(".")
        assert event.channel_id == channel and event.item.item_id == f"{channel}-{index}"
        assert event.item.attempt == 1
        delivered[channel].append(int(index))
    assert len(delivered) == channels
    wrong = [channel for channel, order in delivered.items() if order != list(range(per_channel))]
    print(f"\ncrash-counts restore: items={len(recorded.events)} channels={len(delivered)} out_of_order={len(wrong)}")
    assert wrong == [], f"{len(wrong)} channels delivered out of order or incompletely, e.g. {wrong[:5]}"


def test_a_transaction_that_ran_although_its_reply_was_lost_is_not_applied_twice_by_the_retry(
    redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks after the write ran (a Redis crash or network cut at the wrong moment): the caller sees
    an error, RedisPersistence retries its buffer, and the store must not apply the same operations twice. A
    second TakeHead would put two items in flight, and the next FinishInFlight would erase both."""
    store = RedisStore.from_url(redis_srv.url)
    try:
        store.open_epoch()
        items = [QueueItem(f"i{n}", "c", QueuedMessage("crash", "c", "u", "u", f"m{n}")) for n in (1, 2)]
        store.apply([PushTail("c", item, closes_open=False) for item in items])

        read_response = redis.connection.Connection.read_response
        cut = {"armed": True, "ran": False}

        def lose_the_reply(self: redis.connection.Connection, *args: object, **kwargs: object) -> object:
            response = read_response(self, *args, **kwargs)
            if cut["armed"] and response == [b"ok"]:  # the script's reply: the operations have been applied
                cut["armed"], cut["ran"] = False, True
                self.disconnect()  # type: ignore[no-untyped-call]
                raise redis.ConnectionError("connection lost after the write ran (simulated)")
            return response

        monkeypatch.setattr(redis.connection.Connection, "read_response", lose_the_reply)
        held = [TakeHead("c")]
        with pytest.raises(redis.ConnectionError, match="simulated"):
            store.apply(held)
        assert cut["ran"]
        store.apply(held + [FinishInFlight("c")])  # RedisPersistence's retry: the same buffer, and more since
        monkeypatch.undo()

        (snapshot,) = store.load()
        assert [item.item_id for item in snapshot.waiting] == ["i2"]
    finally:
        store.close()
