"""Text-format logs can't be forged: control and other non-printable characters in any field are escaped, so
one record is one line whatever a client puts in its request."""

from __future__ import annotations

import logging
import sys

from taskproc.logging import TextFormatter

from inprocess import InProcessFactory
from support import wait_for


async def test_percent_encoded_newline_in_the_path_is_one_escaped_line(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=0) as stack:
        assert stack.env["TASKPROC_LOG_FORMAT"] == "text"
        r = await stack.client.get("/x%0aforged%0d%1b[31mred%e2%80%aeevil%c2%85next")
        assert r.status_code == 404

        def request_lines() -> list[str]:
            return [line for line in stack.logs().splitlines() if "path=/x" in line]

        [line] = wait_for(request_lines, what="the access log line")
        assert "path=/x\\nforged\\r\\x1b[31mred\\u202eevil\\x85next" in line, line
        log = stack.logs()
        assert not any(
            text.startswith(("forged", "[31mred")) or ("evil" in text and "path=" not in text)
            for text in log.splitlines()
        ), log


def test_every_text_field_is_escaped() -> None:
    """Message, logger name, extra fields and the exception: nothing starts a line of its own except the
    traceback's own lines, which are indented under the record."""
    try:
        raise ValueError("bad\nINFO forged: line")
    except ValueError:
        record = logging.LogRecord("taskproc\nx", logging.ERROR, __file__, 1, "msg %s", ("a\rb",), sys.exc_info())
    record.__dict__["error"] = "e\u2028rr\\n"
    record.__dict__["type"] = "t\x00"
    out = TextFormatter().format(record)
    first, *rest = out.split("\n")
    assert "taskproc\\nx: msg a\\rb" in first
    assert "error=e\\u2028rr\\\\n" in first and "type=t\\x00" in first
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert "  INFO forged: line" in rest, rest
    assert all(c == "\n" or c.isprintable() for c in out)
