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
    "trace_id",  # with tracing on, of the span current when the record was made (taskproc.tracing)
    "span_id",
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


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(text: str) -> str:
    """`text` with every character that is not printable (C0/C1 controls, DEL, line and paragraph separators,
    bidi overrides, ...) and the backslash escaped, so that it can't end a line or forge another."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, one C-level scan
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return "".join(out)


class TextFormatter(logging.Formatter):
    """One line per record for humans. Every field is escaped (a request path is client input, decoded from
    `%0a`); only a traceback takes further lines, each escaped too and indented under its record."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S.%f')[:-3]} {escape(record.levelname):<7} "
        base += f"{escape(record.name)}: {escape(record.getMessage())}"
        extras = " ".join(f"{n}={escape(str(_field(record, n)))}" for n in FIELDS if _field(record, n) is not None)
        if extras:
            base += f" [{extras}]"
        if record.exc_info:
            # Split on "\n" only: other line breaks (\x85, \u2028, ...) are escaped like any control character.
            base += "".join(f"\n  {escape(line)}" for line in self.formatException(record.exc_info).split("\n"))
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
    # httpx logs every request at INFO, webhook deliveries' full URLs included; taskproc.webhooks logs failures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
