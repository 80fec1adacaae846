"""The asyncio API with ``redis=``: a message whose ``await enqueue()`` returned is in Redis, and is delivered, in
order, even if the process is killed with SIGKILL right after and restarted.

The kill loop runs ``tests/mq_crash_producer.py`` processes one after the other on one private redis-server (AOF
on, ``appendfsync everysec``). Each enqueues from many concurrent tasks (``enqueue`` and ``enqueue_many``) and
prints an acknowledgement after every ``await`` that returned, and one line per delivery (item id, attempt,
sequence numbers). The test kills each with SIGKILL by pid, after a random number of acknowledgements or a random
short time (which may fall in its start-up or restore), and starts the next. A last run enqueues nothing and
delivers what was restored. A reader thread per process turns its stdout into entries of one queue; the test reads
that queue with timeouts and never sleeps to wait for a result (the only sleeps are the fault schedule).

Environment:
    ``MQ_CRASH_KILLS``  number of kills in the loop (default 20). For the long run:
                        ``MQ_CRASH_KILLS=100 .venv/bin/python -m pytest tests/test_mq_crash.py -q -s -k kill_9``
    ``MQ_CRASH_SEED``   seed of the fault schedule and of the producers (default 20240611).

``pytest -s`` prints the counts (one ``mq-crash-counts`` line).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
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
from typing import Any, Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from mq_crash_producer import RUN_STRIDE
from redis_support import RedisServer, as_bytes

from actors import procfs, write_script
from message_queue import MessageQueue
from protocol import codec, keys
from protocol.values import OpenEntry, QueuedMessage

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRODUCER_SCRIPT = pathlib.Path(__file__).with_name("mq_crash_producer.py")

KILLS = int(os.environ.get("MQ_CRASH_KILLS", "20"))
SEED = int(os.environ.get("MQ_CRASH_SEED", "20240611"))

CHANNELS = 20
START_TIMEOUT = 60.0  # a producer's start, restore included
PROGRESS_TIMEOUT = 30.0  # a live producer printing its next acknowledgements
DRAIN_TIMEOUT = 120.0  # the final run delivering every acknowledged message
EXIT_TIMEOUT = 30.0  # the final run closing its queue once its input ends

Msg = tuple[str, int]  # (channel, sequence number)


# -- the producer processes ---------------------------------------------------------------------------------


class Producer:
    """One ``mq_crash_producer.py`` process; its stdout goes to ``sink`` as ``(run, record)`` (a JSON object, or
    the raw line when it is not one), then ``(run, None)`` at end of file."""

    def __init__(self, run: int, url: str, log_dir: pathlib.Path, sink: queue.SimpleQueue[tuple[int, Any]],
                 produce: bool) -> None:
        self.run = run
        self.log_path = log_dir / f"producer-{run}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PRODUCER_SCRIPT), "--redis", url, "--run", str(run),
                 "--produce" if produce else "--no-produce", "--channels", str(CHANNELS), "--seed", str(SEED)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
            )
        self._reader = threading.Thread(target=self._read, args=(sink,), name=f"producer-{run}-stdout", daemon=True)
        self._reader.start()

    def _read(self, sink: queue.SimpleQueue[tuple[int, Any]]) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                record: Any = json.loads(line)
            except ValueError:
                record = line  # not a record: the ledger counts it as garbage
            sink.put((self.run, record))
        sink.put((self.run, None))

    def kill9(self) -> None:
        """SIGKILL the process by pid and reap it; it must have no child process."""
        if self.proc.poll() is None:
            children = procfs.children(self.proc.pid)
            assert children == [], f"producer {self.proc.pid} has child processes {children}"
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def end_input(self) -> None:
        """Close its standard input: the producer closes its queue and exits."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def finish(self) -> None:
        """After the process ended: wait for the reader to reach end of file and release the pipes."""
        self._reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


# -- the record of a run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    run: int
    channel: str
    item_id: str
    attempt: int
    messages: tuple[Msg, ...]


