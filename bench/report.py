"""Targets (PASS/MISS and by how much) and the markdown report, both computed from the results dict."""

from __future__ import annotations

from typing import Any

MB = 1024 * 1024


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _target(name: str, measured: float | None, op: str, limit: float, unit: str, basis: str = "") -> dict[str, Any]:
    if measured is None:
        return {"target": name, "limit": f"{op} {limit:g} {unit}".strip(), "measured": None, "status": "SKIPPED"}
    ok = measured >= limit if op == ">=" else measured <= limit
    if op == ">=":
        margin = (measured / limit - 1) * 100 if limit else 0.0
        how = f"{margin:+.0f}%" if ok else f"short by {_num(limit - measured)} {unit} ({-margin:.0f}%)"
    else:
        margin = (1 - measured / limit) * 100 if limit else 0.0
        how = (
            f"{margin:.0f}% headroom"
            if ok
            else f"over by {_num(measured - limit)} {unit} ({measured / limit:.1f}x the limit)"
        )
    return {
        "target": name,
        "limit": f"{op} {limit:g} {unit}".strip(),
        "measured": round(measured, 3),
        "unit": unit,
        "status": "PASS" if ok else "MISS",
        "margin": how.replace(" ()", ""),
        **({"basis": basis} if basis else {}),
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    e2e = _get(results, "taskproc", "end_to_end", "tasks_per_s")
    tuned = _get(results, "peers", "arq-tuned", "tasks_per_s")
    celery = _get(results, "peers", "celery", "tasks_per_s")
    out.append(
        _target(
            "end-to-end throughput >= tuned bare arq",
            e2e / tuned if e2e and tuned else None,
            ">=",
            1.0,
            "x",
            f"{e2e} vs {tuned} tasks/s",
        )
    )
    out.append(
        _target(
            "end-to-end throughput >= 3x Celery",
            e2e / celery if e2e and celery else None,
            ">=",
            3.0,
            "x",
            f"{e2e} vs {celery} tasks/s",
        )
    )
    limited = _get(results, "taskproc", "end_to_end_limited", "tasks_per_s")
    keys = _get(results, "taskproc", "end_to_end_limited", "keys")
    out.append(
        _target(
            f"end to end with per-key limits on {keys or 200} keys >= 0.8x without",
            limited / e2e if limited and e2e else None,
            ">=",
            0.8,
            "x",
            f"{limited} vs {e2e} tasks/s",
        )
    )
    out.append(_target("pickup latency p50", _get(results, "taskproc", "pickup", "pickup", "p50_ms"), "<=", 20, "ms"))
    out.append(_target("pickup latency p99", _get(results, "taskproc", "pickup", "pickup", "p99_ms"), "<=", 100, "ms"))
    paced = _get(results, "taskproc", "submit_paced")
    out.append(
        _target(
            f"single POST p99 at {paced['rate_rps']:g} req/s" if paced else "single POST p99 at 200 req/s",
            _get(results, "taskproc", "submit_paced", "p99_ms"),
            "<=",
            50,
            "ms",
        )
    )
    out.append(
        _target(
            "batch submit", _get(results, "taskproc", "drain", "batch_submit", "tasks_per_s"), ">=", 5000, "tasks/s"
        )
    )
    scale = _get(results, "scale", "latency") or {}
    rows = _get(results, "scale", "load", "rows")
    at = f" at {rows:,} rows" if rows else " at 1M rows"
    out.append(_target("GET /tasks/{id} p99" + at, _get(scale, "get_by_id", "p99_ms"), "<=", 20, "ms"))
    lists = [k for k in scale if k.startswith("list_")]
    for k in lists or ["list_status_completed"]:
        label = k.removeprefix("list_").replace("_", " ")
        out.append(_target(f"GET /tasks ({label}) p99" + at, _get(scale, k, "p99_ms"), "<=", 20, "ms"))
    out.append(_target("GET /stats p99" + at, _get(scale, "stats", "p99_ms"), "<=", 50, "ms"))
    mem = results.get("memory", {})
    out.append(_target("API peak RSS", mem.get("api_mb"), "<=", 150, "MB"))
    out.append(_target("worker peak RSS", mem.get("worker_mb"), "<=", 150, "MB"))
    return out


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _code(meta: dict[str, Any]) -> str:
    git = meta.get("git") or {}
    if not git.get("commit"):
        return "unknown"
    dirty = f" + uncommitted src/ changes ({git.get('src_diff_sha256')})" if git.get("src_dirty") else ""
    return f"commit {git['commit']}{dirty}"


def _api_cpu(entry: dict[str, Any]) -> str:
    v = _get(entry, "cost", "cpu_ms_per_task", "api")
    return "-" if v is None else f"{v:.2f} ms"


def markdown(results: dict[str, Any]) -> str:
    """The report: a header, then one table per section that has data."""
    lines = _header(results)
    for section in (_throughput, _latency, _submit, _cost, _scale, _memory, _targets):
        lines += section(results)
    return "\n".join(lines) + "\n"


def _header(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    return [
        f"### taskproc benchmark, {meta['started']}",
        "",
        f"{meta['cpus']} CPUs ({meta['cpu_model']}), Python {meta['python']}, PostgreSQL {meta['postgres']} "
        f"(embedded, fsync off for every system), Redis {meta['redis']} (embedded, no persistence). "
        f"N = {meta['args']['n']:,} no-op tasks, W = {meta['args']['workers']} taskproc workers, "
        f"run took {results.get('duration_s', 0):.0f} s. Code: {_code(meta)}.",
    ]


def _cpu_total(entry: dict[str, Any] | None) -> float | None:
    per = _get(entry or {}, "cost", "cpu_ms_per_task")
    if not per:
        return None
    return sum(v for k, v in per.items() if k not in ("bench-client", "other"))


def _throughput(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    tp = results.get("taskproc", {})
    peers = results.get("peers", {})
    mem = results.get("memory", {})
    e2e = _get(tp, "end_to_end", "tasks_per_s")
    lines = [
        "",
        "**Throughput** (no-op tasks, same Redis, same machine, same N)",
        "",
        "| system | how | tasks/s | vs taskproc e2e | incl. worker start-up | CPU ms/task (all processes) | peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(name: str, how: str, entry: dict[str, Any] | None, rss_role: str | None, startup: bool = True) -> None:
        if not entry:
            return
        rate = entry.get("tasks_per_s")
        ratio = f"{rate / e2e:.2f}x" if rate and e2e else "-"
        rss = mem.get("roles_mb", {}).get(rss_role) if rss_role else None
        lines.append(
            f"| {name} | {how} | {_fmt(rate)} | {ratio} | "
            f"{_fmt(entry.get('tasks_per_s_incl_startup')) if startup else '-'} | {_fmt(_cpu_total(entry), 2)} | "
            f"{_fmt(rss) + ' MB' if rss else '-'} |"
        )

    w = meta["args"]["workers"]
    row(
        "**taskproc end to end**",
        f"API batches of {meta['args']['batch_size']} -> {w} workers -> `completed` in PG",
        tp.get("end_to_end"),
        None,
        startup=False,
    )
    lim = tp.get("end_to_end_limited")
    if lim:
        row(
            "taskproc end to end, per-key limits",
            f"the same, each task under one of {lim['keys']} keys' limits (max_running {lim['max_running']}, "
            f"{lim['rate_per_s']:g}/s)",
            lim,
            None,
            startup=False,
        )
    row("taskproc drain", f"{w} workers draining a pre-filled queue", tp.get("drain"), "worker")
    arq_d = peers.get("arq-defaults")
    row("arq defaults", "1 worker, max_jobs 10, poll 0.5 s", arq_d, "arq-defaults")
    arq_t = peers.get("arq-tuned")
    if arq_t:
        cfg = arq_t["config"]
        row("arq tuned", f"1 worker, max_jobs {cfg['max_jobs']}, poll {cfg['poll_delay']} s", arq_t, "arq-tuned")
    cel = peers.get("celery")
    if cel:
        cfg = cel["config"]
        row(
            "Celery",
            f"prefork -c {cfg['concurrency']}, Redis broker + backend (celery {cfg.get('celery')})",
            cel,
            "celery",
        )
    return lines


def _latency(results: dict[str, Any]) -> list[str]:
    tp = results.get("taskproc", {})
    peers = results.get("peers", {})
    lines = [
        "",
        "Drain rate = (N - 1) / (last completion - first completion), from the completion times each system records;"
        " RSS of a peer is its whole process tree (Celery: parent + pool children), of taskproc one worker process.",
        "",
        "**Pickup latency on an idle system** (task created -> started; and created -> finished)",
        "",
        "| system | samples | pickup p50 | pickup p99 | finished p50 | finished p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lat_rows = [("taskproc", tp.get("pickup"))] + [(k, v.get("latency")) for k, v in peers.items()]
    for name, lat in lat_rows:
        if not lat:
            continue
        pk, fin = lat["pickup"], lat["submit_to_finished"]
        lines.append(
            f"| {name} | {pk['count']} | {pk['p50_ms']:.1f} ms | {pk['p99_ms']:.1f} ms | {fin['p50_ms']:.1f} ms | "
            f"{fin['p99_ms']:.1f} ms |"
        )
    return lines


def _submit(results: dict[str, Any]) -> list[str]:
    tp = results.get("taskproc", {})
    single, paced, batch = tp.get("submit_single"), tp.get("submit_paced"), _get(tp, "drain", "batch_submit")
    if not (single or paced or batch):
        return []
    lines = [
        "",
        "**Submit** (no workers running; one uvicorn process)",
        "",
        "| load | requests/s | tasks/s | p50 | p99 | errors | API CPU per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if single:
        lines.append(
            f"| single POST, {single['clients']} concurrent clients (closed loop) "
            f"| {_fmt(single['throughput_rps'])} | {_fmt(single['throughput_rps'])} "
            f"| {single['p50_ms']:.1f} ms | {single['p99_ms']:.1f} ms "
            f"| {single['errors']} | {_api_cpu(single)} |"
        )
    if paced:
        lines.append(
            f"| single POST, paced at {paced['rate_rps']:g} req/s (open loop) | {_fmt(paced['throughput_rps'])} "
            f"| {_fmt(paced['throughput_rps'])} | {paced['p50_ms']:.1f} ms | {paced['p99_ms']:.1f} ms "
            f"| {paced['errors']} | {_api_cpu(paced)} |"
        )
    if batch:
        bl = batch["batch_latency"]
        lines.append(
            f"| batch POST of {batch['batch_size']}, {batch['concurrency']} clients | "
            f"{_fmt(batch['tasks_per_s'] / batch['batch_size'], 1)} | {_fmt(batch['tasks_per_s'])} | "
            f"{bl['p50_ms']:.1f} ms | {bl['p99_ms']:.1f} ms | 0 | "
            f"{_fmt(_get(batch, 'cost', 'cpu_ms_per_task', 'api'), 2)} ms per task |"
        )
    return lines


def _cost(results: dict[str, Any]) -> list[str]:
    tp = results.get("taskproc", {})
    peers = results.get("peers", {})
    cost_rows = [("taskproc end to end", _get(tp, "end_to_end", "cost")), ("taskproc drain", _get(tp, "drain", "cost"))]
    cost_rows += [(k, v.get("cost")) for k, v in peers.items()]
    cost_rows = [(n, c) for n, c in cost_rows if c]
    if not cost_rows:
        return []
    lines = [
        "",
        "**Cost per task** (CPU ms per task by process; Redis commands and Postgres commits per task)",
        "",
        "| run | API | worker(s) | Postgres | Redis | bench client | Redis cmds | PG commits "
        "| other processes on the machine meanwhile |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c in cost_rows:
        per = c["cpu_ms_per_task"]
        worker = per.get("worker") or per.get(name)
        cells = [
            per.get("api") or None,
            worker,
            per.get("postgres") or None,
            per.get("redis"),
            per.get("bench-client"),
        ]
        commits = _get(c, "pg_per_task", "commits")
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(v, 2) for v in cells)
            + f" | {c['redis_commands_per_task_total']:.1f} | {_fmt(commits, 1)} | "
            f"{c.get('background_cores', 0):.2f} cores |"
        )
    return lines


def _scale(results: dict[str, Any]) -> list[str]:
    scale = _get(results, "scale", "latency")
    if not scale:
        return []
    load = results["scale"]["load"]
    lines = [
        "",
        f"**Reads with {load['rows']:,} task rows** ({load['table_size']} incl. indexes; sequential requests, "
        "one keep-alive connection)",
        "",
        "| request | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    paths = {
        "get_by_id": "GET /tasks/{id}",
        "list_status_completed": "GET /tasks?status=completed&limit=50",
        "list_status_completed_page2": "GET /tasks?status=completed&limit=50&cursor=(page 2)",
        "list_type_add": "GET /tasks?type=add&limit=50",
        "list_status_failed_type_text_stats": "GET /tasks?status=failed&type=text_stats&limit=50",
        "stats": "GET /stats",
    }
    bg = _get(results, "scale", "cost", "background_cores")
    if bg is not None:
        lines[-4] += f" Other processes used {bg:.2f} cores meanwhile."
    for k, v in scale.items():
        lines.append(f"| `{paths.get(k, k)}` | {v['p50_ms']:.1f} ms | {v['p99_ms']:.1f} ms | {v['max_ms']:.1f} ms |")
    return lines


def _memory(results: dict[str, Any]) -> list[str]:
    mem = results.get("memory", {})
    if not mem:
        return []
    return [
        "",
        f"**Peak RSS**: API {_fmt(mem.get('api_mb'))} MB, worker {_fmt(mem.get('worker_mb'))} MB "
        f"(largest of the worker processes, over the whole run).",
    ]


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["", "**Targets**", "", "| target | limit | measured | result |", "| --- | --- | ---: | --- |"]
    for t in results.get("targets", []):
        measured = "-" if t["measured"] is None else f"{_num(t['measured'])} {t.get('unit', '')}".strip()
        if t.get("basis"):
            measured += f" ({t['basis']})"
        result = t["status"] + (f", {t['margin']}" if t.get("margin") else "")
        lines.append(f"| {t['target']} | {t['limit']} | {measured} | {result} |")
    return lines
