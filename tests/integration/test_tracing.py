"""OpenTelemetry traces with real processes: the API and a worker run the real SDK and export over OTLP/HTTP to
a receiver in this test, which decodes the protobuf requests; the caller's trace continues through the HTTP
server span, the producer span of the submit and every attempt's consumer span, and the trace id is on the
task and in the attempt's log lines. Without the OTEL_* variables nothing is exported, and the caller's trace id
is still kept with the task."""

from __future__ import annotations

import gzip
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from conftest import StackFactory
from support import ROOT, Stack, wait_for

pytestmark = pytest.mark.slow

SERVER, PRODUCER, CONSUMER = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind is not None else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Got:
    """One exported span, decoded, with the service that exported it."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]
    status: int
    description: str


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest (protobuf, maybe gzip)."""

    spans: list[Got] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.requests += 1
            for rs in request.resource_spans:
                service = str(_attrs(rs.resource.attributes).get("service.name"))
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            Got(
                                service=service,
                                name=s.name,
                                kind=s.kind,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent=s.parent_span_id.hex(),
                                attributes=_attrs(s.attributes),
                                links=[(ln.trace_id.hex(), ln.span_id.hex(), _attrs(ln.attributes)) for ln in s.links],
                                status=s.status.code,
                                description=s.status.message,
                            )
                        )

    def of_trace(self, trace_id: str) -> list[Got]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            got.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


BASE_ENV = {
    "TASKPROC_TASK_MODULES": "probe_tasks",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
}


