"""The reliability tables of docs/reliability.md name tests that exist: every `test_x.py` and `test_x.py::name`
they cite."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELIABILITY_PAGE = ROOT / "docs" / "reliability.md"


def reliability_section() -> str:
    # The whole page is the reliability section (it was the README's "## Reliability" before docs/ existed).
    return RELIABILITY_PAGE.read_text(encoding="utf-8")


def test_every_cited_test_exists() -> None:
    section = reliability_section()
    assert len(re.findall(r"`test_\w+\.py", section)) >= 20
    missing = []
    last_file = None
    for token in re.findall(r"`(test_\w+\.py)?(?:::(\w+))?`", section):
        file, name = token
        if file:
            last_file = file
        if not file and not name:
            continue
        path = ROOT / "tests" / "integration" / (file or last_file or "")
        if not path.is_file():
            missing.append(file)
            continue
        if name and not re.search(rf"def {name}\(", path.read_text(encoding="utf-8")):
            missing.append(f"{path.name}::{name}")
    assert not missing, missing


# Issue 12 ("Correctness under races, version skew and outages"): each case and fault, as the test file and test
# that its row must cite ("" = the file as a whole). The page may cite more; it may not drop one of these.
ISSUE_12_CASES = {
    "1 rolling upgrade meets an unknown type": ("test_version_skew.py", ""),
    "2 cancel racing a failing attempt": (
        "test_worker_outcomes.py",
        "test_cancel_racing_a_failing_attempt_ends_canceled",
    ),
    "2 cancel racing a shutdown requeue": (
        "test_worker_outcomes.py",
        "test_cancel_racing_a_shutdown_requeue_ends_canceled",
    ),
    "3 fresh worker after an outage": (
        "test_recovery.py",
        "test_a_worker_started_after_an_outage_waits_a_full_lease_before_reaping",
    ),
    "4 reconciler cursor": (
        "test_recovery.py",
        "test_the_reconciler_carries_on_where_the_last_pass_stopped_in_whichever_process",
    ),
    "5 routes while Postgres is frozen": (
        "test_api_deadline.py",
        "test_every_route_answers_503_within_the_deadline_while_postgres_is_frozen",
    ),
    "6 Last-Event-ID": ("test_events_last_event_id.py", ""),
    "7 log forging": ("test_log_forging.py", ""),
    "8 clock skew": (
        "test_recovery.py",
        "test_a_low_priority_task_from_a_fast_clock_api_is_taken_at_once_by_a_slow_clock_worker",
    ),
    "9 NUL byte in an error": ("test_worker_outcomes.py", "test_nul_byte_in_a_handler_error_is_recorded_sanitised"),
    "10 stats and metrics cost": ("test_stats_cost.py", "test_stats_and_metrics_read_no_task_rows"),
    "11 cancel lost in Redis": (
        "test_worker_outcomes.py",
        "test_completion_after_an_accepted_cancel_is_canceled_even_if_redis_lost_the_abort",
    ),
    "12 heartbeats under pool exhaustion": (
        "test_recovery.py",
        "test_heartbeats_renew_the_lease_while_the_pool_is_exhausted",
    ),
    "13 idempotency key purged between insert and read": (
        "test_recovery.py",
        "test_create_with_a_key_whose_task_is_purged_between_insert_and_read_creates_a_new_task",
    ),
    "14 cancel meeting running to retrying": (
        "test_worker_outcomes.py",
        "test_cancel_meeting_a_task_moving_from_running_to_retrying_wins",
    ),
    "15 503 after commit": ("test_api_deadline.py", "test_submit_timed_out_after_commit_is_safe_to_retry_with_its_key"),
    "16 event stream schema": ("test_schemathesis.py", ""),
    "fault: partitioned worker": (
        "test_fault_network.py",
        "test_a_partitioned_worker_task_is_rerun_elsewhere_and_its_late_result_refused",
    ),
    "fault: slow lossy links": (
        "test_fault_network.py",
        "test_slow_lossy_links_lose_nothing_and_no_lease_lapses_at_the_default_lease",
    ),
    "fault: Postgres crash": ("test_fault_postgres_crash.py", ""),
    "fault: upgrade from the previous release": ("test_upgrade.py", ""),
}


def test_every_issue_12_case_has_its_row() -> None:
    rows = [line for line in reliability_section().splitlines() if line.startswith("| ")]
    missing = [
        case
        for case, (file, name) in ISSUE_12_CASES.items()
        if not any(f"`{file}" in row and (not name or f"::{name}`" in row) for row in rows)
    ]
    assert not missing, f"docs/reliability.md lost the row of: {missing}"
