"""Faults with real processes: Redis restarted (cleanly and by ``kill -9``) or paused past the writer lease
under load, its disk filled, and thousands of random and malformed inputs through every way in.

Every test counts what was acknowledged, what was delivered, what was lost (acknowledged, never delivered: must
be 0), the repeat deliveries and whether each is flagged (same item id, higher attempt), and the time from the
fault's end until acknowledgements flow again; it prints one ``fault-figures`` JSON line (``pytest -s``). The
README's Reliability table is made of these lines.

Nodes and producers are the crash tests' own: ``tests/crash_node.py`` (an InProcessDriver persisting to Redis,
as ``serve --redis`` runs it) through ``test_crash.CrashRun``, ``tests/mq_crash_producer.py`` (the asyncio API
with ``redis=``) through ``test_mq_crash.CrashLoop``, and ``serve --distributed`` through
``dist_cluster.NodeProcess``. The only sleeps are the fault schedule (how long Redis stays down, paused or full)
and the producers' pace; results are waited for with deadlines on real conditions.

Environment (CI uses the defaults; the README's figures used the larger settings it names):
    ``MQ_FAULT_CYCLES``      Redis restarts per test (default 1)
    ``MQ_FAULT_OUTAGE``      seconds Redis stays down per restart (default 0.5)
    ``MQ_FAULT_PAUSE``       seconds redis-server is stopped with SIGSTOP (default 2; past the 15 s lease: 17)
    ``MQ_FAULT_FULL``        seconds the AOF's disk stays full (default 1)
    ``MQ_FAULT_SEED``        seed of the fault schedule, the producers and the random inputs
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import pytest
import redis
from dist_cluster import NodeProcess, StreamReader, message_line
from fault_inputs import serve_line
from redis_support import RedisServer, as_bytes
from test_crash import CrashRun, assert_sound
from test_mq_crash import CrashLoop
from test_run_system import Running, launch, message

from actors.system import free_port
from protocol import codec
from protocol.errors import DecodeError
from protocol.values import BatchSettings, MessageBatch, OpenEntry, QueuedMessage, QueueItem

__all__ = ["launch"]  # the fixture, used by name

CYCLES = int(os.environ.get("MQ_FAULT_CYCLES", "1"))
OUTAGE = float(os.environ.get("MQ_FAULT_OUTAGE", "0.5"))
PAUSE = float(os.environ.get("MQ_FAULT_PAUSE", "2"))
FULL = float(os.environ.get("MQ_FAULT_FULL", "1"))
SEED = int(os.environ.get("MQ_FAULT_SEED", "20240612"))

RECOVERY_TIMEOUT = 60.0  # acknowledgements flowing again after the fault ended
START_TIMEOUT = 60.0


def figures(fault: str, mode: str, **values: Any) -> None:
    """One line of the README's Reliability table, printed for ``pytest -s``."""
    print("\nfault-figures " + json.dumps({"fault": fault, "mode": mode, **values}, sort_keys=False))


def poll(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.01) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took. AssertionError after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)  # polling a real condition with a deadline
    return time.monotonic() - start


# -- the faults ---------------------------------------------------------------------------------------------

FAULTS = ["sigterm", "kill9"]


def take_redis_down(server: RedisServer, how: str) -> None:
    """End redis-server: ``sigterm`` (a clean shutdown: the AOF is flushed) or ``kill9`` (a crash)."""
    if how == "sigterm":
        server.stop()
    else:
        server.kill()


