"""A real Prometheus (Debian's `prometheus` 2.42) scrapes a live API and live workers with the labels the chart's
ServiceMonitors give them, evaluates the chart's PrometheusRule, and answers every query of the shipped Grafana
dashboard after a workload.

Nothing here is taken on trust from the chart's intent: the scrape targets, their `job`/`namespace` labels and
their paths come from the rendered ServiceMonitors and the Services and Deployments they select, the same way
prometheus-operator turns them into scrape configs (job = the Service's name unless `jobLabel` is set, namespace =
the Service's namespace, plus service/endpoint/pod/container). Panels fed by kube-state-metrics (kube_* series)
can't have data here and are listed explicitly in KUBE_STATE_METRICS."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from taskproc.dev.embedded import free_port

from .conftest import CHART, Helm, Renders, worker_deployments
from conftest import StackFactory
from support import TERMINAL, Stack, wait_for

pytestmark = pytest.mark.slow

SCENARIO = "monitoring"
COMPONENT = "app.kubernetes.io/component"
WORKERS = 2

# (panel title, legendFormat) of the dashboard queries that read kube-state-metrics: nothing here exports those.
KUBE_STATE_METRICS = {
    ("Worker replicas", "Worker replicas"),
    ("Running tasks, live workers and worker replicas", "worker replicas"),
}

# The dashboard variables' values for this release (helm template taskproc --namespace taskproc).
EXPECTED_VARIABLES = {"namespace": "taskproc", "release": "taskproc"}

# Panels whose series carry label values the workload must produce (a renamed label shows up here).
EXPECTED_LABELS = [
    ("Submitted per second, by type", "type", {"add", "text_stats", "sleep"}),
    ("Finished per second, by status", "status", {"completed", "failed"}),
    ("Attempts per second, by outcome", "outcome", {"success", "error", "timeout"}),
    ("Queue depth, by priority", "priority", {"high", "normal", "low"}),
    ("Requests per second, by handler and status", "status", {"201", "404"}),
]

# Grafana's own $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): 4s at the 1s scrapes
# used here. That holds rate()'s two samples, but an instant query would then see only the increments of the
# last 4 seconds, i.e. data or not depending on when it runs. One minute spans the whole workload of this test
# (~60 samples per series at 1s), so a query sees every increment the workload made, whenever it runs.
# $__interval/$__range are substituted too in case a panel starts using them.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "1s", "__range": "1m"}

# The endpoint fields this test turns into scrape config; anything else (relabelings, TLS, auth, params) would
# change what Prometheus sees, so it must be taught here before the chart may use it. interval/scrapeTimeout are
# read but replaced by 1s (see prometheus_config).
SUPPORTED_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout"}


@dataclass(frozen=True)
class ScrapeTarget:
    """One ServiceMonitor endpoint as prometheus-operator would scrape it, minus the cluster addresses."""

    scrape_job: str  # prometheus-operator's job_name: serviceMonitor/<namespace>/<name>/<endpoint index>
    component: str  # app.kubernetes.io/component of the selected pods: which local process plays them
    deployment: str
    labels: dict[str, str]  # job, namespace, service, endpoint, container
    path: str


def binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install Debian's `prometheus` package (.ci/run does)", pytrace=False)
    return found


def of_kind(docs: list[dict[str, Any]], kind: str, namespace: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"].get("namespace") == namespace]


def scrape_targets(docs: list[dict[str, Any]]) -> list[ScrapeTarget]:
    """The rendered ServiceMonitors resolved against the rendered Services and Deployments."""
    targets = []
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        ns, spec = sm["metadata"]["namespace"], sm["spec"]
        assert spec.get("namespaceSelector", {}).get("matchNames", [ns]) == [ns], "cross-namespace ServiceMonitor"
        wanted = spec["selector"]["matchLabels"]
        assert set(spec["selector"]) == {"matchLabels"}, "teach this test matchExpressions"
        services = [
            s for s in of_kind(docs, "Service", ns) if wanted.items() <= s["metadata"].get("labels", {}).items()
        ]
        assert len(services) == 1, f"{sm['metadata']['name']} selects {[s['metadata']['name'] for s in services]}"
        svc = services[0]
        job = svc["metadata"]["labels"][spec["jobLabel"]] if "jobLabel" in spec else svc["metadata"]["name"]
        assert not spec.get("targetLabels") and not spec.get("podTargetLabels"), "teach this test targetLabels"
        pod_selector = svc["spec"]["selector"]
        deployments = [
            d
            for d in of_kind(docs, "Deployment", ns)
            if pod_selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(deployments) == 1, f"Service {svc['metadata']['name']} selects {len(deployments)} Deployments"
        deployment = deployments[0]
        for index, endpoint in enumerate(spec["endpoints"]):
            unsupported = set(endpoint) - SUPPORTED_ENDPOINT_FIELDS
            assert not unsupported, f"teach this test the endpoint fields {sorted(unsupported)}"
            svc_port = next(p for p in svc["spec"]["ports"] if p.get("name") == endpoint["port"])
            target_port = svc_port.get("targetPort", svc_port["port"])
            containers = [
                c["name"]
                for c in deployment["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
                if target_port in (p.get("name"), p["containerPort"])
            ]
            assert len(containers) == 1, f"port {target_port} of {deployment['metadata']['name']}: {containers}"
            targets.append(
                ScrapeTarget(
                    scrape_job=f"serviceMonitor/{ns}/{sm['metadata']['name']}/{index}",
                    component=deployment["spec"]["template"]["metadata"]["labels"][COMPONENT],
                    deployment=deployment["metadata"]["name"],
                    labels={
                        "job": job,
                        "namespace": ns,
                        "service": svc["metadata"]["name"],
                        "endpoint": endpoint["port"],
                        "container": containers[0],
                    },
                    path=endpoint.get("path", "/metrics"),
                )
            )
    return targets


def prometheus_config(targets: list[ScrapeTarget], addresses: dict[str, list[str]], rules: Path) -> dict[str, Any]:
    """Static scrape configs with the labels prometheus-operator's relabelling would produce; instance stays the
    address, as it is podIP:port in a cluster."""
    scrape_configs = []
    for t in targets:
        assert addresses.get(t.component), f"no local process plays the {t.component} pods"
        static = [
            {"targets": [addr], "labels": {**t.labels, "pod": f"{t.deployment}-{i}"}}
            for i, addr in enumerate(addresses[t.component])
        ]
        scrape_configs.append({"job_name": t.scrape_job, "metrics_path": t.path, "static_configs": static})
    return {
        # 1s everywhere (the chart's 30s would make this test take minutes); timeout = interval, the maximum.
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs,
    }


class Prometheus:
    """A Prometheus server process on a free port, its storage and config under `workdir`."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10.0)
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.ready, timeout=20, what="Prometheus /-/ready")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")
        return self.client.get("/-/ready").status_code == 200

    def api(self, path: str, **params: Any) -> Any:
        r = self.client.get(f"/api/v1/{path}", params=params)
        body = r.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return list(data["result"])

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
def prometheus_processes(tmp_path: Path) -> Iterator[list[Prometheus]]:
    """Where the test registers its Prometheus, which is stopped (and its log shown) whatever happens."""
    started: list[Prometheus] = []
    yield started
    for p in started:
        print(f"--- prometheus log ---\n{p.tail()}")
        p.stop()


