"""Tests of ``run_system.py``: end to end, as a subprocess run from the repository root; its input parser in
process.

Output is read line by line by reader threads and awaited with timeouts (no sleeps); every process a test
starts is killed when the test ends, whatever its outcome.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.system import free_port
from protocol.errors import InvalidInput
from protocol.messages import SUPERVISOR_NAME
from protocol.validation import validate_message
from service.lines import parse_line

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "run_system.py")
TIMEOUT = 30.0  # seconds; generous for a loaded machine, never reached when things work
MARKER = "RUN_SYSTEM_TEST_RUN"  # environment variable naming the test run that started a process

EVERY_OPTION = (
    "demo", "serve", "--seed", "--duration", "--channels", "--window", "--max-batch-size", "--max-wait",
    "--base", "--admin-port", "--idle-timeout", "simpleSystemBase", "multiprocTCPBase", "--redis",
    "--allow-volatile-redis",
)


# -- helpers ----------------------------------------------------------------------------------------------


class Running:
    """A ``run_system.py`` process; threads copy its stdout and stderr lines into queues as they arrive.

    Its environment holds a unique ``marker``, inherited by every process it forks (the TCP base's admin and
    actors, which leave its session): :meth:`close` kills them all by pid, so a failed test leaves nothing.
    With ``read_stdout=False`` nothing reads stdout: the test reads ``proc.stdout`` itself.
    """

    def __init__(self, args: list[str], *, read_stdout: bool = True) -> None:
        self.marker = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, *args],
            cwd=REPO,
            env={**os.environ, MARKER: self.marker},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.stderr_seen: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._stderr_reader = threading.Thread(target=_copy_lines, args=(self.proc.stderr, self.stderr), daemon=True)
        self._readers = [(self._stderr_reader, self.proc.stderr)]
        if read_stdout:
            stdout_reader = threading.Thread(target=_copy_lines, args=(self.proc.stdout, self.stdout), daemon=True)
            self._readers.append((stdout_reader, self.proc.stdout))
        for reader, _ in self._readers:
            reader.start()

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def stdout_line(self) -> str:
        line = self.stdout.get(timeout=TIMEOUT)
        assert line is not None, f"stdout ended early; stderr: {self.all_stderr()}"
        return line

    def stderr_line(self, predicate: Callable[[str], bool]) -> str:
        """The next stderr line that satisfies ``predicate``."""
        while True:
            line = self.stderr.get(timeout=TIMEOUT)
            assert line is not None, f"stderr ended before the expected line: {''.join(self.stderr_seen)}"
            self.stderr_seen.append(line)
            if predicate(line):
                return line

    def wait(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def all_stderr(self) -> str:
        """Everything written on stderr; only once the process has exited."""
        self._stderr_reader.join(TIMEOUT)
        while not self.stderr.empty():
            line = self.stderr.get_nowait()
            if line is not None:
                self.stderr_seen.append(line)
        return "".join(self.stderr_seen)

    def processes(self) -> set[int]:
        """Live (not zombie) processes whose environment holds this run's marker."""
        return processes_marked(self.marker)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for _ in range(5):  # a process being killed may have forked another
            for pid in self.processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for reader, _ in self._readers:
            reader.join(TIMEOUT)  # ends once every holder of the pipes is gone
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        for reader, stream in self._readers:
            if not reader.is_alive():  # closing under a blocked reader would hang
                stream.close()
        if len(self._readers) == 1 and self.proc.stdout is not None:
            self.proc.stdout.close()  # read by the test, which is done with it


def _copy_lines(stream: IO[bytes], into: queue.Queue[str | None]) -> None:
    for raw in stream:
        into.put(raw.decode("utf-8"))
    into.put(None)


@pytest.fixture
def launch() -> Iterator[Callable[..., Running]]:
    """Start ``run_system.py`` with the given arguments; every process started is killed afterwards."""
    started: list[Running] = []

    def start(*args: str, read_stdout: bool = True) -> Running:
        running = Running(list(args), read_stdout=read_stdout)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run ``run_system.py`` to completion (killed on timeout)."""
    result = subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=REPO, input=stdin, capture_output=True, timeout=TIMEOUT * 2
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def message(channel: str, text: object, **more: Any) -> dict[str, Any]:
    platform = channel.split(":", 1)[0]
    return {"platform": platform, "channel_id": channel, "user_id": "U1", "user_name": "ann", "text": text, **more}


def batches_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def texts_by_channel(batches: list[dict[str, Any]]) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for batch in batches:
        assert {m["channel_id"] for m in batch["messages"]} == {batch["channel_id"]}, "a batch mixes channels"
        texts.setdefault(batch["channel_id"], []).extend(m["text"] for m in batch["messages"])
    return texts


def processes_marked(marker: str) -> set[int]:
    """Live (not zombie) processes whose environment holds ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in environ.split(b"\0") and state not in (b"Z", b"X"):
            found.add(int(entry))
    return found


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- help and demo ----------------------------------------------------------------------------------------


def test_help_mentions_every_option_of_both_commands() -> None:
    result = run("--help")

    assert result.returncode == 0, result.stderr
    for option in EVERY_OPTION:
        assert option in result.stdout, f"{option} missing from --help"


