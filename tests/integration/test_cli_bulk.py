"""`taskproc bulk` through the real entry point, against a running API and worker: the dry run's count, a retry
followed with --wait, status and list, and the usage errors."""

from __future__ import annotations

from test_cli import run, run_json

from conftest import StackFactory


def test_bulk_retry_dry_run_wait_status_and_list(stack_factory: StackFactory) -> None:
    with stack_factory(workers=1) as stack:
        failing = [stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0) for _ in range(2)]
        for t in failing:
            stack.wait_status(t["id"], "failed")

        dry = run(stack, "bulk", "retry", "--status", "failed", "--type", "sleep", "--dry-run")
        assert dry.returncode == 0 and "2 tasks match" in dry.stdout, dry.stdout + dry.stderr
        assert run_json(stack, "bulk", "retry", "--status", "failed", "--type", "add", "--dry-run")["total"] == 0

        op = run_json(stack, "bulk", "retry", "--status", "failed", "--type", "sleep", "--wait")
        assert op["status"] == "completed" and op["done"] == 2 and op["total"] == 2
        status = run(stack, "bulk", "status", op["id"])
        assert status.returncode == 0 and f"bulk retry {op['id']}: completed, 2 done" in status.stdout
        listed = run(stack, "bulk", "list")
        assert listed.returncode == 0 and op["id"] in listed.stdout and '"status": "failed"' in listed.stdout
        assert run_json(stack, "bulk", "list")[0]["id"] == op["id"]

        assert run(stack, "bulk", "set-priority", "--status", "pending").returncode == 2  # no --to
        missing = run(stack, "bulk", "status", "00000000-0000-0000-0000-000000000000")
        assert missing.returncode == 3 and "Traceback" not in missing.stderr
