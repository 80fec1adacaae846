"""Faults the random-input run of tests/test_faults.py found, each reduced to one test.

1. A ``ConfigureChannel`` from another process on the TCP base whose ``BatchSettings`` fields were set past the
   constructor (a pickled dataclass is rebuilt without ``__post_init__``, so the node sees the same from any
   sender) must be refused with ``InvalidSettings`` naming the field and the value; the channel keeps its
   settings and delivers.
2. ``serve`` must end after its input ends even when another process stopped a channel (its items have no
   processor any more) or held its open batch (no deadline): it reports what it could not deliver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Callable

import pytest
from test_run_system import REPO, TIMEOUT, Running, launch, message

from actors.system import free_port

__all__ = ["launch"]  # the fixture, used by name


SENDER = textwrap.dedent(
    """
    import json, sys
    from thespian.actors import ActorSystem
    from actors.supervisor import Supervisor
    from protocol.messages import SUPERVISOR_NAME, ConfigureChannel, Enqueue, StopChannel
    from protocol.values import BatchSettings, QueuedMessage

    asys = ActorSystem("multiprocTCPBase", {"Admin Port": int(sys.argv[1])})
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    replies = []
    if sys.argv[2] == "settings":
        settings = BatchSettings(window=0.05)
        object.__setattr__(settings, "window", "soon")  # what any unpickled BatchSettings may hold
        replies.append(asys.ask(supervisor, ConfigureChannel("cli:a", settings), 10.0))
    else:
        replies.append(asys.ask(supervisor, Enqueue(QueuedMessage("cli", "cli:a", "u", "n", "queued"), ack=True), 10.0))
        replies.append(asys.ask(supervisor, StopChannel("cli:a"), 10.0))
        replies.append(asys.ask(supervisor, Enqueue(QueuedMessage("cli", "cli:a", "u", "n", "after"), ack=True), 10.0))
    replies.append(asys.ask(supervisor, Enqueue(QueuedMessage("cli", "cli:a", "u", "n", "hello"), ack=True), 10.0))
    print(json.dumps([[type(r).__name__, getattr(r, "error", None), getattr(r, "reason", None)] for r in replies]))
    """
)


def _send(port: int, case: str) -> list[list[str | None]]:
    sender = subprocess.run([sys.executable, "-c", SENDER, str(port), case], cwd=REPO, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert sender.returncode == 0, sender.stdout + sender.stderr
    replies: list[list[str | None]] = json.loads(sender.stdout)
    return replies


@pytest.mark.tcp
def test_configure_channel_with_unchecked_settings_from_another_process_is_rejected(
    launch: Callable[..., Running],
) -> None:
    port = free_port()
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.05")
    node.stderr_line(lambda line: f"admin port {port}" in line)

    configured, enqueued = _send(port, "settings")

    assert configured[:2] == ["Rejected", "InvalidSettings"] and "window" in str(configured[2]), configured
    assert enqueued[0] == "Enqueued"
    record = json.loads(node.stdout_line())  # the acknowledged message is delivered
    assert [m["text"] for m in record["messages"]] == ["hello"]
    node.close_stdin()
    assert node.wait() == 0
    assert "Traceback" not in node.all_stderr()


@pytest.mark.tcp
def test_serve_ends_at_end_of_input_when_another_process_stopped_a_channel(launch: Callable[..., Running]) -> None:
    port = free_port()
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.05")
    node.stderr_line(lambda line: f"admin port {port}" in line)
    node.write(json.dumps(message("slack:#x", "from stdin")))
    assert json.loads(node.stdout_line())["messages"][0]["text"] == "from stdin"

    replies = _send(port, "stop")

    assert [r[0] for r in replies] == ["Enqueued", "ChannelStopped", "Enqueued", "Enqueued"], replies
    node.close_stdin()
    try:
        status = node.proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not exit within {TIMEOUT} s of the end of its input: it waits for a stopped channel")
    assert status == 0
