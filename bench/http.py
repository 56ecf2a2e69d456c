"""A minimal HTTP/1.1 keep-alive client on asyncio streams, and the load patterns built on it.

httpx costs about a millisecond of client CPU per request, which on a 2-core machine is CPU taken from the
server being measured. This client writes the request bytes and parses the status line, Content-Length and
(should it appear) chunked encoding: a few tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HttpError(RuntimeError):
    pass


class Conn:
    """One persistent connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._writer is None:
                await self._open()
            assert self._reader is not None
            assert self._writer is not None
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            try:
                self._writer.write(head.encode() + b"\r\n" + (body or b""))
                return await self._read_response()
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # A keep-alive connection the server closed while idle: retry once on a fresh one.
                await self.close()
                if attempt == 2:
                    raise HttpError(f"{method} {path}: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def _read_response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def json(self, method: str, path: str, payload: Any = None, *, expect: tuple[int, ...] = (200,)) -> Any:
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        status, raw = await self.request(method, path, body)
        if status not in expect:
            raise HttpError(f"{method} {path}: HTTP {status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN-free, 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summarize_ms(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else 0.0,
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else 0.0,
    }


def _quiet_gc() -> None:
    """Collect now and freeze what survives: a full collection later would walk every object the benchmark
    holds (tens of milliseconds, measured), and a pause of the load generator reads as server latency."""
    gc.collect()
    gc.freeze()


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    first_error: str | None = None

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        return {
            **summarize_ms(self.latencies),
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_rps": round(ok / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            **({"first_error": self.first_error} if self.first_error else {}),
        }


async def closed_loop(
    host: str,
    port: int,
    make_request: Callable[[], tuple[str, str, bytes | None]],
    *,
    clients: int,
    duration_s: float,
    expect: tuple[int, ...] = (200, 201),
) -> LoadResult:
    """`clients` connections, each sending its next request as soon as the previous one is answered."""
    _quiet_gc()
    result = LoadResult()
    deadline = time.perf_counter() + duration_s

    async def client() -> None:
        conn = Conn(host, port)
        try:
            while time.perf_counter() < deadline:
                method, path, body = make_request()
                t0 = time.perf_counter()
                try:
                    status, raw = await conn.request(method, path, body)
                except HttpError as exc:
                    result.errors += 1
                    result.first_error = result.first_error or str(exc)
                    continue
                if status in expect:
                    result.latencies.append(time.perf_counter() - t0)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or f"HTTP {status}: {raw[:200]!r}"
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed_s = time.perf_counter() - t0
    return result


async def open_loop(
    host: str,
    port: int,
    make_request: Callable[[], tuple[str, str, bytes | None]],
    *,
    rate: float,
    duration_s: float,
    max_connections: int = 64,
    expect: tuple[int, ...] = (200, 201),
) -> LoadResult:
    """Requests sent on a fixed schedule (`rate` per second), whatever the server's pace.

    Latency is measured from the *scheduled* send time, so a server that falls behind is charged for the
    queueing it causes (no coordinated omission). The same rule charges the server for the load generator's
    own pauses, so the generator's garbage collector is kept out of the measurement (see _quiet_gc).
    """
    _quiet_gc()
    result = LoadResult()
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(max_connections):
        pool.put_nowait(Conn(host, port))
    total = int(rate * duration_s)
    start = time.perf_counter() + 0.05

    async def one(scheduled: float) -> None:
        conn = await pool.get()
        try:
            method, path, body = make_request()
            status, raw = await conn.request(method, path, body)
            if status in expect:
                result.latencies.append(time.perf_counter() - scheduled)
            else:
                result.errors += 1
                result.first_error = result.first_error or f"HTTP {status}: {raw[:200]!r}"
        except HttpError as exc:
            result.errors += 1
            result.first_error = result.first_error or str(exc)
        finally:
            pool.put_nowait(conn)

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - start
    while not pool.empty():
        await pool.get_nowait().close()
    return result
