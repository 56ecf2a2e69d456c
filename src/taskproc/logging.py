"""Logging: one JSON object per line on stdout (or plain text for humans), optionally also to a file."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from taskproc.config import Settings

# Fields a record may carry through `extra=`; anything else from `extra` is ignored, so a careless call can't
# leak an arbitrary object (or a secret) into the log.
FIELDS = (
    "task_id",
    "type",
    "attempt",
    "status",
    "duration_ms",
    "worker",
    "request_id",
    "method",
    "path",
    "status_code",
    "error",
    "count",
    "concurrency",
)


# Process-wide fields (e.g. the worker id) added to every record that does not carry its own.
_context: dict[str, Any] = {}


def bind(**fields: Any) -> None:
    """Add fields to every later log line of this process."""
    _context.update(fields)


def _field(record: logging.LogRecord, name: str) -> Any:
    value = record.__dict__.get(name)
    return _context.get(name) if value is None else value


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
            "role": self.role,
        }
        for name in FIELDS:
            value = _field(record, name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S.%f')[:-3]} {record.levelname:<7} "
        base += f"{record.name}: {record.getMessage()}"
        extras = " ".join(f"{n}={_field(record, n)}" for n in FIELDS if _field(record, n) is not None)
        if extras:
            base += f" [{extras}]"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def configure_logging(settings: Settings, role: str) -> None:
    formatter: logging.Formatter = JsonFormatter(role) if settings.log_format == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file is not None:
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(settings.log_level.upper())
    # arq logs every job start and end at INFO; taskproc logs its own task events, so keep arq's to warnings.
    logging.getLogger("arq").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
