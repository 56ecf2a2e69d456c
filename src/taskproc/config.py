"""Settings: one pydantic-settings class, every field read from a `TASKPROC_` environment variable."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskproc.models import QUEUE_PATTERN


class Settings(BaseSettings):
    """Runtime configuration shared by the API, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="TASKPROC_", extra="ignore")

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/taskproc"),
        description="Postgres URL (postgresql:// or postgresql+psycopg://); the source of truth for task state.",
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL for the queue; its database index is the one KEDA must read.",
    )
    max_retries: int = Field(default=3, ge=0, le=20, description="Default retries after the first attempt.")
    retry_base_s: float = Field(default=1.0, gt=0, description="Base of the exponential retry backoff.")
    retry_max_s: float = Field(default=300.0, gt=0, description="Cap of the retry backoff.")
    task_timeout_s: float = Field(default=300.0, gt=0, description="Default per-attempt timeout of a task.")
    worker_concurrency: int = Field(default=16, ge=1, le=1000, description="Tasks run at once per worker.")
    worker_poll_s: float = Field(
        default=0.25,
        gt=0,
        description="Fallback queue poll interval; idle workers are woken at once by pub/sub.",
    )
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535, description="Worker /metrics port (0 = off).")
    worker_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated queues a worker takes from (`taskproc worker --queues`); empty: every queue.",
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated extra modules that register task types."
    )
    lease_s: float = Field(
        default=30.0, ge=1, description="Worker heartbeat TTL: a dead worker's task is re-run within this."
    )
    shutdown_grace_s: float = Field(
        default=25.0, ge=0, description="On SIGTERM, how long running tasks may finish before being requeued."
    )
    max_shutdown_requeues: int = Field(
        default=3,
        ge=0,
        description="A task handed back by worker shutdowns more than this many times spends an attempt on the "
        "next one, so a flapping scale-down cannot restart it forever.",
    )
    max_lost_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="A task whose attempts were lost to a dying worker this many times is failed for good, "
        "`quarantined` (a poison task), whatever retries it has left, so it cannot crash-loop the workers.",
    )
    reconcile_s: float = Field(
        default=15.0, gt=0, description="How often pending tasks missing from Redis are re-enqueued."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest accepted request body.")
    max_payload_bytes: int = Field(
        default=262_144,
        ge=64,
        description="Largest payload of one task (as compact JSON); a bigger one is refused with 413, also in a "
        "batch (whose body TASKPROC_MAX_BODY_BYTES bounds as a whole).",
    )
    max_result_bytes: int = Field(
        default=1_048_576,
        ge=64,
        description="Largest result a handler may return (as compact JSON); a bigger one fails the task without "
        "retries, the error naming both sizes.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; when set, /api/v1 requires one."
    )
    api_keys_file: Path | None = Field(default=None, description="File with one API key per line.")
    retention_days: float = Field(
        default=7.0, ge=0, description="Terminal tasks older than this are purged (0 = keep forever)."
    )
    retention_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="How often a worker purges expired tasks and drops results past their `result_ttl_s` (in "
        "batches of 1000).",
    )
    log_format: Literal["json", "text"] = Field(default="json", description="Log line format on stdout.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    log_file: Path | None = Field(default=None, description="Also append log lines to this file.")
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Postgres connections per process.")
    request_timeout_s: float = Field(
        default=4.5,
        gt=0,
        description="An API request whose answer has not started after this long gets 503 (a stream, once "
        "started, is not limited), so a hung Postgres or Redis never hangs clients.",
    )
    db_timeout_s: float = Field(
        default=3.0, gt=0, description="Connect and statement timeout, so an outage answers 503, not a hang."
    )

    api_maintenance: bool = Field(
        default=True,
        description="API processes also run the reconciler and promote due delayed tasks (one process at a time "
        "across API and workers), so queued work stays visible to KEDA while workers are scaled to zero.",
    )
    scheduler: bool = Field(
        default=True,
        description="API processes run the scheduler of cron schedules (one process at a time, under an advisory "
        "lock), so schedules fire while workers are scaled to zero.",
    )
    scheduler_tick_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the scheduler looks for due schedules."
    )
    stats_sample_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How often an API process (one at a time, under an advisory lock) records a sample for the "
        "dashboard's charts (GET /api/v1/stats/history); samples are kept for 24 hours.",
    )
    webhooks: bool = Field(
        default=True,
        description="API processes turn task events into webhook deliveries (one process at a time, under an "
        "advisory lock) and send the due ones.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook and callback_url targets on private, loopback, link-local and other non-public "
        "addresses (refused otherwise, against SSRF).",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Timeout of one webhook delivery attempt.")
    webhook_retry_base_s: float = Field(default=5.0, gt=0, description="Base of a failed delivery's retry backoff.")
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, description="Cap of a failed delivery's retry backoff.")
    webhook_max_age_s: float = Field(
        default=86_400.0, gt=0, description="A delivery is retried this long after its event, then marked failed."
    )
    webhook_concurrency: int = Field(default=16, ge=1, le=1000, description="Deliveries sent at once per API process.")
    webhook_tick_s: float = Field(
        default=1.0, gt=0, le=60, description="How often API processes look for new events and due deliveries."
    )
    webhook_callback_secret: SecretStr | None = Field(
        default=None,
        description="The `whsec_` secret that signs deliveries to a task's callback_url (unsigned when unset).",
    )
    pod_deletion_cost: bool = Field(
        default=False,
        description="Workers set their pod's controller.kubernetes.io/pod-deletion-cost annotation from their "
        "running tasks, so a scale-down removes idle pods first (needs RBAC to patch its own pod).",
    )
    pod_name: str | None = Field(default=None, description="This pod's name (downward API), for pod_deletion_cost.")
    pod_namespace: str | None = Field(
        default=None, description="This pod's namespace (downward API), for pod_deletion_cost."
    )
    serviceaccount_dir: Path = Field(
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount"),
        description="Where the service-account token and CA are mounted (pod_deletion_cost).",
    )

    @field_validator("task_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("worker_queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("worker_queues")
    @classmethod
    def _check_queues(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(QUEUE_PATTERN, name):
                raise ValueError(f"queue {name!r}: use 1 to 64 lower-case letters, digits, '_' and '-'")
        return sorted(set(value))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def all_api_keys(self) -> list[str]:
        """Keys from TASKPROC_API_KEYS and TASKPROC_API_KEYS_FILE together."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
        url = self.database_url.get_secret_value()
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def libpq_url(self) -> str:
        """The database URL without a SQLAlchemy driver suffix, as psycopg wants it."""
        return self.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


@lru_cache
def get_settings() -> Settings:
    return Settings()
