"""``serve`` with platform message ids: duplicates dropped, ``edit`` and ``retract`` lines, ids in the output;
and the parser of those lines, in process."""

from __future__ import annotations

import json

import pytest
from test_run_system import message, run

from protocol.errors import InvalidInput
from protocol.messages import Edit, Retract
from protocol.values import QueuedMessage
from service.lines import parse_command, parse_line


def test_serve_drops_duplicates_applies_edits_and_retractions_and_reports_each() -> None:
    channel = "slack:#general"
    lines = [
        message(channel, "hello", message_id="a"),
        message(channel, "wrold", message_id="b"),
        message(channel, "hello", message_id="a"),  # a webhook retry
        {"op": "edit", **message(channel, "world", message_id="b")},
        {"op": "retract", "channel_id": channel, "message_id": "c"},
        message(channel, "bye", message_id="c"),
        {"op": "retract", "channel_id": channel, "message_id": "c"},
        {"op": "jump", "channel_id": channel},
    ]
    # the window is long enough that the edit and the retractions find the batch still open
    result = run("serve", "--window", "1.0", stdin=b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    results = [r for r in records if "op" in r]
    batches = [r for r in records if "op" not in r]
    assert results == [
        {"op": "edit", "channel_id": channel, "message_id": "b", "edited": True},
        {"op": "retract", "channel_id": channel, "message_id": "c", "retracted": False},
        {"op": "retract", "channel_id": channel, "message_id": "c", "retracted": True},
    ]
    assert [[(m["text"], m["message_id"]) for m in b["messages"]] for b in batches] == [
        [("hello", "a"), ("world", "b")]
    ]
    assert "line 8 skipped: op must be \"edit\" or \"retract\", got 'jump'" in result.stderr
    assert result.stderr.count("skipped:") == 1


def test_a_line_with_a_message_id_parses_into_a_message_with_that_id() -> None:
    line = json.dumps(message("c:1", "hi", message_id="x-1")).encode()
    assert parse_line(line).message_id == "x-1"
    command = parse_command(line)
    assert isinstance(command, QueuedMessage) and (command.text, command.message_id) == ("hi", "x-1")


def test_edit_and_retract_lines_parse_into_commands() -> None:
    edit = parse_command(json.dumps({"op": "edit", **message("c:1", "hi", message_id="x")}).encode())
    assert isinstance(edit, Edit) and isinstance(edit.message, QueuedMessage)
    assert (edit.message.text, edit.message.message_id) == ("hi", "x")
    retract = parse_command(b'{"op": "retract", "channel_id": "c:1", "message_id": "x"}')
    assert retract == Retract("c:1", "x")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({"op": "edit", **message("c:1", "hi")}, "message_id must not be empty"),
        ({"op": "retract", "channel_id": "c:1"}, "missing field(s): message_id"),
        ({"op": "retract", "channel_id": "c:1", "message_id": "x", "text": "t"}, "unknown field(s) of a retract"),
        (message("c:1", "hi", message_id=5), "message_id must be a string, got a number"),
        (message("c:1", "hi", message_id="i" * 257), "message_id must be at most 256 bytes"),
    ],
)
def test_bad_command_lines_are_refused_naming_the_rule(line: dict[str, object], error: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_command(json.dumps(line).encode())
    assert error in str(caught.value)
