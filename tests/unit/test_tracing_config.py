"""taskproc.tracing without I/O: which environments turn tracing on, the W3C traceparent check, and that off
(the default) loads nothing of the OpenTelemetry SDK in any role."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taskproc import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_SERVICE_NAME": "billing"}, False),
    ],
)
def test_which_environments_turn_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.on_from_env(env) is on


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        (f"00-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-01"),
        (f"00-{TRACE}-{SPAN}-00", f"00-{TRACE}-{SPAN}-00"),
        (f" 00-{TRACE}-{SPAN}-01 ", f"00-{TRACE}-{SPAN}-01"),
        # A later version is read as 00, its extra fields dropped (W3C Trace Context, "versioning").
        (f"cc-{TRACE}-{SPAN}-01-what-comes-next", f"00-{TRACE}-{SPAN}-01"),
        (None, None),
        ("", None),
        ("00-xyz", None),
        (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is invalid
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 has exactly four fields
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-{SPAN}-01", None),  # upper-case hex is invalid
        (f"00-{TRACE}-{SPAN}-1", None),
        (f"00-{TRACE}a-{SPAN}-01", None),
    ],
)
def test_traceparent_check(header: str | None, stored: str | None) -> None:
    assert tracing.parse_traceparent(header) == stored


def test_off_the_helpers_do_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    tracing.outcome("error", "RuntimeError: x")
    tracing.status("failed")
    with tracing.send(["default"], f"00-{TRACE}-{SPAN}-01") as send:
        assert send.traceparent == f"00-{TRACE}-{SPAN}-01"
        assert send.span is None
        send.sent([])


# Builds the API app and the worker's settings in a fresh interpreter, as `taskproc api` and `taskproc worker`
# do, then prints the loaded OpenTelemetry SDK and exporter modules and whether tracing is on.
PROBE = """
import json, sys
from taskproc import tracing
from taskproc.api.main import create_app
import taskproc.worker.main
create_app()
tracing.setup("worker")
heavy = ("opentelemetry.sdk", "opentelemetry.exporter", "google.protobuf")
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
print(json.dumps({"on": tracing.enabled(), "loaded": loaded}))
"""


def _probe(env: dict[str, str]) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, "TASKPROC_DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_off_by_default_the_sdk_is_never_imported() -> None:
    assert _probe({}) == {"on": False, "loaded": []}


def test_switched_off_the_sdk_is_never_imported() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
        "OTEL_SDK_DISABLED": "true",
    }
    assert _probe(env) == {"on": False, "loaded": []}


def test_the_probe_sees_the_sdk_when_tracing_is_on() -> None:
    # Without this, an empty list above could mean the probe never looks at the right names.
    result = _probe({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert result["on"] is True
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert "opentelemetry.sdk.trace" in loaded
    assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in loaded


SERVICE_PROBE = """
import json
from opentelemetry import trace
from taskproc import tracing
tracing.setup("worker")
print(json.dumps(dict(trace.get_tracer_provider().resource.attributes)))
"""


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "taskproc-worker"),
        ({"OTEL_SERVICE_NAME": "billing-worker"}, "billing-worker"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"}, "from-attrs"),
    ],
)
def test_service_name(env: dict[str, str], name: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", SERVICE_PROBE],
        env={**clean, "OTEL_TRACES_EXPORTER": "console", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    attributes = json.loads(proc.stdout.splitlines()[-1])
    assert attributes["service.name"] == name
    assert attributes["service.version"]
