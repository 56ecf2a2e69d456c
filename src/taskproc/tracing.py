"""OpenTelemetry traces (docs/monitoring.md, "Traces"): the submit's trace context stored with the task, one
span per attempt in the worker, the trace id in log lines.

Off unless the standard environment asks for it (`on_from_env`); off, nothing of the OpenTelemetry SDK is
imported, no provider exists, and what is left per call is a check of a module global: `attempt()` hands back
one shared null context, `outcome()` and `status()` return at once, `send()` only parses the caller's
`traceparent` header so the task still records the caller's trace.

On (`setup`), the process has a global SDK TracerProvider exporting over OTLP/HTTP (the exporter and the batch
processor read the rest of the `OTEL_*` variables themselves), FastAPI's own telemetry makes the HTTP server
spans, and the spans follow the messaging conventions: the submit is a PRODUCER span `send <queue>` whose
context is what the task stores (`task.traceparent`, W3C), and each attempt is a CONSUMER span
`process <queue>`, a child of that context and linked to it; an attempt after a failed one also links the
failed attempt's span (`task.attempt_traceparent`, written with the failure). Producer and attempts are then
one trace, the submitter's when it sent a `traceparent`.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

    from taskproc.store import Claimed

log = logging.getLogger("taskproc.tracing")

SYSTEM = "taskproc"  # messaging.system
# version-traceid-parentid-flags (W3C Trace Context); later versions may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
MAX_DESCRIPTION = 500  # of a failed attempt's span status: the error text, cut

# Set by setup() when tracing is on; None means off everywhere in this process.
_tracer: Tracer | None = None
_OFF: AbstractContextManager[None] = nullcontext()


def on_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables ask for traces: `OTEL_TRACES_EXPORTER` names an exporter (not `none`), or
    an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`);
    `OTEL_SDK_DISABLED=true` wins over both. Unlike the SDK's own default (`otlp`), nothing set means off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(env)
    if exporters is not None:
        return bool(exporters)
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _exporters(env: Mapping[str, str]) -> list[str] | None:
    """The exporters `OTEL_TRACES_EXPORTER` names (`none` alone: an empty list); None when it is unset."""
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        return None
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return [n for n in names if n != "none"]


def enabled() -> bool:
    return _tracer is not None


def setup(role: str, env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process if the environment asks for it (see `on_from_env`); True if on.

    The service name is `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`), else
    `taskproc-<role>`. Exporters: `otlp` (OTLP over HTTP/protobuf, the default) and `console`; others are
    refused with a warning. Idempotent: a second call keeps the first provider.
    """
    global _tracer
    env = os.environ if env is None else env
    if _tracer is not None or not on_from_env(env):
        return _tracer is not None
    # Imported here only: with tracing off the SDK and the exporter (protobuf, requests) are never loaded.
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    from taskproc import __version__

    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"taskproc-{role}"}))
    provider = TracerProvider(resource=resource)  # reads OTEL_TRACES_SAMPLER(_ARG) itself
    exporters: list[SpanExporter] = []
    for name in _exporters(env) or ["otlp"]:
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol not in (None, "", "http/protobuf"):
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not available; exporting over http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout, compression: from OTEL_EXPORTER_OTLP_*
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not available here (otlp, console, none); ignored", name)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune it
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("taskproc", __version__)
    _install_log_fields()
    log.info("tracing on", extra={"count": len(exporters)})
    return True


def _install_log_fields() -> None:
    """Every log record made while a span is current carries its trace and span id (logging.FIELDS)."""
    from opentelemetry import trace

    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return record

    logging.setLogRecordFactory(factory)


# ---- W3C traceparent ------------------------------------------------------------------------------------------


def parse_traceparent(value: str | None) -> str | None:
    """`value` as a version-00 traceparent if it is a valid W3C one, else None (the spec says to ignore an
    invalid header, never to refuse the request). A later version is read as 00, as the spec asks."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return f"00-{trace_id}-{span_id}-{flags}"


def _span_context(traceparent: str | None) -> SpanContext | None:
    from opentelemetry.trace import SpanContext, TraceFlags

    if not traceparent:
        return None
    _, trace_id, span_id, flags = traceparent.split("-")
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))


def _traceparent_of(span: Span) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The traceparent of the current span (a worker's attempt); None with tracing off or no span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return _traceparent_of(trace.get_current_span())


# ---- the submit (API) ------------------------------------------------------------------------------------------


@dataclass
class Send:
    """What the submit stores with its tasks: the producer span's context (or the caller's, tracing off)."""

    traceparent: str | None
    span: Span | None = None

    def sent(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Name the message on the producer span (a single task's id; a batch is counted instead)."""
        if self.span is not None and len(task_ids) == 1:
            self.span.set_attribute("messaging.message.id", str(task_ids[0]))


