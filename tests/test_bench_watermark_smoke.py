"""Smoke test of ``bench/bench_watermark.py --quick``: given this tree twice, it runs the persisted workloads of
both in one process against one private redis-server and prints one JSON object with each tree's figures and
the paired ratios. No performance bar is asserted: the numbers belong to the benchmark's own output, and this
machine is shared."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_watermark.py"
WORKLOADS = {"saturated", "durable_sequential", "durable_concurrent", "durable_enqueue_many"}


@pytest.mark.redis
def test_the_report_compares_the_two_trees_per_workload_repeat_by_repeat() -> None:
    from redis_support import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeat", "2", "--bytecodes", str(ROOT), str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    assert report["trees"] == {"old": str(ROOT), "new": str(ROOT)}
    for label in ("old", "new"):
        assert set(report[label]) == WORKLOADS
        for workload, block in report[label].items():
            assert block["msgs_per_s"] > 0 and block["cpu_us_per_msg"] > 0, (label, workload)
            assert len(block["runs"]["msgs_per_s"]) == 2, (label, workload)
    for workload, ratios in report["new_vs_old"].items():
        for metric, spread in ratios.items():
            assert 0 < spread["min"] <= spread["median"] <= spread["max"], (workload, metric)
    counts = report["bytecodes"]
    assert set(counts) == WORKLOADS
    for workload, block in counts.items():
        assert block["per_msg"]["old"] > 100 and block["project_per_msg"]["new"] > 100, workload  # code ran
