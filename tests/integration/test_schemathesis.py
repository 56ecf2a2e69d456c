"""Property-based API conformance: schemathesis cases, generated from the OpenAPI document, sent over HTTP to
the real API process (the module's `stack`: API + 2 workers on the embedded Postgres and Redis).

Every response must not be a 5xx, and must match the documented status codes, content types and schemas.
Bounded and derandomized, so it costs the same on every run.
"""

from __future__ import annotations

import copy
import uuid
import zlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from taskproc.api.main import create_app
from taskproc.config import Settings
from taskproc.tasks.registry import registry

from support import Stack

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 200
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# The schema the API serves, built from the same code; test_served_schema_is_the_one_tested checks they match.
SPEC: dict[str, Any] = create_app(Settings()).openapi()


def with_task_types(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec, with TaskCreate narrowed to the registered types and their payload schemas.

    The served schema only says `type` is a string and `payload` an object (types are pluggable), so cases
    generated from it are almost never accepted; this lets a good share of them create real tasks (201) whose
    answers are then checked too. Sleeps are kept short so the workers stay free.
    """
    spec = copy.deepcopy(spec)
    payloads = []
    for task_type in registry.all():
        payload = task_type.payload_schema()
        if task_type.name == "sleep":
            payload["properties"]["duration_ms"]["maximum"] = 50
        payloads.append(payload)
    create = spec["components"]["schemas"]["TaskCreate"]["properties"]
    create["type"] = {"type": "string", "enum": [t.name for t in registry.all()]}
    create["payload"] = {"anyOf": payloads}
    return spec


# Server-sent events never end, so a request/response check does not apply to them (tests/integration has
# dedicated SSE tests).
schema = schemathesis.openapi.from_dict(with_task_types(SPEC)).exclude(path="/api/v1/events")


@pytest.fixture(scope="module")
def existing_tasks(stack: Stack) -> list[str]:
    """Real tasks in different states, so that operations on a task id don't only ever meet 404."""
    ids = [
        stack.submit("add", {"a": 1, "b": 2}, delay_s=3600)["id"],
        stack.submit("add", {"a": 1, "b": 2})["id"],
        stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=0)["id"],
    ]
    canceled = stack.submit("add", {"a": 1, "b": 2}, delay_s=3600)["id"]
    assert stack.client.post(f"/api/v1/tasks/{canceled}/cancel").status_code == 200
    stack.wait_status(ids[1], "completed")
    stack.wait_status(ids[2], "failed")
    return [*ids, canceled]


def use_existing_task(case: schemathesis.Case, existing: list[str]) -> None:
    """Point about half of the well-formed task ids at real tasks (chosen from the case, so reproducibly)."""
    task_id = (case.path_parameters or {}).get("task_id")
    try:
        uuid.UUID(str(task_id))
    except ValueError:
        return
    pick = zlib.crc32(f"{case.method} {task_id}".encode()) % (2 * len(existing))
    if pick < len(existing):
        case.path_parameters = {**(case.path_parameters or {}), "task_id": existing[pick]}


def test_served_schema_is_the_one_tested(stack: Stack) -> None:
    assert stack.client.get("/openapi.json").json() == SPEC


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case, stack: Stack, existing_tasks: list[str]) -> None:
    use_existing_task(case, existing_tasks)
    case.call_and_validate(base_url=stack.url, checks=CHECKS, timeout=30)
