"""Faults the random-input run of tests/test_faults.py found, each reduced to one test. Both fail today.

1. ``test_configure_channel_with_unchecked_settings_from_another_process_is_rejected``: on the TCP base, a
   ``ConfigureChannel`` whose ``BatchSettings`` fields were set past the constructor (``object.__setattr__``; a
   pickled dataclass is rebuilt without ``__post_init__``, so the node sees the same thing from any sender) is
   answered ``ChannelConfigured``: ``Supervisor.receiveMsg_ConfigureChannel`` checks only
   ``isinstance(settings, BatchSettings)``. The channel's next batch then opens with ``window="soon"`` and the
   ChannelActor raises ``TypeError: unsupported operand type(s) for +: 'float' and 'str'`` in
   ``actors/batching.py`` (``deadline``) on every ``EnqueueStamped``: the message was acknowledged
   (``Enqueued(1)``) by the Supervisor and is never delivered. Expected: ``Rejected(..., "InvalidInput", ...)``
   naming the field and the value, and the channel keeps its settings.

2. ``test_serve_ends_at_end_of_input_when_another_process_stopped_a_channel``: ``serve`` waits at end of input
   until no channel holds an open, waiting or in-flight batch (``service/serve.py`` ``_wait_drained``). A
   ``StopChannel`` from another process leaves the channel's queued items without a processor (and a
   ``HoldBatch`` leaves its open batch without a deadline), so that condition never holds and serve never exits
   after its input ends (only a signal stops it). Expected: serve exits within its timeout, reporting what it
   could not deliver (or delivering it).

They stay out of the suite until the code is fixed: run them with ``MQ_FAULT_REGRESSIONS=1``; remove the gate
below with the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Callable

import pytest

from actors.system import free_port
from test_run_system import REPO, TIMEOUT, Running, launch, message

__all__ = ["launch"]  # the fixture, used by name

pytestmark = pytest.mark.skipif(
    not os.environ.get("MQ_FAULT_REGRESSIONS"),
    reason="known failures awaiting a fix in actors/supervisor.py and service/serve.py (see the module docstring); "
           "run with MQ_FAULT_REGRESSIONS=1",
)

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

    assert configured[:2] == ["Rejected", "InvalidInput"] and "window" in str(configured[2]), configured
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
