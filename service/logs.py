"""Log output of ``run_system.py``: human-readable lines (the default) or one JSON object a line
(``--log-format json``).

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, then ``channel``,
``item_id``, ``delivery_id``, ``attempt``, ``line`` (of serve's input) and ``channels`` (of a write spanning
several) when the log call passed them (``extra={"channel": ...}``), and ``exception`` with the traceback when
there was one.

:func:`report` is for the lines serve has always written to stderr as they are (``serve: line 3 skipped:
...``, which scripts match): printed unchanged with the text format, a JSON line with its fields with ``json``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("channel", "item_id", "delivery_id", "attempt", "line", "channels")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

_format = "text"  # as configure() set it


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never raises for a value it cannot encode: ``str`` of it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format: str, level: int = logging.WARNING) -> None:
    """Send the root logger's records to stderr in ``log_format`` (``text`` or ``json``).

    Raises:
        ValueError: for another format.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    global _format
    _format = log_format
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def report(message: str, level: int = logging.WARNING, **context: object) -> None:
    """``message`` on stderr as it reads with the text format; with ``json``, a record of logger
    ``run_system`` at ``level`` carrying ``context`` (the :data:`CONTEXT_FIELDS` that apply; None: left out)."""
    if _format != "json":
        print(message, file=sys.stderr, flush=True)
        return
    logging.getLogger("run_system").log(level, message, extra={k: v for k, v in context.items() if v is not None})
