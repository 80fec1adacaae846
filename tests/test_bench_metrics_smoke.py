"""Smoke test of ``bench/bench_metrics.py --quick``: it runs, prints one JSON object with every section, every
run delivers every message, and the registry of each run with metrics exposes that count. No performance bar
is asserted: the numbers belong to the benchmark's own output, and this machine is shared."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_metrics.py"


def test_bench_metrics_quick_reports_every_section_and_the_exposed_counts() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--repeat", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(proc.stdout)
    messages = report["workload"]["messages"]
    assert messages > 0
    for mode in ("off", "on"):
        assert report["modes"][mode]["delivered"] == [messages, messages], mode
        assert report["modes"][mode]["cpu_us_per_msg"] > 0
    assert report["exposed_delivered_total"] == [messages, messages]
    for key in ("overhead", "cpu_overhead"):
        assert len(report[key]["runs"]) == 2 and report[key]["goal"] == 0.05, key
    snapshots = report["cpu_overhead"]["gauge_snapshots"]
    assert len(snapshots) == 2 and all(isinstance(n, int) and n >= 0 for n in snapshots)
    for impl in ("collector", "client_objects"):
        facts = report["facts"][impl]
        assert len(facts["runs_us_per_msg"]) == 2 and facts["us_per_msg"] > 0 and facts["share_of_cpu_off"] > 0
