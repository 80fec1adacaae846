"""``run_system.py top``: the view rendered from a known snapshot, and the plain-text frames a real node's
control socket gives when stdout is not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable

from test_admin_control import control_path, start_node
from test_run_system import REPO, SCRIPT, TIMEOUT, Running, launch, message

from service.top import Snapshot, rate, render_text

__all__ = ["control_path", "launch"]  # fixtures, used by name


def row(channel: str, waiting: int, **more: object) -> dict[str, object]:
    return {"channel": channel, "open_batch_size": 1, "waiting": waiting, "in_flight": False, "attempt": None,
            "oldest_age_s": None, "dead_letters": 0, "paused": False, **more}


def test_the_view_of_a_known_snapshot() -> None:
    before = Snapshot(10.0, (), 0, enqueued=100, delivered=40)
    now = Snapshot(12.0, (row("slack:#busy", 7, in_flight=True, attempt=2, oldest_age_s=3.25, dead_letters=2),
                          row("slack:#calm", 0, paused=True)), 5, enqueued=300, delivered=90, lateness_p99_ms=4.5)
    text = render_text(now, before, "control /tmp/x.sock")
    lines = text.splitlines()
    assert "message_queue top — control /tmp/x.sock" in lines[0]
    busy = next(line for line in lines if "slack:#busy" in line).split("│")
    assert [cell.strip() for cell in busy[1:-1]] == ["slack:#busy", "7", "1", "yes", "2", "3.2", "2", ""]
    calm = next(line for line in lines if "slack:#calm" in line).split("│")
    assert calm[-2].strip() == "yes"
    assert ("enqueued 100.0/s  delivered 25.0/s  lateness p99 4.5 ms  dead letters 2  channels 5"
            in text), text
    assert rate(now, None, "enqueued") is None


def test_top_prints_plain_frames_of_a_running_node_when_stdout_is_not_a_terminal(
        launch: Callable[..., Running], control_path: str) -> None:
    node = start_node(launch, control_path)
    for i in range(2):
        node.write(json.dumps(message("slack:#a", f"a{i}")))
    result = subprocess.run(
        [sys.executable, SCRIPT, "top", "--control", control_path, "--iterations", "2", "--interval", "0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("message_queue top") == 2
    assert "\x1b[" not in result.stdout  # no terminal codes in plain text
    frames = result.stdout.split("message_queue top")
    assert "enqueued -/s" in frames[1]  # no rate before a second snapshot
    assert "enqueued " in frames[2] and "/s" in frames[2]


def test_top_without_a_node_fails_clearly(control_path: str) -> None:
    result = subprocess.run([sys.executable, SCRIPT, "top", "--control", control_path, "--iterations", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "top: no node listens on" in result.stderr
