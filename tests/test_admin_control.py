"""``run_system.py admin --control PATH`` against a real in-memory ``serve --control PATH`` node: each command's
effect and its ``--json`` output, the socket's mode, and a second user's connection refused."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest
from test_run_system import REPO, SCRIPT, TIMEOUT, Running, launch, message

from service.control import request

__all__ = ["launch"]  # the fixture, used by name


@pytest.fixture
def control_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="mq-control-")
    yield os.path.join(directory, "node.sock")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, "admin", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT)


def admin_json(path: str, *args: str) -> Any:
    result = admin("--control", path, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def poll(path: str, payload: dict[str, Any], check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The node's answer to ``payload`` once ``check`` holds (the node reads its stdin on its own time)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        answer = request(path, payload)
        assert answer["ok"], answer
        if check(answer["result"]):
            return answer["result"]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, answer
        time.sleep(0.02)  # polling a real condition of another process


def start_node(launch: Callable[..., Running], path: str, *more: str) -> Running:
    node = launch("serve", "--window", "30", "--max-batch-size", "3", "--control", path, *more)
    node.stderr_line(lambda line: "admin commands on" in line)
    return node


def test_pause_keeps_batching_and_delivers_nothing_until_resume(
        launch: Callable[..., Running], control_path: str) -> None:
    node = start_node(launch, control_path)
    assert admin_json(control_path, "pause", "slack:#a") == {"channel": "slack:#a", "paused": True}
    for i in range(4):  # one full batch waits, one batch stays open
        node.write(json.dumps(message("slack:#a", f"a{i}")))
    node.write(json.dumps(message("slack:#b", "b0")))

    def row_of(channel: str) -> dict[str, Any]:
        rows = admin_json(control_path, "channels")["channels"]
        return next(r for r in rows if r["channel"] == channel)

    rows = poll(control_path, {"command": "channels", "limit": 20},
                lambda r: r["total"] == 2 and r["channels"][0]["waiting"] == 1)
    first = rows["channels"][0]
    assert first["channel"] == "slack:#a"  # sorted by waiting
    assert first["waiting"] == 1 and first["open_batch_size"] == 1 and first["paused"] is True
    assert not first["in_flight"]
    assert node.stdout.empty()  # paused: nothing delivered

    assert admin_json(control_path, "flush", "slack:#a") == {"channel": "slack:#a", "flushed": True}
    assert row_of("slack:#a")["waiting"] == 2
    assert admin_json(control_path, "resume", "slack:#a") == {"channel": "slack:#a", "paused": False}
    first_batch = json.loads(node.stdout_line())
    second_batch = json.loads(node.stdout_line())
    assert [m["text"] for m in first_batch["messages"]] == ["a0", "a1", "a2"]
    assert [m["text"] for m in second_batch["messages"]] == ["a3"]
    assert second_batch["reason"] == "flushed"

    shown = admin_json(control_path, "show", "slack:#b")
    assert shown["open_batch_size"] == 1 and shown["live"] is True
    text = admin("--control", control_path, "channels", "--limit", "1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split()[:3] == ["CHANNEL", "OPEN", "WAITING"]
    assert "1 of 2 channel(s)" in text.stdout
    admin_json(control_path, "flush", "slack:#b")  # else end of input waits for its 30 s window
    node.close_stdin()
    assert node.wait() == 0
    assert not os.path.exists(control_path)  # removed on exit


def test_clear_discards_waiting_items_of_a_paused_channel(
        launch: Callable[..., Running], control_path: str) -> None:
    node = start_node(launch, control_path)
    admin_json(control_path, "pause", "t:c")
    for i in range(6):  # two full batches, both waiting
        node.write(json.dumps(message("t:c", f"{i}")))
    poll(control_path, {"command": "show", "channel": "t:c"}, lambda r: r.get("waiting") == 2)
    assert admin_json(control_path, "clear", "t:c") == {"channel": "t:c", "removed": 2}
    assert poll(control_path, {"command": "show", "channel": "t:c"}, lambda r: True)["waiting"] == 0
    assert admin_json(control_path, "dead-letters", "t:c") == {
        "channel": "t:c", "source": "node", "dead_letters": [], "total": 0, "undecodable": 0}
    node.close_stdin()
    assert node.wait() == 0
    assert node.stdout.get(timeout=TIMEOUT) is None  # nothing was ever delivered


def test_no_node_answering_is_a_clear_failure(control_path: str) -> None:
    result = admin("--control", control_path, "channels")
    assert result.returncode == 1
    assert f"no node listens on {control_path}" in result.stderr


def test_a_bad_channel_is_a_usage_error() -> None:
    result = admin("--control", "/nonexistent", "pause", "")
    assert result.returncode == 2
    assert "channel" in result.stderr


def test_the_socket_is_mode_0600_and_another_user_is_refused(
        launch: Callable[..., Running], control_path: str) -> None:
    start_node(launch, control_path)
    mode = stat.S_IMODE(os.stat(control_path).st_mode)
    assert mode == 0o600, oct(mode)
    if os.getuid() != 0:
        pytest.skip("connecting as another user needs root (os.setuid in a forked child); the mode is checked")
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("this OS does not report a Unix socket peer's credentials (SO_PEERCRED)")

    def as_nobody(path: str) -> str:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become another user, try, report through the pipe
            os.close(read)
            outcome = "?"
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(TIMEOUT)
                    sock.connect(path)
                    try:
                        sock.sendall(b'{"command": "channels"}\n')
                    except BrokenPipeError:
                        pass  # refused before the request was read: the answer is already there
                    outcome = sock.recv(65536).decode()
            except PermissionError:
                outcome = "permission denied"
            except BaseException as exc:
                outcome = f"error {exc!r}"
            finally:
                os.write(write, outcome.encode())
                os._exit(0)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        os.close(read)
        os.waitpid(pid, 0)
        return b"".join(chunks).decode()

    directory = os.path.dirname(control_path)
    os.chmod(directory, 0o755)  # let the other user reach the socket file; its own mode still guards it
    assert as_nobody(control_path) == "permission denied"
    os.chmod(control_path, 0o666)  # past the mode: the node's own check of the peer's uid refuses it
    answer = json.loads(as_nobody(control_path))
    assert answer["ok"] is False and "refused: user id 65534" in answer["error"]
