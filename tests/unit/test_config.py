"""Settings parsing from TASKPROC_ environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskproc.config import Settings


def test_defaults_match_the_readme(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.max_retries, s.retry_base_s, s.task_timeout_s, s.worker_concurrency) == (3, 1.0, 300.0, 16)
    assert (s.lease_s, s.shutdown_grace_s, s.reconcile_s, s.retention_days) == (30.0, 25.0, 15.0, 7.0)
    assert s.max_body_bytes == 1_048_576 and s.worker_metrics_port == 9100


def test_env_prefix_lists_and_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nkey-from-file\n\n")
    monkeypatch.setenv("TASKPROC_TASK_MODULES", "a.b, c")
    monkeypatch.setenv("TASKPROC_API_KEYS", "k1,k2")
    monkeypatch.setenv("TASKPROC_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("TASKPROC_DATABASE_URL", "postgres://u:p%40ss@db:5432/x")
    s = Settings()
    assert s.task_modules == ["a.b", "c"]
    assert s.all_api_keys() == ["k1", "k2", "key-from-file"]
    assert s.sqlalchemy_url == "postgresql+psycopg://u:p%40ss@db:5432/x"
    assert s.libpq_url == "postgresql://u:p%40ss@db:5432/x"
    assert "p%40ss" not in repr(s), "secrets must not show in reprs or logs"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPROC_WORKER_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="worker_concurrency"):
        Settings()