@dataclass
class Ledger:
    """What was acknowledged and delivered, and the counts the test asserts on."""

    acked: set[Msg] = field(default_factory=set)
    delivered: set[Msg] = field(default_factory=set)
    waiting: set[Msg] = field(default_factory=set)  # acknowledged, not delivered yet
    deliveries: list[Delivery] = field(default_factory=list)  # in the order the runs printed them
    acks: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # acknowledgement lines per run
    ready: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)
    garbage: list[str] = field(default_factory=list)  # lines that are no record (each is one write of < 4 KB
    # to a pipe, which is atomic: not even a kill can cut one)

    def record(self, run: int, record: Any) -> None:
        if record is None:
            self.ended.add(run)
            return
        if not isinstance(record, dict):
            self.garbage.append(f"run {run}: {record!r}")
            return
        kind = record.get("k")
        if kind == "A":
            self.acks[run] += 1
            for channel, seq in record["m"]:
                msg = (channel, seq)
                self.acked.add(msg)
                if msg not in self.delivered:
                    self.waiting.add(msg)
        elif kind == "D":
            delivery = Delivery(run, record["c"], record["i"], record["a"],
                                tuple((channel, seq) for channel, seq in record["m"]))
            self.deliveries.append(delivery)
            self.delivered.update(delivery.messages)
            self.waiting.difference_update(delivery.messages)
        elif kind == "R":
            self.ready.add(run)
        else:
            self.garbage.append(f"run {run}: {record!r}")

    def counts(self) -> dict[str, int]:
        history: dict[Msg, list[Delivery]] = defaultdict(list)
        first_order: dict[str, list[int]] = defaultdict(list)  # per channel, first deliveries in order
        wrong_channel = 0
        for delivery in self.deliveries:
            for msg in delivery.messages:
                if msg[0] != delivery.channel:
                    wrong_channel += 1
                if not history[msg]:
                    first_order[msg[0]].append(msg[1])
                history[msg].append(delivery)
        unflagged = 0
        for runs in history.values():
            for previous, repeat in zip(runs, runs[1:]):
                if repeat.item_id != runs[0].item_id or repeat.attempt <= previous.attempt:
                    unflagged += 1
        inversions = sum(
            1 for order in first_order.values() for before, after in zip(order, order[1:]) if after < before
        )
        # A channel's messages of one run are stored in the order they were accepted, so what a run stored is
        # a prefix of what it sent: the delivered sequence numbers of (channel, run) have no hole.
        per_run: dict[tuple[str, int], set[int]] = defaultdict(set)
        for channel, seq in history:
            per_run[(channel, seq // RUN_STRIDE)].add(seq)
        holes = sum(max(seqs) - min(seqs) + 1 - len(seqs) for seqs in per_run.values())
        not_from_start = sum(1 for (_, run), seqs in per_run.items() if min(seqs) != run * RUN_STRIDE)
        unacked_delivered = len(self.delivered - self.acked)
        return {
            "runs": len(self.ready | self.ended),
            "acked": len(self.acked),
            "delivered": len(history),
            "delivered_unacked": unacked_delivered,
            "lost": len(self.acked - self.delivered),
            "items": len({(d.channel, d.item_id) for d in self.deliveries}),
            "redeliveries": sum(1 for d in self.deliveries if d.attempt > 1),
            "redelivered_messages": sum(1 for runs in history.values() if len(runs) > 1),
            "unflagged_duplicates": unflagged,
            "order_inversions": inversions,
            "holes": holes,
            "not_from_start": not_from_start,
            "wrong_channel": wrong_channel,
            "garbage_lines": len(self.garbage),
        }


# -- the harness --------------------------------------------------------------------------------------------


class CrashLoop:
    """Producer runs started one after the other on one Redis, and the ledger of their output."""

    def __init__(self, server: RedisServer, log_dir: pathlib.Path, seed: int) -> None:
        self.server = server
        self.log_dir = log_dir
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.sink: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.producers: list[Producer] = []
        self.killed: set[int] = set()

    def start(self, produce: bool = True) -> Producer:
        producer = Producer(len(self.producers) + 1, self.server.url, self.log_dir, self.sink, produce)
        self.producers.append(producer)
        return producer

    def kill(self, producer: Producer) -> None:
        producer.kill9()
        self.killed.add(producer.run)

    def pump(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Read output into the ledger until ``condition()`` holds (True) or ``timeout`` s pass (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                run, record = self.sink.get(timeout=remaining)
            except queue.Empty:
                return False
            self.ledger.record(run, record)
        return True

    def drain(self) -> None:
        """Record whatever output is already queued."""
        while True:
            try:
                run, record = self.sink.get_nowait()
            except queue.Empty:
                return
            self.ledger.record(run, record)

    def expect(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        if not self.pump(condition, timeout):
            self.drain()
            raise AssertionError(f"{what}: not within {timeout} s; {self.ledger.counts()}; "
                                 f"{self.diagnostics()}")

    def diagnostics(self) -> str:
        logs = []
        for producer in self.producers[-3:]:
            text = producer.log_path.read_text(errors="replace") if producer.log_path.exists() else ""
            logs.append(f"--- run {producer.run} (exit {producer.proc.poll()}) stderr tail:\n{text[-3000:]}")
        return "\n".join(logs)

    def close(self) -> None:
        """End every producer still running, by pid, and release its pipes."""
        for producer in self.producers:
            if producer.proc.poll() is None:
                producer.kill9()
            producer.finish()


@pytest.fixture
def crash_loop(redis_srv: RedisServer, tmp_path: pathlib.Path) -> Iterator[CrashLoop]:
    loop = CrashLoop(redis_srv, tmp_path, SEED)
    try:
        yield loop
    finally:
        loop.close()
        for producer in loop.producers:
            assert producer.proc.returncode is not None


# -- tests --------------------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_kill_9_loop_of_asyncio_producers_loses_no_acknowledged_message(crash_loop: CrashLoop) -> None:
    loop, rng, ledger = crash_loop, crash_loop.rng, crash_loop.ledger
    for _ in range(KILLS):
        producer = loop.start()
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 1.0))  # fault schedule: may hit the start or the restore
        else:
            loop.expect(lambda: producer.run in ledger.ready, START_TIMEOUT, f"run {producer.run} ready")
            target = ledger.acks[producer.run] + rng.randint(1, 400)  # fault schedule: after some work
            loop.expect(lambda: ledger.acks[producer.run] >= target, PROGRESS_TIMEOUT,
                        f"run {producer.run} acknowledging")
            time.sleep(rng.uniform(0.0, 0.01))  # fault schedule: between two acknowledgements
        loop.kill(producer)
    final = loop.start(produce=False)
    loop.expect(lambda: final.run in ledger.ready, START_TIMEOUT, "the final run ready")
    loop.expect(lambda: not ledger.waiting, DRAIN_TIMEOUT, "every acknowledged message delivered")
    final.end_input()
    final.proc.wait(EXIT_TIMEOUT)
    loop.expect(lambda: final.run in ledger.ended, 10, "the final run's output ended")
    loop.drain()

    counts = ledger.counts()
    counts["kills"] = len(loop.killed)
    print(f"\nmq-crash-counts kills={KILLS} seed={SEED}: {counts}")
    assert final.proc.returncode == 0, f"the final run exited with {final.proc.returncode}: {loop.diagnostics()}"
    final_log = final.log_path.read_text(errors="replace")
    assert not any(word in final_log for word in ("Traceback", " ERROR ", " CRITICAL ")), loop.diagnostics()
    assert counts["acked"] > 0, f"nothing was acknowledged: {counts}"
    assert counts["lost"] == 0, f"acknowledged messages never delivered: {counts}"
    assert counts["order_inversions"] == 0, f"first deliveries out of sequence order: {counts}"
    assert counts["unflagged_duplicates"] == 0, (
        f"messages delivered again without the same item id and a higher attempt: {counts}"
    )
    bad = {name: counts[name] for name in ("holes", "not_from_start", "wrong_channel", "garbage_lines") if counts[name]}
    assert not bad, f"{bad} in {counts}; garbage {ledger.garbage[:5]}"


def test_the_ledger_counts_what_the_kill_loop_asserts_on() -> None:
    ledger = Ledger()
    base = RUN_STRIDE
    ledger.record(1, {"k": "R", "pid": 1})
    ledger.record(1, {"k": "A", "m": [["a", base], ["a", base + 1], ["a", base + 2], ["b", base]]})
    ledger.record(1, {"k": "D", "c": "a", "i": "x", "a": 1, "m": [["a", base], ["a", base + 1]]})
    ledger.record(1, {"k": "D", "c": "b", "i": "y", "a": 1, "m": [["b", base]]})
    ledger.record(1, None)
    ledger.record(2, {"k": "D", "c": "a", "i": "x", "a": 2, "m": [["a", base], ["a", base + 1]]})  # flagged
    ledger.record(2, {"k": "D", "c": "b", "i": "z", "a": 1, "m": [["b", base]]})  # new item id: unflagged
    ledger.record(2, {"k": "D", "c": "a", "i": "w", "a": 1, "m": [["a", base + 4], ["a", base + 3]]})
    ledger.record(2, "{cut")
    counts = ledger.counts()
    assert counts["acked"] == 4 and counts["delivered"] == 5 and counts["delivered_unacked"] == 2
    assert counts["lost"] == 1  # a.2
    assert ledger.waiting == {("a", base + 2)}
    assert counts["redeliveries"] == 1 and counts["redelivered_messages"] == 3
    assert counts["unflagged_duplicates"] == 1
    assert counts["order_inversions"] == 1  # a.4 before a.3
    assert counts["holes"] == 1  # a.2 never delivered between a.1 and a.3
    assert counts["garbage_lines"] == 1 and counts["runs"] == 1


# -- acknowledged means stored, and writes are shared ---------------------------------------------------------


def _msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("crash", channel, "u", "u", text)


_APPLY_SHA = hashlib.sha1(write_script.APPLY.encode()).hexdigest()


class ApplyWrites:
    """Counts the store's writes (``EVALSHA`` of its apply script) that Redis runs between ``__enter__`` and
    ``count()``, with ``MONITOR`` on a connection of its own. Only that script is counted: the writer lease's
    renewal (another script, every 5 s) cannot make the count flaky."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._marker = f"apply-writes-{os.getpid()}-{time.monotonic_ns()}"

    def __enter__(self) -> ApplyWrites:
        self._monitor = self._client.monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()
        return self

    def count(self) -> int:
        """Writes run so far; Redis shows a command to ``MONITOR`` as it runs it, and ours come first."""
        self._client.echo(self._marker)
        writes = 0
        for command in self._monitor.listen():
            text = command["command"]
            if self._marker in text:
                return writes
            if text.startswith("EVALSHA ") and text.split(" ", 2)[1] == _APPLY_SHA:
                writes += 1
        raise AssertionError("MONITOR ended before the marker")

    def __exit__(self, *exc: object) -> None:
        self._monitor.__exit__(*exc)
        self._client.close()


def _open_batch(client: redis.Redis, channel: str) -> list[str]:
    entries = [codec.decode(as_bytes(raw)) for raw in client.lrange(keys.channel_key(keys.OPEN_BATCH, channel), 0, -1)]
    assert all(isinstance(e, OpenEntry) for e in entries), entries
    return [e.message.text for e in entries if isinstance(e, OpenEntry)]


@pytest.mark.redis
def test_an_awaited_enqueue_is_in_redis_and_concurrent_enqueues_share_writes(redis_srv: RedisServer) -> None:
    direct = redis.Redis.from_url(redis_srv.url)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        # A window of a minute and no callback: every message stays in its channel's open batch.
        async with MessageQueue(default_batch_window=60.0, max_batch_size=100, redis=client,
                                config_ttl=3600.0) as mq:
            await mq.enqueue(_msg("c0", "first"))
            # Read synchronously, before this coroutine yields: nothing can write it after the await returned.
            assert _open_batch(direct, "c0") == ["first"]

            for c in range(1, 10):  # each channel's settings are read once; from now on they are cached
                await mq.enqueue(_msg(f"c{c}", "first"))
            with ApplyWrites(redis_srv.url) as writes:
                await asyncio.gather(*(mq.enqueue(_msg(f"c{i % 10}", f"m{i}")) for i in range(100)))
                shared = writes.count()
            print(f"\nmq-crash-counts shared writes: 100 concurrent enqueue calls, {shared} write(s)")
            stored = {f"c{c}": _open_batch(direct, f"c{c}") for c in range(10)}
            assert stored == {f"c{c}": ["first"] + [f"m{i}" for i in range(c, 100, 10)] for c in range(10)}
            assert shared == 1, f"100 concurrent enqueue calls took {shared} writes to Redis"

            with ApplyWrites(redis_srv.url) as writes:
                await mq.enqueue_many(_msg(f"c{i % 10}", f"n{i}") for i in range(50))
                many = writes.count()
            assert many == 1, f"enqueue_many of 50 messages took {many} writes to Redis"
            assert _open_batch(direct, "c3")[-5:] == [f"n{i}" for i in range(3, 50, 10)]
        await client.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        direct.close()