def test_demo_without_a_command_delivers_every_message_once_in_send_order() -> None:
    result = run("--duration", "1", "--window", "0.2", "--max-wait", "0.3", "--seed", "3")

    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"summary: (\d+) messages sent, (\d+) delivered in (\d+) batches", result.stdout)
    assert summary is not None, result.stdout
    sent, delivered, batches = map(int, summary.groups())
    assert sent == delivered > 0
    assert re.search(r"^order: OK\b", result.stdout, re.MULTILINE), result.stdout
    batch_lines = re.findall(r"^\s*\d+\.\d+s\s+\S+\s+\d+\s+(window|full|max_wait)\s", result.stdout, re.MULTILINE)
    assert len(batch_lines) == batches
    assert "Traceback" not in result.stderr


# -- serve on the in-memory base --------------------------------------------------------------------------


def test_serve_batches_stdin_per_channel_in_order_and_reports_bad_lines() -> None:
    channels = ("slack:#general", "discord:1234", "telegram:-1001234567890")
    lines: list[str] = []
    expected: dict[str, list[str]] = {c: [] for c in channels}
    bad: dict[int, str] = {}
    for i in range(4):
        for channel in channels:
            text = f"{channel} says {i}"
            lines.append(json.dumps(message(channel, text)))
            expected[channel].append(text)
        if i == 0:
            lines.append("this is not json")
            bad[len(lines)] = "not JSON"
            lines.append(json.dumps({k: v for k, v in message(channels[0], "x").items() if k != "user_name"}))
            bad[len(lines)] = "missing field(s): user_name"
        if i == 2:
            lines.append(json.dumps(message("c" * 300, "too long a channel id")))
            bad[len(lines)] = "channel_id must be at most 256 bytes"
            lines.append(json.dumps(message(channels[1], 5)))
            bad[len(lines)] = "text must be a string"
    lines.append(json.dumps(message("cli:extra", "kept", extra={"k": [1, "v"]}, queued_at="2024-05-01T10:00:00Z")))
    expected["cli:extra"] = ["kept"]

    result = run("serve", "--window", "0.05", stdin="\n".join(lines).encode() + b"\n")

    assert result.returncode == 0, result.stderr
    batches = batches_of(result.stdout)
    assert texts_by_channel(batches) == expected  # per-channel order kept, every good message exactly once
    for batch in batches:
        assert set(batch) == {"channel_id", "item_id", "attempt", "delivery_id", "reason", "lateness_ms",
                              "interrupted", "messages"}
        assert batch["interrupted"] is False
        assert batch["reason"] in ("window", "full")
        assert batch["attempt"] == 1
    [kept] = [m for b in batches for m in b["messages"] if m["channel_id"] == "cli:extra"]
    assert kept["extra"] == {"k": [1, "v"]}
    assert kept["queued_at"] == "2024-05-01T10:00:00+00:00"
    for number, reason in bad.items():
        assert re.search(rf"line {number} skipped: .*{re.escape(reason)}", result.stderr), (number, result.stderr)
    assert result.stderr.count("skipped:") == len(bad)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_cleanly_with_status_0_on_a_signal(launch: Callable[..., Running], signum: int) -> None:
    node = launch("serve", "--window", "0.05")
    node.stderr_line(lambda line: "ready" in line)
    node.write(json.dumps(message("slack:#general", "hey")))
    assert json.loads(node.stdout_line())["messages"][0]["text"] == "hey"

    node.proc.send_signal(signum)

    assert node.wait() == 0  # stdin is still open: the signal alone ended it
    stderr = node.all_stderr()
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr


# -- serve on the TCP base, with a sender in another process ---------------------------------------------


@pytest.mark.tcp
def test_tcp_serve_delivers_an_external_senders_messages_and_leaves_no_process(
    launch: Callable[..., Running],
) -> None:
    port = free_port()
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.05")
    ready = node.stderr_line(lambda line: f"admin port {port}" in line)
    assert SUPERVISOR_NAME in ready
    node.stderr_line(lambda line: "WARNING" in line and "unpickles" in line)
    assert len(node.processes()) >= 3  # the node, the Thespian admin, its actors

    node.write(json.dumps(message("slack:#general", "from stdin")))
    sender = subprocess.run(
        [sys.executable, "-m", "examples.external_sender", "--port", str(port), "--channel", "cli:ext",
         "hello", "from", "outside"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert sender.returncode == 0, sender.stdout + sender.stderr

    texts: dict[str, list[str]] = {}
    while sum(map(len, texts.values())) < 4:
        for channel, got in texts_by_channel([json.loads(node.stdout_line())]).items():
            texts.setdefault(channel, []).extend(got)
    assert texts == {"slack:#general": ["from stdin"], "cli:ext": ["hello", "from", "outside"]}

    node.close_stdin()
    assert node.wait() == 0, node.all_stderr()
    assert "Traceback" not in node.all_stderr()
    assert not accepts_connections(port)
    assert node.processes() == set()  # the admin and every actor process were ended too


# -- the input parser, in process -----------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = ("platform", "channel_id", "user_id", "user_name", "text", "extra", "queued_at", "other")


@settings(max_examples=300, deadline=None)
@example(json.dumps(message("slack:#dev", "hey", extra={"k": [1]}, queued_at="2024-05-01T10:00:00")).encode())
@given(
    st.one_of(
        st.fixed_dictionaries({}, optional={name: _JSON for name in _FIELDS}).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=64),
    )
)
def test_parse_line_returns_a_valid_message_or_raises_invalid_input(data: bytes) -> None:
    try:
        parsed = parse_line(data)
    except InvalidInput:
        return
    assert validate_message(parsed) is parsed
    assert set(json.loads(data)) <= set(_FIELDS) - {"other"}
