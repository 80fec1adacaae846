"""Smoke test of ``bench/bench_orphans.py``: it runs, prints one JSON object, and in every run the killed node's
processes all exited and its admin port closed (no bar on how fast: the numbers belong to the benchmark)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.tcp
def test_bench_orphans_reports_every_run_of_a_killed_node_as_ended() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_orphans.py"), "--channels", "2", "--repeat", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["params"] == {"channels": 2, "repeat": 2}
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        assert run["processes"] >= 6  # admin, logger, Supervisor, Timer, two ChannelActors
        assert run["all_exited_ms"] is not None and run["port_closed_ms"] is not None
    for key in ("all_exited_ms", "port_closed_ms"):
        assert report[key]["median"] is not None and report[key]["max"] is not None
