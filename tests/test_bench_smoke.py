"""Smoke test of ``bench/bench_actors.py --quick``: it runs, prints one JSON object with every section, and
every workload delivers every message once, in order. No performance bar is asserted here: the numbers
belong to the benchmark's own output, and this machine is shared."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_actors.py"


def run_quick(script: pathlib.Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    parsed = json.loads(proc.stdout)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_quick(SCRIPT)


def delivery_workloads(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    lateness = report["scaling"]["lateness_open_channels"]
    return {
        "baseline.saturated": report["baseline"]["saturated"],
        "baseline.paced": report["baseline"]["paced"],
        "actors_simple.saturated": report["actors_simple"]["saturated"],
        "actors_simple.paced": report["actors_simple"]["paced"],
        "lateness.actors_simple": lateness["actors_simple"],
        "lateness.baseline": lateness["baseline"],
        "slow_processor.actors_simple": report["diagnostics"]["lateness_open_channels_slow_processor"][
            "actors_simple"
        ],
    }


def test_the_report_has_every_section(report: dict[str, Any]) -> None:
    for key in ("env", "params", "baseline", "actors_simple", "scaling", "ratios", "bars", "diagnostics"):
        assert key in report, key
    for key in ("python", "thespian", "cpu_count", "quick", "repeat"):
        assert key in report["env"], key
    assert report["env"]["quick"] is True
    for impl in ("actors_simple", "baseline"):
        block = report["scaling"][impl]
        assert "ratio_large_vs_small" in block
        assert any(key.startswith("channels_") for key in block)


def assert_delivered_once_in_order(name: str, result: dict[str, Any]) -> None:
    assert result["expected"] > 0, name
    assert result["delivered"] == result["expected"], name
    assert result["all_delivered"] is True, name
    assert result["in_order"] is True, name
    assert result["duplicates"] == 0, name
    assert result["msgs_per_s"] > 0, name
    for kind, stats in result["lateness_ms"].items():
        assert set(stats) == {"p50", "p99", "max"}, (name, kind)


def test_every_workload_delivers_every_message_once_and_in_order(report: dict[str, Any]) -> None:
    for name, result in delivery_workloads(report).items():
        assert_delivered_once_in_order(name, result)


def test_the_actor_runs_produce_nothing_but_batches(report: dict[str, Any]) -> None:
    for name, result in delivery_workloads(report).items():
        assert result.get("unexpected_outputs", 0) == 0, name


def test_the_scaling_runs_keep_every_message_in_an_open_batch(report: dict[str, Any]) -> None:
    for impl in ("actors_simple", "baseline"):
        for key, result in report["scaling"][impl].items():
            if key.startswith("channels_"):
                assert result["all_accepted"] is True, (impl, key)
                assert result["msgs_per_s"] > 0, (impl, key)


def test_the_bars_are_reported_as_booleans(report: dict[str, Any]) -> None:
    bars = report["bars"]
    for name in ("scaling_ratio", "lateness_p99_ms"):
        assert isinstance(bars[name]["pass"], bool), name
        assert "value" in bars[name] and "threshold" in bars[name], name
    assert isinstance(bars["all_pass"], bool)


# -- bench/bench_facade.py --quick: the asyncio API against the plain-asyncio baseline ------------------------

FACADE_SCRIPT = ROOT / "bench" / "bench_facade.py"
BURST_SCRIPT = ROOT / "bench" / "bench_burst.py"
DURABLE_SCRIPT = ROOT / "bench" / "bench_durable.py"
PERSISTENCE_SCRIPT = ROOT / "bench" / "bench_persistence.py"
SHAPES = ("saturated", "paced", "lateness")


def run_quick_with(script: pathlib.Path, *options: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    parsed = json.loads(proc.stdout)
    assert isinstance(parsed, dict)
    return parsed


def assert_percentiles(name: str, stats: dict[str, Any]) -> None:
    assert set(stats) == {"p50", "p99", "max"}, name
    assert all(isinstance(v, (int, float)) and v >= 0 for v in stats.values()), (name, stats)


def assert_stalls(name: str, stalls: dict[str, Any]) -> None:
    for probe in ("sleep", "call_later"):
        assert_percentiles(f"{name}.{probe}", stalls[probe])
    assert isinstance(stalls["p99"], (int, float)), name


@pytest.fixture(scope="module")
def facade_report() -> dict[str, Any]:
    return run_quick_with(FACADE_SCRIPT, "--profile")


def test_the_facade_report_has_every_section(facade_report: dict[str, Any]) -> None:
    for key in ("env", "params", "baseline", "facade", "ratios", "bars", "bar_values", "profile"):
        assert key in facade_report, key
    for key in ("python", "thespian", "cpu_count", "loadavg_at_start", "quick", "repeat"):
        assert key in facade_report["env"], key
    assert facade_report["env"]["quick"] is True
    assert "facade_vs_baseline_saturated_throughput" in facade_report["ratios"]
    assert {"delivery", "core", "handoff"} <= set(facade_report["facade"]["lateness"]["lateness_ms"])
    for impl in ("baseline", "facade"):
        for shape in SHAPES:
            assert facade_report[impl][shape]["cpu_us_per_msg"] > 0, (impl, shape)
        assert_stalls(impl, facade_report[impl]["saturated"]["stalls_ms"])


def test_the_facade_and_the_baseline_deliver_every_message_once_and_in_order(
    facade_report: dict[str, Any],
) -> None:
    for impl in ("baseline", "facade"):
        for shape in SHAPES:
            assert_delivered_once_in_order(f"{impl}.{shape}", facade_report[impl][shape])


def test_the_facade_bars_are_booleans(facade_report: dict[str, Any]) -> None:
    bars = facade_report["bars"]
    for name in ("throughput_ratio_ge_0_5", "lateness_p99_le_10ms", "loop_stall_p99_le_10ms",
                 "every_message_once_in_order", "all_pass"):
        assert isinstance(bars[name], bool), name
    assert bars["every_message_once_in_order"] is True


def test_the_profile_counts_the_sends_of_every_batch(facade_report: dict[str, Any]) -> None:
    profile = facade_report["profile"]
    saturated = facade_report["params"]["saturated"]
    assert profile["messages"] == saturated["channels"] * saturated["rounds"] * saturated["burst"]
    assert len(profile["top_tottime"]) == 15
    sends = profile["thespian_sends_per_batch"]
    # every batch costs at least its BatchReady and its ProcessingDone
    assert sends["run_single_send"] >= 2 and sends["actor_send"] >= 2, sends
    by_type = profile["sends_per_batch_by_message_type"]
    assert by_type["BatchReady"] >= 1 and by_type["ProcessingDone"] >= 1, by_type


# -- bench/bench_burst.py --quick: 200 channels x 15 messages at once ----------------------------------------


@pytest.fixture(scope="module")
def burst_report() -> dict[str, Any]:
    return run_quick_with(BURST_SCRIPT)


def test_the_burst_delivers_ten_then_five_per_channel_once_and_in_order(burst_report: dict[str, Any]) -> None:
    channels = burst_report["params"]["channels"]
    for load in ("idle", "busy_core"):
        for order in ("round_robin", "channel_major"):
            for impl in ("baseline", "facade"):
                name = f"{load}.{order}.{impl}"
                result = burst_report[load][order][impl]
                assert_delivered_once_in_order(name, result)
                assert result["expected"] == channels * 15, name
                assert result["items"] == result["items_expected"] == channels * 2, name
                assert result["batch_sizes_ok"] is True, name
                assert result["enqueue_s"] > 0 and result["elapsed_s"] > result["enqueue_s"], name
            ratios = burst_report[load][order]["ratios"]
            assert ratios["baseline_vs_facade_elapsed"] > 0, (load, order)
            assert ratios["facade_vs_baseline_lateness_p99"] is not None, (load, order)
    bars = burst_report["bars"]
    assert bars["every_message_once_in_order_10_then_5"] is True
    assert all(isinstance(value, bool) for value in bars.values())


# -- bench/bench_durable.py --quick: durable enqueue against in memory -----------------------------------------


@pytest.fixture(scope="module")
def durable_report() -> dict[str, Any]:
    from redis_support import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH")
    return run_quick_with(DURABLE_SCRIPT)


def test_durable_enqueue_delivers_every_message_once_in_order_and_leaves_nothing(
    durable_report: dict[str, Any],
) -> None:
    assert durable_report["env"]["redis_config"] == {"appendonly": "yes", "appendfsync": "everysec"}
    for shape in ("sequential", "concurrent", "enqueue_many"):
        for mode in ("in_memory", "persisted"):
            name = f"{shape}.{mode}"
            result = durable_report[shape][mode]
            assert result["expected"] > 0, name
            assert result["delivered"] == result["expected"], name
            assert result["all_delivered"] is True and result["in_order"] is True, name
            assert result["duplicates"] == 0, name
            assert result["acked_msgs_per_s"] > 0, name
            assert_percentiles(f"{name}.ack", result["ack_latency_ms"])
            assert_stalls(name, result["stalls_ms"])
        persisted = durable_report[shape]["persisted"]["redis"]
        assert persisted["leftover_keys"] == 0, shape
        assert persisted["evalsha_per_msg"] > 0, shape  # the messages were written through the store's script
    assert durable_report["bars"]["every_message_once_in_order_nothing_left_in_redis"] is True


# -- bench/bench_persistence.py --quick: in memory against Redis persistence ---------------------------------


@pytest.fixture(scope="module")
def persistence_report() -> dict[str, Any]:
    from redis_support import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH")
    return run_quick(PERSISTENCE_SCRIPT)


def test_the_persistence_report_has_every_section(persistence_report: dict[str, Any]) -> None:
    for key in ("env", "params", "in_memory", "persistent", "ratios", "bars", "bar_values"):
        assert key in persistence_report, key
    assert persistence_report["env"]["quick"] is True
    assert persistence_report["env"]["redis_config"] == {"appendonly": "yes", "appendfsync": "everysec"}
    assert "persistent_vs_in_memory_saturated_throughput" in persistence_report["ratios"]


def test_both_modes_deliver_every_message_once_in_order_and_leave_nothing_in_redis(
    persistence_report: dict[str, Any],
) -> None:
    for impl in ("in_memory", "persistent"):
        for shape in SHAPES:
            result = persistence_report[impl][shape]
            assert_delivered_once_in_order(f"{impl}.{shape}", result)
            assert result.get("unexpected_outputs", 0) == 0, (impl, shape)
    for shape in SHAPES:
        redis_stats = persistence_report["persistent"][shape]["redis"]
        assert redis_stats["leftover_keys"] == 0, shape
        assert redis_stats["writes_per_msg"] > 0, shape  # every run wrote through the store's script


def test_the_persistence_bars_are_booleans(persistence_report: dict[str, Any]) -> None:
    bars = persistence_report["bars"]
    for name in ("throughput_ratio_ge_0_3", "every_message_once_in_order_nothing_left_in_redis", "all_pass"):
        assert isinstance(bars[name], bool), name
    assert bars["every_message_once_in_order_nothing_left_in_redis"] is True


# -- bench/bench_passivation.py --quick: channels come and go while commands are answered -------------------

PASSIVATION_SCRIPT = ROOT / "bench" / "bench_passivation.py"


@pytest.fixture(scope="module")
def passivation_report() -> dict[str, Any]:
    return run_quick(PASSIVATION_SCRIPT)


def test_the_passivation_report_has_every_section(passivation_report: dict[str, Any]) -> None:
    for key in ("env", "params", "result", "bars"):
        assert key in passivation_report, key
    assert passivation_report["env"]["quick"] is True
    result = passivation_report["result"]
    for key in ("create_s", "create_without_passivation_s", "passivate_s", "rss_growth_bytes_per_channel"):
        assert result[key] > 0, key
    for key in ("command_ms", "command_ms_without_full_collection", "command_ms_before_first_due"):
        assert set(result[key]) == {"p50", "p99", "max"}, key


def test_every_channel_passivates_with_its_counters_and_leaves_nothing_behind(
    passivation_report: dict[str, Any],
) -> None:
    result = passivation_report["result"]
    assert result["live_listed_at_end"] == 0
    assert result["counters_intact"] is True and result["counters_checked"] > 0
    assert result["retired_entries"] == passivation_report["params"]["channels"]  # each processed one item
    assert result["leftover"] == {"registry_entries": 0, "supervisor_children": 0}
    assert result["commands"] > 0  # commands were answered while channels passivated


def test_the_passivation_bars_are_booleans(passivation_report: dict[str, Any]) -> None:
    bars = passivation_report["bars"]
    for name in ("passivation_le_2x_creation", "commands_le_100ms"):
        assert isinstance(bars[name]["pass"], bool), name
    assert isinstance(bars["all_pass"], bool)


# -- bench/bench_conversations.py --quick: what the conversation features cost -------------------------------

CONVERSATIONS_SCRIPT = ROOT / "bench" / "bench_conversations.py"
CONVERSATION_VARIANTS = ("default", "dedupe", "collect", "interrupt", "reject", "split_on_author")


@pytest.fixture(scope="module")
def conversations_report() -> dict[str, Any]:
    return run_quick(CONVERSATIONS_SCRIPT)


def test_the_conversations_report_has_every_variant_and_ratio(conversations_report: dict[str, Any]) -> None:
    assert conversations_report["env"]["quick"] is True
    for name in ("baseline", *CONVERSATION_VARIANTS):
        assert conversations_report[name]["cpu_us_per_msg"] > 0, name
        assert conversations_report[name]["msgs_per_s"] > 0, name
    ratios = conversations_report["ratios"]
    for name in CONVERSATION_VARIANTS[1:]:
        assert set(ratios[name]) == {"cpu_per_msg_vs_default", "throughput_vs_default"}, name
    assert {"throughput", "msgs_per_cpu_s"} <= set(ratios["default_vs_baseline"])


def test_every_conversation_variant_settles_every_message(conversations_report: dict[str, Any]) -> None:
    saturated = conversations_report["params"]["saturated"]
    total = saturated["channels"] * saturated["rounds"] * saturated["burst"]
    for name in CONVERSATION_VARIANTS:
        result = conversations_report[name]
        assert result["expected"] == total, name
        assert result["all_settled"] is True, name
        assert result["delivered"] + result["refused"] == total, name
        if name != "reject":
            assert result["refused"] == 0 and result["delivered"] == total, name
        if name != "interrupt":
            assert result["redelivered"] == 0, name
    reject = conversations_report["reject"]
    assert reject["refused"] == reject["rejections"]  # how many depends on timing
    assert conversations_report["baseline"]["all_delivered"] is True
    # split_on_author with alternating authors: every message is a batch of its own
    assert conversations_report["split_on_author"]["batches"] == total
