"""``run_system.py admin --redis URL`` on the state a real ``serve --redis`` node stores in a private
redis-server: channels and show read the stored keys (the commands that change what the node holds:
tests/test_admin_redis_node.py; dead letters: tests/test_admin_dead_letters.py)."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import pytest
import redis
from redis_support import RedisServer
from test_admin_control import admin
from test_run_system import TIMEOUT, Running, launch, message

from protocol import codec, keys
from protocol.values import DeadLetter

pytestmark = pytest.mark.redis

__all__ = ["launch"]  # the fixture, used by name


def admin_json(url: str, *args: str) -> Any:
    result = admin("--redis", url, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_channels_show_and_dead_letters_read_the_stored_state(
        launch: Callable[..., Running], redis_srv: RedisServer) -> None:
    node = launch("serve", "--redis", redis_srv.url, "--window", "30")
    node.stderr_line(lambda line: "ready" in line)
    for i in range(3):
        node.write(json.dumps(message("slack:#a", f"a{i}")))
    node.write(json.dumps(message("slack:#b", "b0")))
    client = redis.Redis.from_url(redis_srv.url)
    try:
        deadline = time.monotonic() + TIMEOUT
        while client.llen(keys.channel_key(keys.OPEN_BATCH, "slack:#a")) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)  # polling the node's writes
        letter = DeadLetter("redis", "bad frame", b"\x00junk", time.time())
        client.rpush(keys.channel_key(keys.DEAD_LETTER, "slack:#a"), codec.encode(letter))
        client.hset(keys.config_key("slack:#b"), "paused", "1")

        rows = admin_json(redis_srv.url, "channels")
        assert rows["total"] == 2
        a, b = sorted(rows["channels"], key=lambda r: r["channel"])
        assert a["open_batch_size"] == 3 and a["waiting"] == 0 and a["dead_letters"] == 1
        assert a["oldest_age_s"] is not None and 0 <= a["oldest_age_s"] < TIMEOUT
        assert b["paused"] is True and b["open_batch_size"] == 1
        assert admin_json(redis_srv.url, "show", "slack:#b")["open_batch_size"] == 1
    finally:
        client.close()
    node.proc.kill()


def test_an_unreachable_redis_is_a_clear_failure(redis_srv: RedisServer) -> None:
    url = redis_srv.url
    redis_srv.kill()
    result = admin("--redis", url, "--timeout", "1", "channels")
    assert result.returncode == 1
    assert "admin: Redis at redis://127.0.0.1:" in result.stderr
