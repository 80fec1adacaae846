import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from typing import Iterator

import pytest
import redis
from redis_support import REDIS_SERVER, RedisServer, redis_server  # noqa: E402


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A private redis-server (AOF on, everysec, noeviction) on a free loopback port, ended after the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH (.ci/run installs it with apt-get)")
    with redis_server() as server:
        yield server


@pytest.fixture
def client(redis_srv: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test's private redis-server (bytes replies)."""
    c = redis.Redis.from_url(redis_srv.url)
    yield c
    c.close()


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    """A private redis-server without AOF (snapshots only): one that may lose acknowledged writes."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH (.ci/run installs it with apt-get)")
    with redis_server(appendonly=False) as server:
        yield server
