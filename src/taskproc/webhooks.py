"""Webhooks: task events become signed HTTP deliveries, from an outbox in Postgres, without touching the workers.

Two loops in every API process (TASKPROC_WEBHOOKS), on the maintenance connection like the scheduler:

- The dispatcher reads `task_event` after a cursor kept in Postgres (table `webhook_cursor`) and turns each
  event some target wants into `webhook_delivery` rows: one per matching webhook (its events and filter) and
  one for the task's own `callback_url` (final events only). It runs in one transaction that holds the advisory
  lock WEBHOOK_LOCK, so one process at a time does it, and the rows and the cursor's move commit together: an
  event becomes its deliveries exactly once, whatever restarts. Identity ids are handed out before commit, so an
  id below the cursor may still commit later: such holes are kept with the cursor and read again for GAP_TTL_S.
  Nothing is added to the workers' statements (no trigger, no NOTIFY): a delivery never slows a task down, and
  a receiver that is down only grows the outbox.
- The sender leases due rows (row locks that skip the locked ones, then the next attempt moved past the timeout:
  every API process can send, none sends a row another one is sending, a dead one's rows come due again) and
  posts them with httpx, at most TASKPROC_WEBHOOK_CONCURRENCY at once. A 2xx is delivered; anything else is
  retried with the project's backoff (taskproc.retry.backoff, from TASKPROC_WEBHOOK_RETRY_BASE_S up to
  TASKPROC_WEBHOOK_RETRY_MAX_S) until TASKPROC_WEBHOOK_MAX_AGE_S (a day) after the event, then failed.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com): `webhook-id` (the delivery's id, the same
on every attempt), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
signed by the `standardwebhooks` library, which receivers use to verify). The body is
`{"type": "task.completed", "timestamp": ..., "data": <the task as GET /api/v1/tasks/{id} returns it>}`, the
task as it was when the dispatcher read the event.

Targets must resolve to public addresses only (`check_target`, against SSRF): at create time (422) and again
before every attempt, since DNS can change, and the attempt connects to the address checked (`pinned`), not to
whatever the name resolves to a moment later; TASKPROC_WEBHOOK_ALLOW_PRIVATE lifts it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import tenacity
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook as Signer

from taskproc import __version__, metrics, retry, store, testhooks
from taskproc.config import Settings
from taskproc.maintenance import every
from taskproc.models import TaskPublic, TaskStatus, WebhookEventType
from taskproc.store import NewDelivery, TaskRow, WebhookEvent, WebhookRow

log = logging.getLogger("taskproc.webhooks")

EVENT_OF: dict[TaskStatus, WebhookEventType] = {
    TaskStatus.running: WebhookEventType.running,
    TaskStatus.retrying: WebhookEventType.retrying,
    TaskStatus.completed: WebhookEventType.completed,
    TaskStatus.failed: WebhookEventType.failed,
    TaskStatus.canceled: WebhookEventType.canceled,
}
STATUS_OF = {event: status for status, event in EVENT_OF.items()}
# What a task's callback_url gets: how the task ended.
CALLBACK_EVENTS = frozenset({WebhookEventType.completed, WebhookEventType.failed, WebhookEventType.canceled})

BATCH = 500  # events read per dispatcher pass; a full batch is followed by another pass at once
GAP_TTL_S = 60.0  # how long an id below the cursor is waited for (a transaction still committing)
GAP_MAX = 5000
LEASE_MARGIN_S = 30.0  # a leased delivery comes due again this long after its attempt's timeout
PURGE_EVERY_TICKS = 600


class TargetRefusedError(ValueError):
    """The URL is not one deliveries may go to."""


# ---- targets (SSRF) ---------------------------------------------------------------------------------------------


def _refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for private, loopback, link-local, shared (100.64/10), reserved and unspecified ranges.
    return not ip.is_global or ip.is_multicast


def parse_target(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; TargetRefusedError for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefusedError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefusedError("use an http:// or https:// URL")
    if not parts.hostname:
        raise TargetRefusedError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefusedError("credentials in the URL are not allowed")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


async def check_target(url: str, *, allow_private: bool) -> list[Address]:
    """Refuse (TargetRefusedError) a URL that is not http(s), or whose host resolves to any non-public address;
    returns the addresses checked (none with `allow_private`: nothing was resolved)."""
    host, port = parse_target(url)
    if allow_private:
        return []
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise TargetRefusedError(f"the host {host!r} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for ip in addresses:
        if _refused_address(ip):
            raise TargetRefusedError(
                f"the host {host!r} resolves to {ip}, a private, loopback, link-local or reserved address "
                "(set TASKPROC_WEBHOOK_ALLOW_PRIVATE to allow it)"
            )
    return addresses


def pinned(url: str, address: Address) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The request to `url` sent to `address`, the one `check_target` checked, instead of resolving the name again
    (which a DNS answer that changed in between, rebinding, would turn into a private target): the URL with the
    address as host, the Host header, and for https the name TLS checks the certificate against (SNI)."""
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    extensions: dict[str, Any] = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), {"host": parts.netloc}, extensions


