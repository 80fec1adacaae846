"""The disk under Redis's AOF fills up under load, then space is freed.

redis-server (AOF on, ``appendfsync everysec``) runs with its ``--dir`` on a 4 MiB tmpfs of its own. Once the
node is up, a filler file takes all the free space but ``HEADROOM``; the load fills the rest, the AOF write fails
(ENOSPC) and redis-server 7.0 refuses every write, a write inside a Lua script included, with ``-MISCONF Errors
writing to the AOF file: No space left on device``. The disk stays full for ``MQ_FAULT_FULL`` seconds, then the
tmpfs is grown to 16 MiB (``mount -o remount``: room for the backlog held meanwhile) and redis-server takes writes
again at its next AOF write.

The node (``tests/crash_node.py``, as ``serve --redis`` runs it) and the asyncio API with ``redis=``
(``tests/mq_crash_producer.py``) must acknowledge nothing Redis refused, keep running, and carry on once space is
freed. To show that what they acknowledged reached the disk (and not only Redis's memory), the node is then
killed with SIGKILL while it still holds acknowledged, undelivered messages, redis-server is restarted from the
AOF on the tmpfs, and a new node must deliver every one of them: nothing acknowledged lost, every repeat delivery
flagged (same item id, higher attempt).

Each test prints one ``fault-figures`` line (``pytest -s``) for the README's Reliability table. Environment (as
tests/test_faults.py): ``MQ_FAULT_FULL`` seconds the disk stays full (default 1), ``MQ_FAULT_SEED``.
Mounting a tmpfs needs root (CI runs as root); elsewhere the tests are skipped and say so.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import time
from typing import Callable, Iterator

import pytest
import redis
from redis_support import REDIS_SERVER, RedisServer, tmpfs
from test_crash import CrashRun, assert_sound
from test_faults import FULL, RECOVERY_TIMEOUT, SEED, START_TIMEOUT, epoch_of, figures, poll
from test_mq_crash import CrashLoop

pytestmark = [pytest.mark.redis]

TMPFS_SIZE = "4m"
FREED_SIZE = "16m"  # the tmpfs grown to this frees room for the backlog held while the disk was full
HEADROOM = 256 * 1024  # bytes left free by the filler: the load fills them within a second or two
FILL_TIMEOUT = 60.0  # the load filling the headroom until Redis refuses writes


# -- the disk ---------------------------------------------------------------------------------------------------


@pytest.fixture
def disk_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A private redis-server (AOF on, everysec) whose ``--dir`` is a 4 MiB tmpfs; its log is outside it."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH (.ci/run installs it with apt-get)")
    with contextlib.ExitStack() as stack:
        try:
            directory = stack.enter_context(tmpfs(TMPFS_SIZE))
        except PermissionError as exc:
            pytest.skip(f"cannot fill a disk under Redis: {exc}")
        server = RedisServer(directory, logfile=str(tmp_path / "redis.log"))
        stack.callback(server.stop)  # before the unmount: a running redis-server keeps the tmpfs busy
        server.start()
        yield server


def fill(directory: str, headroom: int) -> pathlib.Path:
    """Write a filler file taking all the free space of ``directory``'s file system but ``headroom`` bytes."""
    stat = os.statvfs(directory)
    size = max(0, stat.f_bavail * stat.f_frsize - headroom)
    filler = pathlib.Path(directory) / "filler"
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb") as f:
        while size > 0:
            size -= f.write(chunk[: min(size, len(chunk))])
    return filler


