"""The pure parts of taskproc.webhooks: Standard Webhooks signatures (checked with the standardwebhooks library's
own verifier, the one receivers use), the SSRF guard on literal addresses and names, the filter, the backoff."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from taskproc import webhooks
from taskproc.config import Settings
from taskproc.models import TaskStatus, WebhookEventType
from taskproc.store import TaskRow, WebhookEvent, WebhookRow

from rows import task_row


def test_a_signature_verifies_with_the_secret_and_not_when_anything_changed() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(secret) > 40 and secret != webhooks.new_secret()
    body = '{"type":"task.completed","data":{}}'
    headers = webhooks.signed_headers(secret, "msg-1", body, datetime.now(UTC))
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {"type": "task.completed", "data": {}}
    for forged in (
        (body.replace("completed", "failed"), headers),
        (body, {**headers, "webhook-id": "msg-2"}),
        (body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}),
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(*forged)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    stale = webhooks.signed_headers(secret, "msg-1", body, datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)


def test_without_a_secret_there_is_no_signature() -> None:
    headers = webhooks.signed_headers(None, "m", "{}", datetime.now(UTC))
    assert set(headers) == {"webhook-id", "webhook-timestamp"}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.9.9.9:8080/x",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:9000/",
    ],
)
async def test_private_loopback_link_local_and_reserved_targets_are_refused(url: str) -> None:
    with pytest.raises(webhooks.TargetRefusedError, match="TASKPROC_WEBHOOK_ALLOW_PRIVATE"):
        await webhooks.check_target(url, allow_private=False)
    await webhooks.check_target(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/", "http"),
        ("file:///etc/passwd", "http"),
        ("http:///nohost", "no host"),
        ("http://user:pw@8.8.8.8/", "credentials"),
        ("http://8.8.8.8:99999/", "not a valid URL"),
    ],
)
async def test_what_is_not_an_http_url_is_refused_even_with_the_allowance(url: str, why: str) -> None:
    with pytest.raises(webhooks.TargetRefusedError, match=why):
        await webhooks.check_target(url, allow_private=True)


async def test_a_public_literal_address_is_accepted() -> None:
    await webhooks.check_target("https://8.8.8.8/hook", allow_private=False)
    await webhooks.check_target("http://[2001:4860:4860::8888]:8080/", allow_private=False)


async def test_the_checked_addresses_come_back_and_the_request_is_pinned_to_them() -> None:
    assert [str(a) for a in await webhooks.check_target("https://8.8.8.8/x", allow_private=False)] == ["8.8.8.8"]
    assert await webhooks.check_target("http://127.0.0.1/", allow_private=True) == [], "nothing resolved"
    ip4, ip6 = ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:2800:220:1::1")
    assert webhooks.pinned("https://hooks.example.com/a?b=1", ip4) == (
        "https://93.184.216.34/a?b=1",
        {"host": "hooks.example.com"},
        {"sni_hostname": "hooks.example.com"},
    )
    assert webhooks.pinned("http://hooks.example.com:8080/a", ip6) == (
        "http://[2606:2800:220:1::1]:8080/a",
        {"host": "hooks.example.com:8080"},
        {},
    )


def _task(**fields: Any) -> TaskRow:
    base: dict[str, Any] = {"payload": {"a": 1}, "max_retries": 0, "timeout_s": 1.0, "result": {"sum": 1}}
    return task_row(**{**base, **fields})


def _hook(events: list[str], flt: dict[str, list[str]] | None = None) -> WebhookRow:
    return WebhookRow(
        id=uuid.uuid4(), url="https://h/", events=events, filter=flt, secret="s", created_at=datetime.now(UTC)
    )


def test_deliveries_go_to_the_webhooks_whose_events_and_filter_match_and_to_a_final_events_callback() -> None:
    done = WebhookEventType.completed.value
    every = _hook([done])
    adds = _hook([done], {"type": ["add"], "queue": ["default", "q2"]})
    sleeps = _hook([done], {"type": ["sleep"]})
    failures = _hook([WebhookEventType.failed.value])
    task = _task(callback_url="https://cb/")
    at = datetime.now(UTC)
    made = webhooks.deliveries_for(
        [
            WebhookEvent(id=1, status=TaskStatus.completed, at=at, task=task),
            WebhookEvent(id=2, status=TaskStatus.running, at=at, task=task),
            WebhookEvent(id=3, status=TaskStatus.completed, at=at, task=None),
        ],
        [every, adds, sleeps, failures],
    )
    assert {(d.webhook_id, d.url) for d in made} == {(every.id, every.url), (adds.id, adds.url), (None, "https://cb/")}
    assert {d.event for d in made} == {done} and {d.task_id for d in made} == {task.id}
    assert made[0].body.startswith('{"type":"task.completed","timestamp":')
    assert f'"id":"{task.id}"' in made[0].body and '"result":{"sum":1}' in made[0].body


def test_the_retry_backoff_grows_and_stays_under_its_cap() -> None:
    hooks = webhooks.Webhooks(
        settings=Settings(webhook_retry_base_s=1.0, webhook_retry_max_s=8.0),
        sessions=None,  # type: ignore[arg-type]
    )
    waits = [hooks.retry_in_s(n) for n in range(1, 10)]
    assert 0.5 <= waits[0] <= 1.0 and all(w <= 8.0 for w in waits)
    assert min(waits[5:]) >= 4.0, "the fixed half of the cap"
