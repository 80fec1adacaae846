"""``run_system.py serve --metrics-port``: /metrics scraped with prometheus_client's parser after a known
workload, and /healthz following the node's Redis (killed: 503 with the reason; restarted: 200 again)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_support import RedisServer
from test_run_system import TIMEOUT, Running, launch, message

__all__ = ["launch"]  # the fixture, used by name


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ops_url(node: Running) -> str:
    line = node.stderr_line(lambda text: "/metrics" in text)
    found = re.search(r"(http://[\d.]+:\d+)/metrics", line)
    assert found is not None, line
    return found.group(1)


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(base + "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def poll(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)  # polling a real condition of another process


def test_metrics_count_enqueued_and_delivered_messages_and_batches_by_reason(
        launch: Callable[..., Running]) -> None:
    node = launch("serve", "--window", "0.2", "--max-batch-size", "4", "--metrics-port", "0")
    base = ops_url(node)
    for i in range(8):  # two full batches
        node.write(json.dumps(message("slack:#a", f"a{i}")))
    for i in range(3):  # one by window
        node.write(json.dumps(message("slack:#b", f"b{i}")))
    node.write("not json")
    for _ in range(3):
        node.stdout_line()

    def done() -> bool:
        values = scrape(base)
        return values.get(("message_queue_messages_delivered_total", ()), 0) == 11

    poll(done, "11 messages delivered")
    values = scrape(base)
    assert values[("message_queue_messages_enqueued_total", ())] == 11
    assert values[("message_queue_rejections_total", ())] == 1
    assert values[("message_queue_batches_delivered_total", (("reason", "full"),))] == 2
    assert values[("message_queue_batches_delivered_total", (("reason", "window"),))] == 1
    assert values[("message_queue_batch_size_sum", ())] == 11
    assert values[("message_queue_processing_seconds_count", ())] == 3
    assert values[("message_queue_items_waiting", ())] == 0
    status, body = get(base + "/healthz")
    assert (status, body) == (200, "ok\n")
    assert get(base + "/nothing")[0] == 404
    node.close_stdin()
    assert node.wait() == 0


@pytest.mark.redis
def test_health_is_503_with_the_reason_while_redis_is_down_and_200_once_it_is_back(
        launch: Callable[..., Running], redis_srv: RedisServer) -> None:
    node = launch("serve", "--redis", redis_srv.url, "--metrics-port", "0")
    base = ops_url(node)
    assert get(base + "/healthz") == (200, "ok\n")

    redis_srv.kill()
    status, body = get(base + "/healthz")
    assert status == 503
    assert "Redis unreachable" in body, body

    redis_srv.start()  # same port and data directory: the lease is still this node's
    poll(lambda: get(base + "/healthz") == (200, "ok\n"), "healthy again")
    node.close_stdin()
    assert node.wait() == 0


@pytest.mark.redis
def test_health_names_the_holder_when_another_node_holds_the_lease(
        launch: Callable[..., Running], redis_srv: RedisServer) -> None:
    import redis

    from protocol.keys import LEASE

    node = launch("serve", "--redis", redis_srv.url, "--metrics-port", "0")
    base = ops_url(node)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        client.set(LEASE, b"host=elsewhere pid=4242 taken=2026-01-01T00:00:00.000Z token=ab")
        status, body = get(base + "/healthz")
        assert status == 503
        assert "held by another node" in body and "elsewhere" in body, body
    finally:
        client.close()
    node.proc.kill()  # it may no longer write: no clean shutdown to wait for
