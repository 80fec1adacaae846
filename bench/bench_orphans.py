"""Benchmark: how fast the processes of a TCP node's actor system end after the node is killed with SIGKILL.
Prints one JSON object.

    .venv/bin/python bench/bench_orphans.py [--channels 8] [--repeat 5]

Each run starts ``run_system.py serve --base multiprocTCPBase`` on a free admin port, feeds it one message per
channel and reads every batch (so the admin, its logger, the Supervisor, the Timer and one ChannelActor per
channel are running), finds those processes by the sessions of the node's children (as
:mod:`actors.system` does), kills the node with SIGKILL and polls every millisecond.

Numbers (milliseconds from the SIGKILL; median and max of ``--repeat`` runs; ``runs`` lists each):
    * ``all_exited_ms``: until no process of the system is alive (zombies count as exited);
    * ``port_closed_ms``: until the admin port refuses connections.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.procfs import alive, children, session_members  # noqa: E402
from actors.system import free_port  # noqa: E402

DEADLINE = 30.0  # seconds; a run that takes longer is reported as failed


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _line(stream: Any) -> bytes:
    line: bytes = stream.readline()
    if not line:
        raise RuntimeError("the node ended its output early")
    return line


def one_run(channels: int) -> dict[str, Any]:
    port = free_port()
    node = subprocess.Popen(
        [sys.executable, str(ROOT / "run_system.py"), "serve", "--base", "multiprocTCPBase", "--admin-port",
         str(port), "--window", "0.01"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert node.stdin is not None and node.stdout is not None and node.stderr is not None
    system: set[int] = set()
    try:
        while b"admin port" not in _line(node.stderr):
            pass
        for n in range(channels):
            record = {"platform": "b", "channel_id": f"b:{n}", "user_id": "u", "user_name": "u", "text": "x"}
            node.stdin.write(json.dumps(record).encode() + b"\n")
        node.stdin.flush()
        for _ in range(channels):
            _line(node.stdout)
        system = {pid for session in children(node.pid) for pid in session_members(session)}
        started = time.monotonic()
        node.send_signal(signal.SIGKILL)
        exited = closed = None
        while exited is None or closed is None:
            now = time.monotonic()
            if now - started > DEADLINE:
                break
            if exited is None and not any(map(alive, system)):
                exited = now
            if closed is None and not _accepts(port):
                closed = now
            time.sleep(0.001)
        return {
            "processes": len(system),
            "all_exited_ms": None if exited is None else round((exited - started) * 1000, 1),
            "port_closed_ms": None if closed is None else round((closed - started) * 1000, 1),
        }
    finally:
        for pid in [node.pid, *system]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait()
        for stream in (node.stdin, node.stdout, node.stderr):
            stream.close()


def _summary(values: list[float | None]) -> dict[str, float | None]:
    done = [v for v in values if v is not None]
    if len(done) < len(values):
        return {"median": None, "max": None}
    return {"median": round(statistics.median(done), 1), "max": max(done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [one_run(args.channels) for _ in range(args.repeat)]
    print(json.dumps({
        "env": {
            "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv]),
            "python": platform.python_version(),
            "thespian": importlib.metadata.version("thespian"),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {"channels": args.channels, "repeat": args.repeat},
        "all_exited_ms": _summary([run["all_exited_ms"] for run in runs]),
        "port_closed_ms": _summary([run["port_closed_ms"] for run in runs]),
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
