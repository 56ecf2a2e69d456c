"""Client commands of `taskproc`: submit, get, list, cancel, retry, delete, stats and watch, over the REST API.

They talk to a running API (`--api-url`, env TASKPROC_API_URL) with httpx, optionally with a key (`--api-key`,
env TASKPROC_API_KEY), and print for people with rich, or JSON for scripts with `--json`.

Exit codes: 0 success (with `--wait`: the task completed), 1 the task failed or was canceled, 2 bad usage,
3 the API answered with an error, 4 the API could not be reached, 5 `--wait-timeout` expired.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from taskproc.models import Priority, TaskStatus

EXIT_OK = 0
EXIT_TASK = 1
EXIT_API = 3
EXIT_CONNECT = 4
EXIT_TIMEOUT = 5

TERMINAL = frozenset({"completed", "failed", "canceled"})
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


TaskIdArg = Annotated[str, typer.Argument(metavar="ID", help="Task id (UUID).", callback=_task_id)]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]
DEFAULT_URL = "http://127.0.0.1:8000"

# Piped output isn't squeezed into 80 columns: tables stay one row per task for grep and friends.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---- HTTP ---------------------------------------------------------------------------------------------------


def _api_error(response: httpx.Response) -> CliError:
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:300] or None
    if isinstance(detail, list):
        lines = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
            lines.append(f"  {'.'.join(loc)}: {item.get('msg', '')}" if loc else f"  {item.get('msg', '')}")
        message = "invalid input:\n" + "\n".join(lines)
    else:
        message = str(detail) if detail else response.reason_phrase
    if response.status_code == 401:
        message += " (pass --api-key or set TASKPROC_API_KEY)"
    return CliError(f"{response.status_code} {response.reason_phrase}: {message}", EXIT_API)


class Client:
    """A thin httpx client for /api/v1 that turns every failure into a CliError with the right exit code."""

    def __init__(self, url: str, key: str | None, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        headers = {"Accept": "application/json", "User-Agent": "taskproc-cli"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            self.http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(f"invalid --api-url {url!r}: {exc}", 2) from None

    def close(self) -> None:
        self.http.close()

    def _connect_error(self, exc: Exception) -> CliError:
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"the API at {self.url} did not answer in time", EXIT_CONNECT)
        reason = str(exc) or type(exc).__name__
        return CliError(f"cannot reach the API at {self.url}: {reason}", EXIT_CONNECT)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._connect_error(exc) from None
        if response.status_code >= 400:
            raise _api_error(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the server at {self.url} did not answer with JSON; is --api-url right?", EXIT_API
            ) from None

    def events(
        self, *, task_id: str | None = None, last_event_id: str | None = None, read_timeout: float = 40.0
    ) -> Iterator[tuple[str, Any, str | None]]:
        """(event, data, id) for each Server-Sent Event of /api/v1/events; returns when the stream ends."""
        params = {"task_id": task_id} if task_id else {}
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(10.0, read=read_timeout)
        try:
            with self.http.stream("GET", "/events", params=params, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                yield from parse_sse(response.iter_lines())
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._connect_error(exc) from None


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any, str | None]]:
    """The text/event-stream format: fields per line, a blank line ends a message; `data` is JSON here."""
    data: list[str] = []
    event = ""
    last_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                raw = "\n".join(data)
                try:
                    value: Any = json.loads(raw)
                except ValueError:
                    value = raw
                yield event or "message", value, last_id
            data, event = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value_text = line.partition(":")
        value_text = value_text.removeprefix(" ")
        if name == "data":
            data.append(value_text)
        elif name == "event":
            event = value_text
        elif name == "id" and "\0" not in value_text:
            last_id = value_text


@contextmanager
def client_for(api_url: str, api_key: str | None) -> Iterator[Client]:
    """A client whose errors end the command with a clean message and the matching exit code."""
    client: Client | None = None
    try:
        client = Client(api_url, api_key)
        yield client
    except CliError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(exc.code) from None
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


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt_time(value: str | None) -> str:
    at = _parse_time(value)
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


def task_duration(task: dict[str, Any]) -> float | None:
    started, finished = _parse_time(task.get("started_at")), _parse_time(task.get("finished_at"))
    if started is None or finished is None:
        return None
    return (finished - started).total_seconds()


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def tasks_table(tasks: list[dict[str, Any]], *, title: str | None = None, short_ids: bool = False) -> Table:
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
            t["id"][:8] if short_ids else t["id"],
            escape(t["type"]),
            status_text(t["status"]),
            Text(t["priority"], style=PRIORITY_STYLE.get(t["priority"], "")),
            f"{t['attempts']}/{t['max_retries'] + 1}",
        ]
        if wide:
            cells += [
                fmt_time(t.get("created_at")),
                "…" if t["status"] == "running" else fmt_duration(task_duration(t)),
            ]
        table.add_row(*cells)
    return table


def stats_table(stats: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 3))
    for _ in range(len(STATUSES) + 1):
        table.add_column(justify="right")
    table.add_row(*(Text(s, style=STATUS_STYLE[s]) for s in STATUSES), Text("total", style="bold"))
    table.add_row(*(str(stats["tasks"][s]) for s in STATUSES), str(stats["tasks"]["total"]))
    return table


def stats_line(stats: dict[str, Any]) -> Text:
    q = stats["queue"]
    line = Text()
    line.append("queue ", style="bold")
    line.append(f"high {q['high']} · normal {q['normal']} · low {q['low']}")
    line.append("   workers ", style="bold")
    line.append(str(stats["workers"]), style="red" if stats["workers"] == 0 else "green")
    line.append("   retries scheduled ", style="bold")
    line.append(str(stats["retried_total"]))
    # Absent from APIs older than migration 0003.
    if stats.get("waiting_no_worker"):
        line.append("   waiting for a worker that serves their type ", style="bold")
        line.append(str(stats["waiting_no_worker"]), style="red")
    return line


def show_task(task: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("id", task["id"])
    facts.add_row("type", escape(task["type"]))
    facts.add_row("status", status_text(task["status"]))
    facts.add_row("priority", Text(task["priority"], style=PRIORITY_STYLE.get(task["priority"], "")))
    facts.add_row("attempts", f"{task['attempts']} of {task['max_retries'] + 1}")
    facts.add_row("timeout", f"{task['timeout_s']} s per attempt")
    facts.add_row("created", fmt_time(task["created_at"]))
    if task.get("started_at"):
        facts.add_row("started", fmt_time(task["started_at"]))
    if task.get("finished_at"):
        facts.add_row("finished", fmt_time(task["finished_at"]))
        facts.add_row("duration", fmt_duration(task_duration(task)))
    if task.get("idempotency_key"):
        facts.add_row("idempotency key", escape(task["idempotency_key"]))
    out.print(facts)
    out.print(Text("payload", style="bold"))
    out.print(Syntax(json.dumps(task["payload"], indent=2), "json", background_color="default"))
    if task.get("result") is not None:
        out.print(Text("result", style="bold green"))
        out.print(Syntax(json.dumps(task["result"], indent=2), "json", background_color="default"))
    if task.get("error"):
        out.print(Text("error", style="bold red"))
        out.print(Text(task["error"], style="red"))
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
            timeline.add_row(
                fmt_time(ev["at"]), status_text(ev["status"]), str(ev["attempt"]), escape(ev["detail"] or "")
            )
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


# ---- waiting for a task -------------------------------------------------------------------------------------


class WaitTimeoutError(Exception):
    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(task["status"])
        self.task = task


def wait_for_task(
    client: Client, task_id: str, *, timeout_s: float | None, on_update: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Follow the task's events until it ends; the final task. Falls back to polling if the stream breaks."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    task: dict[str, Any] = client.request("GET", f"/tasks/{task_id}")
    on_update(task)

    def remaining() -> float:
        return 40.0 if deadline is None else max(0.0, deadline - time.monotonic())

    while task["status"] not in TERMINAL:
        if remaining() <= 0:
            raise WaitTimeoutError(task)
        try:
            # Subscribed once `ready` arrives: read the state then, so nothing can slip in between.
            for event, data, _ in client.events(task_id=task_id, read_timeout=min(20.0, remaining()) + 0.5):
                if event == "ready" or (event == "task" and isinstance(data, dict)):
                    if event == "task" and data.get("task_status") not in TERMINAL:
                        task = {**task, "status": data["task_status"], "attempts": data["task_attempts"]}
                    else:
                        task = client.request("GET", f"/tasks/{task_id}")
                    on_update(task)
                    if task["status"] in TERMINAL:
                        return task
                if remaining() <= 0:
                    raise WaitTimeoutError(task)
        except CliError as exc:
            if exc.code != EXIT_CONNECT:
                raise
            if remaining() <= 0:
                raise WaitTimeoutError(task) from None
        # The stream ended or timed out (server restart, long silence): look, then listen again.
        time.sleep(min(0.5, remaining()))
        task = client.request("GET", f"/tasks/{task_id}")
        on_update(task)
    return task


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
    body: dict[str, Any] = {"type": type_, "priority": priority.value, "payload": read_payload(payload)}
    for name, value in (("max_retries", max_retries), ("timeout_s", timeout), ("delay_s", delay)):
        if value is not None:
            body[name] = value
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    with client_for(api_url, api_key) as client:
        task: dict[str, Any] = client.request("POST", "/tasks", json=body)
        if not wait:
            if json_out:
                emit_json(task)
            else:
                out.print(
                    f"[green]✓[/green] submitted [bold]{escape(task['type'])}[/bold] {task['id']} "
                    f"(priority {task['priority']}, {task['status']})"
                )
            return
        if not json_out:
            err.print(f"submitted [bold]{escape(task['type'])}[/bold] {task['id']}")
        final = _wait_with_display(client, task, timeout_s=wait_timeout, show=not json_out and err.is_terminal)
        _report_final(final, json_out)


def _wait_with_display(client: Client, task: dict[str, Any], *, timeout_s: float | None, show: bool) -> dict[str, Any]:
    label = f"{escape(task['type'])} {task['id'][:8]}"
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not show,
    )

    def describe(t: dict[str, Any]) -> str:
        style = STATUS_STYLE.get(t["status"], "")
        attempt = f" · attempt {t['attempts']}/{t['max_retries'] + 1}" if t["attempts"] else ""
        return f"{label} [{style}]{t['status']}[/]{attempt}"

    with progress:
        bar = progress.add_task(describe(task), total=None)
        try:
            return wait_for_task(
                client,
                task["id"],
                timeout_s=timeout_s,
                on_update=lambda t: progress.update(bar, description=describe(t)),
            )
        except WaitTimeoutError as exc:
            progress.stop()
            err.print(f"[red]error:[/red] task {task['id']} is still {exc.task['status']} after {timeout_s} s")
            raise typer.Exit(EXIT_TIMEOUT) from None


def _report_final(task: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(task)
    elif task["status"] == "completed":
        out.print(
            f"[green]✓ completed[/green] {escape(task['type'])} {task['id']} "
            f"in {fmt_duration(task_duration(task))} (attempt {task['attempts']})"
        )
        out.print(Syntax(json.dumps(task["result"], indent=2), "json", background_color="default"))
    else:
        out.print(
            f"[red]✗ {task['status']}[/red] {escape(task['type'])} {task['id']} after {task['attempts']} attempt(s)"
        )
        if task.get("error"):
            out.print(Text(task["error"], style="red"))
    if task["status"] != "completed":
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
        task: dict[str, Any] = client.request("GET", f"/tasks/{task_id}")
        history: list[dict[str, Any]] | None = None
        if events or not json_out:
            history = client.request("GET", f"/tasks/{task_id}/events")
        if json_out:
            emit_json({**task, "events": history} if events else task)
        else:
            show_task(task, history)


def list_(
    status: Annotated[StatusChoice | None, typer.Option(help="Only tasks in this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    priority: Annotated[PriorityChoice | None, typer.Option(help="Only this priority.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Page size.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page's next cursor.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Follow the cursor to the last page.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """List tasks, newest first (one page, or every page with --all)."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status.value
    if type_:
        params["type"] = type_
    if priority:
        params["priority"] = priority.value
    with client_for(api_url, api_key) as client:
        items: list[dict[str, Any]] = []
        next_cursor = cursor
        while True:
            page = client.request(
                "GET", "/tasks", params={**params, **({"cursor": next_cursor} if next_cursor else {})}
            )
            items.extend(page["items"])
            next_cursor = page["next_cursor"]
            if not all_ or not next_cursor:
                break
        if json_out:
            emit_json({"items": items, "next_cursor": next_cursor})
            return
        if not items:
            out.print("no tasks")
            return
        out.print(tasks_table(items))
        if next_cursor:
            err.print(f"[dim]more: --cursor {next_cursor}  (or --all)[/dim]")


