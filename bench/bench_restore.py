"""Benchmark: restoring persisted channels from Redis on start. Prints one JSON object.

    .venv/bin/python bench/bench_restore.py [--channels 1000] [--items-per-channel 100] [--repeat 3]

It starts a private redis-server (``tests/redis_support.py``: free loopback port, temporary directory, AOF on),
writes ``channels x items-per-channel`` queue items with :meth:`actors.store.RedisStore.apply` (one message per
item), and for each run starts a ``simpleSystemBase`` system on that Redis with
:func:`actors.system.start_system` (what ``InProcessDriver.start()`` runs and waits for). Before every run the
state is written again, so every run restores the same data.

Numbers (seconds, median of ``--repeat`` runs; ``runs`` lists each):
    * ``restore_s``: from the start until ``start_system`` returned, i.e. the Supervisor loaded every channel
      from Redis, spawned and restored its ChannelActor, and answered ``SystemConfigured``;
    * ``deliver_all_s``: from the same start until a trivial processor actor (it answers ``ProcessingDone`` at
      once) received every item; ``out_of_order`` counts items delivered out of their channel's order.
``bars.restore_le_2s`` compares the median ``restore_s`` with the 2 s target.

``--driver`` adds one run through :class:`~actors.driver.InProcessDriver` whose ``on_output`` callback is the
processor (each ``ProcessingDone`` is then a command of its own: one Redis write per item).
``--profile`` adds a cProfile of one more restore (``RedisStore.load`` and the ChannelActors' restore), the
top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pathlib
import pstats
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from source_trees import load_tests_module  # noqa: E402
from thespian.actors import ActorAddress, ActorTypeDispatcher  # noqa: E402

from actors.driver import InProcessDriver, Output  # noqa: E402
from actors.journal import PushTail  # noqa: E402
from actors.store import RedisStore  # noqa: E402
from actors.system import SIMPLE_BASE, start_system  # noqa: E402
from protocol.messages import BatchReady, ProcessingDone, ProcessingStarted, StartProcessing  # noqa: E402
from protocol.values import QueuedMessage, QueueItem  # noqa: E402


def channel_name(index: int) -> str:
    return f"ch{index:04d}"


def populate(url: str, channels: int, per_channel: int, chunk: int = 10_000) -> int:
    """Empty the Redis at ``url`` and store ``per_channel`` one-message items in each of ``channels`` channels."""
    store = RedisStore.from_url(url)
    try:
        store._redis.flushall()
        store.open_epoch()
        ops: list[PushTail] = []
        written = 0
        for c in range(channels):
            channel = channel_name(c)
            for i in range(per_channel):
                message = QueuedMessage("bench", channel, "u", "u", f"{channel}.{i}")
                ops.append(PushTail(channel, QueueItem(f"{channel}-{i}", channel, message), closes_open=False))
                if len(ops) >= chunk:
                    store.apply(ops)
                    written += len(ops)
                    ops = []
        store.apply(ops)
        return written + len(ops)
    finally:
        store.close()


@dataclass(frozen=True, slots=True)
class CountAll:
    """Bench -> CountingProcessor: reply ``Counted`` once ``total`` items have been delivered."""

    total: int


@dataclass(frozen=True, slots=True)
class Counted:
    """CountingProcessor -> bench: items delivered, and deliveries out of per-channel order."""

    delivered: int
    out_of_order: int


class CountingProcessor(ActorTypeDispatcher):  # type: ignore[misc]
    """A trivial processor: answers every BatchReady with ProcessingDone at once and checks per-channel order."""

    def __init__(self) -> None:
        super().__init__()
        self._delivered = 0
        self._out_of_order = 0
        self._last: dict[str, int] = {}
        self._waiter: tuple[int, ActorAddress] | None = None

    def receiveMsg_BatchReady(self, msg: BatchReady, sender: ActorAddress) -> None:
        self.send(sender, ProcessingDone(msg.channel_id, msg.delivery_id))
        channel, _, index = msg.item.item_id.rpartition("-")
        if int(index) != self._last.get(channel, -1) + 1:
            self._out_of_order += 1
        self._last[channel] = int(index)
        self._delivered += 1
        self._answer()

    def receiveMsg_CountAll(self, msg: CountAll, sender: ActorAddress) -> None:
        self._waiter = (msg.total, sender)
        self._answer()

    def _answer(self) -> None:
        if self._waiter is not None and self._delivered >= self._waiter[0]:
            self.send(self._waiter[1], Counted(self._delivered, self._out_of_order))
            self._waiter = None


def one_run(url: str, total: int, timeout: float, profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """Start a system on ``url`` (restoring every stored channel), attach a CountingProcessor, and time both."""
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    running = start_system(SIMPLE_BASE, idle_timeout=3600.0, redis_url=url, timeout=timeout)
    restored = time.perf_counter() - started
    if profile is not None:
        profile.disable()
    try:
        if profile is not None:
            return {"restore_s": restored}
        asys = running.asys
        processor = asys.createActor(CountingProcessor)
        started_processing = asys.ask(running.supervisor, StartProcessing(processor=processor), timeout)
        assert isinstance(started_processing, ProcessingStarted), started_processing
        counted = asys.ask(processor, CountAll(total), timeout)
        all_delivered = time.perf_counter() - started
    finally:
        running.shutdown()
    assert isinstance(counted, Counted), f"not every item was delivered within {timeout} s: {counted!r}"
    return {
        "restore_s": restored,
        "deliver_all_s": all_delivered,
        "delivered": counted.delivered,
        "out_of_order": counted.out_of_order,
    }


def one_run_driver(url: str, total: int, timeout: float) -> dict[str, Any]:
    """The same through InProcessDriver, whose on_output callback is the processor: every ProcessingDone is a
    command of its own, so every item costs one Redis write."""
    delivered = 0
    done = threading.Event()
    driver: InProcessDriver

    def on_output(output: Output) -> None:
        nonlocal delivered
        if isinstance(output, BatchReady):
            delivered += 1
            driver.tell(ProcessingDone(output.channel_id, output.delivery_id))
            if delivered >= total:
                done.set()

    driver = InProcessDriver(on_output, idle_timeout=3600.0, redis_url=url)
    started = time.perf_counter()
    try:
        driver.start(timeout=timeout)
        restored = time.perf_counter() - started
        driver.call(StartProcessing()).result(timeout)
        finished = done.wait(timeout)
        all_delivered = time.perf_counter() - started
    finally:
        driver.stop(timeout)
    return {"restore_s": restored, "deliver_all_s": all_delivered if finished else None, "delivered": delivered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--items-per-channel", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--driver", action="store_true", help="also time one run through InProcessDriver")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one more restore")
    args = parser.parse_args()
    redis_support = load_tests_module("redis_support")
    total = args.channels * args.items_per_channel
    runs = []
    extra: dict[str, Any] = {}
    with redis_support.redis_server() as server:
        for _ in range(args.repeat):
            written = populate(server.url, args.channels, args.items_per_channel)
            assert written == total, (written, total)
            runs.append(one_run(server.url, total, args.timeout))
        if args.driver:
            populate(server.url, args.channels, args.items_per_channel)
            extra["driver_callback_run"] = _rounded(one_run_driver(server.url, total, args.timeout))
        if args.profile:
            populate(server.url, args.channels, args.items_per_channel)
            profile = cProfile.Profile()
            one_run(server.url, total, args.timeout, profile)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(30)
            extra["profile_restore"] = [line for line in text.getvalue().splitlines() if line.strip()]
    median_restore = statistics.median(r["restore_s"] for r in runs)
    median_deliver = statistics.median(r["deliver_all_s"] for r in runs)
    report = {
        "items": total,
        "channels": args.channels,
        "items_per_channel": args.items_per_channel,
        "repeat": args.repeat,
        "restore_s": round(median_restore, 3),
        "deliver_all_s": round(median_deliver, 3),
        "deliver_rate_items_per_s": round(total / median_deliver),
        "runs": [_rounded(r) for r in runs],
        "bars": {"restore_le_2s": median_restore <= 2.0},
        **extra,
    }
    print(json.dumps(report, indent=2))


def _rounded(run: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.items()}


if __name__ == "__main__":
    main()