def grow(directory: str, size: str) -> None:
    """Grow the tmpfs mounted on ``directory`` to ``size`` (``mount -o remount``): the filler stays."""
    done = subprocess.run(["mount", "-o", f"remount,size={size}", directory], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, f"mount -o remount,size={size} failed: {done.stderr}"


def aof_status(server: RedisServer) -> dict[str, str]:
    """``INFO persistence`` of ``server`` (an INFO is answered even while writes are refused)."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        info = client.info("persistence")
    finally:
        client.close()
    return {name: str(value) for name, value in info.items()}


def refuses_writes(server: RedisServer) -> bool:
    """True when the last AOF write failed: redis-server answers every write with -MISCONF."""
    return aof_status(server)["aof_last_write_status"] == "err"


def used_bytes(directory: str) -> int:
    stat = os.statvfs(directory)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def disk_full_fault(server: RedisServer, acks: Callable[[], int], drain: Callable[[], None]) -> dict[str, object]:
    """Fill the disk, wait until Redis refuses writes, keep it full for ``FULL`` s, then free it. Returns the
    figures of the fault; the caller measures its own recovery from the moment this returns."""
    fill(server.directory, HEADROOM)
    filled = time.monotonic()
    poll(lambda: refuses_writes(server), FILL_TIMEOUT, "redis-server refusing writes once its disk is full")
    until_refused = time.monotonic() - filled
    drain()
    acks_at_refusal = acks()
    time.sleep(FULL)  # fault schedule: how long the disk stays full
    assert refuses_writes(server), "the disk is full, yet Redis takes writes again"
    drain()
    acks_while_full = acks() - acks_at_refusal
    grow(server.directory, FREED_SIZE)  # space is freed
    return {"headroom_bytes": HEADROOM, "full_s": FULL, "refused_after_s": round(until_refused, 3),
            "ack_lines_while_refused": acks_while_full}


def restart_redis_from_its_aof(server: RedisServer, epoch: bytes | None) -> None:
    """A clean restart of redis-server: what it holds now is read back from the AOF on the tmpfs. Only while its
    AOF writes succeed: redis-server 7.0 stopped while they fail exits without what it could not write."""
    assert not refuses_writes(server), "the disk filled again: the restart would lose what Redis holds in memory"
    server.stop()
    server.start()
    assert epoch is not None and epoch_of(server) == epoch, "Redis came back without the data it held"


def assert_node_kept_running(run: CrashRun) -> None:
    node = run.node
    assert node.proc.poll() is None, f"the node died: {run.diagnostics()}"
    log = node.log_path.read_text(errors="replace")
    assert "CRITICAL" not in log and "Traceback" not in log, run.diagnostics()
    assert "MISCONF" in log or "could not write its append-only file" in log, \
        f"the node never saw Redis refuse a write: {run.diagnostics()}"


# -- a persisting node (crash_node.py, an InProcessDriver as serve --redis runs it) -------------------------------


@pytest.fixture
def crash_run(disk_server: RedisServer, tmp_path: pathlib.Path) -> Iterator[CrashRun]:
    run = CrashRun(disk_server, tmp_path, SEED)
    try:
        yield run
    finally:
        run.close()


def test_a_persisting_node_acknowledges_nothing_while_the_aof_disk_is_full_and_recovers(crash_run: CrashRun) -> None:
    run, server = crash_run, crash_run.server
    node = run.start_node()
    run.wait_ready(node)
    epoch = epoch_of(server)
    run.start_producing()
    run.wait_acks(20)

    fault = disk_full_fault(server, lambda: run.ledger.ack_lines, run.drain)
    freed = time.monotonic()
    acks, deliveries = run.ledger.ack_lines, sum(len(d) for d in run.ledger.deliveries.values())
    redis_s = poll(lambda: not refuses_writes(server), RECOVERY_TIMEOUT, "redis-server taking writes again")
    run.expect(lambda: run.ledger.ack_lines > acks, RECOVERY_TIMEOUT, "acknowledgements once space is freed")
    ack_s = time.monotonic() - freed
    run.expect(lambda: sum(len(d) for d in run.ledger.deliveries.values()) > deliveries, RECOVERY_TIMEOUT,
               "deliveries once space is freed")
    delivery_s = time.monotonic() - freed
    run.wait_acks(20)  # and they keep coming
    assert_node_kept_running(run)

    # What was acknowledged is on the disk: kill the node holding undelivered messages, restart Redis from its AOF.
    run.stop_producing()
    run.kill_node()
    run.drain()
    waiting_at_kill = len(run.ledger.waiting)
    restart_redis_from_its_aof(server, epoch)
    aof_bytes = used_bytes(server.directory)
    final = run.start_node()
    run.wait_ready(final)
    run.wait_all_delivered()
    final.close()
    run.expect(lambda: final.generation in run.ledger.ended, 10, "the final node's output ended")
    counts = run.report("disk_full")
    assert_sound(counts)
    figures("AOF disk full", "serve --redis (InProcessDriver)", **fault, acked=counts["acked"],
            lost=counts["lost"], duplicated=counts["duplicated"], unflagged=counts["unflagged_duplicates"],
            redis_recovery_s=round(redis_s, 3), ack_recovery_s=round(ack_s, 3),
            delivery_recovery_s=round(delivery_s, 3), acked_undelivered_at_kill=waiting_at_kill,
            aof_bytes_at_end=aof_bytes)


# -- the asyncio API with redis= (mq_crash_producer.py) ---------------------------------------------------------


@pytest.fixture
def crash_loop(disk_server: RedisServer, tmp_path: pathlib.Path) -> Iterator[CrashLoop]:
    loop = CrashLoop(disk_server, tmp_path, SEED)
    try:
        yield loop
    finally:
        loop.close()


def test_the_asyncio_api_acknowledges_nothing_while_the_aof_disk_is_full_and_recovers(crash_loop: CrashLoop) -> None:
    loop, ledger, server = crash_loop, crash_loop.ledger, crash_loop.server
    producer = loop.start()
    loop.expect(lambda: producer.run in ledger.ready, START_TIMEOUT, "the producer ready")
    epoch = epoch_of(server)
    target = ledger.acks[producer.run] + 20
    loop.expect(lambda: ledger.acks[producer.run] >= target, RECOVERY_TIMEOUT, "acknowledgements")

    fault = disk_full_fault(server, lambda: ledger.acks[producer.run], loop.drain)
    freed = time.monotonic()
    acks, deliveries = ledger.acks[producer.run], len(ledger.deliveries)
    redis_s = poll(lambda: not refuses_writes(server), RECOVERY_TIMEOUT, "redis-server taking writes again")
    loop.expect(lambda: ledger.acks[producer.run] > acks, RECOVERY_TIMEOUT, "acknowledgements once space is freed")
    ack_s = time.monotonic() - freed
    loop.expect(lambda: len(ledger.deliveries) > deliveries, RECOVERY_TIMEOUT, "deliveries once space is freed")
    delivery_s = time.monotonic() - freed
    target = ledger.acks[producer.run] + 20
    loop.expect(lambda: ledger.acks[producer.run] >= target, RECOVERY_TIMEOUT, "acknowledgements keep coming")
    assert producer.proc.poll() is None, loop.diagnostics()
    log = producer.log_path.read_text(errors="replace")
    assert "Traceback" not in log and " CRITICAL " not in log, loop.diagnostics()
    assert "MISCONF" in log or "could not write its append-only file" in log, \
        f"the queue never saw Redis refuse a write: {loop.diagnostics()}"

    # What was acknowledged is on the disk: kill the producer, restart Redis from its AOF, deliver the rest.
    loop.kill(producer)
    loop.drain()
    waiting_at_kill = len(ledger.waiting)
    restart_redis_from_its_aof(server, epoch)
    aof_bytes = used_bytes(server.directory)
    final = loop.start(produce=False)
    loop.expect(lambda: final.run in ledger.ready, START_TIMEOUT, "the final run ready")
    loop.expect(lambda: not ledger.waiting, RECOVERY_TIMEOUT, "every acknowledged message delivered")
    final.end_input()
    assert final.proc.wait(60) == 0, loop.diagnostics()
    loop.expect(lambda: final.run in ledger.ended, 10, "the final run's output ended")
    loop.drain()
    counts = ledger.counts()
    print(f"\nmq-crash-counts disk_full: {counts}")
    assert counts["acked"] > 0 and counts["lost"] == 0, counts
    bad = {name: counts[name] for name in ("unflagged_duplicates", "order_inversions", "holes", "wrong_channel",
                                           "garbage_lines") if counts[name]}
    assert not bad, f"{bad} in {counts}"
    figures("AOF disk full", "asyncio API, redis=", **fault, acked=counts["acked"], lost=counts["lost"],
            duplicated=counts["redelivered_messages"], unflagged=counts["unflagged_duplicates"],
            redis_recovery_s=round(redis_s, 3), ack_recovery_s=round(ack_s, 3),
            delivery_recovery_s=round(delivery_s, 3), acked_undelivered_at_kill=waiting_at_kill,
            aof_bytes_at_end=aof_bytes)
