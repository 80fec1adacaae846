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


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    parsed = json.loads(proc.stdout)
    assert isinstance(parsed, dict)
    return parsed


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


def test_every_workload_delivers_every_message_once_and_in_order(report: dict[str, Any]) -> None:
    for name, result in delivery_workloads(report).items():
        assert result["expected"] > 0, name
        assert result["delivered"] == result["expected"], name
        assert result["all_delivered"] is True, name
        assert result["in_order"] is True, name
        assert result["duplicates"] == 0, name
        assert result["msgs_per_s"] > 0, name
        for kind, stats in result["lateness_ms"].items():
            assert set(stats) == {"p50", "p99", "max"}, (name, kind)


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
