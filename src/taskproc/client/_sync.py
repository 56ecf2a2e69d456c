"""`TaskprocClient`: the blocking client (httpx.Client)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import tenacity
from httpx_sse import connect_sse
from pydantic import TypeAdapter

from taskproc.client import _base
from taskproc.client._base import TaskId
from taskproc.client.errors import (
    APIConnectionError,
    APIStatusError,
    transport_error,
)
from taskproc.client.stream import Reset, StreamEvent, parse
from taskproc.models import (
    TERMINAL,
    BulkCount,
    BulkPublic,
    LimitPublic,
    Overlap,
    Priority,
    QueuePublic,
    SchedulePublic,
    ScheduleTask,
    Stats,
    TaskBatchPublic,
    TaskCreate,
    TaskEventPublic,
    TaskList,
    TaskPublic,
    TaskStatus,
    TaskTypePublic,
    WebhookCreated,
    WebhookDeliveryPublic,
    WebhookPublic,
)

T = TypeVar("T")

_TASK = TypeAdapter(TaskPublic)
_TASKS = TypeAdapter(TaskBatchPublic)
_PAGE = TypeAdapter(TaskList)
_HISTORY = TypeAdapter(builtins.list[TaskEventPublic])
_STATS = TypeAdapter(Stats)
_TYPES = TypeAdapter(builtins.list[TaskTypePublic])
_SCHEDULE = TypeAdapter(SchedulePublic)
_QUEUE = TypeAdapter(QueuePublic)
_QUEUES = TypeAdapter(builtins.list[QueuePublic])
_SCHEDULES = TypeAdapter(builtins.list[SchedulePublic])
_WEBHOOK_CREATED = TypeAdapter(WebhookCreated)
_WEBHOOK = TypeAdapter(WebhookPublic)
_WEBHOOKS = TypeAdapter(builtins.list[WebhookPublic])
_DELIVERY = TypeAdapter(WebhookDeliveryPublic)
_DELIVERIES = TypeAdapter(builtins.list[WebhookDeliveryPublic])
_LIMIT = TypeAdapter(LimitPublic)
_LIMITS = TypeAdapter(builtins.list[LimitPublic])
_BULK = TypeAdapter(BulkPublic)
_BULKS = TypeAdapter(builtins.list[BulkPublic])
_BULK_COUNT = TypeAdapter(BulkCount)


class TaskprocClient:
    """The taskproc REST API from Python, blocking. Every method returns the API's own models.

    `base_url` defaults to $TASKPROC_API_URL, then http://127.0.0.1:8000; `api_key` to $TASKPROC_API_KEY.
    Calls that are safe to repeat are retried `retries` times on 503 and broken connections; the others only
    when the request never left (connection refused). Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = _base.DEFAULT_TIMEOUT_S,
        retries: int = _base.DEFAULT_RETRIES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = _base.resolve_base_url(base_url)
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.base_url + "/api/v1",
            headers=_base.client_headers(_base.resolve_api_key(api_key), headers),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- plumbing ----

    def _send(self, call: _base.Call) -> httpx.Response:
        try:
            for attempt in tenacity.Retrying(**_base.retry_policy(self.retries, call.idempotent)):
                with attempt:
                    response = self._http.request(
                        call.method, call.path, params=call.params, json=call.json, headers=call.headers
                    )
                    if response.status_code == 503:
                        _base.check(response)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.base_url) from exc
        return response

    def _call(self, call: _base.Call, adapter: TypeAdapter[T]) -> T:
        return _base.decode(self._send(call), adapter)

    # ---- tasks ----

    def submit(
        self,
        task_type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        delay_s: float | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        queue: str | None = None,
        concurrency_key: str | None = None,
        result_ttl_s: float | None = None,
    ) -> TaskPublic:
        """Submit one task. With an `idempotency_key`, a repeat returns the task created first (and is retried).

        `concurrency_key`: the key whose limit (`put_limit`) the task counts against; default: the key its task
        type derives from the payload, if it declares one. `result_ttl_s` drops its result that long after it
        finished.
        """
        body = _base.submit_body(
            task_type,
            payload,
            priority=priority,
            max_retries=max_retries,
            timeout_s=timeout_s,
            delay_s=delay_s,
            idempotency_key=idempotency_key,
            queue=queue,
            concurrency_key=concurrency_key,
            callback_url=callback_url,
            result_ttl_s=result_ttl_s,
        )
        return self._call(_base.Call("POST", "/tasks", idempotency_key is not None, json=body), _TASK)

    def submit_many(
        self, tasks: Iterable[TaskCreate | Mapping[str, Any]], *, concurrency_key: str | None = None
    ) -> builtins.list[TaskPublic]:
        """Submit up to 1000 tasks in one request, all or none; retried only if every item has a key.

        `concurrency_key` is given to every item that does not name its own.
        """
        items = _base.batch_items(tasks, concurrency_key)
        idempotent = bool(items) and all(item.get("idempotency_key") for item in items)
        call = _base.Call("POST", "/tasks/batch", idempotent, json={"tasks": items})
        return self._call(call, _TASKS).items

    def get(self, task_id: TaskId) -> TaskPublic:
        """One task."""
        return self._call(_base.Call("GET", _base.task_path(task_id), True), _TASK)

    def history(self, task_id: TaskId) -> builtins.list[TaskEventPublic]:
        """A task's state changes, oldest first."""
        return self._call(_base.Call("GET", _base.task_path(task_id, "/events"), True), _HISTORY)

    def page(
        self,
        *,
        status: TaskStatus | str | None = None,
        type: str | None = None,
        priority: Priority | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        schedule: str | None = None,
        queue: str | None = None,
    ) -> TaskList:
        """One page of tasks, newest first; pass its `next_cursor` as `cursor` for the next one."""
        params = {**_base.filters(status, type, priority, schedule, queue), "limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._call(_base.Call("GET", "/tasks", True, params=params), _PAGE)

    def list(
        self,
        *,
        status: TaskStatus | str | None = None,
        type: str | None = None,
        priority: Priority | str | None = None,
        page_size: int = 50,
        cursor: str | None = None,
        schedule: str | None = None,
        queue: str | None = None,
    ) -> Iterator[TaskPublic]:
        """Every matching task, newest first, fetching pages of `page_size` as the iteration reaches them."""
        while True:
            page = self.page(
                status=status,
                type=type,
                priority=priority,
                limit=page_size,
                cursor=cursor,
                schedule=schedule,
                queue=queue,
            )
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def set_priority(self, task_id: TaskId, priority: Priority | str) -> TaskPublic:
        """Change a pending task's priority (ConflictError once it has started)."""
        call = _base.Call("PATCH", _base.task_path(task_id), True, json={"priority": str(priority)})
        return self._call(call, _TASK)

    def cancel(self, task_id: TaskId) -> TaskPublic:
        """Cancel a task; a running one is still `running` in the answer and `canceled` about a second later."""
        return self._call(_base.Call("POST", _base.task_path(task_id, "/cancel"), False), _TASK)

    def retry(self, task_id: TaskId) -> TaskPublic:
        """Run a failed or canceled task again, with fresh attempts."""
        return self._call(_base.Call("POST", _base.task_path(task_id, "/retry"), False), _TASK)

    def delete(self, task_id: TaskId) -> None:
        """Delete a finished task and its history."""
        # Not repeated on 503: a delete that went through would then answer 404.
        _base.check(self._send(_base.Call("DELETE", _base.task_path(task_id), False)))

    # ---- queues ----

    def queues(self) -> builtins.list[QueuePublic]:
        """Every known queue, by name, with its counts and pause state."""
        return self._call(_base.Call("GET", "/queues", True), _QUEUES)

    def pause_queue(self, name: str) -> QueuePublic:
        """Pause a queue: nothing new starts there (running tasks finish); survives restarts and Redis loss."""
        return self._call(_base.Call("POST", _base.queue_path(name, "/pause"), True), _QUEUE)

    def resume_queue(self, name: str) -> QueuePublic:
        """Resume a paused queue."""
        return self._call(_base.Call("POST", _base.queue_path(name, "/resume"), True), _QUEUE)

    # ---- limits ----

    def put_limit(self, key: str, max_running: int | None = None, rate: _base.RateSpec | None = None) -> LimitPublic:
        """Set a concurrency key's limit: at most `max_running` of its tasks at once, at most `rate` started per
        period (a `Rate`, a mapping or a `(count, per_s)` pair); one of the two at least. Replaces the key's
        limit, a task type's declared default included."""
        call = _base.Call("PUT", _base.limit_path(key), True, json=_base.limit_body(max_running, rate))
        return self._call(call, _LIMIT)

    def get_limit(self, key: str) -> LimitPublic:
        """A key's limit, with its tasks running now and its rate tokens (NotFoundError if it has none)."""
        return self._call(_base.Call("GET", _base.limit_path(key), True), _LIMIT)

    def list_limits(self) -> builtins.list[LimitPublic]:
        """Every key that has a limit, by key."""
        return self._call(_base.Call("GET", "/limits", True), _LIMITS)

    def delete_limit(self, key: str) -> None:
        """Delete a key's limit: its tasks run unlimited (NotFoundError if it has none)."""
        # Not repeated on 503: a delete that went through would then answer 404.
        _base.check(self._send(_base.Call("DELETE", _base.limit_path(key), False)))

    # ---- schedules ----

    def create_schedule(
        self,
        name: str,
        *,
        cron: str,
        task: ScheduleTask | Mapping[str, Any],
        timezone: str | None = None,
        overlap: Overlap | str | None = None,
        catchup_s: float | None = None,
        enabled: bool | None = None,
    ) -> SchedulePublic:
        """Create a cron schedule (ConflictError if the name is taken)."""
        body = _base.schedule_body(
            task, name=name, cron=cron, timezone=timezone, overlap=overlap, catchup_s=catchup_s, enabled=enabled
        )
        _base.schedule_path(name)
        return self._call(_base.Call("POST", "/schedules", False, json=body), _SCHEDULE)

    def list_schedules(self) -> builtins.list[SchedulePublic]:
        """Every schedule, by name, with its next and last run."""
        return self._call(_base.Call("GET", "/schedules", True), _SCHEDULES)

    def get_schedule(self, name: str) -> SchedulePublic:
        """One schedule."""
        return self._call(_base.Call("GET", _base.schedule_path(name), True), _SCHEDULE)

    def update_schedule(
        self,
        name: str,
        *,
        cron: str | None = None,
        task: ScheduleTask | Mapping[str, Any] | None = None,
        timezone: str | None = None,
        overlap: Overlap | str | None = None,
        catchup_s: float | None = None,
        enabled: bool | None = None,
    ) -> SchedulePublic:
        """Change the fields given; `enabled=False` pauses the schedule, `enabled=True` resumes it."""
        body = _base.schedule_body(
            task, cron=cron, timezone=timezone, overlap=overlap, catchup_s=catchup_s, enabled=enabled
        )
        return self._call(_base.Call("PATCH", _base.schedule_path(name), True, json=body), _SCHEDULE)

    def delete_schedule(self, name: str) -> None:
        """Delete a schedule (the tasks it created stay)."""
        _base.check(self._send(_base.Call("DELETE", _base.schedule_path(name), False)))

    def trigger_schedule(self, name: str) -> TaskPublic:
        """Run a schedule now: one task at once; returns it."""
        return self._call(_base.Call("POST", _base.schedule_path(name, "/trigger"), False), _TASK)

    # ---- bulk actions ----

    def bulk(
        self,
        action: str,
        filter: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str | None = None,
        dry_run: bool = False,
    ) -> BulkPublic | BulkCount:
        """Apply `action` (`retry`, `cancel`, `delete`, `set_priority` with `priority`) to every task `filter`
        matches (the list's filters: status, type, priority, queue, schedule, created_before, created_after).
        With `dry_run`, the count of matching tasks now (a `BulkCount`); otherwise the operation, which runs in
        the background (follow it with `bulk_status`)."""
        call = _base.Call("POST", "/tasks/bulk", dry_run, json=_base.bulk_body(action, filter, priority, dry_run))
        if dry_run:
            return self._call(call, _BULK_COUNT)
        return self._call(call, _BULK)

    def bulk_status(self, bulk_id: TaskId) -> BulkPublic:
        """A bulk operation and its progress (`done` and `failed` of `total`, `status`)."""
        return self._call(_base.Call("GET", _base.bulk_path(bulk_id), True), _BULK)

    def list_bulk(self, *, limit: int | None = None) -> builtins.list[BulkPublic]:
        """Bulk operations, newest first (the audit trail: who asked for what, and when)."""
        params = {"limit": limit} if limit is not None else None
        return self._call(_base.Call("GET", "/bulk", True, params=params), _BULKS)

    # ---- webhooks ----

    def create_webhook(
        self,
        url: str,
        *,
        events: Iterable[str],
        filter: Mapping[str, Any] | None = None,
        secret: str | None = None,
    ) -> WebhookCreated:
        """Subscribe `url` to task events (`task.completed`, ...); the answer has the signing secret, once."""
        body = _base.webhook_body(url, events, filter, secret)
        return self._call(_base.Call("POST", "/webhooks", False, json=body), _WEBHOOK_CREATED)

    def list_webhooks(self) -> builtins.list[WebhookPublic]:
        """Every webhook, oldest first (without secrets)."""
        return self._call(_base.Call("GET", "/webhooks", True), _WEBHOOKS)

    def get_webhook(self, webhook_id: TaskId) -> WebhookPublic:
        """One webhook."""
        return self._call(_base.Call("GET", _base.webhook_path(webhook_id), True), _WEBHOOK)

    def delete_webhook(self, webhook_id: TaskId) -> None:
        """Delete a webhook and its deliveries."""
        _base.check(self._send(_base.Call("DELETE", _base.webhook_path(webhook_id), False)))

    def list_webhook_deliveries(
        self, webhook_id: TaskId, *, limit: int | None = None
    ) -> builtins.list[WebhookDeliveryPublic]:
        """A webhook's deliveries, newest first, with their attempts' status codes and latencies."""
        params = {"limit": limit} if limit is not None else None
        call = _base.Call("GET", _base.webhook_path(webhook_id, "/deliveries"), True, params=params)
        return self._call(call, _DELIVERIES)

    def list_task_deliveries(self, task_id: TaskId) -> builtins.list[WebhookDeliveryPublic]:
        """The deliveries about one task, its callback_url's included, newest first."""
        params = {"task_id": str(task_id)}
        return self._call(_base.Call("GET", "/webhook-deliveries", True, params=params), _DELIVERIES)

    def redeliver_webhook_delivery(
        self, delivery_id: TaskId, *, webhook_id: TaskId | None = None
    ) -> WebhookDeliveryPublic:
        """Send a delivery again now (same webhook-id and body, a new day of retries)."""
        path = _base.redeliver_path(delivery_id, webhook_id)
        return self._call(_base.Call("POST", path, True), _DELIVERY)

    # ---- service ----

    def stats(self, *, queue: str | None = None) -> Stats:
        """Counts by status, the queue by priority, retries and live workers; with `queue`, that queue's."""
        params = {"queue": queue} if queue is not None else None
        return self._call(_base.Call("GET", "/stats", True, params=params), _STATS)

    def types(self) -> builtins.list[TaskTypePublic]:
        """The task types the deployment runs, with each payload's JSON schema."""
        return self._call(_base.Call("GET", "/task-types", True), _TYPES)

    # ---- following tasks ----

    def events(
        self,
        *,
        task_id: TaskId | None = None,
        last_event_id: int | None = None,
        reconnect: bool = True,
        read_timeout: float = _base.STREAM_READ_TIMEOUT_S,
    ) -> Generator[StreamEvent, None, None]:
        """Task state changes as they happen (GET /api/v1/events), as `TaskChange`, `Ready` and `Reset`.

        With `last_event_id`, the events after it are replayed first. With `reconnect` (the default) a broken
        or ended stream is resumed from the last id received, after the server's suggested delay, so no event
        is missed or repeated; without it the iteration ends with the stream, or raises APIConnectionError.
        """
        params = {"task_id": str(task_id)} if task_id is not None else {}
        failures = 0
        hint_ms: int | None = None
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
                with connect_sse(
                    self._http, "GET", "/events", params=params, headers=headers, timeout=timeout
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _base.check(source.response)
                    failures = 0
                    for sse in source.iter_sse():
                        hint_ms = sse.retry if sse.retry is not None else hint_ms
                        event = parse(sse)
                        if event is None:
                            continue
                        if not isinstance(event, Reset):
                            last_event_id = event.id
                        yield event
            except (httpx.HTTPError, APIStatusError) as exc:  # SSEError is an httpx.HTTPError
                _base.stream_failure(exc, reconnect, self.base_url)
                failures += 1
            if not reconnect:
                return
            time.sleep(_base.reconnect_delay(hint_ms, failures))

    def wait(
        self,
        task_id: TaskId,
        timeout: float | None = None,
        *,
        on_update: Callable[[TaskPublic], None] | None = None,
        poll_interval: float = 1.0,
    ) -> TaskPublic:
        """Block until the task has ended (completed, failed or canceled) and return it.

        Follows the task's events; while the stream is unavailable it looks every `poll_interval` seconds.
        Raises WaitTimeoutError (a TimeoutError) after `timeout` seconds. `on_update` sees every state met.
        """
        deadline = _base.Deadline(timeout)
        notify = on_update or (lambda _: None)
        task = self.get(task_id)
        notify(task)
        streaming = True
        while task.status not in TERMINAL:
            deadline.check(task)
            if streaming:
                try:
                    read_timeout = min(20.0, deadline.remaining()) + 0.5
                    # Subscribed once `ready` arrives: reading the task then, nothing can slip in between.
                    for event in self.events(task_id=task.id, reconnect=False, read_timeout=read_timeout):
                        update = _base.changed(task, event)
                        task = update if update is not None else self.get(task_id)
                        notify(task)
                        if task.status in TERMINAL:
                            return task
                        deadline.check(task)
                except APIConnectionError:
                    pass
                except APIStatusError as exc:
                    streaming = _base.stream_usable(exc)
            # The stream ended, broke or timed out: look, then listen again.
            time.sleep(min(0.5 if streaming else poll_interval, deadline.remaining()))
            task = self.get(task_id)
            notify(task)
        return task
