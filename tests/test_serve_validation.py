"""``serve`` writes strict JSON whatever reaches it, counts every line that carries no message (blank ones
included), and refuses what the checks refuse; on the TCP base a bad message from another process is rejected
and the node carries on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable

import pytest
import redis
from test_run_system import (
    REPO,
    TIMEOUT,
    Running,
    accepts_connections,
    launch,
    message,
    run,
    texts_by_channel,
)

from actors.system import free_port
from protocol.messages import BatchReady
from protocol.values import MessageBatch, QueuedMessage, QueueItem
from service.lines import MAX_LINE_BYTES
from service.serve import batch_record, record_line

__all__ = ["launch"]  # the fixture, used by name


def strict_json(line: str | bytes) -> Any:
    """``line`` parsed as strict JSON: the tokens NaN, Infinity and -Infinity are errors."""

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(line, parse_constant=refuse)


# -- the output, in process ----------------------------------------------------------------------------------


class FailingZone(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset")

    def dst(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no dst")

    def tzname(self, dt: datetime | None) -> str:
        raise RuntimeError("no name")


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


def ready_of(*messages: QueuedMessage) -> BatchReady:
    at = datetime(2024, 5, 1, tzinfo=timezone.utc)
    return BatchReady("c", QueueItem("i1", "c", MessageBatch(list(messages), at, at)), 7, "window", 0.0012)


def test_a_record_is_strict_json_whatever_values_reach_the_writer() -> None:
    """Values the checks refuse (a message from an older version, or changed after it was checked) are
    converted, never raised on: non-finite numbers become null."""
    loop: dict[str, Any] = {}
    loop["self"] = loop
    odd = QueuedMessage("p", "c", "u", "n", "lone \udc80 surrogate", queued_at="yesterday",  # type: ignore[arg-type]
                        extra={"nan": float("nan"), "inf": [float("inf"), -float("inf")], "obj": object(),
                               "bytes": b"\x00\xff", "set": {1}, "tuple": (1, "a"), 3: "int key", "loop": loop,  # type: ignore[dict-item]
                               "bad": Unprintable(), "when": datetime(2024, 5, 1, tzinfo=FailingZone())})
    fine = QueuedMessage("p", "c", "u", "n", "fine", queued_at=datetime(2024, 5, 1, 12, tzinfo=timezone.utc),
                         extra={"score": 1.5, "tags": ["a"]})

    line = record_line(ready_of(odd, fine))

    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = strict_json(line.decode("utf-8"))  # valid UTF-8, and strict JSON
    first, second = record["messages"]
    assert first["queued_at"] == "yesterday"
    assert first["extra"]["nan"] is None and first["extra"]["inf"] == [None, None]
    assert first["extra"]["bytes"] == "AP8=" and first["extra"]["tuple"] == [1, "a"]
    assert first["extra"]["3"] == "int key" and first["extra"]["set"] == "{1}"
    assert first["extra"]["bad"] == "<Unprintable>" and first["extra"]["when"] == "<datetime>"
    assert first["text"] == "lone \ufffd surrogate"  # the character UTF-8 cannot hold replaced, the rest kept
    assert second == {"platform": "p", "channel_id": "c", "user_id": "u", "user_name": "n", "text": "fine",
                      "queued_at": "2024-05-01T12:00:00+00:00", "extra": {"score": 1.5, "tags": ["a"]},
                      "message_id": ""}
    assert record["lateness_ms"] == 1.2 and record["delivery_id"] == 7


def test_a_checked_batch_record_is_written_unchanged() -> None:
    checked = QueuedMessage("p", "c", "u", "n", "héllo", extra={"k": [1, None, True, "v", 2.5]})
    ready = ready_of(checked)
    assert strict_json(record_line(ready)) == json.loads(json.dumps(batch_record(ready)))
    assert strict_json(record_line(ready))["messages"][0]["extra"] == {"k": [1, None, True, "v", 2.5]}


# -- serve on the in-memory base --------------------------------------------------------------------------


def test_serve_refuses_non_finite_numbers_counts_blank_lines_and_writes_strict_json() -> None:
    good = [json.dumps(message("slack:#a", f"a{i}", extra={"score": 0.5 * i})) for i in range(3)]
    lines = [
        good[0],
        "",  # 2: empty
        '{"platform": "slack", "channel_id": "slack:#b", "user_id": "U1", "user_name": "ann", "text": "x", '
        '"extra": {"score": NaN}}',  # 3
        "   \t ",  # 4: whitespace only
        good[1],
        json.dumps(message("slack:#b", "y")).replace('"y"', '"y", "extra": {"v": [Infinity]}'),  # 6
        json.dumps(message("slack:#b", "z")).replace('"z"', '"z", "extra": {"big": 1e999}'),  # 7
        json.dumps(message("slack:#b", "w", queued_at="yesterday")),  # 8
        json.dumps(message("slack:#b", "b0", queued_at="2024-05-01T10:00:00")),  # no offset: taken as UTC
        "x" * (MAX_LINE_BYTES + 10),  # 10
        good[2],
    ]
    result = run("serve", "--window", "0.05", stdin="\n".join(lines).encode() + b"\n")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = [strict_json(line) for line in result.stdout.splitlines()]
    assert texts_by_channel(out) == {"slack:#a": ["a0", "a1", "a2"], "slack:#b": ["b0"]}
    [b0] = [m for batch in out for m in batch["messages"] if m["text"] == "b0"]
    assert b0["queued_at"] == "2024-05-01T10:00:00+00:00"
    reasons = {
        2: "blank line",
        3: "not strict JSON: NaN is no JSON number",
        4: "blank line",
        6: "not strict JSON: Infinity is no JSON number",
        7: "extra floats must be finite, got inf at extra['big']",
        8: "queued_at must be an ISO 8601 date-time, got 'yesterday'",
        10: f"line longer than {MAX_LINE_BYTES} bytes",
    }
    for number, reason in reasons.items():
        assert f"serve: line {number} skipped: {reason}" in result.stderr, (number, result.stderr)
    assert result.stderr.count(" skipped: ") == len(reasons)
    assert "4 messages accepted, 7 lines skipped" in result.stderr


# -- serve on the TCP base, with a bad sender in another process ---------------------------------------------

SENDER = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime
    from thespian.actors import ActorSystem
    from actors.internal import EnqueueChecked
    from actors.supervisor import Supervisor
    from protocol.messages import SUPERVISOR_NAME, Enqueue, EnqueueFront
    from protocol.values import MessageBatch, QueuedMessage

    asys = ActorSystem("multiprocTCPBase", {"Admin Port": int(sys.argv[1])})
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    bad = QueuedMessage("p", "cli:bad", "u", "n", "x", queued_at="yesterday")
    naive = MessageBatch([QueuedMessage("p", "cli:bad", "u", "n", "y")], datetime(2024, 5, 1))
    good = QueuedMessage("cli", "cli:good", "u", "n", "still delivered")
    replies = [asys.ask(supervisor, command, 10.0)
               for command in (Enqueue(bad, ack=True), EnqueueFront(naive, ack=True), Enqueue(good, ack=True))]
    # the in-process producers' message, which the Supervisor routes unchecked: the writer must survive it
    unchecked = QueuedMessage("p", "cli:unchecked", "u", "n", "odd", queued_at="yesterday",
                              extra={"n": float("nan")})
    refused = ""
    try:
        asys.tell(supervisor, EnqueueChecked((unchecked,), (0.0,)))
    except TypeError as exc:  # it cannot be pickled: it never leaves its process
        refused = str(exc)
    replies.append(asys.ask(supervisor, Enqueue(QueuedMessage("cli", "cli:good", "u", "n", "after"), ack=True), 10.0))
    print(json.dumps([[type(r).__name__, getattr(r, "error", None), getattr(r, "reason", None)] for r in replies]
                     + [refused]))
    # no asys.shutdown(): it would stop the node's actor system
    """
)


