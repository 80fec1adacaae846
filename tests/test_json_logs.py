"""``--log-format json``: one JSON object a line, with channel, item id, delivery id and attempt where the log
call has them; the default stays human-readable."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Callable

import pytest
import redis
from redis_support import RedisServer
from test_run_system import TIMEOUT, Running, launch, message, run

from message_queue import MessageQueue, QueuedMessage
from protocol import keys
from protocol.values import Payload
from service.logs import JsonFormatter, configure

__all__ = ["launch"]  # the fixture, used by name


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


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_rejected_line_is_a_json_line_with_its_line_number_and_channel() -> None:
    good = json.dumps({"platform": "t", "channel_id": "c1", "user_id": "u", "user_name": "U", "text": "hi"})
    # line 3 is JSON naming channel c1, refused (an edit with an empty message id)
    edit = json.dumps({"op": "edit", "channel_id": "c1", "message_id": "", "text": "x"})
    result = run("serve", "--window", "0", "--log-format", "json", stdin=f"{good}\nnot json\n{edit}\n".encode())
    assert result.returncode == 0, result.stderr
    entries = [e for e in _json_lines(result.stderr) if "skipped" in str(e["message"])]
    assert [e["line"] for e in entries] == [2, 3], result.stderr
    assert entries[0]["level"] == "WARNING" and entries[0]["logger"] == "run_system" and "channel" not in entries[0]
    assert str(entries[0]["message"]).startswith("serve: line 2 skipped: not JSON")
    assert entries[1]["channel"] == "c1"


def test_a_delivery_that_cannot_be_written_is_a_json_line_with_its_item(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocol.messages import BatchReady
    from protocol.values import QueueItem
    from service import logs
    from service.serve import BatchWriter

    class Closed(io.BytesIO):
        def write(self, data: object) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("run_system")
    logger.addHandler(handler)
    monkeypatch.setattr(logs, "_format", "json")
    writer = BatchWriter(Closed())
    item = QueueItem("f" * 32, "chan:9", QueuedMessage("t", "chan:9", "u", "U", "hi"), attempt=2)
    try:
        writer.on_output(BatchReady("chan:9", item, 7, "window"))
    finally:
        logger.removeHandler(handler)
    assert writer.broken is not None
    (entry,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entry["level"] == "ERROR" and "could not write the batch of channel 'chan:9'" in entry["message"]
    assert (entry["channel"], entry["item_id"], entry["delivery_id"], entry["attempt"]) == ("chan:9", "f" * 32, 7, 2)


@pytest.mark.redis
def test_a_persistence_retry_is_a_json_line_with_the_channel(launch: Callable[..., Running],
                                                             redis_srv: RedisServer) -> None:
    node = launch("serve", "--redis", redis_srv.url, "--window", "30", "--log-format", "json")
    node.stderr_line(lambda line: "ready" in line)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        # Redis refuses every write (NOREPLICAS) while it wants a replica it does not have: a real failed write
        client.config_set("min-replicas-to-write", 1)
        node.write(json.dumps(message("slack:#retry", "kept")))
        line = node.stderr_line(lambda text: "retrying in" in text)
        entry = json.loads(line)
        assert entry["level"] == "ERROR" and "Redis write of 1 operations failed" in entry["message"]
        assert entry["channel"] == "slack:#retry" and entry["channels"] == ["slack:#retry"]
        client.config_set("min-replicas-to-write", 0)
        deadline = time.monotonic() + TIMEOUT
        while client.llen(keys.channel_key(keys.OPEN_BATCH, "slack:#retry")) < 1:
            assert time.monotonic() < deadline, "the retried write never landed"
            time.sleep(0.02)  # polling the node's retried write
    finally:
        client.close()
