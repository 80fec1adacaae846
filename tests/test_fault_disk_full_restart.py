"""A restart of Redis while its AOF disk is full keeps every acknowledged message.

With ``appendfsync everysec``, redis-server 7.0 runs a write, then appends it to its AOF before it sends the
reply; when that append fails (ENOSPC) it enters its "AOF write error" state (every later write gets
``-MISCONF``) but still answers the write that failed with its normal reply: that write is in Redis's memory
only, and a stop of redis-server before space is freed (``SIGTERM`` included) loses it. So the store counts a
write as stored only once ``INFO persistence`` read after its reply shows ``aof_last_write_status:ok``
(:meth:`actors.store.RedisStore.apply`); until then the node acknowledges nothing it wrote, and retries. Shown
with redis-server alone: 1,009 ``SET`` answered ``OK`` on a 1 MiB tmpfs, 1,008 keys after ``SHUTDOWN`` and a
restart.
"""

from __future__ import annotations

from test_crash import CrashRun, assert_sound
from test_fault_disk_full import FREED_SIZE, HEADROOM, crash_run, disk_server, fill, grow, refuses_writes
from test_faults import RECOVERY_TIMEOUT, epoch_of, poll

__all__ = ["crash_run", "disk_server"]  # the fixtures, used by name


def test_a_redis_restart_while_the_aof_disk_is_full_keeps_every_acknowledged_message(crash_run: CrashRun) -> None:
    run, server = crash_run, crash_run.server
    node = run.start_node()
    run.wait_ready(node)
    epoch = epoch_of(server)
    run.start_producing()
    run.wait_acks(20)
    fill(server.directory, HEADROOM)
    poll(lambda: refuses_writes(server), 60.0, "redis-server refusing writes once its disk is full")
    run.stop_producing()
    run.kill_node()  # nothing may write the held operations again: Redis must hold what was acknowledged
    server.stop()  # SIGTERM while the disk is full
    grow(server.directory, FREED_SIZE)
    server.start()
    assert epoch_of(server) == epoch
    final = run.start_node()
    run.wait_ready(final)
    run.pump(lambda: not run.ledger.waiting, RECOVERY_TIMEOUT)
    final.close()
    run.expect(lambda: final.generation in run.ledger.ended, 10, "the final node's output ended")
    lost = sorted(run.ledger.waiting)
    counts = run.report("disk_full_restart")
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:10]}: {counts}"
    assert_sound(counts)
