"""Client commands of `taskproc`: submit, get, list, cancel, retry, delete, stats, watch, schedules, queues,
limits, webhooks and bulk, over the REST API.

A thin layer over the SDK (`taskproc.client`): they talk to a running API (`--api-url`, env TASKPROC_API_URL),
optionally with a key (`--api-key`, env TASKPROC_API_KEY), and print for people with rich, or JSON for scripts
with `--json` (the API's own JSON: the SDK's models dumped as they came).

Exit codes: 0 success (with `--wait`: the task completed), 1 the task failed or was canceled, 2 bad usage,
3 the API answered with an error, 4 the API could not be reached, 5 `--wait-timeout` expired.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from taskproc.client import (
    APIConnectionError,
    APIStatusError,
    BulkCount,
    BulkPublic,
    LimitPublic,
    Overlap,
    QueuePublic,
    Reset,
    SchedulePublic,
    Stats,
    TaskChange,
    TaskEventPublic,
    TaskprocClient,
    TaskprocClientError,
    TaskPublic,
    TaskTypePublic,
    TaskWaiting,
    WaitTimeoutError,
)
from taskproc.models import MAX_CONCURRENCY_KEY, QUEUE_PATTERN, TERMINAL, Priority, TaskStatus

EXIT_OK = 0
EXIT_TASK = 1
EXIT_API = 3
EXIT_CONNECT = 4
EXIT_TIMEOUT = 5

STATUS_STYLE = {
    "pending": "grey62",
    "running": "bold blue",
    "retrying": "dark_orange",
    "completed": "green",
    "failed": "bold red",
    "canceled": "magenta",
}
PRIORITY_STYLE = {"high": "red", "normal": "blue", "low": "grey62"}
STATUSES = ("pending", "running", "retrying", "completed", "failed", "canceled")


PriorityChoice = Priority
StatusChoice = TaskStatus
OverlapChoice = Overlap


ApiUrl = Annotated[
    str,
    typer.Option("--api-url", envvar="TASKPROC_API_URL", help="Base URL of the taskproc API.", rich_help_panel="API"),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TASKPROC_API_KEY",
        help="API key, sent as 'Authorization: Bearer <key>'.",
        show_default=False,
        rich_help_panel="API",
    ),
]


def _task_id(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a task id (a UUID)") from None


def _limit_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_CONCURRENCY_KEY:
        raise typer.BadParameter(f"a concurrency key has 1 to {MAX_CONCURRENCY_KEY} characters, not {len(value)}")
    return value


def _optional_limit_key(value: str | None) -> str | None:
    return None if value is None else _limit_key(value)


TaskIdArg = Annotated[str, typer.Argument(metavar="ID", help="Task id (UUID).", callback=_task_id)]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]
DEFAULT_URL = "http://127.0.0.1:8000"

# Piped output isn't squeezed into 80 columns: tables stay one row per task for grep and friends.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# ---- the SDK, with errors as exit codes -----------------------------------------------------------------------


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def cli_error(exc: TaskprocClientError) -> CliError:
    """The message and exit code for an SDK error."""
    if isinstance(exc, APIStatusError):
        hint = " (pass --api-key or set TASKPROC_API_KEY)" if exc.status_code == 401 else ""
        return CliError(f"{exc}{hint}", EXIT_API)
    if isinstance(exc, APIConnectionError):
        return CliError(str(exc), EXIT_CONNECT)
    return CliError(str(exc), EXIT_API)


def make_client(api_url: str, api_key: str | None) -> TaskprocClient:
    try:
        # The key as given: an empty --api-key means none, not "fall back to the environment".
        return TaskprocClient(api_url, api_key=api_key or "", headers={"User-Agent": "taskproc-cli"})
    except (httpx.InvalidURL, ValueError) as exc:
        raise CliError(f"invalid --api-url {api_url!r}: {exc}", 2) from None


@contextmanager
def client_for(api_url: str, api_key: str | None) -> Iterator[TaskprocClient]:
    """A client whose errors end the command with a clean message and the matching exit code."""
    client: TaskprocClient | None = None
    try:
        client = make_client(api_url, api_key)
        yield client
    except (CliError, TaskprocClientError) as exc:
        failure = exc if isinstance(exc, CliError) else cli_error(exc)
        err.print(f"[red]error:[/red] {escape(str(failure))}")
        raise typer.Exit(failure.code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if client is not None:
            client.close()


# ---- output helpers -----------------------------------------------------------------------------------------


def emit_json(value: Any, *, compact: bool = False) -> None:
    text = json.dumps(value, separators=(",", ":")) if compact else json.dumps(value, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def dump(value: BaseModel | Sequence[BaseModel]) -> Any:
    """A model (or a list of them) as the API's JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return [item.model_dump(mode="json") for item in value]


def fmt_time(at: datetime | None) -> str:
    if at is None:
        return ""
    local = at.astimezone()
    today = datetime.now(UTC).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs} s"
    return f"{minutes // 60} h {minutes % 60} m"


