"""What the sync and async clients share: configuration, request shapes, decoding, the retry policy."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import tenacity
from httpx_sse import SSEError
from pydantic import TypeAdapter, ValidationError

from taskproc import __version__
from taskproc.client.errors import (
    APIStatusError,
    InvalidResponseError,
    UnavailableError,
    WaitTimeoutError,
    status_error,
    transport_error,
)
from taskproc.client.stream import StreamEvent, TaskChange
from taskproc.models import (
    MAX_CONCURRENCY_KEY,
    QUEUE_PATTERN,
    SCHEDULE_NAME,
    TERMINAL,
    Overlap,
    Priority,
    Rate,
    ScheduleTask,
    TaskCreate,
    TaskPublic,
    TaskStatus,
)

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_RETRIES = 2
# The stream sends a comment every 15 s when idle: a read that waits much longer means a dead connection.
STREAM_READ_TIMEOUT_S = 40.0
RETRY_AFTER_MAX_S = 10.0

TaskId = uuid.UUID | str
SCHEDULE_NAME_RE = re.compile(SCHEDULE_NAME)
QUEUE_NAME_RE = re.compile(QUEUE_PATTERN)


@dataclass(frozen=True, slots=True)
class Call:
    """One API request; `idempotent` says whether repeating it after an unknown outcome is harmless."""

    method: str
    path: str
    idempotent: bool
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def resolve_base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("TASKPROC_API_URL") or DEFAULT_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else os.environ.get("TASKPROC_API_KEY") or None


def client_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": f"taskproc-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def task_path(task_id: TaskId, suffix: str = "") -> str:
    # A UUID in the path, never arbitrary text: a malformed id fails here, not as a request to another route.
    return f"/tasks/{uuid.UUID(str(task_id))}{suffix}"


def filters(
    status: TaskStatus | str | None,
    type: str | None,
    priority: Priority | str | None,
    schedule: str | None = None,
    queue: str | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if schedule is not None:
        params["schedule"] = schedule
    if queue is not None:
        params["queue"] = queue
    if status is not None:
        params["status"] = str(status)
    if type is not None:
        params["type"] = type
    if priority is not None:
        params["priority"] = str(priority)
    return params


def schedule_path(name: str, suffix: str = "") -> str:
    # Checked here like a task id: a name with a "/" or ".." must not reach another route.
    if not SCHEDULE_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a schedule name (1 to 64 of a-z, 0-9, '_', '-')")
    return f"/schedules/{name}{suffix}"


def webhook_path(webhook_id: TaskId, suffix: str = "") -> str:
    return f"/webhooks/{uuid.UUID(str(webhook_id))}{suffix}"


def webhook_body(
    url: str, events: Iterable[str], filter: Mapping[str, Any] | None, secret: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "events": [str(e) for e in events]}
    if filter is not None:
        body["filter"] = dict(filter)
    if secret is not None:
        body["secret"] = secret
    return body


def bulk_body(action: str, filter: Mapping[str, Any] | None, priority: str | None, dry_run: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"action": str(action), "filter": {k: v for k, v in (filter or {}).items() if v is not None}}
    if priority is not None:
        body["priority"] = str(priority)
    if dry_run:
        body["dry_run"] = True
    return body


def bulk_path(bulk_id: TaskId) -> str:
    return f"/bulk/{uuid.UUID(str(bulk_id))}"


def redeliver_path(delivery_id: TaskId, webhook_id: TaskId | None) -> str:
    delivery = uuid.UUID(str(delivery_id))
    if webhook_id is None:
        return f"/webhook-deliveries/{delivery}/redeliver"
    return webhook_path(webhook_id, f"/deliveries/{delivery}/redeliver")


def queue_path(name: str, suffix: str = "") -> str:
    # Checked like a schedule name: a name with a "/" or ".." must not reach another route.
    if not QUEUE_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a queue name (1 to 64 of a-z, 0-9, '_', '-')")
    return f"/queues/{name}{suffix}"


def limit_path(key: str) -> str:
    """A concurrency key in the path: any text of 1 to 200 characters, so every character but letters, digits and
    `_-~` is escaped, dots too, so that a key like `..` or `a/../b` stays one key and never becomes a path step."""
    if not 1 <= len(key) <= MAX_CONCURRENCY_KEY:
        raise ValueError(f"a concurrency key has 1 to {MAX_CONCURRENCY_KEY} characters, not {len(key)}")
    return "/limits/" + quote(key, safe="").replace(".", "%2E")


RateSpec = Rate | Mapping[str, Any] | tuple[int, float]


def limit_body(max_running: int | None, rate: RateSpec | None) -> dict[str, Any]:
    """PUT /limits/{key}'s body; `rate` as a Rate, a mapping or a `(count, per_s)` pair."""
    if rate is None:
        rate_json = None
    elif isinstance(rate, Rate):
        rate_json = rate.model_dump(mode="json")
    elif isinstance(rate, tuple):
        count, per_s = rate
        rate_json = {"count": count, "per_s": per_s}
    else:
        rate_json = dict(rate)
    return {"max_running": max_running, "rate": rate_json}


