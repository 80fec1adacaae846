"""Benchmark: what Prometheus metrics cost the asyncio API. Prints JSON.

    .venv/bin/python bench/bench_metrics.py [--repeat N] [--quick] [--verbose]

The saturated workload of :mod:`bench_facade` (4,000 channels x 20 messages in bursts, window 0.05 s, cap
10; ``--quick``: 100 channels) run through ``MessageQueue`` without metrics (``off``) and with
``metrics_registry=CollectorRegistry()`` (``on``), alternating in one process (which goes first alternates
too). Reported per mode: delivered messages per second and CPU microseconds per message (medians, with each
run), ``overhead``: 1 - on/off throughput, per repeat, then the median, and ``cpu_overhead``: on/off - 1 of
the process CPU per message, per repeat, then the median (the goal for both is below 5 %; the CPU ratio is
the steadier one on a shared machine, since other processes' load slows the wall clock of both modes more
than their CPU time). With metrics on, the registry is scraped (``generate_latest``) once at the end to check
the counts.
"""

from __future__ import annotations

import functools
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_actors as ba  # noqa: E402
import bench_facade as bf  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from message_queue import MessageQueue  # noqa: E402

OVERHEAD_GOAL = 0.05


def one_run(wl: ba.Bursts, metrics: bool) -> tuple[dict[str, Any], float | None]:
    """A facade run of ``wl``; with ``metrics``, also the delivered count the registry exposes."""
    registry = CollectorRegistry() if metrics else None
    bf.MessageQueue = functools.partial(MessageQueue, metrics_registry=registry)  # type: ignore[misc]
    try:
        record = bf.run_facade_bursts(wl)
    finally:
        bf.MessageQueue = MessageQueue  # type: ignore[misc]
    exposed = None
    if registry is not None:
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                if sample.name == "message_queue_messages_delivered_total":
                    exposed = sample.value
    return record, exposed


def main(argv: list[str] | None = None) -> int:
    args, p, log = ba.cli(argv, __doc__, "bench_metrics")
    wl = p.saturated
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    overheads: list[float] = []
    cpu_overheads: list[float] = []
    exposed: list[float | None] = []
    for i in range(p.repeat):
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        rates = {}
        cpu = {}
        for mode in order:
            record, seen = one_run(wl, mode == "on")
            runs[mode].append(record)
            rates[mode] = record["msgs_per_s"]
            cpu[mode] = record["cpu_us_per_msg"]
            if mode == "on":
                exposed.append(seen)
            log(f"repeat {i + 1}: {mode} {record['msgs_per_s']:.0f} msg/s, {record['cpu_us_per_msg']:.1f} us/msg")
        overheads.append(1 - rates["on"] / rates["off"])
        cpu_overheads.append(cpu["on"] / cpu["off"] - 1)
    summary = {
        mode: {
            "msgs_per_s": ba.median([r["msgs_per_s"] for r in records]),
            "cpu_us_per_msg": ba.median([r["cpu_us_per_msg"] for r in records]),
            "delivered": [r["delivered"] for r in records],
            "runs_msgs_per_s": [round(r["msgs_per_s"]) for r in records],
        }
        for mode, records in runs.items()
    }
    overhead = ba.median(overheads)
    cpu_overhead = ba.median(cpu_overheads)
    result = {
        "env": ba.environment(p, args.quick),
        "workload": {"channels": wl.channels, "messages": wl.total, "window": wl.window,
                     "max_batch_size": wl.max_batch_size},
        "modes": summary,
        "overhead": {"median": round(overhead, 4), "runs": [round(o, 4) for o in overheads],
                     "goal": OVERHEAD_GOAL, "met": overhead < OVERHEAD_GOAL},
        "cpu_overhead": {"median": round(cpu_overhead, 4), "runs": [round(o, 4) for o in cpu_overheads],
                         "goal": OVERHEAD_GOAL, "met": cpu_overhead < OVERHEAD_GOAL},
        "exposed_delivered_total": exposed,
    }
    ba.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