def task_duration(task: TaskPublic) -> float | None:
    if task.started_at is None or task.finished_at is None:
        return None
    return (task.finished_at - task.started_at).total_seconds()


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def tasks_table(tasks: Sequence[TaskPublic], *, title: str | None = None, short_ids: bool = False) -> Table:
    """One row per task. Below ~110 columns the timing columns give way, so full ids are never cut."""
    wide = out.width >= 110 or short_ids
    table = Table(
        title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False
    )
    table.add_column("ID", no_wrap=True, min_width=8 if short_ids else 36)
    table.add_column("TYPE", no_wrap=True, min_width=8, overflow="ellipsis")
    table.add_column("STATUS", no_wrap=True, min_width=9)
    table.add_column("PRIORITY", no_wrap=True, min_width=6)
    table.add_column("ATTEMPTS", justify="right", no_wrap=True)
    if wide:
        table.add_column("CREATED", no_wrap=True)
        table.add_column("DURATION", justify="right", no_wrap=True)
    for t in tasks:
        cells: list[str | Text] = [
            str(t.id)[:8] if short_ids else str(t.id),
            escape(t.type),
            status_text(t.status),
            Text(t.priority, style=PRIORITY_STYLE.get(t.priority, "")),
            f"{t.attempts}/{t.max_retries + 1}",
        ]
        if wide:
            cells += [
                fmt_time(t.created_at),
                "…" if t.status == "running" else fmt_duration(task_duration(t)),
            ]
        table.add_row(*cells)
    return table


def stats_table(stats: Stats) -> Table:
    table = Table.grid(padding=(0, 3))
    for _ in range(len(STATUSES) + 1):
        table.add_column(justify="right")
    table.add_row(*(Text(s, style=STATUS_STYLE[s]) for s in STATUSES), Text("total", style="bold"))
    table.add_row(*(str(getattr(stats.tasks, s)) for s in STATUSES), str(stats.tasks.total))
    return table


def stats_line(stats: Stats) -> Text:
    q = stats.queue
    line = Text()
    line.append("queue ", style="bold")
    line.append(f"high {q.high} · normal {q.normal} · low {q.low}")
    line.append("   workers ", style="bold")
    line.append(str(stats.workers), style="red" if stats.workers == 0 else "green")
    line.append("   retries scheduled ", style="bold")
    line.append(str(stats.retried_total))
    # 0 also from APIs older than migration 0003, which do not send it.
    if stats.waiting_no_worker:
        line.append("   waiting for a worker that serves their type ", style="bold")
        line.append(str(stats.waiting_no_worker), style="red")
    return line


WAITING_STYLE = {
    "queue_paused": "magenta",
    "no_worker": "bold red",
    "backoff": "dark_orange",
    "concurrency_limited": "magenta",
    "rate_limited": "magenta",
}


def waiting_text(waiting: TaskWaiting) -> Text:
    """Why a task waits, on one line: the reason, the API's sentence, when the wait ends, its place in line."""
    line = Text(waiting.reason, style=WAITING_STYLE.get(waiting.reason, "bold"))
    if waiting.detail:
        line.append(f": {waiting.detail}")
    if waiting.reason == "concurrency_limited" and waiting.running is not None and waiting.limit is not None:
        line.append(f" ({waiting.running} running of limit {waiting.limit})", style="grey62")
    if waiting.until is not None:
        left = (waiting.until - datetime.now(UTC)).total_seconds()
        line.append(f" (until {fmt_time(waiting.until)}, in {fmt_duration(max(0.0, left))})", style="grey62")
    if waiting.position is not None:
        line.append(f" ({waiting.position} ahead of it in its queue)", style="grey62")
    return line


def task_facts(task: TaskPublic) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("id", str(task.id))
    facts.add_row("type", escape(task.type))
    facts.add_row("status", status_text(task.status))
    facts.add_row("priority", Text(task.priority, style=PRIORITY_STYLE.get(task.priority, "")))
    facts.add_row("queue", escape(task.queue))
    if task.waiting is not None and task.status not in TERMINAL:
        facts.add_row("waiting", waiting_text(task.waiting))
    facts.add_row("attempts", f"{task.attempts} of {task.max_retries + 1}")
    _crash_facts(facts, task)
    facts.add_row("timeout", f"{task.timeout_s} s per attempt")
    facts.add_row("created", fmt_time(task.created_at))
    if task.started_at:
        facts.add_row("started", fmt_time(task.started_at))
    if task.finished_at:
        facts.add_row("finished", fmt_time(task.finished_at))
        facts.add_row("duration", fmt_duration(task_duration(task)))
    if task.idempotency_key:
        facts.add_row("idempotency key", escape(task.idempotency_key))
    if task.schedule:
        facts.add_row("schedule", escape(task.schedule))
    if task.concurrency_key:
        facts.add_row("concurrency key", escape(task.concurrency_key))
    return facts


def _crash_facts(facts: Table, task: TaskPublic) -> None:
    """Attempts lost to a dying worker, and the quarantine they led to (a poison task)."""
    if task.lost_attempts:
        facts.add_row("lost attempts", f"{task.lost_attempts} (its worker died)")
    if task.quarantined:
        facts.add_row("quarantined", Text("yes: its attempts killed their worker, not retried", style="bold red"))


def show_task(task: TaskPublic, events: Sequence[TaskEventPublic] | None) -> None:
    out.print(task_facts(task))
    out.print(Text("payload", style="bold"))
    out.print(Syntax(json.dumps(task.payload, indent=2), "json", background_color="default"))
    if task.result_expired:
        out.print(Text(f"result expired at {fmt_time(task.result_expires_at)}", style="bold"))
    elif task.result is not None:
        out.print(Text("result", style="bold green"))
        out.print(Syntax(json.dumps(task.result, indent=2), "json", background_color="default"))
    if task.error:
        out.print(Text("error", style="bold red"))
        out.print(Text(task.error, style="red"))
    if events:
        timeline = Table(
            title="events",
            title_justify="left",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            show_edge=False,
        )
        timeline.add_column("AT")
        timeline.add_column("STATUS")
        timeline.add_column("ATTEMPT", justify="right")
        timeline.add_column("DETAIL")
        for ev in events:
            timeline.add_row(fmt_time(ev.at), status_text(ev.status), str(ev.attempt), escape(ev.detail or ""))
        out.print(timeline)