def _otel_env(endpoint: str) -> dict[str, str]:
    return {
        **BASE_ENV,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def _caller() -> tuple[str, str, str]:
    """A caller's trace: (trace id, its span id, the traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _one(spans: list[Got], kind: int) -> Got:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _log_lines(stack: Stack, task_id: str) -> list[str]:
    return [line for w in stack.workers for line in w.log_path.read_text().splitlines() if f"task_id={task_id}" in line]


def test_a_trace_spans_the_api_and_the_worker(stack_factory: StackFactory, receiver: tuple[Receiver, str]) -> None:
    got, endpoint = receiver
    with stack_factory(workers=1, env=_otel_env(endpoint)) as stack:
        trace_id, caller_span, header = _caller()
        r = stack.client.post(
            "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}}, headers={"traceparent": header}
        )
        assert r.status_code == 201, r.text
        task = r.json()
        assert task["trace_id"] == trace_id
        stack.wait_status(task["id"], "completed")
        assert stack.get(task["id"])["trace_id"] == trace_id

        spans = wait_for(
            lambda: (s := got.of_trace(trace_id)) and {x.kind for x in s} >= {SERVER, PRODUCER, CONSUMER} and s,
            timeout=30,
            what="the server, producer and consumer spans of the caller's trace",
        )
        server, producer, consumer = _one(spans, SERVER), _one(spans, PRODUCER), _one(spans, CONSUMER)

        # API: FastAPI's server span continues the caller's; the submit's producer span is its child.
        assert server.service == producer.service == "taskproc-api"
        assert server.parent == caller_span
        assert server.name == "POST /api/v1/tasks"
        assert producer.parent == server.span_id
        assert producer.name == "send default"
        assert producer.attributes == {
            "messaging.system": "taskproc",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": "default",
            "messaging.message.id": task["id"],
            "taskproc.task.type": "add",
        }
        # What the task stores is the producer's context: the worker's span continues from there.
        [(stored,)] = stack.sql("SELECT traceparent FROM task WHERE id = %s", (task["id"],))
        assert stored == f"00-{trace_id}-{producer.span_id}-01"

        # Worker: the attempt is a consumer span, child of the producer and linked to it.
        assert consumer.service == "taskproc-worker"
        assert consumer.name == "process default"
        assert consumer.parent == producer.span_id
        assert consumer.links == [(trace_id, producer.span_id, {"taskproc.link": "producer"})]
        assert consumer.attributes == {
            "messaging.system": "taskproc",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "default",
            "messaging.message.id": task["id"],
            "taskproc.task.type": "add",
            "taskproc.task.attempt": 1,
            "taskproc.task.priority": "normal",
            "taskproc.task.outcome": "success",
            "taskproc.task.status": "completed",
        }
        assert consumer.status == Status.STATUS_CODE_UNSET

        assert all("tracing on" in p.tail(10_000) for p in [stack.api, *stack.workers] if p is not None)
        # The attempt's log lines carry its trace and span.
        lines = _log_lines(stack, task["id"])
        assert any("task started" in line for line in lines), lines
        assert any("task completed" in line for line in lines), lines
        for line in lines:
            assert f"trace_id={trace_id}" in line and f"span_id={consumer.span_id}" in line, line


def test_a_retried_task_links_its_attempts(stack_factory: StackFactory, receiver: tuple[Receiver, str]) -> None:
    got, endpoint = receiver
    with stack_factory(workers=1, env=_otel_env(endpoint)) as stack:
        trace_id, _, header = _caller()
        payload = {"redis_url": stack.redis_url, "log": "trace-probe", "duration_ms": 0, "fail": True}
        r = stack.client.post(
            "/api/v1/tasks",
            json={"type": "probe", "payload": payload, "max_retries": 1, "queue": "traced"},
            headers={"traceparent": header},
        )
        assert r.status_code == 201, r.text
        task = r.json()
        stack.wait_status(task["id"], "failed")

        spans = wait_for(
            lambda: (
                (s := got.of_trace(trace_id))
                and PRODUCER in {x.kind for x in s}
                and len([x for x in s if x.kind == CONSUMER]) == 2
                and s
            ),
            timeout=30,
            what="the producer span and two consumer spans",
        )
        producer = _one(spans, PRODUCER)
        assert producer.name == "send traced"
        first, second = sorted(
            (s for s in spans if s.kind == CONSUMER), key=lambda s: s.attributes["taskproc.task.attempt"]
        )
        assert [first.attributes["taskproc.task.attempt"], second.attributes["taskproc.task.attempt"]] == [1, 2]
        for attempt, status in ((first, "retrying"), (second, "failed")):
            assert attempt.name == "process traced"
            assert attempt.parent == producer.span_id
            assert attempt.attributes["messaging.destination.name"] == "traced"
            assert attempt.attributes["taskproc.task.outcome"] == "error"
            assert attempt.attributes["taskproc.task.status"] == status
            assert attempt.attributes["error.type"] == "RuntimeError"
            assert attempt.status == Status.STATUS_CODE_ERROR
            assert attempt.description == "RuntimeError: probe asked to fail"
        # The retry links the producer and the attempt that failed before it.
        assert first.links == [(trace_id, producer.span_id, {"taskproc.link": "producer"})]
        assert second.links == [
            (trace_id, producer.span_id, {"taskproc.link": "producer"}),
            (trace_id, first.span_id, {"taskproc.link": "previous_attempt"}),
        ]
        lines = _log_lines(stack, task["id"])
        failed = [line for line in lines if "task attempt failed" in line]
        assert len(failed) == 2, lines
        assert {line.split("span_id=")[1][:16] for line in failed} == {first.span_id, second.span_id}


def test_a_batch_is_one_producer_span_for_all_its_tasks(
    stack_factory: StackFactory, receiver: tuple[Receiver, str]
) -> None:
    got, endpoint = receiver
    with stack_factory(workers=1, env=_otel_env(endpoint)) as stack:
        trace_id, _, header = _caller()
        body = {"tasks": [{"type": "add", "payload": {"a": i, "b": 1}} for i in range(3)]}
        r = stack.client.post("/api/v1/tasks/batch", json=body, headers={"traceparent": header})
        assert r.status_code == 201, r.text
        items = r.json()["items"]
        assert {t["trace_id"] for t in items} == {trace_id}
        for t in items:
            stack.wait_status(t["id"], "completed")
        spans = wait_for(
            lambda: (
                (s := got.of_trace(trace_id))
                and PRODUCER in {x.kind for x in s}
                and len([x for x in s if x.kind == CONSUMER]) == 3
                and s
            ),
            timeout=30,
            what="the producer span and three consumer spans",
        )
        producer = _one(spans, PRODUCER)
        assert producer.attributes["messaging.batch.message_count"] == 3
        assert "messaging.message.id" not in producer.attributes
        consumers = [s for s in spans if s.kind == CONSUMER]
        assert {s.attributes["messaging.message.id"] for s in consumers} == {t["id"] for t in items}
        assert {s.parent for s in consumers} == {producer.span_id}


def test_without_otel_variables_the_caller_trace_is_still_kept(stack_factory: StackFactory) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        assert name not in os.environ, f"{name} is set in the test's environment"
    with stack_factory(workers=1, env=BASE_ENV) as stack:
        trace_id, _, header = _caller()
        r = stack.client.post(
            "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}}, headers={"traceparent": header}
        )
        assert r.status_code == 201, r.text
        task = r.json()
        # Not tracing, the API still keeps the caller's trace with the task (the header, checked and stored).
        assert task["trace_id"] == trace_id
        stack.wait_status(task["id"], "completed")
        bad = stack.client.post(
            "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}}, headers={"traceparent": "00-xyz"}
        )
        assert bad.status_code == 201 and bad.json()["trace_id"] is None
        lines = _log_lines(stack, task["id"])
        assert any("task completed" in line for line in lines), lines
        assert not any("trace_id=" in line for line in lines), lines
        assert all("tracing on" not in p.tail(10_000) for p in [stack.api, *stack.workers] if p is not None)


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}], ids=["sdk-disabled", "exporter-none"]
)
def test_switched_off_nothing_is_exported(
    stack_factory: StackFactory, receiver: tuple[Receiver, str], switch: dict[str, str]
) -> None:
    got, endpoint = receiver
    # Everything to export to the receiver, and the one variable that says not to.
    with stack_factory(workers=1, env={**_otel_env(endpoint), **switch}) as stack:
        _, _, header = _caller()
        r = stack.client.post(
            "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}}, headers={"traceparent": header}
        )
        assert r.status_code == 201, r.text
        stack.wait_status(r.json()["id"], "completed")
        # A stopped process has flushed whatever its span processor held: after this, nothing more can come.
        stack.stop_workers()
        assert stack.api is not None
        stack.api.stop()
    assert got.requests == 0 and got.spans == []
