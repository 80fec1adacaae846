"""``--log-format json``: one JSON object a line, with channel, item id, delivery id and attempt where the log
call has them; the default stays human-readable."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from test_run_system import run

from message_queue import MessageQueue, QueuedMessage
from protocol.values import Payload
from service.logs import JsonFormatter, configure


def test_a_failing_callback_is_logged_as_json_with_its_item() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("message_queue.facade")
    logger.addHandler(handler)
    failed = asyncio.Event()

    async def main() -> None:
        async def callback(item: Payload) -> None:
            failed.set()
            raise RuntimeError("boom")

        async with MessageQueue(default_batch_window=0.01) as mq:
            await mq.start_processing("chan:1", callback)
            await mq.enqueue(QueuedMessage("t", "chan:1", "u", "U", "hi"))
            await asyncio.wait_for(failed.wait(), 10)
            await mq.statistics()  # the failure has been reported by now

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1, lines
    entry = lines[0]
    assert entry["level"] == "ERROR" and entry["logger"] == "message_queue.facade"
    assert entry["channel"] == "chan:1" and entry["attempt"] == 1 and entry["delivery_id"] == 1
    assert len(entry["item_id"]) == 32
    assert "RuntimeError: boom" in entry["exception"]
    assert entry["time"].endswith("+00:00")


def test_fields_a_record_lacks_are_left_out_and_odd_values_do_not_break_a_line() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "odd %s", (object,), None)
    record.channel = b"bytes"
    entry = json.loads(JsonFormatter().format(record))
    assert set(entry) == {"time", "level", "logger", "message", "channel"}
    assert entry["channel"] == "b'bytes'"


def test_configure_refuses_an_unknown_format() -> None:
    try:
        configure("xml")
    except ValueError as exc:
        assert "log format must be one of text, json, got 'xml'" in str(exc)
    else:
        raise AssertionError("configure accepted xml")


def test_every_command_takes_log_format_and_the_default_is_text() -> None:
    for command in ("demo", "serve", "admin"):
        assert "--log-format {text,json}" in run(command, "--help").stdout, command
    result = run("serve", "--log-format", "xml")
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr
    done = run("demo", "--log-format", "json", "--duration", "0.3", "--window", "0.1", "--max-wait", "0.2")
    assert done.returncode == 0, done.stderr