def schedule_body(
    task: ScheduleTask | Mapping[str, Any] | None,
    **fields: Any,
) -> dict[str, Any]:
    """A schedule's JSON body: the fields given (None: left out), `task` as a mapping."""
    body = {k: (str(v) if isinstance(v, Overlap) else v) for k, v in fields.items() if v is not None}
    if task is not None:
        body["task"] = task.model_dump(mode="json", exclude_none=True) if isinstance(task, ScheduleTask) else dict(task)
    return body


def submit_body(
    task_type: str,
    payload: Mapping[str, Any] | None,
    *,
    priority: Priority | str | None,
    max_retries: int | None,
    timeout_s: float | None,
    delay_s: float | None,
    idempotency_key: str | None,
    queue: str | None = None,
    concurrency_key: str | None = None,
    callback_url: str | None = None,
    result_ttl_s: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": task_type, "payload": dict(payload or {})}
    optional = {
        "queue": queue,
        "concurrency_key": concurrency_key,
        "priority": None if priority is None else str(priority),
        "max_retries": max_retries,
        "timeout_s": timeout_s,
        "delay_s": delay_s,
        "idempotency_key": idempotency_key,
        "callback_url": callback_url,
        "result_ttl_s": result_ttl_s,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def batch_items(
    tasks: Iterable[TaskCreate | Mapping[str, Any]], concurrency_key: str | None = None
) -> list[dict[str, Any]]:
    """The batch's items as JSON; `concurrency_key` goes to every item that does not name one."""
    items = [t.model_dump(mode="json", exclude_unset=True) if isinstance(t, TaskCreate) else dict(t) for t in tasks]
    if concurrency_key is not None:
        for item in items:
            if item.get("concurrency_key") is None:
                item["concurrency_key"] = concurrency_key
    return items


def decode(response: httpx.Response, adapter: TypeAdapter[T]) -> T:
    """The answer as the API's model, or the error it stands for."""
    check(response)
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:
        raise InvalidResponseError(
            f"the server at {response.url.scheme}://{response.url.netloc.decode()} did not answer as the "
            f"taskproc API does ({exc.error_count()} error(s), first: {exc.errors()[0]['msg']}); is the base URL "
            "right?"
        ) from None


def check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise status_error(response)


def retryable(exc: BaseException, idempotent: bool) -> bool:
    """Connection failures before anything was sent are always safe to repeat; the rest only if idempotent."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    return idempotent and isinstance(exc, UnavailableError | httpx.TransportError)


def _wait(state: tenacity.RetryCallState) -> float:
    backoff = tenacity.wait_random_exponential(multiplier=0.25, max=4.0)(state)
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, APIStatusError):
        try:
            return min(RETRY_AFTER_MAX_S, max(backoff, float(exc.response.headers.get("Retry-After", 0))))
        except ValueError:
            pass
    return backoff


def retry_policy(retries: int, idempotent: bool) -> dict[str, Any]:
    """tenacity's arguments for one call (Retrying or AsyncRetrying); the last failure is re-raised as is."""
    return {
        "retry": tenacity.retry_if_exception(lambda exc: retryable(exc, idempotent)),
        "stop": tenacity.stop_after_attempt(retries + 1),
        "wait": _wait,
        "reraise": True,
    }


def reconnect_delay(hint_ms: int | None, failures: int) -> float:
    """How long an event stream waits before it reconnects: the server's `retry:` hint, growing on failures."""
    base = (hint_ms if hint_ms is not None else 2000) / 1000
    return float(min(30.0, base * 2 ** max(0, failures - 1)))


def stream_failure(exc: SSEError | httpx.HTTPError | APIStatusError, reconnect: bool, base_url: str) -> None:
    """Raise what ends an event stream's iteration; return when the broken stream is to be resumed."""
    # SSEError is an httpx.TransportError, but a reconnect would not cure it: the server is not a taskproc API.
    if isinstance(exc, SSEError):
        raise InvalidResponseError(f"the server at {base_url} did not answer with an event stream") from exc
    if isinstance(exc, httpx.HTTPError):
        if not reconnect:
            raise transport_error(exc, base_url) from exc
        return
    if not reconnect or exc.status_code != 503:
        raise exc


@dataclass
class Deadline:
    """The time limit of a `wait`; without a timeout, `remaining` is an hour (it bounds stream reads)."""

    timeout: float | None
    at: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.at = None if self.timeout is None else time.monotonic() + self.timeout

    def remaining(self) -> float:
        return 3600.0 if self.at is None else max(0.0, self.at - time.monotonic())

    def check(self, task: TaskPublic) -> None:
        if self.remaining() <= 0:
            raise WaitTimeoutError(task, self.timeout or 0.0)


def changed(task: TaskPublic, event: StreamEvent) -> TaskPublic | None:
    """`task` as a change event leaves it, or None when the task must be read again.

    A terminal change is read again for its result; `ready` and `reset` say nothing of the task's state.
    """
    if isinstance(event, TaskChange) and event.task_status not in TERMINAL:
        return task.model_copy(update={"status": event.task_status, "attempts": event.task_attempts})
    return None


def stream_usable(exc: APIStatusError) -> bool:
    """Whether a wait listens again after the stream was refused with `exc` (it looks at the task meanwhile)."""
    # A proxy that does not pass the stream (404, 405, 502...): look instead of listening.
    if exc.status_code in (401, 403):
        raise exc
    return exc.status_code == 503
