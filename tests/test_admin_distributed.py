"""``admin --redis URL`` and ``top --redis URL`` on the channels of real ``serve --distributed`` nodes in a
private redis-server: rows read from the distributed keys, and mutations refused with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import redis
from dist_cluster import ROOT, NodeProcess, message_line, open_deadlines
from redis_support import RedisServer

pytestmark = pytest.mark.redis

TIMEOUT = 30.0


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run_system.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT, env={**os.environ, "COLUMNS": "160"})


def admin_json(url: str, *args: str) -> Any:
    done = run("admin", "--redis", url, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_channels_show_and_top_read_the_distributed_state(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    node = NodeProcess.start("solo", redis_srv.url, "--window", "30", "--max-batch-size", "3")
    try:
        node.wait_ready()
        # 4 messages on "a": one batch published when full (3), one message left open; 2 open on "b"
        node.send(b"".join(message_line("a", f"a{i}") for i in range(4)) +
                  b"".join(message_line("b", f"b{i}") for i in range(2)), 6)
        node.wait_acked(6)
        assert open_deadlines(client) == 2

        listed = admin_json(redis_srv.url, "channels")
        assert listed["total"] == 2
        rows = {r["channel"]: r for r in listed["channels"]}
        a, b = rows["a"], rows["b"]
        assert a["mode"] == b["mode"] == "distributed"
        assert (a["open_batch_size"], a["batches_published"]) == (1, 1)
        assert (b["open_batch_size"], b["batches_published"]) == (2, 0)
        for row in (a, b):
            assert 0 < row["deadline_in_s"] <= 30
            assert 0 <= row["oldest_age_s"] < TIMEOUT
            assert (row["waiting"], row["in_flight"], row["paused"]) == (0, False, False)
        assert [r["channel"] for r in listed["channels"]] == ["b", "a"]  # most open messages first

        shown = admin_json(redis_srv.url, "show", "a")
        assert shown["mode"] == "distributed" and shown["open_batch_size"] == 1 and shown["batches_published"] == 1

        table = run("admin", "--redis", redis_srv.url, "channels")
        assert table.returncode == 0, table.stderr
        assert "DEADLINE IN (s)" in table.stdout and "PUBLISHED" in table.stdout
        assert "2 of 2 channel(s)" in table.stdout

        top = run("top", "--redis", redis_srv.url, "--iterations", "1")
        assert top.returncode == 0, top.stderr
        assert "due (s)" in top.stdout and "published" in top.stdout
        line_a = next(line for line in top.stdout.splitlines() if line.strip("│ ").startswith("a "))
        assert line_a.split("│")[-2].strip() == "1"  # batches published on "a"

        for command in ("pause", "resume", "flush", "clear"):
            refused = run("admin", "--redis", redis_srv.url, command, "b")
            assert refused.returncode == 1, (command, refused.stdout)
            assert f"admin: distributed mode: {command} is not available (" in refused.stderr
        assert admin_json(redis_srv.url, "show", "b")["open_batch_size"] == 2  # nothing changed

    finally:
        node.end()
        client.close()


def test_show_of_a_channel_with_no_state_is_a_stored_row_of_zeros(redis_srv: RedisServer) -> None:
    shown = admin_json(redis_srv.url, "show", "nothing-here")
    assert shown["mode"] == "stored" and shown["open_batch_size"] == 0 and shown["waiting"] == 0
