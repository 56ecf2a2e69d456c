"""Every /api/v1 endpoint, in process (the app through httpx.ASGITransport, two arq workers as tasks of the
test's loop) against the real Postgres and Redis."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime

import pytest

from inprocess import InProcess
from support import wait_for

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---- create -------------------------------------------------------------------------------------------


async def test_create_returns_201_location_and_the_task(inprocess: InProcess) -> None:
    r = await inprocess.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 2, "b": 40}})
    assert r.status_code == 201
    task = r.json()
    assert r.headers["location"] == f"/api/v1/tasks/{task['id']}"
    uuid.UUID(task["id"])
    assert task["type"] == "add"
    assert task["payload"] == {"a": 2, "b": 40}
    assert task["priority"] == "normal"
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["max_retries"] == 3
    assert task["idempotency_key"] is None
    for field in ("created_at", "updated_at"):
        assert ISO_Z.match(task[field]), task[field]
    assert task["started_at"] is None and task["finished_at"] is None
    done = await inprocess.wait_status(task["id"], "completed")
    assert done["result"] == {"sum": 42}
    assert ISO_Z.match(done["started_at"]) and ISO_Z.match(done["finished_at"])
    assert done["attempts"] == 1
    assert _ts(done["created_at"]) <= _ts(done["started_at"]) <= _ts(done["finished_at"])


@pytest.mark.parametrize(
    ("body", "loc_part"),
    [
        ({"type": "nope", "payload": {}}, "type"),
        ({"type": "add", "payload": {"a": 1}}, "b"),
        ({"type": "add", "payload": {"a": "x", "b": 1}}, "a"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "priority": "urgent"}, "priority"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "max_retries": 21}, "max_retries"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "max_retries": -1}, "max_retries"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "timeout_s": 0}, "timeout_s"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "delay_s": -1}, "delay_s"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "idempotency_key": "k" * 201}, "idempotency_key"),
        ({"type": "add", "payload": {"a": 1, "b": 2}, "surprise": 1}, "surprise"),
        ({"type": "sleep", "payload": {"duration_ms": 600_001}}, "duration_ms"),
        ({"type": "sleep", "payload": {"duration_ms": 1, "fail_rate": 1.5}}, "fail_rate"),
        ({"type": "sum_pairs", "payload": {"pairs": []}}, "pairs"),
        ({"payload": {}}, "type"),
    ],
)
async def test_create_rejects_invalid_input_with_422(
    inprocess: InProcess, body: dict[str, object], loc_part: str
) -> None:
    before = inprocess.sql("SELECT count(*) FROM task")[0][0]
    r = await inprocess.client.post("/api/v1/tasks", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    assert any(loc_part in [str(p) for p in d["loc"]] for d in detail), detail
    assert inprocess.sql("SELECT count(*) FROM task")[0][0] == before


async def test_idempotency_key_in_body_returns_existing_with_200(inprocess: InProcess) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await inprocess.client.post(
        "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}, "idempotency_key": key}
    )
    second = await inprocess.client.post(
        "/api/v1/tasks", json={"type": "add", "payload": {"a": 9, "b": 9}, "idempotency_key": key}
    )
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["payload"] == {"a": 1, "b": 1}
    assert second.headers["location"] == first.headers["location"]


async def test_idempotency_key_header(inprocess: InProcess) -> None:
    key = f"hdr-{uuid.uuid4()}"
    body = {"type": "add", "payload": {"a": 1, "b": 1}}
    first = await inprocess.client.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": key})
    second = await inprocess.client.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["idempotency_key"] == key


async def test_concurrent_requests_with_one_key_create_one_task_that_runs_once(inprocess: InProcess) -> None:
    key = f"race-{uuid.uuid4()}"
    results: list[tuple[int, str]] = []

    async def submit() -> None:
        r = await inprocess.client.post(
            "/api/v1/tasks",
            json={"type": "sleep", "payload": {"duration_ms": 50}, "idempotency_key": key},
        )
        results.append((r.status_code, r.json()["id"]))

    # All sixteen in flight at once: each yields at its first round trip, so their inserts race in Postgres.
    await asyncio.gather(*(submit() for _ in range(16)))
    assert sorted(code for code, _ in results).count(201) == 1, results
    assert {code for code, _ in results} <= {200, 201}
    ids = {task_id for _, task_id in results}
    assert len(ids) == 1
    (task_id,) = ids
    assert inprocess.sql("SELECT count(*) FROM task WHERE idempotency_key = %s", (key,))[0][0] == 1
    await inprocess.wait_status(task_id, "completed")
    statuses = [e["status"] for e in await inprocess.events(task_id)]
    assert statuses.count("running") == 1 and statuses.count("completed") == 1


# ---- batch --------------------------------------------------------------------------------------------


async def test_batch_creates_all_in_order(inprocess: InProcess) -> None:
    tasks = [{"type": "add", "payload": {"a": i, "b": 1}} for i in range(25)]
    r = await inprocess.client.post("/api/v1/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert [t["payload"]["a"] for t in items] == list(range(25))
    for t in items:
        assert (await inprocess.wait_status(t["id"], "completed"))["result"] == {"sum": t["payload"]["a"] + 1}


async def test_batch_with_one_bad_item_names_its_index_and_creates_nothing(inprocess: InProcess) -> None:
    marker = uuid.uuid4().hex
    tasks: list[dict[str, object]] = [
        {"type": "add", "payload": {"a": 1, "b": 2}, "idempotency_key": f"{marker}-{i}"} for i in range(10)
    ]
    tasks[7] = {"type": "add", "payload": {"a": 1}, "idempotency_key": f"{marker}-7"}
    r = await inprocess.client.post("/api/v1/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 422
    locs = [d["loc"] for d in r.json()["detail"]]
    assert any(loc[:3] == ["body", "tasks", 7] for loc in locs), locs
    assert inprocess.sql("SELECT count(*) FROM task WHERE idempotency_key LIKE %s", (f"{marker}-%",))[0][0] == 0


async def test_batch_schema_error_names_index(inprocess: InProcess) -> None:
    tasks: list[dict[str, object]] = [{"type": "add", "payload": {"a": 1, "b": 2}} for _ in range(5)]
    tasks[3]["priority"] = "whenever"
    r = await inprocess.client.post("/api/v1/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 422
    assert any(d["loc"][:3] == ["body", "tasks", 3] for d in r.json()["detail"])


@pytest.mark.parametrize("count", [0, 1001])
async def test_batch_size_bounds(inprocess: InProcess, count: int) -> None:
    tasks = [{"type": "add", "payload": {"a": 1, "b": 2}}] * count
    r = await inprocess.client.post("/api/v1/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 422


async def test_batch_duplicate_keys_inside_batch_rejected(inprocess: InProcess) -> None:
    key = uuid.uuid4().hex
    tasks = [{"type": "add", "payload": {"a": 1, "b": 2}, "idempotency_key": key}] * 2
    r = await inprocess.client.post("/api/v1/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 422
    assert any(d["loc"][:3] == ["body", "tasks", 1] for d in r.json()["detail"])


# ---- get / list ---------------------------------------------------------------------------------------


async def test_get_unknown_is_404_and_malformed_is_422(inprocess: InProcess) -> None:
    r = await inprocess.client.get(f"/api/v1/tasks/{uuid.uuid4()}")
    assert r.status_code == 404 and "detail" in r.json()
    r = await inprocess.client.get("/api/v1/tasks/not-a-uuid")
    assert r.status_code == 422 and "detail" in r.json()


async def test_list_newest_first_with_filters(inprocess: InProcess) -> None:
    t_type = "text_stats"
    made = [
        (await inprocess.submit(t_type, {"text": f"hello {i}"}, priority=("high" if i % 2 else "low")))["id"]
        for i in range(6)
    ]
    r = await inprocess.client.get("/api/v1/tasks", params={"type": t_type, "limit": 200})
    assert r.status_code == 200
    ids = [t["id"] for t in r.json()["items"]]
    positions = [ids.index(i) for i in made]
    assert positions == sorted(positions, reverse=True), "newest first"
    for t in r.json()["items"]:
        assert t["type"] == t_type
    r = await inprocess.client.get("/api/v1/tasks", params={"type": t_type, "priority": "high", "limit": 200})
    assert {t["priority"] for t in r.json()["items"]} == {"high"}
    for task_id in made:
        await inprocess.wait_status(task_id, "completed")
    r = await inprocess.client.get("/api/v1/tasks", params={"status": "completed", "type": t_type, "limit": 200})
    assert set(made) <= {t["id"] for t in r.json()["items"]}
    assert {t["status"] for t in r.json()["items"]} == {"completed"}


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"status": "sleeping"}, {"priority": "urgent"}, {"cursor": "!!not-a-cursor!!"}],
)
async def test_list_rejects_bad_query(inprocess: InProcess, params: dict[str, object]) -> None:
    r = await inprocess.client.get("/api/v1/tasks", params=params)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()


async def test_cursor_pagination_while_tasks_arrive_never_repeats_or_skips(inprocess: InProcess) -> None:
    marker = f"page-{uuid.uuid4().hex[:8]}"
    original = [(await inprocess.submit("text_stats", {"text": marker}, delay_s=3600))["id"] for _ in range(23)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, object] = {"limit": 5, "status": "pending", "type": "text_stats"}
        if cursor:
            params["cursor"] = cursor
        page = (await inprocess.client.get("/api/v1/tasks", params=params)).json()
        seen.extend(t["id"] for t in page["items"] if t["payload"]["text"] == marker)
        # New tasks arrive between pages; they are newer than the cursor and must not disturb the walk.
        await inprocess.submit("text_stats", {"text": marker}, delay_s=3600)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    originals_seen = [i for i in seen if i in set(original)]
    assert len(originals_seen) == len(set(originals_seen)), "a task was repeated"
    assert set(originals_seen) == set(original), "a task was skipped"
    assert originals_seen == list(reversed(original))


# ---- patch / cancel / retry / delete ------------------------------------------------------------------


async def test_patch_priority_of_pending_task(inprocess: InProcess) -> None:
    task = await inprocess.submit("add", delay_s=3600)
    r = await inprocess.client.patch(f"/api/v1/tasks/{task['id']}", json={"priority": "high"})
    assert r.status_code == 200 and r.json()["priority"] == "high"
    assert (await inprocess.get(task["id"]))["priority"] == "high"
    r = await inprocess.client.patch(f"/api/v1/tasks/{task['id']}", json={"priority": "soon"})
    assert r.status_code == 422


async def test_patch_after_start_is_409_and_unknown_404(inprocess: InProcess) -> None:
    task = await inprocess.submit("add")
    await inprocess.wait_status(task["id"], "completed")
    r = await inprocess.client.patch(f"/api/v1/tasks/{task['id']}", json={"priority": "low"})
    assert r.status_code == 409 and "detail" in r.json()
    r = await inprocess.client.patch(f"/api/v1/tasks/{uuid.uuid4()}", json={"priority": "low"})
    assert r.status_code == 404


async def test_cancel_pending_task_is_immediate_and_it_never_runs(inprocess: InProcess) -> None:
    task = await inprocess.submit("sleep", {"duration_ms": 0}, delay_s=1.0)
    r = await inprocess.client.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    # Past its run time, a canary submitted after it has completed; the canceled one still never started.
    canary = await inprocess.submit("sleep", {"duration_ms": 0}, delay_s=1.5)
    await inprocess.wait_status(canary["id"], "completed")
    after = await inprocess.get(task["id"])
    assert after["status"] == "canceled" and after["attempts"] == 0 and after["started_at"] is None
    assert "running" not in [e["status"] for e in await inprocess.events(task["id"])]


async def test_cancel_running_task_is_aborted_within_two_seconds(inprocess: InProcess) -> None:
    task = await inprocess.submit("sleep", {"duration_ms": 60_000})
    await inprocess.wait_status(task["id"], "running")
    r = await inprocess.client.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert r.status_code == 200
    canceled = await inprocess.wait_status(task["id"], "canceled", timeout=2.0)
    assert canceled["finished_at"] is not None
    statuses = [e["status"] for e in await inprocess.events(task["id"])]
    assert statuses[-2:] == ["running", "canceled"]


async def test_cancel_terminal_is_409(inprocess: InProcess) -> None:
    task = await inprocess.submit("add")
    await inprocess.wait_status(task["id"], "completed")
    r = await inprocess.client.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert r.status_code == 409
    assert (await inprocess.client.post(f"/api/v1/tasks/{uuid.uuid4()}/cancel")).status_code == 404


async def test_retry_failed_task_runs_again_with_fresh_attempts(inprocess: InProcess) -> None:
    task = await inprocess.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=0)
    failed = await inprocess.wait_status(task["id"], "failed")
    assert failed["attempts"] == 1 and "simulated failure" in failed["error"]
    r = await inprocess.client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert r.status_code == 200
    assert r.json()["status"] == "pending" and r.json()["attempts"] == 0 and r.json()["error"] is None
    again = await inprocess.wait_status(task["id"], "failed")
    assert again["attempts"] == 1
    statuses = [e["status"] for e in await inprocess.events(task["id"])]
    assert statuses == ["pending", "running", "failed", "pending", "running", "failed"]


async def test_retry_canceled_task(inprocess: InProcess) -> None:
    task = await inprocess.submit("add", delay_s=3600)
    await inprocess.client.post(f"/api/v1/tasks/{task['id']}/cancel")
    r = await inprocess.client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert r.status_code == 200
    assert (await inprocess.wait_status(task["id"], "completed"))["result"] == {"sum": 3}


async def test_retry_of_non_failed_is_409(inprocess: InProcess) -> None:
    task = await inprocess.submit("add")
    await inprocess.wait_status(task["id"], "completed")
    assert (await inprocess.client.post(f"/api/v1/tasks/{task['id']}/retry")).status_code == 409
    pending = await inprocess.submit("add", delay_s=3600)
    assert (await inprocess.client.post(f"/api/v1/tasks/{pending['id']}/retry")).status_code == 409
    assert (await inprocess.client.post(f"/api/v1/tasks/{uuid.uuid4()}/retry")).status_code == 404


async def test_delete_only_terminal(inprocess: InProcess) -> None:
    pending = await inprocess.submit("add", delay_s=3600)
    r = await inprocess.client.delete(f"/api/v1/tasks/{pending['id']}")
    assert r.status_code == 409
    done = await inprocess.submit("add")
    await inprocess.wait_status(done["id"], "completed")
    r = await inprocess.client.delete(f"/api/v1/tasks/{done['id']}")
    assert r.status_code == 204 and r.content == b""
    assert (await inprocess.client.get(f"/api/v1/tasks/{done['id']}")).status_code == 404
    assert (await inprocess.client.get(f"/api/v1/tasks/{done['id']}/events")).status_code == 404
    assert inprocess.sql("SELECT count(*) FROM task_event WHERE task_id = %s", (done["id"],))[0][0] == 0
    assert (await inprocess.client.delete(f"/api/v1/tasks/{uuid.uuid4()}")).status_code == 404


# ---- events, stats, types, probes ---------------------------------------------------------------------


async def test_events_are_the_history_in_order(inprocess: InProcess) -> None:
    task = await inprocess.submit("add")
    await inprocess.wait_status(task["id"], "completed")
    events = await inprocess.events(task["id"])
    assert [e["status"] for e in events] == ["pending", "running", "completed"]
    assert [e["attempt"] for e in events] == [0, 1, 1]
    times = [_ts(e["at"]) for e in events]
    assert times == sorted(times)
    assert all(ISO_Z.match(e["at"]) for e in events)
    assert (await inprocess.client.get(f"/api/v1/tasks/{uuid.uuid4()}/events")).status_code == 404


async def test_stats_shape_and_workers(inprocess: InProcess) -> None:
    r = await inprocess.client.get("/api/v1/stats")
    assert r.status_code == 200
    stats = r.json()
    assert set(stats) == {"tasks", "queue", "retried_total", "workers", "waiting_no_worker", "waiting_no_queue_worker"}
    assert set(stats["tasks"]) == {"pending", "running", "retrying", "completed", "failed", "canceled", "total"}
    assert set(stats["queue"]) == {"high", "normal", "low"}
    assert stats["tasks"]["total"] == sum(v for k, v in stats["tasks"].items() if k != "total")
    assert stats["workers"] == 2


async def test_task_types_lists_builtins_with_schemas(inprocess: InProcess) -> None:
    r = await inprocess.client.get("/api/v1/task-types")
    assert r.status_code == 200
    types = {t["name"]: t for t in r.json()}
    assert {"sleep", "add", "sum_pairs", "text_stats"} <= set(types)
    assert types["sleep"]["payload_schema"]["properties"]["duration_ms"]["maximum"] == 600_000
    assert set(types["add"]["payload_schema"]["required"]) == {"a", "b"}
    assert all(t["description"] for t in types.values())


@pytest.mark.parametrize(
    ("type_", "payload", "result"),
    [
        ("add", {"a": 1.5, "b": 2}, {"sum": 3.5}),
        ("sum_pairs", {"pairs": [[1, 2], [3, 4], [-1, 1]]}, {"results": [3, 7, 0]}),
        ("sleep", {"duration_ms": 10}, {"slept_ms": 10}),
        (
            "text_stats",
            {"text": "the cat and the hat\nthe end"},
            {
                "characters": 27,
                "words": 7,
                "lines": 2,
                "top_words": [["the", 3], ["cat", 1], ["and", 1], ["hat", 1], ["end", 1]],
            },
        ),
    ],
)
async def test_builtin_types(
    inprocess: InProcess, type_: str, payload: dict[str, object], result: dict[str, object]
) -> None:
    task = await inprocess.submit(type_, payload)
    assert (await inprocess.wait_status(task["id"], "completed"))["result"] == result


async def test_probes_and_metrics(inprocess: InProcess) -> None:
    assert (await inprocess.client.get("/healthz")).json() == {"status": "ok"}
    ready = await inprocess.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    m = await inprocess.client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert "http_requests_total" in m.text


async def test_openapi_docs_served(inprocess: InProcess) -> None:
    spec = (await inprocess.client.get("/openapi.json")).json()
    for path in ("/api/v1/tasks", "/api/v1/tasks/batch", "/api/v1/tasks/{task_id}", "/api/v1/stats"):
        assert path in spec["paths"]
    assert spec["paths"]["/api/v1/tasks"]["post"]["summary"] == "Submit a task."
    assert (await inprocess.client.get("/docs")).status_code == 200
    assert (await inprocess.client.get("/redoc")).status_code == 200


async def test_delay_is_respected(inprocess: InProcess) -> None:
    task = await inprocess.submit("add", delay_s=1.5)
    assert task["status"] == "pending"
    done = await inprocess.wait_status(task["id"], "completed")
    assert (_ts(done["started_at"]) - _ts(done["created_at"])).total_seconds() >= 1.5
    assert wait_for(lambda: True)
