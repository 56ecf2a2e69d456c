"""The README's curl examples, run as printed (with the port of a test stack)."""

from __future__ import annotations

import re
import subprocess

from support import ROOT, Stack


def _api_examples() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The API by example", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1)


def test_readme_curl_examples_work_as_printed(stack: Stack) -> None:
    script = _api_examples().replace("http://127.0.0.1:8000", stack.url)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "HTTP/1.1 201 Created" in out and "location: /api/v1/tasks/" in out.lower()
    # curl -w prints the code right after the previous command's body, which has no trailing newline.
    assert re.search(r"(^|[}\]])200$", out, re.M), "a repeated idempotency key answers 200"
    assert re.search(r"(^|[}\]])204$", out, re.M), "delete answers 204"
    assert '"status":"canceled"' in out
    assert '"result":{"sum":3}' in out, "the retried task completed"
    assert "taskproc_tasks_submitted_total" in out
    assert '"checks":{"postgres":"ok","redis":"ok"}' in out
