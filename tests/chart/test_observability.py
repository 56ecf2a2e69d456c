"""The Grafana dashboard (charts/taskproc/dashboards/taskproc.json) and the PrometheusRule use only the metric
names listed in DEVELOPERS.md (plus kube-state-metrics' kube_deployment_status_replicas and Prometheus' `up`),
cover the panels and alerts the observability issue asks for, and are well-formed PromQL as far as a parser-free
check can tell (balanced brackets, known functions, no unrendered Helm template)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .conftest import CHART, ROOT, Helm, Renders, find, parse_docs

DASHBOARD = CHART / "dashboards" / "taskproc.json"
HISTOGRAMS = {"taskproc_task_duration_seconds", "taskproc_task_queue_wait_seconds", "http_request_duration_seconds"}
STANDARD = {"kube_deployment_status_replicas", "up"}
FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "deriv", "delta", "histogram_quantile",
    "absent", "clamp_min", "clamp_max", "vector", "scalar", "label_values", "time",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def documented_metrics() -> set[str]:
    """Metric names from DEVELOPERS.md's "Metric names" section, with the series names histograms expose."""
    text = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    section = text.split("## Metric names", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"\b((?:taskproc|http)_[a-z_]+)(?:\{|\b)", section))
    assert {"taskproc_tasks_submitted_total", "http_requests_total", "taskproc_workers"} <= names, names
    for h in HISTOGRAMS:
        assert h in names, f"{h} is no longer documented"
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names in
    matchers or grouping clauses, durations, or Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^{}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\[\]]*\]", "", e)  # range / subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    e = re.sub(r"\$\w+", "", e)  # Grafana variables outside selectors
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        following = e[m.end() :].lstrip()[:1]
        if word in KEYWORDS or following == "(":
            assert word in KEYWORDS or word in FUNCTIONS, f"unknown function {word}() in {expr}"
            continue
        if re.fullmatch(r"\d+[smhdwy]?|e\d*", word):
            continue
        names.add(word)
    return names


def check_well_formed(expr: str) -> None:
    assert "{{" not in expr, f"unrendered template in {expr}"
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack, f"unbalanced {ch} in {expr}"
            assert stack.pop() == pairs[ch], f"mismatched {ch} in {expr}"
    assert not stack, f"unclosed {stack} in {expr}"
    assert not in_string, f"unterminated string in {expr}"
    for matchers in re.findall(r"\{([^{}]*)\}", expr):
        for matcher in filter(None, (m.strip() for m in matchers.split(","))):
            assert re.fullmatch(r'[a-zA-Z_]\w*\s*(=|!=|=~|!~)\s*"[^"]*"', matcher), f"bad matcher {matcher!r}"


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(x_bucket{job=~"a-(b|c)", le!=""}[5m]))) > 3 and on () up'
    assert metric_names(expr) == {"x_bucket", "up"}
    with pytest.raises(AssertionError):
        metric_names("made_up_fn(x)")
    with pytest.raises(AssertionError):
        check_well_formed("sum(rate(x[5m])")


# --- dashboard ----------------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_uses_only_documented_metrics() -> None:
    allowed = documented_metrics() | STANDARD
    used: set[str] = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            check_well_formed(target["expr"])
            used |= metric_names(target["expr"])
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert m, var["query"]["query"]
            used |= metric_names(m.group(1))
    assert used <= allowed, f"not in DEVELOPERS.md: {sorted(used - allowed)}"


def test_dashboard_panels() -> None:
    d = dashboard()
    assert d["uid"] == "taskproc"
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "namespace", "release"}
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    everything = " ".join(exprs.values())

    def panel_with(*needles: str) -> str:
        hits = [title for title, e in exprs.items() if all(n in e for n in needles)]
        assert hits, f"no panel uses {needles}"
        return hits[0]

    panel_with("taskproc_tasks_submitted_total")
    panel_with("taskproc_tasks_finished_total", "by (status)")
    panel_with("taskproc_queue_depth", "by (priority)")
    for hist in ("taskproc_task_queue_wait_seconds_bucket", "taskproc_task_duration_seconds_bucket"):
        title = panel_with(hist)
        assert all(f"histogram_quantile({q}," in exprs[title] for q in ("0.5", "0.95", "0.99")), title
    panel_with('status="failed"')
    panel_with("taskproc_tasks_retried_total")
    panel_with("taskproc_tasks_running")
    panel_with("taskproc_workers")
    # every worker Deployment: the catch-all <release>-worker and each pool's <release>-worker-<pool>
    panel_with("kube_deployment_status_replicas", '=~"$release-worker(-.+)?"')
    panel_with("http_requests_total")
    panel_with("http_request_duration_seconds_bucket")
    assert "$namespace" in everything
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}"


