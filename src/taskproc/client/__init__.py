"""A typed Python SDK for the taskproc API, blocking (`TaskprocClient`) and asyncio (`AsyncTaskprocClient`).

    from taskproc.client import TaskprocClient

    with TaskprocClient("http://127.0.0.1:8000", api_key="...") as client:
        task = client.submit("add", {"a": 1, "b": 2})
        print(client.wait(task.id, timeout=30).result)

Answers are the API's own models (`TaskPublic`, `Stats`, ...); errors are `TaskprocClientError` subclasses.
The client imports the models only, never the server (FastAPI, the store, the worker). See docs/client.md.
"""

from taskproc.client._async import AsyncTaskprocClient
from taskproc.client._sync import TaskprocClient
from taskproc.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    ConflictError,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    ServerError,
    TaskprocClientError,
    UnauthorizedError,
    UnavailableError,
    WaitTimeoutError,
)
from taskproc.client.stream import Ready, Reset, StreamEvent, TaskChange
from taskproc.models import (
    BulkCount,
    BulkPublic,
    LimitOrigin,
    LimitPublic,
    Overlap,
    Priority,
    QueuePublic,
    Rate,
    ScheduleFirePublic,
    SchedulePublic,
    ScheduleTask,
    Stats,
    TaskCreate,
    TaskEventPublic,
    TaskList,
    TaskPublic,
    TaskStatus,
    TaskTypePublic,
    TaskWaiting,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncTaskprocClient",
    "BadRequestError",
    "BulkCount",
    "BulkPublic",
    "ConflictError",
    "InvalidInputError",
    "InvalidResponseError",
    "LimitOrigin",
    "LimitPublic",
    "NotFoundError",
    "Overlap",
    "Priority",
    "QueuePublic",
    "Rate",
    "Ready",
    "Reset",
    "ScheduleFirePublic",
    "SchedulePublic",
    "ScheduleTask",
    "ServerError",
    "Stats",
    "StreamEvent",
    "TaskChange",
    "TaskCreate",
    "TaskEventPublic",
    "TaskList",
    "TaskPublic",
    "TaskStatus",
    "TaskTypePublic",
    "TaskWaiting",
    "TaskprocClient",
    "TaskprocClientError",
    "UnauthorizedError",
    "UnavailableError",
    "WaitTimeoutError",
]