@pytest.mark.tcp
def test_tcp_node_rejects_a_bad_queued_at_from_another_process_and_keeps_delivering(
    launch: Callable[..., Running],
) -> None:
    port = free_port()
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.05")
    node.stderr_line(lambda line: f"admin port {port}" in line)

    sender = subprocess.run([sys.executable, "-c", SENDER, str(port)], cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT)

    assert sender.returncode == 0, sender.stdout + sender.stderr
    bad, naive_batch, good, after, refused = json.loads(sender.stdout)
    assert "never crosses a process boundary" in refused  # the unchecked path stays in-process
    assert bad[:2] == ["Rejected", "InvalidInput"]
    assert bad[2].startswith("queued_at must be a timezone-aware datetime, got str")
    assert naive_batch[:2] == ["Rejected", "InvalidInput"] and "first_at" in naive_batch[2]
    assert good[0] == after[0] == "Enqueued"
    node.write(json.dumps(message("slack:#stdin", "from stdin")))
    records: list[dict[str, Any]] = []
    while sum(len(r["messages"]) for r in records) < 3:
        records.append(strict_json(node.stdout_line()))  # strict JSON
    assert texts_by_channel(records) == {"cli:good": ["still delivered", "after"], "slack:#stdin": ["from stdin"]}

    node.close_stdin()
    assert node.wait() == 0, node.all_stderr()
    assert "Traceback" not in node.all_stderr()
    assert not accepts_connections(port)
    assert node.processes() == set()


# -- serve --distributed counts blank lines too -----------------------------------------------------------


@pytest.mark.redis
def test_distributed_serve_counts_blank_lines_as_skipped(redis_srv: Any) -> None:
    good = json.dumps(message("c:1", "m"))
    stdin = "\n".join([good, "", "  ", '{"extra": NaN}', good]).encode() + b"\n"
    done = subprocess.run(
        [sys.executable, str(REPO / "run_system.py"), "serve", "--redis", redis_srv.url, "--distributed",
         "--window", "0.05"],
        cwd=REPO, input=stdin, capture_output=True, timeout=TIMEOUT,
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "serve: line 2 skipped: blank line" in err and "serve: line 3 skipped: blank line" in err
    assert "serve: line 4 skipped: not strict JSON: NaN" in err
    assert "2 messages accepted, 3 lines skipped" in err
    client = redis.Redis.from_url(redis_srv.url)
    try:
        assert client.xlen("message_queue:inbound") >= 1
    finally:
        client.close()
