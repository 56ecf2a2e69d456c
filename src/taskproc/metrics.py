"""Prometheus metrics shared by the API and the workers.

Labels are bounded by design: task types come from the registry (unknown names are folded into "other"),
priorities and statuses are enums. No task id, payload or key ever becomes a label.

When PROMETHEUS_MULTIPROC_DIR is set (the API sets it before uvicorn forks several workers), the metrics are
written to files in that directory and aggregated at scrape time, so N uvicorn workers give one correct total.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from taskproc.tasks.registry import registry as task_registry

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

TASKS_SUBMITTED = Counter("taskproc_tasks_submitted_total", "Tasks accepted by the API.", ["type", "priority"])
TASKS_FINISHED = Counter("taskproc_tasks_finished_total", "Tasks that reached a terminal state.", ["type", "status"])
TASK_ATTEMPTS = Counter(
    "taskproc_task_attempts_total",
    "Attempts that ended, by outcome (success, error, timeout, aborted, lost, result_too_large).",
    ["type", "outcome"],
)
TASKS_QUARANTINED = Counter(
    "taskproc_tasks_quarantined_total",
    "Tasks failed for good because their attempts killed their worker TASKPROC_MAX_LOST_ATTEMPTS times (also "
    "counted as failed in taskproc_tasks_finished_total).",
    ["type"],
)
TASKS_RETRIED = Counter("taskproc_tasks_retried_total", "Retries scheduled after a failed attempt.", ["type"])
TASK_DURATION = Histogram(
    "taskproc_task_duration_seconds", "Run time of one attempt.", ["type"], buckets=_DURATION_BUCKETS
)
TASK_QUEUE_WAIT = Histogram(
    "taskproc_task_queue_wait_seconds",
    "Time from ready to started.",
    ["priority"],
    buckets=_DURATION_BUCKETS,
)
TASKS_RUNNING = Gauge("taskproc_tasks_running", "Tasks running in this worker process.", multiprocess_mode="livesum")
QUEUE_DEPTH = Gauge(
    "taskproc_queue_depth",
    "Tasks ready to run and not started, by queue and priority (the queue's Redis ready set).",
    ["queue", "priority"],
    multiprocess_mode="mostrecent",
)
QUEUE_DEFERRED = Gauge(
    "taskproc_queue_deferred",
    "Tasks waiting for a delay or a retry backoff, by queue.",
    ["queue"],
    multiprocess_mode="mostrecent",
)
QUEUE_RUNNING = Gauge(
    "taskproc_queue_running", "Tasks running, by queue (Postgres counters).", ["queue"], multiprocess_mode="mostrecent"
)
QUEUE_PAUSED = Gauge(
    "taskproc_queue_paused", "1 while the queue is paused, else 0.", ["queue"], multiprocess_mode="mostrecent"
)
LIMIT_HELD = Gauge(
    "taskproc_limit_held_tasks",
    "Due tasks held back because their concurrency key is at its limit, over all keys (Redis's held sets).",
    multiprocess_mode="mostrecent",
)
LIMIT_KEYS_SATURATED = Gauge(
    "taskproc_limit_keys_saturated",
    "Concurrency keys that have due tasks held back by their limit.",
    multiprocess_mode="mostrecent",
)
LIMIT_HOLDS = Counter(
    "taskproc_limit_holds_total",
    "Jobs a worker held back for their concurrency key's limit instead of taking them.",
)
DEPENDENCY_UP = Gauge(
    "taskproc_dependency_up",
    "1 while this API process reaches the dependency (postgres, redis) at its last check, else 0.",
    ["dependency"],
    multiprocess_mode="mostrecent",
)
WORKERS = Gauge("taskproc_workers", "Live worker processes, as the API sees them.", multiprocess_mode="mostrecent")
TASKS_HANDED_BACK = Counter(
    "taskproc_tasks_handed_back_total",
    "Jobs a worker gave back without spending an attempt because it is older than the task (version skew): "
    "reason unknown_type or payload.",
    ["type", "reason"],
)
TASKS_WAITING_NO_WORKER = Gauge(
    "taskproc_tasks_waiting_no_worker",
    "Waiting tasks whose type no live worker serves, as the API sees them.",
    multiprocess_mode="mostrecent",
)
API_OPERATIONS = Counter(
    "taskproc_api_operations_total",
    "Calls of each API route (operation = the route's name, e.g. create_task) by outcome (ok, invalid, "
    "unauthorized, not_found, conflict, unavailable, error, abandoned).",
    ["operation", "outcome"],
)

SCHEDULE_FIRES = Counter(
    "taskproc_schedule_fires_total",
    "Fire times of cron schedules by outcome: fired (a task was created; triggers included), skipped (overlap: "
    "skip), missed (passed while no scheduler ran, beyond catchup_s), invalid (the task body was refused). The "
    "schedule label is the schedule's name: schedules are few and made by operators.",
    ["schedule", "outcome"],
)


def type_label(name: str) -> str:
    """The type as a label value, bounded to the registered types."""
    return name if task_registry.get(name) is not None else "other"


def render_latest() -> tuple[bytes, str]:
    """The exposition text for this process, aggregated across processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


# ---- webhooks ------------------------------------------------------------------------------------------------------

WEBHOOK_DELIVERIES = Counter(
    "taskproc_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), retry (failed, another attempt is scheduled), failed "
    "(failed, and the delivery expired: no more attempts), refused (the target resolved to a private address).",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "taskproc_webhook_delivery_seconds",
    "Time from sending a webhook delivery to the receiver's answer (or the error).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
