"""A TCP node killed with SIGKILL takes its whole actor system with it, and a new node on the same admin port
works.

The node runs as a subprocess of ``run_system.py serve``; its actor processes are found the way
:mod:`actors.system` finds them, by the sessions of the node's children. Every wait polls a real condition
under a deadline; every process started is killed by pid when the test ends (``Running.close``).
"""

from __future__ import annotations

import json
import time
from typing import Callable

import pytest
from test_run_system import Running, accepts_connections, batches_of, launch, message, texts_by_channel

from actors.procfs import alive, children, session_members
from actors.system import free_port
from service.process import EXIT_FAILED

__all__ = ["launch"]  # the fixture, used by name

ORPHAN_DEADLINE = 10.0  # seconds for every process of a dead node's system to exit; they take milliseconds


def _serve(launch: Callable[..., Running], port: int) -> Running:
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.05")
    node.stderr_line(lambda line: f"admin port {port}" in line)
    return node


def _poll(condition: Callable[[], bool], deadline: float) -> bool:
    """True as soon as ``condition()`` holds; False if it still does not after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.tcp
def test_a_killed_tcp_node_leaves_no_process_and_a_new_node_serves_on_its_port(
    launch: Callable[..., Running],
) -> None:
    port = free_port()
    first = _serve(launch, port)
    channels = [f"slack:#c{i}" for i in range(3)]
    for channel in channels:
        first.write(json.dumps(message(channel, "before the kill")))
    delivered = texts_by_channel([json.loads(first.stdout_line()) for _ in channels])
    assert delivered == {channel: ["before the kill"] for channel in channels}

    sessions = [child for child in children(first.proc.pid) if session_members(child)]
    system = {pid for session in sessions for pid in session_members(session)}
    # admin, logger, Supervisor, Timer and one actor per channel: everything the node started but itself
    assert len(system) >= 4 + len(channels)
    assert system == first.processes() - {first.proc.pid}

    first.proc.kill()
    first.proc.wait()
    assert _poll(lambda: not any(map(alive, system)) and not accepts_connections(port), ORPHAN_DEADLINE), (
        f"still alive {ORPHAN_DEADLINE} s after the node's SIGKILL: {sorted(filter(alive, system))}, "
        f"admin port {port} {'open' if accepts_connections(port) else 'closed'}"
    )
    assert all(session_members(session) == [] for session in sessions)
    assert first.processes() == set()

    second = _serve(launch, port)
    sent = {channel: [f"{channel} {n}" for n in range(5)] for channel in channels}
    for n in range(5):
        for channel in channels:
            second.write(json.dumps(message(channel, sent[channel][n])))
    second.close_stdin()
    assert second.wait() == 0, second.all_stderr()
    assert "Traceback" not in second.all_stderr()
    lines = []
    while (line := second.stdout.get(timeout=5.0)) is not None:
        lines.append(line)
    assert texts_by_channel(batches_of("".join(lines))) == sent
    assert not accepts_connections(port)
    assert second.processes() == set()


@pytest.mark.tcp
def test_a_node_on_an_admin_port_in_use_is_refused_and_the_running_node_keeps_serving(
    launch: Callable[..., Running],
) -> None:
    port = free_port()
    first = _serve(launch, port)

    second = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port))
    assert second.wait() == EXIT_FAILED
    refused = second.all_stderr()
    assert f"admin port must be free for a new actor system, got {port}" in refused
    assert "Traceback" not in refused
    assert second.processes() == set()

    first.write(json.dumps(message("slack:#dev", "still served")))
    first.close_stdin()
    assert first.wait() == 0, first.all_stderr()
    assert texts_by_channel([json.loads(first.stdout_line())]) == {"slack:#dev": ["still served"]}
    assert not accepts_connections(port)
    assert first.processes() == set()
