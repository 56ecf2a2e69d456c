"""Last-Event-ID and last_event_id values the stream can't resume from are 422 JSON, never a 500 (in process);
good ones open the stream (a real API process: httpx.ASGITransport only returns once a response has ended)."""

from __future__ import annotations

import httpx
import pytest

from inprocess import InProcess
from support import Stack

BIGINT_MAX = 2**63 - 1


async def _refused(api: InProcess, **kwargs: object) -> tuple[int, str, object]:
    """Status, content type and JSON body of a request the API answers without streaming."""
    r = await api.client.get("/api/v1/events", **kwargs)  # type: ignore[arg-type]
    return r.status_code, r.headers["content-type"], r.json()


def _status(stack: Stack, **kwargs: object) -> tuple[int, str, object]:
    """Status, content type and JSON body (None for a stream, which is closed unread)."""
    with (
        httpx.Client(base_url=stack.url, timeout=10.0) as client,
        client.stream("GET", "/api/v1/events", **kwargs) as r,  # type: ignore[arg-type]
    ):
        if r.status_code == 200:
            return 200, r.headers["content-type"], None
        r.read()
        return r.status_code, r.headers["content-type"], r.json()


@pytest.mark.parametrize(
    "value",
    # b"\xb2" is "²" to the server (header bytes are latin-1): str.isdigit() says yes, int() says no.
    [b"\xb2", b"1\xb9", b"9" * 5000, str(BIGINT_MAX + 1).encode(), b"-1", b"1.5", b"12 34", b"abc"],
    ids=["superscript-two", "superscript-one", "5000-digits", "over-bigint", "negative", "decimal", "space", "word"],
)
async def test_bad_last_event_id_header_is_422(inprocess: InProcess, value: bytes) -> None:
    status, ctype, body = await _refused(inprocess, headers={"Last-Event-ID": value})
    assert (status, ctype) == (422, "application/json"), body
    assert isinstance(body, dict)
    assert body["detail"][0]["loc"] == ["header", "Last-Event-ID"]


@pytest.mark.parametrize("value", ["9" * 5000, str(BIGINT_MAX + 1)], ids=["5000-digits", "over-bigint"])
async def test_bad_last_event_id_query_is_422(inprocess: InProcess, value: str) -> None:
    status, ctype, body = await _refused(inprocess, params={"last_event_id": value})
    assert (status, ctype) == (422, "application/json"), body


@pytest.mark.parametrize("value", ["0", "7", "9" * 18, ""], ids=["zero", "seven", "18-digits", "empty"])
def test_good_last_event_id_header_streams(stack: Stack, value: str) -> None:
    """18 digits are a position ahead of the newest event (the stream says `reset`); an empty header, as some
    clients send before they have an id, counts as absent."""
    status, ctype, _ = _status(stack, headers={"Last-Event-ID": value})
    assert status == 200
    assert ctype.startswith("text/event-stream")