# --- PrometheusRule -----------------------------------------------------------------------------------------------


def rules(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rule = find(docs, "PrometheusRule", "taskproc")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_alerts_use_only_documented_metrics(helm4: Helm, renders: Renders) -> None:
    allowed = documented_metrics() | STANDARD
    alerts = rules(renders.docs(helm4, "monitoring"))
    for name, rule in alerts.items():
        check_well_formed(rule["expr"])
        used = metric_names(rule["expr"])
        assert used, name
        assert used <= allowed, f"{name}: not in DEVELOPERS.md: {sorted(used - allowed)}"
        assert 'namespace="taskproc"' in rule["expr"], f"{name} is not scoped to the release"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["labels"]["team"] == "platform"  # additionalLabels
        assert rule["annotations"]["summary"]
        assert "{{" not in rule["annotations"]["summary"]


def test_alerts_cover_the_issue(helm4: Helm, renders: Renders) -> None:
    alerts = rules(renders.docs(helm4, "monitoring"))
    assert set(alerts) == {
        "TaskprocBacklogGrowing",
        "TaskprocHighFailureRatio",
        "TaskprocNoLiveWorkers",
        "TaskprocTasksWaitingTooLong",
        "TaskprocApiHighErrorRatio",
    }
    backlog = alerts["TaskprocBacklogGrowing"]
    assert backlog["for"] == "10m"
    assert "deriv(" in backlog["expr"]
    assert "[10m:1m]" in backlog["expr"]
    assert "taskproc_queue_depth" in backlog["expr"]
    assert 'status="failed"' in alerts["TaskprocHighFailureRatio"]["expr"]
    no_workers = alerts["TaskprocNoLiveWorkers"]["expr"]
    assert "taskproc_workers" in no_workers
    assert "absent(" in no_workers
    assert alerts["TaskprocNoLiveWorkers"]["labels"]["severity"] == "critical"
    assert "taskproc_task_queue_wait_seconds_bucket" in alerts["TaskprocTasksWaitingTooLong"]["expr"]
    assert 'status=~"5.."' in alerts["TaskprocApiHighErrorRatio"]["expr"]
    assert 'job="taskproc-api"' in alerts["TaskprocApiHighErrorRatio"]["expr"]
    # Prometheus templating survives Helm: {{ $value }} reaches Prometheus
    assert "{{ $value" in alerts["TaskprocHighFailureRatio"]["annotations"]["description"]


def test_alert_thresholds_come_from_values(helm4: Helm) -> None:
    sets = (
        "monitoring.enabled=true",
        "monitoring.prometheusRule.backlogThreshold=777",
        "monitoring.prometheusRule.failureRatio=0.33",
        "monitoring.prometheusRule.waitSeconds=123",
        "monitoring.prometheusRule.api5xxRatio=0.07",
    )
    alerts = rules(parse_docs(helm4.template(sets=sets).stdout))
    assert alerts["TaskprocBacklogGrowing"]["expr"].split("\n")[0].endswith("> 777")
    assert alerts["TaskprocHighFailureRatio"]["expr"].rstrip().endswith("> 0.33")
    assert alerts["TaskprocTasksWaitingTooLong"]["expr"].rstrip().endswith("> 123")
    assert alerts["TaskprocApiHighErrorRatio"]["expr"].rstrip().endswith("> 0.07")


def test_rule_job_labels_match_the_service_monitors(helm4: Helm, renders: Renders) -> None:
    """Prometheus' job label is the scraped Service's name: the rules must select those names."""
    docs = renders.docs(helm4, "monitoring")
    services = {find(docs, "Service", f"-{component}")["metadata"]["name"] for component in ("api", "worker")}
    assert services == {"taskproc-api", "taskproc-worker"}
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert "jobLabel" not in sm["spec"], "a jobLabel would change the job names the rules select"
    exprs = " ".join(r["expr"] for r in rules(docs).values())
    assert 'job=~"taskproc-(api|worker)"' in exprs