def _action(method: str, path: str, verb: str) -> Callable[..., None]:
    def command(
        task_id: TaskIdArg,
        api_url: ApiUrl = DEFAULT_URL,
        api_key: ApiKey = None,
        json_out: JsonOut = False,
    ) -> None:
        with client_for(api_url, api_key) as client:
            task = client.request(method, path.format(id=task_id))
        if json_out:
            emit_json(task if task is not None else {"id": task_id, "deleted": True})
        elif task is None:
            out.print(f"[green]✓[/green] {verb} {task_id}")
        else:
            shown, note = verb, ""
            if task["status"] == "canceled":
                shown = "canceled"
            elif verb == "cancel requested for" and task["status"] == "running":
                note = " (it is running; its worker stops it within about a second)"
            out.print(f"[green]✓[/green] {shown} {task['id']}: now {task['status']}{note}")

    return command


def stats(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """Counts by status, waiting tasks by priority, live workers."""
    with client_for(api_url, api_key) as client:
        data = client.request("GET", "/stats")
    if json_out:
        emit_json(data)
        return
    out.print(stats_table(data))
    out.print(stats_line(data))


def types(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """The task types the server can run, with their payload fields."""
    with client_for(api_url, api_key) as client:
        data: list[dict[str, Any]] = client.request("GET", "/task-types")
    if json_out:
        emit_json(data)
        return
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("TYPE", style="bold")
    table.add_column("PAYLOAD")
    table.add_column("DESCRIPTION")
    for t in data:
        schema = t["payload_schema"]
        required = set(schema.get("required", []))
        fields = ", ".join(f"{name}{'' if name in required else '?'}" for name in schema.get("properties", {}))
        table.add_row(escape(t["name"]), escape(fields), escape(t["description"]))
    out.print(table)


def watch(
    status: Annotated[StatusChoice | None, typer.Option(help="Only tasks in this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    priority: Annotated[PriorityChoice | None, typer.Option(help="Only this priority.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Rows in the table.")] = 15,
    interval: Annotated[float, typer.Option(min=0.2, help="Refresh at least this often (seconds).")] = 2.0,
    since: Annotated[
        str | None, typer.Option(help="With --json: replay events after this event id first (Last-Event-ID).")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """A live table of stats and the newest tasks; with --json, every task event as one JSON line. Ctrl-C ends."""
    # SIGTERM ends it as cleanly as Ctrl-C (exit 0), e.g. under `timeout` or a process supervisor.
    signal.signal(signal.SIGTERM, _interrupt)
    with client_for(api_url, api_key) as client:
        if json_out:
            _watch_events(client, status=status, type_=type_, priority=priority, since=since)
        else:
            _watch_table(client, status=status, type_=type_, priority=priority, limit=limit, interval=interval)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _watch_events(
    client: Client,
    *,
    status: StatusChoice | None,
    type_: str | None,
    priority: PriorityChoice | None,
    since: str | None,
) -> None:
    last_id = since
    failures = 0
    try:
        while True:
            try:
                for event, data, event_id in client.events(last_event_id=last_id):
                    last_id = event_id if event_id is not None else last_id
                    failures = 0
                    if event == "reset":
                        err.print(f"[yellow]warning:[/yellow] {escape(str(data.get('reason', 'events were missed')))}")
                    if event != "task" or not isinstance(data, dict):
                        continue
                    if (status and data["status"] != status.value) or (type_ and data["type"] != type_):
                        continue
                    if priority and data["priority"] != priority.value:
                        continue
                    emit_json(data, compact=True)
            except CliError as exc:
                if exc.code != EXIT_CONNECT:
                    raise
                failures += 1
                if failures == 1:
                    err.print(f"[yellow]warning:[/yellow] {escape(str(exc))}; reconnecting")
            time.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
    except KeyboardInterrupt:
        return


def _watch_table(
    client: Client,
    *,
    status: StatusChoice | None,
    type_: str | None,
    priority: PriorityChoice | None,
    limit: int,
    interval: float,
) -> None:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status.value
    if type_:
        params["type"] = type_
    if priority:
        params["priority"] = priority.value
    changed = threading.Event()
    live_state = {"stream": "connecting"}
    stop = threading.Event()

    def listen() -> None:
        # A separate client: httpx clients are not meant to be shared across threads.
        listener = Client(client.url, client.key)
        last_id: str | None = None
        try:
            while not stop.is_set():
                try:
                    for event, _, event_id in listener.events(last_event_id=last_id):
                        last_id = event_id if event_id is not None else last_id
                        live_state["stream"] = "live"
                        if event in ("task", "reset", "ready"):
                            changed.set()
                        if stop.is_set():
                            return
                except CliError:
                    pass
                live_state["stream"] = "reconnecting"
                stop.wait(2.0)
        finally:
            listener.close()

    def render() -> Group:
        data = client.request("GET", "/stats")
        page = client.request("GET", "/tasks", params=params)
        filters = " ".join(f"{k}={v}" for k, v in params.items() if k != "limit")
        header = Text()
        header.append("taskproc ", style="bold")
        header.append(client.url, style="dim")
        header.append(f"   {live_state['stream']}", style="green" if live_state["stream"] == "live" else "yellow")
        header.append(f"   {datetime.now().strftime('%H:%M:%S')}", style="dim")
        title = f"newest {limit} tasks" + (f" ({filters})" if filters else "")
        return Group(
            header,
            Panel(stats_table(data), expand=False),
            stats_line(data),
            tasks_table(page["items"], title=title, short_ids=out.width < 120),
        )

    thread = threading.Thread(target=listen, name="taskproc-watch-events", daemon=True)
    thread.start()
    try:
        last_refresh = time.monotonic()
        with Live(render(), console=out, auto_refresh=False, redirect_stderr=False) as live:
            while True:
                changed.wait(interval)
                # At most one refresh a second, however many events arrive.
                time.sleep(max(0.0, last_refresh + 1.0 - time.monotonic()) if changed.is_set() else 0.0)
                changed.clear()
                last_refresh = time.monotonic()
                try:
                    live.update(render(), refresh=True)
                except CliError as exc:
                    if exc.code != EXIT_CONNECT:
                        raise
                    live_state["stream"] = "API unreachable"
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()


def register(app: typer.Typer) -> None:
    """Add the client commands to the `taskproc` command."""
    panel = "Client commands (talk to a running API)"
    app.command(rich_help_panel=panel)(submit)
    app.command(rich_help_panel=panel)(get)
    app.command("list", rich_help_panel=panel)(list_)
    app.command("cancel", rich_help_panel=panel, help="Cancel a task (a running one is stopped by its worker).")(
        _action("POST", "/tasks/{id}/cancel", "cancel requested for")
    )
    app.command("retry", rich_help_panel=panel, help="Run a failed or canceled task again.")(
        _action("POST", "/tasks/{id}/retry", "retried")
    )
    app.command("delete", rich_help_panel=panel, help="Delete a finished task and its history.")(
        _action("DELETE", "/tasks/{id}", "deleted")
    )
    app.command(rich_help_panel=panel)(stats)
    app.command(rich_help_panel=panel)(types)
    app.command(rich_help_panel=panel)(watch)
