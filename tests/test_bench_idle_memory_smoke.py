"""Smoke test of bench/bench_idle_memory.py: its quick mode runs and reports every channel delivered and its
counters kept (no figure is asserted: numbers live in the benchmark's report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_idle_memory_report_has_its_fields_and_every_channel_was_delivered() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_idle_memory.py"), "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    result = report["result"]
    assert result["all_delivered"] and result["counters_kept"]
    assert isinstance(result["growth_mib"], float)
    assert report["bars"]["growth_le_30mib_per_100k"]["pass"] is None  # the bar is for 100,000 channels


def test_the_variant_with_message_ids_passivates_every_channel_and_still_drops_a_duplicate() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_idle_memory.py"), "--quick", "--message-ids"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    result = report["result"]
    assert report["params"]["message_ids"] is True
    assert result["all_delivered"] and result["counters_kept"] and result["duplicates_dropped"] is True
