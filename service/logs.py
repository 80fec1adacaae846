"""Log output of ``run_system.py``: human-readable lines (the default) or one JSON object a line
(``--log-format json``).

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, then ``channel``,
``item_id``, ``delivery_id`` and ``attempt`` when the log call passed them (``extra={"channel": ...}``), and
``exception`` with the traceback when there was one.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("channel", "item_id", "delivery_id", "attempt")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


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
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
