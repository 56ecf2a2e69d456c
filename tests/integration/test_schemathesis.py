"""Property-based API conformance: schemathesis cases, generated from the OpenAPI document, sent over HTTP to
the real API process (the module's `stack`: API + 2 workers on the embedded Postgres and Redis).

Every response must not be a 5xx, and must match the documented status codes, content types and schemas; each
event of the event stream must match its documented `itemSchema`. The per-operation run is bounded and
derandomized. The stateful run is bounded but random: its steps change the server's state, which a
derandomized replay of the same choices can't follow (hypothesis then reports inconsistent generation).
"""

from __future__ import annotations

import copy
import uuid
import zlib
from typing import Any, ClassVar

import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
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
    base = spec["components"]["schemas"]["TaskCreate"]
    variants = []
    for task_type in registry.all():
        payload = task_type.payload_schema()
        if task_type.name == "sleep":
            payload["properties"]["duration_ms"]["maximum"] = 50
        # Each type with its own payload: a valid request is then one the API must accept (checked by ST202).
        properties = {**base["properties"], "type": {"type": "string", "const": task_type.name}, "payload": payload}
        required = {*base.get("required", []), "type", *(["payload"] if payload.get("required") else [])}
        variants.append({**base, "properties": properties, "required": sorted(required)})
    spec["components"]["schemas"]["TaskCreate"] = {"oneOf": variants}
    return spec


schema = schemathesis.openapi.from_dict(with_task_types(SPEC))
# The event stream never ends: schemathesis reads it until this many events (or the timeout) and checks each
# event against the documented `itemSchema` (ST108). The first chunk already carries `ready`.
schema.config.max_stream_events = 1


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


def test_event_stream_is_checked_event_by_event(stack: Stack) -> None:
    """The event stream is in the run, and its events are checked: an event off the documented shape fails."""
    operation = schema["/api/v1/events"]["GET"]
    case = operation.Case(query={"last_event_id": 0})
    response = case.call(base_url=stack.url, timeout=30)
    assert response.status_code == 200
    case.validate_response(response, checks=CHECKS)
    for bad in (b"id: 1\nevent: tsak\ndata: {}\n\n", b'id: 1\nevent: task\ndata: {"id": "one"}\n\n'):
        forged = Response(
            status_code=200,
            headers=response.headers,
            content=bad,
            request=response.request,
            elapsed=response.elapsed,
            verify=response.verify,
            message=response.message,
            http_version=response.http_version,
            encoding="utf-8",
        )
        with pytest.raises(BaseException, match=r"SSE event violates schema"):
            case.validate_response(forged, checks=CHECKS)


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


STATEFUL_SCENARIOS = 40
# Not positive_data_acceptance: a schema-valid but made-up `cursor` or task payload is rightly refused (422).
STATEFUL_CHECKS = [*CHECKS, negative_data_rejection, use_after_free, ensure_resource_availability]


class APIWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Chains of calls linked by the responses (ids from created tasks into get, cancel, retry, update,
    delete and events), as schemathesis infers them from the schema."""

    base_url = ""
    steps = 0
    failures: ClassVar[list[BaseException]] = []

    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
        return {"base_url": self.base_url, "timeout": 30}

    def validate_response(
        self, response: Response, case: schemathesis.Case, additional_checks: Any = None, **kwargs: Any
    ) -> None:
        type(self).steps += 1
        try:
            case.validate_response(response, checks=STATEFUL_CHECKS, transport_kwargs=kwargs, recorder=self.recorder)
        except BaseException as exc:
            type(self).failures.append(exc)
            raise


def test_stateful_workflows_conform(stack: Stack) -> None:
    APIWorkflow.base_url = stack.url
    APIWorkflow.steps = 0
    APIWorkflow.failures.clear()
    try:
        APIWorkflow.run(
            settings=settings(
                max_examples=STATEFUL_SCENARIOS,
                stateful_step_count=6,
                deadline=None,
                # No shrinking: the steps change the server's state, so a replay can't draw the same rules.
                phases=[Phase.generate],
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    except hypothesis.errors.Flaky:
        # Which links can be followed depends on what the server answered before (a key seen already gives
        # 200, not 201), so hypothesis may find its choices inconsistent and stop early; schemathesis' own
        # engine treats that the same way. Every step that ran was checked, and none may have failed.
        if APIWorkflow.failures:
            raise APIWorkflow.failures[0] from None
    assert not APIWorkflow.failures
    assert APIWorkflow.steps >= 20, f"only {APIWorkflow.steps} stateful steps ran"