@contextlib.contextmanager
def redis_stopped(server: RedisServer) -> Iterator[None]:
    """redis-server frozen with SIGSTOP (it keeps its sockets: clients see no error, only silence) until the
    block ends, then SIGCONT."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def epoch_of(server: RedisServer) -> bytes | None:
    client = redis.Redis.from_url(server.url)
    try:
        value = client.get("message_queue:index:epoch")
        return None if value is None else as_bytes(value)
    finally:
        client.close()


# -- 1a and 2a: a persisting node (crash_node.py, an InProcessDriver as serve --redis runs it) ----------------


@pytest.fixture
def crash_run(redis_srv: RedisServer, tmp_path: pathlib.Path) -> Iterator[CrashRun]:
    run = CrashRun(redis_srv, tmp_path, SEED)
    try:
        yield run
    finally:
        run.close()


def _node_recovery(run: CrashRun) -> tuple[float, float]:
    """Seconds until the next acknowledgement line and the next delivery line, from now."""
    run.drain()
    start = time.monotonic()
    acks, deliveries = run.ledger.ack_lines, sum(len(d) for d in run.ledger.deliveries.values())
    run.expect(lambda: run.ledger.ack_lines > acks, RECOVERY_TIMEOUT, "acknowledgements after the fault")
    ack_s = time.monotonic() - start
    run.expect(lambda: sum(len(d) for d in run.ledger.deliveries.values()) > deliveries, RECOVERY_TIMEOUT,
               "deliveries after the fault")
    return ack_s, time.monotonic() - start


def _node_finish(run: CrashRun, name: str) -> dict[str, int]:
    """Stop producing, deliver what is left, then restart the node on what Redis holds and drain again."""
    run.stop_producing()
    run.wait_all_delivered()
    node = run.node
    assert node.proc.poll() is None, f"the node died: {run.diagnostics()}"
    log = node.log_path.read_text(errors="replace")
    assert "CRITICAL" not in log and "Traceback" not in log, run.diagnostics()
    final = run.restart_node()
    run.wait_ready(final)
    run.wait_all_delivered()
    final.close()
    run.expect(lambda: final.generation in run.ledger.ended, 10, "the final node's output ended")
    counts = run.report(name)
    assert_sound(counts)
    return counts


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("how", FAULTS)
def test_a_persisting_node_survives_redis_restarts_under_load(crash_run: CrashRun, how: str) -> None:
    run, rng, server = crash_run, random.Random(SEED), crash_run.server
    node = run.start_node()
    run.wait_ready(node)
    epoch = epoch_of(server)
    run.start_producing()
    recoveries: list[tuple[float, float]] = []
    acks_in_outage: list[int] = []
    for _ in range(CYCLES):
        run.wait_acks(rng.randint(20, 200))  # fault schedule: after a random amount of work
        take_redis_down(server, how)
        run.drain()
        acks_at_fault = run.ledger.ack_lines
        time.sleep(OUTAGE)  # fault schedule: how long Redis stays down
        run.drain()
        acks_in_outage.append(run.ledger.ack_lines - acks_at_fault)
        server.start()
        recoveries.append(_node_recovery(run))
        assert epoch_of(server) == epoch, "Redis came back without the data it held"
    counts = _node_finish(run, f"redis_{how}")
    figures(f"redis {how}", "serve --redis (InProcessDriver)", cycles=CYCLES, outage_s=OUTAGE,
            acked=counts["acked"], lost=counts["lost"], duplicated=counts["duplicated"],
            unflagged=counts["unflagged_duplicates"], ack_lines_during_outage=acks_in_outage,
            ack_recovery_s=[round(a, 3) for a, _ in recoveries],
            delivery_recovery_s=[round(d, 3) for _, d in recoveries])


@pytest.mark.redis
@pytest.mark.slow
def test_a_persisting_node_carries_on_after_redis_is_paused(crash_run: CrashRun) -> None:
    """SIGSTOP redis-server for ``MQ_FAULT_PAUSE`` s: nothing is acknowledged meanwhile; past the lease with no
    other node taking over, the node carries on (README, Persistence)."""
    run, server = crash_run, crash_run.server
    node = run.start_node()
    run.wait_ready(node)
    run.start_producing()
    run.wait_acks(100)
    with redis_stopped(server):
        run.drain()
        acks_at_pause = run.ledger.ack_lines
        time.sleep(PAUSE)  # fault schedule: how long Redis is frozen
        run.drain()
        acks_in_pause = run.ledger.ack_lines - acks_at_pause
    ack_s, delivery_s = _node_recovery(run)
    counts = _node_finish(run, "redis_pause")
    figures("redis paused", "serve --redis (InProcessDriver)", pause_s=PAUSE, acked=counts["acked"],
            lost=counts["lost"], duplicated=counts["duplicated"], unflagged=counts["unflagged_duplicates"],
            ack_lines_during_pause=acks_in_pause, ack_recovery_s=round(ack_s, 3),
            delivery_recovery_s=round(delivery_s, 3))


# -- 1b: the asyncio API with redis= (mq_crash_producer.py) ---------------------------------------------------


@pytest.fixture
def crash_loop(redis_srv: RedisServer, tmp_path: pathlib.Path) -> Iterator[CrashLoop]:
    loop = CrashLoop(redis_srv, tmp_path, SEED)
    try:
        yield loop
    finally:
        loop.close()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("how", FAULTS)
def test_the_asyncio_api_survives_redis_restarts_under_load(crash_loop: CrashLoop, how: str) -> None:
    loop, ledger, server = crash_loop, crash_loop.ledger, crash_loop.server
    rng = random.Random(SEED)
    producer = loop.start()
    loop.expect(lambda: producer.run in ledger.ready, START_TIMEOUT, "the producer ready")
    recoveries: list[tuple[float, float]] = []
    acks_in_outage: list[int] = []
    for _ in range(CYCLES):
        target = ledger.acks[producer.run] + rng.randint(20, 400)  # fault schedule: after some work
        loop.expect(lambda: ledger.acks[producer.run] >= target, RECOVERY_TIMEOUT, "acknowledgements")
        take_redis_down(server, how)
        loop.drain()
        acks_at_fault = ledger.acks[producer.run]
        time.sleep(OUTAGE)  # fault schedule: how long Redis stays down
        loop.drain()
        acks_in_outage.append(ledger.acks[producer.run] - acks_at_fault)
        server.start()
        loop.drain()
        start = time.monotonic()
        acks, deliveries = ledger.acks[producer.run], len(ledger.deliveries)
        loop.expect(lambda: ledger.acks[producer.run] > acks, RECOVERY_TIMEOUT,
                    "acknowledgements after Redis came back")
        ack_s = time.monotonic() - start
        loop.expect(lambda: len(ledger.deliveries) > deliveries, RECOVERY_TIMEOUT,
                    "deliveries after Redis came back")
        recoveries.append((ack_s, time.monotonic() - start))
    producer.end_input()  # the producer closes its queue: it delivers what it holds
    assert producer.proc.wait(60) == 0, loop.diagnostics()
    log = producer.log_path.read_text(errors="replace")
    assert "Traceback" not in log and " CRITICAL " not in log, loop.diagnostics()
    final = loop.start(produce=False)  # whatever is still stored is delivered by the next run
    loop.expect(lambda: final.run in ledger.ready, START_TIMEOUT, "the final run ready")
    loop.expect(lambda: not ledger.waiting, RECOVERY_TIMEOUT, "every acknowledged message delivered")
    final.end_input()
    assert final.proc.wait(60) == 0, loop.diagnostics()
    loop.expect(lambda: final.run in ledger.ended, 10, "the final run's output ended")
    loop.drain()
    counts = ledger.counts()
    print(f"\nmq-crash-counts redis_{how}: {counts}")
    assert counts["acked"] > 0 and counts["lost"] == 0, counts
    bad = {name: counts[name] for name in ("unflagged_duplicates", "order_inversions", "holes", "wrong_channel",
                                           "garbage_lines") if counts[name]}
    assert not bad, f"{bad} in {counts}"
    figures(f"redis {how}", "asyncio API, redis=", cycles=CYCLES, outage_s=OUTAGE, acked=counts["acked"],
            lost=counts["lost"], duplicated=counts["redelivered_messages"], unflagged=counts["unflagged_duplicates"],
            ack_lines_during_outage=acks_in_outage, ack_recovery_s=[round(a, 3) for a, _ in recoveries],
            delivery_recovery_s=[round(d, 3) for _, d in recoveries])


# -- 1c and 2b: distributed mode (serve --distributed) --------------------------------------------------------

DIST_CHANNELS = 50


class DistProducer:
    """Writes message lines to one ``serve --distributed`` node at a steady pace from a thread; ``sent`` holds the
    message ids in the order written (the node acknowledges a prefix of it)."""

    def __init__(self, node: NodeProcess, seed: int, burst: int = 10, pace: float = 0.01) -> None:
        self.node = node
        self.sent: list[str] = []
        self.channel_of: dict[str, str] = {}
        self._rng = random.Random(seed)
        self._burst, self._pace = burst, pace
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dist-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        counters = [0] * DIST_CHANNELS
        try:
            while not self._stop.is_set():
                lines = []
                for _ in range(self._burst):
                    index = self._rng.randrange(DIST_CHANNELS)
                    counters[index] += 1
                    channel = f"d{index:02d}"
                    msgid = f"{channel}.{counters[index]}"
                    self.sent.append(msgid)
                    self.channel_of[msgid] = channel
                    lines.append(message_line(channel, msgid))
                self.node.send(b"".join(lines), len(lines))
                time.sleep(self._pace)  # the producer's pace
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(RECOVERY_TIMEOUT)
        assert not self._thread.is_alive(), "the producer is stuck writing to the node"
        if self._error is not None:
            raise self._error


def _dist_recovery(node: NodeProcess) -> float:
    start = time.monotonic()
    acked = node.acked
    node.wait_acked(acked + 1, timeout=RECOVERY_TIMEOUT)
    return time.monotonic() - start


def _dist_finish(server: RedisServer, node: NodeProcess, producer: DistProducer) -> dict[str, int]:
    """Stop producing, end the node's input (it publishes what it armed), and read the stream: every acknowledged
    message once, in send order per channel."""
    producer.stop()
    node.wait_acked(node.sent, timeout=RECOVERY_TIMEOUT)
    assert node.finish() == 0, node.stderr[-10:]
    assert not [line for line in node.stderr if "Traceback" in line or "CRITICAL" in line], node.stderr[-20:]
    acked = producer.sent[: node.acked]
    client = redis.Redis.from_url(server.url)
    try:
        reader = StreamReader(client)
        reader.read_until(lambda: set(acked) <= {text for _, text in reader.messages()}, RECOVERY_TIMEOUT)
        reader.poll(block_ms=50)
    finally:
        client.close()
    published = Counter(text for _, text in reader.messages())
    position = {msgid: i for i, msgid in enumerate(producer.sent)}
    by_channel: dict[str, list[int]] = defaultdict(list)
    for entry, text in reader.messages():
        assert producer.channel_of[text] == entry.channel_id
        by_channel[entry.channel_id].append(position[text])
    counts = {
        "sent": len(producer.sent),
        "acked": len(acked),
        "published": len(published),
        "lost": sum(1 for msgid in acked if not published[msgid]),
        "duplicated": sum(1 for n in published.values() if n > 1),
        "order_inversions": sum(1 for order in by_channel.values() for a, b in zip(order, order[1:]) if b < a),
        "batch_ids_repeated": sum(1 for n in Counter(e.batch_id for e in reader.entries).values() if n > 1),
    }
    print(f"\ndist-fault-counts: {counts}")
    assert counts["acked"] > 0, counts
    bad = {name: counts[name] for name in ("lost", "duplicated", "order_inversions", "batch_ids_repeated")
           if counts[name]}
    assert not bad, f"{bad} in {counts}"
    return counts


def _dist_node(server: RedisServer) -> NodeProcess:
    node = NodeProcess.start("fault-node", server.url, "--window", "0.05", "--max-batch-size", "5",
                             "--sweep-interval", "0.2", "--grace", "0.1")
    try:
        node.wait_ready(START_TIMEOUT)
    except BaseException:
        node.end()
        raise
    return node


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("how", FAULTS)
def test_distributed_mode_survives_redis_restarts_under_load(redis_srv: RedisServer, how: str) -> None:
    rng = random.Random(SEED)
    node = _dist_node(redis_srv)
    producer = DistProducer(node, SEED)
    try:
        recoveries: list[float] = []
        acked_in_outage: list[int] = []
        for _ in range(CYCLES):
            node.wait_acked(node.acked + rng.randint(100, 1000), timeout=RECOVERY_TIMEOUT)
            take_redis_down(redis_srv, how)
            acked_at_fault = node.acked
            time.sleep(OUTAGE)  # fault schedule: how long Redis stays down
            acked_in_outage.append(node.acked - acked_at_fault)
            redis_srv.start()
            recoveries.append(_dist_recovery(node))
        counts = _dist_finish(redis_srv, node, producer)
    finally:
        producer._stop.set()
        node.end()
    figures(f"redis {how}", "serve --distributed", cycles=CYCLES, outage_s=OUTAGE, acked=counts["acked"],
            lost=counts["lost"], duplicated=counts["duplicated"], unflagged=counts["duplicated"],
            acked_during_outage=acked_in_outage, ack_recovery_s=[round(r, 3) for r in recoveries])


@pytest.mark.redis
@pytest.mark.slow
def test_distributed_mode_carries_on_after_redis_is_paused(redis_srv: RedisServer) -> None:
    node = _dist_node(redis_srv)
    producer = DistProducer(node, SEED)
    try:
        node.wait_acked(500, timeout=RECOVERY_TIMEOUT)
        with redis_stopped(redis_srv):
            acked_at_pause = node.acked
            time.sleep(PAUSE)  # fault schedule: how long Redis is frozen
            acked_in_pause = node.acked - acked_at_pause
        recovery = _dist_recovery(node)
        counts = _dist_finish(redis_srv, node, producer)
    finally:
        producer._stop.set()
        node.end()
    figures("redis paused", "serve --distributed", pause_s=PAUSE, acked=counts["acked"], lost=counts["lost"],
            duplicated=counts["duplicated"], acked_during_pause=acked_in_pause, ack_recovery_s=round(recovery, 3))


# -- 3: random and malformed inputs ---------------------------------------------------------------------------

INPUTS = int(os.environ.get("MQ_FAULT_INPUTS", "10000"))
TCP_INPUTS = int(os.environ.get("MQ_FAULT_TCP_INPUTS", "1000"))
ROOT = pathlib.Path(__file__).resolve().parents[1]


def reason_class(reason: str) -> str:
    """A rejection reason without its values: what the table counts by."""
    return reason.split(", got")[0].split(":")[0].split(" (")[0].strip()[:60]


def _strict(line: str | bytes) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.slow
def test_serve_stdin_rejects_every_malformed_line_and_delivers_every_good_one_in_order() -> None:
    rng = random.Random(SEED)
    lines = [serve_line(rng, number) for number in range(1, INPUTS + 1)]
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "run_system.py"), "serve", "--window", "0.02"],
                          cwd=ROOT, input=b"".join(data + b"\n" for data, _, _ in lines), capture_output=True,
                          timeout=300)
    seconds = time.monotonic() - start
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]

    skipped: dict[int, str] = {}
    for match in re.finditer(r"^serve: line (\d+) skipped: (.*)$", err, re.MULTILINE):
        assert int(match[1]) not in skipped
        skipped[int(match[1])] = match[2]
    delivered: dict[str, list[int]] = defaultdict(list)
    for out in done.stdout.splitlines():
        for record in _strict(out)["messages"]:
            # a corrupted line that still parses may carry a junk character inside its text (never a digit)
            number = int(re.sub(r"\D", "", record["text"].split(" ", 1)[0]))
            delivered[record["channel_id"]].append(number)
    delivered_lines = Counter(n for numbers in delivered.values() for n in numbers)

    problems = []
    for number, (_, expect, kind) in enumerate(lines, 1):
        rejected, arrived = number in skipped, delivered_lines[number]
        if expect == "good" and (rejected or arrived != 1):
            problems.append(f"line {number} ({kind}) good: skipped={skipped.get(number)!r} delivered {arrived}x")
        elif expect == "bad" and (not rejected or arrived):
            problems.append(f"line {number} ({kind}) bad: skipped={rejected} delivered {arrived}x")
        elif expect == "either" and rejected == bool(arrived) or arrived > 1:
            problems.append(f"line {number} ({kind}): skipped={rejected} delivered {arrived}x")
    assert not problems, f"{len(problems)} lines mishandled, e.g. {problems[:10]}"
    inversions = [channel for channel, numbers in delivered.items() if numbers != sorted(numbers)]
    assert not inversions, f"delivered out of order on {inversions}"
    accepted = INPUTS - len(skipped)
    assert f"{accepted} messages accepted, {len(skipped)} lines skipped" in err, err[-500:]

    by_reason = Counter(reason_class(reason) for reason in skipped.values())
    by_kind = Counter(kind for _, _, kind in lines)
    print(f"\nserve-fuzz kinds: {dict(by_kind)}")
    figures("random and malformed input", "serve stdin", inputs=INPUTS, rejected=len(skipped), accepted=accepted,
            delivered=sum(delivered_lines.values()), seconds=round(seconds, 2), rejected_by_reason=dict(by_reason))


def _decode_outcome(data: bytes) -> str:
    """``ok:<type>`` or ``DecodeError``; anything else raised propagates (a failure of the test)."""
    try:
        value = codec.decode(data)
    except DecodeError:
        return "DecodeError"
    codec.encode(value)  # what the codec accepts, it can write again
    return f"ok:{type(value).__name__}"


def _valid_frames() -> list[bytes]:
    at = datetime(2024, 5, 1, tzinfo=timezone.utc)
    message = QueuedMessage("p", "c:1", "u", "n", "hello", at, {"a": [1, None, True, "v", 2.5], "d": {"e": b"x"}})
    batch = MessageBatch([message, QueuedMessage("p", "c:1", "u", "n", "é🙂", at)], at, at)
    values: list[Any] = [message, batch, QueueItem("i1", "c:1", message, 2), QueueItem("i2", "c:1", batch),
                         OpenEntry(message, 1.5), BatchSettings(window=0.5, max_batch_size=7, max_wait=3.0)]
    return [codec.encode(value) for value in values]


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        operation = rng.randrange(5)
        if operation == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif operation == 1 and data:
            del data[rng.randrange(len(data)):]
        elif operation == 2:
            position = rng.randrange(len(data) + 1)
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif operation == 3 and data:
            start = rng.randrange(len(data))
            del data[start:start + rng.randint(1, 8)]
        else:  # a msgpack header claiming a huge size
            data[0:0] = rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                                    b"\xdf\xff\xff\xff\xff", b"\xc7\x01\x01", b"\xd4\x00\x00"])
    return bytes(data)


def test_the_codec_decodes_random_and_mutated_frames_or_raises_decode_error() -> None:
    rng = random.Random(SEED)
    frames = _valid_frames()
    outcomes: Counter[str] = Counter()
    start = time.monotonic()
    for n in range(INPUTS):
        if n % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            data = _mutate(rng, rng.choice(frames))
        outcomes[_decode_outcome(data)] += 1
    deep = b"\x91" * 100_000 + b"\xc0"  # arrays nested 100,000 deep
    outcomes[_decode_outcome(deep)] += 1
    for frame in frames:  # the valid frames still decode to what was encoded
        assert codec.encode(codec.decode(frame)) == frame
    seconds = time.monotonic() - start
    assert outcomes["DecodeError"] > INPUTS // 2, outcomes
    figures("random and malformed input", "codec.decode", inputs=INPUTS + 1, rejected=outcomes["DecodeError"],
            accepted=INPUTS + 1 - outcomes["DecodeError"], seconds=round(seconds, 2), outcomes=dict(outcomes))


@pytest.mark.tcp
@pytest.mark.slow
def test_a_tcp_node_rejects_random_protocol_messages_and_keeps_delivering_in_order(
    launch: Callable[..., Running],
) -> None:
    port = free_port()
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.02")
    node.stderr_line(lambda line: f"admin port {port}" in line)
    start = time.monotonic()
    sender = subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name("fault_tcp_sender.py")),
                             str(port), str(TCP_INPUTS), str(SEED)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    seconds = time.monotonic() - start
    assert sender.returncode == 0, sender.stdout + sender.stderr[-3000:]
    summary = json.loads(sender.stdout)
    assert summary["good_acked"] == summary["good"], summary
    assert not summary["busy"], summary
    assert "none" not in summary["replies"], f"probes left unanswered: {summary}"
    assert summary["replies_total"] >= summary["answering"], f"commands left unanswered: {summary}"

    node.write(json.dumps(message("fuzz:stdin", "still reading stdin")))
    texts: dict[str, list[str]] = defaultdict(list)
    while len(texts["fuzz:good"]) < summary["good"] or not texts["fuzz:stdin"]:
        for m in _strict(node.stdout_line())["messages"]:
            texts[m["channel_id"]].append(m["text"])
    assert texts["fuzz:good"] == [f"G{n}" for n in range(summary["good"])]
    node.close_stdin()
    assert node.wait() == 0, node.all_stderr()[-3000:]
    stderr = node.all_stderr()
    assert "Traceback" not in stderr, stderr[-3000:]
    replies = summary["replies"]
    rejected = sum(n for name, n in replies.items() if name.startswith("Rejected/"))
    figures("random and malformed input", "TCP base, external sender", inputs=TCP_INPUTS, good=summary["good"],
            delivered=len(texts["fuzz:good"]), rejected=rejected, answering=summary["answering"],
            seconds=round(seconds, 2),
            replies=replies)
