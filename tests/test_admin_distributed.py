"""``admin --redis URL`` and ``top --redis URL`` on the channels of real ``serve --distributed`` nodes in a
private redis-server: rows read from the distributed keys; flush, clear, pause and resume carried out by the
admin script while the nodes run, their batches read from the stream; dead-letters refused with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from dist_cluster import ROOT, NodeProcess, StreamReader, message_line, open_deadlines, start_nodes
from redis_support import RedisServer

from protocol import keys
from protocol.stream import InboundBatch
from service import admin_distributed

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

        refused = run("admin", "--redis", redis_srv.url, "dead-letters", "b")
        assert refused.returncode == 1, refused.stdout
        assert "admin: distributed mode: dead-letters is not available (a distributed channel keeps no dead " \
            "letters" in refused.stderr
        assert admin_json(redis_srv.url, "show", "b")["open_batch_size"] == 2  # nothing changed

    finally:
        node.end()
        client.close()


def texts(entry: InboundBatch) -> list[str]:
    return [m.text for m in entry.batch.messages]


def test_flush_publishes_the_open_batch_and_clear_discards_it(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    reader = StreamReader(client)
    node = NodeProcess.start("solo", redis_srv.url, "--window", "30", "--max-batch-size", "5")
    try:
        node.wait_ready()
        node.send(message_line("a", "a0") + message_line("a", "a1") + message_line("b", "b0"), 3)
        node.wait_acked(3)

        assert admin_json(redis_srv.url, "flush", "a") == {"channel": "a", "flushed": True}
        reader.read_until(lambda: len(reader.entries) == 1, TIMEOUT)
        (entry,) = reader.entries
        assert (entry.channel_id, texts(entry), entry.reason, entry.deadline_ms, entry.by) == \
            ("a", ["a0", "a1"], "flushed", 0, "admin/flush")
        assert entry.seq == 1
        shown = admin_json(redis_srv.url, "show", "a")
        assert (shown["open_batch_size"], shown["batches_published"], shown["deadline_in_s"]) == (0, 1, None)

        table = run("admin", "--redis", redis_srv.url, "flush", "a")  # nothing open any more
        assert table.returncode == 0, table.stderr
        assert table.stdout.strip() == "channel: a, flushed: no"

        # the node keeps batching on the channel: the next batch gets the next seq and closes by size
        node.send(b"".join(message_line("a", f"a{i}") for i in range(2, 7)), 5)
        reader.read_until(lambda: len(reader.entries) == 2, TIMEOUT)
        assert (texts(reader.entries[1]), reader.entries[1].reason, reader.entries[1].seq) == \
            ([f"a{i}" for i in range(2, 7)], "full", 2)

        assert admin_json(redis_srv.url, "clear", "b") == {"channel": "b", "removed": 1}
        assert open_deadlines(client) == 0
        assert admin_json(redis_srv.url, "show", "b")["open_batch_size"] == 0
        table = run("admin", "--redis", redis_srv.url, "clear", "b")
        assert (table.returncode, table.stdout.strip()) == (0, "channel: b, removed: 0"), table.stderr

        node.send(message_line("b", "b1"), 1)
        node.wait_acked(9)
        assert admin_json(redis_srv.url, "flush", "b")["flushed"] is True
        reader.read_until(lambda: len(reader.entries) == 3, TIMEOUT)
        assert (reader.entries[2].channel_id, texts(reader.entries[2])) == ("b", ["b1"])  # b0 is gone
    finally:
        node.end()
        client.close()


def test_a_paused_channel_holds_its_batches_until_resumed(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    reader = StreamReader(client)
    node = NodeProcess.start("solo", redis_srv.url, "--window", "0.05", "--max-batch-size", "3")
    held_key = keys.dist_key(keys.DIST_HELD, "c")
    try:
        node.wait_ready()
        node.send(message_line("c", "c0"), 1)  # the channel gets its state in Redis
        reader.read_until(lambda: len(reader.entries) == 1, TIMEOUT)

        assert admin_json(redis_srv.url, "pause", "c") == {"channel": "c", "paused": True}
        assert client.hget(keys.config_key("c"), "paused") == b"1"
        # 3 close by size, the fourth by its window: both batches are held, none published
        node.send(b"".join(message_line("c", f"c{i}") for i in range(1, 5)), 4)
        node.wait_acked(5)
        deadline = time.monotonic() + TIMEOUT
        while client.llen(held_key) < 2 or open_deadlines(client):
            assert time.monotonic() < deadline, "the batches were not held"
            reader.poll(block_ms=50)
        assert reader.poll(block_ms=50) == [] and len(reader.entries) == 1
        shown = admin_json(redis_srv.url, "show", "c")
        assert (shown["paused"], shown["waiting"], shown["open_batch_size"], shown["deadline_in_s"]) == \
            (True, 2, 0, None)
        listed = admin_json(redis_srv.url, "channels")  # listed although no batch is open
        assert [(r["channel"], r["paused"], r["waiting"]) for r in listed["channels"]] == [("c", True, 2)]
        table = run("admin", "--redis", redis_srv.url, "channels")
        assert table.returncode == 0 and "1 of 1 channel(s)" in table.stdout, table.stderr

        resumed = run("admin", "--redis", redis_srv.url, "resume", "c")
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.strip() == "channel: c, paused: no, published: 2"
        reader.read_until(lambda: len(reader.entries) == 3, TIMEOUT)
        full, window = reader.entries[1:]
        assert (texts(full), full.reason, full.deadline_ms, full.by) == (["c1", "c2", "c3"], "full", 0, "admin/resume")
        assert (texts(window), window.reason) == (["c4"], "window")
        assert window.lateness_ms is not None and window.lateness_ms >= 0  # held past its deadline
        assert [e.seq for e in reader.entries] == [1, 2, 3]
        assert client.exists(held_key, keys.config_key("c")) == 0
        shown = admin_json(redis_srv.url, "show", "c")
        assert (shown["paused"], shown["waiting"]) == (False, 0)

        node.send(message_line("c", "c5"), 1)  # published again as usual
        reader.read_until(lambda: len(reader.entries) == 4, TIMEOUT)
        assert texts(reader.entries[3]) == ["c5"] and reader.entries[3].by == "solo/timer"

        # a channel Redis knows nothing of goes to the (absent) lease holder, unless --distributed says
        refused = run("admin", "--redis", redis_srv.url, "pause", "d")
        assert refused.returncode == 1 and "no node holds the writer lease" in refused.stderr
        assert admin_json(redis_srv.url, "--distributed", "pause", "d") == {"channel": "d", "paused": True}
        node.send(message_line("d", "d0"), 1)
        node.wait_acked(7)
        deadline = time.monotonic() + TIMEOUT
        while client.llen(keys.dist_key(keys.DIST_HELD, "d")) < 1:
            assert time.monotonic() < deadline, "the batch was not held"
            reader.poll(block_ms=50)
        assert admin_json(redis_srv.url, "resume", "d") == {"channel": "d", "paused": False, "published": 1}
        reader.read_until(lambda: len(reader.entries) == 5, TIMEOUT)
        assert texts(reader.entries[4]) == ["d0"]
        assert node.finish() == 0
    finally:
        node.end()
        client.close()


def test_pause_and_resume_while_two_nodes_append_lose_and_reorder_nothing(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    reader = StreamReader(client)
    nodes = start_nodes(redis_srv.url, 2, "--window", "0.02", "--max-batch-size", "4")
    per_node = 150
    try:
        nodes[0].send(message_line("x", "n0-seed"), 1)
        reader.read_until(lambda: len(reader.entries) == 1, TIMEOUT)
        held_key = keys.dist_key(keys.DIST_HELD, "x")
        released = 0
        chunk = per_node // 6
        tail = 5  # of each chunk, sent once the pause is stored: their batches close paused, so some are held
        for start in range(0, per_node, chunk):  # each chunk races a pause; resume once some batch was held
            raced, after = range(start, start + chunk - tail), range(start + chunk - tail, start + chunk)
            for index, node in enumerate(nodes):
                node.send(b"".join(message_line("x", f"n{index}-{i}") for i in raced), len(raced))
            assert admin_distributed.pause(client, "x") == {"channel": "x", "paused": True}
            for index, node in enumerate(nodes):
                node.send(b"".join(message_line("x", f"n{index}-{i}") for i in after), len(after))
            deadline = time.monotonic() + TIMEOUT
            while not client.llen(held_key):
                assert time.monotonic() < deadline, "no batch was held"
                reader.poll(block_ms=5)
            result = admin_distributed.resume(client, "x")
            assert result["paused"] is False
            released += int(result["published"])
        for node in nodes:
            node.wait_acked(node.sent)
        total = 2 * per_node + 1
        reader.read_until(lambda: sum(len(e.batch.messages) for e in reader.entries) >= total, TIMEOUT)
        assert released >= 6 and sum(e.by == "admin/resume" for e in reader.entries) == released
        seen = [text for _, text in reader.messages()]
        assert len(seen) == len(set(seen)) == total  # each message once
        for index in range(2):
            mine = [t for t in seen if t.startswith(f"n{index}-") and t != "n0-seed"]
            assert mine == [f"n{index}-{i}" for i in range(per_node)]  # in the order each node sent them
        assert [e.seq for e in reader.entries] == list(range(1, len(reader.entries) + 1))
        assert client.llen(held_key) == 0
        for node in nodes:
            assert node.finish() == 0
    finally:
        for node in nodes:
            node.end()
        client.close()


def test_distributed_needs_redis() -> None:
    done = run("admin", "--control", "/nonexistent.sock", "--distributed", "pause", "d")
    assert done.returncode == 2 and "--distributed needs --redis URL" in done.stderr


def test_show_of_a_channel_with_no_state_is_a_stored_row_of_zeros(redis_srv: RedisServer) -> None:
    shown = admin_json(redis_srv.url, "show", "nothing-here")
    assert shown["mode"] == "stored" and shown["open_batch_size"] == 0 and shown["waiting"] == 0
