"""The SDK's pure parts: which status becomes which error, what is retried, the stream's messages."""

from __future__ import annotations

import uuid

import httpx
import pytest
from httpx_sse import ServerSentEvent

from taskproc.client import (
    APIStatusError,
    BadRequestError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    Ready,
    Reset,
    ServerError,
    TaskChange,
    UnauthorizedError,
    UnavailableError,
)
from taskproc.client._base import reconnect_delay, retryable, task_path
from taskproc.client.errors import status_error


def answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("GET", "http://api/api/v1/tasks"))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequestError),
        (401, UnauthorizedError),
        (403, UnauthorizedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, BadRequestError),
        (415, BadRequestError),
        (422, InvalidInputError),
        (503, UnavailableError),
        (500, ServerError),
        (502, ServerError),
        (418, APIStatusError),
    ],
)
def test_status_maps_to_its_error(status: int, kind: type[APIStatusError]) -> None:
    error = status_error(answer(status, {"detail": "why"}))
    assert type(error) is kind and error.status_code == status and error.detail == "why"


def test_validation_errors_read_one_per_line() -> None:
    detail = [{"loc": ["body", "payload", "b"], "msg": "Field required", "type": "missing"}]
    error = status_error(answer(422, {"detail": detail}))
    assert error.detail == detail
    assert str(error) == "422 Unprocessable Entity: invalid input:\n  payload.b: Field required"


def test_a_body_that_is_not_json_is_the_detail_as_text() -> None:
    response = httpx.Response(502, text="<html>bad gateway</html>", request=httpx.Request("GET", "http://x"))
    error = status_error(response)
    assert isinstance(error, ServerError) and error.detail == "<html>bad gateway</html>"


def test_what_is_retried() -> None:
    request = httpx.Request("POST", "http://api/api/v1/tasks")
    refused = httpx.ConnectError("refused", request=request)
    broken = httpx.ReadError("reset by peer", request=request)
    unavailable = status_error(answer(503, {"detail": "database unavailable"}))
    conflict = status_error(answer(409, {"detail": "no"}))
    assert retryable(refused, idempotent=False), "nothing was sent"
    assert not retryable(broken, idempotent=False) and retryable(broken, idempotent=True)
    assert not retryable(unavailable, idempotent=False) and retryable(unavailable, idempotent=True)
    assert not retryable(conflict, idempotent=True)


def test_reconnect_delay_follows_the_hint_and_grows_on_failures() -> None:
    assert reconnect_delay(None, 0) == 2.0
    assert reconnect_delay(500, 0) == reconnect_delay(500, 1) == 0.5
    assert reconnect_delay(500, 3) == 2.0
    assert reconnect_delay(2000, 10) == 30.0


def test_task_path_takes_uuids_only() -> None:
    task_id = uuid.uuid4()
    assert task_path(task_id) == task_path(str(task_id).upper()) == f"/tasks/{task_id}"
    with pytest.raises(ValueError, match="UUID"):
        task_path("../stats")


def test_stream_messages() -> None:
    from taskproc.client.stream import parse

    data = (
        '{"id":7,"task_id":"5b1ae9a0-4f8e-4c8e-9a51-1b0c1f1f0c11","type":"add","priority":"high",'
        '"status":"running","attempt":1,"at":"2026-01-02T03:04:05.000006Z","detail":null,'
        '"task_status":"completed","task_attempts":1}'
    )
    change = parse(ServerSentEvent(event="task", data=data, id="7"))
    assert isinstance(change, TaskChange) and change.id == 7 and change.task_status == "completed"
    assert change.model_dump(mode="json", exclude={"kind"})["at"] == "2026-01-02T03:04:05.000006Z"
    assert parse(ServerSentEvent(event="ready", data='{"last_event_id":9}', id="9")) == Ready(id=9)
    assert parse(ServerSentEvent(event="reset", data='{"reason":"too many"}')) == Reset(reason="too many")
    assert parse(ServerSentEvent(event="future", data="{}")) is None, "kinds a newer server adds are skipped"