def send(queues: Sequence[str], incoming: str | None, *, task_type: str | None = None) -> AbstractContextManager[Send]:
    """The producer span of a submit of `len(queues)` tasks (to these queues), around the insert and enqueue.

    Tracing off: no span; the tasks keep the caller's `incoming` traceparent if it is valid. On: a PRODUCER
    span `send <queue>`, child of the current span (FastAPI's server span, which already continued `incoming`),
    or of `incoming` when there is none; a batch is one span with `messaging.batch.message_count`, and its
    context is every task's creation context.
    """
    if _tracer is None:
        return nullcontext(Send(parse_traceparent(incoming)))
    return _send(_tracer, queues, incoming, task_type)


@contextmanager
def _send(tracer: Tracer, queues: Sequence[str], incoming: str | None, task_type: str | None) -> Iterator[Send]:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

    parent = None  # the current context
    if not trace.get_current_span().get_span_context().is_valid:
        caller = _span_context(parse_traceparent(incoming))
        parent = trace.set_span_in_context(NonRecordingSpan(caller)) if caller is not None else None
    names = sorted(set(queues))
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    if len(names) == 1:
        attributes["messaging.destination.name"] = names[0]
    if len(queues) > 1:
        attributes["messaging.batch.message_count"] = len(queues)
    if task_type is not None:
        attributes["taskproc.task.type"] = task_type
    name = f"send {names[0]}" if len(names) == 1 else "send"
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes, record_exception=False
    ) as span:
        try:
            yield Send(_traceparent_of(span), span)
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:MAX_DESCRIPTION]))
            raise


# ---- an attempt (worker) ---------------------------------------------------------------------------------------


def attempt(c: Claimed) -> AbstractContextManager[None]:
    """The CONSUMER span `process <queue>` of one attempt, current while it runs and records its outcome."""
    if _tracer is None:
        return _OFF
    return _attempt(_tracer, c)


@contextmanager
def _attempt(tracer: Tracer, c: Claimed) -> Iterator[None]:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode

    producer = _span_context(c.traceparent)
    previous = _span_context(c.attempt_traceparent)
    links = []
    if producer is not None:
        links.append(Link(producer, {"taskproc.link": "producer"}))
    if previous is not None:
        links.append(Link(previous, {"taskproc.link": "previous_attempt"}))
    # A child of the creation context (one message, so the conventions allow the parent besides the link): the
    # submit and its attempts are one trace. No creation context: a trace of its own, never an ambient one.
    parent = trace.set_span_in_context(NonRecordingSpan(producer)) if producer is not None else otel_context.Context()
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": c.queue,
        "messaging.message.id": str(c.id),
        "taskproc.task.type": c.type,
        "taskproc.task.attempt": c.attempts,
        "taskproc.task.priority": c.priority.value,
    }
    with tracer.start_as_current_span(
        f"process {c.queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            # A cancel or a shutdown aborted the attempt (CancelledError), or the worker itself failed.
            if span.is_recording() and "taskproc.task.outcome" not in getattr(span, "attributes", {}):
                span.set_attribute("taskproc.task.outcome", "aborted")
            if not isinstance(exc, Exception):
                raise
            span.set_status(Status(StatusCode.ERROR, str(exc)[:MAX_DESCRIPTION]))
            raise


def outcome(kind: str, error: str | None = None) -> None:
    """How the current attempt ended (taskproc_task_attempts_total's outcome: success, error, timeout, aborted);
    an error makes the span's status ERROR with the error text."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    span.set_attribute("taskproc.task.outcome", kind)
    if error is not None:
        span.set_attribute("error.type", kind if kind != "error" else error.split(":", 1)[0][:100])
        span.set_status(Status(StatusCode.ERROR, error[:MAX_DESCRIPTION]))


def status(value: str) -> None:
    """The status the current attempt left its task in (completed, retrying, failed, canceled, ..., stale)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attribute("taskproc.task.status", value)