# ---- signing --------------------------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str | None, msg_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (no signature without a secret)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp()))}
    if secret is not None:
        headers["webhook-signature"] = Signer(secret).sign(msg_id=msg_id, timestamp=at, data=body)
    return headers


# ---- the dispatcher -----------------------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def body_of(event: WebhookEventType, at: datetime, task: TaskRow) -> str:
    data = TaskPublic.model_validate(task, from_attributes=True).model_dump(mode="json")
    return json.dumps({"type": event.value, "timestamp": _iso(at), "data": data}, separators=(",", ":"))


def matches(webhook: WebhookRow, event: WebhookEventType, task: TaskRow) -> bool:
    if event.value not in webhook.events:
        return False
    flt = webhook.filter or {}
    types, queues = flt.get("type"), flt.get("queue")
    return (not types or task.type in types) and (not queues or task.queue in queues)


def deliveries_for(events: Sequence[WebhookEvent], webhooks: Sequence[WebhookRow]) -> list[NewDelivery]:
    """The deliveries these events make: one per matching webhook, one for a final event's callback_url."""
    out: list[NewDelivery] = []
    for ev in events:
        kind = EVENT_OF.get(ev.status)
        if ev.task is None or kind is None:
            continue
        targets: list[tuple[uuid.UUID | None, str]] = [(w.id, w.url) for w in webhooks if matches(w, kind, ev.task)]
        if ev.task.callback_url and kind in CALLBACK_EVENTS:
            targets.append((None, ev.task.callback_url))
        if not targets:
            continue
        body = body_of(kind, ev.at, ev.task)
        out.extend(
            NewDelivery(id=uuid.uuid4(), webhook_id=wid, task_id=ev.task.id, url=url, event=kind.value, body=body)
            for wid, url in targets
        )
    return out


@dataclass
class TickResult:
    events: int = 0
    deliveries: int = 0
    lock_busy: bool = False


