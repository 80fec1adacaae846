"""``run_system.py serve --redis URL --distributed``: its command line, its input, and how it stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import redis
from dist_cluster import ROOT, NodeProcess, StreamReader, message_line, open_deadlines
from redis_support import RedisServer

from protocol.keys import DIST_DEADLINES, INBOUND_STREAM, channel_tag
from service.cli import parse_args
from service.lines import LineSplitter

SCRIPT = str(ROOT / "run_system.py")
TIMEOUT = 30.0


def serve(url: str, *options: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, SCRIPT, "serve", "--redis", url, "--distributed", *options],
                          cwd=ROOT, input=stdin, capture_output=True, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["serve", "--distributed"], "--distributed needs --redis URL"),
        (["serve", "--stream", "s"], "--stream need\\(s\\) --distributed"),
        (["serve", "--acks", "--grace", "1"], "--grace, --acks need\\(s\\) --distributed"),
        (["serve", "--redis", "redis://h/0", "--distributed", "--base", "multiprocTCPBase"], "--base and --admin-port"),
        (["serve", "--redis", "redis://h/0", "--distributed", "--node-id", "a b"], "--node-id: node id must be"),
        (["serve", "--redis", "redis://h/0", "--distributed", "--stream-maxlen", "-1"], "--stream-maxlen must be >= 0"),
    ],
)
def test_usage_errors_name_the_rule(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert re.search(error, capsys.readouterr().err)


def test_lines_are_split_across_chunks_like_read_lines() -> None:
    splitter = LineSplitter(limit=10)
    chunks = [b"ab", b"c\nde", b"f\n0123456789abc", b"def\nlast\n\n", b"tail"]
    lines = [line for chunk in chunks for line in splitter.feed(chunk)] + list(splitter.end())
    assert lines == [(1, b"abc\n"), (2, b"def\n"), (3, None), (4, b"last\n"), (5, b"\n"), (6, b"tail")]
    exact = LineSplitter(limit=4)
    assert list(exact.feed(b"abcd\nabcde\n")) == [(1, b"abcd\n"), (2, None)]


@pytest.mark.redis
def test_a_node_stores_good_lines_skips_bad_ones_and_reports_acks(redis_srv: RedisServer, client: redis.Redis) -> None:
    good = [message_line("c", f"m{i}") for i in range(5)]
    stdin = good[0] + b"not json\n" + b"".join(good[1:3]) + b'{"x": 1}\n\n' + b"".join(good[3:])
    done = serve(redis_srv.url, "--window", "0.05", "--max-batch-size", "2", "--acks", "--node-id", "solo",
                 stdin=stdin)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "serve: line 2 skipped: not JSON" in err and "serve: line 5 skipped: missing field(s)" in err
    assert "serve: done; 5 messages stored; this node published 3 batches (2 on append, 1 by its timers" in err
    acks = [json.loads(line)["acked"] for line in done.stdout.decode().splitlines()]
    assert acks == sorted(acks) and acks[-1] == 5
    reader = StreamReader(client)
    reader.read_until(lambda: len(reader.entries) == 3, timeout=5)
    assert [[m.text for m in e.batch.messages] for e in reader.entries] == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert {e.by for e in reader.entries} == {"solo/append", "solo/timer"}


@pytest.mark.redis
def test_a_custom_stream_and_maxlen(redis_srv: RedisServer, client: redis.Redis) -> None:
    lines = b"".join(message_line(f"c{i}", "x") for i in range(300))
    done = serve(redis_srv.url, "--window", "0", "--stream", "bots:in", "--stream-maxlen", "10", stdin=lines)
    assert done.returncode == 0, done.stderr.decode()
    assert 10 <= client.xlen("bots:in") <= 110 and client.exists(INBOUND_STREAM) == 0


def test_a_node_refuses_a_redis_that_may_lose_messages(volatile_redis: RedisServer) -> None:
    refused = serve(volatile_redis.url, stdin=message_line("c", "x"))
    assert refused.returncode == 1
    assert "refusing to batch in this Redis: appendonly is 'no'" in refused.stderr.decode()
    accepted = serve(volatile_redis.url, "--allow-volatile-redis", "--window", "0", stdin=message_line("c", "x"))
    assert accepted.returncode == 0, accepted.stderr.decode()
    assert "a Redis that may lose data (allowed by option) to batch in" in accepted.stderr.decode()
    assert redis.Redis.from_url(volatile_redis.url).xlen(INBOUND_STREAM) == 1


def test_a_node_that_cannot_reach_redis_exits_1() -> None:
    done = serve("redis://127.0.0.1:1/0", stdin=b"")
    assert done.returncode == 1
    assert "serve: cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr.decode()


@pytest.mark.redis
def test_sigterm_stops_a_node_and_another_node_publishes_what_it_left(redis_srv: RedisServer,
                                                                      client: redis.Redis) -> None:
    first = NodeProcess.start("first", redis_srv.url, "--window", "30")
    second: NodeProcess | None = None
    try:
        first.wait_ready()
        first.send(message_line("c", "left behind"), 1)
        first.wait_acked(1)
        os.kill(first.process.pid, signal.SIGTERM)
        assert first.process.wait(TIMEOUT) == 0
        first.end()
        assert any("stopped by a signal" in line for line in first.stderr), first.stderr
        assert open_deadlines(client) == 1  # its batch stays in Redis, with its deadline
        client.zadd(DIST_DEADLINES, {channel_tag("c"): 0}, xx=True)  # overdue now rather than in 30 s
        second = NodeProcess.start("second", redis_srv.url, "--sweep-interval", "0.05")
        second.wait_ready()
        reader = StreamReader(client)
        reader.read_until(lambda: len(reader.entries) == 1, timeout=10)
        (entry,) = reader.entries
        assert [m.text for m in entry.batch.messages] == ["left behind"] and entry.by == "second/sweep"
        assert second.finish() == 0
    finally:
        first.end()
        if second is not None:
            second.end()


@pytest.mark.redis
def test_max_queued_caps_a_channels_open_batch_and_each_refusal_is_reported(
    redis_srv: RedisServer, client: redis.Redis
) -> None:
    lines = b"".join(message_line("c", f"m{i}") for i in range(4))
    done = serve(redis_srv.url, "--window", "0.05", "--max-queued", "2", stdin=lines)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "serve: line 3 refused:" in err and "serve: line 4 refused:" in err
    assert "2 refused and 0 dropped by max_queued (--overflow reject)" in err
    reader = StreamReader(client)
    reader.read_until(lambda: len(reader.entries) == 1, timeout=5)
    assert [[m.text for m in e.batch.messages] for e in reader.entries] == [["m0", "m1"]]
    dropped = serve(redis_srv.url, "--window", "0.05", "--max-queued", "1", "--overflow", "drop_oldest",
                    stdin=b"".join(message_line("d", f"n{i}") for i in range(3)))
    assert dropped.returncode == 0, dropped.stderr.decode()
    reader.read_until(lambda: len(reader.entries) == 2, timeout=5)
    assert [m.text for m in reader.entries[1].batch.messages] == ["n2"]
