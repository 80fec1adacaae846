"""Enqueue messages into a running ``run_system.py serve --base multiprocTCPBase`` node from another process.

Run from the repository root (the node and this process must import the same ``actors`` and ``protocol``)::

    python -m examples.external_sender --port 1900 --channel cli:demo "hello" "from outside"

``ActorSystem(...)`` joins the admin already listening on that port; if none is listening it would start a new
one, so start the node first. Never call ``asys.shutdown()`` here: that stops the node's actor system.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from thespian.actors import ActorSystem

from actors.supervisor import Supervisor
from protocol.messages import SUPERVISOR_NAME, Enqueue, Enqueued
from protocol.values import QueuedMessage


def send(port: int, channel_id: str, texts: Sequence[str]) -> int:
    """Enqueue each text as a message of ``channel_id``; return how many the Supervisor accepted."""
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port})  # joins the node's admin
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)  # finds the node's Supervisor
    accepted = 0
    for text in texts:
        message = QueuedMessage("cli", channel_id, "cli-user", "external sender", text)
        reply = asys.ask(supervisor, Enqueue(message, ack=True), 10.0)  # Enqueued, or Rejected with a reason
        accepted += reply.count if isinstance(reply, Enqueued) else 0
    return accepted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="admin port the node printed on stderr")
    parser.add_argument("--channel", default="cli:demo", help="channel id of the messages (default cli:demo)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="one message per argument, sent in order")
    args = parser.parse_args(argv)
    accepted = send(args.port, args.channel, args.texts)
    print(f"{accepted} of {len(args.texts)} messages accepted")
    return 0 if accepted == len(args.texts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
