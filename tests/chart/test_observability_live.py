"""Every metric the Grafana dashboard and the PrometheusRule use is one that a live API or worker exposes,
and every expression parses as PromQL (promql-parser, the Rust parser behind several Prometheus tools)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from taskproc.dev.embedded import free_port

from .conftest import CHART, Helm, Renders, find
from conftest import StackFactory

# Series that come from elsewhere: kube-state-metrics and Prometheus itself.
EXTERNAL = {"kube_deployment_status_replicas", "up"}
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def selectors(node: Any) -> set[str]:
    """Metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    names: set[str] = set()
    for attr in ("vector_selector", "expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            names |= selectors(child)
    for arg in getattr(node, "args", None) or []:
        names |= selectors(arg)
    return names


def parse(expr: str) -> set[str]:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return selectors(promql_parser.parse(expr))


def dashboard_exprs() -> list[str]:
    board = json.loads((CHART / "dashboards" / "taskproc.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert m is not None
            exprs.append(m.group(1))
    return exprs


def alert_exprs(helm4: Helm, renders: Renders) -> dict[str, str]:
    rule = find(renders.docs(helm4, "monitoring"), "PrometheusRule", "taskproc")
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def exposed(url: str) -> set[str]:
    text = httpx.get(url, timeout=10).text
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_expression_parses(helm4: Helm, renders: Renders) -> None:
    for expr in [*dashboard_exprs(), *alert_exprs(helm4, renders).values()]:
        assert parse(expr), f"no metric in {expr}"


def test_parser_rejects_broken_promql() -> None:
    try:
        promql_parser.parse("sum(rate(x[5m])")
    except ValueError:
        return
    raise AssertionError("promql_parser accepted an unclosed parenthesis")


def test_dashboard_and_alerts_use_only_metrics_the_processes_expose(
    helm4: Helm, renders: Renders, stack_factory: StackFactory
) -> None:
    used: set[str] = set()
    for expr in [*dashboard_exprs(), *alert_exprs(helm4, renders).values()]:
        used |= parse(expr)
    with stack_factory(workers=0) as stack:
        port = free_port()
        stack.start_worker(metrics_port=port)
        stack.wait_ready(1)
        # One task of each outcome, so that every labelled series exists at least once.
        ok = stack.submit("add")
        bad = stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=1)
        slow = stack.submit("sleep", {"duration_ms": 30_000})
        stack.wait_status(slow["id"], "running")
        stack.client.post(f"/api/v1/tasks/{slow['id']}/cancel")
        for t in (ok, bad, slow):
            stack.wait_status(t["id"], {"completed", "failed", "canceled"})
        stack.client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000")
        live = exposed(f"{stack.url}/metrics") | exposed(f"http://127.0.0.1:{port}/metrics")
    missing = used - live - EXTERNAL
    assert not missing, f"dashboard/alerts use metrics no process exposes: {sorted(missing)}"
    assert {"taskproc_tasks_submitted_total", "taskproc_workers", "taskproc_queue_depth"} <= used
