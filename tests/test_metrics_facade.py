"""``MessageQueue(metrics_registry=...)``: the queue's Prometheus metrics in the application's registry,
read back through prometheus_client's own exposition and parser after a known workload."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
import threading
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
    for le, count in (("1.0", 0), ("2.0", 0), ("3.0", 1), ("5.0", 5), ("10.0", 5), ("100.0", 5), ("+Inf", 5)):
        assert value(registry, "message_queue_batch_size_bucket", le=le) == count, le
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


def test_scrapes_from_another_thread_while_the_queue_delivers_never_go_back() -> None:
    registry = CollectorRegistry()
    channels, per_channel, cap = 100, 10, 5
    stop = threading.Event()
    seen: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []

    def scrape_until_stopped() -> None:  # an application's HTTP server, on a thread of its own
        while not stop.is_set():
            seen.append(samples(registry))

    async def main() -> None:
        delivered: list[object] = []
        all_in = asyncio.Event()

        async def callback(item: Payload) -> None:
            delivered.append(item)
            if len(delivered) == channels * per_channel // cap:
                all_in.set()

        async with MessageQueue(default_batch_window=30.0, max_batch_size=cap, metrics_registry=registry) as mq:
            scraper.start()  # the queue's metrics are in the registry from here on
            for c in range(channels):
                await mq.start_processing(f"ch{c}", callback)
            for i in range(per_channel):
                for c in range(channels):
                    await mq.enqueue(msg(f"ch{c}", f"{c}-{i}"))
            await asyncio.wait_for(all_in.wait(), TIMEOUT)
            await mq.statistics()

    scraper = threading.Thread(target=scrape_until_stopped)
    try:
        run(main())
    finally:
        stop.set()
        if scraper.ident is not None:
            scraper.join(TIMEOUT)
    assert not scraper.is_alive()
    seen.append(samples(registry))
    assert len(seen) > 2
    for got in seen:
        count = got[("message_queue_batch_size_count", ())]
        assert got[("message_queue_batch_size_bucket", (("le", "+Inf"),))] == count
        assert got[("message_queue_batch_size_sum", ())] == cap * count
    for before, after in zip(seen, seen[1:]):
        for name in ("message_queue_messages_enqueued_total", "message_queue_messages_delivered_total",
                     "message_queue_batch_size_count"):
            assert after[(name, ())] >= before[(name, ())], name
    final = seen[-1]
    batches = channels * per_channel // cap
    assert final[("message_queue_messages_enqueued_total", ())] == channels * per_channel
    assert final[("message_queue_messages_delivered_total", ())] == channels * per_channel
    assert final[("message_queue_batches_delivered_total", (("reason", "full"),))] == batches
    assert final[("message_queue_batch_size_bucket", (("le", "5.0"),))] == batches
    assert final[("message_queue_batch_size_bucket", (("le", "3.0"),))] == 0
    assert final[("message_queue_flush_lateness_seconds_count", ())] == batches


def test_two_queues_with_registries_of_their_own_count_apart() -> None:
    one, two = CollectorRegistry(), CollectorRegistry()

    async def main() -> None:
        got: dict[str, list[Payload]] = {"one": [], "two": []}
        async with MessageQueue(default_batch_window=30.0, max_batch_size=3, metrics_registry=one) as q1, \
                MessageQueue(default_batch_window=0.01, max_batch_size=3, metrics_registry=two) as q2:

            async def first(item: Payload) -> None:
                got["one"].append(item)

            async def second(item: Payload) -> None:
                got["two"].append(item)

            await q1.start_processing("same", first)
            await q2.start_processing("same", second)
            for i in range(3):  # one full batch
                await q1.enqueue(msg("same", f"one{i}"))
            for i in range(2):  # one batch closed by its window
                await q2.enqueue(msg("same", f"two{i}"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while not (got["one"] and got["two"]) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert got["one"] and got["two"]

    run(main())
    assert value(one, "message_queue_messages_enqueued_total") == 3
    assert value(one, "message_queue_messages_delivered_total") == 3
    assert value(one, "message_queue_batches_delivered_total", reason="full") == 1
    assert value(one, "message_queue_batches_delivered_total", reason="window") == 0
    assert value(two, "message_queue_messages_enqueued_total") == 2
    assert value(two, "message_queue_messages_delivered_total") == 2
    assert value(two, "message_queue_batches_delivered_total", reason="window") == 1
    assert value(two, "message_queue_batches_delivered_total", reason="full") == 0


def test_a_second_queue_given_the_same_registry_is_refused_and_the_first_keeps_counting() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async with MessageQueue(default_batch_window=30.0, metrics_registry=registry) as mq:
            with pytest.raises(ValueError, match="Duplicated timeseries"):
                MessageQueue(default_batch_window=30.0, metrics_registry=registry)
            await mq.enqueue(msg("x", "hi"))
            await mq.statistics()

    run(main())
    assert value(registry, "message_queue_messages_enqueued_total") == 1


def test_a_queue_without_a_registry_imports_no_metrics_code() -> None:
    root = pathlib.Path(__file__).resolve().parents[1]
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(root)!r})
from message_queue import MessageQueue, QueuedMessage

async def main():
    got = []

    async def callback(item):
        got.append(item)

    async with MessageQueue(default_batch_window=0.01) as mq:
        await mq.start_processing("x", callback)
        await mq.enqueue(QueuedMessage(platform="t", channel_id="x", user_id="u", user_name="U", text="hi"))
        await mq.enqueue(QueuedMessage(platform="t", channel_id="", user_id="u", user_name="U", text="bad"))
        for _ in range(1000):
            if got:
                break
            await asyncio.sleep(0.01)
    assert got, "nothing delivered"

try:
    asyncio.run(main())
except Exception as exc:
    print(type(exc).__name__)
print(sorted(m for m in sys.modules if m.startswith("prometheus_client") or m == "message_queue.metrics"))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["InvalidInput", "[]"], done.stdout + done.stderr