def read_payload(value: str) -> dict[str, Any]:
    """--payload: a JSON object, `@file` to read one from a file, or `-` for stdin."""
    source = "--payload"
    try:
        if value == "-":
            text = sys.stdin.read()
        elif value.startswith("@"):
            source = value[1:]
            text = Path(value[1:]).read_text(encoding="utf-8")
        else:
            text = value
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {source}: {exc.strerror}", param_hint="--payload") from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None
    if not isinstance(payload, dict):
        raise typer.BadParameter("must be a JSON object, e.g. '{\"a\": 1}'", param_hint="--payload")
    return payload


# ---- commands -----------------------------------------------------------------------------------------------


def submit(
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Task type (see `taskproc types`).")],
    payload: Annotated[
        str, typer.Option("--payload", "-p", help="Payload: a JSON object, @FILE to read a file, - for stdin.")
    ] = "{}",
    priority: Annotated[PriorityChoice, typer.Option(help="Queue priority.")] = PriorityChoice.normal,
    max_retries: Annotated[int | None, typer.Option(min=0, max=20, help="Retries after the first attempt.")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="Per-attempt timeout in seconds.")] = None,
    delay: Annotated[float | None, typer.Option(min=0, help="Run no earlier than this many seconds from now.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Submitting the same key again creates nothing.")] = None,
    queue: Annotated[str | None, typer.Option(help="Named queue (default: `default`).")] = None,
    concurrency_key: Annotated[
        str | None,
        typer.Option(
            help="The key whose limit (`taskproc limits set`) the task counts against; default: its type's.",
            callback=_optional_limit_key,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the task ends; exit 0 only if completed.")
    ] = False,
    wait_timeout: Annotated[
        float | None, typer.Option(min=0, help="With --wait: give up after this many seconds (exit 5).")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Submit a task; with --wait, follow it live until it ends."""
    body = read_payload(payload)
    with client_for(api_url, api_key) as client:
        task = client.submit(
            type_,
            body,
            priority=priority,
            max_retries=max_retries,
            timeout_s=timeout,
            delay_s=delay,
            idempotency_key=idempotency_key,
            queue=queue,
            concurrency_key=concurrency_key,
        )
        if not wait:
            if json_out:
                emit_json(dump(task))
            else:
                out.print(
                    f"[green]✓[/green] submitted [bold]{escape(task.type)}[/bold] {task.id} "
                    f"(priority {task.priority}, {task.status})"
                )
            return
        if not json_out:
            err.print(f"submitted [bold]{escape(task.type)}[/bold] {task.id}")
        final = _wait_with_display(client, task, timeout_s=wait_timeout, show=not json_out and err.is_terminal)
        _report_final(final, json_out)


def _wait_with_display(client: TaskprocClient, task: TaskPublic, *, timeout_s: float | None, show: bool) -> TaskPublic:
    label = f"{escape(task.type)} {str(task.id)[:8]}"
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not show,
    )

    def describe(t: TaskPublic) -> str:
        style = STATUS_STYLE.get(t.status, "")
        attempt = f" · attempt {t.attempts}/{t.max_retries + 1}" if t.attempts else ""
        return f"{label} [{style}]{t.status}[/]{attempt}"

    with progress:
        bar = progress.add_task(describe(task), total=None)
        try:
            return client.wait(task.id, timeout_s, on_update=lambda t: progress.update(bar, description=describe(t)))
        except WaitTimeoutError as exc:
            progress.stop()
            err.print(f"[red]error:[/red] task {task.id} is still {exc.task.status} after {timeout_s} s")
            raise typer.Exit(EXIT_TIMEOUT) from None


def _report_final(task: TaskPublic, json_out: bool) -> None:
    if json_out:
        emit_json(dump(task))
    elif task.status == "completed":
        out.print(
            f"[green]✓ completed[/green] {escape(task.type)} {task.id} "
            f"in {fmt_duration(task_duration(task))} (attempt {task.attempts})"
        )
        out.print(Syntax(json.dumps(task.result, indent=2), "json", background_color="default"))
    else:
        out.print(f"[red]✗ {task.status}[/red] {escape(task.type)} {task.id} after {task.attempts} attempt(s)")
        if task.error:
            out.print(Text(task.error, style="red"))
    if task.status != "completed":
        raise typer.Exit(EXIT_TASK)


def get(
    task_id: TaskIdArg,
    events: Annotated[bool, typer.Option("--events", help="With --json: include the event history.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Show a task: state, payload, result or error, and its event timeline."""
    with client_for(api_url, api_key) as client:
        task = client.get(task_id)
        history: list[TaskEventPublic] | None = None
        if events or not json_out:
            history = client.history(task_id)
        if json_out:
            emit_json({**dump(task), "events": dump(history or [])} if events else dump(task))
        else:
            show_task(task, history)


def list_(
    status: Annotated[StatusChoice | None, typer.Option(help="Only tasks in this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    priority: Annotated[PriorityChoice | None, typer.Option(help="Only this priority.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Page size.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page's next cursor.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Follow the cursor to the last page.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """List tasks, newest first (one page, or every page with --all)."""
    with client_for(api_url, api_key) as client:
        items: list[TaskPublic] = []
        next_cursor = cursor
        # Page by page rather than client.list(): the last cursor is part of the output.
        while True:
            page = client.page(
                status=status, type=type_, priority=priority, queue=queue, limit=limit, cursor=next_cursor
            )
            items.extend(page.items)
            next_cursor = page.next_cursor
            if not all_ or not next_cursor:
                break
        if json_out:
            emit_json({"items": dump(items), "next_cursor": next_cursor})
            return
        if not items:
            out.print("no tasks")
            return
        out.print(tasks_table(items))
        if next_cursor:
            err.print(f"[dim]more: --cursor {next_cursor}  (or --all)[/dim]")


def _action(call: Callable[[TaskprocClient, str], TaskPublic | None], verb: str) -> Callable[..., None]:
    def command(
        task_id: TaskIdArg,
        api_url: ApiUrl = DEFAULT_URL,
        api_key: ApiKey = None,
        json_out: JsonOut = False,
    ) -> None:
        with client_for(api_url, api_key) as client:
            task = call(client, task_id)
        if json_out:
            emit_json(dump(task) if task is not None else {"id": task_id, "deleted": True})
        elif task is None:
            out.print(f"[green]✓[/green] {verb} {task_id}")
        else:
            shown, note = verb, ""
            if task.status == "canceled":
                shown = "canceled"
            elif verb == "cancel requested for" and task.status == "running":
                note = " (it is running; its worker stops it within about a second)"
            out.print(f"[green]✓[/green] {shown} {task.id}: now {task.status}{note}")

    return command


def stats(
    queue: Annotated[str | None, typer.Option(help="Only this queue's tasks and workers.")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Counts by status, waiting tasks by priority, live workers."""
    with client_for(api_url, api_key) as client:
        data = client.stats(queue=queue)
    if json_out:
        emit_json(dump(data))
        return
    out.print(stats_table(data))
    out.print(stats_line(data))


def types(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """The task types the server can run, with their payload fields."""
    with client_for(api_url, api_key) as client:
        data: list[TaskTypePublic] = client.types()
    if json_out:
        emit_json(dump(data))
        return
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("TYPE", style="bold")
    table.add_column("PAYLOAD")
    table.add_column("DESCRIPTION")
    for t in data:
        schema = t.payload_schema
        required = set(schema.get("required", []))
        fields = ", ".join(f"{name}{'' if name in required else '?'}" for name in schema.get("properties", {}))
        table.add_row(escape(t.name), escape(fields), escape(t.description))
    out.print(table)


def watch(
    status: Annotated[StatusChoice | None, typer.Option(help="Only tasks in this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    priority: Annotated[PriorityChoice | None, typer.Option(help="Only this priority.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Rows in the table.")] = 15,
    interval: Annotated[float, typer.Option(min=0.2, help="Refresh at least this often (seconds).")] = 2.0,
    since: Annotated[
        int | None, typer.Option(min=0, help="With --json: replay events after this event id first (Last-Event-ID).")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """A live table of stats and the newest tasks (piped: each refresh printed in turn); with --json, every task
    event as one JSON line. Ctrl-C ends."""
    # SIGTERM ends it as cleanly as Ctrl-C (exit 0), e.g. under `timeout` or a process supervisor.
    signal.signal(signal.SIGTERM, _interrupt)
    with client_for(api_url, api_key) as client:
        if json_out:
            _watch_events(client, status=status, type_=type_, priority=priority, since=since)
        else:
            _watch_table(
                client, api_url, api_key, status=status, type_=type_, priority=priority, limit=limit, interval=interval
            )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _watch_events(
    client: TaskprocClient,
    *,
    status: StatusChoice | None,
    type_: str | None,
    priority: PriorityChoice | None,
    since: int | None,
) -> None:
    last_id = since
    failures = 0
    try:
        while True:
            try:
                # The reconnecting is done here rather than by the SDK, to say once that the API is gone.
                for event in client.events(last_event_id=last_id, reconnect=False):
                    failures = 0
                    if isinstance(event, Reset):
                        err.print(f"[yellow]warning:[/yellow] {escape(event.reason)}")
                        continue
                    last_id = event.id
                    if not isinstance(event, TaskChange):
                        continue
                    if (status and event.status != status) or (type_ and event.type != type_):
                        continue
                    if priority and event.priority != priority:
                        continue
                    emit_json(event.model_dump(mode="json", exclude={"kind"}), compact=True)
            except APIConnectionError as exc:
                failures += 1
                if failures == 1:
                    err.print(f"[yellow]warning:[/yellow] {escape(str(exc))}; reconnecting")
            time.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
    except KeyboardInterrupt:
        return


def _watch_table(
    client: TaskprocClient,
    api_url: str,
    api_key: str | None,
    *,
    status: StatusChoice | None,
    type_: str | None,
    priority: PriorityChoice | None,
    limit: int,
    interval: float,
) -> None:
    filters = {"status": status, "type": type_, "priority": priority}
    changed = threading.Event()
    live_state = {"stream": "connecting"}
    stop = threading.Event()

    def listen() -> None:
        # A separate client: httpx clients are not meant to be shared across threads.
        with make_client(api_url, api_key) as listener:
            last_id: int | None = None
            while not stop.is_set():
                try:
                    for event in listener.events(last_event_id=last_id, reconnect=False):
                        last_id = event.id if not isinstance(event, Reset) else last_id
                        live_state["stream"] = "live"
                        changed.set()
                        if stop.is_set():
                            return
                except TaskprocClientError:
                    pass
                live_state["stream"] = "reconnecting"
                stop.wait(2.0)

    def render() -> Group:
        data = client.stats()
        page = client.page(status=status, type=type_, priority=priority, limit=limit)
        shown = " ".join(f"{k}={v}" for k, v in filters.items() if v)
        header = Text()
        header.append("taskproc ", style="bold")
        header.append(client.base_url, style="dim")
        header.append(f"   {live_state['stream']}", style="green" if live_state["stream"] == "live" else "yellow")
        header.append(f"   {datetime.now().strftime('%H:%M:%S')}", style="dim")
        title = f"newest {limit} tasks" + (f" ({shown})" if shown else "")
        return Group(
            header,
            Panel(stats_table(data), expand=False),
            stats_line(data),
            tasks_table(page.items, title=title, short_ids=out.width < 120),
        )

    thread = threading.Thread(target=listen, name="taskproc-watch-events", daemon=True)
    thread.start()
    try:
        if out.is_terminal:
            with Live(render(), console=out, auto_refresh=False, redirect_stderr=False) as live:
                _refresh_loop(lambda: live.update(render(), refresh=True), changed, interval, live_state)
        else:
            # Live draws in place on a terminal only; elsewhere it would print once, at exit. Piped, each refresh
            # is printed in full, one after the other, so a reader sees the state as it changes.
            out.print(render())
            _refresh_loop(lambda: out.print(render()), changed, interval, live_state)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()


def _refresh_loop(
    refresh: Callable[[], None], changed: threading.Event, interval: float, live_state: dict[str, str]
) -> None:
    last_refresh = time.monotonic()
    while True:
        changed.wait(interval)
        # At most one refresh a second, however many events arrive.
        time.sleep(max(0.0, last_refresh + 1.0 - time.monotonic()) if changed.is_set() else 0.0)
        changed.clear()
        last_refresh = time.monotonic()
        try:
            refresh()
        except APIConnectionError:
            live_state["stream"] = "API unreachable"


# ---- schedules ------------------------------------------------------------------------------------------------

schedules_app = typer.Typer(help="Durable cron schedules: list, create, get, pause, resume, trigger, delete.")
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Schedule name.")]


def schedules_table(items: Sequence[SchedulePublic]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=None)
    for column in ("name", "cron", "timezone", "type", "enabled", "next run", "last run", "last task"):
        table.add_column(column)
    for s in items:
        table.add_row(
            s.name,
            s.cron,
            s.timezone,
            s.task.type,
            "[green]yes[/green]" if s.enabled else "[yellow]paused[/yellow]",
            fmt_time(s.next_run_at),
            fmt_time(s.last_run_at),
            status_text(s.last_task_status.value) if s.last_task_status is not None else Text("-"),
        )
    return table


def _show_schedule(schedule: SchedulePublic, json_out: bool, verb: str | None = None) -> None:
    if json_out:
        emit_json(dump(schedule))
        return
    if verb:
        out.print(f"[green]✓[/green] {verb} {schedule.name}: next run {fmt_time(schedule.next_run_at)}")
        return
    out.print(schedules_table([schedule]))
    counts = f"fired {schedule.fired_total}, skipped {schedule.skipped_total}, missed {schedule.missed_total}"
    if schedule.last_skip_reason:
        counts += f"; last not run: {fmt_time(schedule.last_skipped_at)} ({schedule.last_skip_reason})"
    out.print(escape(counts))


@schedules_app.command("list")
def schedules_list(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """List the schedules with their next and last run."""
    with client_for(api_url, api_key) as client:
        items = client.list_schedules()
    if json_out:
        emit_json(dump(items))
    elif not items:
        out.print("no schedules")
    else:
        out.print(schedules_table(items))


@schedules_app.command("create")
def schedules_create(
    name: NameArg,
    cron: Annotated[str, typer.Option(help="Five cron fields, or @hourly, @daily, @weekly, @monthly, @yearly.")],
    type_: Annotated[str, typer.Option("--type", help="Task type of each fire's task.")],
    payload: Annotated[str, typer.Option(help="Task payload: JSON, @file or - for stdin.")] = "{}",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron times.")] = "UTC",
    priority: Annotated[PriorityChoice | None, typer.Option(help="Priority of each task.")] = None,
    queue: Annotated[str | None, typer.Option(help="Named queue of each task (default: `default`).")] = None,
    max_retries: Annotated[int | None, typer.Option(min=0, max=20, help="Retries of each task.")] = None,
    timeout_s: Annotated[float | None, typer.Option(min=0.001, help="Per-attempt timeout.")] = None,
    overlap: Annotated[OverlapChoice, typer.Option(help="While the previous run waits or runs.")] = Overlap.allow,
    catchup_s: Annotated[float, typer.Option(min=0, help="Run a fire missed by up to this long, once.")] = 0.0,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Create a cron schedule."""
    task: dict[str, Any] = {"type": type_, "payload": read_payload(payload)}
    optional = {
        "priority": priority.value if priority else None,
        "queue": queue,
        "max_retries": max_retries,
        "timeout_s": timeout_s,
    }
    task.update({k: v for k, v in optional.items() if v is not None})
    with client_for(api_url, api_key) as client:
        schedule = client.create_schedule(
            name,
            cron=cron,
            task=task,
            timezone=timezone,
            overlap=overlap,
            catchup_s=catchup_s,
            enabled=not paused,
        )
    _show_schedule(schedule, json_out, "created")


@schedules_app.command("get")
def schedules_get(
    name: NameArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """Show a schedule with its counters."""
    with client_for(api_url, api_key) as client:
        _show_schedule(client.get_schedule(name), json_out)


def _set_enabled(enabled: bool, verb: str) -> Callable[..., None]:
    def command(
        name: NameArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
    ) -> None:
        with client_for(api_url, api_key) as client:
            schedule = client.update_schedule(name, enabled=enabled)
        _show_schedule(schedule, json_out, verb)

    return command


@schedules_app.command("trigger")
def schedules_trigger(
    name: NameArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """Run a schedule now: one task at once."""
    with client_for(api_url, api_key) as client:
        task = client.trigger_schedule(name)
    if json_out:
        emit_json(dump(task))
    else:
        out.print(f"[green]✓[/green] triggered {name}: task {task.id} ({task.status})")


@schedules_app.command("delete")
def schedules_delete(
    name: NameArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """Delete a schedule (its tasks stay)."""
    with client_for(api_url, api_key) as client:
        client.delete_schedule(name)
    if json_out:
        emit_json({"name": name, "deleted": True})
    else:
        out.print(f"[green]✓[/green] deleted {name}")


schedules_app.command("pause", help="Pause a schedule: no fires until it is resumed.")(_set_enabled(False, "paused"))
schedules_app.command("resume", help="Resume a paused schedule (from now: no catch-up).")(_set_enabled(True, "resumed"))


queues_app = typer.Typer(help="Named queues: list them (no subcommand), pause, resume.", invoke_without_command=True)


def _queue_name(value: str) -> str:
    if not re.fullmatch(QUEUE_PATTERN, value):
        raise typer.BadParameter(f"{value!r} is not a queue name (1 to 64 of a-z, 0-9, '_', '-')")
    return value


QueueArg = Annotated[str, typer.Argument(metavar="NAME", help="Queue name.", callback=_queue_name)]


def queues_table(items: Sequence[QueuePublic]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=None)
    for column in ("name", "state", "ready", "deferred", "running", "oldest ready", "workers"):
        table.add_column(column)
    for q in items:
        table.add_row(
            q.name,
            "[yellow]paused[/yellow]" if q.paused else "[green]active[/green]",
            str(q.ready),
            str(q.deferred),
            str(q.running),
            fmt_duration(q.oldest_ready_age_s),
            str(q.workers) if q.workers else "[red]0[/red]",
        )
    return table


@queues_app.callback()
def queues_list(
    ctx: typer.Context, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """List the queues with their counts and pause state."""
    if ctx.invoked_subcommand is not None:
        return
    with client_for(api_url, api_key) as client:
        items = client.queues()
    if json_out:
        emit_json(dump(items))
    else:
        out.print(queues_table(items))


def _set_paused(paused: bool, verb: str) -> Callable[..., None]:
    def command(
        name: QueueArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
    ) -> None:
        with client_for(api_url, api_key) as client:
            q = client.pause_queue(name) if paused else client.resume_queue(name)
        if json_out:
            emit_json(dump(q))
        else:
            out.print(f"[green]✓[/green] {verb} {q.name}: {q.ready} ready, {q.running} running")

    return command


queues_app.command("pause", help="Pause a queue: nothing new starts there; running tasks finish.")(
    _set_paused(True, "paused")
)
queues_app.command("resume", help="Resume a paused queue.")(_set_paused(False, "resumed"))


# ---- limits ---------------------------------------------------------------------------------------------------

limits_app = typer.Typer(
    help="Per-key concurrency and rate limits: list them (no subcommand, or `list`), get, set, delete.",
    invoke_without_command=True,
)
_PERIOD = re.compile(r"^(?P<n>\d+(?:\.\d*)?|\.\d+)?\s*(?P<unit>s|m|min|h)?$")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(value: str) -> tuple[int, float]:
    """--rate COUNT/PER_S: `10/1` (ten a second), `100/60` or `100/1m` (a hundred a minute), `5/h`."""
    count_text, sep, period_text = value.strip().partition("/")
    match = _PERIOD.fullmatch(period_text.strip())
    if not sep or not count_text.strip().isdigit() or match is None or not (match["n"] or match["unit"]):
        raise typer.BadParameter(f"{value!r} is not COUNT/PER_S (e.g. 10/1, 100/60, 100/1m)", param_hint="--rate")
    count = int(count_text)
    per_s = float(match["n"] or 1) * _UNIT_S[match["unit"]]
    if count < 1 or per_s <= 0:
        raise typer.BadParameter("the count is 1 or more and the period more than 0 s", param_hint="--rate")
    return count, per_s


KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="The concurrency key.", callback=_limit_key)]


def fmt_rate(limit: LimitPublic) -> str:
    if limit.rate is None:
        return "-"
    per = "s" if limit.rate.per_s == 1 else f"{limit.rate.per_s:g} s"
    return f"{limit.rate.count} per {per}"


def limits_table(items: Sequence[LimitPublic]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=None)
    for column in ("key", "running", "max running", "rate", "tokens", "set by", "updated"):
        table.add_column(column, justify="right" if column in ("running", "max running", "tokens") else "left")
    for limit in items:
        full = limit.max_running is not None and limit.running >= limit.max_running
        table.add_row(
            escape(limit.key),
            f"[yellow]{limit.running}[/yellow]" if full else str(limit.running),
            "-" if limit.max_running is None else str(limit.max_running),
            fmt_rate(limit),
            "-" if limit.tokens is None else f"{limit.tokens:.1f}",
            "task type" if limit.origin == "type" else "API",
            fmt_time(limit.updated_at),
        )
    return table


def _list_limits(api_url: str, api_key: str | None, json_out: bool) -> None:
    with client_for(api_url, api_key) as client:
        items = client.list_limits()
    if json_out:
        emit_json(dump(items))
    elif not items:
        err.print("no key has a limit")
    else:
        out.print(limits_table(items))


@limits_app.callback()
def limits_default(
    ctx: typer.Context, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """List the keys that have a limit, with their running tasks and rate tokens now."""
    if ctx.invoked_subcommand is None:
        _list_limits(api_url, api_key, json_out)


@limits_app.command("list")
def limits_list(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """List the keys that have a limit, with their running tasks and rate tokens now."""
    _list_limits(api_url, api_key, json_out)


@limits_app.command("get")
def limits_get(key: KeyArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """Show a key's limit (exit 3 if it has none)."""
    with client_for(api_url, api_key) as client:
        limit = client.get_limit(key)
    if json_out:
        emit_json(dump(limit))
    else:
        out.print(limits_table([limit]))


@limits_app.command("set")
def limits_set(
    key: KeyArg,
    max_running: Annotated[
        int | None, typer.Option("--max-running", min=1, help="At most this many of the key's tasks run at once.")
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate", metavar="COUNT/PER_S", help="At most COUNT start per PER_S seconds: 10/1, 100/60, 100/1m."
        ),
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Set a key's limit, replacing the one it has (what is not given is no longer limited)."""
    parsed = None if rate is None else parse_rate(rate)
    if max_running is None and parsed is None:
        raise typer.BadParameter("give --max-running, --rate or both")
    with client_for(api_url, api_key) as client:
        limit = client.put_limit(key, max_running=max_running, rate=parsed)
    if json_out:
        emit_json(dump(limit))
        return
    parts = [f"max running {limit.max_running}" if limit.max_running is not None else None]
    parts.append(f"rate {fmt_rate(limit)}" if limit.rate is not None else None)
    out.print(f"[green]✓[/green] limit of {escape(limit.key)}: {', '.join(p for p in parts if p)}")


@limits_app.command("delete")
def limits_delete(key: KeyArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Delete a key's limit: its tasks run unlimited (exit 3 if it has none)."""
    with client_for(api_url, api_key) as client:
        client.delete_limit(key)
    out.print(f"[green]✓[/green] deleted the limit of {escape(key)}")


# ---- webhooks -------------------------------------------------------------------------------------------------

webhooks_app = typer.Typer(help="Webhooks: create, list, delete, deliveries, redeliver.")
WebhookArg = Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="Webhook id.")]


@webhooks_app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Argument(help="The http(s) URL that gets the deliveries.")],
    event: Annotated[
        list[str], typer.Option("--event", help="An event type (repeatable): task.completed, task.failed, ...")
    ],
    type_: Annotated[list[str] | None, typer.Option("--type", help="Only tasks of this type (repeatable).")] = None,
    queue: Annotated[list[str] | None, typer.Option(help="Only tasks of this queue (repeatable).")] = None,
    secret: Annotated[str | None, typer.Option(help="A whsec_ secret of your own (default: generated).")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Create a webhook; prints its signing secret, shown this once."""
    flt = {k: v for k, v in (("type", type_), ("queue", queue)) if v}
    with client_for(api_url, api_key) as client:
        hook = client.create_webhook(url, events=event, filter=flt or None, secret=secret)
    if json_out:
        emit_json(dump(hook))
    else:
        out.print(f"[green]✓[/green] created webhook {hook.id} -> {escape(hook.url)}")
        out.print(f"secret (shown once): {hook.secret}")


@webhooks_app.command("list")
def webhooks_list(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """List the webhooks."""
    with client_for(api_url, api_key) as client:
        items = client.list_webhooks()
    if json_out:
        emit_json(dump(items))
        return
    if not items:
        out.print("no webhooks")
        return
    table = Table(box=box.SIMPLE_HEAD, title=None)
    for column in ("id", "url", "events", "filter", "created"):
        table.add_column(column)
    for h in items:
        flt = "-" if h.filter is None else json.dumps(h.filter.model_dump(exclude_none=True))
        table.add_row(
            str(h.id), escape(h.url), ", ".join(e.value for e in h.events), escape(flt), fmt_time(h.created_at)
        )
    out.print(table)


@webhooks_app.command("delete")
def webhooks_delete(
    webhook_id: WebhookArg, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """Delete a webhook and its deliveries."""
    with client_for(api_url, api_key) as client:
        client.delete_webhook(webhook_id)
    if json_out:
        emit_json({"id": webhook_id, "deleted": True})
    else:
        out.print(f"[green]✓[/green] deleted webhook {webhook_id}")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    webhook_id: WebhookArg,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 50,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """A webhook's deliveries: status, attempts, last status code and latency."""
    with client_for(api_url, api_key) as client:
        items = client.list_webhook_deliveries(webhook_id, limit=limit)
    if json_out:
        emit_json(dump(items))
        return
    table = Table(box=box.SIMPLE_HEAD, title=None)
    for column in ("id", "event", "task", "status", "attempts", "last code", "last ms", "last error", "created"):
        table.add_column(column)
    for d in items:
        table.add_row(
            str(d.id),
            d.event.value,
            str(d.task_id or "-"),
            d.status.value,
            str(d.attempts),
            str(d.last_status_code if d.last_status_code is not None else "-"),
            "-" if d.last_latency_ms is None else f"{d.last_latency_ms:.0f}",
            escape(d.last_error or "-"),
            fmt_time(d.created_at),
        )
    out.print(table)


@webhooks_app.command("redeliver")
def webhooks_redeliver(
    delivery_id: Annotated[str, typer.Argument(metavar="DELIVERY_ID", help="Delivery id.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Send a delivery again now."""
    with client_for(api_url, api_key) as client:
        delivery = client.redeliver_webhook_delivery(delivery_id)
    if json_out:
        emit_json(dump(delivery))
    else:
        out.print(f"[green]✓[/green] redelivery of {delivery.id} queued")


# ---- bulk actions ------------------------------------------------------------------------------------------

bulk_app = typer.Typer(help="Bulk actions by filter: retry, cancel, delete, set-priority; status and list.")
BULK_POLL_S = 0.5


def bulk_line(op: BulkPublic) -> str:
    return f"bulk {op.action.value} {op.id}: {op.status.value}, {op.done:,} done, {op.failed:,} skipped of {op.total:,}"


def _show_bulk(op: BulkPublic, json_out: bool) -> None:
    if json_out:
        emit_json(dump(op))
    else:
        out.print(bulk_line(op))


def _bulk_command(action: str, *, with_priority: bool) -> Callable[..., None]:
    def command(
        status: Annotated[StatusChoice | None, typer.Option(help="Only tasks in this status.")] = None,
        type_: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
        priority: Annotated[PriorityChoice | None, typer.Option(help="Only tasks of this priority.")] = None,
        queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
        schedule: Annotated[str | None, typer.Option(help="Only the tasks of this schedule.")] = None,
        created_before: Annotated[datetime | None, typer.Option(help="Only tasks created before (ISO 8601).")] = None,
        created_after: Annotated[datetime | None, typer.Option(help="Only tasks created after (ISO 8601).")] = None,
        to: Annotated[PriorityChoice | None, typer.Option("--to", help="set-priority: the new priority.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the matching tasks.")] = False,
        wait: Annotated[bool, typer.Option("--wait", help="Follow the operation until it ends.")] = False,
        api_url: ApiUrl = DEFAULT_URL,
        api_key: ApiKey = None,
        json_out: JsonOut = False,
    ) -> None:
        if with_priority and to is None and not dry_run:
            err.print("[red]error:[/red] set-priority needs --to high|normal|low")
            raise typer.Exit(2)
        flt: dict[str, Any] = {
            "status": status,
            "type": type_,
            "priority": priority,
            "queue": queue,
            "schedule": schedule,
            "created_before": None if created_before is None else created_before.isoformat(),
            "created_after": None if created_after is None else created_after.isoformat(),
        }
        flt = {k: str(v) if k in ("status", "priority") and v is not None else v for k, v in flt.items()}
        with client_for(api_url, api_key) as client:
            result = client.bulk(action, flt, priority=to if with_priority else None, dry_run=dry_run)
            if isinstance(result, BulkCount):
                if json_out:
                    emit_json(dump(result))
                else:
                    out.print(f"{result.total:,} tasks match: bulk {action} would apply to them (dry run)")
                return
            op = result
            if not json_out:
                out.print(bulk_line(op))
            while wait and op.status.value == "running":
                time.sleep(BULK_POLL_S)
                op = client.bulk_status(op.id)
        if json_out:
            emit_json(dump(op))
        elif wait:
            out.print(bulk_line(op))
        if wait and op.status.value == "failed":
            raise typer.Exit(EXIT_TASK)

    command.__doc__ = {
        "retry": "Retry every failed or canceled task the filters match (count first with --dry-run).",
        "cancel": "Cancel every waiting or running task the filters match.",
        "delete": "Delete every finished task the filters match, with its history.",
        "set_priority": "Change the priority of every pending task the filters match (--to).",
    }[action]
    return command


for _name, _action_name in (("retry", "retry"), ("cancel", "cancel"), ("delete", "delete")):
    bulk_app.command(_name)(_bulk_command(_action_name, with_priority=False))
bulk_app.command("set-priority")(_bulk_command("set_priority", with_priority=True))


@bulk_app.command("status")
def bulk_status(
    bulk_id: Annotated[str, typer.Argument(metavar="ID", help="Bulk operation id.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """A bulk operation's progress."""
    with client_for(api_url, api_key) as client:
        op = client.bulk_status(bulk_id)
    _show_bulk(op, json_out)


@bulk_app.command("list")
def bulk_list(
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many, newest first.")] = 50,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Bulk operations, newest first: who asked for what, when, and how far they got."""
    with client_for(api_url, api_key) as client:
        items = client.list_bulk(limit=limit)
    if json_out:
        emit_json(dump(items))
        return
    if not items:
        out.print("no bulk operations")
        return
    table = Table(box=box.SIMPLE_HEAD, title=None)
    for column in ("id", "action", "filter", "status", "done", "skipped", "total", "by", "created"):
        table.add_column(column)
    for op in items:
        table.add_row(
            str(op.id),
            op.action.value,
            escape(json.dumps(op.filter.model_dump(mode="json", exclude_none=True))),
            op.status.value,
            f"{op.done:,}",
            f"{op.failed:,}",
            f"{op.total:,}",
            escape(op.requested_by),
            fmt_time(op.created_at),
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `taskproc` command."""
    panel = "Client commands (talk to a running API)"
    app.command(rich_help_panel=panel)(submit)
    app.command(rich_help_panel=panel)(get)
    app.command("list", rich_help_panel=panel)(list_)
    app.command("cancel", rich_help_panel=panel, help="Cancel a task (a running one is stopped by its worker).")(
        _action(TaskprocClient.cancel, "cancel requested for")
    )
    app.command("retry", rich_help_panel=panel, help="Run a failed or canceled task again.")(
        _action(TaskprocClient.retry, "retried")
    )
    app.command("delete", rich_help_panel=panel, help="Delete a finished task and its history.")(
        _action(TaskprocClient.delete, "deleted")
    )
    app.command(rich_help_panel=panel)(stats)
    app.command(rich_help_panel=panel)(types)
    app.command(rich_help_panel=panel)(watch)
    app.add_typer(schedules_app, name="schedules", rich_help_panel=panel)
    app.add_typer(queues_app, name="queues", rich_help_panel=panel)
    app.add_typer(webhooks_app, name="webhooks", rich_help_panel=panel)
    app.add_typer(limits_app, name="limits", rich_help_panel=panel)
    app.add_typer(bulk_app, name="bulk", rich_help_panel=panel)
