"""Smoke test of ``bench/bench_trees.py --quick``: given this tree twice, it runs both in one process and
prints one JSON object with each tree's figures and the ratio of the two. No performance bar is asserted:
the numbers belong to the benchmark's own output, and this machine is shared."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_trees.py"


def test_the_report_compares_the_two_trees_repeat_by_repeat() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeat", "2", "--bytecodes", str(ROOT), str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    assert report["trees"] == {"old": str(ROOT), "new": str(ROOT)}
    for label in ("old", "new"):
        block = report[label]
        assert len(block["runs"]) == 2
        assert block["facade_cpu_us_per_msg"] > 0 and block["baseline_cpu_us_per_msg"] > 0
        assert block["cpu_ratio"] > 0 and block["throughput_ratio"] > 0
    assert set(report["new_vs_old"]) == {"cpu_ratio", "throughput_ratio"}
    assert all(value > 0 for value in report["new_vs_old"].values())
    counts = report["bytecodes"]
    assert counts["per_msg"]["old"] > 100 and counts["per_msg"]["new"] > 100  # a message runs code
    assert counts["largest_differences"]  # the same tree twice: differences from the driver's turns only