# --- the dashboard ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    panel: str
    legend: str
    expr: str
    kind: str  # the panel type: stat, timeseries


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "dashboards" / "taskproc.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def dashboard_queries() -> list[Query]:
    return [
        Query(p["title"], t.get("legendFormat", t.get("refId", "")), t["expr"], p["type"])
        for p in dashboard()["panels"]
        for t in p.get("targets", [])
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable forms $x, ${x} and [[x]] replaced; a variable left over fails the test."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]

    out = re.sub(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)
    assert "$" not in out, out
    return out


def resolve_variables(prom: Prometheus) -> dict[str, str]:
    """The dashboard's query variables as Grafana would resolve them (label_values + regex), in order, so later
    ones may use earlier ones; the value that names this release's namespace and release is picked."""
    values = dict(GRAFANA_INTERVALS)
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"]["query"])
        assert m, f"teach this test the variable query {var['query']['query']}"
        match, label = substitute(m.group(1), values), m.group(2)
        found = prom.api(f"label/{label}/values", **{"match[]": match})
        if var.get("regex"):
            pattern = re.compile(var["regex"].strip("/"))
            found = [(hit.group(1) if hit.groups() else hit.group(0)) for v in found if (hit := pattern.search(v))]
        assert EXPECTED_VARIABLES[var["name"]] in found, f"${var['name']} offers {found} ({var['query']['query']})"
        values[var["name"]] = EXPECTED_VARIABLES[var["name"]]
    return values


def vector_selectors(node: Any) -> list[Any]:
    """Every vector selector in a parsed PromQL expression (promql_parser nodes)."""
    if isinstance(node, promql_parser.VectorSelector):
        return [node]
    found: list[Any] = []
    for attr in ("vector_selector", "expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            found += vector_selectors(child)
    for arg in getattr(node, "args", None) or []:
        found += vector_selectors(arg)
    return found


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one finite value: NaN is what histogram_quantile or a ratio give over nothing, and Grafana
    draws it as no data."""
    return any(math.isfinite(float(s["value"][1])) for s in result)


# --- the workload -------------------------------------------------------------------------------------------------


def wave(stack: Stack) -> None:
    """One task of each kind, all finished: completed (two priorities and types), retried then failed, timed
    out, delayed; plus a lookup of a task that doesn't exist (an API operation outcome)."""
    tasks = [
        stack.submit("add"),
        stack.submit("text_stats", {"text": "a b a"}, priority="high"),
        stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=1),
        stack.submit("sleep", {"duration_ms": 10_000}, timeout_s=0.2, max_retries=0),
        stack.submit("add", delay_s=0.5, priority="low"),
    ]
    assert stack.client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000").status_code == 404
    for t in tasks:
        stack.wait_status(t["id"], TERMINAL)


def alert_state(prom: Prometheus, name: str) -> str:
    """ "pending" or "firing" when the alert rule `name` is active, else ""."""
    rules = [r for g in prom.api("rules", type="alert")["groups"] for r in g["rules"]]
    state = str(next(r["state"] for r in rules if r["name"] == name))
    return state if state in ("pending", "firing") else ""


def scraped_after(prom: Prometheus, moment: float, count: int) -> bool:
    """Every target has been scraped successfully since `moment` (a Unix time)."""
    active = prom.api("targets", state="active")["activeTargets"]
    done = [t for t in active if t["health"] == "up" and _unix(t["lastScrape"]) > moment]
    return len(active) == count and len(done) == count


def _unix(rfc3339: str) -> float:
    # Prometheus writes nanoseconds; datetime.fromisoformat wants at most microseconds.
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    zone = re.search(r"[+-]\d\d:\d\d$", frac)
    frac_digits = frac[: zone.start()] if zone else frac
    stamp = datetime.fromisoformat(head + ("+00:00" if not zone else zone.group(0)))
    return stamp.timestamp() + (float(f"0.{frac_digits}") if frac_digits else 0.0)


def checked_rules(docs: list[dict[str, Any]], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The rendered PrometheusRule as a rules file that promtool accepts, and each alert's expression."""
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    check = subprocess.run(
        [binary("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, f"promtool check rules:\n{check.stdout}{check.stderr}"
    return rules_file, {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def check_kube_state_queries(docs: list[dict[str, Any]], queries: list[Query]) -> None:
    """The dashboard's kube-state-metrics queries are the known ones, and name the rendered Deployments."""
    placeholders = {**GRAFANA_INTERVALS, **EXPECTED_VARIABLES}
    kube = {
        (q.panel, q.legend)
        for q in queries
        if any(
            s.name.startswith("kube_") for s in vector_selectors(promql_parser.parse(substitute(q.expr, placeholders)))
        )
    }
    assert kube == KUBE_STATE_METRICS, f"kube-state-metrics queries changed: {sorted(kube)}"
    # What can be checked of them here: they name the rendered worker Deployment the way kube-state-metrics does
    # (labels `namespace` and `deployment`); a regular expression (`=~`, Prometheus anchors it) must match every
    # worker Deployment (the catch-all one, or one per pool) and nothing else.
    deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Deployment"}
    for q in queries:
        if (q.panel, q.legend) in KUBE_STATE_METRICS:
            for sel in vector_selectors(promql_parser.parse(substitute(q.expr, placeholders))):
                m = {x.name: x.value for x in sel.matchers.matchers}
                regex = {x.name for x in sel.matchers.matchers if x.op == promql_parser.MatchOp.Re}
                if "deployment" in regex:
                    matched = {(ns, name) for ns, name in deployments if re.fullmatch(m["deployment"], name)}
                    workers = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in worker_deployments(docs)}
                    assert matched == workers, f"{q.panel}: {sel} matches {matched}"
                    for pool_name in ("taskproc-worker-fast", "taskproc-worker-bulk-mail"):
                        assert re.fullmatch(m["deployment"], pool_name), f"{q.panel}: {sel} misses a pool"
                else:
                    assert (m.get("namespace"), m.get("deployment")) in deployments, f"{q.panel}: {sel}"


def check_rules_find_series(prom: Prometheus, rule_exprs: dict[str, str]) -> None:
    """Each rule's selectors, reduced to their job and namespace matchers, find series: a rule scoped to a job or
    namespace the ServiceMonitors don't produce would evaluate "ok" and never fire."""
    for name, expr in rule_exprs.items():
        for sel in vector_selectors(promql_parser.parse(expr)):
            scope = [str(m) for m in sel.matchers.matchers if m.name in ("job", "namespace")]
            assert len(scope) == 2, f"{name}: {sel} is not scoped by job and namespace"
            probe = f"count({sel.name}{{{', '.join(scope)}}})"
            assert prom.query(probe), f"{name}: no series for {probe}"


# --- the test -----------------------------------------------------------------------------------------------------


def test_prometheus_scrapes_evaluates_rules_and_answers_the_dashboard(
    helm4: Helm, renders: Renders, stack_factory: StackFactory, prometheus_processes: list[Prometheus], tmp_path: Path
) -> None:
    docs = renders.docs(helm4, SCENARIO)
    targets = scrape_targets(docs)
    assert {t.labels["job"] for t in targets} == {"taskproc-api", "taskproc-worker"}, targets

    rules_file, rule_exprs = checked_rules(docs, tmp_path)
    queries = dashboard_queries()
    check_kube_state_queries(docs, queries)

    with stack_factory(workers=0) as stack:
        worker_ports = [free_port() for _ in range(WORKERS)]
        for port in worker_ports:
            stack.start_worker(metrics_port=port)
        stack.wait_ready(WORKERS)
        addresses = {
            "api": [f"127.0.0.1:{stack.port}"],
            "worker": [f"127.0.0.1:{port}" for port in worker_ports],
        }
        prom = Prometheus(tmp_path, prometheus_config(targets, addresses, rules_file))
        prometheus_processes.append(prom)
        prom.start()
        n_targets = sum(len(addresses[t.component]) for t in targets)
        # Prometheus applies a new target set at most every 5 s: the first scrapes come a few seconds after start.
        wait_for(lambda: scraped_after(prom, 0, n_targets), timeout=20, what="every target up")
        for t in prom.api("targets", state="active")["activeTargets"]:
            assert t["labels"]["job"] in ("taskproc-api", "taskproc-worker"), t["labels"]
            assert t["labels"]["namespace"] == "taskproc", t["labels"]

        # The variables and the stat panels (gauges) must show something on an idle install too, before any task.
        values = resolve_variables(prom)
        idle = [q for q in queries if q.kind == "stat" and (q.panel, q.legend) not in KUBE_STATE_METRICS]
        assert idle, "no stat panels"
        for q in idle:
            assert has_data(prom.query(substitute(q.expr, values))), f"{q.panel} is empty on an idle install"

        # A counter's first sample already holds its first increment, and rate() counts only increments between
        # samples, so a series needs a scrape before the increments that the panels should show. Waves repeat
        # until every query has data and TaskprocHighFailureRatio (2 of 5 tasks fail, over its 0.1) is pending
        # (tasks may land on the worker whose series are still new); a wrong metric or label never gets there
        # and fails at the deadline.
        wanted = [q for q in queries if (q.panel, q.legend) not in KUBE_STATE_METRICS]
        missing: list[Query] = wanted
        failing = ""
        deadline = time.monotonic() + 30
        while (missing or not failing) and time.monotonic() < deadline:
            wave(stack)
            finished = time.time()
            wait_for(partial(scraped_after, prom, finished, n_targets), timeout=10, what="a scrape after the wave")
            missing = [q for q in wanted if not has_data(prom.query(substitute(q.expr, values)))]
            failing = alert_state(prom, "TaskprocHighFailureRatio")
        assert not missing, "dashboard queries without data:\n" + "\n".join(
            f"  {q.panel} / {q.legend}: {substitute(q.expr, values)} -> {prom.query(substitute(q.expr, values))}"
            for q in missing
        )
        assert failing, "TaskprocHighFailureRatio never went pending while 2 of 5 tasks failed"
        resolve_variables(prom)

        for title, label, wanted_values in EXPECTED_LABELS:
            query = next(q for q in queries if q.panel == title)
            got = {sample["metric"].get(label) for sample in prom.query(substitute(query.expr, values))}
            assert wanted_values <= got, f"{title}: {label} values {got}, expected at least {wanted_values}"
        live = prom.query(substitute(next(q for q in queries if q.panel == "Live workers").expr, values))
        assert [float(s["value"][1]) for s in live] == [WORKERS], live

        check_rules_find_series(prom, rule_exprs)

        # Every rule evaluated, with the workload's series present, without an error.
        evaluated_from = time.time()

        def evaluated() -> list[dict[str, Any]]:
            found = [r for g in prom.api("rules", type="alert")["groups"] for r in g["rules"]]
            return found if all(_unix(r["lastEvaluation"]) > evaluated_from for r in found) else []

        found = wait_for(evaluated, timeout=15, what="an evaluation of every rule")
        assert {r["name"] for r in found} == set(rule_exprs)
        bad = [f"{r['name']}: {r['health']} {r.get('lastError')}" for r in found if r["health"] != "ok"]
        assert not bad, "rules that fail to evaluate:\n" + "\n".join(bad)
        states = {r["name"]: r["state"] for r in found}
        assert states["TaskprocApiHighErrorRatio"] == "inactive", "the workload got no 5xx, yet the alert is active"
        assert states["TaskprocNoLiveWorkers"] == "inactive", states

        # The critical alert goes pending in the case it exists for: tasks wait and no worker is alive.
        stack.stop_workers()
        wait_for(lambda: stack.client.get("/api/v1/stats").json()["workers"] == 0, timeout=15, what="no live workers")
        stack.submit("add")

        wait_for(
            partial(alert_state, prom, "TaskprocNoLiveWorkers"),
            timeout=15,
            what="TaskprocNoLiveWorkers pending while a task waits without workers",
        )
        # Its annotations expand ({{ $value }} etc.): Prometheus puts the template error in the text otherwise.
        alerts = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "TaskprocNoLiveWorkers"]
        assert alerts, "no TaskprocNoLiveWorkers alert"
        for a in alerts:
            assert a["labels"]["severity"] == "critical", a
            for text in a["annotations"].values():
                assert "<error expanding template" not in text and "{{" not in text, a["annotations"]
