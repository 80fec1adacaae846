"""Smoke test of ``bench/bench_flood.py --quick``: it runs and prints JSON in which the flooded channel holds
exactly its cap and counted every other message as dropped. No memory or speed bar is asserted here."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_flood_benchmark_keeps_the_cap_and_counts_the_rest() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_flood.py"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)["flood"]
    assert report["waiting_messages"] == report["max_queued"] == 1000
    assert report["dropped_overflow"] == report["messages"] - 1000 == 49_000
    assert report["rss_at_end_mib"] > 0
