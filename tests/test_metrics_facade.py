"""``MessageQueue(metrics_registry=...)``: the queue's Prometheus metrics in the application's registry,
read back through prometheus_client's own exposition and parser after a known workload."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from message_queue import InvalidInput, MessageQueue, QueuedMessage
from message_queue.metrics import METRICS
from protocol.values import Payload

TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def msg(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id="u1", user_name="U1", text=text)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry's exposition text, by name and sorted labels."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry).get((name, tuple(sorted(labels.items()))), 0.0)


def test_queue_metrics_count_a_known_workload_in_the_given_registry() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        done = asyncio.Event()
        got: list[int] = []

        async def callback(item: Payload) -> None:
            got.append(item.size if hasattr(item, "size") else 1)
            if sum(got) == 23:
                done.set()

        async with MessageQueue(default_batch_window=0.05, max_batch_size=5, metrics_registry=registry) as mq:
            for channel in ("a", "b", "c"):
                await mq.start_processing(channel, callback)
            for i in range(10):  # two full batches
                await mq.enqueue(msg("a", f"a{i}"))
            for i in range(3):  # one by window
                await mq.enqueue(msg("b", f"b{i}"))
            for i in range(10):  # 5 full, then 5 more: full again
                await mq.enqueue(msg("c", f"c{i}"))
            with pytest.raises(InvalidInput):
                await mq.enqueue(msg("", "no channel"))
            await asyncio.wait_for(done.wait(), TIMEOUT)
            await mq.statistics()  # the callbacks' answers have reached the actors
            for _ in range(100):  # the last callback's completion runs on the next loop iterations
                if value(registry, "message_queue_processing_seconds_count") == 5 + 1:
                    break
                await asyncio.sleep(0)

    run(main())
    assert value(registry, "message_queue_messages_enqueued_total") == 23
    assert value(registry, "message_queue_messages_delivered_total") == 23
    assert value(registry, "message_queue_batches_delivered_total", reason="full") == 4
    assert value(registry, "message_queue_batches_delivered_total", reason="window") == 1
    assert value(registry, "message_queue_batches_delivered_total", reason="max_wait") == 0
    assert value(registry, "message_queue_rejections_total") == 1
    assert value(registry, "message_queue_batch_size_count") == 5
    assert value(registry, "message_queue_batch_size_sum") == 23
    assert value(registry, "message_queue_batch_size_bucket", le="3.0") == 1
    assert value(registry, "message_queue_processing_seconds_count") == 5
    assert value(registry, "message_queue_flush_lateness_seconds_count") == 5
    assert value(registry, "message_queue_cancellations_total") == 0


def test_every_documented_metric_is_exposed_with_the_prefix_and_no_channel_label() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async with MessageQueue(default_batch_window=0.05, metrics_registry=registry) as mq:
            await mq.enqueue(msg("x", "hi"))

    run(main())
    exposed = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for name, kind, _ in METRICS:
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in exposed, name
    for (name, labels), _ in samples(registry).items():
        assert name.startswith("message_queue_")
        assert {k for k, _ in labels} <= {"reason", "le"}


def test_gauges_show_the_live_channels_waiting_items_and_open_batches() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async with MessageQueue(default_batch_window=30.0, max_batch_size=2, metrics_registry=registry) as mq:
            # no processor: a full batch waits; a second channel holds an open batch
            for text in ("1", "2", "3"):
                await mq.enqueue(msg("waits", text))
            await mq.enqueue(msg("opens", "x"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while value(registry, "message_queue_active_channels") != 2 and loop.time() < deadline:
                await asyncio.sleep(0.05)  # the gauges are set by the queue's periodic snapshot
            assert value(registry, "message_queue_active_channels") == 2
            assert value(registry, "message_queue_items_waiting") == 1
            assert value(registry, "message_queue_open_batches") == 2
            assert value(registry, "message_queue_items_in_flight") == 0
            await mq.close(drain=False)

    run(main())


def test_a_queue_without_a_registry_registers_nothing() -> None:
    from prometheus_client import REGISTRY

    before = {f.name for f in REGISTRY.collect()}

    async def main() -> None:
        async with MessageQueue(default_batch_window=0.01) as mq:
            await mq.enqueue(msg("x", "hi"))

    run(main())
    after = {f.name for f in REGISTRY.collect()}
    assert not {n for n in after - before if n.startswith("message_queue_")}