class Webhooks:
    """The dispatcher and the sender of one API process."""

    def __init__(self, *, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._client: httpx.AsyncClient | None = None
        self._ticks = 0
        callback = settings.webhook_callback_secret
        self._callback_secret = None if callback is None else callback.get_secret_value()
        self._wait = retry.backoff(initial_s=settings.webhook_retry_base_s, max_s=settings.webhook_retry_max_s)

    async def tick(self) -> TickResult:
        """The dispatcher's round: new events into deliveries, until caught up."""
        self._ticks += 1
        result = TickResult()
        while True:
            read, made, busy = await self.dispatch()
            result.events += read
            result.deliveries += made
            result.lock_busy = busy
            if busy or read < BATCH:
                break
        if self._ticks % PURGE_EVERY_TICKS == 0 and self.settings.retention_days > 0:
            async with self.sessions() as session:
                await store.purge_deliveries(session, older_than_s=self.settings.retention_days * 86_400)
                await session.commit()
        return result

    async def dispatch(self) -> tuple[int, int, bool]:
        """One batch of events after the cursor into deliveries, in one transaction under WEBHOOK_LOCK; returns
        (events read, deliveries made, lock busy)."""
        async with self.sessions() as session:
            if not await store.try_webhook_lock(session):
                await session.rollback()
                return 0, 0, True
            last, gaps = await store.webhook_cursor(session)
            now = time.time()
            gaps = {gid: until for gid, until in gaps.items() if until > now}
            webhooks = await store.list_webhooks(session)
            wanted = sorted({STATUS_OF[WebhookEventType(e)] for w in webhooks for e in w.events}, key=str)
            events = await store.webhook_events(session, last, wanted=wanted, gaps=sorted(gaps), limit=BATCH)
            for ev in events:
                if ev.id in gaps:
                    del gaps[ev.id]  # a hole was filled
                    continue
                # Bounded: a rolled-back batch can burn a long run of ids, and only GAP_MAX are kept anyway.
                for missing in range(max(last + 1, ev.id - GAP_MAX), ev.id):
                    gaps[missing] = now + GAP_TTL_S
                last = max(last, ev.id)
            if len(gaps) > GAP_MAX:
                for gid in sorted(gaps)[: len(gaps) - GAP_MAX]:
                    del gaps[gid]
            await testhooks.point("webhooks.dispatch_before_insert")  # the lock held, the events read
            new = deliveries_for(events, webhooks)
            if new:
                await store.insert_deliveries(session, new, max_age_s=self.settings.webhook_max_age_s)
            await store.save_webhook_cursor(session, last, gaps)
            await session.commit()
        return len(events), len(new), False

    async def send_due(self) -> int:
        """Lease the due deliveries and attempt them, at most TASKPROC_WEBHOOK_CONCURRENCY at once; how many."""
        total = 0
        limit = self.settings.webhook_concurrency
        while True:
            async with self.sessions() as session:
                due = await store.lease_due_deliveries(
                    session, limit=limit, lease_s=self.settings.webhook_timeout_s + LEASE_MARGIN_S
                )
                await session.commit()
            if not due:
                return total
            outcomes = await asyncio.gather(*(self._attempt(d) for d in due))
            async with self.sessions() as session:
                for d, outcome in zip(due, outcomes, strict=True):
                    status = await store.record_attempt(session, d.id, attempts=d.attempts, **outcome)
                    if status is not None:
                        metrics.WEBHOOK_DELIVERIES.labels(_outcome(status, outcome["error"])).inc()
                await session.commit()
            total += len(due)
            if len(due) < limit:
                return total

    def retry_in_s(self, attempts: int) -> float:
        """The wait after failed attempt number `attempts` (1 for the first), from the project's backoff."""
        state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempts
        return float(self._wait(state))

    async def _attempt(self, d: store.DueDelivery) -> dict[str, Any]:
        """Send one delivery; what `store.record_attempt` records about it."""
        client = self._client
        assert client is not None, "the sender runs inside run_in_api"
        started = time.perf_counter()
        code: int | None = None
        error: str | None = None
        try:
            addresses = await check_target(d.url, allow_private=self.settings.webhook_allow_private)
            url, host, extensions = pinned(d.url, addresses[0]) if addresses else (d.url, {}, {})
            headers = {
                **host,
                "content-type": "application/json",
                "user-agent": f"taskproc/{__version__}",
                **signed_headers(
                    d.secret if d.webhook_id is not None else self._callback_secret,
                    str(d.id),
                    d.body,
                    datetime.now(UTC),
                ),
            }
            response = await client.post(url, content=d.body.encode(), headers=headers, extensions=extensions)
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except TargetRefusedError as exc:
            error = f"refused: {exc}"
        except Exception as exc:
            # Any failure (httpx's, an invalid URL, a secret edited into something that is not base64) is this
            # attempt's: recorded and retried, never a row that stays leased and unrecorded forever.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = time.perf_counter() - started
        metrics.WEBHOOK_LATENCY.observe(latency)
        delivered = error is None
        if not delivered:
            log.info(
                "webhook delivery failed", extra={"delivery": str(d.id), "url": d.url, "error": (error or "")[:300]}
            )
        return {
            "delivered": delivered,
            "status_code": code,
            "latency_ms": round(latency * 1000, 3),
            "error": error,
            "retry_in_s": 0.0 if delivered else self.retry_in_s(d.attempts + 1),
        }

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        # Pinned requests (see `pinned`) are pooled by address, not by name: a connection made for one name must not
        # carry the request for another name on the same address (a CDN's), so they are not kept alive.
        keepalive = None if self.settings.webhook_allow_private else 0
        limits = httpx.Limits(max_connections=self.settings.webhook_concurrency, max_keepalive_connections=keepalive)
        # No redirects: a 3xx to an internal address would be a way around the target check.
        async with httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s, follow_redirects=False, limits=limits, trust_env=False
        ) as client:
            self._client = client
            try:
                yield client
            finally:
                self._client = None


def _outcome(status: str, error: str | None) -> str:
    if status in ("delivered", "failed"):
        return status
    return "refused" if error is not None and error.startswith("refused:") else "retry"


@asynccontextmanager
async def run_in_api(
    settings: Settings, sessions: async_sessionmaker[AsyncSession] | None
) -> AsyncIterator[Webhooks | None]:
    """The API process's webhook loop while the block runs (nothing if TASKPROC_WEBHOOKS is off).

    It shares `sessions` (the maintenance engine's one connection) when there are any, as the scheduler does;
    otherwise it opens a pool of one of its own.
    """
    if not settings.webhooks:
        yield None
        return
    engine = None
    if sessions is None:
        from taskproc.db import create_engine, create_sessionmaker

        engine = create_engine(settings, pool_size=1, max_overflow=0)
        sessions = create_sessionmaker(engine)
    hooks = Webhooks(settings=settings, sessions=sessions)
    async with hooks.client():
        # Two loops: receivers that are slow to answer hold up the sending, never the dispatching.
        loops = [
            asyncio.create_task(every(settings.webhook_tick_s, hooks.tick, "webhook dispatcher", jitter=0.05)),
            asyncio.create_task(every(settings.webhook_tick_s, hooks.send_due, "webhook sender", jitter=0.05)),
        ]
        try:
            yield hooks
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.dispose()
