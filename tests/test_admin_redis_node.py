"""``run_system.py admin --redis URL pause|resume|flush|clear`` reaching the node that holds the writer lease
through the control stream, with a real ``serve --redis`` node on a private redis-server: the commands act
on the node's channels, pauses are stored and survive a restart, and no answering node is a clear failure."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import pytest
import redis
from redis_support import RedisServer
from test_admin_control import admin
from test_run_system import TIMEOUT, Running, launch, message

from actors.system import SIMPLE_BASE, TCP_BASE
from protocol import keys

pytestmark = pytest.mark.redis

__all__ = ["launch"]  # the fixture, used by name


def admin_json(url: str, *args: str) -> Any:
    result = admin("--redis", url, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling the node's writes


def start_node(launch: Callable[..., Running], url: str) -> Running:
    node = launch("serve", "--redis", url, "--window", "30")
    node.stderr_line(lambda line: "ready" in line)
    return node


def test_pause_flush_resume_and_clear_reach_the_lease_holder(
        launch: Callable[..., Running], redis_srv: RedisServer) -> None:
    node = start_node(launch, redis_srv.url)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        assert admin_json(redis_srv.url, "pause", "slack:#a") == {"channel": "slack:#a", "paused": True}
        assert client.hget(keys.config_key("slack:#a"), "paused") == b"1"
        assert client.smembers(keys.PAUSED) == {b"slack:#a"}
        # a paused channel with nothing stored is still listed
        assert admin_json(redis_srv.url, "show", "slack:#a")["paused"] is True

        for i in range(2):
            node.write(json.dumps(message("slack:#a", f"a{i}")))
        wait_for(lambda: client.llen(keys.channel_key(keys.OPEN_BATCH, "slack:#a")) == 2, "the open batch")

        assert admin_json(redis_srv.url, "flush", "slack:#a") == {"channel": "slack:#a", "flushed": True}
        # The flush's answer follows its write; a delivery would have been in the same write.
        assert client.llen(keys.queue_key("slack:#a")) == 1
        assert client.llen(keys.channel_key(keys.PROCESSING, "slack:#a")) == 0
        assert node.stdout.empty()

        assert admin_json(redis_srv.url, "resume", "slack:#a") == {"channel": "slack:#a", "paused": False}
        assert client.hget(keys.config_key("slack:#a"), "paused") is None
        assert client.smembers(keys.PAUSED) == set()
        delivered = json.loads(node.stdout_line())
        assert [m["text"] for m in delivered["messages"]] == ["a0", "a1"]

        admin_json(redis_srv.url, "pause", "slack:#b")
        node.write(json.dumps(message("slack:#b", "b0")))
        wait_for(lambda: client.llen(keys.channel_key(keys.OPEN_BATCH, "slack:#b")) == 1, "the open batch")
        admin_json(redis_srv.url, "flush", "slack:#b")
        assert admin_json(redis_srv.url, "clear", "slack:#b") == {"channel": "slack:#b", "removed": 1}
        assert client.llen(keys.queue_key("slack:#b")) == 0

        refused = admin("--redis", redis_srv.url, "flush", "")
        assert refused.returncode == 2  # a usage error, caught before anything is sent
    finally:
        client.close()


def test_a_stored_pause_is_applied_again_after_a_restart(
        launch: Callable[..., Running], redis_srv: RedisServer) -> None:
    node = start_node(launch, redis_srv.url)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        admin_json(redis_srv.url, "pause", "slack:#p")
        node.write(json.dumps(message("slack:#p", "before")))
        wait_for(lambda: client.llen(keys.channel_key(keys.OPEN_BATCH, "slack:#p")) == 1, "the open batch")
        node.close()  # killed: its lease is taken over at once by the next node on this host

        node = start_node(launch, redis_srv.url)
        node.write(json.dumps(message("slack:#p", "after")))
        wait_for(lambda: client.llen(keys.channel_key(keys.OPEN_BATCH, "slack:#p")) == 2, "the open batch")
        assert admin_json(redis_srv.url, "flush", "slack:#p")["flushed"] is True
        assert client.llen(keys.queue_key("slack:#p")) == 1  # still paused: not taken for delivery
        assert client.llen(keys.channel_key(keys.PROCESSING, "slack:#p")) == 0
        assert node.stdout.empty()

        admin_json(redis_srv.url, "resume", "slack:#p")
        delivered = json.loads(node.stdout_line())
        assert [m["text"] for m in delivered["messages"]] == ["before", "after"]
    finally:
        client.close()


def test_no_node_answering_is_a_clear_failure(redis_srv: RedisServer) -> None:
    result = admin("--redis", redis_srv.url, "--timeout", "1", "pause", "slack:#a")
    assert result.returncode == 1
    assert "no node holds the writer lease of this database" in result.stderr

    client = redis.Redis.from_url(redis_srv.url)
    try:  # a lease whose holder does not answer (stalled, or gone on another host)
        client.set(keys.LEASE, "host=elsewhere pid=1 token=0", px=60_000)
        result = admin("--redis", redis_srv.url, "--timeout", "1", "pause", "slack:#a")
        assert result.returncode == 1
        assert "no node holding the lease of this database answered within 1 s" in result.stderr
        assert client.xlen(keys.CONTROL) == 0  # the request was withdrawn
    finally:
        client.close()


@pytest.mark.parametrize("base", [SIMPLE_BASE, TCP_BASE])
def test_serve_metrics_time_the_persistence_writes(
        launch: Callable[..., Running], redis_srv: RedisServer, base: str) -> None:
    from test_serve_metrics import ops_url, poll, scrape

    node = launch("serve", "--base", base, "--redis", redis_srv.url, "--window", "0.05", "--metrics-port", "0")
    base = ops_url(node)
    node.stderr_line(lambda line: "ready" in line)
    for i in range(3):
        node.write(json.dumps(message("slack:#m", f"m{i}")))
    node.stdout_line()
    # the persistence actor reports its write times twice a second
    poll(lambda: scrape(base).get(("message_queue_redis_write_seconds_count", ()), 0) > 0, "write times")
    assert scrape(base)[("message_queue_redis_write_seconds_sum", ())] > 0
    node.close_stdin()
    assert node.wait() == 0
