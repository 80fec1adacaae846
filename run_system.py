"""The message queue's entry point: a demo of simulated chat traffic, or a long-lived node.

Usage::

    python run_system.py                  # = demo: simulated chat channels, batches printed as they flush
    python run_system.py demo --seed 7 --duration 3
    printf '%s\\n' '{"platform": "slack", "channel_id": "slack:#dev", "user_id": "U1", "user_name": "ann",
                    "text": "hey"}' | python run_system.py serve --window 0.5 | jq .
    python run_system.py serve --base multiprocTCPBase --admin-port 1900
    python run_system.py serve --redis redis://127.0.0.1:6379/0     # queues survive a restart
    python run_system.py serve --redis redis://127.0.0.1:6379/0 --distributed   # one of many nodes; batches
                                                                                # go to a Redis stream

``serve`` reads inbound messages as JSON lines on stdin and writes each finished batch as one JSON line on
stdout, acknowledging it to its channel once written. At end of input it waits until every open batch has
flushed and been written, then exits 0. SIGINT and SIGTERM stop it at once, also with status 0: without
``--redis`` batches still open are discarded; with it they stay in Redis for the next start.

With ``--redis URL`` every channel's open batch, waiting items and item in flight are kept in Redis, and a
node started on the same Redis restores them (printing how many channels it restored on stderr) and delivers
them like any other batch, open batches by their original deadline. Delivery is at least once: a batch that
was being written or not yet acknowledged when a node died is written again by the next one, with the same
``item_id`` and ``attempt`` raised (``attempt`` is 1 for a first delivery); a consumer that must not act twice
deduplicates by ``item_id``. The Redis server must not lose acknowledged writes: without ``appendonly yes``,
or with a ``maxmemory-policy`` other than ``noeviction``, serve refuses to start (exit 1) unless
``--allow-volatile-redis`` is given, and then warns. It also exits 1 when Redis cannot be reached, or when it
lost data an earlier run had stored (nothing is changed then; an operator must look at the server). Run one
node per Redis database at a time: two nodes restoring and writing the same channels would interleave them.

With ``--redis URL --distributed`` the process is a node of distributed mode (no actor system): any number of
nodes share that Redis, each message may go to any node, batching state lives in Redis, and every finished
batch is appended once to a Redis stream (``--stream``, default ``message_queue:inbound``) instead of stdout.
At end of input a node waits until the deadlines it armed have flushed; stopped by a signal or killed, it
leaves its open batches to the other nodes' sweepers. ``--acks`` writes ``{"acked": N}`` lines on stdout as
the first N input messages are stored. See ``message_queue/distributed/``.

With ``--base multiprocTCPBase`` other processes can enqueue too: the Supervisor is registered under the
global name ``message_queue.supervisor`` on the admin port (see ``examples/external_sender.py``); keep stdin
open while they do (``tail -f /dev/null | python run_system.py serve --base multiprocTCPBase``), since end of
input ends the node. That base binds every network interface and unpickles whatever reaches its ports: anyone
who can connect to the port can run code as this user. Use it only where the port is unreachable from
untrusted hosts.

Exit status: 0 on success (serve: also when stopped by a signal), 1 on failure (demo: a message missing or out
of order; serve: stdout closed, the actor system failed, Redis refused, unreachable or lost data), 2 on a usage
error, 130 when the demo is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence


def _ensure_dependencies() -> None:
    """On a fresh clone, run with any Python 3.11+: create ``.venv`` next to this file, install the package
    into it (once), and run this script again there."""
    try:
        import msgpack  # noqa: F401
        import thespian  # noqa: F401
    except ImportError:
        pass
    else:
        return
    root = Path(__file__).resolve().parent
    venv = root / ".venv"
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", f"{root}[redis]"]
    if Path(sys.prefix).resolve() == venv.resolve():
        raise SystemExit(f"run_system.py: {venv} lacks the dependencies; repair it with: {' '.join(install)}")
    ready = [str(python), "-c", "import msgpack, thespian"]
    if not python.exists() or subprocess.run(ready, capture_output=True).returncode != 0:
        print(f"run_system.py: first run: installing the package into {venv}", file=sys.stderr, flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(install, check=True)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    _ensure_dependencies()

from service import cli  # noqa: E402  (after the bootstrap: it imports the dependencies)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process's arguments) and return the exit status."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
